//! The audit trail: an append-only, hash-chained record of every archive login (success or
//! failure), folder opened, message body fetched (who, which item, from where), grant,
//! hold, export, retention run and admin action. Never message content, never a password.
//!
//! One JSON object per line in `data_dir/audit/<YYYY-MM>.jsonl`; each line names the SHA-256
//! of the line before (`prev`, across months) and has the next sequence number, so a changed,
//! removed or reordered line breaks the chain. `audit/head.json` holds the newest (sequence,
//! hash) signed with the archive's checkpoint key, so a log cut short by hand is found too.
//!
//! The server and the CLI both append (the CLI records the admin actions it performs on
//! files itself); an exclusive `flock` on the current file orders them, and each writer
//! re-reads the last line when the file grew under it. The server appends from one thread
//! fed by a channel, syncing once per batch, so no protocol thread waits for the disk.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};

use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::archive::chain::{Checkpoint, AUDIT_HEAD, GENESIS};
use crate::fsutil;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log: {0}")]
    Io(#[from] io::Error),
    #[error("audit log {0}: {1}")]
    Damaged(String, String),
}

/// Something to record. `actor` says who (`imap:<user id>`, `cli:<unix user>`), `client`
/// from where, `target` what it was about (a login, a folder, a hold name).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Event {
    pub action: String,
    pub actor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// `ok`, `failed` or `refused`.
    pub result: String,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub detail: serde_json::Value,
}

impl Event {
    pub fn new(action: &str, actor: impl Into<String>) -> Event {
        Event {
            action: action.to_owned(),
            actor: actor.into(),
            result: "ok".into(),
            ..Event::default()
        }
    }

    pub fn client(mut self, client: impl ToString) -> Event {
        self.client = Some(client.to_string());
        self
    }

    pub fn target(mut self, target: impl Into<String>) -> Event {
        self.target = Some(target.into());
        self
    }

    pub fn result(mut self, result: &str) -> Event {
        self.result = result.to_owned();
        self
    }

    pub fn detail(mut self, detail: serde_json::Value) -> Event {
        self.detail = detail;
        self
    }
}

/// One stored line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Line {
    pub seq: u64,
    pub time: String,
    #[serde(flatten)]
    pub event: Event,
    pub prev: String,
}

/// The log's files and where the chain ends.
pub struct AuditLog {
    dir: PathBuf,
    key: Option<SigningKey>,
    /// (file, its size, seq, hash) as this writer last saw them.
    tail: Mutex<Option<(PathBuf, u64, u64, String)>>,
}

impl AuditLog {
    /// The log under `data_dir`; `key` signs its head (none: the head is not updated, e.g.
    /// a CLI run by a user who cannot read the key).
    pub fn open(data_dir: &Path, key: Option<SigningKey>) -> Result<AuditLog, AuditError> {
        let dir = data_dir.join("audit");
        fsutil::create_private_dir(&dir)?;
        Ok(AuditLog {
            dir,
            key,
            tail: Mutex::new(None),
        })
    }

    /// Appends events (one `fdatasync` for all) and updates the signed head.
    pub fn append(&self, events: &[Event]) -> Result<(), AuditError> {
        if events.is_empty() {
            return Ok(());
        }
        let now = chrono::Utc::now();
        let path = self.dir.join(format!("{}.jsonl", now.format("%Y-%m")));
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .mode(0o600)
            .open(&path)?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(io::Error::from)?;
        let size = file.metadata()?.len();
        let mut tail = self.tail.lock().unwrap();
        let (mut seq, mut hash) = match tail.as_ref() {
            Some((p, s, seq, hash)) if *p == path && *s == size => (*seq, hash.clone()),
            _ => self.last_link(&path, &mut file)?,
        };
        let mut out = Vec::new();
        for event in events {
            let line = Line {
                seq: seq + 1,
                time: now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                event: event.clone(),
                prev: hash,
            };
            let bytes = serde_json::to_vec(&line).expect("serializes");
            hash = hex::encode(Sha256::digest(&bytes));
            seq += 1;
            out.extend_from_slice(&bytes);
            out.push(b'\n');
        }
        file.write_all(&out)?;
        file.sync_data()?;
        *tail = Some((path, size + out.len() as u64, seq, hash.clone()));
        drop(tail);
        if let Some(key) = &self.key {
            let head = Checkpoint::sign_as(AUDIT_HEAD, key, seq, &hash, now.timestamp());
            let json = serde_json::to_vec(&head).expect("serializes");
            fsutil::write_atomic(&self.dir.join("head.json"), &json, 0o600)?;
        }
        Ok(())
    }

    /// (seq, hash) of the newest line: in `file`, else in the newest earlier month.
    fn last_link(&self, path: &Path, file: &mut File) -> Result<(u64, String), AuditError> {
        if let Some(last) = last_line(file)? {
            return link_of(&last, path);
        }
        for earlier in self.files()?.into_iter().rev() {
            if earlier.as_path() >= path {
                continue;
            }
            if let Some(last) = last_line(&mut File::open(&earlier)?)? {
                return link_of(&last, &earlier);
            }
        }
        Ok((0, GENESIS.to_owned()))
    }

    /// The month files, oldest first.
    pub fn files(&self) -> Result<Vec<PathBuf>, AuditError> {
        let mut out: Vec<PathBuf> = match fs::read_dir(&self.dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
                .collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        out.sort();
        Ok(out)
    }

    /// Calls `f` with every line, oldest first (the raw bytes and the parsed line).
    pub fn walk(&self, mut f: impl FnMut(&Path, &[u8], Option<Line>)) -> Result<(), AuditError> {
        for path in self.files()? {
            let reader = BufReader::new(File::open(&path)?);
            for line in reader.split(b'\n') {
                let bytes = line?;
                let parsed = serde_json::from_slice(&bytes).ok();
                f(&path, &bytes, parsed);
            }
        }
        Ok(())
    }

    /// The signed head, if any.
    pub fn head(&self) -> Option<Checkpoint> {
        let bytes = fs::read(self.dir.join("head.json")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

fn link_of(line: &[u8], path: &Path) -> Result<(u64, String), AuditError> {
    let parsed: Line = serde_json::from_slice(line)
        .map_err(|e| AuditError::Damaged(path.display().to_string(), e.to_string()))?;
    Ok((parsed.seq, hex::encode(Sha256::digest(line))))
}

/// The last complete line of a file (without its newline).
fn last_line(file: &mut File) -> io::Result<Option<Vec<u8>>> {
    let size = file.seek(SeekFrom::End(0))?;
    let mut back = 4096u64;
    loop {
        let start = size.saturating_sub(back);
        file.seek(SeekFrom::Start(start))?;
        let mut tail = Vec::new();
        file.take(size - start).read_to_end(&mut tail)?;
        let body = tail.strip_suffix(b"\n").unwrap_or(&tail);
        if let Some(at) = memchr::memrchr(b'\n', body) {
            return Ok(Some(body[at + 1..].to_vec()));
        }
        if start == 0 {
            return Ok((!body.is_empty()).then(|| body.to_vec()));
        }
        back *= 4;
    }
}

/// Records events without blocking the caller: the server's writer thread, or (in the CLI)
/// the log itself.
#[derive(Clone)]
pub enum Auditor {
    Thread(mpsc::SyncSender<Event>),
    Direct(Arc<AuditLog>),
    /// Nothing recorded (tests and fuzzing).
    Off,
}

/// Events the server keeps queued at most before a recorder waits.
const QUEUE: usize = 65_536;

impl Auditor {
    /// Starts the writer thread of a running server.
    pub fn start(log: AuditLog) -> io::Result<Auditor> {
        let (tx, rx) = mpsc::sync_channel::<Event>(QUEUE);
        std::thread::Builder::new()
            .name("audit".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    batch.extend(rx.try_iter().take(4096));
                    if let Err(e) = log.append(&batch) {
                        tracing::error!(error = %e, events = batch.len(), "cannot write the audit log");
                    }
                }
            })?;
        Ok(Auditor::Thread(tx))
    }

    pub fn record(&self, event: Event) {
        match self {
            Auditor::Thread(tx) => {
                if let Err(mpsc::TrySendError::Full(event)) = tx.try_send(event) {
                    let _ = tx.send(event);
                }
            }
            Auditor::Direct(log) => {
                if let Err(e) = log.append(std::slice::from_ref(&event)) {
                    tracing::error!(error = %e, "cannot write the audit log");
                }
            }
            Auditor::Off => {}
        }
    }
}

/// The user running this process, for `cli:<user>` actors.
pub fn cli_actor() -> String {
    let uid = rustix::process::getuid().as_raw();
    let name = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_default();
    if name.is_empty() {
        format!("cli:uid {uid}")
    } else {
        format!("cli:{name} (uid {uid})")
    }
}

mod verify;
pub use verify::{export, verify, Format, VerifyReport};

#[cfg(test)]
mod tests;
