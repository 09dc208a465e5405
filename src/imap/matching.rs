//! Which messages of the selected folder match SEARCH criteria, reading as little as the
//! answer needs: first the metadata and the store's text index answers (TEXT/BODY), then,
//! for the messages still undecided, the header (from the store's summary when it keeps
//! one), and only then the whole message. Loads run on blocking threads, a window of them
//! at a time, so decryption uses every core; at most [`WINDOW`] messages are in memory.
//!
//! Also the header loads of SORT and THREAD ([`headers`]).

use super::criteria::{self, Bounds, Candidate, TextAnswer};
use super::load::{HeaderChunks, Loads};
use super::state::{Authed, Selected};
use super::view::View;
use crate::message::MessageMeta;
use imap_codec::imap_types::search::SearchKey;

/// Indexes (in the view) of the messages that match `key`, ascending.
pub(super) async fn matching(
    authed: &Authed,
    selected: &Selected,
    key: &SearchKey<'static>,
) -> Vec<usize> {
    let view = &selected.view;
    let bounds = Bounds {
        exists: view.exists(),
        largest_uid: view.messages.last().map(|m| m.uid).unwrap_or(0),
        keywords: &view.keywords,
        recent: &view.recent,
    };
    let answers = text_answers(authed, view, key).await;
    let answers_of = |i: usize| answers.get(i).map_or(&[][..], |a| a.as_slice());
    let mut found = Vec::new();
    let mut undecided = Vec::new();
    for (i, meta) in view.messages.iter().enumerate() {
        let c = Candidate {
            seq: i as u32 + 1,
            meta,
            raw: None,
            whole: false,
            fields_only: false,
            answers: answers_of(i),
        };
        match criteria::eval(key, &c, &bounds) {
            Some(true) => found.push(i),
            Some(false) => {}
            None => undecided.push(i),
        }
    }
    // The summary fields, then the whole header.
    for fields_only in [true, false] {
        if undecided.is_empty() {
            break;
        }
        let mut still = Vec::new();
        let mut chunks = HeaderChunks::new(authed, view, &undecided, fields_only);
        while let Some(chunk) = chunks.next().await {
            for (i, header) in chunk {
                let Some(header) = header else { continue };
                let c = Candidate {
                    seq: i as u32 + 1,
                    meta: &view.messages[i],
                    raw: Some(&header.raw),
                    whole: false,
                    fields_only: header.fields_only,
                    answers: answers_of(i),
                };
                match criteria::eval(key, &c, &bounds) {
                    Some(true) => found.push(i),
                    Some(false) => {}
                    None => still.push(i),
                }
            }
        }
        undecided = still;
    }
    let rest = undecided.iter().map(|&i| (i, view.messages[i])).collect();
    let mut loads = Loads::new(authed, &view.folder, rest, true);
    while let Some((i, content)) = loads.next().await {
        let Some(content) = content else { continue };
        let c = Candidate {
            seq: i as u32 + 1,
            meta: &view.messages[i],
            raw: Some(&content.raw),
            whole: content.whole,
            fields_only: false,
            answers: answers_of(i),
        };
        if criteria::matches(key, &c, &bounds) {
            found.push(i);
        }
    }
    found.sort_unstable();
    found
}

/// The store index's answers for every TEXT/BODY key, per message (empty without index).
async fn text_answers(
    authed: &Authed,
    view: &View,
    key: &SearchKey<'static>,
) -> Vec<Vec<TextAnswer>> {
    let mut keys = Vec::new();
    criteria::text_keys(key, &mut keys);
    if keys.is_empty() {
        return Vec::new();
    }
    let (store, folder) = (authed.account.store.clone(), view.folder.clone());
    let metas: Vec<MessageMeta> = view.messages.clone();
    let job = tokio::task::spawn_blocking(move || {
        let mut out: Vec<Vec<TextAnswer>> = vec![Vec::new(); metas.len()];
        for (needle, text) in keys {
            let verdicts = match store.text_verdicts(&folder, &metas, &needle, text) {
                Ok(Some(v)) if v.len() == metas.len() => v,
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "text index unavailable: reading the messages");
                    continue;
                }
            };
            for (answers, verdict) in out.iter_mut().zip(verdicts) {
                answers.push(TextAnswer {
                    needle: needle.clone(),
                    text,
                    verdict,
                });
            }
        }
        out
    });
    job.await.unwrap_or_default()
}

/// The headers of the messages at `indexes`, in that order (`None`: unreadable).
pub(super) async fn headers(
    authed: &Authed,
    view: &View,
    indexes: &[usize],
) -> Vec<Option<Vec<u8>>> {
    let mut out = Vec::with_capacity(indexes.len());
    let mut chunks = HeaderChunks::new(authed, view, indexes, true);
    while let Some(chunk) = chunks.next().await {
        out.extend(chunk.into_iter().map(|(_, header)| header.map(|c| c.raw)));
    }
    out
}
