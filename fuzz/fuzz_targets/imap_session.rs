//! Feeds arbitrary bytes to a real IMAP session (PREAUTH, INBOX selected, a few messages
//! in the spool) over an in-memory pipe. The session must answer and end cleanly at EOF:
//! no panic, no hang.

#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use journalgate::auth::Session as Login;
use journalgate::config::Config;
use journalgate::crypto;
use journalgate::net::Stream;
use journalgate::server::State;
use journalgate::spool::{Envelope, Target};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Runtime;

struct Env {
    runtime: Runtime,
    state: Arc<State>,
    login: Login,
}

const FIXTURES: &[&[u8]] = &[
    b"From: A <a@example.com>\r\nTo: b@example.com\r\nSubject: one\r\nMessage-ID: <1@x>\r\n\r\nbody one\r\n",
    b"Content-Type: multipart/mixed; boundary=b\r\nSubject: two\r\n\r\n--b\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\naGVsbG8=\r\n--b\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\ninner\r\n--b--\r\n",
    b"garbage without header",
];

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = std::env::temp_dir().join(format!("jg-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let config = Config {
            data_dir: dir,
            ..Config::default()
        };
        let (state, shutdown) = runtime.block_on(async { State::open(config) }).unwrap();
        std::mem::forget(shutdown);
        let (record, password) = state.spool.mailboxes().create("fuzz", "").unwrap();
        let wrapped = state.spool.mailboxes().wrapped_identity(&record.id).unwrap();
        let identity = crypto::unwrap_identity(&wrapped, &password).unwrap();
        let login = Login { record, identity };
        let env = Env { runtime, state, login };
        refill(&env);
        env
    })
}

/// Delivers the fixtures again when the fuzzer expunged the mailbox.
fn refill(env: &Env) {
    let id = &env.login.record.id;
    if env.state.spool.list(id).map(|l| l.len()).unwrap_or(0) >= FIXTURES.len() {
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
            let mut delivery = env.state.spool.begin(targets, false);
            delivery.write(raw);
            delivery.commit().await.unwrap();
        }
    });
}

fuzz_target!(|data: &[u8]| {
    let env = env();
    refill(env);
    env.runtime.block_on(async {
        let (client, server) = tokio::io::duplex(1 << 20);
        let session = tokio::spawn(journalgate::imap::serve_connection(
            Stream::Memory(server),
            "127.0.0.1:1".parse().unwrap(),
            env.state.clone(),
            Some(env.login.clone()),
        ));
        let (mut rd, mut wr) = tokio::io::split(client);
        let reader = tokio::spawn(async move {
            let mut sink = Vec::new();
            let _ = rd.read_to_end(&mut sink).await;
        });
        let _ = wr.write_all(b"s1 SELECT INBOX\r\n").await;
        let _ = wr.write_all(data).await;
        let _ = wr.write_all(b"\r\n").await;
        let _ = wr.shutdown().await;
        drop(wr);
        let finished = tokio::time::timeout(Duration::from_secs(10), session)
            .await
            .expect("IMAP session did not end after EOF");
        if let Err(e) = finished {
            if e.is_panic() {
                std::panic::resume_unwind(e.into_panic());
            }
        }
        let _ = reader.await;
    });
});
