//! Deciding where a message is filed: its classification, whether its source is trusted
//! for journal semantics, which archive users it concerns, and which byte ranges are the
//! originals to store.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;

use crate::config::UnknownAddresses;
use crate::journal::{self, Classification, Report};
use crate::message::Envelope;
use crate::mime;

use super::envelope::JournalEnvelope;
use super::skeleton::Skeleton;
use super::users::UserRecord;
use super::{Archive, UNKNOWN_FOLDER};

/// Where an original will be filed.
pub(super) struct Plan {
    /// Byte ranges (in the message) of the originals to store, preferred one first.
    pub(super) originals: Vec<(Range<u64>, bool)>,
    pub(super) message_id: Option<String>,
    pub(super) folders: BTreeSet<String>,
    pub(super) users: Vec<UserRecord>,
    pub(super) unknown: bool,
    pub(super) counters: Vec<(&'static str, u64)>,
    /// What the report (or the SMTP envelope) says about sender and recipients.
    pub(super) envelope: JournalEnvelope,
}

impl Archive {
    /// Decides what to file where.
    pub(super) fn plan(&self, envelope: &Envelope, skeleton: &Skeleton) -> Plan {
        let client = envelope
            .client
            .parse::<SocketAddr>()
            .map(|a| a.ip())
            .or_else(|_| envelope.client.parse::<IpAddr>());
        let trusted = client
            .as_ref()
            .is_ok_and(|ip| self.config.journal_sources.iter().any(|n| n.contains(ip)));
        let mut counters = Vec::new();
        let classification = journal::classify(&skeleton.bytes);
        if trusted {
            let pins = self.tenant_pins(envelope);
            if let Some(why) = distrust(&classification, &pins) {
                tracing::warn!(
                    client = %envelope.client, queue_id = %envelope.id, why,
                    "journal report from a trusted source quarantined in Unknown Addresses"
                );
                counters.push(("quarantined_reports", 1));
                let envelope = match &classification {
                    Classification::Journal(r) | Classification::NdrJournal(r) => {
                        JournalEnvelope::of_report(r, "quarantined", envelope)
                    }
                    Classification::Plain => JournalEnvelope::of_smtp("quarantined", envelope, &[]),
                };
                return Plan {
                    originals: vec![(0..skeleton.total, false)],
                    message_id: header_message_id(&skeleton.bytes),
                    folders: BTreeSet::from([UNKNOWN_FOLDER.to_owned()]),
                    users: Vec::new(),
                    unknown: true,
                    counters,
                    envelope,
                };
            }
        }
        let mut source = "plain";
        let report = match classification {
            Classification::Journal(r) | Classification::NdrJournal(r) if !trusted => {
                source = "untrusted-journal";
                tracing::warn!(
                    client = %envelope.client, queue_id = %envelope.id,
                    stray_lines = r.stray_lines,
                    "journal report from a source not in archive.journal_sources: archived as a plain copy"
                );
                counters.push(("untrusted_reports", 1));
                None
            }
            Classification::Journal(r) => {
                source = "journal";
                counters.push(("journal_reports", 1));
                Some(r)
            }
            Classification::NdrJournal(r) => {
                source = "ndr-journal";
                counters.push(("journal_reports", 1));
                counters.push(("ndr_unwrapped", 1));
                Some(r)
            }
            Classification::Plain => None,
        };
        let users = self.user_list();
        let mut plan = match report {
            Some(report) => {
                let mut plan = self.plan_report(&report, skeleton, &users, &mut counters);
                let source = if counters.contains(&("reports_without_original", 1)) {
                    "incident"
                } else {
                    source
                };
                plan.envelope = JournalEnvelope::of_report(&report, source, envelope);
                plan
            }
            None => {
                counters.push(("plain_copies", 1));
                self.plan_plain(envelope, source, client.ok(), skeleton, &users)
            }
        };
        if plan.folders.is_empty() && !plan.originals.is_empty() {
            match self.config.unknown_addresses {
                UnknownAddresses::CatchAll => {
                    plan.unknown = true;
                    plan.folders.insert(UNKNOWN_FOLDER.to_owned());
                }
                UnknownAddresses::Skip => {
                    tracing::info!(queue_id = %envelope.id, "no archive user on the envelope: not archived (unknown_addresses = \"skip\")");
                    counters.push(("skipped_unknown", 1));
                    plan.originals.clear();
                }
            }
        }
        plan.counters = counters;
        plan
    }

    /// The tenant pins of the gateway mailboxes a message was delivered to.
    fn tenant_pins(&self, envelope: &Envelope) -> Vec<String> {
        let mailboxes = self.spool.mailboxes();
        envelope
            .rcpt_to
            .iter()
            .filter_map(|a| a.split('@').next())
            .filter_map(|local| crate::mailbox::MailboxId::parse(local).ok())
            .filter_map(|id| mailboxes.load(&id).ok())
            .filter_map(|record| record.tenant)
            .collect()
    }

    fn plan_report(
        &self,
        report: &Report,
        skeleton: &Skeleton,
        users: &[UserRecord],
        counters: &mut Vec<(&'static str, u64)>,
    ) -> Plan {
        let directory = Directory::new(users);
        let find = |a: &journal::Address| match a {
            journal::Address::Smtp(s) => directory.find(s),
            journal::Address::Unresolvable(_) => None,
        };
        let mut assignment = Assignment::default();
        for a in report.sender.iter().chain(report.on_behalf_of.iter()) {
            if let Some(u) = find(a) {
                assignment.file(u, "Sent");
            }
        }
        for r in &report.recipients {
            for a in std::iter::once(&r.address).chain(r.forwarded.iter()) {
                if let Some(u) = find(a) {
                    assignment.file(u, "INBOX");
                }
            }
        }
        let mut originals: Vec<(Range<u64>, bool)> = report
            .originals
            .iter()
            .map(|o| {
                let base64 = o
                    .encoding
                    .as_deref()
                    .is_some_and(|e| e.eq_ignore_ascii_case("base64"));
                (skeleton.range(&o.range), base64)
            })
            .collect();
        // The decrypted copy of a rights-protected message is preferred (listed first).
        if originals.len() > 1 {
            let protected = |i: usize| {
                let r = &report.originals[i].range;
                let head = &skeleton.bytes
                    [r.start..r.end.min(r.start + (256 << 10)).min(skeleton.bytes.len())];
                contains_ci(head, b"rpmsg")
            };
            if let Some(clear) = (0..originals.len()).find(|i| !protected(*i)) {
                let preferred = originals.remove(clear);
                originals.insert(0, preferred);
            }
        }
        let message_id = report.message_id.clone().or_else(|| {
            report.originals.first().and_then(|o| {
                let r = o.range.start..o.range.end.min(skeleton.bytes.len());
                header_message_id(&skeleton.bytes[r])
            })
        });
        let mut plan = Plan {
            originals,
            message_id,
            folders: assignment.folders,
            users: assignment.users,
            unknown: false,
            counters: Vec::new(),
            envelope: JournalEnvelope::default(),
        };
        if plan.originals.is_empty() {
            // Nothing to file for the users; the report itself goes to the catch-all.
            tracing::warn!("journal report without an attached original: filed as an incident");
            counters.push(("reports_without_original", 1));
            plan.originals = vec![(0..skeleton.total, false)];
            plan.folders.clear();
            plan.users.clear();
            plan.message_id = None;
        }
        plan
    }

    /// A plain copy: recipients from the SMTP envelope, plus the header configured for the
    /// client's network.
    fn plan_plain(
        &self,
        envelope: &Envelope,
        source: &str,
        client: Option<IpAddr>,
        skeleton: &Skeleton,
        users: &[UserRecord],
    ) -> Plan {
        let mut addresses: Vec<String> = Vec::new();
        let header = &skeleton.bytes[..mime::header_end(&skeleton.bytes)];
        for rule in &self.config.envelope_headers {
            if client.is_some_and(|ip| rule.network.contains(&ip)) {
                for value in mime::raw_fields(header, &rule.header) {
                    let value = String::from_utf8_lossy(&value).into_owned();
                    addresses.extend(value.split([',', ' ', '\t']).map(|a| {
                        a.trim()
                            .trim_start_matches('<')
                            .trim_end_matches('>')
                            .to_owned()
                    }));
                }
            }
        }
        let directory = Directory::new(users);
        let mut assignment = Assignment::default();
        let journal = JournalEnvelope::of_smtp(source, envelope, &addresses);
        for a in envelope
            .rcpt_to
            .iter()
            .chain(&addresses)
            .filter(|a| !a.is_empty())
        {
            if let Some(u) = directory.find(a) {
                assignment.file(u, "INBOX");
            }
        }
        // BCC/multidrop journaling: a copy sent by one of the organisation's own users is
        // also that user's sent mail.
        if self.is_internal(&envelope.mail_from) {
            if let Some(u) = directory.find(&envelope.mail_from) {
                assignment.file(u, "Sent");
            }
        }
        Plan {
            originals: vec![(0..skeleton.total, false)],
            message_id: header_message_id(&skeleton.bytes),
            folders: assignment.folders,
            users: assignment.users,
            unknown: false,
            counters: Vec::new(),
            envelope: journal,
        }
    }
}

impl Archive {
    /// Whether an address is in one of `internal_domains`.
    fn is_internal(&self, address: &str) -> bool {
        address.rsplit_once('@').is_some_and(|(_, domain)| {
            self.config.internal_domains.iter().any(|d| {
                d.trim_start_matches('@')
                    .eq_ignore_ascii_case(domain.trim())
            })
        })
    }
}

/// The folders a message goes to and the users they belong to.
#[derive(Default)]
struct Assignment {
    folders: BTreeSet<String>,
    users: Vec<UserRecord>,
}

impl Assignment {
    fn file(&mut self, user: &UserRecord, folder: &str) {
        self.folders.insert(format!("{}/{folder}", user.id));
        if !self.users.iter().any(|u| u.id == user.id) {
            self.users.push(user.clone());
        }
    }
}

/// Address (login or alias, lowercase) to user.
struct Directory<'a>(HashMap<&'a str, &'a UserRecord>);

impl<'a> Directory<'a> {
    fn new(users: &'a [UserRecord]) -> Directory<'a> {
        Directory(
            users
                .iter()
                .flat_map(|u| u.addresses().map(move |a| (a, u)))
                .collect(),
        )
    }

    fn find(&self, address: &str) -> Option<&'a UserRecord> {
        self.0.get(address.trim().to_lowercase().as_str()).copied()
    }
}

fn header_message_id(message: &[u8]) -> Option<String> {
    let header = &message[..mime::header_end(message)];
    mime::raw_field(header, "Message-ID")
        .map(|v| String::from_utf8_lossy(&v).trim().to_owned())
        .filter(|v| !v.is_empty())
}

fn contains_ci(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

/// Why a journal report from a trusted network must not be trusted after all, if so. A trusted
/// network is not proof: Microsoft 365's outbound ranges are shared by every tenant, and an
/// NDR carries back whatever the bounced message contained.
/// - stray lines in the report part: a genuine report has none (someone added text);
/// - a pinned mailbox (`mailbox tenant`) gets only reports that name its tenant;
/// - an NDR-wrapped report is trusted only with that evidence (a pin that it names).
fn distrust(classification: &Classification, pins: &[String]) -> Option<&'static str> {
    let (report, ndr) = match classification {
        Classification::Journal(r) => (r, false),
        Classification::NdrJournal(r) => (r, true),
        Classification::Plain => return None,
    };
    if report.stray_lines > 0 {
        return Some("the report part has lines that are not report fields");
    }
    let names_pin = report.tenant.iter().any(|t| pins.contains(t));
    if !pins.is_empty() && !names_pin {
        return Some("the report does not name the tenant the mailbox is pinned to");
    }
    if ndr && pins.is_empty() {
        return Some("an NDR-wrapped report is trusted only for a mailbox pinned to its tenant");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(stray_lines: usize, tenant: &[&str]) -> Report {
        Report {
            format: journal::Format::Exchange2007,
            sender: None,
            on_behalf_of: None,
            subject: None,
            message_id: None,
            recipients: Vec::new(),
            originals: Vec::new(),
            stray_lines,
            tenant: tenant.iter().map(|t| t.to_string()).collect(),
        }
    }

    #[test]
    fn trusted_reports_need_evidence() {
        let pin = vec!["contoso.example".to_owned()];
        let direct = |r| Classification::Journal(r);
        let ndr = |r| Classification::NdrJournal(r);
        assert_eq!(distrust(&direct(report(0, &[])), &[]), None);
        assert!(distrust(&direct(report(1, &[])), &[]).is_some());
        assert_eq!(
            distrust(&direct(report(0, &["contoso.example"])), &pin),
            None
        );
        assert!(distrust(&direct(report(0, &["fabrikam.example"])), &pin).is_some());
        assert!(distrust(&direct(report(0, &[])), &pin).is_some());
        assert!(distrust(&ndr(report(0, &["contoso.example"])), &[]).is_some());
        assert_eq!(distrust(&ndr(report(0, &["contoso.example"])), &pin), None);
        assert!(distrust(&ndr(report(2, &["contoso.example"])), &pin).is_some());
        assert_eq!(distrust(&Classification::Plain, &pin), None);
    }
}
