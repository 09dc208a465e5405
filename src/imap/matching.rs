//! Which messages of the selected folder match SEARCH criteria, reading as little as the
//! answer needs: first the metadata and the store's text index answers (TEXT/BODY), then,
//! for the messages still undecided, the summary fields, then the header (from the store's
//! summary when it keeps one), and only then the whole message. Loads run on blocking
//! threads a window at a time (see `load`), so decryption uses every core and memory stays
//! bounded.
//!
//! Also the header loads of SORT and THREAD ([`headers`]).

use std::collections::VecDeque;

use imap_codec::imap_types::search::SearchKey;

use super::criteria::{self, Bounds, Candidate, TextAnswers};
use super::load::{HeaderChunks, Loads};
use super::state::{Authed, Selected};
use super::view::View;

/// Messages per text-index request.
const TEXT_SLICE: usize = 4096;

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
    let answers_of = |i: usize| Some((&answers, i));
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

/// The store index's answers for every TEXT/BODY key (none without an index), asked in
/// slices on two blocking threads.
async fn text_answers(authed: &Authed, view: &View, key: &SearchKey<'static>) -> TextAnswers {
    let mut answers = TextAnswers::default();
    criteria::text_keys(key, &mut answers.keys);
    for (needle, text) in answers.keys.clone() {
        let mut verdicts = Vec::with_capacity(view.messages.len());
        let mut jobs = VecDeque::new();
        let mut slices = view.messages.chunks(TEXT_SLICE);
        loop {
            while jobs.len() < 2 {
                let Some(slice) = slices.next() else { break };
                let (store, folder) = (authed.account.store.clone(), view.folder.clone());
                let (metas, needle) = (slice.to_vec(), needle.clone());
                jobs.push_back(tokio::task::spawn_blocking(move || {
                    store.text_verdicts(&folder, &metas, &needle, text)
                }));
            }
            let Some(job) = jobs.pop_front() else { break };
            match job.await {
                Ok(Ok(Some(v))) => verdicts.extend(v),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "text index unavailable: reading the messages");
                    break;
                }
                _ => break,
            }
        }
        if verdicts.len() != view.messages.len() {
            verdicts.clear();
        }
        answers.verdicts.push(verdicts);
    }
    answers
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
