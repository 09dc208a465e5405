//! Arbitrary message bytes through the MIME structure parser and the ENVELOPE and
//! BODYSTRUCTURE renderers, and every part resolution: no panic, bounded work.

#![no_main]

use journalgate::imap::mime;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|raw: &[u8]| {
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
