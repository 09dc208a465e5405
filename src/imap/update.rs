//! The commands that change a folder: STORE (keywords included, RFC 7162 UNCHANGEDSINCE),
//! EXPUNGE, UID EXPUNGE (UIDPLUS) and the implicit expunge of CLOSE. EXAMINE refuses them
//! all; archive folders keep per-user flags but never expunge.

use imap_codec::imap_types::command::StoreModifier;
use imap_codec::imap_types::core::Tag;
use imap_codec::imap_types::flag::{Flag, StoreResponse, StoreType};
use imap_codec::imap_types::sequence::SequenceSet;

use super::state::{Authed, Conn, Selected};
use super::wire;
use crate::message::{FlagOp, Flags};
use crate::store::StoreError;

/// What a STORE asks for.
pub(super) struct StoreRequest<'a> {
    pub set: &'a SequenceSet,
    pub kind: StoreType,
    pub response: StoreResponse,
    pub flags: &'a [Flag<'a>],
    pub uid: bool,
    pub modifiers: &'a [StoreModifier],
}

/// Why a folder refuses changes, as a tagged NO.
fn refusal(selected: &Selected, examined: &'static str) -> Option<&'static str> {
    if selected.view.folder.read_only {
        Some("NO [NOPERM] The archive is read-only")
    } else if selected.view.read_only {
        Some(examined)
    } else {
        None
    }
}

/// UIDs of the messages flagged `\Deleted` (within `set` when given).
fn deleted_uids(selected: &Selected, within: Option<&SequenceSet>) -> Vec<u32> {
    let view = &selected.view;
    let chosen: Vec<usize> = match within {
        Some(set) => view.select(set, true),
        None => (0..view.messages.len()).collect(),
    };
    chosen
        .into_iter()
        .map(|i| view.messages[i])
        .filter(|m| m.flags.contains(Flags::DELETED))
        .map(|m| m.uid)
        .collect()
}

async fn expunge_uids(
    conn: &Conn,
    authed: &Authed,
    selected: &Selected,
    uids: Vec<u32>,
) -> Result<(), StoreError> {
    if uids.is_empty() {
        return Ok(());
    }
    let (store, folder) = (authed.account.store.clone(), selected.view.folder.clone());
    let count = uids.len();
    tokio::task::spawn_blocking(move || store.expunge(&folder, &uids))
        .await
        .map_err(StoreError::unavailable)??;
    tracing::info!(client = %conn.peer, deleted = count, "imap messages expunged");
    Ok(())
}

/// CLOSE: expunges `\Deleted` messages silently unless the folder is read-only.
pub(super) async fn close(conn: &mut Conn, authed: &Authed, selected: &Selected) {
    if selected.view.read_only || selected.view.folder.read_only {
        return;
    }
    let deleted = deleted_uids(selected, None);
    if let Err(e) = expunge_uids(conn, authed, selected, deleted).await {
        tracing::error!(error = %e, "close: expunge failed");
    }
}

pub(super) async fn expunge(
    conn: &mut Conn,
    authed: &Authed,
    selected: &mut Selected,
    tag: &Tag<'_>,
    within: Option<SequenceSet>,
) {
    if let Some(text) = refusal(selected, "NO [READ-ONLY] Mailbox is read-only") {
        conn.tagged(tag, text);
        return;
    }
    // Flags set by other sessions count too.
    selected.dirty = true;
    selected.sync(conn, authed, true);
    let uids = deleted_uids(selected, within.as_ref());
    if let Err(e) = expunge_uids(conn, authed, selected, uids).await {
        tracing::error!(error = %e, "expunge failed");
        conn.tagged(tag, "NO [UNAVAILABLE] Expunge failed");
        return;
    }
    selected.dirty = true;
    selected.sync(conn, authed, true);
    if conn.qresync {
        let store = &authed.account.store;
        let highest = store.highest_modseq(&selected.view.folder).unwrap_or(1);
        conn.tagged(
            tag,
            format!("OK [HIGHESTMODSEQ {highest}] EXPUNGE completed"),
        );
    } else {
        conn.tagged(tag, "OK EXPUNGE completed");
    }
}

/// The system flags and keyword names of a STORE (`\Recent` and other `\` extensions are
/// not settable and are left out).
fn split_flags(flags: &[Flag<'_>]) -> (Flags, Vec<String>) {
    let mut keywords = Vec::new();
    let system = flags.iter().fold(Flags::default(), |acc, f| match f {
        Flag::Answered => acc.with(Flags::ANSWERED),
        Flag::Deleted => acc.with(Flags::DELETED),
        Flag::Draft => acc.with(Flags::DRAFT),
        Flag::Flagged => acc.with(Flags::FLAGGED),
        Flag::Seen => acc.with(Flags::SEEN),
        Flag::Keyword(k) => {
            keywords.push(k.as_ref().to_owned());
            acc
        }
        _ => acc,
    });
    (system, keywords)
}

/// The flags of keyword names: defined as needed when adding or replacing, looked up when
/// removing (an unknown keyword is on no message). None when the folder has no room left.
async fn keyword_flags(
    authed: &Authed,
    selected: &Selected,
    names: Vec<String>,
    define: bool,
) -> Result<Option<Flags>, StoreError> {
    if names.is_empty() {
        return Ok(Some(Flags::default()));
    }
    if !define {
        let known = &selected.view.keywords;
        let table = authed.account.store.keywords(&selected.view.folder);
        let table = if table.len() >= known.len() {
            table
        } else {
            known.clone()
        };
        return Ok(Some(names.iter().fold(Flags::default(), |acc, n| {
            match table.iter().position(|k| k.eq_ignore_ascii_case(n)) {
                Some(slot) => acc.with(Flags::keyword(slot)),
                None => acc,
            }
        })));
    }
    let (store, folder) = (authed.account.store.clone(), selected.view.folder.clone());
    tokio::task::spawn_blocking(move || store.define_keywords(&folder, &names))
        .await
        .map_err(StoreError::unavailable)?
}

pub(super) async fn store(
    conn: &mut Conn,
    authed: &Authed,
    selected: &mut Selected,
    tag: &Tag<'_>,
    request: StoreRequest<'_>,
) {
    let StoreRequest {
        set,
        kind,
        response,
        flags,
        uid,
        modifiers,
    } = request;
    if !selected.view.flags_writable() {
        conn.tagged(tag, "NO [READ-ONLY] Mailbox is read-only");
        return;
    }
    if !uid && selected.view.out_of_range(set) {
        conn.bad(tag, "Invalid message sequence number");
        return;
    }
    let unchanged_since = modifiers
        .iter()
        .map(|StoreModifier::UnchangedSince(n)| *n)
        .next();
    if unchanged_since.is_some() {
        selected.enable_condstore(conn, authed);
    }
    let (system, names) = split_flags(flags);
    let define = !matches!(kind, StoreType::Remove);
    if define && selected.view.folder.read_only && system.contains(Flags::DELETED) {
        conn.tagged(tag, "NO [NOPERM] Archived messages cannot be deleted");
        return;
    }
    let keywords = match keyword_flags(authed, selected, names, define).await {
        Ok(Some(k)) => k,
        Ok(None) => {
            conn.tagged(
                tag,
                "NO [LIMIT] No room for another keyword in this mailbox",
            );
            return;
        }
        Err(e) => {
            tracing::error!(error = %e, "store failed");
            conn.tagged(tag, "NO [UNAVAILABLE] Cannot store flags");
            return;
        }
    };
    let given = system.with(keywords);
    let op = match kind {
        StoreType::Replace => FlagOp::Replace(given),
        StoreType::Add => FlagOp::Add(given),
        StoreType::Remove => FlagOp::Remove(given),
    };
    let uids: Vec<u32> = selected
        .view
        .select(set, uid)
        .into_iter()
        .map(|i| selected.view.messages[i].uid)
        .collect();
    let (store, folder) = (authed.account.store.clone(), selected.view.folder.clone());
    let result =
        tokio::task::spawn_blocking(move || store.set_flags(&folder, &uids, op, unchanged_since))
            .await
            .map_err(StoreError::unavailable)
            .and_then(|r| r);
    let update = match result {
        Ok(u) => u,
        Err(e) => {
            tracing::error!(error = %e, "store failed");
            conn.tagged(tag, "NO [UNAVAILABLE] Cannot store flags");
            return;
        }
    };
    let known = selected.view.keywords.len();
    if keywords.keywords().any(|slot| slot >= known) {
        selected.view.keywords = authed.account.store.keywords(&selected.view.folder);
        for line in super::state::flag_announcements(&selected.view) {
            conn.line(line);
        }
    }
    answer_store(conn, selected, &update.updated, response, uid);
    (selected.contexts).touch(update.updated.iter().map(|m| m.uid));
    selected.sync(conn, authed, uid);
    if update.refused.is_empty() {
        conn.tagged(tag, "OK STORE completed");
    } else {
        let refused: Vec<u32> = match uid {
            true => update.refused.clone(),
            false => update
                .refused
                .iter()
                .filter_map(|u| {
                    selected
                        .view
                        .messages
                        .binary_search_by_key(u, |m| m.uid)
                        .ok()
                })
                .map(|i| i as u32 + 1)
                .collect(),
        };
        let set = wire::number_set(refused);
        conn.tagged(
            tag,
            format!("OK [MODIFIED {set}] Conditional STORE failed for some"),
        );
    }
}

/// The untagged FETCH responses of a STORE (with MODSEQ under CONDSTORE even when silent,
/// RFC 7162 §3.1.3).
fn answer_store(
    conn: &mut Conn,
    selected: &mut Selected,
    updated: &[crate::message::MessageMeta],
    response: StoreResponse,
    uid: bool,
) {
    let view = &mut selected.view;
    for u in updated {
        let Ok(i) = view.messages.binary_search_by_key(&u.uid, |m| m.uid) else {
            continue;
        };
        let changed = view.messages[i].modseq != u.modseq;
        view.messages[i] = *u;
        if response == StoreResponse::Answer {
            conn.line(view.flag_update(i + 1, u, uid));
        } else if view.condstore && changed {
            let uid_part = format!("UID {} ", u.uid);
            conn.line(format!(
                "* {} FETCH ({uid_part}MODSEQ ({}))",
                i + 1,
                u.modseq.max(1)
            ));
        }
    }
}
