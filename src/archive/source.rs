//! Where an original's bytes come from (the intake file or its skeleton) and the writers
//! that hash an item on its way into a pack: the plaintext (duplicate keys, the chain's
//! commitment) and the sealed bytes (the chain's SHA-256).

use std::io::{self, Read, Write};
use std::ops::Range;
use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::chain::Sealed;
use super::fingerprint::Normalizer;
use super::pack::Location;
use super::skeleton::Skeleton;
use super::store::Origin;
use super::{Archive, ArchiveError, DECODE_MAX};

/// Where the bytes of an original come from: the skeleton when it is the whole message,
/// otherwise a decrypting pass over the intake file (or over a kept one).
pub(super) struct Source<'a> {
    pub(super) archive: &'a Archive,
    pub(super) intake: &'a Path,
    pub(super) envelope_len: u64,
    pub(super) skeleton: Option<&'a Skeleton>,
}

impl Source<'_> {
    /// Where an original of this intake file is, for re-sealing it later.
    pub(super) fn origin(&self, range: &Range<u64>, base64: bool) -> Origin {
        Origin {
            file: self
                .intake
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            envelope_len: self.envelope_len,
            start: range.start,
            end: range.end,
            base64,
        }
    }

    /// Copies an original, decoding a base64 `message/rfc822` part (up to [`DECODE_MAX`]).
    pub(super) fn copy_original(
        &self,
        range: Range<u64>,
        base64: bool,
        out: &mut (impl Write + ?Sized),
    ) -> Result<(), ArchiveError> {
        if base64 && range.end - range.start <= DECODE_MAX {
            let mut encoded = Vec::new();
            self.copy(range.clone(), &mut encoded)?;
            encoded.retain(|b| !b.is_ascii_whitespace());
            use base64::Engine;
            if let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(&encoded) {
                out.write_all(&decoded)?;
                return Ok(());
            }
        }
        self.copy(range, out)
    }

    fn copy(&self, range: Range<u64>, out: &mut (impl Write + ?Sized)) -> Result<(), ArchiveError> {
        if let Some(skeleton) = self.skeleton.filter(|s| s.is_whole()) {
            let r = range.start as usize..(range.end as usize).min(skeleton.bytes.len());
            out.write_all(&skeleton.bytes[r])?;
            return Ok(());
        }
        let mut reader = self.archive.open_intake(self.intake)?;
        io::copy(
            &mut (&mut reader).take(self.envelope_len + range.start),
            &mut io::sink(),
        )?;
        let n = io::copy(&mut reader.take(range.end - range.start), out)?;
        if n != range.end - range.start {
            return Err(ArchiveError::Damaged(
                "intake shorter than its skeleton".into(),
            ));
        }
        Ok(())
    }
}

/// Bytes of random salt sealed after an item's original (see [`super::chain`]).
pub(super) const SALT_BYTES: usize = 16;

/// An item sealed into a pack.
pub(super) struct Written {
    pub(super) location: Location,
    pub(super) size: u64,
    pub(super) sealed: Sealed,
    /// The summary to seal beside an original.
    pub(super) summary: Option<super::summary::Plain>,
}

/// The keyed hashes that tell duplicates apart: of the exact bytes, and of the bytes
/// without volatile header fields.
pub(super) struct Fingerprint {
    pub(super) exact: Vec<u8>,
    pub(super) normalized: Vec<u8>,
}

/// Computes a [`Fingerprint`] of what is written to it.
pub(super) struct FingerprintWriter {
    exact: Hmac<Sha256>,
    normalized: Normalizer,
}

impl FingerprintWriter {
    pub(super) fn new(secret: &[u8]) -> FingerprintWriter {
        FingerprintWriter {
            exact: Hmac::<Sha256>::new_from_slice(secret).expect("any key length"),
            normalized: Normalizer::default(),
        }
    }

    pub(super) fn finish(self) -> Fingerprint {
        Fingerprint {
            exact: self.exact.finalize().into_bytes().to_vec(),
            normalized: self.normalized.finish(),
        }
    }
}

impl Write for FingerprintWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.exact.update(buf);
        self.normalized.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Hashes the plaintext on its way into the sealing stream: its size and the chain's
/// salted commitment.
pub(super) struct HashingWriter<W: Write> {
    pub(super) inner: W,
    pub(super) commitment: Sha256,
    pub(super) size: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.commitment.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Hashes the sealed bytes on their way to the file.
pub(super) struct DigestWriter<W: Write> {
    inner: W,
    digest: Sha256,
    size: u64,
}

impl<W: Write> DigestWriter<W> {
    pub(super) fn new(inner: W) -> DigestWriter<W> {
        DigestWriter {
            inner,
            digest: Sha256::new(),
            size: 0,
        }
    }

    /// (SHA-256, bytes written, the writer).
    pub(super) fn finish(self) -> ([u8; 32], u64, W) {
        (self.digest.finalize().into(), self.size, self.inner)
    }
}

impl<W: Write> Write for DigestWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.digest.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
