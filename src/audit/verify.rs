//! `journalgate audit verify` (the chain of lines and the signed head) and
//! `journalgate audit export` (a time range as CSV or JSON).

use std::io::{self, Write};

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{AuditError, AuditLog, Line};
use crate::archive::chain::GENESIS;

/// What `audit verify` found.
#[derive(Debug, Default, Serialize)]
pub struct VerifyReport {
    pub ok: bool,
    pub lines: u64,
    pub files: u64,
    /// The sequence number the signed head vouches for (0: no head).
    pub signed_up_to: u64,
    pub problems: Vec<String>,
}

/// Walks every line: readable, numbered one after the other, each naming the hash of the
/// line before; and the signed head is valid and its line is there with its hash.
pub fn verify(log: &AuditLog, key: Option<&str>) -> Result<VerifyReport, AuditError> {
    let mut report = VerifyReport {
        files: log.files()?.len() as u64,
        ..VerifyReport::default()
    };
    let (mut seq, mut hash) = (0u64, GENESIS.to_owned());
    let mut hashes = std::collections::HashMap::new();
    log.walk(|path, bytes, parsed| {
        report.lines += 1;
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        match parsed {
            None => report
                .problems
                .push(format!("{name}: line after {seq} is not an audit line")),
            Some(line) if line.seq != seq + 1 => report.problems.push(format!(
                "{name}: line {} follows line {seq} (lines removed or reordered)",
                line.seq
            )),
            Some(line) if line.prev != hash => report.problems.push(format!(
                "{name}: line {} does not name the hash of line {seq} (a line was changed)",
                line.seq
            )),
            Some(_) => {}
        }
        seq += 1;
        hash = hex::encode(Sha256::digest(bytes));
        hashes.insert(seq, hash.clone());
    })?;
    if let Some(head) = log.head() {
        if !head.valid_as(crate::archive::chain::AUDIT_HEAD, key) {
            report
                .problems
                .push("head.json: the signature is not valid".into());
        } else {
            match hashes.get(&head.seq) {
                None => report.problems.push(format!(
                    "the signed head vouches for line {} but the log has {} lines (it was cut short)",
                    head.seq, report.lines
                )),
                Some(h) if *h != head.head => report.problems.push(format!(
                    "line {} is not the line the signed head vouches for",
                    head.seq
                )),
                Some(_) => report.signed_up_to = head.seq,
            }
        }
    } else if report.lines > 0 {
        report
            .problems
            .push("head.json is missing: the end of the log is not vouched for".into());
    }
    report.ok = report.problems.is_empty();
    Ok(report)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Csv,
    Json,
}

/// Writes the lines whose time is within `[from, to]` (unix seconds) to `out`.
pub fn export(
    log: &AuditLog,
    from: i64,
    to: i64,
    format: Format,
    out: &mut dyn Write,
) -> Result<u64, AuditError> {
    let mut count = 0u64;
    let mut failure: Option<io::Error> = None;
    match format {
        Format::Csv => out.write_all(b"seq,time,action,result,actor,client,target,detail\n")?,
        Format::Json => out.write_all(b"[")?,
    }
    log.walk(|_, _, parsed| {
        let Some(line) = parsed else { return };
        let time = chrono::DateTime::parse_from_rfc3339(&line.time)
            .map(|t| t.timestamp())
            .unwrap_or(0);
        if time < from || time > to || failure.is_some() {
            return;
        }
        let written = match format {
            Format::Csv => write_csv(&line, out),
            Format::Json => {
                let sep: &[u8] = if count == 0 { b"\n" } else { b",\n" };
                out.write_all(sep)
                    .and_then(|()| serde_json::to_writer(&mut *out, &line).map_err(io::Error::from))
            }
        };
        match written {
            Ok(()) => count += 1,
            Err(e) => failure = Some(e),
        }
    })?;
    if let Some(e) = failure {
        return Err(e.into());
    }
    if format == Format::Json {
        out.write_all(b"\n]\n")?;
    }
    Ok(count)
}

fn write_csv(line: &Line, out: &mut dyn Write) -> io::Result<()> {
    let e = &line.event;
    let detail = if e.detail.is_null() {
        String::new()
    } else {
        e.detail.to_string()
    };
    let fields = [
        line.seq.to_string(),
        line.time.clone(),
        e.action.clone(),
        e.result.clone(),
        e.actor.clone(),
        e.client.clone().unwrap_or_default(),
        e.target.clone().unwrap_or_default(),
        detail,
    ];
    let quoted: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
    writeln!(out, "{}", quoted.join(","))
}

/// RFC 4180 quoting; a leading `=`, `+`, `-` or `@` is prefixed with `'` so that a
/// spreadsheet does not run it as a formula.
pub(super) fn csv_field(value: &str) -> String {
    let value = if value.starts_with(['=', '+', '-', '@']) {
        format!("'{value}")
    } else {
        value.to_owned()
    };
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value
    }
}
