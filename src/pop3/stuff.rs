//! Output filters for RETR and TOP: dot-stuffing and the TOP line limit, both incremental.

/// Dot-stuffs message bytes for a multi-line POP3 response (RFC 1939 §3).
#[derive(Debug)]
pub struct DotStuffer {
    line_start: bool,
    last_two: [u8; 2],
}

impl Default for DotStuffer {
    fn default() -> Self {
        DotStuffer {
            line_start: true,
            last_two: [b'\r', b'\n'],
        }
    }
}

impl DotStuffer {
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        for &b in input {
            if self.line_start && b == b'.' {
                out.push(b'.');
            }
            out.push(b);
            self.line_start = b == b'\n';
            self.last_two = [self.last_two[1], b];
        }
    }

    /// The terminator, preceded by CRLF if the message did not end with one.
    pub fn finish(&self, out: &mut Vec<u8>) {
        if self.last_two != [b'\r', b'\n'] {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
    }
}

/// Passes the header, the blank line, and then `lines` body lines (RFC 1939 TOP).
#[derive(Debug)]
pub struct TopLimit {
    lines: usize,
    in_body: bool,
    line_len: usize,
    done: bool,
}

impl TopLimit {
    pub fn new(lines: usize) -> TopLimit {
        TopLimit {
            lines,
            in_body: false,
            line_len: 0,
            done: false,
        }
    }

    /// Returns how many bytes of `input` to pass on; after `is_done`, nothing more.
    pub fn take(&mut self, input: &[u8]) -> usize {
        if self.done {
            return 0;
        }
        for (i, &b) in input.iter().enumerate() {
            if b != b'\n' {
                if b != b'\r' {
                    self.line_len += 1;
                }
                continue;
            }
            let empty = self.line_len == 0;
            self.line_len = 0;
            if !self.in_body {
                if empty {
                    self.in_body = true;
                    if self.lines == 0 {
                        self.done = true;
                        return i + 1;
                    }
                }
            } else {
                self.lines -= 1;
                if self.lines == 0 {
                    self.done = true;
                    return i + 1;
                }
            }
        }
        input.len()
    }

    pub fn is_done(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stuffing() {
        let mut s = DotStuffer::default();
        let mut out = Vec::new();
        s.feed(b".a\r\n", &mut out);
        s.feed(b"..b\r\nc.\r\n.", &mut out);
        s.finish(&mut out);
        assert_eq!(out, b"..a\r\n...b\r\nc.\r\n..\r\n.\r\n");
    }

    #[test]
    fn top_limits_lines() {
        let msg = b"A: 1\r\nB: 2\r\n\r\nl1\r\nl2\r\nl3\r\n";
        let mut t = TopLimit::new(0);
        assert_eq!(&msg[..t.take(msg)], b"A: 1\r\nB: 2\r\n\r\n");
        let mut t = TopLimit::new(2);
        let n1 = t.take(&msg[..8]);
        let n2 = t.take(&msg[8..]);
        assert_eq!(n1, 8);
        assert_eq!(&msg[8..8 + n2], b" 2\r\n\r\nl1\r\nl2\r\n");
        assert!(t.is_done());
    }
}
