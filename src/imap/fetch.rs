//! The FETCH command: resolves the sequence set, decrypts the chosen messages ahead on
//! blocking threads (so decryption overlaps sending), sets `\Seen` where the items imply it,
//! and writes each response as `render` cuts it, streaming large bodies from the store.

use std::collections::VecDeque;
use std::io::Read;
use std::sync::Arc;

use imap_codec::imap_types::core::Tag;
use imap_codec::imap_types::fetch::MessageDataItemName;
use imap_codec::imap_types::sequence::SequenceSet;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::load::{joined, start_load, HeaderChunks, Load};
use super::render::{self, Chunk, Content, Renderer};
use super::state::{Authed, Conn, Selected, FLUSH_AT};
use crate::message::{Flags, MessageMeta};
use crate::net::Stream;
use crate::store::{FolderInfo, MailStore, StoreError};

/// FETCH decrypts following messages ahead while this much is not yet sent.
const PREFETCH_BYTES: u64 = 4 * 1024 * 1024;

/// What a FETCH asks for.
pub(super) struct Request<'a> {
    pub set: &'a SequenceSet,
    pub items: &'a [MessageDataItemName<'static>],
    pub uid: bool,
    /// RFC 7162 CHANGEDSINCE: only messages changed after this modseq.
    pub changed_since: Option<u64>,
    /// RFC 7162 VANISHED (UID FETCH with CHANGEDSINCE under QRESYNC).
    pub vanished: bool,
}

pub(super) async fn command(
    conn: &mut Conn,
    authed: &Authed,
    selected: &mut Selected,
    tag: &Tag<'_>,
    request: Request<'_>,
    stream: &mut Stream,
) -> std::io::Result<()> {
    let Request {
        set,
        items,
        uid,
        changed_since,
        vanished: report_vanished,
    } = request;
    if report_vanished && !(uid && changed_since.is_some() && conn.qresync) {
        conn.bad(tag, "VANISHED needs UID FETCH, CHANGEDSINCE and QRESYNC");
        return Ok(());
    }
    if changed_since.is_some() || items.contains(&MessageDataItemName::ModSeq) {
        selected.enable_condstore(conn, authed);
    }
    let view = &selected.view;
    if !uid && view.out_of_range(set) {
        conn.bad(tag, "Invalid message sequence number");
        return Ok(());
    }
    if report_vanished {
        report_gone(conn, view, set);
    }
    let mut chosen = view.select(set, uid);
    if let Some(since) = changed_since {
        chosen.retain(|&i| view.messages[i].modseq > since);
    }
    let with_modseq;
    let items: &[MessageDataItemName<'static>] =
        if changed_since.is_some() && !items.contains(&MessageDataItemName::ModSeq) {
            with_modseq = [items, &[MessageDataItemName::ModSeq]].concat();
            &with_modseq
        } else {
            items
        };
    let needs = render::needs_content(items);
    let header_only = render::header_suffices(items);
    let count_lines = render::needs_structure(items);
    let sets_seen = render::sets_seen(items) && !view.read_only;
    let audited = render::returns_body(items);
    let mut fetched = Vec::new();
    let mut vanished = false;
    let mut unknown_cte = false;
    let mut ahead: VecDeque<(JoinHandle<Result<Content, StoreError>>, u64)> = VecDeque::new();
    let (mut next, mut ahead_bytes) = (0usize, 0u64);
    // Header-only items: headers in chunks (from the store's summaries when it has them).
    let fields_only = render::fields_suffice(items);
    let mut headers =
        (needs && header_only).then(|| HeaderChunks::new(authed, view, &chosen, fields_only));
    let mut chunk: VecDeque<(usize, Option<Content>)> = VecDeque::new();
    for (k, &i) in chosen.iter().enumerate() {
        if needs && !header_only {
            while next < chosen.len() && (next == k || ahead_bytes < PREFETCH_BYTES) {
                let m = selected.view.messages[chosen[next]];
                let size = m.size.min(render::IN_MEMORY_MAX);
                let how = Load::Whole { count_lines };
                let load = start_load(authed, &selected.view.folder, &m, how);
                ahead.push_back((load, size));
                ahead_bytes += size;
                next += 1;
            }
        }
        let mut meta = selected.view.messages[i];
        let loaded = if let Some(chunks) = headers.as_mut() {
            if chunk.is_empty() {
                chunk.extend(chunks.next().await.unwrap_or_default());
            }
            match chunk.pop_front() {
                Some((_, Some(content))) => Ok(content),
                _ => Err(StoreError::NoSuchMessage),
            }
        } else if needs {
            let (handle, size) = ahead.pop_front().expect("loaded ahead");
            ahead_bytes -= size;
            joined(handle).await
        } else {
            Err(StoreError::NoSuchMessage)
        };
        let content = match (needs, loaded) {
            (false, _) => None,
            (true, Ok(c)) => Some(c),
            (true, Err(e)) => {
                if !matches!(e, StoreError::NoSuchMessage) {
                    tracing::error!(uid = meta.uid, error = %e, "cannot read message");
                }
                vanished = true;
                continue;
            }
        };
        if content
            .as_ref()
            .is_some_and(|c| render::unknown_cte(items, c))
        {
            unknown_cte = true;
            continue;
        }
        let mut add_flags = false;
        if sets_seen && !meta.flags.contains(Flags::SEEN) {
            if let Some(now) = mark_seen(authed, &selected.view.folder, &meta).await {
                meta = now;
                selected.view.messages[i] = now;
                add_flags = true;
            }
        }
        if audited {
            fetched.push(meta.uid);
        }
        let changed = match (add_flags, selected.view.condstore) {
            (false, _) => render::Changed::No,
            (true, false) => render::Changed::Flags,
            (true, true) => render::Changed::WithModSeq,
        };
        let mut renderer = Renderer::new(i as u32 + 1);
        let flags = selected.view.flag_list(&meta);
        // One item at a time: rendered, written, dropped; then the closing parenthesis.
        for step in items.iter().map(Some).chain([None]) {
            match step {
                Some(item) => renderer.item(&meta, &flags, item, content.as_ref()),
                None => renderer.end(&meta, &flags, items, changed),
            }
            let chunks = renderer.take();
            let loaded = content.as_ref();
            write(conn, stream, chunks, loaded, authed, selected, &meta).await?;
        }
    }
    if !fetched.is_empty() {
        let (store, folder) = (authed.account.store.clone(), selected.view.folder.clone());
        // The store may look things up to record it: off the async threads.
        tokio::task::spawn_blocking(move || store.fetched(&folder, &fetched));
    }
    selected.sync(conn, authed, uid);
    if unknown_cte {
        conn.tagged(
            tag,
            "NO [UNKNOWN-CTE] A part has a transfer encoding this server cannot decode",
        );
    } else if vanished {
        conn.tagged(
            tag,
            "NO [EXPUNGEISSUED] Some messages were expunged meanwhile",
        );
    } else {
        conn.tagged(tag, "OK FETCH completed");
    }
    Ok(())
}

/// Sets `\Seen` on one message; the message as it is now, if it still exists.
async fn mark_seen(
    authed: &Authed,
    folder: &FolderInfo,
    meta: &MessageMeta,
) -> Option<MessageMeta> {
    let (store, folder, uid) = (authed.account.store.clone(), folder.clone(), meta.uid);
    let op = crate::message::FlagOp::Add(Flags::SEEN);
    let update = tokio::task::spawn_blocking(move || store.set_flags(&folder, &[uid], op, None))
        .await
        .ok()?
        .ok()?;
    update.updated.first().copied()
}

/// `* VANISHED (EARLIER)` for the UIDs of `set` that are not in the view (up to the highest
/// UID it shows).
fn report_gone(conn: &mut Conn, view: &super::view::View, set: &SequenceSet) {
    let largest = view.messages.last().map(|m| m.uid).unwrap_or(0);
    let ranges = super::view::Ranges::new(set, largest);
    let present: std::collections::HashSet<u32> = view.messages.iter().map(|m| m.uid).collect();
    let gone = (1..=largest).filter(|u| ranges.contains(*u) && !present.contains(u));
    let gone = super::wire::number_set(gone);
    if !gone.is_empty() {
        conn.line(format!("* VANISHED (EARLIER) {gone}"));
    }
}

/// Writes the chunks of one FETCH item: small ones through the output buffer, large slices
/// and streamed bodies straight to the client.
async fn write(
    conn: &mut Conn,
    stream: &mut Stream,
    chunks: Vec<Chunk>,
    content: Option<&Content>,
    authed: &Authed,
    selected: &Selected,
    meta: &MessageMeta,
) -> std::io::Result<()> {
    for chunk in chunks {
        match chunk {
            Chunk::Bytes(b) => conn.bytes(&b),
            Chunk::Slice(range) => {
                let raw = &content.expect("a slice comes from loaded content").raw;
                if range.len() < FLUSH_AT {
                    conn.bytes(&raw[range]);
                } else {
                    conn.flush(stream).await?;
                    stream.write_all(&raw[range]).await?;
                }
            }
            Chunk::Stream { start, len } => {
                conn.flush(stream).await?;
                let store = authed.account.store.clone();
                let folder = selected.view.folder.clone();
                stream_body(stream, store, folder, *meta, start, len).await?;
            }
        }
        if conn.buffered() >= FLUSH_AT {
            conn.flush(stream).await?;
        }
    }
    Ok(())
}

/// Streams `len` octets of a message from `start`, decrypting on a blocking thread.
async fn stream_body(
    stream: &mut Stream,
    store: Arc<dyn MailStore>,
    folder: FolderInfo,
    meta: MessageMeta,
    start: u64,
    len: u64,
) -> std::io::Result<()> {
    let (tx, mut rx) = mpsc::channel::<std::io::Result<Vec<u8>>>(4);
    tokio::task::spawn_blocking(move || {
        let result = (|| -> std::io::Result<()> {
            let mut reader = store
                .open(&folder, &meta)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            std::io::copy(&mut (&mut reader).take(start), &mut std::io::sink())?;
            let mut reader = reader.take(len);
            loop {
                let mut buf = vec![0u8; 64 * 1024];
                let n = reader.read(&mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                buf.truncate(n);
                if tx.blocking_send(Ok(buf)).is_err() {
                    return Ok(());
                }
            }
        })();
        if let Err(e) = result {
            let _ = tx.blocking_send(Err(e));
        }
    });
    let mut sent = 0u64;
    while let Some(chunk) = rx.recv().await {
        let chunk = chunk?;
        sent += chunk.len() as u64;
        stream.write_all(&chunk).await?;
    }
    if sent != len {
        // The literal length is already on the wire: the response cannot be repaired.
        return Err(std::io::Error::other("message shorter than announced"));
    }
    Ok(())
}
