//! `journalgate cert status|renew`: asks the running server over the admin socket, or reads
//! and renews the certificate directly when no server runs.

use crate::acme;
use crate::admin;
use crate::config::Config;

/// `journalgate cert status|renew [--json]`: through the running server's admin socket, or
/// directly when none runs. Exit code 1 when a renewal failed.
pub fn run(config: &Config, renew: bool, json: bool) -> anyhow::Result<i32> {
    let request = if renew {
        admin::Request::CertRenew
    } else {
        admin::Request::CertStatus
    };
    let (status, error) = match admin::request(&config.data_dir, request)? {
        Some(response) => (response.cert, response.error),
        None => match acme::offline(config, renew) {
            Ok(status) => (Some(serde_json::to_value(status)?), None),
            Err(e) if renew => (
                acme::offline_status(config)
                    .ok()
                    .and_then(|s| serde_json::to_value(s).ok()),
                Some(e.to_string()),
            ),
            Err(e) => return Err(e.into()),
        },
    };
    let mut status = status.unwrap_or_else(|| serde_json::json!({}));
    if json {
        if let (Some(error), Some(object)) = (&error, status.as_object_mut()) {
            object.insert("renew_error".into(), error.clone().into());
        }
        println!("{}", serde_json::to_string(&status)?);
    } else {
        print_status(&status);
        match (&error, renew) {
            (Some(error), _) => eprintln!("renewal failed: {error}"),
            (None, true) => println!("A new certificate is in use."),
            (None, false) => {}
        }
    }
    Ok(if error.is_some() { 1 } else { 0 })
}

fn print_status(status: &serde_json::Value) {
    let field = |k: &str| match &status[k] {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "none".into(),
        serde_json::Value::Array(a) => a
            .iter()
            .filter_map(|v| v.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        v => v.to_string(),
    };
    for (label, key) in [
        ("source", "source"),
        ("self-signed", "self_signed"),
        ("names", "names"),
        ("issuer", "issuer"),
        ("not after", "not_after"),
        ("days left", "days_left"),
        ("last error", "last_error"),
    ] {
        println!("{label:<12} {}", field(key));
    }
}
