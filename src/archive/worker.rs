//! The archive worker thread: takes intake files oldest first, files each (classify, plan,
//! seal), commits batches durably, removes the intake files, and runs retention hourly.

use super::*;

impl Archive {
    pub(super) fn work(self: Arc<Self>, rx: mpsc::Receiver<()>) {
        lower_priority();
        let mut last_retention: Option<Instant> = None;
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return;
            }
            if last_retention.is_none_or(|t| t.elapsed() >= RETENTION_EVERY) {
                last_retention = Some(Instant::now());
                if let Err(e) = self.apply_retention() {
                    tracing::error!(error = %e, "archive retention failed");
                }
                if let Err(e) = self.sweep_recent() {
                    tracing::error!(error = %e, "cannot clean the duplicate-merge copies");
                }
            }
            if let Err(e) = self.drain(&rx) {
                tracing::error!(error = %e, "cannot list the archive intake");
            }
            if let Err(e) = self.checkpoint(false) {
                tracing::error!(error = %e, "cannot sign an archive chain checkpoint");
            }
            if self.stop.load(Ordering::SeqCst) {
                return;
            }
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(()) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
            while rx.try_recv().is_ok() {}
        }
    }

    /// Archives what is in the intake. While files keep arriving, a commit waits up to
    /// [`GATHER`] for more (at most [`COMMIT_EVERY`]), so a steady stream shares commits
    /// instead of paying a store commit and a pack sync each.
    fn drain(&self, rx: &mpsc::Receiver<()>) -> io::Result<()> {
        let mut pending = Pending::default();
        let mut seen = std::collections::HashSet::new();
        let mut filing = None;
        let mut started = Instant::now();
        loop {
            for name in self.pending_files()? {
                if self.stop.load(Ordering::SeqCst) {
                    break;
                }
                if !seen.insert(name.clone()) {
                    continue;
                }
                if self.start_attempt(&name) >= MAX_ATTEMPTS {
                    // The worker died (out of memory, killed) while archiving it, more than
                    // once: never try it again.
                    self.set_aside(&name, "archiving it never finished");
                    continue;
                }
                filing.get_or_insert_with(|| self.filing.lock().unwrap_or_else(|e| e.into_inner()));
                self.process_logged(&name, &mut pending);
                if pending.intake.len() >= COMMIT_EVERY {
                    self.commit_logged(&mut pending);
                    filing = None;
                    started = Instant::now();
                }
            }
            let waited = started.elapsed();
            if pending.intake.is_empty() || waited >= GATHER || self.stop.load(Ordering::SeqCst) {
                break;
            }
            match rx.recv_timeout(GATHER - waited) {
                Ok(()) => while rx.try_recv().is_ok() {},
                Err(_) => break,
            }
        }
        self.commit_logged(&mut pending);
        Ok(())
    }

    /// Records that `name` is being archived and returns how often it was started before
    /// without the worker getting past it. `archive/in-progress` needs no fsync: what it
    /// guards against is the process being killed, and the page cache outlives the process.
    /// It is read once per run and then only written (one `pwrite` per intake file).
    fn start_attempt(&self, name: &str) -> u32 {
        use std::os::unix::fs::FileExt;
        let mut guard = self.attempts.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            let path = self.in_progress_path();
            let last = fs::read_to_string(&path)
                .ok()
                .and_then(|s| {
                    let (n, count) = s.trim().rsplit_once(' ')?;
                    Some((n.to_owned(), count.parse().ok()?))
                })
                .unwrap_or_default();
            match OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
            {
                Ok(file) => *guard = Some((file, last)),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot record the archive worker's progress");
                    return 0;
                }
            }
        }
        let (file, last) = guard.as_mut().expect("opened");
        let before = if last.0 == name { last.1 } else { 0 };
        *last = (name.to_owned(), before + 1);
        let line = format!("{name} {}\n", before + 1);
        let written = file
            .write_all_at(line.as_bytes(), 0)
            .and_then(|()| file.set_len(line.len() as u64));
        if let Err(e) = written {
            tracing::warn!(error = %e, "cannot record the archive worker's progress");
        }
        before
    }

    fn in_progress_path(&self) -> PathBuf {
        self.intake_dir.with_file_name("in-progress")
    }

    /// Moves an intake file out of the queue (`damaged-<name>`, reported by `check`).
    fn set_aside(&self, name: &str, why: &str) {
        tracing::error!(
            intake = name,
            why,
            "intake file set aside; it is not archived"
        );
        let path = self.intake_dir.join(name);
        let _ = fs::rename(&path, self.intake_dir.join(format!("damaged-{name}")));
    }

    /// Intake files, oldest first (names are the commit time in nanoseconds).
    pub(super) fn pending_files(&self) -> io::Result<Vec<String>> {
        let mut names: Vec<(i64, String)> = Vec::new();
        for entry in fs::read_dir(&self.intake_dir)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if let Some(t) = intake_time(&name) {
                names.push((t, name));
            }
        }
        names.sort();
        Ok(names.into_iter().map(|(_, n)| n).collect())
    }

    pub(super) fn process_logged(&self, name: &str, pending: &mut Pending) {
        let started = Instant::now();
        // A bug must not stop the worker: a file that makes it panic is set aside.
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.process(name, pending)))
                .unwrap_or_else(|_| Err(ArchiveError::Damaged("archiving it panicked".into())));
        match result {
            Ok(()) => {
                tracing::debug!(
                    intake = name,
                    ms = started.elapsed().as_millis() as u64,
                    "archived"
                )
            }
            Err(e) => {
                // Left in place: retried at the next wake-up (a damaged file is set aside).
                tracing::error!(intake = name, error = %e, "archiving failed");
                if matches!(e, ArchiveError::Damaged(_) | ArchiveError::Crypto(_)) {
                    self.set_aside(name, "damaged");
                }
            }
        }
    }

    /// Archives one intake file into `pending` (committed by [`Archive::commit`]).
    pub(super) fn process(&self, name: &str, pending: &mut Pending) -> Result<(), ArchiveError> {
        let path = self.intake_dir.join(name);
        if self.store.is_done(name)? {
            return remove_if_present(&path);
        }
        let (envelope, envelope_len, skeleton) = self.read_intake(&path)?;
        let plan = self.plan(&envelope, &skeleton);
        if pending.next_item == 0 {
            pending.next_item = self.store.next_item()?;
        }
        let source = Source {
            archive: self,
            intake: &path,
            envelope_len,
            skeleton: Some(&skeleton),
        };
        let mut delta = Delta {
            next_item: pending.next_item,
            counters: plan.counters.clone(),
            ..Delta::default()
        };
        let mark = self.pack_mark();
        if let Err(e) = self.file_originals(&source, &envelope, plan, pending, &mut delta) {
            // What this file appended to the pack is cut off; earlier files' stays.
            self.pack_cut(mark);
            return Err(e);
        }
        pending.merge(delta, name.to_owned(), path);
        Ok(())
    }

    pub(super) fn commit_logged(&self, pending: &mut Pending) {
        if let Err(e) = self.commit(pending) {
            // Nothing is lost: the intake files stay and are archived again (what this
            // commit appended to the pack was cut off).
            tracing::error!(error = %e, "archive commit failed; will retry");
        }
        *pending = Pending::default();
    }

    /// Makes the pending work durable (item files, then one redb commit), tells IMAP
    /// sessions, and only then deletes the intake files.
    pub(super) fn commit(&self, pending: &mut Pending) -> Result<(), ArchiveError> {
        if pending.intake.is_empty() {
            return Ok(());
        }
        let pack = match self.prepare_pack() {
            Ok(row) => row,
            Err(e) => {
                self.finish_pack(false);
                return Err(e);
            }
        };
        let batch = Batch {
            items: pending.items.drain().collect(),
            entries: std::mem::take(&mut pending.entries),
            dedupe: pending.dedupe.drain().collect(),
            counters: std::mem::take(&mut pending.counters),
            done: std::mem::take(&mut pending.done),
            chain: std::mem::take(&mut pending.chain),
            envelopes: std::mem::take(&mut pending.envelopes),
            summaries: std::mem::take(&mut pending.summaries),
            packs: pack.into_iter().collect(),
        };
        let applied = self.store.apply(batch);
        self.finish_pack(applied.is_ok());
        applied?;
        for folder in std::mem::take(&mut pending.changed) {
            self.spool.notify_change(change_key(&folder));
        }
        // A file that gave a new item is kept a while (sealed to the server key, as it was)
        // so duplicates can be merged; a lost rename only costs that.
        let keeping = !self.dedupe_window().is_zero();
        for (path, keep) in std::mem::take(&mut pending.intake) {
            let kept = keep
                && keeping
                && path
                    .file_name()
                    .is_some_and(|name| fs::rename(&path, self.recent_dir.join(name)).is_ok());
            if !kept {
                remove_if_present(&path)?;
            }
        }
        Ok(())
    }

    /// Decrypts an intake file once: its envelope and the message's skeleton.
    pub(super) fn read_intake(
        &self,
        path: &Path,
    ) -> Result<(Envelope, u64, Skeleton), ArchiveError> {
        let mut reader = self.open_intake(path)?;
        let mut line = Vec::new();
        (&mut reader).take(1 << 20).read_until(b'\n', &mut line)?;
        let json = line
            .strip_prefix(b"JG1 ")
            .ok_or_else(|| ArchiveError::Damaged("no envelope line".into()))?;
        let envelope: Envelope = serde_json::from_slice(json)
            .map_err(|e| ArchiveError::Damaged(format!("envelope: {e}")))?;
        let skeleton = Skeleton::build(reader)?;
        Ok((envelope, line.len() as u64, skeleton))
    }

    pub(super) fn open_intake(&self, path: &Path) -> Result<impl BufRead + use<>, ArchiveError> {
        let file = File::open(path)?;
        let identities: [&dyn age::Identity; 2] = [&*self.intake_key, &self.intake_identity];
        let reader = crypto::open_any(&identities, BufReader::with_capacity(64 << 10, file))?;
        Ok(BufReader::with_capacity(64 << 10, reader))
    }

    /// Item files with no record and pack files the store does not know (a crash between
    /// writing and recording) are removed.
    pub(super) fn remove_orphans(&self) -> Result<(), ArchiveError> {
        let known: BTreeSet<u64> = self.store.item_ids()?.into_iter().collect();
        let packs: BTreeSet<u64> = self.store.packs()?.into_iter().map(|p| p.0).collect();
        let mut removed = pack::remove_unknown(&self.items_dir, &packs)?;
        for entry in fs::read_dir(&self.items_dir)? {
            let path = entry?.path();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if pack::id_of(&name).is_some() {
                continue;
            }
            let id = name
                .strip_suffix(".age")
                .and_then(|n| n.parse::<u64>().ok());
            if id.is_none_or(|id| !known.contains(&id)) {
                fs::remove_file(&path)?;
                removed += 1;
            }
        }
        if removed > 0 {
            fsutil::sync_dir(&self.items_dir)?;
            tracing::info!(files = removed, "removed unrecorded archive files");
        }
        let intake = self.intake_dir.clone();
        self.store.forget_done(|name| intake.join(name).exists())?;
        Ok(())
    }
}
