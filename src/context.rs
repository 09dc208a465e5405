//! What every protocol session shares ([`State`]: config, spool, archive, logins, TLS,
//! limits, shutdown) and the accept loop each listener runs. Protocol servers depend on this
//! module; `server` only wires them together.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Semaphore};

use crate::acme;
use crate::archive::{Archive, ArchiveError};
use crate::audit::{AuditLog, Auditor};
use crate::auth::Authenticator;
use crate::config::Config;
use crate::mailbox::MailboxId;
use crate::net;
use crate::spool::Spool;
use crate::tls::{self, CertResolver};

/// Session counts per mailbox (or archive user), for `max_sessions_per_mailbox`.
pub type SessionCounts = Mutex<HashMap<String, usize>>;

/// What every session shares.
pub struct State {
    pub config: Config,
    pub spool: Arc<Spool>,
    /// Cluster mode (`[storage] backend = "s3"`): gateway mailboxes in the object store.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    /// The per-user archive (None when `archive.enabled = false`).
    pub archive: Option<Arc<Archive>>,
    pub auth: Arc<Authenticator>,
    pub tls: tls::Acceptor,
    pub resolver: Arc<CertResolver>,
    /// The ACME client, for `source = "acme"`.
    pub acme: Option<Arc<acme::Manager>>,
    pub shutdown: watch::Receiver<bool>,
    pub smtp_limit: net::Limit,
    pub pop3_limit: net::Limit,
    pub imap_limit: net::Limit,
    pub smtp_per_ip: Arc<net::IpLimit>,
    pub pop3_per_ip: Arc<net::IpLimit>,
    pub imap_per_ip: Arc<net::IpLimit>,
    /// Open IMAP sessions per mailbox.
    pub imap_sessions: SessionCounts,
    /// Mailboxes with an open POP3 session (RFC 1939 exclusive access).
    pub pop3_locks: Mutex<HashSet<MailboxId>>,
    /// The audit trail (archive logins, folders opened, bodies fetched, admin actions).
    pub audit: Auditor,
    /// Metrics and recent activity (the console, `/metrics`, the alerts).
    pub telemetry: Arc<crate::telemetry::Telemetry>,
    /// The alerts firing now (checked by the server's alert task).
    pub alerts: Arc<crate::alerts::Alerts>,
    /// When the server started.
    pub started: std::time::Instant,
    /// Which protocols' sessions are traced now.
    pub trace: crate::trace::Trace,
    /// `\Recent` marks of the folders IMAP sessions have selected.
    pub recent: crate::store::RecentMarks,
    /// What listens where, once every listener is bound.
    listeners: std::sync::OnceLock<Vec<(&'static str, std::net::SocketAddr)>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error(transparent)]
    Spool(#[from] crate::spool::SpoolError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    Bind(#[from] net::BindError),
    #[error("admin socket: {0}")]
    Admin(std::io::Error),
    #[error("listener: {0}")]
    Listener(std::io::Error),
    #[error("archive: {0}")]
    Archive(#[from] ArchiveError),
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
}

impl State {
    /// Messages and bytes waiting in a gateway mailbox (in cluster mode, in the store).
    pub fn mailbox_totals(
        &self,
        id: &crate::mailbox::MailboxId,
    ) -> Result<(u64, u64), crate::spool::SpoolError> {
        match &self.cluster {
            Some(cluster) => Ok(cluster.totals(id)),
            None => self.spool.totals(id),
        }
    }

    /// Opens the spool and the certificate and builds the shared state. The sender stops
    /// every session when `true` is sent.
    pub fn open(config: Config) -> Result<(Arc<State>, watch::Sender<bool>), ServeError> {
        let spool = Spool::open(&config.data_dir)?;
        let cluster = match config.storage.backend {
            crate::config::Backend::S3 => {
                let cluster = Arc::new(crate::cluster::Cluster::open(
                    &config.storage,
                    spool.mailboxes().clone(),
                )?);
                spool.set_remote(cluster.clone());
                spool.mailboxes().set_remote(cluster.registry.clone());
                Some(cluster)
            }
            crate::config::Backend::Local => None,
        };
        let signing_key = crate::archive::load_signing_key(&config.archive, &config.data_dir)?;
        let audit = Auditor::start(AuditLog::open(&config.data_dir, Some(signing_key))?)
            .map_err(crate::audit::AuditError::from)?;
        let archive = match config.archive.enabled {
            true => {
                let archive = Archive::open(&config.archive, spool.clone())?;
                archive.set_auditor(audit.clone());
                archive.start().map_err(ArchiveError::from)?;
                if archive.recovery_key().is_none() {
                    tracing::warn!(
                        "the archive has no recovery key: a password reset loses that user's archived history, and catch-all mail with no auditor is dropped; run `journalgate archive recovery init`"
                    );
                }
                if let Some(cluster) = &cluster {
                    cluster
                        .check_intake_key(&archive.intake_fingerprint())
                        .map_err(crate::cluster::ClusterError::Store)?;
                }
                Some(archive)
            }
            false => None,
        };
        let resolver =
            CertResolver::new(tls::load_certificate(&config, acme::load_stored(&config))?);
        let acceptor = tls::Acceptor::new(resolver.clone());
        let acme = acme::Manager::new(&config, resolver.clone());
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let state = Arc::new(State {
            auth: Authenticator::new(
                spool.mailboxes().clone(),
                archive.as_ref().map(|a| a.users().clone()),
                config.auth.clone(),
            ),
            archive,
            smtp_limit: Arc::new(Semaphore::new(config.smtp.max_connections)),
            pop3_limit: Arc::new(Semaphore::new(config.pop3.max_connections)),
            imap_limit: Arc::new(Semaphore::new(config.imap.max_connections)),
            smtp_per_ip: net::IpLimit::new(config.smtp.max_connections_per_ip),
            pop3_per_ip: net::IpLimit::new(config.pop3.max_connections_per_ip),
            imap_per_ip: net::IpLimit::new(config.imap.max_connections_per_ip),
            imap_sessions: Default::default(),
            spool: spool.clone(),
            cluster,
            tls: acceptor,
            resolver,
            acme,
            shutdown: shutdown_rx,
            pop3_locks: Mutex::new(HashSet::new()),
            audit,
            telemetry: Arc::new(crate::telemetry::Telemetry::open(&config.data_dir)),
            alerts: crate::alerts::Alerts::new(&config.alerts),
            started: std::time::Instant::now(),
            trace: crate::trace::Trace::default(),
            recent: crate::store::RecentMarks::default(),
            listeners: std::sync::OnceLock::new(),
            config,
        });
        Ok((state, shutdown_tx))
    }
}

impl State {
    /// Records what listens where (once, when the server has bound everything).
    pub fn set_listeners(&self, listeners: Vec<(&'static str, std::net::SocketAddr)>) {
        let _ = self.listeners.set(listeners);
    }

    /// What listens where (empty until every listener is bound).
    pub fn listeners(&self) -> &[(&'static str, std::net::SocketAddr)] {
        self.listeners.get().map(Vec::as_slice).unwrap_or(&[])
    }
}

/// How one protocol's listener treats new connections.
pub struct Listener {
    pub protocol: &'static str,
    pub implicit_tls: bool,
    pub limit: net::Limit,
    pub per_ip: Arc<net::IpLimit>,
    /// Written to a client refused because `max_connections` (or the per-address cap) is
    /// reached, on plaintext listeners; an implicit-TLS client is just disconnected (a
    /// plaintext answer would be garbage to it, and a handshake costs what the cap saves).
    pub busy: &'static [u8],
}

/// Accepts connections until shutdown. Each one takes a connection permit (or is told `busy`
/// and closed), completes the TLS handshake on implicit-TLS listeners, and runs `session`.
pub async fn accept_loop<F, Fut>(
    listener: tokio::net::TcpListener,
    how: Listener,
    state: Arc<State>,
    session: F,
) where
    F: Fn(net::Stream, std::net::SocketAddr, Arc<State>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = std::io::Result<()>> + Send + 'static,
{
    let session = Arc::new(session);
    let mut shutdown = state.shutdown.clone();
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(protocol = how.protocol, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let (state, session, limit) = (state.clone(), session.clone(), how.limit.clone());
        let (protocol, implicit_tls, busy) = (how.protocol, how.implicit_tls, how.busy);
        let per_ip = how.per_ip.clone();
        tokio::spawn(async move {
            let _session = state.telemetry.session(protocol);
            let _ = tcp.set_nodelay(true);
            let mut stream = net::Stream::Plain(tcp);
            let Some(_ip_permit) = per_ip.try_take(peer.ip()) else {
                tracing::warn!(protocol, client = %peer, "connection refused: too many connections from this address");
                refuse(&mut stream, implicit_tls, busy).await;
                return;
            };
            let Ok(_permit) = limit.try_acquire_owned() else {
                tracing::warn!(protocol, client = %peer, "connection refused: too many connections");
                refuse(&mut stream, implicit_tls, busy).await;
                return;
            };
            if implicit_tls {
                stream = match stream.upgrade(&state.tls, net::TLS_HANDSHAKE_TIMEOUT).await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!(protocol, client = %peer, error = %e, "TLS handshake failed");
                        state.telemetry.tls_failure(protocol, peer.ip());
                        return;
                    }
                };
            }
            if let Err(e) = session(stream, peer, state).await {
                tracing::debug!(protocol, client = %peer, error = %e, "session ended");
            }
        });
    }
}

/// Turns a connection away: the busy line on a plaintext listener, nothing on implicit TLS.
async fn refuse(stream: &mut net::Stream, implicit_tls: bool, busy: &[u8]) {
    use tokio::io::AsyncWriteExt;
    if !implicit_tls {
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.write_all(busy)).await;
    }
}
