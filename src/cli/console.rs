//! `journalgate admin|token|alerts|trace`: the console's administrators and API tokens
//! (files under `data_dir/console`, effective at once), a test alert through the
//! configured channels, and the protocol trace of a running server.

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use serde_json::json;

use super::{print_json, JsonFlag};
use crate::admin::{self, Request};
use crate::config::Config;
use crate::console::accounts::Accounts;

#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Add a console administrator; prints the password once.
    Add(NameArg),
    /// List the administrators.
    List(JsonFlag),
    /// Delete an administrator (their sessions end).
    Delete(NameArg),
    /// A new password for an administrator (their sessions end).
    ResetPassword(NameArg),
}

#[derive(Args, Debug)]
pub struct NameArg {
    pub name: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Create an API token (sent as `Authorization: Bearer`); printed once.
    Create {
        #[arg(long)]
        name: String,
        /// The token may only read (GET).
        #[arg(long)]
        read_only: bool,
        #[arg(long)]
        json: bool,
    },
    /// List the tokens (never the tokens themselves).
    List(JsonFlag),
    /// Revoke a token.
    Revoke(NameArg),
}

#[derive(Subcommand, Debug)]
pub enum AlertsCommand {
    /// Send a test alert through every configured channel.
    Test(JsonFlag),
}

#[derive(Args, Debug)]
pub struct TraceArgs {
    /// on or off.
    #[arg(value_parser = ["on", "off"])]
    pub state: String,
    /// smtp, pop3 or imap.
    #[arg(value_parser = ["smtp", "pop3", "imap"])]
    pub protocol: String,
    /// Turned off again after this long.
    #[arg(long, default_value_t = 15)]
    pub minutes: u64,
    #[arg(long)]
    pub json: bool,
}

pub fn admin_command(config: &Config, cmd: AdminCommand) -> Result<i32> {
    let accounts = Accounts::new(&config.data_dir);
    match cmd {
        AdminCommand::Add(a) => {
            let password = accounts.add_admin(&a.name)?;
            show_password(a.json, &a.name, &password, "Administrator added.");
        }
        AdminCommand::ResetPassword(a) => {
            let password = accounts.reset_admin(&a.name)?;
            show_password(a.json, &a.name, &password, "New password set.");
        }
        AdminCommand::Delete(a) => {
            accounts.delete_admin(&a.name)?;
            if a.json {
                print_json(&json!({"name": a.name, "deleted": true}));
            } else {
                println!("Administrator {} deleted.", a.name);
            }
        }
        AdminCommand::List(flag) => {
            let admins: Vec<_> = accounts
                .admins()?
                .into_iter()
                .map(|a| json!({"name": a.name, "created": a.created}))
                .collect();
            if flag.json {
                print_json(&json!({ "admins": admins }));
            } else {
                for a in &admins {
                    println!(
                        "{:<32} created {}",
                        a["name"].as_str().unwrap_or(""),
                        a["created"].as_str().unwrap_or("")
                    );
                }
            }
        }
    }
    Ok(0)
}

fn show_password(json: bool, name: &str, password: &str, what: &str) {
    if json {
        print_json(&json!({"name": name, "password": password}));
    } else {
        println!("{what}\n  Name:     {name}\n  Password: {password}");
        println!("The password is shown only now; it is stored as an argon2id hash.");
    }
}

pub fn token_command(config: &Config, cmd: TokenCommand) -> Result<i32> {
    let accounts = Accounts::new(&config.data_dir);
    match cmd {
        TokenCommand::Create {
            name,
            read_only,
            json,
        } => {
            let token = accounts.create_token(&name, read_only)?;
            if json {
                print_json(&json!({"name": name, "token": token, "read_only": read_only}));
            } else {
                println!(
                    "Token {name}{}: {token}",
                    if read_only { " (read-only)" } else { "" }
                );
                println!("Send it as `Authorization: Bearer {token}`. It is shown only now.");
            }
        }
        TokenCommand::List(flag) => {
            let tokens: Vec<_> = accounts
                .tokens()?
                .into_iter()
                .map(|t| json!({"name": t.name, "read_only": t.read_only, "created": t.created, "last_used": t.last_used}))
                .collect();
            if flag.json {
                print_json(&json!({ "tokens": tokens }));
            } else {
                for t in &tokens {
                    println!(
                        "{:<32} {}",
                        t["name"].as_str().unwrap_or(""),
                        if t["read_only"] == true {
                            "read-only"
                        } else {
                            "read-write"
                        }
                    );
                }
            }
        }
        TokenCommand::Revoke(a) => {
            accounts.revoke_token(&a.name)?;
            if a.json {
                print_json(&json!({"name": a.name, "revoked": true}));
            } else {
                println!("Token {} revoked.", a.name);
            }
        }
    }
    Ok(0)
}

pub fn alerts_command(config: &Config, cmd: AlertsCommand) -> Result<i32> {
    let AlertsCommand::Test(flag) = cmd;
    let notice = crate::alerts::Notice {
        alert: "test".into(),
        state: "firing".into(),
        mailbox: None,
        message: "This is a test alert from `journalgate alerts test`.".into(),
        since: crate::telemetry::rfc3339(chrono::Utc::now().timestamp()),
        host: config.hostname.clone(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let results = runtime.block_on(crate::alerts::deliver::send(
        &config.alerts,
        &config.hostname,
        &notice,
    ));
    if results.is_empty() {
        bail!("no alert channel is configured ([alerts] webhook_url, or email_to and smtp_relay)");
    }
    let ok = results.iter().all(|(_, r)| r.is_ok());
    let channels: Vec<_> = results
        .iter()
        .map(|(channel, r)| json!({"channel": channel, "ok": r.is_ok(), "error": r.as_ref().err().map(|e| e.to_string())}))
        .collect();
    if flag.json {
        print_json(&json!({"ok": ok, "channels": channels}));
    } else {
        for (channel, r) in &results {
            match r {
                Ok(()) => println!("{channel}: sent"),
                Err(e) => println!("{channel}: FAILED: {e}"),
            }
        }
    }
    Ok(if ok { 0 } else { 1 })
}

pub fn trace_command(config: &Config, args: TraceArgs) -> Result<i32> {
    let request = Request::Trace {
        protocol: args.protocol.clone(),
        on: args.state == "on",
        minutes: args.minutes,
    };
    let Some(response) = admin::request(&config.data_dir, request)? else {
        bail!("the server is not running: a trace is switched in the running server");
    };
    if let Some(e) = response.error {
        bail!("{e}");
    }
    let value = response.archive.unwrap_or_default();
    if args.json {
        print_json(&value);
    } else {
        println!(
            "{} trace {}",
            args.protocol,
            if args.state == "on" {
                format!("on until {}", value["until"].as_str().unwrap_or(""))
            } else {
                "off".into()
            }
        );
    }
    Ok(0)
}
