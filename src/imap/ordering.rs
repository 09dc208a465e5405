//! The SORT and THREAD commands (RFC 5256; SORT=DISPLAY, RFC 5957; ESORT, RFC 5267): the
//! messages matching the search criteria, ordered by `sortkeys` or threaded by `thread`,
//! from the sort fields of their headers.

use imap_codec::imap_types::core::{Charset, Tag, Vec1};
use imap_codec::imap_types::extensions::sort::SortCriterion;
use imap_codec::imap_types::extensions::thread::ThreadingAlgorithm;
use imap_codec::imap_types::search::SearchKey;

use super::matching::matching;
use super::search::{checked, Answer};
use super::sortkeys::{self, SortFields, SortItem};
use super::state::{Authed, Conn, Selected};
use super::thread;
use super::view::View;

/// What a SORT asks for.
pub(super) struct SortRequest {
    pub criteria: Vec<SortCriterion>,
    pub charset: Charset<'static>,
    pub search: Vec1<SearchKey<'static>>,
    pub uid: bool,
    /// ESORT RETURN options (empty: ALL); None for a plain SORT.
    pub returns: Option<Vec<String>>,
}

/// What a THREAD asks for.
pub(super) struct ThreadRequest {
    pub algorithm: ThreadingAlgorithm<'static>,
    pub charset: Charset<'static>,
    pub search: Vec1<SearchKey<'static>>,
    pub uid: bool,
}

pub(super) async fn sort(
    conn: &mut Conn,
    authed: &Authed,
    selected: &mut Selected,
    tag: &Tag<'_>,
    request: SortRequest,
) {
    let updating = super::search::wants_update(conn, selected, tag, &request.returns);
    let Some(updating) = updating else { return };
    let search = request.search.clone();
    let Some((found, fields)) =
        matched_fields(conn, authed, selected, tag, request.charset, request.search).await
    else {
        return;
    };
    let items = sort_items(&selected.view, &found, &fields);
    let order = sortkeys::sort(&items, &request.criteria);
    let numbers: Vec<u32> = order
        .iter()
        .map(|&k| match request.uid {
            true => items[k].uid,
            false => items[k].seq,
        })
        .collect();
    let answer = Answer {
        numbers: &numbers,
        uid: request.uid,
        modseq: None,
        sorted: true,
    };
    answer.write(conn, tag, request.returns.as_deref(), "SORT");
    if updating {
        let uids = order.iter().map(|&k| items[k].uid).collect();
        let key = super::contexts::freeze(SearchKey::And(search), &selected.view);
        super::search::keep(
            conn,
            selected,
            tag,
            key,
            request.uid,
            Some(request.criteria),
            uids,
        );
    }
    selected.sync(conn, authed, request.uid);
    conn.tagged(tag, "OK SORT completed");
}

pub(super) async fn thread(
    conn: &mut Conn,
    authed: &Authed,
    selected: &mut Selected,
    tag: &Tag<'_>,
    request: ThreadRequest,
) {
    let Some((found, fields)) =
        matched_fields(conn, authed, selected, tag, request.charset, request.search).await
    else {
        return;
    };
    let items = sort_items(&selected.view, &found, &fields);
    let threads = match request.algorithm {
        ThreadingAlgorithm::OrderedSubject => thread::ordered_subject(&items),
        ThreadingAlgorithm::References => thread::references(&items),
        ThreadingAlgorithm::Other(_) => {
            conn.bad(tag, "Unknown threading algorithm");
            return;
        }
    };
    let rendered = thread::render(&threads, |k| match request.uid {
        true => items[k].uid,
        false => items[k].seq,
    });
    let sep = if rendered.is_empty() { "" } else { " " };
    conn.line(format!("* THREAD{sep}{rendered}"));
    selected.sync(conn, authed, request.uid);
    conn.tagged(tag, "OK THREAD completed");
}

/// The messages matching a SORT or THREAD's search criteria and their sort fields; `None`
/// (answered) when the charset or the strings are refused.
async fn matched_fields(
    conn: &mut Conn,
    authed: &Authed,
    selected: &Selected,
    tag: &Tag<'_>,
    charset: Charset<'static>,
    search: Vec1<SearchKey<'static>>,
) -> Option<(Vec<usize>, Vec<SortFields>)> {
    let key = SearchKey::And(search);
    if let Err((bad, text)) = checked(&Some(charset), &key) {
        answer_refusal(conn, tag, bad, text);
        return None;
    }
    let found = matching(authed, selected, &key).await;
    let fields = sort_fields(authed, &selected.view, &found).await;
    Some((found, fields))
}

fn answer_refusal(conn: &mut Conn, tag: &Tag<'_>, bad: bool, text: &str) {
    match bad {
        true => conn.bad(tag, text),
        false => conn.tagged(tag, text),
    }
}

/// The UIDs of the messages matching `key`, in the order of `criteria` (an updating SORT
/// context sorts again with this).
pub(super) async fn sorted_uids(
    authed: &Authed,
    view: &View,
    criteria: &[SortCriterion],
    key: &SearchKey<'static>,
) -> Vec<u32> {
    let all = (0..view.messages.len()).collect();
    let found = super::matching::matching_among(authed, view, key, all).await;
    let fields = sort_fields(authed, view, &found).await;
    let items = sort_items(view, &found, &fields);
    (sortkeys::sort(&items, criteria).iter())
        .map(|&k| items[k].uid)
        .collect()
}

/// The sort fields of the messages at `indexes` of the view, from their headers (a message
/// that cannot be read sorts with empty fields).
async fn sort_fields(authed: &Authed, view: &View, indexes: &[usize]) -> Vec<SortFields> {
    super::matching::headers(authed, view, indexes)
        .await
        .into_iter()
        .map(|head| head.map(|h| sortkeys::extract(&h)).unwrap_or_default())
        .collect()
}

fn sort_items<'a>(view: &View, indexes: &[usize], fields: &'a [SortFields]) -> Vec<SortItem<'a>> {
    indexes
        .iter()
        .zip(fields)
        .map(|(&i, fields)| {
            let m = &view.messages[i];
            SortItem {
                seq: i as u32 + 1,
                uid: m.uid,
                arrival: m.received,
                size: m.size,
                fields,
            }
        })
        .collect()
}
