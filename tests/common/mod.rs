//! What the in-process integration tests share: a gateway started on port 0 in a temp
//! directory, a gateway mailbox, and small line clients over TCP, plain or TLS.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use journalgate::config::Config;
use journalgate::mailbox::MailboxRecord;
use journalgate::server::{self, Running};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

pub struct Gateway {
    pub running: Option<Running>,
    pub dir: PathBuf,
}

impl Gateway {
    /// A gateway with SMTP on plain TCP and POP3/IMAP on implicit TLS, all on free ports.
    pub async fn start() -> Gateway {
        let dir = std::env::temp_dir().join(format!(
            "jg-it-{}-{}",
            std::process::id(),
            journalgate::crypto::random_hex128()
        ));
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let mut config = Config {
            data_dir: dir.clone(),
            ..Config::default()
        };
        config.smtp.listen = vec![any];
        config.smtp.listen_tls = vec![];
        config.pop3.listen = vec![any];
        config.pop3.listen_tls = vec![any];
        config.imap.listen = vec![any];
        config.imap.listen_tls = vec![any];
        config.archive.enabled = false;
        config.console.listen = "127.0.0.1:0".into();
        let running = server::start(config).await.expect("gateway starts");
        Gateway {
            running: Some(running),
            dir,
        }
    }

    pub fn addr(&self, protocol: &str) -> SocketAddr {
        self.running.as_ref().unwrap().addr(protocol).unwrap()
    }

    /// A new gateway mailbox and its password.
    pub fn mailbox(&self) -> (MailboxRecord, String) {
        let state = &self.running.as_ref().unwrap().state;
        state.spool.mailboxes().create("it", "").unwrap()
    }

    pub async fn stop(mut self) {
        self.running.take().unwrap().stop().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A line-oriented client (SMTP, POP3, IMAP) over any stream.
pub struct Client<S> {
    io: BufReader<S>,
}

pub async fn plain(addr: SocketAddr) -> Client<TcpStream> {
    Client {
        io: BufReader::new(TcpStream::connect(addr).await.unwrap()),
    }
}

pub async fn tls(addr: SocketAddr) -> Client<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let config = rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate))
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    Client {
        io: BufReader::new(connector.connect(name, tcp).await.unwrap()),
    }
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> Client<S> {
    /// One line, without its CRLF.
    pub async fn line(&mut self) -> String {
        let mut line = String::new();
        let n = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            self.io.read_line(&mut line),
        )
        .await
        .expect("server answered in time")
        .unwrap();
        assert!(n > 0, "connection closed");
        line.trim_end_matches(['\r', '\n']).to_owned()
    }

    pub async fn send(&mut self, text: &str) {
        self.io.get_mut().write_all(text.as_bytes()).await.unwrap();
        self.io.get_mut().flush().await.unwrap();
    }

    /// Sends a command line and returns the first reply line.
    pub async fn cmd(&mut self, line: &str) -> String {
        self.send(&format!("{line}\r\n")).await;
        self.line().await
    }

    /// Lines up to and including the first that starts with `prefix`.
    pub async fn until(&mut self, prefix: &str) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let line = self.line().await;
            let done = line.starts_with(prefix);
            lines.push(line);
            if done {
                return lines;
            }
        }
    }

    /// A POP3 multi-line response body, up to (without) the terminating `.` line.
    pub async fn multiline(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let line = self.line().await;
            if line == "." {
                return lines;
            }
            lines.push(line);
        }
    }

    /// Exactly `n` octets.
    pub async fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut buf = vec![0u8; n];
        self.io.read_exact(&mut buf).await.unwrap();
        buf
    }
}

/// Accepts any server certificate (the gateway's is self-signed in these tests).
#[derive(Debug)]
struct AnyCertificate;

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &rustls_pki_types::CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &rustls_pki_types::CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Delivers `body` to `mailbox` over SMTP and returns the final reply.
pub async fn deliver(gw: &Gateway, mailbox: &MailboxRecord, body: &str) -> String {
    let mut c = plain(gw.addr("smtp")).await;
    assert!(c.line().await.starts_with("220 "));
    c.send("EHLO it.test\r\n").await;
    c.until("250 ").await;
    assert!(c
        .cmd("MAIL FROM:<journal@contoso.example>")
        .await
        .starts_with("250"));
    let rcpt = c.cmd(&format!("RCPT TO:<{}@localhost>", mailbox.id)).await;
    assert!(rcpt.starts_with("250"), "{rcpt}");
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.send(body).await;
    let reply = c.cmd(".").await;
    c.cmd("QUIT").await;
    reply
}
