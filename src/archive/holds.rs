//! Legal holds: named sets of archive items (some users' or everyone's, optionally within a
//! date range) that are never removed — not by retention, not by deleting a user — until the
//! hold is released. Auditors see each hold as a read-only IMAP folder `Holds/<name>`.
//!
//! Kept in `data_dir/archive/holds.json` (nothing secret: user IDs and dates) so the CLI
//! works with or without a running server; a hold names users by ID, so it still covers a
//! user's items after the user is deleted.

use std::fs;
use std::path::{Path, PathBuf};

use chrono::{NaiveDate, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use super::store::Item;
use super::users::{UserRecord, Users};
use crate::fsutil;

#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    #[error("a hold name is 1 to 64 letters, digits, '.', '_' or '-': {0:?}")]
    BadName(String),
    #[error("a hold named {0} exists")]
    Exists(String),
    #[error("no hold named {0}")]
    NotFound(String),
    #[error("a date is YYYY-MM-DD: {0:?}")]
    BadDate(String),
    #[error("a hold needs --user LOGIN (repeatable) or --all")]
    NoScope,
    #[error("holds file {0} is damaged: {1}")]
    Damaged(String, String),
    #[error(transparent)]
    Users(#[from] super::users::UserError),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// A user a hold covers, by ID (the login is kept for display after a deletion).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HeldUser {
    pub id: String,
    pub login: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Hold {
    pub name: String,
    /// Every item, whoever it is filed for.
    pub all: bool,
    pub users: Vec<HeldUser>,
    /// Items received on or after this day (UTC), if set.
    pub from: Option<String>,
    /// Items received on or before this day (UTC), if set.
    pub to: Option<String>,
    pub created: String,
}

impl Hold {
    /// Whether the hold covers `item`.
    pub fn covers(&self, item: &Item) -> bool {
        let (from, to) = self.range();
        if item.received < from || item.received > to {
            return false;
        }
        self.all
            || item.entries.iter().any(|(folder, _)| {
                let owner = folder.split('/').next().unwrap_or("");
                self.users.iter().any(|u| u.id == owner)
            })
    }

    /// (first, last) second covered.
    fn range(&self) -> (i64, i64) {
        day_range(self.from.as_deref(), self.to.as_deref()).unwrap_or((i64::MIN, i64::MAX))
    }

    /// UIDVALIDITY of the hold's IMAP folder (its creation time).
    pub fn uidvalidity(&self) -> u32 {
        chrono::DateTime::parse_from_rfc3339(&self.created)
            .ok()
            .and_then(|t| u32::try_from(t.timestamp()).ok())
            .unwrap_or(1)
            .max(1)
    }
}

/// The (first, last) second of the days `from` and `to` (UTC, inclusive); open ends reach
/// as far as they can.
pub fn day_range(from: Option<&str>, to: Option<&str>) -> Result<(i64, i64), HoldError> {
    let day = |d: Option<&str>, end: bool| -> Result<Option<i64>, HoldError> {
        let Some(d) = d else { return Ok(None) };
        let date = NaiveDate::parse_from_str(d, "%Y-%m-%d")
            .map_err(|_| HoldError::BadDate(d.to_owned()))?;
        let start = date.and_hms_opt(0, 0, 0).expect("midnight exists");
        Ok(Some(
            start.and_utc().timestamp() + if end { 86_399 } else { 0 },
        ))
    };
    Ok((
        day(from, false)?.unwrap_or(i64::MIN),
        day(to, true)?.unwrap_or(i64::MAX),
    ))
}

/// The holds of the archive under `data_dir`.
#[derive(Debug, Clone)]
pub struct Holds {
    path: PathBuf,
    users: Users,
}

#[derive(Default, Serialize, Deserialize)]
struct HoldFile {
    holds: Vec<Hold>,
}

impl Holds {
    pub fn new(data_dir: &Path) -> Holds {
        Holds {
            path: data_dir.join("archive").join("holds.json"),
            users: Users::new(data_dir),
        }
    }

    pub fn list(&self) -> Result<Vec<Hold>, HoldError> {
        match fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice::<HoldFile>(&bytes)
                .map(|f| f.holds)
                .map_err(|e| HoldError::Damaged(self.path.display().to_string(), e.to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e.into()),
        }
    }

    pub fn find(&self, name: &str) -> Result<Hold, HoldError> {
        self.list()?
            .into_iter()
            .find(|h| h.name == name)
            .ok_or_else(|| HoldError::NotFound(name.to_owned()))
    }

    /// Places a hold on `logins`' items (or on all with `all`) received within the days.
    pub fn add(
        &self,
        name: &str,
        logins: &[String],
        all: bool,
        from: Option<&str>,
        to: Option<&str>,
    ) -> Result<Hold, HoldError> {
        check_name(name)?;
        if !all && logins.is_empty() {
            return Err(HoldError::NoScope);
        }
        for d in from.iter().chain(to.iter()) {
            NaiveDate::parse_from_str(d, "%Y-%m-%d")
                .map_err(|_| HoldError::BadDate(d.to_string()))?;
        }
        let mut holds = self.list()?;
        if holds.iter().any(|h| h.name == name) {
            return Err(HoldError::Exists(name.to_owned()));
        }
        let users = logins
            .iter()
            .map(|l| {
                self.users.find(l).map(|u: UserRecord| HeldUser {
                    id: u.id,
                    login: u.login,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let hold = Hold {
            name: name.to_owned(),
            all,
            users,
            from: from.map(str::to_owned),
            to: to.map(str::to_owned),
            created: Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true),
        };
        holds.push(hold.clone());
        self.save(holds)?;
        Ok(hold)
    }

    /// Releases (removes) a hold: its items fall under retention again.
    pub fn release(&self, name: &str) -> Result<Hold, HoldError> {
        let mut holds = self.list()?;
        let at = holds
            .iter()
            .position(|h| h.name == name)
            .ok_or_else(|| HoldError::NotFound(name.to_owned()))?;
        let hold = holds.remove(at);
        self.save(holds)?;
        Ok(hold)
    }

    fn save(&self, holds: Vec<Hold>) -> Result<(), HoldError> {
        if let Some(dir) = self.path.parent() {
            fsutil::create_private_dir(dir)?;
        }
        let json = serde_json::to_vec_pretty(&HoldFile { holds }).expect("serializes");
        fsutil::write_atomic(&self.path, &json, 0o600)?;
        self.users.touch()?;
        Ok(())
    }
}

fn check_name(name: &str) -> Result<(), HoldError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(HoldError::BadName(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(received: i64, folders: &[&str]) -> Item {
        Item::filed_in(received, folders)
    }

    #[test]
    fn holds_cover_their_users_and_days_and_survive_the_user() {
        let dir = std::env::temp_dir().join(format!("jg-holds-{}", crate::crypto::random_hex128()));
        let users = Users::new(&dir);
        let (bob, _) = users.add("bob@x.example", &[], "", false).unwrap();
        let holds = Holds::new(&dir);
        for bad in ["", "a/b", "..", "x y", &"n".repeat(65)] {
            assert!(
                matches!(
                    holds.add(bad, &[], true, None, None),
                    Err(HoldError::BadName(_))
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            holds.add("h", &[], false, None, None),
            Err(HoldError::NoScope)
        ));
        assert!(matches!(
            holds.add("h", &[], true, Some("2024-13-01"), None),
            Err(HoldError::BadDate(_))
        ));
        let hold = holds
            .add(
                "case-1",
                &["bob@x.example".into()],
                false,
                Some("2024-03-01"),
                Some("2024-03-31"),
            )
            .unwrap();
        assert!(matches!(
            holds.add("case-1", &[], true, None, None),
            Err(HoldError::Exists(_))
        ));
        let march = NaiveDate::from_ymd_opt(2024, 3, 31)
            .unwrap()
            .and_hms_opt(23, 0, 0)
            .unwrap();
        let march = march.and_utc().timestamp();
        let inbox = format!("{}/INBOX", bob.id);
        assert!(hold.covers(&item(march, &[&inbox])));
        assert!(!hold.covers(&item(march + 3600, &[&inbox])), "after --to");
        assert!(!hold.covers(&item(march, &["usr-other/INBOX", "unknown"])));
        users.delete("bob@x.example").unwrap();
        assert!(holds
            .find("case-1")
            .unwrap()
            .covers(&item(march, &[&inbox])));
        let everything = holds.add("all", &[], true, None, None).unwrap();
        assert!(everything.covers(&item(0, &["unknown"])));
        assert_eq!(holds.list().unwrap().len(), 2);
        holds.release("case-1").unwrap();
        assert!(matches!(
            holds.release("case-1"),
            Err(HoldError::NotFound(_))
        ));
        fs::remove_dir_all(dir).unwrap();
    }
}
