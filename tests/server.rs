//! In-process integration tests: the whole gateway started on port 0 with a temp data dir,
//! spoken to over real TCP (and TLS) sockets with raw protocol lines, in the shape of
//! mini-redis's `tests/server.rs`. The Python e2e suite drives real clients; these run in
//! `cargo test` in seconds.

mod common;

use common::{deliver, plain, tls, Gateway};

const MESSAGE: &str =
    "From: a@contoso.example\r\nTo: b@contoso.example\r\nSubject: it\r\n\r\nhello\r\n..dot\r\n";

/// The delivered message as POP3/IMAP return it: the gateway's `Received:` first.
fn without_received(raw: &str) -> &str {
    let at = raw.find("\r\nFrom: ").expect("original header");
    &raw[at + 2..]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_refuses_what_it_must() {
    let gw = Gateway::start().await;
    let mut c = plain(gw.addr("smtp")).await;
    assert!(c.line().await.starts_with("220 "));
    assert!(c.cmd("FROB").await.starts_with("500 "));
    assert!(c.cmd("RCPT TO:<x@localhost>").await.starts_with("503 "));
    c.send("EHLO it.test\r\n").await;
    let ehlo = c.until("250 ").await;
    assert!(ehlo.iter().any(|l| l.contains("CHUNKING")), "{ehlo:?}");
    assert!(c.cmd("MAIL FROM:<>").await.starts_with("250"));
    let unknown = "mbx-0123456789abcdef0123456789abcdef@localhost";
    assert!(c
        .cmd(&format!("RCPT TO:<{unknown}>"))
        .await
        .starts_with("550 "));
    assert!(c.cmd("DATA").await.starts_with("554 "));
    assert!(c.cmd("QUIT").await.starts_with("221 "));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_delivery_is_collected_and_deleted_over_pop3() {
    let gw = Gateway::start().await;
    let (mbx, password) = gw.mailbox();
    let reply = deliver(&gw, &mbx, MESSAGE).await;
    assert!(reply.starts_with("250 "), "{reply}");

    let mut p = tls(gw.addr("pop3s")).await;
    assert!(p.line().await.starts_with("+OK"));
    assert!(p.cmd(&format!("USER {}", mbx.id)).await.starts_with("+OK"));
    let open = p.cmd(&format!("PASS {password}")).await;
    assert!(open.starts_with("+OK Mailbox open, 1 messages"), "{open}");
    let uidl = p.cmd("UIDL 1").await;
    assert_eq!(uidl, format!("+OK 1 {}.1", mbx.uidvalidity));
    assert!(p.cmd("RETR 1").await.starts_with("+OK"));
    let text = p.multiline().await.join("\r\n") + "\r\n";
    // Dot-stuffing is undone by the client: a stuffed line keeps its two dots on the wire.
    assert_eq!(without_received(&text), MESSAGE);
    assert!(p.cmd("DELE 1").await.starts_with("+OK"));
    assert!(p.cmd("QUIT").await.starts_with("+OK 1 messages deleted"));
    let state = &gw.running.as_ref().unwrap().state;
    assert!(state.spool.list(&mbx.id).unwrap().is_empty());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pop3_refuses_wrong_passwords_and_plaintext_logins() {
    let gw = Gateway::start().await;
    let (mbx, _) = gw.mailbox();
    let mut p = plain(gw.addr("pop3")).await;
    assert!(p.line().await.starts_with("+OK"));
    assert!(p.cmd(&format!("USER {}", mbx.id)).await.starts_with("-ERR"));
    let mut p = tls(gw.addr("pop3s")).await;
    assert!(p.line().await.starts_with("+OK"));
    assert!(p.cmd(&format!("USER {}", mbx.id)).await.starts_with("+OK"));
    assert!(p.cmd("PASS wrong").await.starts_with("-ERR [AUTH]"));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imap_fetches_flags_and_expunges_what_smtp_delivered() {
    let gw = Gateway::start().await;
    let (mbx, password) = gw.mailbox();
    for _ in 0..2 {
        assert!(deliver(&gw, &mbx, MESSAGE).await.starts_with("250 "));
    }
    let mut c = tls(gw.addr("imaps")).await;
    assert!(c
        .line()
        .await
        .starts_with("* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN"));
    let login = c.cmd(&format!("a LOGIN {} \"{password}\"", mbx.id)).await;
    assert!(login.starts_with("a OK"), "{login}");
    c.send("b SELECT INBOX\r\n").await;
    let select = c.until("b ").await;
    assert!(select.contains(&"* 2 EXISTS".to_owned()), "{select:?}");
    assert!(select.last().unwrap().starts_with("b OK [READ-WRITE]"));

    c.send("c UID FETCH 2 (FLAGS BODY.PEEK[])\r\n").await;
    let head = c.line().await;
    let size: usize = head
        .rsplit_once('{')
        .and_then(|(_, n)| n.strip_suffix('}'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("literal expected: {head}"));
    assert!(
        head.starts_with("* 2 FETCH (UID 2 FLAGS (\\Recent) BODY[] {"),
        "{head}"
    );
    let body = String::from_utf8(c.bytes(size).await).unwrap();
    assert_eq!(without_received(&body), MESSAGE.replace("..dot", ".dot"));
    assert_eq!(c.until("c ").await.last().unwrap(), "c OK FETCH completed");

    c.send("d STORE 1 +FLAGS (\\Deleted)\r\n").await;
    let store = c.until("d ").await;
    assert_eq!(store[0], "* 1 FETCH (FLAGS (\\Deleted \\Recent))");
    c.send("e EXPUNGE\r\n").await;
    let expunge = c.until("e ").await;
    assert_eq!(expunge, vec!["* 1 EXPUNGE", "e OK EXPUNGE completed"]);
    c.send("f SEARCH ALL\r\n").await;
    assert_eq!(c.until("f ").await[0], "* SEARCH 1");
    c.send("g LOGOUT\r\n").await;
    assert!(c.until("g ").await.last().unwrap().starts_with("g OK"));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imap_refuses_login_before_tls_and_unknown_folders() {
    let gw = Gateway::start().await;
    let (mbx, password) = gw.mailbox();
    let mut c = plain(gw.addr("imap")).await;
    assert!(c.line().await.contains("LOGINDISABLED"));
    let refused = c.cmd(&format!("a LOGIN {} \"{password}\"", mbx.id)).await;
    assert!(refused.starts_with("a NO [PRIVACYREQUIRED]"), "{refused}");
    let mut c = tls(gw.addr("imaps")).await;
    c.line().await;
    let bad = c.cmd(&format!("a LOGIN {} wrong", mbx.id)).await;
    assert!(bad.starts_with("a NO [AUTHENTICATIONFAILED]"), "{bad}");
    assert!(c
        .cmd(&format!("b LOGIN {} \"{password}\"", mbx.id))
        .await
        .starts_with("b OK"));
    assert!(c
        .cmd("c SELECT Trash")
        .await
        .starts_with("c NO [NONEXISTENT]"));
    assert!(c.cmd("d FETCH 1 FLAGS").await.starts_with("d BAD"));
    assert!(c
        .cmd("e APPEND INBOX {1+}\r\nx")
        .await
        .starts_with("e NO [NOPERM]"));
    gw.stop().await;
}

/// One plain HTTP/1.1 request to the console (loopback may speak plain HTTP); the answer.
async fn http(addr: std::net::SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_health_metrics_and_api_auth() {
    let gw = Gateway::start().await;
    let (mbx, _) = gw.mailbox();
    assert!(deliver(&gw, &mbx, MESSAGE).await.starts_with("250 "));
    let console = gw.addr("console");
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: it\r\nConnection: close\r\n\r\n");
    let health = http(console, &get("/healthz")).await;
    assert!(
        health.starts_with("HTTP/1.1 200") && health.ends_with("ok\n"),
        "{health}"
    );
    let ready = http(console, &get("/readyz")).await;
    assert!(ready.contains("\"ready\":true"), "{ready}");
    let metrics = http(console, &get("/metrics")).await;
    let accepted = format!(
        "journalgate_smtp_messages_accepted_total{{mailbox=\"{}\"}} 1",
        mbx.id
    );
    assert!(metrics.contains(&accepted), "{metrics}");
    assert!(metrics.contains(&format!(
        "journalgate_mailbox_messages{{mailbox=\"{}\"}} 1",
        mbx.id
    )));
    let api = http(console, &get("/api/v1/mailboxes")).await;
    assert!(
        api.starts_with("HTTP/1.1 401") && api.contains("\"unauthorized\""),
        "{api}"
    );
    let page = http(console, &get("/")).await;
    assert!(
        page.starts_with("HTTP/1.1 303") && page.contains("location: /login"),
        "{page}"
    );
    gw.stop().await;
}
