//! Retention: which archive items may be removed, by `[[archive.retention]]` rules.
//!
//! A rule matches a folder entry by user (login) and folder (`INBOX`, `Sent`, `Unknown`);
//! the most specific matching rule wins (user and folder, then user, then folder, then a rule
//! with neither; the first written among equals). `keep_days`/`keep_years` is a minimum that
//! blocks deletion; `delete_after_days` allows it. An item (shown in several folders: the
//! sender's Sent, each recipient's INBOX) goes only when the rule of every one of its entries
//! allows it and no legal hold covers it. No rule: kept. The old `retention_days` acts as a
//! rule of least weight. Defaults keep everything.

use std::collections::HashMap;

use serde::Serialize;

use super::holds::Hold;
use super::store::Item;
use super::users::UserRecord;
use super::{ArchiveError, UNKNOWN_FOLDER};
use crate::config::{ArchiveConfig, RetentionRule};

const DAY: i64 = 86_400;

/// An item retention would remove, and why.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Doomed {
    pub item: u64,
    pub received: i64,
    /// The item's folders (`<login>/INBOX`, `Unknown`) and the rule that lets each go.
    pub because: Vec<String>,
}

/// What a retention run does or would do.
#[derive(Debug, Default, Clone, Serialize)]
pub struct RetentionPlan {
    pub remove: Vec<Doomed>,
    /// Items every rule lets go that a hold keeps: (item, hold names).
    pub held: Vec<(u64, Vec<String>)>,
}

impl RetentionPlan {
    /// Every item ID to remove, the linked copies included.
    pub fn ids(&self, items: &HashMap<u64, Item>) -> Vec<u64> {
        let mut out = Vec::new();
        for d in &self.remove {
            out.push(d.item);
            if let Some(item) = items.get(&d.item) {
                out.extend(item.linked.iter().copied());
                out.extend(item.envelopes.iter().copied());
            }
        }
        out
    }
}

/// Works out the plan at `now` for `items`.
pub fn plan(
    config: &ArchiveConfig,
    users: &[UserRecord],
    holds: &[Hold],
    items: &HashMap<u64, Item>,
    now: i64,
) -> RetentionPlan {
    let logins: HashMap<&str, &str> = users
        .iter()
        .map(|u| (u.id.as_str(), u.login.as_str()))
        .collect();
    let mut out = RetentionPlan::default();
    let mut ids: Vec<&u64> = items.keys().collect();
    ids.sort();
    for id in ids {
        let item = &items[id];
        if item.entries.is_empty() || item.envelope_of.is_some() {
            continue; // a linked copy or an envelope (goes with its item), or nothing to show
        }
        let age = now - item.received;
        let mut because = Vec::new();
        let all_allow = item.entries.iter().all(|(folder, _)| {
            let (owner, name) = describe(folder, &logins);
            match applicable(config, owner, name) {
                Some((index, rule)) if allows(&rule, age) => {
                    because.push(format!(
                        "{}{name}: rule {index} (delete after {} days)",
                        owner.map(|o| format!("{o}/")).unwrap_or_default(),
                        rule.delete_after_days.unwrap_or(0)
                    ));
                    true
                }
                _ => false,
            }
        });
        if !all_allow {
            continue;
        }
        let holding: Vec<String> = holds
            .iter()
            .filter(|h| h.covers(item))
            .map(|h| h.name.clone())
            .collect();
        if holding.is_empty() {
            out.remove.push(Doomed {
                item: *id,
                received: item.received,
                because,
            });
        } else {
            out.held.push((*id, holding));
        }
    }
    out
}

/// (owner login, folder name) of a store folder key: `usr-.../INBOX`, `unknown`.
fn describe<'a>(folder: &'a str, logins: &HashMap<&str, &'a str>) -> (Option<&'a str>, &'a str) {
    if folder == UNKNOWN_FOLDER {
        return (None, "Unknown");
    }
    match folder.split_once('/') {
        Some((id, name)) => (Some(logins.get(id).copied().unwrap_or(id)), name),
        None => (None, folder),
    }
}

/// The most specific rule for an entry, with its 1-based position (0: `retention_days`).
fn applicable(
    config: &ArchiveConfig,
    owner: Option<&str>,
    folder: &str,
) -> Option<(usize, RetentionRule)> {
    let mut best: Option<(u8, usize, &RetentionRule)> = None;
    for (i, rule) in config.retention.iter().enumerate() {
        let user_ok = rule
            .user
            .as_deref()
            .is_none_or(|u| Some(u.to_lowercase().as_str()) == owner);
        let folder_ok = rule
            .folder
            .as_deref()
            .is_none_or(|f| f.eq_ignore_ascii_case(folder));
        if !(user_ok && folder_ok) {
            continue;
        }
        let weight = 2 * u8::from(rule.user.is_some()) + u8::from(rule.folder.is_some());
        if best.is_none_or(|(w, _, _)| weight > w) {
            best = Some((weight, i + 1, rule));
        }
    }
    match best {
        Some((_, i, rule)) => Some((i, rule.clone())),
        None => (config.retention_days > 0).then(|| {
            let legacy = RetentionRule {
                delete_after_days: Some(config.retention_days),
                ..RetentionRule::default()
            };
            (0, legacy)
        }),
    }
}

/// Whether `rule` lets an item of `age` seconds go.
fn allows(rule: &RetentionRule, age: i64) -> bool {
    let Some(after) = rule.delete_after_days else {
        return false;
    };
    age >= i64::from(after) * DAY && age >= rule.minimum_days() * DAY
}

/// The plan of an archive's current items.
pub(super) fn current(
    archive: &super::Archive,
    now: i64,
) -> Result<(RetentionPlan, HashMap<u64, Item>), ArchiveError> {
    let items: HashMap<u64, Item> = archive.store.items()?.into_iter().collect();
    let holds = archive
        .holds
        .list()
        .map_err(|e| ArchiveError::Damaged(e.to_string()))?;
    let users = archive.user_list();
    Ok((plan(&archive.config, &users, &holds, &items, now), items))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(days_old: i64, folders: &[&str]) -> Item {
        Item::filed_in(1_000 * DAY - days_old * DAY, folders)
    }

    fn rule(
        user: Option<&str>,
        folder: Option<&str>,
        keep: u32,
        after: Option<u32>,
    ) -> RetentionRule {
        RetentionRule {
            user: user.map(str::to_owned),
            folder: folder.map(str::to_owned),
            keep_days: keep,
            keep_years: 0,
            delete_after_days: after,
        }
    }

    fn user(id: &str, login: &str) -> UserRecord {
        UserRecord {
            id: id.into(),
            login: login.into(),
            aliases: vec![],
            name: String::new(),
            auditor: false,
            created: String::new(),
            public_key: String::new(),
            key_generation: 1,
        }
    }

    #[test]
    fn the_most_specific_rule_wins_and_every_entry_must_allow() {
        let config = ArchiveConfig {
            retention: vec![
                rule(None, None, 0, Some(30)),
                rule(None, Some("Sent"), 0, Some(10)),
                rule(Some("Bob@x.example"), None, 3650, None),
                rule(Some("carol@x.example"), Some("INBOX"), 60, Some(90)),
            ],
            ..ArchiveConfig::default()
        };
        let users = [
            user("usr-b", "bob@x.example"),
            user("usr-c", "carol@x.example"),
            user("usr-a", "a@x.example"),
        ];
        let items: HashMap<u64, Item> = [
            (1, item(40, &["usr-a/INBOX"])), // general 30 days: goes
            (2, item(20, &["usr-a/Sent"])),  // Sent 10 days: goes
            (3, item(20, &["usr-a/Sent", "usr-a/INBOX"])), // INBOX needs 30: kept
            (4, item(400, &["usr-b/INBOX"])), // bob keeps 10 years: kept
            (5, item(80, &["usr-c/INBOX"])), // carol INBOX 90: kept
            (6, item(95, &["usr-c/INBOX", "unknown"])), // both allow: goes
            (7, item(5, &["usr-c/Sent"])),   // too young
        ]
        .into_iter()
        .collect();
        let plan = plan(&config, &users, &[], &items, 1_000 * DAY);
        let gone: Vec<u64> = plan.remove.iter().map(|d| d.item).collect();
        assert_eq!(gone, vec![1, 2, 6]);
        assert!(
            plan.remove[2]
                .because
                .iter()
                .any(|b| b.contains("carol@x.example/INBOX: rule 4")),
            "{:?}",
            plan.remove[2]
        );
    }

    #[test]
    fn holds_keep_items_and_no_rule_keeps_everything() {
        let items: HashMap<u64, Item> = [(1, item(400, &["usr-b/INBOX"]))].into_iter().collect();
        let none = plan(&ArchiveConfig::default(), &[], &[], &items, 1_000 * DAY);
        assert!(none.remove.is_empty() && none.held.is_empty());
        let config = ArchiveConfig {
            retention_days: 1,
            ..ArchiveConfig::default()
        };
        assert_eq!(plan(&config, &[], &[], &items, 1_000 * DAY).remove.len(), 1);
        let hold = Hold {
            name: "case".into(),
            all: true,
            users: vec![],
            from: None,
            to: None,
            created: "2024-01-01T00:00:00Z".into(),
        };
        let held = plan(&config, &[], &[hold], &items, 1_000 * DAY);
        assert!(held.remove.is_empty());
        assert_eq!(held.held, vec![(1, vec!["case".to_owned()])]);
        // A minimum above delete_after: the minimum wins.
        let config = ArchiveConfig {
            retention: vec![rule(None, None, 500, Some(10))],
            ..ArchiveConfig::default()
        };
        assert!(plan(&config, &[], &[], &items, 1_000 * DAY)
            .remove
            .is_empty());
    }
}
