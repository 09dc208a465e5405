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

mod archive;
use archive::{archive_stats, with_progress};
pub use archive::{run_export, run_grant, run_item, run_retention, run_verify};

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
    /// Export items (`archive export`); answered with the files in [`Frame`]s and progress
    /// lines before the response.
    Export(ExportRequest),
    /// Where an item is and what it is filed as (`archive item`).
    Item {
        id: u64,
    },
    /// Switch a protocol's trace (`trace on|off`).
    Trace {
        protocol: String,
        on: bool,
        minutes: u64,
    },
}

/// `archive export` through the server: what to export and the keys that open it (the
/// recovery key, or an auditor's key the CLI unwrapped). Never logged.
#[derive(Clone, Serialize, Deserialize)]
pub struct ExportRequest {
    pub spec: crate::archive::export::ExportSpec,
    pub keys: Vec<String>,
}

impl std::fmt::Debug for ExportRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportRequest")
            .field("spec", &self.spec)
            .field("keys", &format_args!("[{} redacted]", self.keys.len()))
            .finish()
    }
}

/// A line the server sends before its response while an export runs: a new file starts,
/// or `data` bytes of it follow the line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Frame {
    Start { start: String },
    Data { data: usize },
}

impl Frame {
    /// `value` as one JSON line.
    pub fn line(value: &impl Serialize) -> Vec<u8> {
        let mut line = serde_json::to_vec(value).expect("serializes");
        line.push(b'\n');
        line
    }
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
                Ok(Request::Export(export)) => {
                    archive::export_request(&state, export, &mut write).await
                }
                Ok(Request::Trace {
                    protocol,
                    on,
                    minutes,
                }) => match state.trace.set(&protocol, on, minutes) {
                    Ok(until) => Response {
                        ok: true,
                        error: None,
                        archive: Some(serde_json::json!({
                            "protocol": protocol,
                            "until": until.map(crate::telemetry::rfc3339),
                        })),
                        ..failure(String::new())
                    },
                    Err(e) => failure(e),
                },
                Ok(Request::Item { id }) => match state.archive.clone() {
                    Some(archive) => tokio::task::spawn_blocking(move || run_item(&archive, id))
                        .await
                        .unwrap_or_else(|e| failure(e.to_string())),
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
        | Request::Export(_)
        | Request::Item { .. }
        | Request::Trace { .. }
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

/// What the CLI does with the files of an export as they arrive.
pub trait FrameHandler {
    fn start(&mut self, name: &str) -> std::io::Result<()>;
    fn data(&mut self, bytes: &[u8]) -> std::io::Result<()>;
    fn progress(&mut self, done: u64, total: u64);
}

/// Sends a request whose answer carries [`Frame`]s (an export). `Ok(None)` when no server
/// is listening.
pub fn request_frames(
    data_dir: &Path,
    request: Request,
    handler: &mut dyn FrameHandler,
) -> std::io::Result<Option<Response>> {
    let Some(stream) = connect(data_dir)? else {
        return Ok(None);
    };
    let mut reader = BufReader::with_capacity(256 << 10, send(stream, &request)?);
    let mut data = Vec::new();
    loop {
        let line = read_reply(&mut reader)?;
        if let Ok(p) = serde_json::from_str::<Progress>(&line) {
            handler.progress(p.progress.0, p.progress.1);
            continue;
        }
        match serde_json::from_str::<Frame>(&line) {
            Ok(Frame::Start { start }) => handler.start(&start)?,
            Ok(Frame::Data { data: n }) => {
                data.resize(n, 0);
                std::io::Read::read_exact(&mut reader, &mut data)?;
                handler.data(&data)?;
            }
            Err(_) => {
                return serde_json::from_str(&line)
                    .map(Some)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
            }
        }
    }
}

fn connect(data_dir: &Path) -> std::io::Result<Option<std::os::unix::net::UnixStream>> {
    match std::os::unix::net::UnixStream::connect(socket_path(data_dir)) {
        Ok(s) => Ok(Some(s)),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

fn send(
    mut stream: std::os::unix::net::UnixStream,
    request: &Request,
) -> std::io::Result<std::os::unix::net::UnixStream> {
    stream.write_all(&Frame::line(request))?;
    Ok(stream)
}

fn read_reply(reader: &mut impl BufRead) -> std::io::Result<String> {
    let mut reply = String::new();
    if reader.read_line(&mut reply)? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the server closed the admin connection",
        ));
    }
    Ok(reply)
}

/// [`request`], calling `on_progress(done, total)` for each progress line.
pub fn request_with_progress(
    data_dir: &Path,
    request: Request,
    on_progress: &mut dyn FnMut(u64, u64),
) -> std::io::Result<Option<Response>> {
    let Some(stream) = connect(data_dir)? else {
        return Ok(None);
    };
    let mut reader = BufReader::new(send(stream, &request)?);
    loop {
        let reply = read_reply(&mut reader)?;
        if let Ok(p) = serde_json::from_str::<Progress>(&reply) {
            on_progress(p.progress.0, p.progress.1);
            continue;
        }
        return serde_json::from_str(&reply)
            .map(Some)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e));
    }
}
