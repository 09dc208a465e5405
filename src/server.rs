//! `journalgate serve`: opens the spool, binds every listener, runs the protocol servers, and
//! shuts down gracefully on SIGTERM/SIGINT (stop accepting, let deliveries finish, flush).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Semaphore};

use crate::acme;
use crate::admin;
use crate::archive::{Archive, ArchiveError};
use crate::auth::Authenticator;
use crate::config::{Config, TlsSource};
use crate::imap;
use crate::mailbox::MailboxId;
use crate::net;
use crate::pop3;
use crate::smtp;
use crate::spool::Spool;
use crate::tls::{self, CertResolver};

/// How long sessions get to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// What every session shares.
pub struct State {
    pub config: Config,
    pub spool: Arc<Spool>,
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
    /// Open IMAP sessions per mailbox.
    pub imap_sessions: imap::SessionCounts,
    /// Mailboxes with an open POP3 session (RFC 1939 exclusive access).
    pub pop3_locks: Mutex<HashSet<MailboxId>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Spool(#[from] crate::spool::SpoolError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    Bind(#[from] net::BindError),
    #[error("admin socket: {0}")]
    Admin(std::io::Error),
    #[error("archive: {0}")]
    Archive(#[from] ArchiveError),
}

impl State {
    /// Opens the spool and the certificate and builds the shared state. The sender stops
    /// every session when `true` is sent.
    pub fn open(config: Config) -> Result<(Arc<State>, watch::Sender<bool>), ServeError> {
        let spool = Spool::open(&config.data_dir)?;
        let archive = match config.archive.enabled {
            true => {
                let archive = Archive::open(&config.archive, spool.clone())?;
                archive.start().map_err(ArchiveError::from)?;
                Some(archive)
            }
            false => None,
        };
        let resolver = CertResolver::new(tls::load_certificate(&config)?);
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
            imap_sessions: Default::default(),
            spool: spool.clone(),
            tls: acceptor,
            resolver,
            acme,
            shutdown: shutdown_rx,
            pop3_locks: Mutex::new(HashSet::new()),
            config,
        });
        Ok((state, shutdown_tx))
    }
}

/// Runs the gateway until SIGTERM or SIGINT.
pub async fn serve(config: Config) -> Result<(), ServeError> {
    let (state, shutdown_tx) = State::open(config)?;

    let mut bound = Vec::new();
    let c = &state.config;
    for (addrs, tls, proto) in [
        (&c.smtp.listen, false, "smtp"),
        (&c.smtp.listen_tls, true, "smtps"),
        (&c.pop3.listen, false, "pop3"),
        (&c.pop3.listen_tls, true, "pop3s"),
        (&c.imap.listen, false, "imap"),
        (&c.imap.listen_tls, true, "imaps"),
    ] {
        for listener in net::bind_all(addrs).await? {
            bound.push((listener, tls, proto));
        }
    }
    let admin_listener = admin::bind(&state.config.data_dir).map_err(ServeError::Admin)?;

    let mut tasks = Vec::new();
    let mut summary = Vec::new();
    for (listener, tls, proto) in bound {
        let addr = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        tracing::info!(protocol = proto, %addr, "listening");
        summary.push(format!("{proto} {addr}"));
        let state = state.clone();
        tasks.push(match proto {
            "smtp" | "smtps" => tokio::spawn(smtp::run(listener, tls, state)),
            "imap" | "imaps" => tokio::spawn(imap::run(listener, tls, state)),
            _ => tokio::spawn(pop3::run(listener, tls, state)),
        });
    }
    tasks.push(tokio::spawn(admin::run(admin_listener, state.clone())));
    if state.config.tls.source == TlsSource::Files {
        tasks.push(tokio::spawn(tls::watch_files(
            state.config.clone(),
            state.resolver.clone(),
            Duration::from_secs(10),
        )));
    }
    if let Some(acme) = &state.acme {
        tasks.push(tokio::spawn(acme.clone().run()));
    }
    println!("journalgate ready: {}", summary.join(", "));
    println!("  data dir: {}", state.config.data_dir.display());
    println!(
        "  create a mailbox with: journalgate mailbox create --name NAME (address: mbx-...@{})",
        state.config.hostname
    );

    wait_for_signal().await;
    tracing::info!("shutting down: refusing new work, letting deliveries finish");
    let _ = shutdown_tx.send(true);
    for task in &tasks {
        task.abort();
    }
    // Sessions hold connection permits; wait until they are all back.
    let all_smtp = state.config.smtp.max_connections as u32;
    let all_pop3 = state.config.pop3.max_connections as u32;
    let all_imap = state.config.imap.max_connections as u32;
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        let _a = state.smtp_limit.acquire_many(all_smtp).await;
        let _b = state.pop3_limit.acquire_many(all_pop3).await;
        let _c = state.imap_limit.acquire_many(all_imap).await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!("sessions still open after the grace period; closing them");
    }
    if let Some(archive) = &state.archive {
        archive.stop();
    }
    let spool = state.spool.clone();
    tokio::task::spawn_blocking(move || spool.shutdown())
        .await
        .ok();
    admin::unlink(&state.config.data_dir);
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// How one protocol's listener treats new connections.
pub struct Listener {
    pub protocol: &'static str,
    pub implicit_tls: bool,
    pub limit: net::Limit,
    /// Written to a client refused because `max_connections` is reached.
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
    use tokio::io::AsyncWriteExt;
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
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let mut stream = net::Stream::Plain(tcp);
            let Ok(_permit) = limit.try_acquire_owned() else {
                tracing::warn!(protocol, client = %peer, "connection refused: too many connections");
                let _ = stream.write_all(busy).await;
                return;
            };
            if implicit_tls {
                stream = match stream.upgrade(&state.tls, net::TLS_HANDSHAKE_TIMEOUT).await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!(protocol, client = %peer, error = %e, "TLS handshake failed");
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
