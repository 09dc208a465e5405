//! Prometheus metrics (the `prometheus` crate, text format 0.0.4). Counters and the fsync
//! histogram are updated as things happen; the gauges that describe the state (mailbox
//! contents, archive backlog, certificate, disk, firing alerts) are set from a [`Snapshot`]
//! just before each scrape.

use std::time::Duration;

use prometheus::proto::{LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// The metrics of the process.
pub struct Metrics {
    registry: Registry,
    accepted: IntCounterVec,
    rejected: IntCounterVec,
    bytes: IntCounter,
    logins: IntCounterVec,
    sessions: IntGaugeVec,
    fsync: Histogram,
    tls_failures: IntCounterVec,
    state: StateGauges,
}

/// Gauges set from a [`Snapshot`] at each scrape (the per-mailbox ones are built straight
/// from it: [`mailbox_families`]).
struct StateGauges {
    certificate: IntGaugeVec,
    disk_free: IntGaugeVec,
    alerts: IntGaugeVec,
}

/// One gateway mailbox's gauges.
#[derive(Debug, Default)]
pub struct MailboxGauges {
    pub id: String,
    pub messages: i64,
    pub bytes: i64,
    /// Unix seconds.
    pub last_received: Option<i64>,
    pub last_collected: Option<i64>,
}

/// What the state gauges show now.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub mailboxes: Vec<MailboxGauges>,
    /// (items, pending, untrusted reports total, recovery key configured), when archiving.
    pub archive: Option<(i64, i64, i64, bool)>,
    pub certificate_expiry: i64,
    pub disk_free: i64,
    /// Firing alerts by name (several mailboxes may fire one alert).
    pub alerts: Vec<(String, i64)>,
    /// Cluster mode only.
    pub cluster: Option<crate::cluster::status::ClusterStatus>,
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
}

fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric")
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let fsync = Histogram::with_opts(
            HistogramOpts::new(
                "journalgate_delivery_fsync_seconds",
                "Time from the end of a message's data to its copies being durable",
            )
            .buckets(vec![
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
            ]),
        )
        .expect("valid metric");
        let m = Metrics {
            accepted: counter_vec(
                "journalgate_smtp_messages_accepted_total",
                "Messages stored and answered 250, per gateway mailbox",
                &["mailbox"],
            ),
            rejected: counter_vec(
                "journalgate_smtp_rejected_total",
                "SMTP commands or messages refused, by reason",
                &["reason"],
            ),
            bytes: IntCounter::new("journalgate_smtp_bytes_total", "Octets of messages stored")
                .expect("valid metric"),
            logins: counter_vec(
                "journalgate_logins_total",
                "Logins tried, by protocol and result (ok, failed)",
                &["protocol", "result"],
            ),
            sessions: gauge_vec(
                "journalgate_sessions",
                "Sessions open now, by protocol",
                &["protocol"],
            ),
            tls_failures: counter_vec(
                "journalgate_tls_handshake_failures_total",
                "TLS handshakes that failed, by protocol",
                &["protocol"],
            ),
            fsync,
            state: StateGauges {
                certificate: gauge_vec(
                    "journalgate_certificate_expiry_timestamp_seconds",
                    "When the certificate in use expires (unix time)",
                    &[],
                ),
                disk_free: gauge_vec(
                    "journalgate_disk_free_bytes",
                    "Free space on the data directory's filesystem",
                    &[],
                ),
                alerts: gauge_vec(
                    "journalgate_alerts_firing",
                    "Alerts firing now, by alert (several mailboxes may fire one)",
                    &["alert"],
                ),
            },
            registry,
        };
        for c in [&m.accepted, &m.rejected, &m.logins, &m.tls_failures] {
            m.registry.register(Box::new(c.clone())).expect("unique");
        }
        m.registry
            .register(Box::new(m.bytes.clone()))
            .expect("unique");
        m.registry
            .register(Box::new(m.sessions.clone()))
            .expect("unique");
        m.registry
            .register(Box::new(m.fsync.clone()))
            .expect("unique");
        let s = &m.state;
        for g in [&s.certificate, &s.disk_free, &s.alerts] {
            m.registry.register(Box::new(g.clone())).expect("unique");
        }
        m
    }

    pub fn accepted(&self, mailbox: &str, size: u64, commit: Duration) {
        self.accepted.with_label_values(&[mailbox]).inc();
        self.bytes.inc_by(size);
        self.fsync.observe(commit.as_secs_f64());
    }

    pub fn rejected(&self, reason: &str) {
        self.rejected.with_label_values(&[reason]).inc();
    }

    pub fn login(&self, protocol: &str, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.logins.with_label_values(&[protocol, result]).inc();
    }

    pub fn tls_failure(&self, protocol: &str) {
        self.tls_failures.with_label_values(&[protocol]).inc();
    }

    pub fn session(&self, protocol: &'static str) -> SessionGuard {
        let gauge = self.sessions.with_label_values(&[protocol]);
        gauge.inc();
        SessionGuard(gauge)
    }

    /// The text to answer a scrape with, the state gauges set from `snapshot`.
    pub fn render(&self, snapshot: &Snapshot) -> String {
        let s = &self.state;
        s.alerts.reset();
        s.certificate
            .with_label_values(&[] as &[&str])
            .set(snapshot.certificate_expiry);
        s.disk_free
            .with_label_values(&[] as &[&str])
            .set(snapshot.disk_free);
        for (alert, n) in &snapshot.alerts {
            s.alerts.with_label_values(&[alert]).set(*n);
        }
        let mut families = self.registry.gather();
        families.extend(mailbox_families(&snapshot.mailboxes));
        families.sort_by(|a, b| a.name().cmp(b.name()));
        families.extend(archive_families(snapshot));
        families.extend(cluster_families(snapshot));
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&families, &mut out)
            .expect("text encoding cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

/// The per-mailbox gauges, built straight from the snapshot for each scrape: at 1,000
/// mailboxes, setting 4,000 series in gauge vectors (a hash lookup each, after a reset) and
/// gathering them back out cost more than the rest of the scrape.
fn mailbox_families(mailboxes: &[MailboxGauges]) -> Vec<MetricFamily> {
    type Pick = fn(&MailboxGauges) -> Option<i64>;
    let families: [(&str, &str, Pick); 4] = [
        (
            "journalgate_mailbox_messages",
            "Messages waiting in a gateway mailbox",
            |m| Some(m.messages),
        ),
        (
            "journalgate_mailbox_bytes",
            "Octets waiting in a gateway mailbox",
            |m| Some(m.bytes),
        ),
        (
            "journalgate_mailbox_last_received_timestamp_seconds",
            "When a gateway mailbox last received a message (unix time)",
            |m| m.last_received,
        ),
        (
            "journalgate_mailbox_last_collected_timestamp_seconds",
            "When a gateway mailbox was last collected (unix time)",
            |m| m.last_collected,
        ),
    ];
    families
        .into_iter()
        .filter_map(|(name, help, pick)| {
            let metrics: Vec<Metric> = mailboxes
                .iter()
                .filter_map(|m| {
                    let value = pick(m)?;
                    let mut label = LabelPair::default();
                    label.set_name("mailbox".into());
                    label.set_value(m.id.clone());
                    let mut gauge = prometheus::proto::Gauge::default();
                    gauge.set_value(value as f64);
                    let mut metric = Metric::default();
                    metric.set_label(vec![label]);
                    metric.set_gauge(gauge);
                    Some(metric)
                })
                .collect();
            // Like a gauge vector without series: no family at all.
            if metrics.is_empty() {
                return None;
            }
            let mut family = MetricFamily::default();
            family.set_name(name.into());
            family.set_help(help.into());
            family.set_field_type(MetricType::GAUGE);
            family.set_metric(metrics);
            Some(family)
        })
        .collect()
}

/// The archive's gauges, made fresh for each scrape (they exist only with an archive).
fn archive_families(snapshot: &Snapshot) -> Vec<MetricFamily> {
    let Some((items, pending, untrusted, recovery)) = snapshot.archive else {
        return Vec::new();
    };
    let registry = Registry::new();
    let gauge = |name: &str, help: &str, value: i64| {
        let g = prometheus::IntGauge::new(name, help).expect("valid metric");
        g.set(value);
        registry.register(Box::new(g)).expect("unique");
    };
    gauge("journalgate_archive_items", "Messages archived", items);
    gauge(
        "journalgate_archive_pending",
        "Messages waiting to be archived",
        pending,
    );
    gauge(
        "journalgate_archive_recovery_key",
        "1 when the archive has a recovery key",
        i64::from(recovery),
    );
    let c = IntCounter::new(
        "journalgate_archive_untrusted_reports_total",
        "Journal reports from untrusted networks, archived as plain copies",
    )
    .expect("valid metric");
    c.inc_by(untrusted.max(0) as u64);
    registry.register(Box::new(c)).expect("unique");
    registry.gather()
}

/// The cluster's gauges, made fresh for each scrape (they exist only in cluster mode).
fn cluster_families(snapshot: &Snapshot) -> Vec<MetricFamily> {
    let Some(cluster) = &snapshot.cluster else {
        return Vec::new();
    };
    let registry = Registry::new();
    let up = prometheus::IntGauge::new(
        "journalgate_cluster_store_up",
        "1 when the cluster's object store answered the last registry sync",
    )
    .expect("valid metric");
    up.set(i64::from(cluster.store_up));
    registry.register(Box::new(up)).expect("unique");
    let synced = prometheus::IntGauge::new(
        "journalgate_cluster_registry_synced_timestamp_seconds",
        "When this node last synced the mailbox registry with the store",
    )
    .expect("valid metric");
    synced.set(cluster.last_sync.unwrap_or(0));
    registry.register(Box::new(synced)).expect("unique");
    let nodes = gauge_vec(
        "journalgate_cluster_node_last_seen_timestamp_seconds",
        "Last heartbeat of each gateway node in the cluster",
        &["node"],
    );
    for n in &cluster.nodes {
        nodes.with_label_values(&[n.node.as_str()]).set(n.last_seen);
    }
    registry.register(Box::new(nodes)).expect("unique");
    registry.gather()
}

/// Counts one open session until dropped.
pub struct SessionGuard(prometheus::IntGauge);

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_contract_families() {
        let m = Metrics::new();
        m.accepted("mbx-1", 100, Duration::from_millis(3));
        m.rejected("unknown_mailbox");
        m.login("pop3", true);
        let _s = m.session("imap");
        let text = m.render(&Snapshot {
            mailboxes: vec![MailboxGauges {
                id: "mbx-1".into(),
                messages: 2,
                bytes: 200,
                last_received: Some(1_700_000_000),
                last_collected: None,
            }],
            archive: Some((5, 1, 0, true)),
            certificate_expiry: 1_800_000_000,
            disk_free: 1 << 30,
            alerts: vec![("mailbox_silent".into(), 1)],
            cluster: Some(crate::cluster::status::ClusterStatus {
                node: "node-a".into(),
                store_up: true,
                last_sync: Some(1_700_000_100),
                last_error: None,
                nodes: vec![crate::cluster::status::NodeSeen {
                    node: "node-b".into(),
                    last_seen: 1_700_000_099,
                }],
            }),
        });
        for needle in [
            "journalgate_smtp_messages_accepted_total{mailbox=\"mbx-1\"} 1",
            "journalgate_smtp_rejected_total{reason=\"unknown_mailbox\"} 1",
            "journalgate_smtp_bytes_total 100",
            "journalgate_logins_total{protocol=\"pop3\",result=\"ok\"} 1",
            "journalgate_sessions{protocol=\"imap\"} 1",
            "journalgate_delivery_fsync_seconds_bucket",
            "journalgate_mailbox_messages{mailbox=\"mbx-1\"} 2",
            "journalgate_mailbox_bytes{mailbox=\"mbx-1\"} 200",
            "journalgate_mailbox_last_received_timestamp_seconds{mailbox=\"mbx-1\"} 1700000000",
            "journalgate_archive_items 5",
            "journalgate_archive_pending 1",
            "journalgate_archive_untrusted_reports_total 0",
            "journalgate_archive_recovery_key 1",
            "journalgate_certificate_expiry_timestamp_seconds 1800000000",
            "journalgate_disk_free_bytes 1073741824",
            "journalgate_alerts_firing{alert=\"mailbox_silent\"} 1",
            "journalgate_cluster_store_up 1",
            "journalgate_cluster_registry_synced_timestamp_seconds 1700000100",
            "journalgate_cluster_node_last_seen_timestamp_seconds{node=\"node-b\"} 1700000099",
        ] {
            assert!(text.contains(needle), "{needle} missing in\n{text}");
        }
    }
}

/// A measurement, not a check: `cargo test --release --lib render_time -- --ignored
/// --nocapture` prints the cost of rendering a scrape at 1,000 mailboxes.
#[cfg(test)]
mod timing {
    use super::*;

    #[test]
    #[ignore]
    fn render_time_at_1000_mailboxes() {
        let m = Metrics::new();
        let snapshot = Snapshot {
            mailboxes: (0..1000)
                .map(|i| MailboxGauges {
                    id: format!("mbx-{i:032x}"),
                    messages: 100,
                    bytes: 400_000,
                    last_received: Some(1_700_000_000),
                    last_collected: Some(1_700_000_000),
                })
                .collect(),
            ..Default::default()
        };
        for i in 0..1000 {
            m.accepted(&format!("mbx-{i:032x}"), 100, Duration::from_millis(1));
        }
        let t = std::time::Instant::now();
        for _ in 0..50 {
            std::hint::black_box(m.render(&snapshot));
        }
        eprintln!("render: {:?} per scrape", t.elapsed() / 50);
    }
}
