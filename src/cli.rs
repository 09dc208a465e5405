//! The command line: `serve`, mailbox management and spool maintenance. Every command works
//! whether or not `serve` runs: mailbox files are shared safely (atomic renames), and index
//! maintenance goes through the server's admin socket when it holds the index.

mod archive;
mod archive_access;
mod audited;
mod cert;
mod console;
mod export;
mod hold;

pub use archive::ArchiveCommand;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use serde_json::{json, Value};

use crate::admin::{self, Request};
use crate::archive::users::{UserRecord, Users};
use crate::config::Config;
use crate::mailbox::{MailboxId, MailboxRecord, Mailboxes, Status};
use crate::spool::{self, Spool};

#[derive(Parser, Debug)]
#[command(
    name = "journalgate",
    version,
    about = "Journal-report gateway: SMTP journal receiver, sealed gateway mailboxes collected over POP3/IMAP, read-only per-user IMAP archive"
)]
pub struct Cli {
    /// Configuration file (default: ./journalgate.toml if present, else built-in defaults).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the gateway.
    Serve,
    /// Manage gateway mailboxes.
    #[command(subcommand)]
    Mailbox(MailboxCommand),
    /// Verify the spool and the index; exit 1 on damage.
    Check(JsonFlag),
    /// Rebuild the index from the spool.
    RebuildIndex(JsonFlag),
    /// Certificate status and ACME renewal.
    #[command(subcommand)]
    Cert(CertCommand),
    /// Manage archive users (who can read their archived mail over IMAP).
    #[command(subcommand)]
    User(UserCommand),
    /// The per-user archive.
    #[command(subcommand)]
    Archive(ArchiveCommand),
    /// Legal holds on archive items.
    #[command(subcommand)]
    Hold(hold::HoldCommand),
    /// The audit trail of archive access and admin actions.
    #[command(subcommand)]
    Audit(audited::AuditCommand),
    /// Console administrators.
    #[command(subcommand)]
    Admin(console::AdminCommand),
    /// API tokens.
    #[command(subcommand)]
    Token(console::TokenCommand),
    /// Alerts.
    #[command(subcommand)]
    Alerts(console::AlertsCommand),
    /// Log every line of a protocol's sessions for a while (credentials masked).
    Trace(console::TraceArgs),
}

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Add a user; prints the login and password (shown once, never stored).
    Add {
        /// Primary address: the IMAP login.
        email: String,
        /// Another address of the same person (repeatable).
        #[arg(long = "alias", value_name = "EMAIL")]
        aliases: Vec<String>,
        #[arg(long, default_value = "")]
        name: String,
        /// Auditors also read every user's archive and the catch-all.
        #[arg(long)]
        auditor: bool,
        #[arg(long)]
        json: bool,
    },
    /// List users.
    List(JsonFlag),
    /// Show one user.
    Show(LoginArg),
    /// Delete a user (mail already archived stays readable by auditors).
    Delete(LoginArg),
    /// New password and key. Archived mail sealed to the old key needs `archive grant`
    /// (with the recovery key or an auditor) to be readable again.
    ResetPassword(LoginArg),
    /// Add or remove another address of a user.
    #[command(subcommand)]
    Alias(AliasCommand),
}

#[derive(Subcommand, Debug)]
pub enum AliasCommand {
    /// Mail to ALIAS is filed for the user from now on.
    Add(AliasArgs),
    /// Mail to ALIAS is no longer filed for the user (what was filed stays).
    Remove(AliasArgs),
}

#[derive(Args, Debug)]
pub struct AliasArgs {
    pub login: String,
    pub alias: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct LoginArg {
    /// The user's login (primary address).
    pub login: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum CertCommand {
    /// Show the certificate in use: source, names, issuer, expiry, last renewal error.
    Status(JsonFlag),
    /// Get a new ACME certificate now (through the running server, or directly).
    Renew(JsonFlag),
}

#[derive(Args, Debug)]
pub struct JsonFlag {
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct IdArg {
    /// Mailbox ID (mbx-...), with or without @hostname.
    pub id: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum MailboxCommand {
    /// Create a mailbox; prints its address and password (shown once, never stored).
    Create {
        #[arg(long, default_value = "")]
        name: String,
        #[arg(long, default_value = "")]
        description: String,
        #[arg(long)]
        json: bool,
    },
    /// List mailboxes.
    List(JsonFlag),
    /// Show one mailbox.
    Show(IdArg),
    /// Stop accepting mail for a mailbox (it can still be collected).
    Suspend(IdArg),
    /// Accept mail again.
    Resume(IdArg),
    /// Delete a suspended mailbox and all its mail.
    Delete(IdArg),
    /// New password and key; unread mail sealed to the old key is set aside.
    ResetPassword(IdArg),
    /// Pins the mailbox to its Microsoft 365 tenant (ID or X-OriginatorOrg domain): reports
    /// that name another tenant are quarantined. `--clear` removes the pin.
    Tenant {
        id: String,
        tenant: Option<String>,
        #[arg(long, conflicts_with = "tenant")]
        clear: bool,
        #[arg(long)]
        json: bool,
    },
}

/// Runs a command other than `serve`; returns the process exit code.
pub fn run(config: &Config, command: Command) -> Result<i32> {
    let event = audited::describe(&command);
    let result = execute(config, command);
    audited::record(config, event, &result);
    result
}

fn execute(config: &Config, command: Command) -> Result<i32> {
    match command {
        Command::Serve => unreachable!("serve is run by main"),
        Command::Mailbox(cmd) => mailbox(config, cmd),
        Command::Check(flag) => maintenance(config, Request::Check, flag.json),
        Command::RebuildIndex(flag) => maintenance(config, Request::RebuildIndex, flag.json),
        Command::Cert(CertCommand::Status(flag)) => cert::run(config, false, flag.json),
        Command::Cert(CertCommand::Renew(flag)) => cert::run(config, true, flag.json),
        Command::User(cmd) => user(config, cmd),
        Command::Archive(cmd) => archive::run(config, cmd),
        Command::Hold(cmd) => hold::run(config, cmd),
        Command::Audit(cmd) => audited::run(config, cmd),
        Command::Admin(cmd) => console::admin_command(config, cmd),
        Command::Token(cmd) => console::token_command(config, cmd),
        Command::Alerts(cmd) => console::alerts_command(config, cmd),
        Command::Trace(args) => console::trace_command(config, args),
    }
}

fn user(config: &Config, cmd: UserCommand) -> Result<i32> {
    let users = Users::new(&config.data_dir);
    match cmd {
        UserCommand::Add {
            email,
            aliases,
            name,
            auditor,
            json,
        } => {
            let (record, password) = users.add(&email, &aliases, &name, auditor)?;
            if json {
                print_json(&json!({"id": record.id, "login": record.login, "password": password}));
            } else {
                println!("User added.");
                println!("  Login:    {}", record.login);
                if !record.aliases.is_empty() {
                    println!("  Aliases:  {}", record.aliases.join(", "));
                }
                println!("  Auditor:  {}", if record.auditor { "yes" } else { "no" });
                println!("  Password: {password}");
                println!("The password is shown only now and is not stored anywhere.");
                println!("Mail archived for this user can only be read with it.");
            }
        }
        UserCommand::List(flag) => {
            let list = users.list()?;
            if flag.json {
                let list: Vec<Value> = list.iter().map(describe_user).collect();
                print_json(&json!({ "users": list }));
            } else if list.is_empty() {
                println!("No users. Add one with: journalgate user add EMAIL");
            } else {
                println!("{:<40} {:<8} ALIASES", "LOGIN", "AUDITOR");
                for u in &list {
                    println!(
                        "{:<40} {:<8} {}",
                        u.login,
                        if u.auditor { "yes" } else { "" },
                        u.aliases.join(", ")
                    );
                }
            }
        }
        UserCommand::Show(arg) => {
            let value = describe_user(&users.find(&arg.login)?);
            if arg.json {
                print_json(&value);
            } else {
                for (k, v) in value.as_object().expect("object") {
                    println!(
                        "{k:<10} {}",
                        v.as_str().map(str::to_owned).unwrap_or(v.to_string())
                    );
                }
            }
        }
        UserCommand::Delete(arg) => {
            let record = users.delete(&arg.login)?;
            if arg.json {
                print_json(&json!({"login": record.login, "deleted": true}));
            } else {
                println!("User {} deleted.", record.login);
            }
        }
        UserCommand::ResetPassword(arg) => {
            let (record, password) = users.reset_password(&arg.login)?;
            if arg.json {
                print_json(&json!({"login": record.login, "password": password}));
            } else {
                println!("New password for {}: {password}", record.login);
                println!("Mail archived before the reset is sealed to the old key. Make it readable again with:");
                println!("  journalgate archive grant {} --recovery FILE   (or --shares, or --by AUDITOR)", record.login);
            }
        }
        UserCommand::Alias(cmd) => {
            let (record, args) = match cmd {
                AliasCommand::Add(args) => (users.add_alias(&args.login, &args.alias)?, args),
                AliasCommand::Remove(args) => (users.remove_alias(&args.login, &args.alias)?, args),
            };
            if args.json {
                print_json(&describe_user(&record));
            } else {
                println!("{}: aliases {}", record.login, record.aliases.join(", "));
            }
        }
    }
    Ok(0)
}

fn describe_user(u: &UserRecord) -> Value {
    json!({
        "id": u.id,
        "login": u.login,
        "aliases": u.aliases,
        "name": u.name,
        "auditor": u.auditor,
        "created": u.created,
    })
}

fn mailbox(config: &Config, cmd: MailboxCommand) -> Result<i32> {
    let boxes = Mailboxes::new(&config.data_dir);
    // In cluster mode a change made here is shared at once (and a mailbox made on another
    // node is found here).
    let _cluster = match config.storage.backend {
        crate::config::Backend::S3 => {
            let cluster = crate::cluster::Cluster::open(&config.storage, boxes.clone())?;
            boxes.set_remote(cluster.registry.clone());
            Some(cluster)
        }
        crate::config::Backend::Local => None,
    };
    match cmd {
        MailboxCommand::Create {
            name,
            description,
            json,
        } => {
            let (record, password) = boxes.create(&name, &description)?;
            let address = address(config, &record.id);
            if json {
                print_json(&json!({"id": record.id, "address": address, "password": password}));
            } else {
                println!("Mailbox created.");
                println!("  ID:       {}", record.id);
                println!("  Address:  {address}");
                println!("  Password: {password}");
                println!(
                    "The password is shown only now and is not stored anywhere. Keep it safe:"
                );
                println!("without it, mail in this mailbox cannot be decrypted.");
            }
        }
        MailboxCommand::List(flag) => {
            let list: Vec<Value> = boxes
                .list()?
                .iter()
                .map(|r| describe(config, &boxes, r))
                .collect::<Result<_>>()?;
            if flag.json {
                print_json(&json!({ "mailboxes": list }));
            } else if list.is_empty() {
                println!("No mailboxes. Create one with: journalgate mailbox create --name NAME");
            } else {
                println!(
                    "{:<38} {:<10} {:>9} {:>12}  NAME",
                    "ID", "STATUS", "MESSAGES", "BYTES"
                );
                for m in &list {
                    println!(
                        "{:<38} {:<10} {:>9} {:>12}  {}",
                        m["id"].as_str().unwrap_or(""),
                        m["status"].as_str().unwrap_or(""),
                        m["messages"],
                        m["bytes"],
                        m["name"].as_str().unwrap_or("")
                    );
                }
            }
        }
        MailboxCommand::Show(arg) => {
            let record = boxes.load(&parse_id(&arg.id)?)?;
            let value = describe(config, &boxes, &record)?;
            if arg.json {
                print_json(&value);
            } else {
                for (k, v) in value.as_object().expect("object") {
                    println!(
                        "{k:<12} {}",
                        v.as_str().map(str::to_owned).unwrap_or(v.to_string())
                    );
                }
            }
        }
        MailboxCommand::Tenant {
            id,
            tenant,
            clear,
            json,
        } => {
            let id = parse_id(&id)?;
            let record = match (tenant, clear) {
                (Some(t), _) => boxes.set_tenant(&id, Some(&t))?,
                (None, true) => boxes.set_tenant(&id, None)?,
                (None, false) => boxes.load(&id)?,
            };
            if json {
                print_json(&json!({"id": id, "tenant": record.tenant}));
            } else {
                println!(
                    "{id}: tenant {}",
                    record.tenant.as_deref().unwrap_or("(not pinned)")
                );
            }
        }
        MailboxCommand::Suspend(arg) => set_status(config, &boxes, &arg, Status::Suspended)?,
        MailboxCommand::Resume(arg) => set_status(config, &boxes, &arg, Status::Active)?,
        MailboxCommand::Delete(arg) => {
            let id = parse_id(&arg.id)?;
            boxes.delete(&id)?;
            notify_server(config);
            if arg.json {
                print_json(&json!({"id": id, "deleted": true}));
            } else {
                println!("Mailbox {id} deleted.");
            }
        }
        MailboxCommand::ResetPassword(arg) => {
            let id = parse_id(&arg.id)?;
            let (record, password) = boxes.reset_password(&id)?;
            notify_server(config);
            if arg.json {
                print_json(&json!({"id": record.id, "password": password}));
            } else {
                println!("New password for {}: {password}", record.id);
                println!("Mail that arrived before the reset stays sealed to the old key and is no longer served.");
            }
        }
    }
    Ok(0)
}

fn set_status(config: &Config, boxes: &Mailboxes, arg: &IdArg, status: Status) -> Result<()> {
    let record = boxes.set_status(&parse_id(&arg.id)?, status)?;
    let value = describe(config, boxes, &record)?;
    if arg.json {
        print_json(&value);
    } else {
        println!(
            "Mailbox {} is now {}.",
            record.id,
            value["status"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

fn parse_id(input: &str) -> Result<MailboxId> {
    MailboxId::parse(input).with_context(|| format!("{input:?}"))
}

fn address(config: &Config, id: &MailboxId) -> String {
    format!("{id}@{}", config.domain())
}

/// The JSON description of a mailbox; counts come from the folder, so no index is needed.
fn describe(config: &Config, boxes: &Mailboxes, r: &MailboxRecord) -> Result<Value> {
    let scan = spool::scan_dir(&boxes.msg_dir(&r.id))?;
    let bytes: u64 = scan.messages.iter().map(|m| m.size).sum();
    Ok(json!({
        "id": r.id,
        "address": address(config, &r.id),
        "name": r.name,
        "description": r.description,
        "status": r.status,
        "messages": scan.messages.len(),
        "bytes": bytes,
        "created": r.created,
        "uidvalidity": r.uidvalidity,
        "tenant": r.tenant,
    }))
}

/// After a mailbox's files moved (delete, reset), a running server re-reads its index.
fn notify_server(config: &Config) {
    let _ = admin::request(&config.data_dir, Request::RebuildIndex);
}

fn maintenance(config: &Config, request: Request, json: bool) -> Result<i32> {
    let response = match admin::request(&config.data_dir, request.clone())? {
        Some(r) => r,
        None => {
            if !config.data_dir.is_dir() {
                bail!("data dir {} does not exist", config.data_dir.display());
            }
            let spool = Spool::open(&config.data_dir)?;
            let mut response = admin::execute(&spool, request.clone());
            spool.shutdown();
            if let Request::Check = request {
                admin::add_archive_problems(
                    &mut response,
                    crate::archive::Archive::check_offline(&config.data_dir),
                );
            }
            response
        }
    };
    if let Some(e) = &response.error {
        bail!("{e}");
    }
    if json {
        print_json(&serde_json::to_value(&response)?);
    } else {
        match request {
            Request::Check if response.ok => println!(
                "OK: spool, index and archive are consistent ({} messages).",
                response.messages
            ),
            Request::Check => {
                println!("DAMAGE FOUND:");
                for p in &response.problems {
                    println!("  {p}");
                }
            }
            Request::RebuildIndex => println!(
                "Index rebuilt: {} messages ({} entries added, {} removed).",
                response.messages, response.added, response.removed
            ),
            _ => {}
        }
    }
    Ok(if response.ok { 0 } else { 1 })
}

pub(crate) fn print_json(value: &Value) {
    println!("{}", serde_json::to_string(value).expect("serializes"));
}
