//! A bounded-memory stand-in for a message of any size: the message with the long runs of
//! body lines left out, plus the map back to positions in the real message.
//!
//! MIME structure lives in header blocks and `--boundary` lines; a 150 MB journal report is
//! large because of attachment bodies. The skeleton keeps every header block and delimiter
//! line and the start of every body, so [`crate::mime::parse`] and
//! [`crate::journal::classify`] find the same parts in it, and a range found in the skeleton
//! maps back to exact byte positions of the message, which is then copied as a stream.

use std::io::{self, BufRead, BufReader, Read};

/// Bytes kept of each body run (the lines between two structural lines).
const RUN_KEEP: usize = 4 << 20;
/// Once the skeleton is this large, runs keep only `RUN_KEEP_LATE`.
const LATE_AFTER: usize = 16 << 20;
const RUN_KEEP_LATE: usize = 64 << 10;
/// Bytes kept of one header block.
const HEADER_KEEP: usize = 256 << 10;
/// Past this, only delimiter lines (up to `LINE_KEEP`) are kept.
const HARD_CAP: usize = 48 << 20;
/// A line is read in pieces of at most this length.
const LINE_KEEP: usize = 64 << 10;
/// Delimiter lines kept past `HARD_CAP`: no more than the MIME parser would look at.
const LATE_DELIMITERS: usize = crate::mime::MAX_TOTAL_PARTS;

/// See the module documentation.
pub struct Skeleton {
    pub bytes: Vec<u8>,
    /// Where bytes were left out: (position in `bytes`, message position of the first byte
    /// left out, message position of the byte at `bytes[position]`).
    gaps: Vec<(usize, u64, u64)>,
    /// Length of the whole message.
    pub total: u64,
}

impl Skeleton {
    /// Reads a whole message and keeps its skeleton.
    pub fn build<R: Read>(input: R) -> io::Result<Skeleton> {
        Builder::default().run(BufReader::with_capacity(64 << 10, input))
    }

    /// The message position of skeleton position `pos`. At a gap, a range *start* maps to the
    /// first byte left out and a range *end* to the byte after the gap.
    pub fn position(&self, pos: usize, end: bool) -> u64 {
        let i = self.gaps.partition_point(|(p, _, _)| *p <= pos);
        if i == 0 {
            return pos as u64;
        }
        let (p, before, after) = self.gaps[i - 1];
        if p == pos && !end {
            before
        } else {
            after + (pos - p) as u64
        }
    }

    /// Maps a skeleton range to the message.
    pub fn range(&self, r: &std::ops::Range<usize>) -> std::ops::Range<u64> {
        let start = self.position(r.start, false);
        let end = self.position(r.end, true).max(start);
        start..end
    }

    /// True when nothing was left out (the skeleton is the message).
    pub fn is_whole(&self) -> bool {
        self.gaps.is_empty()
    }
}

#[derive(Default)]
struct Builder {
    out: Vec<u8>,
    gaps: Vec<(usize, u64, u64)>,
    /// Message position of the next byte read.
    pos: u64,
    in_header: bool,
    header_kept: usize,
    /// Delimiter lines kept past `HARD_CAP`.
    late_delimiters: usize,
    run_kept: usize,
    /// A gap is open: (message position where it began, line break of the last line left out
    /// and its message position).
    open_gap: Option<(u64, Vec<u8>, u64)>,
}

impl Builder {
    fn run<R: BufRead>(mut self, mut input: R) -> io::Result<Skeleton> {
        self.in_header = true;
        let mut at_line_start = true;
        let mut piece = Vec::with_capacity(1024);
        loop {
            piece.clear();
            let n = (&mut input)
                .take(LINE_KEEP as u64)
                .read_until(b'\n', &mut piece)?;
            if n == 0 {
                break;
            }
            let complete = piece.ends_with(b"\n");
            self.piece(&piece, at_line_start);
            at_line_start = complete;
        }
        if let Some((before, _, _)) = self.open_gap.take() {
            self.gaps.push((self.out.len(), before, self.pos));
        }
        Ok(Skeleton {
            bytes: self.out,
            gaps: self.gaps,
            total: self.pos,
        })
    }

    fn piece(&mut self, piece: &[u8], line_start: bool) {
        let delimiter = line_start && piece.starts_with(b"--");
        let blank = line_start && (piece == b"\r\n" || piece == b"\n");
        let keep = if delimiter && self.out.len() < HARD_CAP {
            true
        } else if delimiter {
            let keep = piece.len() <= 1024 && self.late_delimiters < LATE_DELIMITERS;
            self.late_delimiters += usize::from(keep);
            keep
        } else if self.in_header {
            blank || (self.header_kept < HEADER_KEEP && self.out.len() < HARD_CAP)
        } else {
            let limit = if self.out.len() < LATE_AFTER {
                RUN_KEEP
            } else {
                RUN_KEEP_LATE
            };
            self.run_kept + piece.len() <= limit && self.out.len() < HARD_CAP
        };
        if keep {
            self.keep(piece);
        } else {
            self.leave_out(piece);
        }
        if delimiter {
            self.in_header = true;
            self.header_kept = 0;
        } else if self.in_header && blank {
            self.in_header = false;
            self.run_kept = 0;
        } else if self.in_header {
            self.header_kept += piece.len();
        } else {
            self.run_kept += piece.len();
        }
        self.pos += piece.len() as u64;
    }

    fn keep(&mut self, piece: &[u8]) {
        if let Some((before, line_break, break_pos)) = self.open_gap.take() {
            // The line break of the last line left out stays: it is what a part's end maps to.
            self.gaps.push((self.out.len(), before, break_pos));
            self.out.extend_from_slice(&line_break);
        }
        self.out.extend_from_slice(piece);
    }

    fn leave_out(&mut self, piece: &[u8]) {
        let line_break: &[u8] = if piece.ends_with(b"\r\n") {
            b"\r\n"
        } else if piece.ends_with(b"\n") {
            b"\n"
        } else {
            b""
        };
        let break_pos = self.pos + (piece.len() - line_break.len()) as u64;
        match &mut self.open_gap {
            Some((_, lb, bp)) => {
                *lb = line_break.to_vec();
                *bp = break_pos;
            }
            None => self.open_gap = Some((self.pos, line_break.to_vec(), break_pos)),
        }
        if line_break.is_empty() {
            // The line goes on in the next piece, which is left out too; its break counts.
            if let Some((_, _, bp)) = &mut self.open_gap {
                *bp = self.pos + piece.len() as u64;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mime::{self, Kind};

    fn big_report(body_lines: usize, crlf: &str) -> Vec<u8> {
        let mut attachment = String::new();
        for i in 0..body_lines {
            attachment.push_str(&format!(
                "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9w{i:08}{crlf}"
            ));
        }
        format!(
            "X-MS-Journal-Report:{crlf}Content-Type: multipart/mixed; boundary=\"B\"{crlf}{crlf}--B{crlf}Content-Type: text/plain{crlf}{crlf}Sender: a@x.example{crlf}Recipient: b@x.example{crlf}{crlf}--B{crlf}Content-Type: message/rfc822{crlf}{crlf}Subject: big{crlf}Content-Type: multipart/mixed; boundary=\"I\"{crlf}{crlf}--I{crlf}Content-Type: application/pdf{crlf}Content-Transfer-Encoding: base64{crlf}{crlf}{attachment}--I--{crlf}{crlf}--B--{crlf}"
        )
        .into_bytes()
    }

    fn check_same_structure(raw: &[u8]) {
        let sk = Skeleton::build(raw).unwrap();
        assert_eq!(sk.total, raw.len() as u64);
        let whole = mime::parse(raw);
        let skel = mime::parse(&sk.bytes);
        let (Kind::Multipart(w), Kind::Multipart(s)) = (&whole.kind, &skel.kind) else {
            panic!("not multipart");
        };
        assert_eq!(w.len(), s.len());
        for (a, b) in w.iter().zip(s) {
            let r = sk.range(&b.body);
            assert_eq!(
                r.start as usize..r.end as usize,
                a.body,
                "body range maps back"
            );
            let h = sk.range(&b.header);
            assert_eq!(h.start as usize, a.header.start);
        }
    }

    #[test]
    fn small_messages_are_kept_whole() {
        let raw = big_report(10, "\r\n");
        let sk = Skeleton::build(&raw[..]).unwrap();
        assert!(sk.is_whole());
        assert_eq!(sk.bytes, raw);
        check_same_structure(&raw);
    }

    #[test]
    fn large_bodies_are_left_out_and_ranges_map_back() {
        for crlf in ["\r\n", "\n"] {
            let raw = big_report(200_000, crlf);
            let sk = Skeleton::build(&raw[..]).unwrap();
            assert!(!sk.is_whole());
            assert!(
                sk.bytes.len() < 5 << 20,
                "skeleton {} bytes",
                sk.bytes.len()
            );
            check_same_structure(&raw);
            // The report part is intact in the skeleton.
            assert!(sk.bytes.windows(21).any(|w| w == b"Recipient: b@x.exampl"));
        }
    }

    #[test]
    fn a_huge_line_without_breaks_is_bounded() {
        let mut raw =
            b"Subject: x\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\n\r\n".to_vec();
        raw.extend(std::iter::repeat_n(b'A', 20 << 20));
        raw.extend_from_slice(b"\r\n--B--\r\n");
        let sk = Skeleton::build(&raw[..]).unwrap();
        assert!(sk.bytes.len() < 5 << 20);
        check_same_structure(&raw);
    }
}
