//! Reaching the archive from the CLI: through the running server's admin socket (which
//! holds the archive database) or by opening it here when no server runs; and the keys that
//! open archive items (the recovery key, whole or from shares, or an auditor's password).

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::admin::{self, Request};
use crate::archive::recovery::{self, Recovery};
use crate::archive::users::Users;
use crate::config::Config;
use crate::crypto::{self, Identity};

/// What opens archive items: the recovery key (whole or shares) or an auditor's password.
#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
pub struct Unlock {
    /// The recovery secret key file.
    #[arg(long, value_name = "FILE")]
    pub recovery: Option<PathBuf>,
    /// Recovery key share files (at least the threshold).
    #[arg(long, value_name = "F1,F2,..", value_delimiter = ',')]
    pub shares: Vec<PathBuf>,
    /// An auditor whose archive key opens the items; the password is read from the terminal,
    /// or from the first line of standard input.
    #[arg(long, value_name = "AUDITOR")]
    pub by: Option<String>,
}

/// The key that opens file keys, from the recovery file, the shares or an auditor.
pub(super) fn unlock(config: &Config, args: &Unlock) -> Result<Identity> {
    let read = |p: &PathBuf| std::fs::read_to_string(p).with_context(|| format!("{}", p.display()));
    let recovery = Recovery::new(&config.data_dir);
    if let Some(path) = &args.recovery {
        let identity = recovery::read_secret(&read(path)?)?;
        recovery.check(&identity)?;
        return Ok(identity);
    }
    if !args.shares.is_empty() {
        let texts = args.shares.iter().map(read).collect::<Result<Vec<_>>>()?;
        let identity = recovery::combine(&texts)?;
        recovery.check(&identity)?;
        return Ok(identity);
    }
    let login = args.by.as_deref().expect("clap requires one");
    let users = Users::new(&config.data_dir);
    let auditor = users.find(login)?;
    if !auditor.auditor {
        bail!("{} is not an auditor", auditor.login);
    }
    let password = read_password(&format!("Password of {}: ", auditor.login))?;
    Ok(crypto::unwrap_identity(
        &users.wrapped_identity(&auditor.id)?,
        &password,
    )?)
}

fn read_password(prompt: &str) -> Result<String> {
    if std::io::stdin().is_terminal() {
        return Ok(rpassword::prompt_password(prompt)?);
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

/// The response of a request the server answers, or of `offline` on an archive opened here.
pub(super) fn through_server_or_open(
    config: &Config,
    request: Request,
    progress: &mut dyn FnMut(u64, u64),
    offline: impl FnOnce(&crate::archive::Archive, &mut dyn FnMut(u64, u64)) -> admin::Response,
) -> Result<admin::Response> {
    if let Some(response) = admin::request_with_progress(&config.data_dir, request, progress)? {
        return Ok(response);
    }
    with_open_archive(config, |archive| offline(archive, progress))
}

/// Opens the archive here (no server runs) for `f`.
pub(super) fn with_open_archive<T>(
    config: &Config,
    f: impl FnOnce(&crate::archive::Archive) -> T,
) -> Result<T> {
    let spool = crate::spool::Spool::open(&config.data_dir)?;
    let archive = crate::archive::Archive::open(&config.archive, Arc::clone(&spool))?;
    let out = f(&archive);
    spool.shutdown();
    Ok(out)
}

/// A progress bar on standard error (hidden when that is not a terminal).
pub(super) fn progress_bar(unit: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{{bar:40}} {{pos}}/{{len}} {unit}  {{per_sec}}  eta {{eta}}"
        ))
        .expect("template"),
    );
    bar
}
