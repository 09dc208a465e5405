//! Which commands the audit trail records, and `journalgate audit export|verify`.
//!
//! Every command that changes something, or reads archived content or the trail itself, is
//! recorded after it ran (ok or failed) with the operator's Unix user, what it was about and
//! its options: never a password or key (those are read from files or the terminal, and
//! only the kind of unlock is noted).

use std::io::Write;

use anyhow::Result;
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::archive::{ArchiveCommand, RecoveryCommand};
use super::archive_access::Unlock;
use super::hold::HoldCommand;
use super::{
    print_json, AliasCommand, CertCommand, Command, JsonFlag, MailboxCommand, UserCommand,
};
use crate::audit::{self, AuditLog, Event, Format};
use crate::config::Config;

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Print the audit lines of a time range as CSV or JSON.
    Export(ExportArgs),
    /// Check the chain of audit lines and the signed head; exit 1 on a changed, removed or
    /// cut-off line.
    Verify(JsonFlag),
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// First day (YYYY-MM-DD, UTC), inclusive.
    #[arg(long)]
    pub from: Option<String>,
    /// Last day (YYYY-MM-DD, UTC), inclusive.
    #[arg(long)]
    pub to: Option<String>,
    #[arg(long, value_enum, default_value = "json")]
    pub format: Format,
}

/// The audit log as the CLI writes it: the head is signed only when this user can read the
/// server's checkpoint key (it is never created here).
pub fn log(config: &Config) -> Result<AuditLog> {
    let key = crate::archive::read_signing_key(&config.archive, &config.data_dir);
    Ok(AuditLog::open(&config.data_dir, key)?)
}

pub fn run(config: &Config, cmd: AuditCommand) -> Result<i32> {
    let log = log(config)?;
    match cmd {
        AuditCommand::Export(args) => {
            let (from, to) =
                crate::archive::holds::day_range(args.from.as_deref(), args.to.as_deref())?;
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            audit::export(&log, from, to, args.format, &mut out)?;
            out.flush()?;
            Ok(0)
        }
        AuditCommand::Verify(flag) => {
            let key = crate::archive::read_signing_key(&config.archive, &config.data_dir)
                .map(|k| hex::encode(k.verifying_key().as_bytes()));
            let report = audit::verify(&log, key.as_deref())?;
            if flag.json {
                print_json(&serde_json::to_value(&report)?);
            } else {
                println!(
                    "{} lines in {} files, signed up to line {}: {}",
                    report.lines,
                    report.files,
                    report.signed_up_to,
                    if report.ok { "intact" } else { "PROBLEMS" }
                );
                for p in &report.problems {
                    println!("  {p}");
                }
            }
            Ok(if report.ok { 0 } else { 1 })
        }
    }
}

/// Records a command that ran (none for commands that only look at counters or lists).
pub fn record(config: &Config, event: Option<Event>, result: &Result<i32>) {
    let Some(mut event) = event else { return };
    event.result = match result {
        Ok(0) => "ok",
        Ok(_) => "problems",
        Err(_) => "failed",
    }
    .into();
    match log(config) {
        Ok(log) => {
            if let Err(e) = log.append(std::slice::from_ref(&event)) {
                eprintln!("journalgate: warning: cannot write the audit log: {e}");
            }
        }
        Err(e) => eprintln!("journalgate: warning: cannot open the audit log: {e}"),
    }
}

/// The audit event of a command, before it runs.
pub fn describe(command: &Command) -> Option<Event> {
    let event = |action: &str, target: &str, detail: Value| {
        Some(
            Event::new(action, audit::cli_actor())
                .target(target)
                .detail(detail),
        )
    };
    match command {
        Command::Mailbox(cmd) => mailbox(cmd, event),
        Command::User(cmd) => user(cmd, event),
        Command::Hold(HoldCommand::Add(a)) => event(
            "hold.add",
            &a.name,
            json!({"users": a.users, "all": a.all, "from": a.from, "to": a.to}),
        ),
        Command::Hold(HoldCommand::Release(a)) => event("hold.release", &a.name, Value::Null),
        Command::Archive(cmd) => archive(cmd, event),
        Command::Cert(CertCommand::Renew(_)) => event("cert.renew", "", Value::Null),
        Command::RebuildIndex(_) => event("spool.rebuild-index", "", Value::Null),
        Command::Admin(super::console::AdminCommand::Add(a)) => {
            event("admin.add", &a.name, Value::Null)
        }
        Command::Admin(super::console::AdminCommand::Delete(a)) => {
            event("admin.delete", &a.name, Value::Null)
        }
        Command::Admin(super::console::AdminCommand::ResetPassword(a)) => {
            event("admin.reset-password", &a.name, Value::Null)
        }
        Command::Token(super::console::TokenCommand::Create {
            name, read_only, ..
        }) => event("token.create", name, json!({"read_only": read_only})),
        Command::Token(super::console::TokenCommand::Revoke(a)) => {
            event("token.revoke", &a.name, Value::Null)
        }
        Command::Trace(a) => event(
            &format!("trace.{}", a.state),
            &a.protocol,
            json!({"minutes": a.minutes}),
        ),
        Command::Audit(AuditCommand::Export(a)) => event(
            "audit.export",
            "",
            json!({"from": a.from, "to": a.to, "format": format!("{:?}", a.format)}),
        ),
        _ => None,
    }
}

fn mailbox(
    cmd: &MailboxCommand,
    event: impl Fn(&str, &str, Value) -> Option<Event>,
) -> Option<Event> {
    match cmd {
        MailboxCommand::Create {
            name, description, ..
        } => event("mailbox.create", name, json!({"description": description})),
        MailboxCommand::Suspend(a) => event("mailbox.suspend", &a.id, Value::Null),
        MailboxCommand::Resume(a) => event("mailbox.resume", &a.id, Value::Null),
        MailboxCommand::Delete(a) => event("mailbox.delete", &a.id, Value::Null),
        MailboxCommand::ResetPassword(a) => event("mailbox.reset-password", &a.id, Value::Null),
        MailboxCommand::Tenant {
            id, tenant, clear, ..
        } => event(
            "mailbox.tenant",
            id,
            json!({"tenant": tenant, "clear": clear}),
        ),
        MailboxCommand::List(_) | MailboxCommand::Show(_) => None,
    }
}

fn user(cmd: &UserCommand, event: impl Fn(&str, &str, Value) -> Option<Event>) -> Option<Event> {
    match cmd {
        UserCommand::Add {
            email,
            aliases,
            auditor,
            ..
        } => event(
            "user.add",
            email,
            json!({"aliases": aliases, "auditor": auditor}),
        ),
        UserCommand::Delete(a) => event("user.delete", &a.login, Value::Null),
        UserCommand::ResetPassword(a) => event("user.reset-password", &a.login, Value::Null),
        UserCommand::Alias(AliasCommand::Add(a)) => {
            event("user.alias-add", &a.login, json!({"alias": a.alias}))
        }
        UserCommand::Alias(AliasCommand::Remove(a)) => {
            event("user.alias-remove", &a.login, json!({"alias": a.alias}))
        }
        UserCommand::List(_) | UserCommand::Show(_) => None,
    }
}

fn archive(
    cmd: &ArchiveCommand,
    event: impl Fn(&str, &str, Value) -> Option<Event>,
) -> Option<Event> {
    match cmd {
        ArchiveCommand::Recovery(RecoveryCommand::Init(a)) => event(
            "recovery.init",
            "",
            json!({"shares": a.shares, "threshold": a.threshold}),
        ),
        ArchiveCommand::Recovery(RecoveryCommand::Rotate(a)) => event(
            "recovery.rotate",
            "",
            json!({"shares": a.shares, "threshold": a.threshold}),
        ),
        ArchiveCommand::Grant(a) => event(
            "archive.grant",
            &a.login,
            json!({"unlock": unlock_kind(&a.unlock)}),
        ),
        ArchiveCommand::Retention { dry_run, .. } => {
            event("archive.retention", "", json!({"dry_run": dry_run}))
        }
        ArchiveCommand::Verify(_) => event("archive.verify", "", Value::Null),
        ArchiveCommand::Export(a) => {
            let target = match (&a.user, &a.hold) {
                (Some(u), _) => format!("user {u}"),
                (_, Some(h)) => format!("hold {h}"),
                _ => "all".into(),
            };
            event(
                "archive.export",
                &target,
                json!({"from": a.from, "to": a.to, "format": format!("{:?}", a.format),
                       "out": a.out, "unlock": unlock_kind(&a.unlock)}),
            )
        }
        _ => None,
    }
}

/// How the archive was opened, without the secret: `recovery`, `shares` or `auditor <login>`.
fn unlock_kind(unlock: &Unlock) -> String {
    match (&unlock.recovery, &unlock.by) {
        (Some(_), _) => "recovery key".into(),
        (_, Some(by)) => format!("auditor {by}"),
        _ => format!("{} recovery shares", unlock.shares.len()),
    }
}
