//! Giving one more reader a sealed file without re-encrypting it.
//!
//! An age file is a text header (one stanza per recipient, each wrapping the same random file
//! key) followed by the payload, encrypted with a key derived from the file key. Granting a
//! reader means unwrapping the file key with an identity that already reads the file,
//! wrapping it for the new recipient, and writing a new header with its MAC recomputed
//! (HMAC-SHA256 under `HKDF(file key, "header")`, age v1). The payload bytes are copied
//! unchanged, so a grant costs two key agreements and a file copy whatever the item's size.

use std::io::{self, BufRead, Read, Write};

use age_core::format::{FileKey, Stanza};
use age_core::secrecy::ExposeSecret;
use base64::prelude::{Engine, BASE64_STANDARD_NO_PAD};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::CryptoError;

/// Longest header read (age headers here hold a few dozen stanzas of ~120 bytes).
const MAX_HEADER: usize = 256 << 10;
const VERSION_LINE: &[u8] = b"age-encryption.org/v1\n";
const MAC_PREFIX: &[u8] = b"---";

/// The header of an age file: its stanzas and the bytes they were read from.
pub struct Header {
    /// Everything before the `---` line: the version line and the stanzas, as read.
    body: Vec<u8>,
    stanzas: Vec<Stanza>,
    /// The MAC from the `---` line.
    mac: Vec<u8>,
}

impl Header {
    /// Reads the header from `input`, leaving `input` at the first payload byte.
    pub fn read<R: BufRead>(input: &mut R) -> Result<Header, CryptoError> {
        let damaged = |what: &str| CryptoError::Damaged(format!("age header: {what}"));
        let mut body = Vec::new();
        let mut line = Vec::new();
        loop {
            line.clear();
            let limit = (MAX_HEADER - body.len()) as u64;
            let n = Read::take(&mut *input, limit).read_until(b'\n', &mut line)?;
            if n == 0 || line.last() != Some(&b'\n') {
                return Err(damaged("truncated or too long"));
            }
            if body.is_empty() && line != VERSION_LINE {
                return Err(damaged("not age v1"));
            }
            if line.starts_with(MAC_PREFIX) {
                break;
            }
            body.extend_from_slice(&line);
        }
        let stanzas =
            parse_stanzas(&body[VERSION_LINE.len()..]).ok_or_else(|| damaged("stanza"))?;
        let mac = line
            .strip_prefix(b"--- ")
            .and_then(|m| m.strip_suffix(b"\n"))
            .and_then(|m| BASE64_STANDARD_NO_PAD.decode(m).ok())
            .ok_or_else(|| damaged("MAC line"))?;
        Ok(Header { body, stanzas, mac })
    }

    /// The header MAC of `body` ending in `---` under `file_key`.
    fn mac_of(body: &[u8], file_key: &FileKey) -> Hmac<Sha256> {
        let mac_key = age_core::primitives::hkdf(&[], b"header", file_key.expose_secret());
        let mut mac = Hmac::<Sha256>::new_from_slice(&mac_key).expect("any key length");
        mac.update(body);
        mac.update(MAC_PREFIX);
        mac
    }

    /// Whether `file_key` is this file's key (its header MAC checks out).
    pub fn verify(&self, file_key: &FileKey) -> bool {
        Self::mac_of(&self.body, file_key)
            .verify_slice(&self.mac)
            .is_ok()
    }

    /// The file key, unwrapped with `identity` and checked against the header MAC.
    pub fn checked_file_key(&self, identity: &dyn age::Identity) -> Result<FileKey, CryptoError> {
        let key = self.file_key(&[identity])?;
        if !self.verify(&key) {
            return Err(CryptoError::Damaged(
                "age header: MAC does not match".into(),
            ));
        }
        Ok(key)
    }

    /// The recipient stanzas.
    pub fn stanzas(&self) -> &[Stanza] {
        &self.stanzas
    }

    /// How many recipient stanzas the header holds.
    pub fn stanza_count(&self) -> usize {
        self.stanzas.len()
    }

    /// The file key, unwrapped with the first of `identities` that has a stanza here.
    pub fn file_key(&self, identities: &[&dyn age::Identity]) -> Result<FileKey, CryptoError> {
        for identity in identities {
            match identity.unwrap_stanzas(&self.stanzas) {
                Some(Ok(key)) => return Ok(key),
                Some(Err(e)) => return Err(CryptoError::Damaged(e.to_string())),
                None => {}
            }
        }
        Err(CryptoError::WrongPassword)
    }

    /// Writes this header with a stanza for each of `recipients` added, its MAC made with
    /// `file_key` (which must be the key the stanzas wrap).
    pub fn write_with<W: Write>(
        &self,
        file_key: &FileKey,
        recipients: &[&dyn age::Recipient],
        out: &mut W,
    ) -> Result<(), CryptoError> {
        let mut header = self.body.clone();
        for recipient in recipients {
            let (stanzas, _) = recipient
                .wrap_file_key(file_key)
                .map_err(|e| CryptoError::Damaged(e.to_string()))?;
            for stanza in &stanzas {
                write_stanza(stanza, &mut header);
            }
        }
        let tag =
            BASE64_STANDARD_NO_PAD.encode(Self::mac_of(&header, file_key).finalize().into_bytes());
        header.extend_from_slice(MAC_PREFIX);
        header.push(b' ');
        header.extend_from_slice(tag.as_bytes());
        header.push(b'\n');
        out.write_all(&header)?;
        Ok(())
    }
}

/// Copies the sealed file `input` to `out` with stanzas for `recipients` added, unwrapping
/// its key with one of `identities`. The payload is copied byte for byte.
pub fn add_recipients<R: BufRead, W: Write>(
    input: &mut R,
    identities: &[&dyn age::Identity],
    recipients: &[&dyn age::Recipient],
    out: &mut W,
) -> Result<u64, CryptoError> {
    let header = Header::read(input)?;
    let key = header.file_key(identities)?;
    header.write_with(&key, recipients, out)?;
    Ok(io::copy(input, out)?)
}

/// Reads back stanzas written one after another by [`stanza_bytes`].
pub fn parse_stanzas(mut input: &[u8]) -> Option<Vec<Stanza>> {
    let mut out = Vec::new();
    while !input.is_empty() {
        let (rest, stanza) = age_core::format::read::legacy_age_stanza(input).ok()?;
        out.push(Stanza::from(stanza));
        input = rest;
    }
    Some(out)
}

/// One stanza in its header form (for keeping it outside a file, e.g. a grant).
pub fn stanza_bytes(stanza: &Stanza) -> Vec<u8> {
    let mut out = Vec::new();
    write_stanza(stanza, &mut out);
    out
}

/// Reads back what [`stanza_bytes`] wrote.
pub fn parse_stanza(bytes: &[u8]) -> Option<Stanza> {
    let (rest, stanza) = age_core::format::read::legacy_age_stanza(bytes).ok()?;
    rest.is_empty().then(|| Stanza::from(stanza))
}

/// `-> tag args...` and the body in base64, 64 columns, ending with a short line.
fn write_stanza(stanza: &Stanza, out: &mut Vec<u8>) {
    out.extend_from_slice(b"->");
    for word in std::iter::once(&stanza.tag).chain(&stanza.args) {
        out.push(b' ');
        out.extend_from_slice(word.as_bytes());
    }
    out.push(b'\n');
    let encoded = BASE64_STANDARD_NO_PAD.encode(&stanza.body);
    let mut rest = encoded.as_bytes();
    while rest.len() >= 64 {
        out.extend_from_slice(&rest[..64]);
        out.push(b'\n');
        rest = &rest[64..];
    }
    out.extend_from_slice(rest);
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::super::{Identity, Recipient};
    use super::*;

    fn sealed(to: &[Recipient], text: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let to: Vec<&dyn age::Recipient> = to.iter().map(|r| r as _).collect();
        let mut w = super::super::seal_to_all(&to, &mut out).unwrap();
        w.write_all(text).unwrap();
        w.finish().unwrap();
        out
    }

    fn opened(identity: &Identity, file: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut out = Vec::new();
        super::super::open(identity, file)?.read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn a_granted_reader_opens_the_file_and_the_payload_is_unchanged() {
        let (owner, reader, stranger) = (
            Identity::generate(),
            Identity::generate(),
            Identity::generate(),
        );
        let text: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let file = sealed(&[owner.to_public()], &text);
        assert!(opened(&reader, &file).is_err());
        let mut granted = Vec::new();
        add_recipients(
            &mut &file[..],
            &[&stranger, &owner],
            &[&reader.to_public()],
            &mut granted,
        )
        .unwrap();
        assert_eq!(opened(&reader, &granted).unwrap(), text);
        assert_eq!(opened(&owner, &granted).unwrap(), text);
        assert!(opened(&stranger, &granted).is_err());
        assert_eq!(
            &file[file.len() - 1000..],
            &granted[granted.len() - 1000..],
            "the payload is copied, not re-encrypted"
        );
        let header = Header::read(&mut &granted[..]).unwrap();
        assert_eq!(
            header.stanza_count(),
            Header::read(&mut &file[..]).unwrap().stanza_count() + 1
        );
    }

    #[test]
    fn wrong_identities_and_damaged_headers_are_refused() {
        let owner = Identity::generate();
        let file = sealed(&[owner.to_public()], b"hello");
        let mut out = Vec::new();
        let other = Identity::generate();
        assert!(matches!(
            add_recipients(&mut &file[..], &[&other], &[&other.to_public()], &mut out),
            Err(CryptoError::WrongPassword)
        ));
        let mut tampered = file.clone();
        let at = tampered.windows(3).position(|w| w == b"-> ").unwrap() + 5;
        tampered[at] ^= 1;
        let mut out = Vec::new();
        let result = add_recipients(
            &mut &tampered[..],
            &[&owner],
            &[&other.to_public()],
            &mut out,
        );
        assert!(result.is_err() || opened(&other, &out).is_err());
        for bad in [&b"not age"[..], b"age-encryption.org/v1\n-> X25519\n", b""] {
            assert!(Header::read(&mut &bad[..]).is_err());
        }
    }
}
