//! Tamper evidence: a hash chain over every change to the archive's item files, with
//! checkpoints signed by a server key.
//!
//! Each change is a [`Link`]: an item filed, re-sealed (a duplicate merged within the
//! window) or removed (retention), with the SHA-256 of the sealed file, the arrival time and
//! the hash of the previous link. A link is stored as the exact JSON bytes it is hashed
//! over, so anyone can check a chain segment with a SHA-256 and a JSON parser. Filed and
//! re-sealed links also carry a *commitment* `SHA-256(salt ‖ original)`, whose 16-byte salt
//! is sealed inside the item after the original: an export can prove that its plaintext
//! originals are the archived ones without the ciphertext, and without the salt the
//! commitment confirms no guess about the content.
//!
//! A [`Checkpoint`] signs (sequence number, head hash, time) with an Ed25519 key kept outside
//! `data_dir`, like the intake key, and is logged, so copies of it leave the machine.
//! [`verify`] recomputes the chain, the checkpoints and every item file's hash.

use std::collections::BTreeMap;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What happened to an item file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Filed,
    Resealed,
    Removed,
}

/// A change not yet on the chain (the store gives it its place when it commits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub op: Op,
    pub item: u64,
    pub sealed: Option<Sealed>,
    pub time: i64,
}

/// The facts about one sealed item file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    /// SHA-256 of the file (hex).
    pub sha256: String,
    pub size: u64,
    /// SHA-256(salt ‖ original) (hex); none for items filed before the chain existed.
    pub commitment: Option<String>,
}

/// One link as stored (and exported): hashed over its exact JSON bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    pub seq: u64,
    pub op: Op,
    pub item: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<Sealed>,
    pub time: i64,
    /// Hash of the previous link (hex); 64 zeros for the first.
    pub prev: String,
}

/// The hash before the first link.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

impl Link {
    /// The next link after `prev_seq`/`prev_hash`, as the bytes to store.
    pub fn encode(change: &Change, prev_seq: u64, prev_hash: &str) -> Vec<u8> {
        let link = Link {
            seq: prev_seq + 1,
            op: change.op,
            item: change.item,
            sealed: change.sealed.clone(),
            time: change.time,
            prev: prev_hash.to_owned(),
        };
        serde_json::to_vec(&link).expect("serializes")
    }
}

/// SHA-256 of a stored link (hex): what the next link's `prev` names.
pub fn hash(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A signed statement "the chain had `head` at `seq`".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    pub seq: u64,
    pub head: String,
    pub time: i64,
    /// The Ed25519 public key (hex) that signed it.
    pub key: String,
    /// Ed25519 signature (hex) of [`Checkpoint::message`].
    pub signature: String,
}

/// What an archive chain checkpoint signs (see [`Checkpoint::message`]).
pub const ARCHIVE_CHECKPOINT: &str = "archive checkpoint";
/// What the audit log's head signs: the same key, another statement.
pub const AUDIT_HEAD: &str = "audit head";

impl Checkpoint {
    /// What is signed: `journalgate <what> v1`, then the sequence number, the head hash and
    /// the time, each on its own line. `what` keeps an archive checkpoint and an audit head
    /// (signed with the same key) from standing in for each other.
    pub fn message(what: &str, seq: u64, head: &str, time: i64) -> Vec<u8> {
        format!("journalgate {what} v1\n{seq}\n{head}\n{time}\n").into_bytes()
    }

    pub fn sign(key: &SigningKey, seq: u64, head: &str, time: i64) -> Checkpoint {
        Self::sign_as(ARCHIVE_CHECKPOINT, key, seq, head, time)
    }

    pub fn sign_as(what: &str, key: &SigningKey, seq: u64, head: &str, time: i64) -> Checkpoint {
        let signature = key.sign(&Self::message(what, seq, head, time));
        Checkpoint {
            seq,
            head: head.to_owned(),
            time,
            key: hex::encode(key.verifying_key().as_bytes()),
            signature: hex::encode(signature.to_bytes()),
        }
    }

    /// Whether the signature of an archive checkpoint is good and made by `expected` (hex),
    /// when one is given.
    pub fn valid(&self, expected: Option<&str>) -> bool {
        self.valid_as(ARCHIVE_CHECKPOINT, expected)
    }

    /// [`Checkpoint::valid`] for a statement of another kind.
    pub fn valid_as(&self, what: &str, expected: Option<&str>) -> bool {
        if expected.is_some_and(|k| k != self.key) {
            return false;
        }
        let Some(key) = hex::decode(&self.key)
            .ok()
            .and_then(|k| <[u8; 32]>::try_from(k).ok())
            .and_then(|k| VerifyingKey::from_bytes(&k).ok())
        else {
            return false;
        };
        let Some(signature) = hex::decode(&self.signature)
            .ok()
            .and_then(|s| <[u8; 64]>::try_from(s).ok())
        else {
            return false;
        };
        key.verify(
            &Self::message(what, self.seq, &self.head, self.time),
            &Signature::from_bytes(&signature),
        )
        .is_ok()
    }
}

/// Something `verify` found wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// `chain-broken`, `checkpoint-invalid`, `checkpoint-beyond-chain`, `missing`,
    /// `altered`, `unrecorded`, `unchained`.
    pub kind: &'static str,
    pub detail: String,
}

/// The outcome of checking a chain.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Report {
    pub ok: bool,
    pub links: u64,
    pub checkpoints: u64,
    /// The newest valid checkpoint's sequence number; links after it are not yet signed.
    pub signed_up_to: u64,
    pub items_checked: u64,
    /// The key (hex) checkpoints are signed with: give it to `verify-export --key`.
    pub signing_key: String,
    pub problems: Vec<Problem>,
}

/// What the chain says the live item files are: item -> its latest sealed facts.
pub type Expected = BTreeMap<u64, Sealed>;

/// Walks stored links in order: checks each `prev`, and collects the live items and the
/// hash at each sequence number (for the checkpoints).
#[derive(Debug)]
pub struct Walker {
    pub expected: Expected,
    pub heads: BTreeMap<u64, String>,
    prev_hash: String,
    prev_seq: u64,
}

impl Default for Walker {
    fn default() -> Self {
        Walker {
            expected: Expected::new(),
            heads: BTreeMap::new(),
            prev_hash: GENESIS.to_owned(),
            prev_seq: 0,
        }
    }
}

impl Walker {
    /// Takes the next stored link.
    pub fn step(&mut self, seq: u64, bytes: &[u8], report: &mut Report) {
        report.links += 1;
        let prev_seq = self.prev_seq;
        let problem = |detail: String| Problem {
            item: None,
            seq: Some(seq),
            kind: "chain-broken",
            detail,
        };
        self.prev_seq = seq;
        let prev_hash = std::mem::replace(&mut self.prev_hash, hash(bytes));
        self.heads.insert(seq, self.prev_hash.clone());
        let link: Link = match serde_json::from_slice(bytes) {
            Ok(l) => l,
            Err(e) => {
                report
                    .problems
                    .push(problem(format!("unreadable link: {e}")));
                return;
            }
        };
        if link.seq != seq || seq != prev_seq + 1 {
            report.problems.push(problem(format!(
                "link {seq} follows link {prev_seq} (links removed or reordered)"
            )));
        } else if link.prev != prev_hash {
            report.problems.push(problem(format!(
                "link {seq} does not name the hash of link {prev_seq} (a link was altered)"
            )));
        }
        match (link.op, link.sealed) {
            (Op::Removed, _) => {
                self.expected.remove(&link.item);
            }
            (_, Some(sealed)) => {
                self.expected.insert(link.item, sealed);
            }
            (_, None) => report.problems.push(problem(format!(
                "link {seq} files item {} without a hash",
                link.item
            ))),
        }
    }
}

/// Checks checkpoints against the hashes `walk` found.
pub fn check_checkpoints(
    checkpoints: &[Checkpoint],
    heads: &BTreeMap<u64, String>,
    key: Option<&str>,
    report: &mut Report,
) {
    for checkpoint in checkpoints {
        report.checkpoints += 1;
        let problem = |kind, detail| Problem {
            item: None,
            seq: Some(checkpoint.seq),
            kind,
            detail,
        };
        if !checkpoint.valid(key) {
            report.problems.push(problem(
                "checkpoint-invalid",
                "bad signature, or signed by another key".into(),
            ));
            continue;
        }
        match heads.get(&checkpoint.seq) {
            None => report.problems.push(problem(
                "checkpoint-beyond-chain",
                format!(
                    "checkpoint at link {} but the chain has {} links (links were removed)",
                    checkpoint.seq,
                    heads.len()
                ),
            )),
            Some(head) if *head != checkpoint.head => report.problems.push(problem(
                "chain-broken",
                format!(
                    "the chain's hash at link {} is not the signed one",
                    checkpoint.seq
                ),
            )),
            Some(_) => report.signed_up_to = report.signed_up_to.max(checkpoint.seq),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(op: Op, item: u64, sha: &str) -> Change {
        Change {
            op,
            item,
            sealed: (op != Op::Removed).then(|| Sealed {
                sha256: sha.into(),
                size: 10,
                commitment: None,
            }),
            time: 1,
        }
    }

    fn build(changes: &[Change]) -> Vec<(u64, Vec<u8>)> {
        let mut out: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut prev = GENESIS.to_owned();
        for (i, c) in changes.iter().enumerate() {
            let bytes = Link::encode(c, i as u64, &prev);
            prev = hash(&bytes);
            out.push((i as u64 + 1, bytes));
        }
        out
    }

    fn run(links: &[(u64, Vec<u8>)]) -> (Report, Expected, BTreeMap<u64, String>) {
        let mut report = Report::default();
        let mut walker = Walker::default();
        for (seq, bytes) in links {
            walker.step(*seq, bytes, &mut report);
        }
        (report, walker.expected, walker.heads)
    }

    #[test]
    fn a_clean_chain_gives_the_live_items() {
        let links = build(&[
            change(Op::Filed, 1, "a"),
            change(Op::Filed, 2, "b"),
            change(Op::Resealed, 1, "c"),
            change(Op::Removed, 2, ""),
        ]);
        let (report, expected, heads) = run(&links);
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert_eq!(expected.len(), 1);
        assert_eq!(expected[&1].sha256, "c");
        let key = SigningKey::from_bytes(&[7; 32]);
        let cp = Checkpoint::sign(&key, 4, &heads[&4], 99);
        let mut report = Report::default();
        check_checkpoints(
            std::slice::from_ref(&cp),
            &heads,
            Some(&cp.key),
            &mut report,
        );
        assert!(report.problems.is_empty());
        assert_eq!(report.signed_up_to, 4);
    }

    #[test]
    fn altered_removed_and_reordered_links_are_found() {
        let links = build(&[
            change(Op::Filed, 1, "a"),
            change(Op::Filed, 2, "b"),
            change(Op::Filed, 3, "c"),
        ]);
        let (_, _, heads) = run(&links);
        let key = SigningKey::from_bytes(&[9; 32]);
        let cp = Checkpoint::sign(&key, 3, &heads[&3], 5);

        let mut altered = links.clone();
        altered[1].1 = String::from_utf8(altered[1].1.clone())
            .unwrap()
            .replace("\"b\"", "\"x\"")
            .into_bytes();
        assert!(!run(&altered).0.problems.is_empty());

        let truncated = links[..2].to_vec();
        let (mut report, _, heads2) = run(&truncated);
        assert!(report.problems.is_empty());
        check_checkpoints(std::slice::from_ref(&cp), &heads2, None, &mut report);
        assert_eq!(report.problems[0].kind, "checkpoint-beyond-chain");

        let mut swapped = links.clone();
        swapped.swap(0, 1);
        assert!(!run(&swapped).0.problems.is_empty());

        let mut forged = cp.clone();
        forged.head = heads[&2].clone();
        let mut report = Report::default();
        check_checkpoints(&[forged], &heads, None, &mut report);
        assert_eq!(report.problems[0].kind, "checkpoint-invalid");
    }
}
