//! Arbitrary message bytes through the MIME structure parser, the ENVELOPE and
//! BODYSTRUCTURE renderers, every part resolution, and journal-report classification:
//! no panic, bounded work, originals inside the message.

#![no_main]

use journalgate::imap::mime;
use journalgate::journal::{self, Classification};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|raw: &[u8]| {
    if let Classification::Journal(r) | Classification::NdrJournal(r) = journal::classify(raw) {
        assert!(r.originals.iter().all(|o| o.range.end <= raw.len()));
    }
    let root = mime::parse(raw);
    let mut out = Vec::new();
    mime::body_structure(raw, &root, true, &mut out);
    mime::envelope(&raw[root.header.clone()], &mut out);
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
