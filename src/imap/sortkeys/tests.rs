//! Unit tests of `imap::sortkeys`.

use super::*;

#[test]
fn base_subjects_follow_rfc_5256() {
    for (raw, base, reply) in [
        ("Re: [fwd: foo]", "FOO", true),
        ("Re: re: RE: test (fwd)", "TEST", true),
        ("[PATCH] Re: x", "X", true),
        ("[PATCH] x", "X", false),
        ("[PATCH]", "[PATCH]", false),
        ("[a][b]", "[B]", false),
        (
            "Fwd: Re: [list] hello  \t world (fwd) (FWD) ",
            "HELLO WORLD",
            true,
        ),
        ("Re[2]: foo", "FOO", true),
        ("FW [x] : foo", "FOO", true),
        ("[fwd: [fwd: x] ]", "X", true),
        ("Rev: x", "REV: X", false),
        ("hello (fwd)", "HELLO", true),
        ("  plain\r\n  text ", "PLAIN TEXT", false),
        ("Re: =?utf-8?q?Gr=C3=BC=C3=9Fe?=", "GRüßE", true),
        ("=?ISO-8859-1?Q?Re:_caf=E9?=", "CAFé", true),
        ("", "", false),
        ("re:", "", true),
        ("[", "[", false),
    ] {
        assert_eq!(subject_key(raw), (base.to_string(), reply), "{raw:?}");
        assert_eq!(base_subject(raw), base);
        assert_eq!(is_reply(raw), reply);
    }
}

#[test]
fn extracts_header_fields() {
    let header = b"Date: Tue, 1 Jul 2003 10:52:37 +0200\r\n\
        Subject: Re: [list] Hello\r\n\
        From: =?utf-8?q?J=C3=B6rg?= Zulu <Alpha@Example.COM>\r\n\
        To: beta@x.org, other@y\r\n\
        Cc: Group: Gamma <gamma@z>;\r\n\
        Message-ID: <\"01KF8JCEOC\"@xxx.yyy.com>\r\n\
        References: <a@x> (comment <no@x>)\r\n <b@x> <bad> \"<q@x>\"\r\n\
        In-Reply-To: <c@x>\r\n\r\n";
    let f = extract(header);
    assert_eq!(f.date, Some(1_057_049_557));
    assert_eq!((f.subject.as_str(), f.reply), ("HELLO", true));
    assert_eq!(
        (f.from.as_str(), f.to.as_str(), f.cc.as_str()),
        ("alpha", "beta", "gamma")
    );
    assert_eq!(f.display_from, "jörg zulu");
    assert_eq!(f.display_to, "beta@x.org");
    assert_eq!(f.message_id.as_deref(), Some("01KF8JCEOC@xxx.yyy.com"));
    assert_eq!(f.references, ["a@x", "b@x"]);
}

#[test]
fn in_reply_to_stands_in_for_references() {
    let f = extract(b"In-Reply-To: Your message of \"x <y@z>\" <c@x> <d@x>\r\nDate: never\r\n\r\n");
    assert_eq!(f.references, ["c@x"]);
    assert_eq!((f.date, f.message_id), (None, None));
    let bare = extract(b"Message-ID: id@host\r\nReferences: <>\r\n\r\n");
    assert_eq!(bare.message_id.as_deref(), Some("id@host"));
    assert!(bare.references.is_empty());
    assert_eq!(extract(b""), SortFields::default());
}

#[test]
fn cached_fields_without_newer_members_still_load() {
    let f: SortFields = serde_json::from_str(r#"{"subject":"X","date":5}"#).unwrap();
    assert_eq!((f.subject.as_str(), f.date, f.reply), ("X", Some(5), false));
}

#[test]
fn casemap_folds_to_upper_case() {
    assert_eq!(casemap_cmp("abc", "ABC"), Ordering::Equal);
    // '_' (0x5F) sorts after 'Z' (0x5A) but before 'z' (0x7A).
    assert_eq!(casemap_cmp("a_", "AZ"), Ordering::Greater);
    assert_eq!(casemap_cmp("", "a"), Ordering::Less);
}

fn fields(subject: &str, from: &str, display_from: &str, date: Option<i64>) -> SortFields {
    SortFields {
        date,
        subject: base_subject(subject),
        from: from.into(),
        to: from.into(),
        cc: from.into(),
        display_from: display_from.into(),
        display_to: display_from.into(),
        ..SortFields::default()
    }
}

fn items(fields: &[SortFields]) -> Vec<SortItem<'_>> {
    let n = fields.len() as u32;
    fields
        .iter()
        .zip(0u32..)
        .map(|(fields, i)| SortItem {
            seq: i + 1,
            uid: 100 + i,
            arrival: i64::from(n - i),
            size: u64::from(i % 2),
            fields,
        })
        .collect()
}

fn by(key: SortKey, reverse: bool) -> SortCriterion {
    SortCriterion { reverse, key }
}

#[test]
fn sorts_by_each_key_ties_in_sequence_order() {
    let f = [
        fields("Re: b", "Bob", "zed", Some(30)),
        fields("a", "alice", "", None),
        fields("B", "", "Yan", Some(10)),
        fields("[x] a", "bob", "zed", Some(2)),
    ];
    let it = items(&f);
    let cases = [
        (SortKey::Arrival, [3, 2, 1, 0]),
        (SortKey::Size, [0, 2, 1, 3]),
        // Message 2 has no Date: its arrival (3) stands in.
        (SortKey::Date, [3, 1, 2, 0]),
        (SortKey::Subject, [1, 3, 0, 2]),
        (SortKey::From, [2, 1, 0, 3]),
        (SortKey::To, [2, 1, 0, 3]),
        (SortKey::Cc, [2, 1, 0, 3]),
        (SortKey::DisplayFrom, [1, 2, 0, 3]),
        (SortKey::DisplayTo, [1, 2, 0, 3]),
    ];
    for (key, want) in cases {
        assert_eq!(sort(&it, &[by(key.clone(), false)]), want, "{key:?}");
    }
    // REVERSE reverses its key only: ties stay in sequence order.
    assert_eq!(sort(&it, &[by(SortKey::From, true)]), [0, 3, 1, 2]);
    let two = [by(SortKey::Size, true), by(SortKey::Date, false)];
    assert_eq!(sort(&it, &two), [3, 1, 2, 0]);
    assert_eq!(sort(&it, &[]), [0, 1, 2, 3]);
}

#[test]
fn display_sort_uses_names_over_addresses() {
    let header = |from: &str| extract(format!("From: {from}\r\n\r\n").as_bytes());
    let f = [
        header("Zed <alpha@x>"),
        header("beta@x"),
        header("\"\" <Aaron@x>"),
    ];
    let it = items(&f);
    assert_eq!(sort(&it, &[by(SortKey::From, false)]), [2, 0, 1]);
    assert_eq!(sort(&it, &[by(SortKey::DisplayFrom, false)]), [2, 1, 0]);
    assert_eq!(f[2].display_from, "aaron@x");
}

/// A small deterministic generator for the property tests.
fn rng(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

#[test]
fn sort_returns_an_ordered_permutation() {
    let mut seed = 0x5eed_u64;
    let keys = [
        SortKey::Arrival,
        SortKey::Date,
        SortKey::Subject,
        SortKey::From,
    ];
    for round in 0..200 {
        let n = (rng(&mut seed) % 12) as usize;
        let pick = |s: &mut u64| ["a", "B", "re: a", "", "b"][(rng(s) % 5) as usize];
        let f: Vec<SortFields> = (0..n)
            .map(|_| {
                fields(
                    pick(&mut seed),
                    pick(&mut seed),
                    "",
                    Some((rng(&mut seed) % 3) as i64),
                )
            })
            .collect();
        let it = items(&f);
        let criteria: Vec<SortCriterion> = (0..round % 3)
            .map(|_| {
                by(
                    keys[(rng(&mut seed) % 4) as usize].clone(),
                    rng(&mut seed) % 2 == 0,
                )
            })
            .collect();
        let order = sort(&it, &criteria);
        let mut seen = order.clone();
        seen.sort_unstable();
        assert_eq!(seen, (0..n).collect::<Vec<_>>());
        for w in order.windows(2) {
            let (a, b) = (&it[w[0]], &it[w[1]]);
            let cmp = criteria
                .iter()
                .map(|c| directed(compare(a, b, &c.key), c.reverse))
                .find(|o| o.is_ne())
                .unwrap_or(a.seq.cmp(&b.seq));
            assert_eq!(cmp, Ordering::Less);
        }
    }
}

#[test]
fn odd_input_never_panics() {
    let mut seed = 0xfeed_u64;
    let parts = [
        "re", "fwd", "fw", "[", "]", ":", " ", "(fwd)", "ä", "=?", "?=", "\t", "x", "<", ">", "@",
        "\"", "(", "\\",
    ];
    for _ in 0..2000 {
        let text: String = (0..rng(&mut seed) % 16)
            .map(|_| parts[(rng(&mut seed) % parts.len() as u64) as usize])
            .collect();
        let base = base_subject(&text);
        assert!(!base.starts_with(' ') && !base.ends_with(' '), "{text:?}");
        let header = format!(
            "Subject: {text}\r\nFrom: {text}\r\nReferences: {text}\r\nMessage-ID: {text}\r\n\r\n"
        );
        extract(header.as_bytes());
    }
}
