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

use super::render::{self, Chunk, Content};
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
}

pub(super) async fn command(
    conn: &mut Conn,
    authed: &Authed,
    selected: &mut Selected,
    tag: &Tag<'_>,
    request: Request<'_>,
    stream: &mut Stream,
) -> std::io::Result<()> {
    let Request { set, items, uid } = request;
    let view = &selected.view;
    if !uid && view.out_of_range(set) {
        conn.bad(tag, "Invalid message sequence number");
        return Ok(());
    }
    let chosen = view.select(set, uid);
    let needs = render::needs_content(items);
    let sets_seen = render::sets_seen(items) && !view.read_only;
    let mut vanished = false;
    let mut ahead: VecDeque<(JoinHandle<Result<Content, StoreError>>, u64)> = VecDeque::new();
    let (mut next, mut ahead_bytes) = (0usize, 0u64);
    for (k, &i) in chosen.iter().enumerate() {
        if needs {
            while next < chosen.len() && (next == k || ahead_bytes < PREFETCH_BYTES) {
                let m = selected.view.messages[chosen[next]];
                let size = m.size.min(render::IN_MEMORY_MAX);
                ahead.push_back((start_load(authed, &selected.view.folder, &m), size));
                ahead_bytes += size;
                next += 1;
            }
        }
        let mut meta = selected.view.messages[i];
        let content = if needs {
            let (handle, size) = ahead.pop_front().expect("loaded ahead");
            ahead_bytes -= size;
            match joined(handle).await {
                Ok(c) => Some(c),
                Err(e) => {
                    if !matches!(e, StoreError::NoSuchMessage) {
                        tracing::error!(uid = meta.uid, error = %e, "cannot read message");
                    }
                    vanished = true;
                    continue;
                }
            }
        } else {
            None
        };
        let mut add_flags = false;
        if sets_seen && !meta.flags.contains(Flags::SEEN) {
            if let Some(flags) = mark_seen(authed, &selected.view.folder, &meta).await {
                meta.flags = flags;
                selected.view.messages[i].flags = flags;
                add_flags = true;
            }
        }
        let seq = i as u32 + 1;
        let chunks = render::render(seq, &meta, meta.flags, items, content.as_ref(), add_flags);
        drop(content);
        for chunk in chunks {
            match chunk {
                Chunk::Bytes(b) => {
                    conn.bytes(&b);
                    if conn.buffered() >= FLUSH_AT {
                        conn.flush(stream).await?;
                    }
                }
                Chunk::Stream { start, len } => {
                    conn.flush(stream).await?;
                    let store = authed.account.store.clone();
                    let folder = selected.view.folder.clone();
                    stream_body(stream, store, folder, meta, start, len).await?;
                }
            }
        }
    }
    selected.sync(conn, authed, uid);
    if vanished {
        conn.tagged(
            tag,
            "NO [EXPUNGEISSUED] Some messages were expunged meanwhile",
        );
    } else {
        conn.tagged(tag, "OK FETCH completed");
    }
    Ok(())
}

/// Sets `\Seen` on one message; its flags as they are now, if it still exists.
async fn mark_seen(authed: &Authed, folder: &FolderInfo, meta: &MessageMeta) -> Option<Flags> {
    let (store, folder) = (authed.account.store.clone(), folder.clone());
    let change = vec![(meta.uid, meta.flags.with(Flags::SEEN))];
    let updated = tokio::task::spawn_blocking(move || store.set_flags(&folder, &change))
        .await
        .ok()?
        .ok()?;
    updated.first().map(|u| u.flags)
}

async fn joined(handle: JoinHandle<Result<Content, StoreError>>) -> Result<Content, StoreError> {
    handle.await.map_err(StoreError::unavailable)?
}

/// Decrypts a message: whole when small, only its header when large.
pub(super) async fn load(
    authed: &Authed,
    folder: &FolderInfo,
    meta: &MessageMeta,
) -> Result<Content, StoreError> {
    joined(start_load(authed, folder, meta)).await
}

/// Starts decrypting a message on a blocking thread (FETCH reads ahead with this).
fn start_load(
    authed: &Authed,
    folder: &FolderInfo,
    meta: &MessageMeta,
) -> JoinHandle<Result<Content, StoreError>> {
    let (store, folder, meta) = (authed.account.store.clone(), folder.clone(), *meta);
    tokio::task::spawn_blocking(move || {
        let reader = store.open(&folder, &meta)?;
        let io = |e: std::io::Error| StoreError::unavailable(e);
        if meta.size <= render::IN_MEMORY_MAX {
            let mut raw = Vec::with_capacity(meta.size as usize);
            reader
                .take(render::IN_MEMORY_MAX)
                .read_to_end(&mut raw)
                .map_err(io)?;
            Ok(Content::whole(raw))
        } else {
            let mut head = Vec::new();
            reader
                .take(render::MAX_HEADER as u64)
                .read_to_end(&mut head)
                .map_err(io)?;
            Ok(Content::header_only(head, meta.size))
        }
    })
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
