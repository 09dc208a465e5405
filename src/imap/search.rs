//! The SEARCH command (RFC 3501 §6.4.4): charset check, then each message of the selected
//! folder tested against the criteria (see `criteria`), decrypting only when a key needs the
//! message content.

use imap_codec::imap_types::core::{Charset, Tag, Vec1};
use imap_codec::imap_types::search::SearchKey;

use super::criteria::{self, Bounds, Candidate};
use super::fetch::load;
use super::state::{Authed, Conn, Selected};

pub(super) async fn command(
    conn: &mut Conn,
    authed: &Authed,
    selected: &mut Selected,
    tag: &Tag<'_>,
    charset: Option<Charset<'static>>,
    criteria: Vec1<SearchKey<'static>>,
    uid: bool,
) {
    let charset_ok = charset.as_ref().is_none_or(|c| {
        let c: &str = c.as_ref();
        c.eq_ignore_ascii_case("UTF-8") || c.eq_ignore_ascii_case("US-ASCII")
    });
    let key = SearchKey::And(criteria);
    if !charset_ok {
        conn.tagged(tag, "NO [BADCHARSET (UTF-8 US-ASCII)] Unsupported charset");
    } else if !criteria::strings_are_utf8(&key) {
        conn.bad(tag, "Search string is not valid UTF-8");
    } else {
        search(conn, authed, selected, tag, key, uid).await;
    }
}

async fn search(
    conn: &mut Conn,
    authed: &Authed,
    selected: &mut Selected,
    tag: &Tag<'_>,
    key: SearchKey<'static>,
    uid: bool,
) {
    let view = &selected.view;
    let bounds = Bounds {
        exists: view.exists(),
        largest_uid: view.messages.last().map(|m| m.uid).unwrap_or(0),
    };
    let needs = criteria::needs_content(&key);
    let mut found = Vec::new();
    for (i, meta) in view.messages.iter().enumerate() {
        let content = if needs {
            match load(authed, &view.folder, meta).await {
                Ok(c) => Some(c),
                Err(_) => continue,
            }
        } else {
            None
        };
        let candidate = Candidate {
            seq: i as u32 + 1,
            meta,
            raw: content.as_ref().map(|c| c.raw.as_slice()),
        };
        if criteria::matches(&key, &candidate, &bounds) {
            found.push(if uid { meta.uid } else { i as u32 + 1 });
        }
    }
    let list: Vec<String> = found.iter().map(u32::to_string).collect();
    if list.is_empty() {
        conn.line("* SEARCH");
    } else {
        conn.line(format!("* SEARCH {}", list.join(" ")));
    }
    selected.sync(conn, authed, uid);
    conn.tagged(tag, "OK SEARCH completed");
}
