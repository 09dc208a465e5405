//! From an SMTP transaction to the spool: the delivery targets (one sealed copy per gateway
//! mailbox; the spool adds the archive's copy when the archive wants one), the `Received:`
//! trace header, and the durable commit that decides the reply.

use chrono::Utc;

use super::{Reply, Session};
use crate::crypto;
use crate::mailbox::MailboxId;
use crate::message::Envelope;
use crate::spool::{Delivery, SpoolError, Target};

impl Session {
    /// Opens the spool delivery for the current transaction and writes the trace header.
    pub(super) fn begin_delivery(&self) -> Result<Delivery, Reply> {
        let tx = self.tx.as_ref().expect("transaction");
        let queue_id = crypto::random_hex128()[..16].to_owned();
        let received = Utc::now();
        let mut mailboxes: Vec<MailboxId> = Vec::new();
        for (_, id) in &tx.rcpts {
            if !mailboxes.contains(id) {
                mailboxes.push(id.clone());
            }
        }
        let mut targets = Vec::new();
        for id in mailboxes {
            let record = match self.state.spool.mailboxes().load(&id) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(mailbox = %id, error = %e, "cannot load mailbox");
                    return Err("451 4.3.0 Temporary failure, try again later".into());
                }
            };
            let recipient = crypto::parse_recipient(&record.public_key).map_err(|e| {
                tracing::error!(mailbox = %id, error = %e, "mailbox key unusable");
                "451 4.3.0 Temporary failure, try again later".to_owned()
            })?;
            let rcpt_to = tx
                .rcpts
                .iter()
                .filter(|(_, m)| *m == id)
                .map(|(a, _)| a.clone())
                .collect();
            targets.push(Target {
                mailbox: id,
                recipient,
                envelope: Envelope {
                    id: queue_id.clone(),
                    mail_from: tx.mail_from.clone(),
                    rcpt_to,
                    client: self.peer.to_string(),
                    helo: self.helo.as_ref().map(|h| h.0.clone()).unwrap_or_default(),
                    tls: self.tls.clone(),
                    received: received.timestamp(),
                },
            });
        }
        let mut delivery = self.state.spool.begin(targets);
        delivery.write(self.trace_header(&queue_id, received).as_bytes());
        Ok(delivery)
    }

    fn trace_header(&self, queue_id: &str, when: chrono::DateTime<Utc>) -> String {
        let tx = self.tx.as_ref().expect("transaction");
        let (helo, extended) = self.helo.clone().unwrap_or_default();
        let helo: String = helo.chars().filter(|c| !c.is_control()).collect();
        let protocol = match (tx.smtputf8, extended, self.tls.is_some()) {
            (true, _, true) => "UTF8SMTPS",
            (true, _, false) => "UTF8SMTP",
            (false, true, true) => "ESMTPS",
            (false, true, false) => "ESMTP",
            (false, false, _) => "SMTP",
        };
        let tls = self
            .tls
            .as_ref()
            .map(|v| format!("\r\n\t(using {v})"))
            .unwrap_or_default();
        let rcpt = match tx.rcpts.as_slice() {
            [(only, _)] => format!("\r\n\tfor <{only}>"),
            _ => String::new(),
        };
        format!(
            "Received: from {helo} ([{ip}])\r\n\tby {host} (journalgate) with {protocol} id {queue_id}{tls}{rcpt};\r\n\t{date}\r\n",
            ip = self.peer.ip(),
            host = self.state.config.hostname,
            date = when.to_rfc2822(),
        )
    }

    /// Commits the message durably and answers; ends the transaction either way.
    pub(super) async fn finish_message(&mut self, delivery: Delivery) {
        let size = delivery.size();
        let tx = self.tx.take();
        let started = std::time::Instant::now();
        match delivery.commit().await {
            Ok(uids) => {
                let took = started.elapsed();
                for (mailbox, uid) in &uids {
                    tracing::info!(
                        mailbox = %mailbox, uid, size, client = %self.peer,
                        tls = self.tls.as_deref().unwrap_or("none"),
                        "message accepted"
                    );
                    self.state
                        .telemetry
                        .accepted(mailbox.as_str(), size, self.peer.ip(), took);
                }
                let rcpts = tx.map(|t| t.rcpts.len()).unwrap_or(0);
                self.reply(format!(
                    "250 2.0.0 OK: {size} octets stored for {rcpts} recipient(s)"
                ));
            }
            Err(SpoolError::DiskFull) => {
                tracing::warn!(client = %self.peer, size, "message refused: disk full");
                self.reply("452 4.3.1 Insufficient system storage");
            }
            Err(SpoolError::ShuttingDown) => {
                self.reply("421 4.3.2 Service shutting down, try again later");
            }
            Err(e) => {
                tracing::error!(client = %self.peer, error = %e, "message could not be stored");
                self.reply("451 4.3.0 Temporary failure storing the message, try again later");
            }
        }
    }
}
