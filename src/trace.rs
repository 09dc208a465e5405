//! The protocol trace: switched on per protocol at runtime (CLI, console, API) for a set
//! time, it logs every line a session reads or writes (target `journalgate::trace`) with
//! credentials replaced by `***` and message bodies left out.

use std::sync::atomic::{AtomicI64, Ordering};

const PROTOCOLS: [&str; 3] = ["smtp", "pop3", "imap"];

/// Until when (unix seconds) each protocol is traced; 0 = off.
#[derive(Default)]
pub struct Trace {
    until: [AtomicI64; 3],
}

fn index(protocol: &str) -> Option<usize> {
    PROTOCOLS.iter().position(|p| *p == protocol)
}

impl Trace {
    /// Turns a protocol's trace on for `minutes` (at most a day) or off; returns until when.
    pub fn set(&self, protocol: &str, on: bool, minutes: u64) -> Result<Option<i64>, String> {
        let i = index(protocol)
            .ok_or_else(|| format!("unknown protocol {protocol:?}: smtp, pop3 or imap"))?;
        let until = on.then(|| chrono::Utc::now().timestamp() + 60 * minutes.clamp(1, 1440) as i64);
        self.until[i].store(until.unwrap_or(0), Ordering::Relaxed);
        tracing::info!(protocol, on, "protocol trace switched");
        Ok(until)
    }

    /// Whether `protocol` is traced now.
    pub fn on(&self, protocol: &str) -> bool {
        index(protocol).is_some_and(|i| {
            let until = self.until[i].load(Ordering::Relaxed);
            until != 0 && chrono::Utc::now().timestamp() < until
        })
    }

    /// Logs one line of a session, credentials redacted.
    pub fn line(&self, protocol: &str, client: std::net::SocketAddr, direction: &str, line: &[u8]) {
        if !self.on(protocol) {
            return;
        }
        let text = String::from_utf8_lossy(line);
        let text = redact(protocol, text.trim_end_matches(['\r', '\n']));
        tracing::info!(target: "journalgate::trace", protocol, %client, direction, line = %text);
    }
}

/// The line with any credential it carries replaced by `***`.
pub fn redact(protocol: &str, line: &str) -> String {
    let words: Vec<&str> = line.split_whitespace().collect();
    let upper = |i: usize| {
        words
            .get(i)
            .map(|w| w.to_ascii_uppercase())
            .unwrap_or_default()
    };
    let keep = |n: usize| format!("{} ***", words[..n.min(words.len())].join(" "));
    match protocol {
        "pop3" if matches!(upper(0).as_str(), "PASS" | "AUTH") => {
            keep(if upper(0) == "AUTH" { 2 } else { 1 })
        }
        "imap" if upper(1) == "LOGIN" => keep(3),
        "imap" if upper(1) == "AUTHENTICATE" => keep(3),
        "smtp" if upper(0) == "AUTH" => keep(2),
        // A bare base64 line (a SASL answer) is never shown.
        _ if !line.contains(' ')
            && line.len() > 8
            && line
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b)) =>
        {
            "***".into()
        }
        _ => line.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_pass() {
        assert_eq!(redact("pop3", "PASS hunter2"), "PASS ***");
        assert_eq!(redact("pop3", "AUTH PLAIN AGZvbwBiYXI="), "AUTH PLAIN ***");
        assert_eq!(redact("imap", "a1 LOGIN user secret"), "a1 LOGIN user ***");
        assert_eq!(
            redact("imap", "a2 login \"u\" \"p w\""),
            "a2 login \"u\" ***"
        );
        assert_eq!(redact("imap", "AGZvbwBiYXI="), "***");
        assert_eq!(redact("smtp", "MAIL FROM:<a@b>"), "MAIL FROM:<a@b>");
        let t = Trace::default();
        assert!(!t.on("smtp"));
        t.set("smtp", true, 5).unwrap();
        assert!(t.on("smtp") && !t.on("pop3"));
        t.set("smtp", false, 0).unwrap();
        assert!(!t.on("smtp"));
        assert!(t.set("ftp", true, 1).is_err());
    }
}
