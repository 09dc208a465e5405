//! `journalgate archive export` and `archive verify-export`. The export's files come from
//! the running server (framed over the admin socket) or from the archive opened here; this
//! process writes them into the zip, where the operator asked, so a full disk or a wrong
//! path fails here, cleanly, and never on the server's disk.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::Value;

use super::archive_access::{progress_bar, unlock, with_open_archive, Unlock};
use super::print_json;
use crate::admin::{self, ExportRequest, FrameHandler, Request};
use crate::archive::export::{ExportSink, ExportSpec, MessageFormat, Selection};
use crate::config::Config;

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("selection").required(true).args(["user", "hold", "all"])))]
pub struct ExportArgs {
    /// The items filed in this user's folders.
    #[arg(long, value_name = "LOGIN")]
    pub user: Option<String>,
    /// The items a legal hold covers.
    #[arg(long, value_name = "NAME")]
    pub hold: Option<String>,
    /// Every item.
    #[arg(long)]
    pub all: bool,
    /// Items that arrived on or after this day (UTC).
    #[arg(long, value_name = "YYYY-MM-DD")]
    pub from: Option<String>,
    /// Items that arrived on or before this day (UTC).
    #[arg(long, value_name = "YYYY-MM-DD")]
    pub to: Option<String>,
    #[arg(long, value_enum, default_value = "eml")]
    pub format: MessageFormat,
    /// The zip file to write (it must not exist).
    #[arg(long, value_name = "FILE.zip")]
    pub out: PathBuf,
    #[command(flatten)]
    pub unlock: Unlock,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct VerifyExportArgs {
    /// The export to check.
    pub file: PathBuf,
    /// The archive's checkpoint signing key (hex, `archive verify` prints it): the
    /// checkpoints must be signed with it.
    #[arg(long, value_name = "HEX")]
    pub key: Option<String>,
    #[arg(long)]
    pub json: bool,
}

pub fn export(config: &Config, args: ExportArgs) -> Result<i32> {
    use age::secrecy::ExposeSecret;
    let selection = match (&args.user, &args.hold) {
        (Some(login), _) => Selection::User(login.clone()),
        (_, Some(name)) => Selection::Hold(name.clone()),
        _ => Selection::All,
    };
    let spec = ExportSpec {
        selection,
        from: args.from.clone(),
        to: args.to.clone(),
        format: args.format,
    };
    if args.out.exists() {
        bail!("{} exists: not overwritten", args.out.display());
    }
    let identity = unlock(config, &args.unlock)?;
    let keys = vec![identity.to_string().expose_secret().to_owned()];
    let part = part_path(&args.out);
    let mut zip = ZipOut::create(&part)?;
    let result = run(config, spec, keys, &mut zip);
    let report = match result.and_then(|report| zip.finish().map(|()| report)) {
        Ok(report) => report,
        Err(e) => {
            let _ = fs::remove_file(&part);
            return Err(e.context(format!("export to {} failed", args.out.display())));
        }
    };
    fs::rename(&part, &args.out)?;
    if args.json {
        print_json(&report);
    } else {
        let n = |k: &str| report[k].as_u64().unwrap_or(0);
        println!(
            "{}: {} items ({} bytes), {} journal envelopes, {} chain links; {} items the key does not open.",
            args.out.display(),
            n("items"),
            n("bytes"),
            n("envelopes"),
            n("links"),
            n("unreadable")
        );
    }
    Ok(0)
}

/// Runs the export through the server, or on the archive opened here.
fn run(config: &Config, spec: ExportSpec, keys: Vec<String>, zip: &mut ZipOut) -> Result<Value> {
    let request = ExportRequest {
        spec: spec.clone(),
        keys: keys.clone(),
    };
    let response = match admin::request_frames(&config.data_dir, Request::Export(request), zip)? {
        Some(response) => response,
        None => with_open_archive(config, |archive| {
            let bar = zip.bar.clone();
            let mut progress = |done: u64, total: u64| {
                bar.set_length(total);
                bar.set_position(done);
            };
            admin::run_export(archive, &spec, &keys, zip, &mut progress)
        })?,
    };
    zip.bar.finish_and_clear();
    if let Some(e) = response.error {
        bail!("{e}");
    }
    Ok(response.archive.unwrap_or(Value::Null))
}

fn part_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    out.with_file_name(name)
}

/// The zip being written, with a progress bar.
struct ZipOut {
    zip: Option<zip::ZipWriter<BufWriter<File>>>,
    bar: indicatif::ProgressBar,
}

impl ZipOut {
    fn create(path: &Path) -> Result<ZipOut> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(ZipOut {
            zip: Some(zip::ZipWriter::new(BufWriter::with_capacity(1 << 20, file))),
            bar: progress_bar("items"),
        })
    }

    fn writer(&mut self) -> io::Result<&mut zip::ZipWriter<BufWriter<File>>> {
        self.zip
            .as_mut()
            .ok_or_else(|| io::Error::other("the zip is finished"))
    }

    /// Writes the central directory and makes the file durable.
    fn finish(&mut self) -> Result<()> {
        let zip = self.zip.take().expect("finished once");
        let file = zip.finish()?.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(())
    }
}

impl Write for ZipOut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writer()?.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.writer()?.flush()
    }
}

impl ExportSink for ZipOut {
    fn start(&mut self, name: &str) -> io::Result<()> {
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .compression_level(Some(1))
            .large_file(name == "messages.mbox");
        self.writer()?
            .start_file(name, options)
            .map_err(io::Error::other)
    }
}

impl FrameHandler for ZipOut {
    fn start(&mut self, name: &str) -> io::Result<()> {
        ExportSink::start(self, name)
    }

    fn data(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.write_all(bytes)
    }

    fn progress(&mut self, done: u64, total: u64) {
        self.bar.set_length(total);
        self.bar.set_position(done);
    }
}

pub fn verify_export(args: VerifyExportArgs) -> Result<i32> {
    let file =
        File::open(&args.file).with_context(|| format!("cannot open {}", args.file.display()))?;
    let report =
        crate::archive::export_check::verify_export(io::BufReader::new(file), args.key.as_deref())?;
    if args.json {
        print_json(&serde_json::to_value(&report)?);
    } else {
        println!(
            "{}: {} items ({} proven on the signed chain, {} archived before the chain), {} chain segments, signed by {}: {}",
            args.file.display(),
            report.items,
            report.proven,
            report.unproven,
            report.segments,
            report.signing_key,
            if report.ok { "intact" } else { "PROBLEMS" }
        );
        for p in &report.problems {
            println!("  {p}");
        }
    }
    Ok(if report.ok { 0 } else { 1 })
}
