//! Epoch keys: sealing many files to the same readers with one key agreement per reader and
//! epoch, instead of one (two, with age's ephemeral key) per reader and file.
//!
//! The archive worker holds an *epoch*: an X25519 key pair made at random when it starts and
//! again every few hours, whose secret half is never written anywhere. For each reader (a
//! user, an auditor, the recovery key) it derives once per epoch
//! `K = HKDF(DH(epoch secret, reader public), salt = epoch public ‖ reader public)`, and every
//! file it seals in that epoch carries, for each of its readers, an age stanza
//!
//! ```text
//! -> jg-epoch <epoch public, base64> <reader tag, base64>
//! <24-byte nonce ‖ XChaCha20-Poly1305(K, file key)>
//! ```
//!
//! A reader derives the same `K` from its secret key and the epoch public key (one key
//! agreement per epoch, cached in its [`Keyring`]) and unwraps file keys with it. Nothing on
//! the server alone can: once the epoch ends, its secret is dropped. The payload is ordinary
//! age, so the format stays streaming, seekable and authenticated.
//!
//! [`SymmetricKey`] is the same wrapping under a key the server holds (the archive intake).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use age::{DecryptError, EncryptError};
use age_core::format::{FileKey, Stanza, FILE_KEY_BYTES};
use age_core::secrecy::ExposeSecret;
use base64::prelude::{Engine, BASE64_STANDARD_NO_PAD};
use bech32::FromBase32;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::{rngs::OsRng, RngCore};
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use super::{CryptoError, Identity, Recipient};

/// Stanza tag of a file key wrapped under an epoch key.
pub const EPOCH_TAG: &str = "jg-epoch";
/// Stanza tag of a file key wrapped under a server-held symmetric key.
pub const SYMMETRIC_TAG: &str = "jg-sym";
const EPOCH_LABEL: &[u8] = b"journalgate.org/v1/epoch";
const NONCE_BYTES: usize = 24;
const TAG_BYTES: usize = 4;
const WRAPPED_BYTES: usize = NONCE_BYTES + FILE_KEY_BYTES + 16;

type Key = Zeroizing<[u8; 32]>;

/// The 32 bytes of an `age1...` public key.
pub fn raw_public(recipient: &Recipient) -> [u8; 32] {
    let (_, data, _) = bech32::decode(&recipient.to_string()).expect("age prints valid bech32");
    let bytes = Vec::<u8>::from_base32(&data).expect("age prints valid bech32");
    bytes.try_into().expect("an X25519 key is 32 bytes")
}

/// The 32 bytes of an `AGE-SECRET-KEY-1...` identity.
fn raw_secret(identity: &Identity) -> StaticSecret {
    let text = identity.to_string();
    let (_, data, _) =
        bech32::decode(text.expose_secret()).expect("age prints valid bech32 secret keys");
    let bytes = Zeroizing::new(Vec::<u8>::from_base32(&data).expect("valid bech32"));
    let array: [u8; 32] = bytes[..].try_into().expect("an X25519 key is 32 bytes");
    StaticSecret::from(array)
}

/// A short name of a reader's public key, so a reader skips other readers' stanzas.
fn reader_tag(public: &[u8; 32]) -> [u8; TAG_BYTES] {
    let digest = Sha256::digest(public);
    digest[..TAG_BYTES].try_into().expect("4 bytes")
}

/// `K` for (epoch, reader) from one side's secret and the other side's public key.
fn derive(
    secret: &StaticSecret,
    other: &[u8; 32],
    epoch: &[u8; 32],
    reader: &[u8; 32],
) -> Option<Key> {
    let shared = secret.diffie_hellman(&PublicKey::from(*other));
    if !shared.was_contributory() {
        return None;
    }
    let mut salt = [0u8; 64];
    salt[..32].copy_from_slice(epoch);
    salt[32..].copy_from_slice(reader);
    Some(Zeroizing::new(age_core::primitives::hkdf(
        &salt,
        EPOCH_LABEL,
        shared.as_bytes(),
    )))
}

fn wrap(key: &[u8; 32], file_key: &FileKey) -> Vec<u8> {
    // A 192-bit random nonce: the thread's CSPRNG (seeded from the OS) is enough, and it
    // spares a system call per stanza.
    let mut nonce = [0u8; NONCE_BYTES];
    rand::thread_rng().fill_bytes(&mut nonce);
    let cipher = XChaCha20Poly1305::new(key.into());
    let sealed = cipher
        .encrypt(XNonce::from_slice(&nonce), &file_key.expose_secret()[..])
        .expect("encrypting 16 bytes cannot fail");
    let mut body = nonce.to_vec();
    body.extend_from_slice(&sealed);
    body
}

fn unwrap(key: &[u8; 32], body: &[u8]) -> Option<FileKey> {
    if body.len() != WRAPPED_BYTES {
        return None;
    }
    let cipher = XChaCha20Poly1305::new(key.into());
    let plain = Zeroizing::new(
        cipher
            .decrypt(
                XNonce::from_slice(&body[..NONCE_BYTES]),
                &body[NONCE_BYTES..],
            )
            .ok()?,
    );
    let array: [u8; FILE_KEY_BYTES] = plain[..].try_into().ok()?;
    Some(FileKey::new(Box::new(array)))
}

fn b64_arg<const N: usize>(arg: &str) -> Option<[u8; N]> {
    BASE64_STANDARD_NO_PAD.decode(arg).ok()?.try_into().ok()
}

/// The writing side of an epoch: its secret and the reader keys derived so far.
pub struct Epoch {
    secret: StaticSecret,
    public: [u8; 32],
    started: Instant,
    /// Reader keys derived so far, by their `age1...` text.
    readers: Mutex<HashMap<String, EpochRecipient>>,
}

impl Default for Epoch {
    fn default() -> Self {
        Epoch::new()
    }
}

impl Epoch {
    pub fn new() -> Epoch {
        let secret = StaticSecret::random_from_rng(OsRng);
        let public = PublicKey::from(&secret).to_bytes();
        Epoch {
            secret,
            public,
            started: Instant::now(),
            readers: Mutex::new(HashMap::new()),
        }
    }

    /// How long this epoch has been in use.
    pub fn age(&self) -> Duration {
        self.started.elapsed()
    }

    /// This epoch's public key, base64 (as it appears in stanzas).
    pub fn public(&self) -> String {
        BASE64_STANDARD_NO_PAD.encode(self.public)
    }

    /// The recipient for a reader (`age1...`): one key agreement the first time.
    pub fn recipient(&self, public: &str) -> Result<EpochRecipient, CryptoError> {
        let mut readers = self.readers.lock().unwrap();
        if let Some(r) = readers.get(public) {
            return Ok(r.clone());
        }
        let reader = raw_public(&super::parse_recipient(public)?);
        let key = derive(&self.secret, &reader, &self.public, &reader)
            .ok_or(CryptoError::BadRecipient)?;
        let recipient = EpochRecipient {
            epoch: self.public,
            tag: reader_tag(&reader),
            key,
        };
        readers.insert(public.to_owned(), recipient.clone());
        Ok(recipient)
    }

    /// Unwraps a file key from stanzas this epoch wrote (for any reader it derived a key
    /// for), so that one more reader can be given a file without rewriting it.
    pub fn unwrap(&self, stanzas: &[Stanza]) -> Option<FileKey> {
        let readers = self.readers.lock().unwrap();
        stanzas.iter().find_map(|stanza| {
            let (epoch, tag) = epoch_args(stanza)?;
            if epoch != self.public {
                return None;
            }
            readers
                .values()
                .filter(|r| r.tag == tag)
                .find_map(|r| unwrap(&r.key, &stanza.body))
        })
    }
}

/// `(epoch public, reader tag)` of a `jg-epoch` stanza.
fn epoch_args(stanza: &Stanza) -> Option<([u8; 32], [u8; TAG_BYTES])> {
    if stanza.tag != EPOCH_TAG {
        return None;
    }
    match &stanza.args[..] {
        [epoch, tag] => Some((b64_arg(epoch)?, b64_arg(tag)?)),
        _ => None,
    }
}

/// One reader within one epoch: wraps file keys with a symmetric cipher only.
#[derive(Clone)]
pub struct EpochRecipient {
    epoch: [u8; 32],
    tag: [u8; TAG_BYTES],
    key: Key,
}

impl EpochRecipient {
    /// The stanza wrapping `file_key` for this reader.
    pub fn stanza(&self, file_key: &FileKey) -> Stanza {
        Stanza {
            tag: EPOCH_TAG.to_owned(),
            args: vec![
                BASE64_STANDARD_NO_PAD.encode(self.epoch),
                BASE64_STANDARD_NO_PAD.encode(self.tag),
            ],
            body: wrap(&self.key, file_key),
        }
    }
}

impl age::Recipient for EpochRecipient {
    fn wrap_file_key(
        &self,
        file_key: &FileKey,
    ) -> Result<(Vec<Stanza>, std::collections::HashSet<String>), EncryptError> {
        Ok((vec![self.stanza(file_key)], Default::default()))
    }
}

/// A reader's key: opens files sealed to it directly (age X25519) or through an epoch, and
/// remembers each epoch key it derived (one key agreement per epoch per session).
pub struct Keyring {
    identity: Identity,
    public_text: String,
    secret: StaticSecret,
    public: [u8; 32],
    tag: [u8; TAG_BYTES],
    epochs: Mutex<HashMap<[u8; 32], Option<Key>>>,
}

impl Keyring {
    pub fn new(identity: Identity) -> Keyring {
        let secret = raw_secret(&identity);
        let public = PublicKey::from(&secret).to_bytes();
        Keyring {
            public_text: identity.to_public().to_string(),
            identity,
            secret,
            public,
            tag: reader_tag(&public),
            epochs: Mutex::new(HashMap::new()),
        }
    }

    /// The `age1...` public key.
    pub fn public(&self) -> &str {
        &self.public_text
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// How many epoch keys were derived (one key agreement each).
    pub fn epochs_opened(&self) -> usize {
        self.epochs.lock().unwrap().len()
    }

    fn epoch_key(&self, epoch: &[u8; 32]) -> Option<Key> {
        let mut epochs = self.epochs.lock().unwrap();
        epochs
            .entry(*epoch)
            .or_insert_with(|| derive(&self.secret, epoch, epoch, &self.public))
            .clone()
    }
}

impl age::Identity for Keyring {
    fn unwrap_stanza(&self, stanza: &Stanza) -> Option<Result<FileKey, DecryptError>> {
        if stanza.tag != EPOCH_TAG {
            return self.identity.unwrap_stanza(stanza);
        }
        let (epoch, tag) = epoch_args(stanza)?;
        if tag != self.tag {
            return None;
        }
        // A failure is not fatal: another reader's tag may collide with ours.
        unwrap(&*self.epoch_key(&epoch)?, &stanza.body).map(Ok)
    }
}

/// A key the server holds, as an age recipient and identity (`jg-sym` stanzas): the archive
/// intake, which the server must read without anyone's password.
pub struct SymmetricKey {
    key: Key,
}

impl SymmetricKey {
    /// Derives the key from a server-held identity (so one secret serves both forms).
    pub fn from_identity(identity: &Identity, label: &str) -> SymmetricKey {
        let secret = raw_secret(identity);
        let label = format!("journalgate.org/v1/symmetric/{label}");
        SymmetricKey {
            key: Zeroizing::new(age_core::primitives::hkdf(
                &[],
                label.as_bytes(),
                secret.as_bytes(),
            )),
        }
    }
}

impl age::Recipient for SymmetricKey {
    fn wrap_file_key(
        &self,
        file_key: &FileKey,
    ) -> Result<(Vec<Stanza>, std::collections::HashSet<String>), EncryptError> {
        let stanza = Stanza {
            tag: SYMMETRIC_TAG.to_owned(),
            args: vec![],
            body: wrap(&self.key, file_key),
        };
        Ok((vec![stanza], Default::default()))
    }
}

impl age::Identity for SymmetricKey {
    fn unwrap_stanza(&self, stanza: &Stanza) -> Option<Result<FileKey, DecryptError>> {
        if stanza.tag != SYMMETRIC_TAG {
            return None;
        }
        unwrap(&self.key, &stanza.body).map(Ok)
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    fn seal(recipients: &[&dyn age::Recipient], text: &[u8]) -> Vec<u8> {
        let encryptor = age::Encryptor::with_recipients(recipients.iter().copied()).unwrap();
        let mut out = Vec::new();
        let mut w = encryptor.wrap_output(&mut out).unwrap();
        w.write_all(text).unwrap();
        w.finish().unwrap();
        out
    }

    fn open(identity: &dyn age::Identity, file: &[u8]) -> Option<Vec<u8>> {
        let decryptor = age::Decryptor::new_buffered(file).ok()?;
        let mut reader = decryptor.decrypt(std::iter::once(identity)).ok()?;
        let mut out = Vec::new();
        reader.read_to_end(&mut out).ok()?;
        Some(out)
    }

    #[test]
    fn each_reader_opens_its_files_and_nobody_else_does() {
        let (alice, bob, eve) = (
            Identity::generate(),
            Identity::generate(),
            Identity::generate(),
        );
        let epoch = Epoch::new();
        let to_alice = epoch.recipient(&alice.to_public().to_string()).unwrap();
        let to_bob = epoch.recipient(&bob.to_public().to_string()).unwrap();
        let both = seal(&[&to_alice, &to_bob], b"for both");
        let only_bob = seal(&[&to_bob], b"for bob");
        let (alice, bob, eve) = (Keyring::new(alice), Keyring::new(bob), Keyring::new(eve));
        assert_eq!(open(&alice, &both).unwrap(), b"for both");
        assert_eq!(open(&bob, &both).unwrap(), b"for both");
        assert_eq!(open(&bob, &only_bob).unwrap(), b"for bob");
        assert!(open(&alice, &only_bob).is_none());
        assert!(open(&eve, &both).is_none());
        assert_eq!(
            bob.epochs_opened(),
            1,
            "one key agreement for the whole epoch"
        );
        assert!(!both.windows(8).any(|w| w == b"for both"));
    }

    #[test]
    fn another_epoch_needs_its_own_key_and_the_writer_can_reopen_its_own() {
        let alice = Identity::generate();
        let public = alice.to_public().to_string();
        let (first, second) = (Epoch::new(), Epoch::new());
        let a = seal(&[&first.recipient(&public).unwrap()], b"one");
        let b = seal(&[&second.recipient(&public).unwrap()], b"two");
        let ring = Keyring::new(alice);
        assert_eq!(open(&ring, &a).unwrap(), b"one");
        assert_eq!(open(&ring, &b).unwrap(), b"two");
        assert_eq!(ring.epochs_opened(), 2);
        let header = super::super::rewrap::Header::read(&mut &a[..]).unwrap();
        assert!(first.unwrap(header.stanzas()).is_some());
        assert!(second.unwrap(header.stanzas()).is_none());
    }

    #[test]
    fn plain_age_files_still_open_and_damaged_stanzas_are_refused() {
        let alice = Identity::generate();
        let plain = seal(&[&alice.to_public()], b"old item");
        let ring = Keyring::new(alice.clone());
        assert_eq!(open(&ring, &plain).unwrap(), b"old item");
        let epoch = Epoch::new();
        let mut sealed = seal(&[&epoch.recipient(ring.public()).unwrap()], b"x");
        let at = sealed.windows(9).position(|w| w == b"jg-epoch ").unwrap() + 12;
        sealed[at] ^= 1;
        assert!(open(&Keyring::new(alice), &sealed).is_none());
    }

    #[test]
    fn symmetric_key_round_trip() {
        let server = Identity::generate();
        let key = SymmetricKey::from_identity(&server, "intake");
        let sealed = seal(&[&key], b"intake copy");
        let again = SymmetricKey::from_identity(&server, "intake");
        assert_eq!(open(&again, &sealed).unwrap(), b"intake copy");
        let other = SymmetricKey::from_identity(&server, "other");
        assert!(open(&other, &sealed).is_none());
    }
}
