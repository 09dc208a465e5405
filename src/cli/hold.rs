//! `journalgate hold add|list|show|release`: legal holds. Holds are files beside the archive,
//! so these work with or without a running server (which sees a change at once).

use anyhow::Result;
use clap::{Args, Subcommand};
use serde_json::json;

use super::{print_json, JsonFlag};
use crate::archive::holds::{Hold, Holds};
use crate::config::Config;

#[derive(Subcommand, Debug)]
pub enum HoldCommand {
    /// Place a hold: the items are never removed until it is released.
    Add(AddArgs),
    /// List the holds.
    List(JsonFlag),
    /// Show one hold.
    Show(NameArg),
    /// Release a hold: its items fall under the retention rules again.
    Release(NameArg),
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("scope").required(true).args(["users", "all"])))]
pub struct AddArgs {
    /// Letters, digits, '.', '_' or '-'; auditors see the folder `Holds/<NAME>`.
    pub name: String,
    /// A user whose items are held (repeatable).
    #[arg(long = "user", value_name = "LOGIN")]
    pub users: Vec<String>,
    /// Every item in the archive.
    #[arg(long)]
    pub all: bool,
    /// Only items received on or after this day (YYYY-MM-DD, UTC).
    #[arg(long)]
    pub from: Option<String>,
    /// Only items received on or before this day (YYYY-MM-DD, UTC).
    #[arg(long)]
    pub to: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct NameArg {
    pub name: String,
    #[arg(long)]
    pub json: bool,
}

pub fn run(config: &Config, cmd: HoldCommand) -> Result<i32> {
    let holds = Holds::new(&config.data_dir);
    match cmd {
        HoldCommand::Add(a) => {
            let hold = holds.add(&a.name, &a.users, a.all, a.from.as_deref(), a.to.as_deref())?;
            show(&hold, a.json, "Hold placed");
        }
        HoldCommand::List(flag) => {
            let list = holds.list()?;
            if flag.json {
                print_json(&json!({ "holds": list }));
            } else if list.is_empty() {
                println!("No holds.");
            } else {
                for h in &list {
                    println!("{:<24} {}", h.name, scope(h));
                }
            }
        }
        HoldCommand::Show(a) => show(&holds.find(&a.name)?, a.json, "Hold"),
        HoldCommand::Release(a) => show(&holds.release(&a.name)?, a.json, "Hold released"),
    }
    Ok(0)
}

fn scope(h: &Hold) -> String {
    let who = if h.all {
        "all items".to_owned()
    } else {
        h.users
            .iter()
            .map(|u| u.login.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let days = match (&h.from, &h.to) {
        (None, None) => String::new(),
        (f, t) => format!(
            ", received {} to {}",
            f.as_deref().unwrap_or("the start"),
            t.as_deref().unwrap_or("now")
        ),
    };
    format!("{who}{days} (since {})", h.created)
}

fn show(h: &Hold, json: bool, what: &str) {
    if json {
        print_json(&serde_json::to_value(h).expect("serializes"));
    } else {
        println!("{what}: {}: {}", h.name, scope(h));
    }
}
