//! The commands that change a folder: STORE, EXPUNGE, UID EXPUNGE (UIDPLUS) and the
//! implicit expunge of CLOSE. Read-only folders (EXAMINE, the archive) refuse them.

use imap_codec::imap_types::core::Tag;
use imap_codec::imap_types::flag::{Flag, StoreResponse, StoreType};
use imap_codec::imap_types::sequence::SequenceSet;

use super::state::{Authed, Conn, Selected};
use super::wire;
use crate::message::Flags;
use crate::store::StoreError;

/// What a STORE asks for.
pub(super) struct StoreRequest<'a> {
    pub set: &'a SequenceSet,
    pub kind: StoreType,
    pub response: StoreResponse,
    pub flags: &'a [Flag<'a>],
    pub uid: bool,
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
    if selected.view.read_only {
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
    conn.tagged(tag, "OK EXPUNGE completed");
}

/// The system flags named in a STORE. Keywords are not kept (PERMANENTFLAGS has no `\*`).
fn system_flags(flags: &[Flag<'_>]) -> Flags {
    flags.iter().fold(Flags::default(), |acc, f| match f {
        Flag::Answered => acc.with(Flags::ANSWERED),
        Flag::Deleted => acc.with(Flags::DELETED),
        Flag::Draft => acc.with(Flags::DRAFT),
        Flag::Flagged => acc.with(Flags::FLAGGED),
        Flag::Seen => acc.with(Flags::SEEN),
        _ => acc,
    })
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
    } = request;
    if let Some(text) = refusal(selected, "NO [READ-ONLY] Mailbox is read-only (EXAMINE)") {
        conn.tagged(tag, text);
        return;
    }
    let view = &selected.view;
    if !uid && view.out_of_range(set) {
        conn.bad(tag, "Invalid message sequence number");
        return;
    }
    let given = system_flags(flags);
    let changes: Vec<(u32, Flags)> = view
        .select(set, uid)
        .into_iter()
        .map(|i| {
            let m = view.messages[i];
            let new = match kind {
                StoreType::Replace => given,
                StoreType::Add => m.flags.with(given),
                StoreType::Remove => m.flags.without(given),
            };
            (m.uid, new)
        })
        .collect();
    let (store, folder) = (authed.account.store.clone(), view.folder.clone());
    let updated = match tokio::task::spawn_blocking(move || store.set_flags(&folder, &changes))
        .await
        .map_err(StoreError::unavailable)
        .and_then(|r| r)
    {
        Ok(u) => u,
        Err(e) => {
            tracing::error!(error = %e, "store failed");
            conn.tagged(tag, "NO [UNAVAILABLE] Cannot store flags");
            return;
        }
    };
    let view = &mut selected.view;
    for u in &updated {
        if let Ok(i) = view.messages.binary_search_by_key(&u.uid, |m| m.uid) {
            view.messages[i].flags = u.flags;
            if response == StoreResponse::Answer {
                let uid_part = match uid {
                    true => format!("UID {} ", u.uid),
                    false => String::new(),
                };
                let flags = wire::flag_list(u.flags);
                conn.line(format!("* {} FETCH ({uid_part}FLAGS {flags})", i + 1));
            }
        }
    }
    selected.sync(conn, authed, uid);
    conn.tagged(tag, "OK STORE completed");
}
