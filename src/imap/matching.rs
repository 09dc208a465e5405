//! Which messages of the selected folder match SEARCH criteria, reading as little as the
//! answer needs: first the metadata and the store's text index answers (TEXT/BODY), then,
//! for the messages still undecided, the header (from the store's summary when it keeps
//! one), and only then the whole message. Loads run on blocking threads, a window of them
//! at a time, so decryption uses every core; at most [`WINDOW`] messages are in memory.
//!
//! Also the header loads of SORT and THREAD ([`headers`]).

use std::collections::VecDeque;

use imap_codec::imap_types::search::SearchKey;
use tokio::task::JoinHandle;

use super::criteria::{self, Bounds, Candidate, TextAnswer};
use super::fetch::{start_load, Load};
use super::render::Content;
use super::state::{Authed, Selected};
use super::view::View;
use crate::message::MessageMeta;
use crate::store::StoreError;

/// Loads in flight at once.
const WINDOW: usize = 16;

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
            answers: answers_of(i),
        };
        match criteria::eval(key, &c, &bounds) {
            Some(true) => found.push(i),
            Some(false) => {}
            None => undecided.push(i),
        }
    }
    if !undecided.is_empty() {
        let mut still = Vec::new();
        let mut chunks = HeaderChunks::new(authed, view, &undecided);
        while let Some(chunk) = chunks.next().await {
            for (i, header) in chunk {
                let Some(header) = header else { continue };
                let c = Candidate {
                    seq: i as u32 + 1,
                    meta: &view.messages[i],
                    raw: Some(&header),
                    whole: false,
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
    let mut loads = Loads::new(authed, view, &undecided, true);
    while let Some((i, content)) = loads.next().await {
        let Some(content) = content else { continue };
        let c = Candidate {
            seq: i as u32 + 1,
            meta: &view.messages[i],
            raw: Some(&content.raw),
            whole: content.whole,
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
    let mut chunks = HeaderChunks::new(authed, view, indexes);
    while let Some(chunk) = chunks.next().await {
        out.extend(chunk.into_iter().map(|(_, header)| header));
    }
    out
}

/// Headers of messages in order, [`CHUNK`] at a time: from the store's summaries in one
/// blocking call per chunk, and read from the messages where the store has none.
struct HeaderChunks<'a> {
    authed: &'a Authed,
    view: &'a View,
    indexes: &'a [usize],
    next: usize,
}

/// Headers asked of the store at once.
const CHUNK: usize = 512;

impl<'a> HeaderChunks<'a> {
    fn new(authed: &'a Authed, view: &'a View, indexes: &'a [usize]) -> Self {
        HeaderChunks {
            authed,
            view,
            indexes,
            next: 0,
        }
    }

    /// The next chunk: (view index, header or `None` when it cannot be read).
    async fn next(&mut self) -> Option<Vec<(usize, Option<Vec<u8>>)>> {
        let chunk = &self.indexes[self.next..(self.next + CHUNK).min(self.indexes.len())];
        if chunk.is_empty() {
            return None;
        }
        self.next += chunk.len();
        let (store, folder) = (self.authed.account.store.clone(), self.view.folder.clone());
        let metas: Vec<MessageMeta> = chunk.iter().map(|&i| self.view.messages[i]).collect();
        let n = metas.len();
        let summaries = tokio::task::spawn_blocking(move || store.headers(&folder, &metas))
            .await
            .ok()
            .and_then(Result::ok)
            .filter(|h| h.len() == n)
            .unwrap_or_else(|| vec![None; n]);
        let mut out: Vec<(usize, Option<Vec<u8>>)> = chunk.iter().copied().zip(summaries).collect();
        let missing: Vec<usize> = out
            .iter()
            .filter(|(_, h)| h.is_none())
            .map(|(i, _)| *i)
            .collect();
        let mut loads = Loads::new(self.authed, self.view, &missing, false);
        let mut slot = out.iter_mut().filter(|(_, h)| h.is_none());
        while let Some((_, content)) = loads.next().await {
            if let Some(entry) = slot.next() {
                entry.1 = content.map(|c| c.raw);
            }
        }
        Some(out)
    }
}

/// Messages loaded in order, [`WINDOW`] at a time.
struct Loads<'a> {
    authed: &'a Authed,
    view: &'a View,
    indexes: &'a [usize],
    whole: bool,
    next: usize,
    ahead: VecDeque<(usize, JoinHandle<Result<Content, StoreError>>)>,
}

impl<'a> Loads<'a> {
    fn new(authed: &'a Authed, view: &'a View, indexes: &'a [usize], whole: bool) -> Self {
        Loads {
            authed,
            view,
            indexes,
            whole,
            next: 0,
            ahead: VecDeque::new(),
        }
    }

    /// The next message: (view index, content or `None` when it cannot be read).
    async fn next(&mut self) -> Option<(usize, Option<Content>)> {
        while self.ahead.len() < WINDOW && self.next < self.indexes.len() {
            let i = self.indexes[self.next];
            self.next += 1;
            let how = match self.whole {
                true => Load::Whole { count_lines: false },
                false => Load::Header,
            };
            let handle = start_load(self.authed, &self.view.folder, &self.view.messages[i], how);
            self.ahead.push_back((i, handle));
        }
        let (i, handle) = self.ahead.pop_front()?;
        Some((i, handle.await.ok().and_then(Result::ok)))
    }
}
