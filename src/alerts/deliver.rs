//! Where alerts go: a JSON webhook (POST, any 2xx is success) and e-mail through the
//! configured relay (lettre: STARTTLS, implicit TLS, or none to a loopback relay; login
//! with a password read from a file). Each channel has its own deadline; a failure is
//! reported, never retried here (a firing alert is sent again every `resend_hours`).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::Notice;
use crate::config::{AlertsConfig, SmtpTls};

/// A channel gets this long.
const DEADLINE: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    #[error("webhook: {0}")]
    Webhook(String),
    #[error("e-mail: {0}")]
    Email(String),
    #[error("{0} timed out")]
    Timeout(&'static str),
}

/// Sends a notice through every configured channel; returns how each went.
pub async fn send(
    config: &AlertsConfig,
    hostname: &str,
    notice: &Notice,
) -> Vec<(&'static str, Result<(), DeliverError>)> {
    let mut out = Vec::new();
    if !config.webhook_url.is_empty() {
        let sent = tokio::time::timeout(DEADLINE, webhook(&config.webhook_url, notice)).await;
        out.push((
            "webhook",
            sent.unwrap_or(Err(DeliverError::Timeout("webhook"))),
        ));
    }
    if !config.email_to.is_empty() && !config.smtp_relay.is_empty() {
        let sent = tokio::time::timeout(DEADLINE, email(config, hostname, notice)).await;
        out.push((
            "email",
            sent.unwrap_or(Err(DeliverError::Timeout("e-mail"))),
        ));
    }
    out
}

async fn webhook(url: &str, notice: &Notice) -> Result<(), DeliverError> {
    let fail = |e: &dyn std::fmt::Display| DeliverError::Webhook(e.to_string());
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .map_err(|e| fail(&e))?
        .https_or_http()
        .enable_http1()
        .build();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(https);
    let body = serde_json::to_vec(notice).expect("serializes");
    let request = hyper::Request::post(url)
        .header("content-type", "application/json")
        .header(
            "user-agent",
            concat!("journalgate/", env!("CARGO_PKG_VERSION")),
        )
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| fail(&e))?;
    let response = client.request(request).await.map_err(|e| fail(&e))?;
    if !response.status().is_success() {
        return Err(DeliverError::Webhook(format!(
            "answered {}",
            response.status()
        )));
    }
    Ok(())
}

/// The subject line of a notice's e-mail.
pub fn subject(notice: &Notice) -> String {
    format!(
        "[journalgate] {} {}{} on {}",
        notice.state.to_uppercase(),
        notice.alert,
        notice
            .mailbox
            .as_deref()
            .map(|m| format!(" {m}"))
            .unwrap_or_default(),
        notice.host
    )
}

async fn email(config: &AlertsConfig, hostname: &str, notice: &Notice) -> Result<(), DeliverError> {
    let fail = |e: &dyn std::fmt::Display| DeliverError::Email(e.to_string());
    let from = if config.email_from.is_empty() {
        format!("journalgate@{hostname}")
    } else {
        config.email_from.clone()
    };
    let mut builder = Message::builder()
        .from(from.parse().map_err(|e| fail(&e))?)
        .message_id(Some(format!(
            "<alert.{}@{hostname}>",
            crate::crypto::random_hex128()
        )))
        .subject(subject(notice))
        .header(ContentType::TEXT_PLAIN);
    for to in &config.email_to {
        builder = builder.to(to.parse().map_err(|e| fail(&e))?);
    }
    let text = format!(
        "{}\n\nalert:   {}\nstate:   {}\nsince:   {}\nmailbox: {}\nhost:    {}\n",
        notice.message,
        notice.alert,
        notice.state,
        notice.since,
        notice.mailbox.as_deref().unwrap_or("-"),
        notice.host
    );
    let message = builder.body(text).map_err(|e| fail(&e))?;
    transport(config)?
        .send(message)
        .await
        .map(|_| ())
        .map_err(|e| fail(&e))
}

fn transport(config: &AlertsConfig) -> Result<AsyncSmtpTransport<Tokio1Executor>, DeliverError> {
    let fail = |e: &dyn std::fmt::Display| DeliverError::Email(e.to_string());
    let (host, port) = config
        .smtp_relay
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.trim_matches(['[', ']']), p.parse::<u16>().ok()?)))
        .ok_or_else(|| {
            DeliverError::Email(format!(
                "smtp_relay {:?} is not host:port",
                config.smtp_relay
            ))
        })?;
    let tls = match config.smtp_tls {
        SmtpTls::None => {
            let loopback = host == "localhost"
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if !loopback {
                return Err(DeliverError::Email(
                    "smtp_tls = \"none\" is allowed only for a relay on loopback".into(),
                ));
            }
            Tls::None
        }
        mode => {
            let mut params = TlsParameters::builder(host.to_owned());
            if let Some(ca) = &config.smtp_ca_file {
                let pem = std::fs::read(ca).map_err(|e| fail(&e))?;
                params =
                    params.add_root_certificate(Certificate::from_pem(&pem).map_err(|e| fail(&e))?);
            }
            let params = params.build_rustls().map_err(|e| fail(&e))?;
            match mode {
                SmtpTls::Tls => Tls::Wrapper(params),
                _ => Tls::Required(params),
            }
        }
    };
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
        .port(port)
        .tls(tls)
        .timeout(Some(DEADLINE));
    if !config.smtp_username.is_empty() {
        let password = match &config.smtp_password_file {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| fail(&e))?
                .trim_end_matches(['\r', '\n'])
                .to_owned(),
            None => String::new(),
        };
        builder = builder.credentials(Credentials::new(config.smtp_username.clone(), password));
    }
    Ok(builder.build())
}
