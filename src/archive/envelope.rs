//! Journal envelopes: who a message was really sent to, as the journal report (or the SMTP
//! envelope of a plain copy) said: the sender, every recipient with its field (To, Cc,
//! **Bcc**), the distribution list each was expanded from, forwarding, and how the report
//! reached the gateway. The original's own header does not carry this (Bcc recipients and
//! list members never appear there), so it is kept as evidence beside the original.
//!
//! Each report filed gives one *envelope item*: a small RFC 5322 message (a readable text
//! part and the same data as JSON), sealed like any item but only to the auditors and the
//! recovery key, filed in the auditors' `Journal Envelopes` folder and linked to its
//! original. Retention and holds treat it as part of its original; exports include it.

use serde::{Deserialize, Serialize};

use crate::journal::{self, Address, Field};
use crate::message::Envelope;

/// The domain envelope items are written from.
pub const FROM_DOMAIN: &str = "journalgate.invalid";

/// The store folder of envelope items.
pub const ENVELOPES_FOLDER: &str = "envelopes";
const JSON_TYPE: &str = "application/vnd.journalgate.envelope+json";

/// What one report said about one message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEnvelope {
    /// `journal`, `ndr-journal`, `plain`, `untrusted-journal`, `quarantined` or `incident`
    /// (a report without an original).
    pub source: String,
    pub sender: Option<String>,
    pub on_behalf_of: Option<String>,
    pub subject: Option<String>,
    pub message_id: Option<String>,
    pub recipients: Vec<EnvelopeRecipient>,
    pub smtp: SmtpEnvelope,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvelopeRecipient {
    /// `To`, `Cc`, `Bcc`, `Recipient` (the report did not say which), `Envelope` (SMTP).
    pub field: String,
    pub address: String,
    pub expanded: Option<String>,
    pub forwarded: Option<String>,
}

/// How the report came to the gateway.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmtpEnvelope {
    pub queue_id: String,
    pub received: i64,
    pub client: String,
    pub helo: String,
    pub tls: Option<String>,
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
}

impl From<&Envelope> for SmtpEnvelope {
    fn from(e: &Envelope) -> Self {
        SmtpEnvelope {
            queue_id: e.id.clone(),
            received: e.received,
            client: e.client.clone(),
            helo: e.helo.clone(),
            tls: e.tls.clone(),
            mail_from: e.mail_from.clone(),
            rcpt_to: e.rcpt_to.clone(),
        }
    }
}

fn address(a: &Address) -> String {
    match a {
        Address::Smtp(s) | Address::Unresolvable(s) => s.clone(),
    }
}

fn field_name(field: &Field) -> &'static str {
    match field {
        Field::To => "To",
        Field::Cc => "Cc",
        Field::Bcc => "Bcc",
        Field::Recipient => "Recipient",
    }
}

impl JournalEnvelope {
    /// From a journal report.
    pub fn of_report(report: &journal::Report, source: &str, smtp: &Envelope) -> Self {
        JournalEnvelope {
            source: source.to_owned(),
            sender: report.sender.as_ref().map(address),
            on_behalf_of: report.on_behalf_of.as_ref().map(address),
            subject: report.subject.clone(),
            message_id: report.message_id.clone(),
            recipients: report
                .recipients
                .iter()
                .map(|r| EnvelopeRecipient {
                    field: field_name(&r.field).to_owned(),
                    address: address(&r.address),
                    expanded: r.expanded.as_ref().map(address),
                    forwarded: r.forwarded.as_ref().map(address),
                })
                .collect(),
            smtp: smtp.into(),
        }
    }

    /// From the SMTP envelope alone (a plain copy), with the addresses a trusted header
    /// added.
    pub fn of_smtp(source: &str, smtp: &Envelope, extra: &[String]) -> Self {
        let mut recipients: Vec<EnvelopeRecipient> = smtp
            .rcpt_to
            .iter()
            .chain(extra)
            .filter(|a| !a.is_empty())
            .map(|a| EnvelopeRecipient {
                field: "Envelope".into(),
                address: a.clone(),
                ..EnvelopeRecipient::default()
            })
            .collect();
        recipients.dedup();
        JournalEnvelope {
            source: source.to_owned(),
            sender: Some(smtp.mail_from.clone()).filter(|s| !s.is_empty()),
            recipients,
            smtp: smtp.into(),
            ..JournalEnvelope::default()
        }
    }

    /// The envelope item: a message whose text part lists the envelope and whose second
    /// part holds it as JSON. `item` is the original's item number.
    pub fn render(&self, item: u64, hostname: &str) -> Vec<u8> {
        let date = chrono::DateTime::from_timestamp(self.smtp.received, 0)
            .unwrap_or_default()
            .to_rfc2822();
        let subject = self.subject.as_deref().map(clean).unwrap_or_default();
        let boundary = format!(
            "jg-envelope-{item}-{}",
            &crate::crypto::random_hex128()[..12]
        );
        let mut text = String::new();
        let mut line = |name: &str, value: &str| {
            text.push_str(&format!("{name}: {}\r\n", clean(value)));
        };
        line("Source", &self.source);
        for (name, value) in [
            ("Sender", &self.sender),
            ("On-Behalf-Of", &self.on_behalf_of),
            ("Subject", &self.subject),
            ("Message-Id", &self.message_id),
        ] {
            if let Some(v) = value {
                line(name, v);
            }
        }
        for r in &self.recipients {
            let mut value = r.address.clone();
            if let Some(list) = &r.expanded {
                value.push_str(&format!(", Expanded: {list}"));
            }
            if let Some(to) = &r.forwarded {
                value.push_str(&format!(", Forwarded: {to}"));
            }
            line(&r.field, &value);
        }
        line(
            "Received-By-Gateway",
            &format!(
                "{date} from {} (HELO {}) {} MAIL FROM:<{}> RCPT TO:<{}> queue id {}",
                self.smtp.client,
                self.smtp.helo,
                self.smtp.tls.as_deref().unwrap_or("without TLS"),
                self.smtp.mail_from,
                self.smtp.rcpt_to.join(">,<"),
                self.smtp.queue_id
            ),
        );
        let json = serde_json::to_string_pretty(self).expect("serializes");
        format!(
            "From: journalgate <journalgate@{host}>\r\n\
             Subject: Journal envelope: {subject}\r\n\
             Date: {date}\r\n\
             Message-ID: <envelope-{item}.{boundary}@{host}>\r\n\
             X-Journal-Item: {item}\r\n\
             MIME-Version: 1.0\r\n\
             Content-Type: multipart/mixed; boundary=\"{boundary}\"\r\n\
             \r\n\
             --{boundary}\r\n\
             Content-Type: text/plain; charset=utf-8\r\n\
             Content-Transfer-Encoding: 8bit\r\n\
             \r\n\
             {text}\r\n\
             --{boundary}\r\n\
             Content-Type: {JSON_TYPE}; charset=utf-8\r\n\
             Content-Disposition: attachment; filename=\"envelope-{item}.json\"\r\n\
             Content-Transfer-Encoding: 8bit\r\n\
             \r\n\
             {json}\r\n\
             --{boundary}--\r\n",
            host = clean(hostname),
            json = json.replace('\n', "\r\n"),
        )
        .into_bytes()
    }

    /// Reads the JSON part back from an envelope item.
    pub fn parse(message: &[u8]) -> Option<JournalEnvelope> {
        let text = std::str::from_utf8(message).ok()?;
        let at = text.find(JSON_TYPE)?;
        let body = &text[at..];
        let start = body.find("\r\n\r\n")? + 4;
        let end = body[start..].find("\r\n--")? + start;
        serde_json::from_str(&body[start..end]).ok()
    }
}

/// One header line's worth: no line breaks or other control characters.
fn clean(value: &str) -> String {
    value
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_envelope_renders_as_a_message_and_reads_back() {
        let smtp = Envelope {
            id: "q1".into(),
            mail_from: String::new(),
            rcpt_to: vec!["mbx-1@gw".into()],
            client: "10.0.0.1:25".into(),
            helo: "exchange".into(),
            tls: Some("TLSv1.3".into()),
            received: 1_700_000_000,
        };
        let mut envelope = JournalEnvelope::of_smtp("plain", &smtp, &["bob@x.example".into()]);
        envelope.subject = Some("evil\r\nBcc: injected".into());
        envelope.recipients.push(EnvelopeRecipient {
            field: "Bcc".into(),
            address: "carol@x.example".into(),
            expanded: Some("team@x.example".into()),
            forwarded: None,
        });
        let raw = envelope.render(42, "gw.example");
        let text = String::from_utf8(raw.clone()).unwrap();
        assert!(text.contains("Subject: Journal envelope: evil  Bcc: injected\r\n"));
        assert!(text.contains("Bcc: carol@x.example, Expanded: team@x.example\r\n"));
        assert!(text.contains("X-Journal-Item: 42\r\n"));
        assert_eq!(JournalEnvelope::parse(&raw).unwrap(), envelope);
        let parsed = mail_parser::MessageParser::default()
            .parse(&raw[..])
            .unwrap();
        assert_eq!(parsed.attachment_count(), 1);
    }
}
