//! `archive verify-export`: checks an export offline, with nothing but the zip file (and,
//! to be sure whose checkpoints they are, the archive's signing key): every original's
//! SHA-256, its salted commitment on the chain, each chain segment's links and the signed
//! checkpoint at its end.

use std::collections::HashMap;
use std::io::{self, BufRead, Read, Seek};

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::chain::{self, Link};
use super::export::{unquote_mboxrd, Manifest};

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("not a readable zip file: {0}")]
    Zip(#[from] zip::result::ZipError),
    #[error("manifest.json: {0}")]
    Manifest(String),
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
}

/// What `verify-export` found.
#[derive(Debug, Default, Serialize)]
pub struct CheckReport {
    pub ok: bool,
    pub items: u64,
    /// Items whose commitment was checked against a signed chain.
    pub proven: u64,
    /// Items archived before the chain existed: their bytes match the manifest, but no
    /// commitment ties them to the chain.
    pub unproven: u64,
    pub segments: u64,
    pub signing_key: String,
    pub problems: Vec<String>,
}

/// Checks the export in `zip`; `key` (hex) pins the signing key the checkpoints must carry.
pub fn verify_export<R: Read + Seek>(
    reader: R,
    key: Option<&str>,
) -> Result<CheckReport, CheckError> {
    let mut zip = zip::ZipArchive::new(reader)?;
    let manifest: Manifest = {
        let file = zip.by_name("manifest.json")?;
        serde_json::from_reader(file).map_err(|e| CheckError::Manifest(e.to_string()))?
    };
    let mut report = CheckReport {
        signing_key: manifest.signing_key.clone(),
        ..CheckReport::default()
    };
    if key.is_some_and(|k| !k.eq_ignore_ascii_case(&manifest.signing_key)) {
        report
            .problems
            .push("the export is signed with another key than the one given".into());
    }
    let links = check_segments(&mut zip, &manifest, &mut report)?;
    for item in &manifest.items {
        report.items += 1;
        let bytes = match original(&mut zip, item) {
            Ok(b) => b,
            Err(e) => {
                report.problems.push(format!("item {}: {e}", item.item));
                continue;
            }
        };
        if hex::encode(Sha256::digest(&bytes)) != item.sha256 || bytes.len() as u64 != item.size {
            report.problems.push(format!(
                "item {}: its bytes do not match the manifest's SHA-256",
                item.item
            ));
            continue;
        }
        match commitment_problem(item, &bytes, &links) {
            Ok(true) => report.proven += 1,
            Ok(false) => report.unproven += 1,
            Err(problem) => report
                .problems
                .push(format!("item {}: {problem}", item.item)),
        }
    }
    report.ok = report.problems.is_empty();
    Ok(report)
}

/// An original's bytes from the zip (its own file, or its slice of `messages.mbox`).
fn original<R: Read + Seek>(
    zip: &mut zip::ZipArchive<R>,
    item: &super::export::ManifestItem,
) -> Result<Vec<u8>, CheckError> {
    if let Some(name) = &item.file {
        let mut bytes = Vec::new();
        zip.by_name(name)?.read_to_end(&mut bytes)?;
        return Ok(bytes);
    }
    let Some((offset, length)) = item.mbox else {
        return Err(CheckError::Manifest("an item with no file".into()));
    };
    let mut mbox = zip.by_name("messages.mbox")?;
    io::copy(&mut (&mut mbox).take(offset), &mut io::sink())?;
    let mut quoted = Vec::new();
    mbox.take(length).read_to_end(&mut quoted)?;
    Ok(unquote_mboxrd(&quoted))
}

/// Ok(true): the item's link commits to exactly these bytes; Ok(false): nothing to check
/// (archived before the chain); Err: the link is missing or says otherwise.
fn commitment_problem(
    item: &super::export::ManifestItem,
    bytes: &[u8],
    links: &HashMap<u64, Link>,
) -> Result<bool, String> {
    let Some(seq) = item.link else {
        return Err("no link on the integrity chain".into());
    };
    let link = links
        .get(&seq)
        .ok_or_else(|| format!("its link {seq} is in no verified chain segment"))?;
    if link.item != item.item {
        return Err(format!("link {seq} is about item {}", link.item));
    }
    let commitment = link.sealed.as_ref().and_then(|s| s.commitment.clone());
    match (commitment, &item.salt) {
        (None, None) => Ok(false),
        (Some(c), Some(salt)) => {
            let salt = hex::decode(salt).map_err(|_| "its salt is not hex".to_string())?;
            let mut hasher = Sha256::new_with_prefix(salt);
            hasher.update(bytes);
            if hex::encode(hasher.finalize()) == c {
                Ok(true)
            } else {
                Err(format!(
                    "the original is not the one link {seq} committed to"
                ))
            }
        }
        _ => Err(format!(
            "link {seq} and the manifest disagree on a commitment"
        )),
    }
}

/// Checks every segment's links up to its signed checkpoint; returns the good links.
fn check_segments<R: Read + Seek>(
    zip: &mut zip::ZipArchive<R>,
    manifest: &Manifest,
    report: &mut CheckReport,
) -> Result<HashMap<u64, Link>, CheckError> {
    let mut good = HashMap::new();
    for segment in &manifest.segments {
        report.segments += 1;
        let cp = &segment.checkpoint;
        if cp.key != manifest.signing_key || !cp.valid(Some(&manifest.signing_key)) {
            report.problems.push(format!(
                "{}: the checkpoint's signature is not valid",
                segment.file
            ));
            continue;
        }
        let file = zip.by_name(&segment.file)?;
        let mut links = Vec::new();
        let mut expected_seq = segment.first;
        let mut prev: Option<String> = None;
        let mut broken = None;
        for line in io::BufReader::new(file).split(b'\n') {
            let bytes = line?;
            let link: Link = match serde_json::from_slice(&bytes) {
                Ok(l) => l,
                Err(_) => {
                    broken = Some(format!("link {expected_seq} is not readable"));
                    break;
                }
            };
            if link.seq != expected_seq || prev.as_ref().is_some_and(|p| *p != link.prev) {
                broken = Some(format!("the chain breaks at link {expected_seq}"));
                break;
            }
            prev = Some(chain::hash(&bytes));
            expected_seq += 1;
            links.push(link);
        }
        if broken.is_none()
            && (prev.as_deref() != Some(cp.head.as_str()) || expected_seq != cp.seq + 1)
        {
            broken = Some("the links do not end at the signed checkpoint".into());
        }
        match broken {
            Some(problem) => report.problems.push(format!("{}: {problem}", segment.file)),
            None => good.extend(links.into_iter().map(|l| (l.seq, l))),
        }
    }
    Ok(good)
}
