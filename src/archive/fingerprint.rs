//! Content fingerprints for duplicate detection: a message hashed without the header fields
//! that differ between journal copies of one message.

use sha2::{Digest, Sha256};

use crate::mime;

/// A duplicate key is computed over the original's header up to this size.
const HASH_HEADER_MAX: usize = 1 << 20;

/// Hashes a message without the header fields that differ between journal copies of one
/// message (`X-MS-Exchange-Organization-*`, `X-MS-Exchange-Forest-*`, `Received`), and
/// without line-ending differences in the header.
#[derive(Default)]
pub(super) struct Normalizer {
    header: Vec<u8>,
    body: Option<Sha256>,
}

impl Normalizer {
    pub(super) fn update(&mut self, bytes: &[u8]) {
        if let Some(body) = &mut self.body {
            body.update(bytes);
            return;
        }
        self.header.extend_from_slice(bytes);
        let end = mime::header_end(&self.header);
        if end < self.header.len() || self.header.len() >= HASH_HEADER_MAX {
            let mut body = Sha256::new();
            body.update(filtered_header(&self.header[..end]));
            body.update(b"\0");
            body.update(&self.header[end..]);
            self.header = Vec::new();
            self.body = Some(body);
        }
    }

    pub(super) fn finish(mut self) -> Vec<u8> {
        if self.body.is_none() {
            let mut body = Sha256::new();
            body.update(filtered_header(&self.header));
            self.body = Some(body);
        }
        self.body.expect("set").finalize().to_vec()
    }
}

fn filtered_header(header: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(header.len());
    let mut skipping = false;
    for line in header.split_inclusive(|b| *b == b'\n') {
        let continuation = line.first().is_some_and(|b| *b == b' ' || *b == b'\t');
        if !continuation {
            let name = line.split(|b| *b == b':').next().unwrap_or(b"");
            let name = String::from_utf8_lossy(name).trim().to_ascii_lowercase();
            skipping = name == "received"
                || name.starts_with("x-ms-exchange-organization-")
                || name.starts_with("x-ms-exchange-forest-");
        }
        if !skipping {
            let trimmed = line.strip_suffix(b"\n").unwrap_or(line);
            let trimmed = trimmed.strip_suffix(b"\r").unwrap_or(trimmed);
            out.extend_from_slice(trimmed);
            out.push(b'\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volatile_headers_do_not_change_the_duplicate_hash() {
        let hash = |m: &[u8]| {
            let mut n = Normalizer::default();
            for chunk in m.chunks(7) {
                n.update(chunk);
            }
            n.finish()
        };
        let a = hash(b"Received: from a\r\nX-MS-Exchange-Organization-Id: 1\r\n x\r\nSubject: s\r\n\r\nbody\r\n");
        let b = hash(b"Received: from b\r\n by c\r\nSubject: s\r\nX-MS-Exchange-Forest-Foo: 2\r\n\r\nbody\r\n");
        let c = hash(b"Subject: s\r\n\r\nother body\r\n");
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
