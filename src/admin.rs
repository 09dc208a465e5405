//! The local admin socket (`data_dir/admin.sock`, mode 0600): lets the CLI run spool
//! maintenance (`check`, `rebuild-index`) through a running server, which holds the index,
//! and ask it for its certificate (`cert status`, `cert renew`).
//! One JSON request line in, one JSON response line out.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixListener;

use crate::context::State;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Request {
    Check,
    RebuildIndex,
    /// The certificate in use (`cert status`).
    CertStatus,
    /// Issue an ACME certificate now (`cert renew`).
    CertRenew,
    /// Archive counters (`archive stats`).
    ArchiveStats,
    /// Make a user's entitled items readable (`archive grant`); answered with progress
    /// lines before the response.
    Grant(GrantRequest),
    /// Run retention now, or only say what it would remove (`archive retention`).
    Retention {
        dry_run: bool,
    },
    /// Check the integrity chain and every item file (`archive verify`); answered with
    /// progress lines before the response.
    Verify,
}

/// `archive grant` through the server: the user and the keys that open the file keys (the
/// recovery key, or an auditor's key the CLI unwrapped). Never logged.
#[derive(Clone, Serialize, Deserialize)]
pub struct GrantRequest {
    pub login: String,
    pub keys: Vec<String>,
    /// Items per durable commit.
    #[serde(default = "default_grant_batch")]
    pub batch: usize,
}

fn default_grant_batch() -> usize {
    crate::archive::GRANT_BATCH
}

impl std::fmt::Debug for GrantRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrantRequest")
            .field("login", &self.login)
            .field("keys", &format_args!("[{} redacted]", self.keys.len()))
            .field("batch", &self.batch)
            .finish()
    }
}

/// A line sent while a long request runs: (done, total).
#[derive(Debug, Serialize, Deserialize)]
pub struct Progress {
    pub progress: (u64, u64),
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    pub problems: Vec<String>,
    pub messages: usize,
    pub added: usize,
    pub removed: usize,
    pub error: Option<String>,
    /// For certificate requests: the status of the certificate in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<serde_json::Value>,
    /// For `archive stats` and `archive grant`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<serde_json::Value>,
}

/// Longest request line; the requests are a few dozen bytes.
const MAX_REQUEST: usize = 4096;
/// A client gets this long to send its request.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("admin.sock")
}

/// Binds the socket (replacing a stale one) with owner-only permissions.
pub fn bind(data_dir: &Path) -> std::io::Result<UnixListener> {
    let path = socket_path(data_dir);
    if std::os::unix::net::UnixStream::connect(&path).is_ok() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "another journalgate serve is running on this data dir",
        ));
    }
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

pub fn unlink(data_dir: &Path) {
    let _ = std::fs::remove_file(socket_path(data_dir));
}

pub async fn run(listener: UnixListener, state: Arc<State>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut reader = tokio::io::BufReader::new(read);
            let line = match crate::net::read_line_timeout(
                &mut reader,
                MAX_REQUEST,
                REQUEST_TIMEOUT,
            )
            .await
            {
                Ok(crate::net::Line::Ok(line)) => line,
                Ok(crate::net::Line::TooLong) => {
                    let mut out = serde_json::to_vec(&failure("request too long".into()))
                        .expect("serializes");
                    out.push(b'\n');
                    let _ = write.write_all(&out).await;
                    return;
                }
                _ => return,
            };
            let response = match serde_json::from_slice::<Request>(&line) {
                Ok(request @ (Request::CertStatus | Request::CertRenew)) => {
                    cert_request(&state, request).await
                }
                Ok(Request::ArchiveStats) => archive_stats(&state).await,
                Ok(Request::Grant(grant)) => match state.archive.clone() {
                    Some(archive) => {
                        with_progress(&mut write, move |progress| {
                            run_grant(&archive, &grant, progress)
                        })
                        .await
                    }
                    None => failure("the archive is disabled (archive.enabled = false)".into()),
                },
                Ok(Request::Verify) => match state.archive.clone() {
                    Some(archive) => {
                        with_progress(&mut write, move |progress| run_verify(&archive, progress))
                            .await
                    }
                    None => failure("the archive is disabled (archive.enabled = false)".into()),
                },
                Ok(Request::Retention { dry_run }) => match state.archive.clone() {
                    Some(archive) => {
                        tokio::task::spawn_blocking(move || run_retention(&archive, dry_run))
                            .await
                            .unwrap_or_else(|e| failure(e.to_string()))
                    }
                    None => failure("the archive is disabled (archive.enabled = false)".into()),
                },
                Ok(request) => {
                    let (spool, archive) = (state.spool.clone(), state.archive.clone());
                    tokio::task::spawn_blocking(move || {
                        let check = matches!(request, Request::Check);
                        let mut response = execute(&spool, request);
                        if let (true, Some(archive)) = (check, archive) {
                            add_archive_problems(&mut response, archive.check());
                        }
                        response
                    })
                    .await
                    .unwrap_or_else(|e| failure(e.to_string()))
                }
                Err(_) => failure("bad request".into()),
            };
            let mut out = serde_json::to_vec(&response).expect("serializes");
            out.push(b'\n');
            let _ = write.write_all(&out).await;
        });
    }
}

fn failure(error: String) -> Response {
    Response {
        ok: false,
        problems: vec![],
        messages: 0,
        added: 0,
        removed: 0,
        error: Some(error),
        cert: None,
        archive: None,
    }
}

async fn archive_stats(state: &State) -> Response {
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
async fn with_progress(
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

/// `cert status` / `cert renew` against the running server's certificate.
async fn cert_request(state: &State, request: Request) -> Response {
    let source = state.config.tls.source;
    let renewed = match (request, &state.acme) {
        (Request::CertRenew, Some(acme)) => acme.renew_now().await.map(|_| ()),
        (Request::CertRenew, None) => Err(crate::acme::AcmeError::NotAcme(
            crate::tls::source_name(source),
        )),
        _ => Ok(()),
    };
    let status = serde_json::to_value(state.resolver.status(source)).ok();
    Response {
        ok: renewed.is_ok(),
        error: renewed.err().map(|e| e.to_string()),
        cert: status,
        ..failure(String::new())
    }
}

/// Adds what the archive check found to a `check` response.
pub fn add_archive_problems(
    response: &mut Response,
    found: Result<Vec<String>, crate::archive::ArchiveError>,
) {
    let problems = found.unwrap_or_else(|e| vec![format!("archive: {e}")]);
    if !problems.is_empty() {
        response.ok = false;
        response.problems.extend(problems);
    }
}

/// Runs a maintenance request against an open spool (in the server or in the CLI).
pub fn execute(spool: &crate::spool::Spool, request: Request) -> Response {
    let result = match request {
        Request::Check => spool.check().map(|problems| Response {
            ok: problems.is_empty(),
            problems,
            messages: spool.indexed_messages().unwrap_or(0) as usize,
            added: 0,
            removed: 0,
            error: None,
            cert: None,
            archive: None,
        }),
        Request::RebuildIndex => spool.reconcile().map(|r| Response {
            ok: true,
            problems: vec![],
            messages: r.messages,
            added: r.added,
            removed: r.removed,
            error: None,
            cert: None,
            archive: None,
        }),
        Request::CertStatus
        | Request::CertRenew
        | Request::ArchiveStats
        | Request::Grant(_)
        | Request::Verify
        | Request::Retention { .. } => {
            return failure("this request needs the running server".into())
        }
    };
    result.unwrap_or_else(|e| failure(e.to_string()))
}

/// Sends a request to a running server. `Ok(None)` when no server is listening.
pub fn request(data_dir: &Path, request: Request) -> std::io::Result<Option<Response>> {
    request_with_progress(data_dir, request, &mut |_, _| {})
}

/// [`request`], calling `on_progress(done, total)` for each progress line.
pub fn request_with_progress(
    data_dir: &Path,
    request: Request,
    on_progress: &mut dyn FnMut(u64, u64),
) -> std::io::Result<Option<Response>> {
    let path = socket_path(data_dir);
    let mut stream = match std::os::unix::net::UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    let mut line = serde_json::to_vec(&request).expect("serializes");
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut reader = BufReader::new(stream);
    loop {
        let mut reply = String::new();
        if reader.read_line(&mut reply)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the server closed the admin connection",
            ));
        }
        if let Ok(p) = serde_json::from_str::<Progress>(&reply) {
            on_progress(p.progress.0, p.progress.1);
            continue;
        }
        return serde_json::from_str(&reply)
            .map(Some)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e));
    }
}
