//! The DATA body decoder: removes dot-stuffing and finds the `<CRLF>.<CRLF>` end marker.
//!
//! Only CRLF ends a line here; a bare LF never starts a line, so `<LF>.<LF>` and similar
//! sequences cannot end the message early (SMTP smuggling).

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line.
    LineStart,
    /// Inside a line.
    Text,
    /// After a CR inside a line.
    Cr,
    /// After a dot at the start of a line.
    Dot,
    /// After `.` + CR at the start of a line.
    DotCr,
}

/// Incremental decoder; feed it the bytes as they arrive.
#[derive(Debug)]
pub struct DotDecoder {
    state: State,
}

impl Default for DotDecoder {
    fn default() -> Self {
        DotDecoder {
            state: State::LineStart,
        }
    }
}

impl DotDecoder {
    /// Appends the message bytes of `input` to `out`. Returns `Some(n)` when the end marker
    /// ends at `input[n - 1]` (bytes after it belong to the next command), else `None`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Option<usize> {
        let mut i = 0;
        while i < input.len() {
            if self.state == State::Text {
                // Fast path: copy up to the next CR.
                match memchr::memchr(b'\r', &input[i..]) {
                    Some(off) => {
                        out.extend_from_slice(&input[i..=i + off]);
                        i += off + 1;
                        self.state = State::Cr;
                        continue;
                    }
                    None => {
                        out.extend_from_slice(&input[i..]);
                        return None;
                    }
                }
            }
            let b = input[i];
            i += 1;
            self.state = match (self.state, b) {
                (State::LineStart, b'.') => State::Dot,
                (State::LineStart, b'\r') | (State::Cr, b'\r') => {
                    out.push(b);
                    State::Cr
                }
                (State::Cr, b'\n') => {
                    out.push(b);
                    State::LineStart
                }
                (State::Dot, b'\r') => State::DotCr,
                (State::DotCr, b'\n') => {
                    self.state = State::LineStart;
                    return Some(i);
                }
                (State::DotCr, _) => {
                    // ".\rX": the dot is removed, the CR is kept, X is looked at again.
                    out.push(b'\r');
                    i -= 1;
                    State::Cr
                }
                (_, _) => {
                    out.push(b);
                    State::Text
                }
            };
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8], chunk: usize) -> (Vec<u8>, Option<usize>) {
        let mut d = DotDecoder::default();
        let mut out = Vec::new();
        let mut pos = 0;
        for c in input.chunks(chunk) {
            if let Some(n) = d.feed(c, &mut out) {
                return (out, Some(pos + n));
            }
            pos += c.len();
        }
        (out, None)
    }

    #[test]
    fn unstuffs_and_finds_end_at_any_chunking() {
        let input = b"Subject: x\r\n\r\n..leading dot\r\n.\r\r\nbare\nlf\n.\nstill\r\n.\r\nNEXT";
        let want = b"Subject: x\r\n\r\n.leading dot\r\n\r\r\nbare\nlf\n.\nstill\r\n";
        for chunk in 1..input.len() {
            let (out, end) = decode_all(input, chunk);
            assert_eq!(out, want, "chunk {chunk}");
            assert_eq!(end, Some(input.len() - 4), "chunk {chunk}");
        }
    }

    #[test]
    fn empty_message_and_no_end() {
        assert_eq!(decode_all(b".\r\n", 3), (vec![], Some(3)));
        assert_eq!(decode_all(b"abc\r\n.", 2), (b"abc\r\n".to_vec(), None));
    }
}
