//! `journalgate serve`: opens the spool, binds every listener, runs the protocol servers, and
//! shuts down gracefully on SIGTERM/SIGINT (stop accepting, let deliveries finish, flush).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin;
use crate::config::{Config, TlsSource};
use crate::console;
use crate::context::{ServeError, State};
use crate::imap;
use crate::net;
use crate::pop3;
use crate::smtp;
use crate::tls;

/// How long sessions get to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// A started gateway: every listener bound and served.
pub struct Running {
    pub state: Arc<State>,
    /// What listens where, e.g. `("smtp", 127.0.0.1:2525)`, in the order bound.
    pub listeners: Vec<(&'static str, SocketAddr)>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// Runs the gateway until SIGTERM or SIGINT.
pub async fn serve(config: Config) -> Result<(), ServeError> {
    let running = start(config).await?;
    let summary: Vec<String> = running
        .listeners
        .iter()
        .map(|(proto, addr)| format!("{proto} {addr}"))
        .collect();
    println!("journalgate ready: {}", summary.join(", "));
    println!("  data dir: {}", running.state.config.data_dir.display());
    println!(
        "  create a mailbox with: journalgate mailbox create --name NAME (address: mbx-...@{})",
        running.state.config.hostname
    );
    wait_for_signal().await;
    running.stop().await;
    Ok(())
}

/// Opens the spool, binds every listener (port 0 picks a free one) and starts serving.
pub async fn start(config: Config) -> Result<Running, ServeError> {
    let (state, shutdown) = State::open(config)?;
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
    let console_listener = match state.config.console.listen.trim() {
        "" => None,
        addr => {
            let addr: SocketAddr = addr.parse().map_err(|_| {
                ServeError::Listener(std::io::Error::other(format!(
                    "[console] listen {addr:?} is not an address:port"
                )))
            })?;
            net::bind_all(&[addr]).await?.pop()
        }
    };

    let mut tasks = Vec::new();
    let mut listeners = Vec::new();
    for (listener, tls, proto) in bound {
        let addr = listener.local_addr().map_err(ServeError::Listener)?;
        tracing::info!(protocol = proto, %addr, "listening");
        listeners.push((proto, addr));
        let state = state.clone();
        tasks.push(match proto {
            "smtp" | "smtps" => tokio::spawn(smtp::run(listener, tls, state)),
            "imap" | "imaps" => tokio::spawn(imap::run(listener, tls, state)),
            _ => tokio::spawn(pop3::run(listener, tls, state)),
        });
    }
    tasks.push(tokio::spawn(admin::run(admin_listener, state.clone())));
    if let Some(listener) = console_listener {
        let addr = listener.local_addr().map_err(ServeError::Listener)?;
        tracing::info!(protocol = "console", %addr, "listening");
        listeners.push(("console", addr));
        tasks.push(tokio::spawn(console::run(listener, state.clone())));
    }
    state.set_listeners(listeners.clone());
    tasks.push(tokio::spawn(state.alerts.clone().run(state.clone())));
    tasks.push(tokio::spawn(save_activity(state.clone())));
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
    if let Some(cluster) = &state.cluster {
        tasks.push(tokio::spawn(sync_registry(
            cluster.clone(),
            state.shutdown.clone(),
        )));
        if let Some(intake) = state.spool.intake() {
            tasks.push(tokio::spawn(pull_intake(
                cluster.clone(),
                intake,
                state.config.data_dir.join("tmp"),
                state.shutdown.clone(),
            )));
        }
    }
    Ok(Running {
        state,
        listeners,
        shutdown,
        tasks,
    })
}

impl Running {
    /// The first address `protocol` (`smtp`, `pop3s`, ...) listens on.
    pub fn addr(&self, protocol: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(p, _)| *p == protocol)
            .map(|(_, a)| *a)
    }

    /// Graceful stop: refuse new work, let sessions and deliveries finish (up to a grace
    /// period), stop the archive worker, flush the spool.
    pub async fn stop(self) {
        let state = self.state;
        tracing::info!("shutting down: refusing new work, letting deliveries finish");
        let _ = self.shutdown.send(true);
        for task in &self.tasks {
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
        let telemetry = state.telemetry.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || telemetry.activity.save()).await {
            tracing::warn!(error = %e, "cannot save the console's activity");
        }
        tracing::info!("stopped");
    }
}

/// Writes the console's activity out now and then (and at stop), so a restart keeps it.
async fn save_activity(state: Arc<State>) {
    loop {
        tokio::time::sleep(crate::telemetry::activity::SAVE_EVERY).await;
        let telemetry = state.telemetry.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || telemetry.activity.save()).await {
            tracing::warn!(error = %e, "cannot save the console's activity");
        }
    }
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

/// Keeps this node's mailbox registry in step with the cluster's and its heartbeat and
/// totals current, every two seconds.
async fn sync_registry(
    cluster: Arc<crate::cluster::Cluster>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut failing = false;
    loop {
        let upkeep = cluster.clone();
        match tokio::task::spawn_blocking(move || upkeep.upkeep()).await {
            Ok(Ok(report)) => {
                if failing {
                    tracing::info!("the cluster's object store answers again");
                }
                failing = false;
                if report != Default::default() {
                    tracing::info!(
                        pushed = report.pushed,
                        pulled = report.pulled,
                        removed = report.removed,
                        "mailbox registry synced"
                    );
                }
            }
            Ok(Err(e)) => {
                if !failing {
                    tracing::warn!(error = %e, "cannot sync the mailbox registry with the cluster");
                }
                failing = true;
            }
            Err(e) => tracing::error!(error = %e, "registry sync panicked"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Cluster mode with the archive on: while this node holds the archive worker claim, moves
/// the archive intake copies every node put in the store into this node's intake, every
/// second (see `cluster::intake`).
async fn pull_intake(
    cluster: Arc<crate::cluster::Cluster>,
    intake: Arc<crate::spool::Intake>,
    tmp_dir: std::path::PathBuf,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let held = Arc::new(std::sync::Mutex::new(None));
    let mut failing = false;
    loop {
        let (c, i, t, h) = (
            cluster.clone(),
            intake.clone(),
            tmp_dir.clone(),
            held.clone(),
        );
        let round = tokio::task::spawn_blocking(move || {
            let mut held = h.lock().unwrap_or_else(|p| p.into_inner());
            c.pull_intake(&mut held, &i, &t)
        })
        .await;
        match round {
            Ok(Ok(_)) => failing = false,
            Ok(Err(e)) => {
                if !failing {
                    tracing::warn!(error = %e, "cannot pull the archive intake from the cluster");
                }
                failing = true;
            }
            Err(e) => tracing::error!(error = %e, "archive intake pull panicked"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.changed() => return,
        }
    }
}
