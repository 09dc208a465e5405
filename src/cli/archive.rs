//! `journalgate archive ...`: counters, the recovery key, and grants. Grants and stats go
//! through the running server's admin socket (which holds the archive database), or open
//! the archive directly when no server runs.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::archive_access::{progress_bar, through_server_or_open, unlock, Unlock};
use super::{print_json, JsonFlag};
use crate::admin::{self, GrantRequest, Request};
use crate::archive::recovery::{Recovery, Secret};
use crate::config::Config;
use crate::fsutil;

#[derive(Subcommand, Debug)]
pub enum ArchiveCommand {
    /// Counts per user, unknown, duplicates merged, untrusted reports.
    Stats(JsonFlag),
    /// The recovery key: the offline key every archive item is also sealed to.
    #[command(subcommand)]
    Recovery(RecoveryCommand),
    /// Make every item USER is entitled to readable by USER's current key (after a password
    /// reset, or for an auditor added later). Resumable: run it again after an interruption.
    Grant(GrantArgs),
    /// Apply the retention rules now; with --dry-run only list what would go and why.
    Retention {
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// Check the integrity chain, its signed checkpoints and every item file; exit 1 when
    /// an item file was removed, altered or swapped, or the chain was cut or changed.
    Verify(JsonFlag),
    /// Export originals, their journal envelopes, a manifest of SHA-256 sums and the chain
    /// that proves them, into a zip (eDiscovery).
    Export(super::export::ExportArgs),
    /// Check an export offline: sums, commitments, chain segments, signed checkpoints.
    VerifyExport(super::export::VerifyExportArgs),
    /// Where an item is stored (its pack, offset and length) and where it is filed.
    Item {
        id: u64,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum RecoveryCommand {
    /// Create the recovery key; its secret is shown (or written) once and never stored.
    Init(SplitArgs),
    /// Add a new recovery key: new items are sealed to it (keep the old one for older items).
    Rotate(SplitArgs),
    /// List the recovery keys (public halves).
    List(JsonFlag),
}

#[derive(Args, Debug)]
pub struct SplitArgs {
    /// Split the secret into this many shares (Shamir)...
    #[arg(long, requires = "threshold")]
    pub shares: Option<u8>,
    /// ...any THRESHOLD of which rebuild it.
    #[arg(long, requires = "shares")]
    pub threshold: Option<u8>,
    /// Write the key (or the shares) into this directory instead of printing it.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct GrantArgs {
    /// The user's login.
    pub login: String,
    #[command(flatten)]
    pub unlock: Unlock,
    /// Items made readable per durable commit (a killed grant redoes at most one batch).
    #[arg(long, value_name = "N", default_value_t = crate::archive::GRANT_BATCH)]
    pub batch: usize,
    #[arg(long)]
    pub json: bool,
}

pub fn run(config: &Config, cmd: ArchiveCommand) -> Result<i32> {
    match cmd {
        ArchiveCommand::Stats(flag) => stats(config, flag.json),
        ArchiveCommand::Recovery(RecoveryCommand::Init(args)) => create(config, false, args),
        ArchiveCommand::Recovery(RecoveryCommand::Rotate(args)) => create(config, true, args),
        ArchiveCommand::Recovery(RecoveryCommand::List(flag)) => list(config, flag.json),
        ArchiveCommand::Grant(args) => grant(config, args),
        ArchiveCommand::Retention { dry_run, json } => retention(config, dry_run, json),
        ArchiveCommand::Verify(flag) => verify(config, flag.json),
        ArchiveCommand::Export(args) => super::export::export(config, args),
        ArchiveCommand::VerifyExport(args) => super::export::verify_export(args),
        ArchiveCommand::Item { id, json } => item(config, id, json),
    }
}

fn create(config: &Config, rotate: bool, args: SplitArgs) -> Result<i32> {
    let split = args.shares.zip(args.threshold);
    let (key, secret) = Recovery::new(&config.data_dir).create(rotate, split)?;
    let texts = match &secret {
        Secret::Whole(text) => vec![format!(
            "# journalgate archive recovery key for {}\n# created {}. Keep it offline: it opens every archived item.\n{text}\n",
            key.public, key.created
        )],
        Secret::Shares(shares) => shares.clone(),
    };
    let written = match &args.out {
        Some(dir) => write_out(dir, &key.public, &texts)?,
        None => Vec::new(),
    };
    if args.json {
        let mut value = json!({"public": key.public, "created": key.created, "files": written});
        if args.out.is_none() {
            value["secret"] = json!(texts);
        }
        print_json(&value);
        return Ok(0);
    }
    println!("Recovery key created: {}", key.public);
    if written.is_empty() {
        for text in &texts {
            println!("\n{text}");
        }
    } else {
        for path in &written {
            println!("  written: {path}");
        }
    }
    println!("It is shown only now and not stored on the server. Every new archive item is also sealed to it.");
    Ok(0)
}

/// Writes each text to its own file (0600, created new) in `dir`.
fn write_out(dir: &Path, public: &str, texts: &[String]) -> Result<Vec<String>> {
    fsutil::create_private_dir(dir)?;
    let tag = &public[public.len().saturating_sub(8)..];
    let mut out = Vec::new();
    for (i, text) in texts.iter().enumerate() {
        let name = if texts.len() == 1 {
            format!("recovery-{tag}.key")
        } else {
            format!("recovery-{tag}-share-{}-of-{}.txt", i + 1, texts.len())
        };
        let path = dir.join(name);
        if path.exists() {
            bail!("{} exists: not overwritten", path.display());
        }
        fsutil::write_atomic(&path, text.as_bytes(), 0o600)?;
        out.push(path.display().to_string());
    }
    Ok(out)
}

fn list(config: &Config, json: bool) -> Result<i32> {
    let keys = Recovery::new(&config.data_dir).keys()?;
    if json {
        print_json(&json!({ "keys": keys }));
    } else if keys.is_empty() {
        println!("No recovery key. Create one with: journalgate archive recovery init");
    } else {
        for (i, k) in keys.iter().enumerate() {
            let split = k
                .split
                .map(|(n, m)| format!("{m} of {n} shares"))
                .unwrap_or("whole".into());
            let current = if i + 1 == keys.len() {
                " (current)"
            } else {
                ""
            };
            println!("{}  created {}  {split}{current}", k.public, k.created);
        }
    }
    Ok(0)
}

fn verify(config: &Config, json: bool) -> Result<i32> {
    let bar = progress_bar("items");
    let mut progress = |done: u64, total: u64| {
        bar.set_length(total);
        bar.set_position(done);
    };
    let response =
        through_server_or_open(config, Request::Verify, &mut progress, admin::run_verify)?;
    bar.finish_and_clear();
    if let Some(e) = response.error {
        bail!("{e}");
    }
    let report = response.archive.unwrap_or(Value::Null);
    let ok = report["ok"].as_bool().unwrap_or(false);
    if json {
        print_json(&report);
    } else {
        let n = |k: &str| report[k].as_u64().unwrap_or(0);
        println!(
            "{} links, {} checkpoints (signed up to link {}), {} item files checked: {}",
            n("links"),
            n("checkpoints"),
            n("signed_up_to"),
            n("items_checked"),
            if ok { "intact" } else { "PROBLEMS" }
        );
        println!(
            "checkpoints are signed by {}",
            report["signing_key"].as_str().unwrap_or("")
        );
        for p in report["problems"].as_array().into_iter().flatten() {
            let at = match (p["item"].as_u64(), p["seq"].as_u64()) {
                (Some(i), _) => format!("item {i}"),
                (None, Some(s)) => format!("link {s}"),
                _ => String::new(),
            };
            println!(
                "  {at}: {} — {}",
                p["kind"].as_str().unwrap_or(""),
                p["detail"].as_str().unwrap_or("")
            );
        }
    }
    Ok(if ok { 0 } else { 1 })
}

fn item(config: &Config, id: u64, json: bool) -> Result<i32> {
    let response = through_server_or_open(config, Request::Item { id }, &mut |_, _| {}, |a, _| {
        admin::run_item(a, id)
    })?;
    if let Some(e) = response.error {
        bail!("{e}");
    }
    let value = response.archive.unwrap_or(Value::Null);
    if json {
        print_json(&value);
    } else {
        println!("{}", serde_json::to_string_pretty(&value)?);
    }
    Ok(0)
}

fn retention(config: &Config, dry_run: bool, json: bool) -> Result<i32> {
    let response = through_server_or_open(
        config,
        Request::Retention { dry_run },
        &mut |_, _| {},
        |archive, _| admin::run_retention(archive, dry_run),
    )?;
    if let Some(e) = response.error {
        bail!("{e}");
    }
    let value = response.archive.unwrap_or(Value::Null);
    if json {
        print_json(&value);
        return Ok(0);
    }
    let plan = &value["plan"];
    let remove = plan["remove"].as_array().cloned().unwrap_or_default();
    let verb = if dry_run { "would remove" } else { "removed" };
    println!("Retention {verb} {} items.", remove.len());
    for d in &remove {
        let when = chrono::DateTime::from_timestamp(d["received"].as_i64().unwrap_or(0), 0)
            .map(|t| t.format("%Y-%m-%d").to_string())
            .unwrap_or_default();
        let why: Vec<&str> = d["because"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|b| b.as_str())
            .collect();
        println!("  item {} received {when}: {}", d["item"], why.join("; "));
    }
    for h in plan["held"].as_array().into_iter().flatten() {
        println!("  item {} kept by hold {}", h[0], h[1]);
    }
    Ok(0)
}

fn grant(config: &Config, args: GrantArgs) -> Result<i32> {
    use age::secrecy::ExposeSecret;
    let identity = unlock(config, &args.unlock)?;
    let request = GrantRequest {
        login: args.login.clone(),
        keys: vec![identity.to_string().expose_secret().to_owned()],
        batch: args.batch.max(1),
    };
    let bar = progress_bar("items");
    let mut progress = |done: u64, total: u64| {
        bar.set_length(total);
        bar.set_position(done);
    };
    let response = through_server_or_open(
        config,
        Request::Grant(request.clone()),
        &mut progress,
        |archive, progress| admin::run_grant(archive, &request, progress),
    )?;
    bar.finish_and_clear();
    if let Some(e) = response.error {
        bail!("{e}");
    }
    let report = response.archive.unwrap_or(Value::Null);
    if args.json {
        print_json(&report);
    } else {
        let n = |k: &str| report[k].as_u64().unwrap_or(0);
        println!(
            "{}: {} items entitled, {} granted now, {} already readable, {} sealed to none of the given keys; {} journal envelopes granted.",
            args.login,
            n("entitled"),
            n("granted"),
            n("already"),
            n("unreachable"),
            n("envelopes")
        );
    }
    Ok(0)
}

fn stats(config: &Config, json: bool) -> Result<i32> {
    let stats = match admin::request(&config.data_dir, Request::ArchiveStats)? {
        Some(response) => {
            if let Some(e) = response.error {
                bail!("{e}");
            }
            response.archive.unwrap_or(Value::Null)
        }
        None => {
            if !config.data_dir.join("archive").is_dir() {
                bail!("no archive in {}", config.data_dir.display());
            }
            serde_json::to_value(crate::archive::Archive::stats_offline(&config.data_dir)?)?
        }
    };
    if json {
        print_json(&stats);
    } else {
        for key in [
            "items",
            "pending",
            "unknown",
            "duplicates_merged",
            "untrusted_reports",
            "skipped_unknown",
            "reports_without_original",
            "unreadable_dropped",
            "journal_reports",
            "ndr_unwrapped",
            "plain_copies",
            "retention_removed",
        ] {
            println!("{key:<26} {}", stats[key].as_u64().unwrap_or(0));
        }
        if let Some(users) = stats["users"].as_object() {
            println!("\n{:<40} {:>8} {:>8}", "USER", "INBOX", "SENT");
            for (login, c) in users {
                let n = |k: &str| c[k].as_u64().unwrap_or(0);
                println!("{login:<40} {:>8} {:>8}", n("inbox"), n("sent"));
            }
        }
    }
    Ok(0)
}
