//! The archive's requests on the admin socket: stats, grants, retention, `verify`, and
//! exports, whose files stream back to the CLI in frames.

use std::io::Write;

use tokio::io::AsyncWriteExt;

use super::{failure, Frame, GrantRequest, Progress, Response};
use crate::archive::export::{ExportSink, ExportSpec};
use crate::archive::Archive;
use crate::context::State;

pub(super) async fn archive_stats(state: &State) -> Response {
    let Some(archive) = state.archive.clone() else {
        return failure("the archive is disabled (archive.enabled = false)".into());
    };
    match tokio::task::spawn_blocking(move || archive.stats()).await {
        Ok(Ok(stats)) => Response {
            ok: true,
            error: None,
            archive: serde_json::to_value(stats).ok(),
            ..failure(String::new())
        },
        Ok(Err(e)) => failure(e.to_string()),
        Err(e) => failure(e.to_string()),
    }
}

/// Runs a long request on a blocking thread; its progress lines stream back first.
pub(super) async fn with_progress(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    job: impl FnOnce(&mut dyn FnMut(u64, u64)) -> Response + Send + 'static,
) -> Response {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(u64, u64)>(4);
    let work = tokio::task::spawn_blocking(move || {
        let mut progress = |done, total| {
            let _ = tx.blocking_send((done, total));
        };
        job(&mut progress)
    });
    while let Some(progress) = rx.recv().await {
        let mut line = serde_json::to_vec(&Progress { progress }).expect("serializes");
        line.push(b'\n');
        let _ = write.write_all(&line).await;
    }
    work.await.unwrap_or_else(|e| failure(e.to_string()))
}

/// `archive verify` against an open archive (in the server or in the CLI).
pub fn run_verify(
    archive: &crate::archive::Archive,
    progress: &mut dyn FnMut(u64, u64),
) -> Response {
    match archive.verify(progress) {
        Ok(report) => Response {
            ok: true,
            error: None,
            archive: serde_json::to_value(report).ok(),
            ..failure(String::new())
        },
        Err(e) => failure(e.to_string()),
    }
}

/// Runs a grant against an open archive (in the server or in the CLI).
pub fn run_grant(
    archive: &crate::archive::Archive,
    grant: &GrantRequest,
    progress: &mut dyn FnMut(u64, u64),
) -> Response {
    let result = (|| {
        let user = archive.users().find(&grant.login)?;
        let keys = grant
            .keys
            .iter()
            .map(|k| k.parse::<crate::crypto::Identity>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| crate::archive::ArchiveError::Damaged("not a secret key".into()))?;
        archive.grant(&user, &keys, grant.batch, progress)
    })();
    match result {
        Ok(report) => Response {
            ok: true,
            error: None,
            archive: serde_json::to_value(report).ok(),
            ..failure(String::new())
        },
        Err(e) => failure(e.to_string()),
    }
}

/// `archive retention [--dry-run]` against an open archive (in the server or in the CLI).
pub fn run_retention(archive: &crate::archive::Archive, dry_run: bool) -> Response {
    let result = archive.retention_plan().and_then(|plan| {
        let removed = if dry_run {
            0
        } else {
            archive.apply_retention()?
        };
        Ok(serde_json::json!({"plan": plan, "removed": removed, "dry_run": dry_run}))
    });
    match result {
        Ok(value) => Response {
            ok: true,
            error: None,
            archive: Some(value),
            ..failure(String::new())
        },
        Err(e) => failure(e.to_string()),
    }
}

/// `archive item` against an open archive.
pub fn run_item(archive: &Archive, id: u64) -> Response {
    match archive.describe_item(id) {
        Ok(value) => Response {
            ok: true,
            error: None,
            archive: Some(value),
            ..failure(String::new())
        },
        Err(crate::archive::ArchiveError::NoSuchMessage) => failure(format!("no item {id}")),
        Err(e) => failure(e.to_string()),
    }
}

/// Keys sent for a grant or an export, as keyrings (never logged).
fn keyrings(keys: &[String]) -> Result<Vec<crate::crypto::epoch::Keyring>, String> {
    keys.iter()
        .map(|k| {
            k.parse::<crate::crypto::Identity>()
                .map(crate::crypto::epoch::Keyring::new)
                .map_err(|_| "not a secret key".to_string())
        })
        .collect()
}

/// `archive export` against an open archive: the files go into `sink`.
pub fn run_export(
    archive: &Archive,
    spec: &ExportSpec,
    keys: &[String],
    sink: &mut dyn ExportSink,
    progress: &mut dyn FnMut(u64, u64),
) -> Response {
    let keyrings = match keyrings(keys) {
        Ok(k) => k,
        Err(e) => return failure(e),
    };
    match archive.export(spec, &keyrings, sink, progress) {
        Ok(report) => Response {
            ok: true,
            error: None,
            archive: serde_json::to_value(report).ok(),
            ..failure(String::new())
        },
        Err(e) => failure(e.to_string()),
    }
}

/// Streams an export's files to the CLI: frames (see [`Frame`]) through a bounded channel,
/// so a slow or vanished client stops the export instead of filling memory.
pub(super) async fn export_request(
    state: &State,
    request: super::ExportRequest,
    write: &mut tokio::net::unix::OwnedWriteHalf,
) -> Response {
    let Some(archive) = state.archive.clone() else {
        return failure("the archive is disabled (archive.enabled = false)".into());
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    let work = tokio::task::spawn_blocking(move || {
        let progress_tx = tx.clone();
        let mut progress = |done, total| {
            let _ = progress_tx.blocking_send(Frame::line(&Progress {
                progress: (done, total),
            }));
        };
        let mut sink = FrameSink {
            tx,
            buffer: Vec::with_capacity(FRAME_BYTES),
        };
        let response = run_export(
            &archive,
            &request.spec,
            &request.keys,
            &mut sink,
            &mut progress,
        );
        match sink.flush() {
            Ok(()) => response,
            Err(e) => failure(format!("export aborted: {e}")),
        }
    });
    while let Some(chunk) = rx.recv().await {
        if write.write_all(&chunk).await.is_err() {
            break; // the CLI went away: dropping `rx` stops the export
        }
    }
    drop(rx);
    work.await.unwrap_or_else(|e| failure(e.to_string()))
}

/// Data is sent in frames of at most this many bytes.
const FRAME_BYTES: usize = 256 << 10;

/// Turns the export's files into frames for the channel.
struct FrameSink {
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
    buffer: Vec<u8>,
}

impl FrameSink {
    fn send(&self, bytes: Vec<u8>) -> std::io::Result<()> {
        self.tx
            .blocking_send(bytes)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client is gone"))
    }
}

impl Write for FrameSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(buf);
        if self.buffer.len() >= FRAME_BYTES {
            self.flush()?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let data = std::mem::take(&mut self.buffer);
        let mut frame = Frame::line(&Frame::Data { data: data.len() });
        frame.extend_from_slice(&data);
        self.buffer = Vec::with_capacity(FRAME_BYTES);
        self.send(frame)
    }
}

impl ExportSink for FrameSink {
    fn start(&mut self, name: &str) -> std::io::Result<()> {
        self.flush()?;
        self.send(Frame::line(&Frame::Start {
            start: name.to_owned(),
        }))
    }
}
