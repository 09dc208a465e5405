//! Keys and sealing at rest.
//!
//! Every mailbox has an X25519 key pair in the `age` format. The secret key is stored only
//! sealed with the mailbox password (age's scrypt recipient), so a successful unwrap *is* the
//! password check and nothing derived from the password is kept. Messages are sealed to the
//! public key on arrival; an operator can open any file with the standard `age` tool.

use std::io::{BufRead, Read, Write};
use std::iter;

use age::secrecy::{ExposeSecret, SecretString};
use age::stream::{StreamReader, StreamWriter};
use rand::{rngs::OsRng, Rng, RngCore};

pub use age::x25519::{Identity, Recipient};

pub mod epoch;
pub mod rewrap;

/// scrypt cost for wrapping a secret key: N = 2^15 (32 MiB, ~60 ms here).
const SCRYPT_LOG_N: u8 = 15;
/// Largest cost accepted when unwrapping, so a crafted file cannot make a login take minutes.
const SCRYPT_MAX_LOG_N: u8 = 18;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("wrong password")]
    WrongPassword,
    #[error("damaged key or message file: {0}")]
    Damaged(String),
    #[error("invalid public key")]
    BadRecipient,
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// A fresh key pair: the public key (`age1...`) and the secret key sealed with the password.
pub struct KeyPair {
    pub public: String,
    pub wrapped_secret: Vec<u8>,
}

/// Generates a key pair whose secret key only `password` unlocks.
pub fn generate_keypair(password: &str) -> Result<KeyPair, CryptoError> {
    let identity = Identity::generate();
    let public = identity.to_public().to_string();
    let mut recipient = age::scrypt::Recipient::new(SecretString::from(password.to_owned()));
    recipient.set_work_factor(SCRYPT_LOG_N);
    let encryptor = age::Encryptor::with_recipients(iter::once(&recipient as _))
        .map_err(|e| CryptoError::Damaged(e.to_string()))?;
    let mut wrapped = Vec::new();
    let mut writer = encryptor.wrap_output(&mut wrapped)?;
    writer.write_all(identity.to_string().expose_secret().as_bytes())?;
    writer.finish()?;
    Ok(KeyPair {
        public,
        wrapped_secret: wrapped,
    })
}

/// Unwraps a sealed secret key with the password. Costs one scrypt (tens of milliseconds).
pub fn unwrap_identity(wrapped: &[u8], password: &str) -> Result<Identity, CryptoError> {
    let decryptor =
        age::Decryptor::new_buffered(wrapped).map_err(|e| CryptoError::Damaged(e.to_string()))?;
    let mut identity = age::scrypt::Identity::new(SecretString::from(password.to_owned()));
    identity.set_max_work_factor(SCRYPT_MAX_LOG_N);
    let mut reader = decryptor
        .decrypt(iter::once(&identity as _))
        .map_err(|e| match e {
            age::DecryptError::DecryptionFailed | age::DecryptError::NoMatchingKeys => {
                CryptoError::WrongPassword
            }
            other => CryptoError::Damaged(other.to_string()),
        })?;
    let mut text = String::new();
    reader
        .read_to_string(&mut text)
        .map_err(|_| CryptoError::WrongPassword)?;
    text.trim()
        .parse::<Identity>()
        .map_err(|e| CryptoError::Damaged(e.to_string()))
}

pub fn parse_recipient(public: &str) -> Result<Recipient, CryptoError> {
    public.parse().map_err(|_| CryptoError::BadRecipient)
}

/// Starts sealing a stream to `recipient`; call `finish()` on the result.
pub fn seal<W: Write>(
    recipient: &dyn age::Recipient,
    out: W,
) -> Result<StreamWriter<W>, CryptoError> {
    seal_to_all(&[recipient], out)
}

/// Starts sealing a stream to several recipients (an archive copy: users and auditors).
pub fn seal_to_all<W: Write>(
    recipients: &[&dyn age::Recipient],
    out: W,
) -> Result<StreamWriter<W>, CryptoError> {
    let encryptor = age::Encryptor::with_recipients(recipients.iter().copied())
        .map_err(|e| CryptoError::Damaged(e.to_string()))?;
    Ok(encryptor.wrap_output(out)?)
}

/// Opens a sealed stream with an identity (a mailbox's, a [`epoch::Keyring`], ...).
pub fn open<R: BufRead>(
    identity: &dyn age::Identity,
    input: R,
) -> Result<StreamReader<R>, CryptoError> {
    let decryptor =
        age::Decryptor::new_buffered(input).map_err(|e| CryptoError::Damaged(e.to_string()))?;
    decryptor
        .decrypt(iter::once(identity))
        .map_err(|e| CryptoError::Damaged(e.to_string()))
}

/// Opens a sealed stream with whichever of `identities` has a stanza in it.
pub fn open_any<R: BufRead>(
    identities: &[&dyn age::Identity],
    input: R,
) -> Result<StreamReader<R>, CryptoError> {
    let decryptor =
        age::Decryptor::new_buffered(input).map_err(|e| CryptoError::Damaged(e.to_string()))?;
    decryptor
        .decrypt(identities.iter().copied())
        .map_err(|e| CryptoError::Damaged(e.to_string()))
}

/// Checks that `input` starts with a well-formed age header (no key needed).
pub fn check_header<R: BufRead>(input: R) -> Result<(), CryptoError> {
    age::Decryptor::new_buffered(input)
        .map(|_| ())
        .map_err(|e| CryptoError::Damaged(e.to_string()))
}

/// A random password of 24 characters from a 62-letter alphabet (about 143 bits).
pub fn random_password() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = OsRng;
    (0..24)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

/// 128 random bits as 32 lowercase hex digits.
pub fn random_hex128() -> String {
    let mut bytes = [0u8; 16];
    OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_unwrap_and_seal_roundtrip() {
        let kp = generate_keypair("correct horse").unwrap();
        assert!(matches!(
            unwrap_identity(&kp.wrapped_secret, "wrong"),
            Err(CryptoError::WrongPassword)
        ));
        let id = unwrap_identity(&kp.wrapped_secret, "correct horse").unwrap();
        let recipient = parse_recipient(&kp.public).unwrap();
        let mut sealed = Vec::new();
        let mut w = seal(&recipient, &mut sealed).unwrap();
        w.write_all(b"Subject: secret\r\n\r\nbody").unwrap();
        w.finish().unwrap();
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        let mut out = Vec::new();
        open(&id, &sealed[..])
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, b"Subject: secret\r\n\r\nbody");
    }

    #[test]
    fn passwords_and_ids_are_random() {
        assert_eq!(random_password().len(), 24);
        assert_ne!(random_password(), random_password());
        assert_eq!(random_hex128().len(), 32);
    }
}
