//! Reading and verifying spool folders without the index or any key: folder scans, the
//! sealed-file length check behind `journalgate check`, and temp-file cleanup.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::Path;

use serde::Serialize;

use super::SpoolError;
use crate::crypto;
use crate::fsutil;
use crate::mailbox::Mailboxes;
use crate::message::MessageMeta;

#[derive(Debug, Default, Serialize)]
pub struct ReconcileReport {
    pub messages: usize,
    pub added: usize,
    pub removed: usize,
}

/// Checks the spool files alone (usable without opening the index).
pub fn check_files(data_dir: &Path) -> Result<Vec<String>, SpoolError> {
    let mailboxes = Mailboxes::new(data_dir);
    let mut problems = Vec::new();
    let records = match mailboxes.list() {
        Ok(r) => r,
        Err(e) => return Ok(vec![format!("mailbox registry: {e}")]),
    };
    for record in records {
        if let Err(e) = mailboxes.wrapped_identity(&record.id) {
            problems.push(format!("{}: key file: {e}", record.id));
        }
        let dir = mailboxes.msg_dir(&record.id);
        let files = scan_dir(&dir)?;
        for name in files.unknown {
            problems.push(format!("{}: unexpected file {name:?}", record.id));
        }
        for meta in &files.messages {
            if let Err(e) = check_message_file(&dir.join(meta.file_name()), meta) {
                problems.push(format!("{}: message {}: {e}", record.id, meta.uid));
            }
        }
    }
    Ok(problems)
}

/// Checks one sealed file: a well-formed age header and exactly the length the plaintext
/// size implies (catches truncation and appended garbage without the key).
pub(super) fn check_message_file(path: &Path, meta: &MessageMeta) -> Result<(), String> {
    let bytes_len = fs::metadata(path).map_err(|e| e.to_string())?.len();
    let mut head = vec![0u8; 4096.min(bytes_len as usize)];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .map_err(|e| e.to_string())?;
    crypto::check_header(&head[..]).map_err(|e| e.to_string())?;
    let header_len = age_header_len(&head).ok_or("age header too long")?;
    let plain = meta.size + u64::from(meta.envelope_len);
    let chunks = plain.div_ceil(64 * 1024).max(1);
    let expected = header_len as u64 + 16 + plain + 16 * chunks;
    if bytes_len != expected {
        return Err(format!(
            "file is {bytes_len} bytes, expected {expected} (truncated or damaged)"
        ));
    }
    Ok(())
}

/// Length of an age header: up to and including the line that starts with `--- `.
pub(super) fn age_header_len(bytes: &[u8]) -> Option<usize> {
    let mut start = 0;
    while start < bytes.len() {
        let end = start + bytes[start..].iter().position(|b| *b == b'\n')?;
        if bytes[start..end].starts_with(b"--- ") {
            return Some(end + 1);
        }
        start = end + 1;
    }
    None
}

/// What a message folder holds.
pub struct DirScan {
    pub messages: Vec<MessageMeta>,
    pub unknown: Vec<String>,
}

/// Lists a message folder (no index needed), sorted by UID.
pub fn scan_dir(dir: &Path) -> Result<DirScan, SpoolError> {
    let mut scan = DirScan {
        messages: Vec::new(),
        unknown: Vec::new(),
    };
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(scan),
        Err(e) => return Err(e.into()),
    };
    for entry in entries {
        let name = entry?.file_name().to_string_lossy().into_owned();
        match MessageMeta::parse_file_name(&name) {
            Some(meta) => scan.messages.push(meta),
            None => scan.unknown.push(name),
        }
    }
    scan.messages.sort_by_key(|m| m.uid);
    Ok(scan)
}

pub(super) fn clean_dir(dir: &Path) -> io::Result<usize> {
    let mut n = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            fs::remove_file(entry.path())?;
            n += 1;
        }
    }
    if n > 0 {
        fsutil::sync_dir(dir)?;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_length_is_found() {
        let h = b"age-encryption.org/v1\n-> X25519 abc\ndef\n--- mac\nPAYLOAD";
        assert_eq!(age_header_len(h), Some(h.len() - 7));
    }
}
