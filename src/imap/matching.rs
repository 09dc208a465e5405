//! Which messages of the selected folder match SEARCH criteria, reading as little as the
//! answer needs: first the metadata and the store's text index answers (TEXT/BODY), then,
//! for the messages still undecided, the summary fields, then the header (from the store's
//! summary when it keeps one), and only then the whole message. Loads run on blocking
//! threads a window at a time (see `load`), so decryption uses every core and memory stays
//! bounded.
//!
//! Also the header loads of SORT and THREAD ([`headers`]).

use std::collections::VecDeque;
use std::sync::Arc;

use imap_codec::imap_types::search::SearchKey;

use super::criteria::{self, Bounds, Candidate, TextAnswers};
use super::load::{HeaderChunks, Loads};
use super::state::{Authed, Selected};
use super::view::View;
use crate::message::MessageMeta;
use crate::mime;
use crate::store::{FolderInfo, MailStore};
use crate::textindex::Verdict;

/// Messages per text-index request.
const TEXT_SLICE: usize = 4096;
/// Messages judged per blocking job on their summaries.
const JUDGE_CHUNK: usize = 1024;
/// Judging jobs in flight (the machine's cores share them; one more keeps them busy while
/// the session collects a finished one).
const JOBS_AHEAD: usize = 3;

/// Indexes (in the view) of the messages that match `key`, ascending.
pub(super) async fn matching(
    authed: &Authed,
    selected: &Selected,
    key: &SearchKey<'static>,
) -> Vec<usize> {
    let all = (0..selected.view.messages.len()).collect();
    matching_among(authed, &selected.view, key, all).await
}

/// The view indexes among `among` (ascending) of the messages that match `key`, ascending.
pub(super) async fn matching_among(
    authed: &Authed,
    view: &View,
    key: &SearchKey<'static>,
    among: Vec<usize>,
) -> Vec<usize> {
    let answers = Arc::new(text_answers(authed, view, key, &among).await);
    let (mut found, mut undecided) = decide_by_metadata(view, key, &answers, &among);
    // The store's summaries, judged on blocking threads: the SEARCH fields, then the
    // summary fields.
    let judge = Arc::new(Judge {
        key: key.clone(),
        exists: view.exists(),
        largest_uid: view.messages.last().map(|m| m.uid).unwrap_or(0),
        keywords: view.keywords.clone(),
        recent: view.recent.clone(),
        answers: answers.clone(),
    });
    for want in [Want::Search, Want::Fields] {
        if undecided.is_empty() {
            break;
        }
        let (yes, still) = decide_by_summaries(authed, view, undecided, want, &judge).await;
        found.extend(yes);
        undecided = still;
    }
    let bounds = judge.bounds();
    let answers_of = |i: usize| Some((&*answers, i));
    // The whole header.
    if !undecided.is_empty() {
        let mut still = Vec::new();
        let mut chunks = HeaderChunks::new(authed, view, &undecided, false);
        while let Some(chunk) = chunks.next().await {
            for (i, header) in chunk {
                let Some(header) = header else { continue };
                let c = Candidate {
                    seq: i as u32 + 1,
                    meta: &view.messages[i],
                    raw: Some(&header.raw),
                    whole: false,
                    only: header.fields_only.then_some(&mime::SUMMARY_FIELDS[..]),
                    decoded: false,
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
            only: None,
            decoded: false,
            answers: answers_of(i),
        };
        if criteria::matches(key, &c, &bounds) {
            found.push(i);
        }
    }
    found.sort_unstable();
    found
}

/// What the metadata and the text index decide: (matching, undecided) view indexes.
fn decide_by_metadata(
    view: &View,
    key: &SearchKey<'static>,
    answers: &TextAnswers,
    among: &[usize],
) -> (Vec<usize>, Vec<usize>) {
    let bounds = Bounds {
        exists: view.exists(),
        largest_uid: view.messages.last().map(|m| m.uid).unwrap_or(0),
        keywords: &view.keywords,
        recent: &view.recent,
    };
    let (mut found, mut undecided) = (Vec::new(), Vec::new());
    for &i in among {
        let c = Candidate {
            seq: i as u32 + 1,
            meta: &view.messages[i],
            raw: None,
            whole: false,
            only: None,
            decoded: false,
            answers: Some((answers, i)),
        };
        match criteria::eval(key, &c, &bounds) {
            Some(true) => found.push(i),
            Some(false) => {}
            None => undecided.push(i),
        }
    }
    (found, undecided)
}

/// Which summary a stage reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// The [`mime::SEARCH_FIELDS`] lines.
    Search,
    /// The [`mime::SUMMARY_FIELDS`] lines.
    Fields,
}

/// A search as the blocking threads judge it (owned: it crosses threads).
struct Judge {
    key: SearchKey<'static>,
    exists: u32,
    largest_uid: u32,
    keywords: Vec<String>,
    recent: std::collections::HashSet<u32>,
    answers: Arc<TextAnswers>,
}

impl Judge {
    fn bounds(&self) -> Bounds<'_> {
        Bounds {
            exists: self.exists,
            largest_uid: self.largest_uid,
            keywords: &self.keywords,
            recent: &self.recent,
        }
    }

    /// Judges a chunk on its summaries: (matching, undecided) view indexes. Blocking.
    fn chunk(
        &self,
        store: &dyn MailStore,
        folder: &FolderInfo,
        chunk: &[(usize, MessageMeta)],
        want: Want,
    ) -> (Vec<usize>, Vec<usize>) {
        let metas: Vec<MessageMeta> = chunk.iter().map(|(_, m)| *m).collect();
        let headers: Vec<Option<Vec<u8>>> = match want {
            Want::Search => store.search_fields(folder, &metas),
            Want::Fields => store
                .fields(folder, &metas)
                .map(|f| f.into_iter().map(|f| f.map(|f| f.header)).collect()),
        }
        .unwrap_or_else(|_| vec![None; metas.len()]);
        let only = match want {
            Want::Search => &mime::SEARCH_FIELDS[..],
            Want::Fields => &mime::SUMMARY_FIELDS[..],
        };
        let bounds = self.bounds();
        let (mut found, mut undecided) = (Vec::new(), Vec::new());
        for ((i, meta), header) in chunk.iter().zip(headers) {
            let Some(header) = header else {
                undecided.push(*i);
                continue;
            };
            let c = Candidate {
                seq: *i as u32 + 1,
                meta,
                raw: Some(&header),
                whole: false,
                only: Some(only),
                decoded: want == Want::Search,
                answers: Some((&self.answers, *i)),
            };
            match criteria::eval(&self.key, &c, &bounds) {
                Some(true) => found.push(*i),
                Some(false) => {}
                None => undecided.push(*i),
            }
        }
        (found, undecided)
    }
}

/// Judges `undecided` on the store's `want` summaries, [`JUDGE_CHUNK`] messages per
/// blocking job, [`JOBS_AHEAD`] jobs at a time: (matching, still undecided) view indexes.
async fn decide_by_summaries(
    authed: &Authed,
    view: &View,
    undecided: Vec<usize>,
    want: Want,
    judge: &Arc<Judge>,
) -> (Vec<usize>, Vec<usize>) {
    let (mut found, mut still) = (Vec::new(), Vec::new());
    let mut chunks = undecided.chunks(JUDGE_CHUNK);
    let mut jobs = VecDeque::new();
    loop {
        while jobs.len() < JOBS_AHEAD {
            let Some(chunk) = chunks.next() else { break };
            let chunk: Vec<(usize, MessageMeta)> =
                chunk.iter().map(|&i| (i, view.messages[i])).collect();
            let (store, folder) = (authed.account.store.clone(), view.folder.clone());
            let judge = judge.clone();
            jobs.push_back(tokio::task::spawn_blocking(move || {
                judge.chunk(&*store, &folder, &chunk, want)
            }));
        }
        let Some(job) = jobs.pop_front() else { break };
        match job.await {
            Ok((yes, maybe)) => {
                found.extend(yes);
                still.extend(maybe);
            }
            Err(e) => {
                tracing::warn!(error = %e, "a search job failed: reading the messages");
                return (Vec::new(), undecided);
            }
        }
    }
    (found, still)
}

/// The store index's answers for every TEXT/BODY key (none without an index) about the
/// messages `among`, asked in slices on two blocking threads.
async fn text_answers(
    authed: &Authed,
    view: &View,
    key: &SearchKey<'static>,
    among: &[usize],
) -> TextAnswers {
    let mut answers = TextAnswers::default();
    criteria::text_keys(key, &mut answers.keys);
    for (needle, text) in answers.keys.clone() {
        let mut verdicts = Vec::with_capacity(among.len());
        let mut jobs = VecDeque::new();
        let mut slices = among.chunks(TEXT_SLICE);
        loop {
            while jobs.len() < 2 {
                let Some(slice) = slices.next() else { break };
                let (store, folder) = (authed.account.store.clone(), view.folder.clone());
                let metas: Vec<MessageMeta> = slice.iter().map(|&i| view.messages[i]).collect();
                let needle = needle.clone();
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
        answers.verdicts.push(by_view_index(view, among, verdicts));
    }
    answers
}

/// Verdicts about the messages `among` placed at their view indexes (the others: ask the
/// message); none at all when the index did not answer for every one of them.
fn by_view_index(view: &View, among: &[usize], verdicts: Vec<Verdict>) -> Vec<Verdict> {
    if verdicts.len() != among.len() {
        return Vec::new();
    }
    if among.len() == view.messages.len() {
        return verdicts;
    }
    let mut all = vec![Verdict::Maybe; view.messages.len()];
    for (&i, v) in among.iter().zip(verdicts) {
        all[i] = v;
    }
    all
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
