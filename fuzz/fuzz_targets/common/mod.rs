//! What the session fuzz targets share: one gateway in a temp directory with one mailbox
//! (key unwrapped once), a few fixture messages kept delivered, and a driver that feeds bytes
//! into a session over an in-memory pipe and requires it to end after EOF.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use journalgate::auth::Session as Login;
use journalgate::config::Config;
use journalgate::context::State;
use journalgate::crypto;
use journalgate::message::Envelope;
use journalgate::net::Stream;
use journalgate::spool::Target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Runtime;

pub struct Env {
    pub runtime: Runtime,
    pub state: Arc<State>,
    pub login: Login,
}

pub const FIXTURES: &[&[u8]] = &[
    b"From: A <a@example.com>\r\nTo: b@example.com\r\nSubject: one\r\nMessage-ID: <1@x>\r\n\r\nbody one\r\n.dot line\r\n",
    b"Content-Type: multipart/mixed; boundary=b\r\nSubject: two\r\n\r\n--b\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\naGVsbG8=\r\n--b\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\ninner\r\n--b--\r\n",
    b"garbage without header",
];

pub fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = std::env::temp_dir().join(format!("jg-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut config = Config {
            data_dir: dir,
            ..Config::default()
        };
        config.smtp.max_message_size = 256 * 1024;
        let (state, shutdown) = runtime.block_on(async { State::open(config) }).unwrap();
        std::mem::forget(shutdown);
        let (record, password) = state.spool.mailboxes().create("fuzz", "").unwrap();
        let wrapped = state
            .spool
            .mailboxes()
            .wrapped_identity(&record.id)
            .unwrap();
        let identity = crypto::unwrap_identity(&wrapped, &password).unwrap();
        let login = Login { record, identity };
        let env = Env {
            runtime,
            state,
            login,
        };
        refill(&env);
        env
    })
}

/// Keeps the mailbox at the fixtures: delivers them again when the fuzzer expunged some,
/// removes what the fuzzer delivered over SMTP.
pub fn refill(env: &Env) {
    let id = &env.login.record.id;
    let listed = env.state.spool.list(id).unwrap_or_default();
    if listed.len() > 2 * FIXTURES.len() {
        let uids: Vec<u32> = listed.iter().map(|m| m.uid).collect();
        let _ = env.state.spool.expunge(id, &uids);
    } else if listed.len() >= FIXTURES.len() {
        return;
    }
    env.runtime.block_on(async {
        for raw in FIXTURES {
            let targets = vec![Target {
                mailbox: id.clone(),
                recipient: crypto::parse_recipient(&env.login.record.public_key).unwrap(),
                envelope: Envelope {
                    id: "fuzz".into(),
                    mail_from: String::new(),
                    rcpt_to: vec![],
                    client: "127.0.0.1:1".into(),
                    helo: "fuzz".into(),
                    tls: None,
                    received: 1_700_000_000,
                },
            }];
            let mut delivery = env.state.spool.begin(targets);
            delivery.write(raw);
            delivery.commit().await.unwrap();
        }
    });
}

/// Runs `session` on one end of a pipe, writes `prefix`, `data` and a CRLF to the other,
/// closes it, and requires the session to end within 10 s (a panic is re-raised).
pub fn drive<F, Fut>(env: &Env, prefix: &[u8], data: &[u8], session: F)
where
    F: FnOnce(Stream) -> Fut,
    Fut: Future<Output = std::io::Result<()>> + Send + 'static,
{
    env.runtime.block_on(async {
        let (client, server) = tokio::io::duplex(1 << 20);
        let session = tokio::spawn(session(Stream::Memory(server)));
        let (mut rd, mut wr) = tokio::io::split(client);
        let reader = tokio::spawn(async move {
            let mut sink = Vec::new();
            let _ = rd.read_to_end(&mut sink).await;
        });
        let _ = wr.write_all(prefix).await;
        let _ = wr.write_all(data).await;
        let _ = wr.write_all(b"\r\n").await;
        let _ = wr.shutdown().await;
        drop(wr);
        let finished = tokio::time::timeout(Duration::from_secs(10), session)
            .await
            .expect("session did not end after EOF");
        if let Err(e) = finished {
            if e.is_panic() {
                std::panic::resume_unwind(e.into_panic());
            }
        }
        let _ = reader.await;
    });
}
