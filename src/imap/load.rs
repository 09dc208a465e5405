//! Loading messages for FETCH, SEARCH and SORT: a whole message (or, when large, its
//! header and body line count) or only its header, decrypted on blocking threads; headers in
//! chunks from the store's summaries when it keeps them ([`HeaderChunks`]), messages a
//! window at a time ([`Loads`]).

use std::collections::VecDeque;
use std::io::Read;

use tokio::task::JoinHandle;

use super::render::{self, Content};
use super::state::Authed;
use super::view::View;
use crate::message::MessageMeta;
use crate::store::{FolderInfo, MailStore, StoreError};

/// Loads in flight at once.
const WINDOW: usize = 16;

pub(super) async fn joined(
    handle: JoinHandle<Result<Content, StoreError>>,
) -> Result<Content, StoreError> {
    handle.await.map_err(StoreError::unavailable)?
}

/// What to load of a message.
#[derive(Debug, Clone, Copy)]
pub(super) enum Load {
    /// Only the header.
    Header,
    /// The whole message when small, else its header (and the body's line count).
    Whole { count_lines: bool },
}

/// The header of a message read from its start (up to [`render::MAX_HEADER`]).
fn read_header(mut reader: impl Read) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(8192);
    let mut buf = [0u8; 8192];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            return Ok(head);
        }
        head.extend_from_slice(&buf[..n]);
        let end = crate::mime::header_end(&head);
        if end < head.len() || head.len() >= render::MAX_HEADER {
            head.truncate(end.min(render::MAX_HEADER));
            return Ok(head);
        }
    }
}

/// Starts decrypting a message on a blocking thread (FETCH reads ahead with this). A large
/// message keeps only its header; with `count_lines` the rest is read once to count its lines.
pub(super) fn start_load(
    authed: &Authed,
    folder: &FolderInfo,
    meta: &MessageMeta,
    how: Load,
) -> JoinHandle<Result<Content, StoreError>> {
    let (store, folder, meta) = (authed.account.store.clone(), folder.clone(), *meta);
    tokio::task::spawn_blocking(move || {
        let io = |e: std::io::Error| StoreError::unavailable(e);
        let count_lines = match how {
            Load::Header => {
                let head = match store.header(&folder, &meta)? {
                    Some(head) => head,
                    None => read_header(store.open(&folder, &meta)?).map_err(io)?,
                };
                return Ok(Content::header_only(head, meta.size, None));
            }
            Load::Whole { count_lines } => count_lines,
        };
        let reader = store.open(&folder, &meta)?;
        if meta.size <= render::IN_MEMORY_MAX {
            let mut raw = Vec::with_capacity(meta.size as usize);
            reader
                .take(render::IN_MEMORY_MAX)
                .read_to_end(&mut raw)
                .map_err(io)?;
            Ok(Content::whole(raw))
        } else {
            let mut reader = reader;
            let mut head = Vec::new();
            (&mut reader)
                .take(render::MAX_HEADER as u64)
                .read_to_end(&mut head)
                .map_err(io)?;
            let lines = match count_lines {
                true => Some(body_lines(&head, reader).map_err(io)?),
                false => None,
            };
            Ok(Content::header_only(head, meta.size, lines))
        }
    })
}

/// Lines of the body of a message whose first bytes are `head` and whose rest `rest` yields.
fn body_lines(head: &[u8], mut rest: impl Read) -> std::io::Result<u64> {
    let end = crate::mime::header_end(head);
    let mut lines = memchr::memchr_iter(b'\n', &head[end..]).count() as u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match rest.read(&mut buf)? {
            0 => return Ok(lines),
            n => lines += memchr::memchr_iter(b'\n', &buf[..n]).count() as u64,
        }
    }
}

/// Headers of messages in order, [`CHUNK`] at a time: from the store's summaries in one
/// blocking call per chunk (only the summary fields and the ENVELOPE with `fields_only`),
/// and read from the messages where the store has none.
pub(super) struct HeaderChunks<'a> {
    authed: &'a Authed,
    folder: FolderInfo,
    /// (view index, message), in the order wanted.
    messages: Vec<(usize, MessageMeta)>,
    fields_only: bool,
    next: usize,
    /// Chunks being read from the store's summaries.
    ahead: VecDeque<(Vec<(usize, MessageMeta)>, Summaries)>,
}

type Summaries = JoinHandle<Vec<Option<Content>>>;

/// Headers asked of the store at once.
const CHUNK: usize = 256;
/// Chunks read at once (the machine's cores share them).
const CHUNKS_AHEAD: usize = 2;

impl<'a> HeaderChunks<'a> {
    pub(super) fn new(
        authed: &'a Authed,
        view: &View,
        indexes: &[usize],
        fields_only: bool,
    ) -> Self {
        HeaderChunks {
            authed,
            folder: view.folder.clone(),
            messages: indexes.iter().map(|&i| (i, view.messages[i])).collect(),
            fields_only,
            next: 0,
            ahead: VecDeque::new(),
        }
    }

    /// Starts reading the following chunks from the store's summaries.
    fn read_ahead(&mut self) {
        while self.ahead.len() < CHUNKS_AHEAD && self.next < self.messages.len() {
            let end = (self.next + CHUNK).min(self.messages.len());
            let chunk = self.messages[self.next..end].to_vec();
            self.next = end;
            let (store, folder) = (self.authed.account.store.clone(), self.folder.clone());
            let fields_only = self.fields_only;
            let metas: Vec<MessageMeta> = chunk.iter().map(|(_, m)| *m).collect();
            let job = tokio::task::spawn_blocking(move || {
                summaries(&*store, &folder, &metas, fields_only)
            });
            self.ahead.push_back((chunk, job));
        }
    }

    /// The next chunk: (view index, header content or `None` when it cannot be read).
    pub(super) async fn next(&mut self) -> Option<Vec<(usize, Option<Content>)>> {
        self.read_ahead();
        let (chunk, job) = self.ahead.pop_front()?;
        self.read_ahead();
        let from_summaries = job
            .await
            .unwrap_or_else(|_| chunk.iter().map(|_| None).collect());
        let missing: Vec<(usize, MessageMeta)> = chunk
            .iter()
            .zip(&from_summaries)
            .filter(|(_, c)| c.is_none())
            .map(|(m, _)| *m)
            .collect();
        let mut out: Vec<(usize, Option<Content>)> =
            chunk.iter().map(|(i, _)| *i).zip(from_summaries).collect();
        let mut loads = Loads::new(self.authed, &self.folder, missing, false);
        let mut slot = out.iter_mut().filter(|(_, c)| c.is_none());
        while let Some((_, content)) = loads.next().await {
            if let Some(entry) = slot.next() {
                entry.1 = content;
            }
        }
        Some(out)
    }
}

/// Header contents of `metas` from the store's summaries: the fields when asked (else, or
/// when it has none, the whole header); `None` where it keeps neither. Blocking.
fn summaries(
    store: &dyn MailStore,
    folder: &FolderInfo,
    metas: &[MessageMeta],
    fields_only: bool,
) -> Vec<Option<Content>> {
    let n = metas.len();
    let mut out: Vec<Option<Content>> = metas.iter().map(|_| None).collect();
    if fields_only {
        if let Ok(fields) = store.fields(folder, metas) {
            for ((slot, f), m) in out.iter_mut().zip(fields).zip(metas) {
                *slot = f.map(|f| Content::fields(f, m.size));
            }
        }
    }
    let missing: Vec<usize> = (0..n).filter(|&k| out[k].is_none()).collect();
    if missing.is_empty() {
        return out;
    }
    let wanted: Vec<MessageMeta> = missing.iter().map(|&k| metas[k]).collect();
    if let Ok(headers) = store.headers(folder, &wanted) {
        for (k, h) in missing.into_iter().zip(headers) {
            out[k] = h.map(|h| Content::header_only(h, metas[k].size, None));
        }
    }
    out
}

/// Messages loaded in order, [`WINDOW`] at a time.
pub(super) struct Loads<'a> {
    authed: &'a Authed,
    folder: &'a FolderInfo,
    messages: Vec<(usize, MessageMeta)>,
    whole: bool,
    next: usize,
    ahead: VecDeque<(usize, JoinHandle<Result<Content, StoreError>>)>,
}

impl<'a> Loads<'a> {
    pub(super) fn new(
        authed: &'a Authed,
        folder: &'a FolderInfo,
        messages: Vec<(usize, MessageMeta)>,
        whole: bool,
    ) -> Self {
        Loads {
            authed,
            folder,
            messages,
            whole,
            next: 0,
            ahead: VecDeque::new(),
        }
    }

    /// The next message: (view index, content or `None` when it cannot be read).
    pub(super) async fn next(&mut self) -> Option<(usize, Option<Content>)> {
        while self.ahead.len() < WINDOW && self.next < self.messages.len() {
            let (i, meta) = self.messages[self.next];
            self.next += 1;
            let how = match self.whole {
                true => Load::Whole { count_lines: false },
                false => Load::Header,
            };
            let handle = start_load(self.authed, self.folder, &meta, how);
            self.ahead.push_back((i, handle));
        }
        let (i, handle) = self.ahead.pop_front()?;
        Some((i, handle.await.ok().and_then(Result::ok)))
    }
}
