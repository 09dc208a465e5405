//! Journal reports: classifies an accepted message as an Exchange / Microsoft 365 envelope
//! journal report, a non-delivery report that carries one, or a plain copy, and parses the
//! report's envelope part (`../shared/reference/journal-format.md` §2, §3, §6).
//!
//! The originals are returned as exact byte ranges of the stored message, so they can be
//! archived byte-identical. Parsing never trusts the report: whether its semantics are used at
//! all is the caller's decision (only for configured journal sources).

use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};

use mail_parser::MessageParser;

use crate::mime::{self, Kind, Part};

/// Which field of the report named a recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    To,
    Cc,
    Bcc,
    /// Exchange writes every recipient of untrusted (e.g. inbound) mail as `Recipient:`.
    Recipient,
}

/// An address as the report writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// An SMTP address, as written (compare with [`Address::matches`]).
    Smtp(String),
    /// X.500/DN, `EX:` addresses, `Unspecified Address`, `<>`: kept, never matched.
    Unresolvable(String),
}

impl Address {
    fn parse(value: &str) -> Address {
        let v = value.trim();
        let inner = match (v.rfind('<'), v.rfind('>')) {
            (Some(a), Some(b)) if a < b => &v[a + 1..b],
            _ => v,
        };
        let inner = inner.trim();
        let inner = match inner.split_once(':') {
            Some((kind, rest)) if kind.eq_ignore_ascii_case("smtp") => rest.trim(),
            _ => inner,
        };
        let plausible = inner.contains('@')
            && !inner.starts_with('/')
            && !inner.contains(char::is_whitespace)
            && inner.split('@').count() == 2;
        if plausible {
            Address::Smtp(inner.to_owned())
        } else {
            Address::Unresolvable(v.to_owned())
        }
    }

    /// Case-insensitive comparison with an SMTP address.
    pub fn matches(&self, address: &str) -> bool {
        match self {
            Address::Smtp(a) => a.eq_ignore_ascii_case(address),
            Address::Unresolvable(_) => false,
        }
    }
}

/// One recipient line: `To: a@x, Expanded: dl@x` or `Cc: fwd@x, Forwarded: user@x`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    pub field: Field,
    pub address: Address,
    /// The distribution list this recipient was expanded from.
    pub expanded: Option<Address>,
    /// The recipient this one received the message for (forwarding).
    pub forwarded: Option<Address>,
}

/// Report generations (journal-format.md §2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Exchange 2007 and later, Exchange Online (`X-MS-Journal-Report`).
    Exchange2007,
    /// Exchange 2003 envelope journaling (`Content-Identif(i)er: ExJournalReport`).
    Exchange2003,
}

/// An attached original (a `message/rfc822` part of the report).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Original {
    /// The encapsulated message, as bytes of the stored message.
    pub range: Range<usize>,
    /// A transfer encoding of the part other than 7bit/8bit/binary (rare; then `range` holds
    /// the encoded form).
    pub encoding: Option<String>,
}

/// A parsed envelope journal report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub format: Format,
    pub sender: Option<Address>,
    pub on_behalf_of: Option<Address>,
    pub subject: Option<String>,
    /// The original's Message-ID; None for `Unknown Message-ID`.
    pub message_id: Option<String>,
    pub recipients: Vec<Recipient>,
    /// 1..n originals (the decrypted copy, when present, is another one).
    pub originals: Vec<Original>,
    /// Non-blank lines of the report part that are not `Name: value` fields. A genuine report
    /// has none; callers should not trust a report that has some.
    pub stray_lines: usize,
    /// The tenant the report message says it comes from: the values of its
    /// `X-MS-Exchange-CrossTenant-Id` and `X-OriginatorOrg` header fields (of the report
    /// itself, also when it came inside an NDR), lowercased.
    pub tenant: Vec<String>,
}

/// The header fields that name the Microsoft 365 tenant a message was sent by.
pub const TENANT_FIELDS: [&str; 2] = ["X-MS-Exchange-CrossTenant-Id", "X-OriginatorOrg"];

/// The tenant values of a header block (see [`Report::tenant`]).
pub fn tenant_of(header: &[u8]) -> Vec<String> {
    TENANT_FIELDS
        .iter()
        .flat_map(|name| mime::raw_fields(header, name))
        .map(|v| String::from_utf8_lossy(&v).trim().to_ascii_lowercase())
        .filter(|v| !v.is_empty())
        .collect()
}

impl Report {
    /// Every address the report names as taking part: sender, on-behalf-of, recipients.
    pub fn participants(&self) -> impl Iterator<Item = &Address> {
        self.sender
            .iter()
            .chain(self.on_behalf_of.iter())
            .chain(self.recipients.iter().map(|r| &r.address))
    }
}

/// What an accepted message is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Classification {
    /// A journal report (also a journal report *of* an NDR: both markers, journal first).
    Journal(Report),
    /// A non-delivery report whose attached message is a journal report, unwrapped.
    NdrJournal(Report),
    /// Anything else, including a "report" without a parsable envelope part.
    Plain,
}

/// Classifies a stored message.
pub fn classify(raw: &[u8]) -> Classification {
    let root = mime::parse(raw);
    let header = &raw[root.header.clone()];
    if let Some(format) = journal_marker(header) {
        return match parse_report(raw, &root, format) {
            Some(report) => Classification::Journal(report),
            None => Classification::Plain,
        };
    }
    if is_ndr(header, &root) {
        if let Some(report) = embedded_report(raw, &root) {
            return Classification::NdrJournal(report);
        }
    }
    Classification::Plain
}

/// The journal-report marker of a header block, if any.
fn journal_marker(header: &[u8]) -> Option<Format> {
    let has = |name: &str| mime::raw_field(header, name).is_some();
    if has("X-MS-Journal-Report")
        || has("X-MS-Exchange-Organization-Journal-Report")
        || has("X-WM-Journal-Report")
    {
        return Some(Format::Exchange2007);
    }
    let exjournal = |name: &str| {
        mime::raw_field(header, name).is_some_and(|v| v.eq_ignore_ascii_case(b"ExJournalReport"))
    };
    (exjournal("Content-Identifier") || exjournal("Content-Identifer"))
        .then_some(Format::Exchange2003)
}

fn is_ndr(header: &[u8], root: &Part) -> bool {
    mime::raw_field(header, "X-MS-Exchange-Message-Is-Ndr").is_some()
        || (root.info.ctype == "multipart" && root.info.subtype == "report")
}

/// The first journal report found in a message/rfc822 part of an NDR (any depth).
fn embedded_report(raw: &[u8], part: &Part) -> Option<Report> {
    match &part.kind {
        Kind::Multipart(children) => children.iter().find_map(|c| embedded_report(raw, c)),
        Kind::Message(inner) => {
            let format = journal_marker(&raw[inner.header.clone()])?;
            parse_report(raw, inner, format)
        }
        Kind::Single => None,
    }
}

/// Parses a journal report message (`message` is its root part).
fn parse_report(raw: &[u8], message: &Part, format: Format) -> Option<Report> {
    let children: &[Part] = match &message.kind {
        Kind::Multipart(children) => children,
        _ => std::slice::from_ref(message),
    };
    let originals = children
        .iter()
        .filter(|c| {
            c.info.ctype == "message" && (c.info.subtype == "rfc822" || c.info.subtype == "global")
        })
        .map(|c| Original {
            range: c.body.clone(),
            encoding: c
                .info
                .encoding
                .clone()
                .filter(|e| !["7bit", "8bit", "binary"].contains(&e.to_ascii_lowercase().as_str())),
        })
        .collect();
    // The report part: the first text part whose decoded text has a Sender line.
    let mut report = children
        .iter()
        .filter(|c| c.info.ctype == "text" && matches!(c.kind, Kind::Single))
        .filter_map(|c| decoded_text(raw, c))
        .map(|text| parse_fields(&text, format))
        .find(|r| r.sender.is_some())?;
    if report.recipients.is_empty() && report.message_id.is_none() {
        return None;
    }
    report.originals = originals;
    report.tenant = tenant_of(&raw[message.header.clone()]);
    Some(report)
}

/// The text of a part, transfer encoding and charset decoded (HTML converted to text).
fn decoded_text(raw: &[u8], part: &Part) -> Option<String> {
    let bytes = &raw[part.header.start..part.body.end];
    catch_unwind(AssertUnwindSafe(|| {
        let message = MessageParser::new().parse(bytes)?;
        message.body_text(0).map(|t| t.into_owned())
    }))
    .ok()
    .flatten()
}

/// Reads the `Name: value` lines of a decoded report body.
fn parse_fields(text: &str, format: Format) -> Report {
    let mut report = Report {
        format,
        sender: None,
        on_behalf_of: None,
        subject: None,
        message_id: None,
        recipients: Vec::new(),
        originals: Vec::new(),
        stray_lines: 0,
        tenant: Vec::new(),
    };
    let mut in_recipients_2003 = false;
    for line in logical_lines(text) {
        let line = line.trim_end();
        if line.trim().is_empty() {
            continue;
        }
        // Exchange 2003: `Recipients:` continues on lines of `<SMTP:a>, <SMTP:b>` items.
        if in_recipients_2003 && line.trim_start().starts_with('<') {
            add_2003_recipients(&mut report, line);
            continue;
        }
        in_recipients_2003 = false;
        let Some((name, value)) = field(line) else {
            report.stray_lines += 1;
            continue;
        };
        match name.to_ascii_lowercase().as_str() {
            "sender" => report.sender = Some(Address::parse(value)),
            "on-behalf-of" => report.on_behalf_of = Some(Address::parse(value)),
            "subject" => report.subject = Some(value.to_owned()),
            "message-id" => {
                report.message_id = (!value.eq_ignore_ascii_case("Unknown Message-ID"))
                    .then(|| value.trim().to_owned())
                    .filter(|v| !v.is_empty());
            }
            "to" => report.recipients.push(recipient(Field::To, value)),
            "cc" => report.recipients.push(recipient(Field::Cc, value)),
            "bcc" => report.recipients.push(recipient(Field::Bcc, value)),
            "recipient" => report.recipients.push(recipient(Field::Recipient, value)),
            "recipients" => {
                in_recipients_2003 = true;
                add_2003_recipients(&mut report, value);
            }
            // Known (MS-XJRNL, GCC) or future fields carry nothing we use.
            _ => {}
        }
    }
    report
}

/// Lines with RFC 5322-style continuations (leading white space) joined, as old and relayed
/// reports may be folded.
fn logical_lines(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for line in text.lines() {
        let folded = line.starts_with([' ', '\t']) && !line.trim().is_empty();
        match lines.last_mut() {
            Some(last) if folded && !last.trim_start().starts_with('<') => {
                last.push(' ');
                last.push_str(line.trim());
            }
            _ => lines.push(line.to_owned()),
        }
    }
    lines
}

/// `Name: value` at line start; the name is a field-name token, the value may contain colons.
fn field(line: &str) -> Option<(&str, &str)> {
    let (name, value) = line.split_once(':')?;
    let token = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    token.then(|| (name, value.trim()))
}

fn recipient(field: Field, value: &str) -> Recipient {
    let lower = value.to_ascii_lowercase();
    let cut = [", expanded:", ", forwarded:"]
        .iter()
        .filter_map(|k| lower.find(k).map(|i| (i, *k)))
        .min_by_key(|(i, _)| *i);
    let (address, expanded, forwarded) = match cut {
        Some((i, kind)) => {
            let other = Some(Address::parse(&value[i + kind.len()..]));
            let (e, f) = if kind == ", expanded:" {
                (other, None)
            } else {
                (None, other)
            };
            (&value[..i], e, f)
        }
        None => (value, None, None),
    };
    Recipient {
        field,
        address: Address::parse(address),
        expanded,
        forwarded,
    }
}

fn add_2003_recipients(report: &mut Report, value: &str) {
    for item in value.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        report.recipients.push(Recipient {
            field: Field::Recipient,
            address: Address::parse(item),
            expanded: None,
            forwarded: None,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smtp(a: &str) -> Address {
        Address::Smtp(a.into())
    }

    fn report_of(c: Classification) -> Report {
        match c {
            Classification::Journal(r) | Classification::NdrJournal(r) => r,
            Classification::Plain => panic!("not classified as a journal report"),
        }
    }

    const ORIGINAL: &str = "From: alice@contoso.example\r\nTo: bob@contoso.example\r\nSubject: hi\r\nMessage-ID: <orig-1@contoso.example>\r\n\r\nbody\r\n";

    fn journal(report_headers: &str, report_body: &str, original: &str) -> Vec<u8> {
        format!(
            "From: alice@contoso.example\r\nTo: bob@contoso.example\r\nSubject: hi\r\nX-MS-Journal-Report:\r\nMessage-ID: <x@journal.report.generator>\r\nContent-Type: multipart/mixed; boundary=\"B\"\r\n\r\n--B\r\n{report_headers}\r\n{report_body}\r\n--B\r\nContent-Type: message/rfc822\r\n\r\n{original}\r\n--B--\r\n"
        )
        .into_bytes()
    }

    #[test]
    fn extended_fields_and_exact_original() {
        let raw = journal(
            "Content-Type: text/plain; charset=us-ascii\r\n",
            "Sender: alice@contoso.example\r\nOn-Behalf-Of: ceo@contoso.example\r\nSubject: Re: To: trap@x.example\r\nMessage-Id: <orig-1@contoso.example>\r\nTo: bob@contoso.example, Expanded: sales@contoso.example\r\nCc: fwd@contoso.example, Forwarded: dave@contoso.example\r\nBcc: Erin@Fabrikam.example\r\nRecipient: /o=ExchangeLabs/ou=Exchange/cn=Recipients/cn=x\r\n",
            ORIGINAL,
        );
        let r = report_of(classify(&raw));
        assert_eq!(r.format, Format::Exchange2007);
        assert_eq!(r.sender, Some(smtp("alice@contoso.example")));
        assert_eq!(r.on_behalf_of, Some(smtp("ceo@contoso.example")));
        assert_eq!(r.subject.as_deref(), Some("Re: To: trap@x.example"));
        assert_eq!(r.message_id.as_deref(), Some("<orig-1@contoso.example>"));
        assert_eq!(r.recipients.len(), 4);
        assert_eq!(
            r.recipients[0].expanded,
            Some(smtp("sales@contoso.example"))
        );
        assert_eq!(
            r.recipients[1].forwarded,
            Some(smtp("dave@contoso.example"))
        );
        assert!(r.recipients[2].address.matches("erin@fabrikam.example"));
        assert!(matches!(r.recipients[3].address, Address::Unresolvable(_)));
        assert_eq!(r.stray_lines, 0);
        assert_eq!(r.originals.len(), 1);
        assert_eq!(&raw[r.originals[0].range.clone()], ORIGINAL.as_bytes());
    }

    #[test]
    fn quoted_printable_base64_lf_and_html_reports() {
        let qp = journal(
            "Content-Type: text/plain; charset=\"utf-8\"\r\nContent-Transfer-Encoding: quoted-printable\r\n",
            "Sender: alice@contoso.example\r\nSubject: Gr=C3=BC=C3=9Fe aus M=\r\n=C3=BCnchen\r\nMessage-Id: <long-id@DM6PR11MB0001.namprd11=\r\n.prod.outlook.com>\r\nRecipient: bob@contoso.example\r\n",
            ORIGINAL,
        );
        let r = report_of(classify(&qp));
        assert_eq!(r.subject.as_deref(), Some("Grüße aus München"));
        assert_eq!(
            r.message_id.as_deref(),
            Some("<long-id@DM6PR11MB0001.namprd11.prod.outlook.com>")
        );

        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD
            .encode("Sender: alice@contoso.example\r\nMessage-Id: <a@b>\r\nRecipient: bob@contoso.example\r\n");
        let raw = journal(
            "Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n",
            &b64,
            ORIGINAL,
        );
        assert_eq!(report_of(classify(&raw)).recipients.len(), 1);

        let lf = String::from_utf8(journal(
            "Content-Type: text/plain\r\n",
            "Sender: alice@contoso.example\r\nRecipient: bob@contoso.example\r\n",
            ORIGINAL,
        ))
        .unwrap()
        .replace("\r\n", "\n");
        assert_eq!(report_of(classify(lf.as_bytes())).recipients.len(), 1);

        let html = journal(
            "Content-Type: text/html\r\n",
            "<html><body><p>Sender: alice@contoso.example</p><p>Recipient: bob@contoso.example</p></body></html>",
            ORIGINAL,
        );
        assert_eq!(
            report_of(classify(&html)).recipients[0].address,
            smtp("bob@contoso.example")
        );
    }

    #[test]
    fn exchange_2003_multiline_recipients() {
        let raw = b"Content-Identifer: ExJournalReport\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nSender: \"Alice\" <SMTP:alice@contoso.example>\r\nMessage-ID: <m@x>\r\nRecipients: <SMTP:bob@contoso.example>, <SMTP:carol@contoso.example>,\r\n <EX:/o=Org/cn=dave>\r\n--B\r\nContent-Type: message/rfc822\r\n\r\nSubject: x\r\n\r\ny\r\n--B--\r\n";
        let r = report_of(classify(raw));
        assert_eq!(r.format, Format::Exchange2003);
        assert_eq!(r.sender, Some(smtp("alice@contoso.example")));
        let addrs: Vec<_> = r.recipients.iter().map(|x| x.address.clone()).collect();
        assert_eq!(addrs[0], smtp("bob@contoso.example"));
        assert_eq!(addrs[1], smtp("carol@contoso.example"));
        assert!(matches!(addrs[2], Address::Unresolvable(_)));
    }

    #[test]
    fn ndr_wrapped_and_plain_and_degenerate() {
        let inner = String::from_utf8(journal(
            "Content-Type: text/plain\r\n",
            "Sender: alice@contoso.example\r\nMessage-Id: <orig-1@contoso.example>\r\nRecipient: bob@contoso.example\r\n",
            ORIGINAL,
        ))
        .unwrap();
        let ndr = format!("From: postmaster@contoso.example\r\nX-MS-Exchange-Message-Is-Ndr:\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=N\r\n\r\n--N\r\nContent-Type: text/plain\r\n\r\nDelivery has failed.\r\n--N\r\nContent-Type: message/delivery-status\r\n\r\nAction: failed\r\n--N\r\nContent-Type: message/rfc822\r\n\r\n{inner}\r\n--N--\r\n");
        let c = classify(ndr.as_bytes());
        assert!(matches!(c, Classification::NdrJournal(_)), "{c:?}");
        let r = report_of(c);
        assert_eq!(
            &ndr.as_bytes()[r.originals[0].range.clone()],
            ORIGINAL.as_bytes()
        );

        assert_eq!(classify(ORIGINAL.as_bytes()), Classification::Plain);
        assert_eq!(classify(b""), Classification::Plain);
        // A marker but no envelope part: not a report.
        assert_eq!(
            classify(b"X-MS-Journal-Report:\r\n\r\njust text\r\n"),
            Classification::Plain
        );
        // No original attached: still a report (the archive files it as an incident).
        let none = b"X-MS-Journal-Report:\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nSender: a@x.example\r\nRecipient: b@x.example\r\n--B--\r\n";
        assert!(report_of(classify(none)).originals.is_empty());
    }

    #[test]
    fn forged_looking_reports_are_flagged_and_large_ones_parse() {
        let raw = journal(
            "Content-Type: text/plain\r\n",
            "Sender: alice@contoso.example\r\nRecipient: ceo@contoso.example\r\nClick here http://phish.example/login\r\n",
            ORIGINAL,
        );
        assert_eq!(report_of(classify(&raw)).stray_lines, 1);

        let mut body = String::from("Sender: alice@contoso.example\r\nMessage-Id: <big@x>\r\n");
        for i in 0..10_000 {
            body.push_str(&format!("Recipient: user{i}@contoso.example\r\n"));
        }
        let raw = journal("Content-Type: text/plain\r\n", &body, ORIGINAL);
        assert_eq!(report_of(classify(&raw)).recipients.len(), 10_000);
    }

    #[test]
    fn corpus_reports_when_available() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus");
        if !dir.is_dir() {
            eprintln!("skipped: ../shared/corpus is absent");
            return;
        }
        for sub in ["real", "constructed"] {
            for entry in std::fs::read_dir(dir.join(sub)).unwrap() {
                let path = entry.unwrap().path();
                if path.extension().and_then(|e| e.to_str()) != Some("eml") {
                    continue;
                }
                let raw = std::fs::read(&path).unwrap();
                let r = report_of(classify(&raw));
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                assert!(r.sender.is_some(), "{name}: no sender");
                assert!(!r.recipients.is_empty(), "{name}: no recipients");
                assert!(!r.originals.is_empty(), "{name}: no original");
                assert_eq!(r.stray_lines, 0, "{name}: stray lines");
                if name.contains("decrypted-copy") {
                    assert_eq!(r.originals.len(), 2, "{name}");
                }
                if name.contains("ndr-wrapped") {
                    assert!(
                        matches!(classify(&raw), Classification::NdrJournal(_)),
                        "{name}"
                    );
                }
                if name.contains("extended-fields") {
                    assert!(r.on_behalf_of.is_some(), "{name}");
                    assert!(r.recipients.iter().any(|x| x.field == Field::Bcc), "{name}");
                    assert!(
                        r.subject.as_deref().unwrap_or("").contains("Übersicht"),
                        "{name}"
                    );
                }
            }
        }
    }
}
