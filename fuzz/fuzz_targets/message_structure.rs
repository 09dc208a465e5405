//! Arbitrary message bytes through the MIME structure parser, the ENVELOPE and
//! BODYSTRUCTURE renderers, every part resolution, journal-report classification and the
//! archive's skeleton, the summary header and the word index: no panic, bounded work,
//! originals inside the message, and the index never contradicting the live search.

#![no_main]

use journalgate::archive::skeleton::Skeleton;
use journalgate::imap::structure;
use journalgate::journal::{self, Classification};
use journalgate::mime;
use journalgate::textindex::{self, Tokens, Verdict};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|raw: &[u8]| {
    if let Classification::Journal(r) | Classification::NdrJournal(r) = journal::classify(raw) {
        assert!(r.originals.iter().all(|o| o.range.end <= raw.len()));
    }
    let skeleton = Skeleton::build(raw).expect("reading a slice cannot fail");
    assert_eq!(skeleton.total, raw.len() as u64);
    if skeleton.is_whole() {
        assert_eq!(skeleton.bytes, raw);
    }
    if let Classification::Journal(r) | Classification::NdrJournal(r) =
        journal::classify(&skeleton.bytes)
    {
        for o in &r.originals {
            let mapped = skeleton.range(&o.range);
            assert!(mapped.start <= mapped.end && mapped.end <= skeleton.total);
        }
    }
    // The summary fields render the same ENVELOPE as the whole header.
    let header = &raw[..mime::header_end(raw)];
    let (mut full, mut mini) = (Vec::new(), Vec::new());
    structure::envelope(header, &mut full);
    structure::envelope(&mime::summary_header(header), &mut mini);
    assert_eq!(full, mini);
    // A definite index answer is the live search's answer.
    let tokens = Tokens::of(raw);
    for needle in raw.split(|b| b.is_ascii_whitespace()).take(8) {
        for text in [false, true] {
            match tokens.verdict(needle, text) {
                Verdict::Maybe => {}
                v => assert_eq!(v == Verdict::Yes, textindex::matches(raw, needle, text)),
            }
        }
    }
    let root = mime::parse(raw);
    let mut out = Vec::new();
    structure::body_structure(raw, &root, true, &mut out);
    structure::envelope(&raw[root.header.clone()], &mut out);
    for a in 1..4 {
        for b in 0..3 {
            let path: Vec<u32> = if b == 0 { vec![a] } else { vec![a, b] };
            if let Some(part) = mime::resolve(&root, &path) {
                assert!(part.body.end <= raw.len() && part.header.end <= raw.len());
                let _ = mime::decode_body(part.info.encoding.as_deref(), &raw[part.body.clone()]);
            }
        }
    }
});
