//! `archive stats` and the key-less archive check of `journalgate check`, with and without a
//! running server.

use super::*;

impl Archive {
    /// Counters and per-user counts.
    pub fn stats(&self) -> Result<Stats, ArchiveError> {
        let mut stats = collect_stats(&self.store, &self.users, &self.intake_dir)?;
        stats.recovery_key = self.recovery.current()?.map(|k| k.public);
        Ok(stats)
    }

    /// Verifies the archive without any user key: every recorded item has its file with a
    /// well-formed age header, and no intake file was set aside as damaged.
    pub fn check(&self) -> Result<Vec<String>, ArchiveError> {
        check_items(&self.store, &self.items_dir, &self.intake_dir)
    }

    /// [`Archive::check`] without a running server.
    pub fn check_offline(data_dir: &Path) -> Result<Vec<String>, ArchiveError> {
        let dir = data_dir.join("archive");
        if !dir.join("archive.redb").exists() {
            return Ok(Vec::new());
        }
        let store = Store::open(&dir.join("archive.redb"), store::CACHE_BYTES)?;
        check_items(&store, &dir.join("items"), &dir.join("intake"))
    }

    /// `archive stats` without a running server.
    pub fn stats_offline(data_dir: &Path) -> Result<Stats, ArchiveError> {
        let dir = data_dir.join("archive");
        let store = Store::open(&dir.join("archive.redb"), store::CACHE_BYTES)?;
        let mut stats = collect_stats(&store, &Users::new(data_dir), &dir.join("intake"))?;
        stats.recovery_key = recovery::Recovery::new(data_dir)
            .current()?
            .map(|k| k.public);
        Ok(stats)
    }
}

/// Counters, the intake backlog, and per-user folder sizes.
pub(super) fn collect_stats(
    store: &Store,
    users: &Users,
    intake: &Path,
) -> Result<Stats, ArchiveError> {
    let counters: HashMap<String, u64> = store.counters()?.into_iter().collect();
    let get = |k: &str| counters.get(k).copied().unwrap_or(0);
    let pending = match fs::read_dir(intake) {
        Ok(entries) => entries
            .flatten()
            .filter(|e| intake_time(&e.file_name().to_string_lossy()).is_some())
            .count() as u64,
        Err(_) => 0,
    };
    let mut stats = Stats {
        items: get("items"),
        pending,
        unknown: get("unknown"),
        duplicates_merged: get("duplicates_merged"),
        untrusted_reports: get("untrusted_reports"),
        quarantined_reports: get("quarantined_reports"),
        skipped_unknown: get("skipped_unknown"),
        reports_without_original: get("reports_without_original"),
        unreadable_dropped: get("unreadable_dropped"),
        journal_reports: get("journal_reports"),
        ndr_unwrapped: get("ndr_unwrapped"),
        plain_copies: get("plain_copies"),
        retention_removed: get("retention_removed"),
        users: Default::default(),
        recovery_key: None,
    };
    for u in users.list()? {
        let count = |folder: &str| -> Result<u64, ArchiveError> {
            Ok(store.entries(&format!("{}/{folder}", u.id))?.len() as u64)
        };
        let counts = UserCounts {
            inbox: count("INBOX")?,
            sent: count("Sent")?,
        };
        stats.users.insert(u.login.clone(), counts);
    }
    Ok(stats)
}

pub(super) fn check_items(
    store: &Store,
    items: &Path,
    intake: &Path,
) -> Result<Vec<String>, ArchiveError> {
    let mut problems = Vec::new();
    for (id, item) in store.items()? {
        let bytes: io::Result<Box<dyn Read>> = match &item.location {
            Some(location) => pack::open(items, location).map(|r| Box::new(r) as Box<dyn Read>),
            None => File::open(items.join(format!("{id}.age"))).map(|f| Box::new(f) as _),
        };
        let header = bytes.map_err(CryptoError::from).and_then(|f| {
            let mut head = Vec::new();
            f.take(256 << 10).read_to_end(&mut head)?;
            crypto::check_header(&head[..])
        });
        if let Err(e) = header {
            problems.push(format!("archive item {id}: {e}"));
        }
    }
    if let Ok(entries) = fs::read_dir(intake) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("damaged-") {
                problems.push(format!("archive intake file set aside as damaged: {name}"));
            }
        }
    }
    Ok(problems)
}
