//! The object store as this crate uses it: put a file or bytes, get into memory or a file,
//! list a prefix, delete, copy — through `object_store` (S3 API), with bounded memory
//! (files above [`PART_SIZE`] go up in parts) and a deadline on every request. The calls are
//! blocking: they run on the store's own small runtime, so they work from blocking tasks
//! and the committer alike.

use std::fs::File;
use std::future::Future;
use std::io::{Read, Write};
use std::path::Path as FsPath;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};

/// Requests in flight at once for the `_many` calls.
pub const PARALLEL: usize = 16;
/// Files larger than this are uploaded as a multipart upload in parts of this size.
pub const PART_SIZE: usize = 8 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("object not found")]
    NotFound,
    #[error("object store: {0}")]
    Store(String),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("object store request timed out")]
    Timeout,
}

impl From<object_store::Error> for BlobError {
    fn from(e: object_store::Error) -> Self {
        match e {
            object_store::Error::NotFound { .. } => BlobError::NotFound,
            e => BlobError::Store(e.to_string()),
        }
    }
}

/// An object: its key and size.
#[derive(Debug, Clone)]
pub struct Listed {
    pub key: String,
    pub size: u64,
    /// Changes whenever the object is rewritten (its ETag, else its modification time).
    pub tag: String,
    /// Unix seconds of its last write.
    pub modified: i64,
}

#[derive(Clone)]
pub struct Blobs {
    store: Arc<dyn ObjectStore>,
    rt: Arc<Rt>,
    timeout: Duration,
}

/// The store's runtime; shut down without waiting, so dropping it is fine anywhere.
struct Rt(Option<tokio::runtime::Runtime>);

impl Rt {
    fn spawn<F: Future<Output = ()> + Send + 'static>(&self, f: F) {
        if let Some(rt) = &self.0 {
            rt.spawn(f);
        }
    }
}

impl Drop for Rt {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl Blobs {
    pub fn new(store: Arc<dyn ObjectStore>, timeout: Duration) -> Result<Blobs, BlobError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("object-store")
            .enable_all()
            .build()?;
        Ok(Blobs {
            store,
            rt: Arc::new(Rt(Some(rt))),
            timeout,
        })
    }

    /// Runs a request on the store's runtime with the deadline, blocking this thread.
    fn run<T: Send + 'static>(
        &self,
        f: impl Future<Output = Result<T, BlobError>> + Send + 'static,
    ) -> Result<T, BlobError> {
        let timeout = self.timeout;
        let (tx, rx) = std::sync::mpsc::channel();
        self.rt.spawn(async move {
            let result = match tokio::time::timeout(timeout, f).await {
                Ok(r) => r,
                Err(_) => Err(BlobError::Timeout),
            };
            let _ = tx.send(result);
        });
        rx.recv()
            .unwrap_or_else(|_| Err(BlobError::Store("runtime stopped".into())))
    }

    pub fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), BlobError> {
        let (store, path) = (self.store.clone(), Path::from(key));
        self.run(async move {
            store.put(&path, PutPayload::from(bytes)).await?;
            Ok(())
        })
    }

    /// Uploads a file; only [`PART_SIZE`] bytes of it are in memory at a time.
    pub fn put_file(&self, key: &str, file: &FsPath) -> Result<(), BlobError> {
        let len = std::fs::metadata(file)?.len();
        if len <= PART_SIZE as u64 {
            return self.put(key, std::fs::read(file)?);
        }
        let (store, path) = (self.store.clone(), Path::from(key));
        let mut source = File::open(file)?;
        // Deadline per part, not for the whole file: a large report takes a while.
        let deadline = self.timeout * (1 + (len / PART_SIZE as u64) as u32);
        let (tx, rx) = std::sync::mpsc::channel();
        self.rt.spawn(async move {
            let upload = async move {
                let mut writer = WriteMultipart::new_with_chunk_size(
                    store.put_multipart(&path).await?,
                    PART_SIZE,
                );
                let mut chunk = vec![0u8; PART_SIZE];
                loop {
                    let n = read_full(&mut source, &mut chunk)?;
                    if n == 0 {
                        break;
                    }
                    writer.wait_for_capacity(2).await?;
                    writer.write(&chunk[..n]);
                }
                writer.finish().await?;
                Ok(())
            };
            let result = match tokio::time::timeout(deadline, upload).await {
                Ok(r) => r,
                Err(_) => Err(BlobError::Timeout),
            };
            let _ = tx.send(result);
        });
        rx.recv()
            .unwrap_or_else(|_| Err(BlobError::Store("runtime stopped".into())))
    }

    pub fn get(&self, key: &str) -> Result<Bytes, BlobError> {
        let (store, path) = (self.store.clone(), Path::from(key));
        self.run(async move { Ok(store.get(&path).await?.bytes().await?) })
    }

    /// Downloads an object into `file`, streaming; returns its size.
    pub fn get_to(&self, key: &str, mut file: File) -> Result<u64, BlobError> {
        let (store, path) = (self.store.clone(), Path::from(key));
        self.run(async move {
            let mut stream = store.get(&path).await?.into_stream();
            let mut total = 0u64;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                total += chunk.len() as u64;
                file.write_all(&chunk)?;
            }
            file.flush()?;
            Ok(total)
        })
    }

    /// Every object under `prefix` (a folder: `a/b/`), sorted by key.
    pub fn list(&self, prefix: &str) -> Result<Vec<Listed>, BlobError> {
        let store = self.store.clone();
        let prefix = Path::from(prefix.trim_end_matches('/'));
        self.run(async move {
            let mut stream = store.list(Some(&prefix));
            let mut out = Vec::new();
            while let Some(meta) = stream.next().await {
                let meta = meta?;
                out.push(Listed {
                    key: meta.location.to_string(),
                    size: meta.size,
                    tag: meta
                        .e_tag
                        .clone()
                        .unwrap_or_else(|| meta.last_modified.to_rfc3339()),
                    modified: meta.last_modified.timestamp(),
                });
            }
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
    }

    /// Deletes an object; one that is already gone is not an error.
    pub fn delete(&self, key: &str) -> Result<(), BlobError> {
        let (store, path) = (self.store.clone(), Path::from(key));
        self.run(async move {
            match store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(e.into()),
            }
        })
    }

    /// Deletes objects, [`PARALLEL`] requests at a time (a store that syncs each write
    /// answers one delete in tens of milliseconds).
    pub fn delete_many(&self, keys: &[String]) -> Result<(), BlobError> {
        let store = self.store.clone();
        let paths: Vec<Path> = keys.iter().map(|k| Path::from(k.as_str())).collect();
        self.run(async move {
            let results: Vec<Result<(), BlobError>> = futures_util::stream::iter(paths)
                .map(|path| {
                    let store = store.clone();
                    async move {
                        match store.delete(&path).await {
                            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                            Err(e) => Err(BlobError::from(e)),
                        }
                    }
                })
                .buffer_unordered(PARALLEL)
                .collect()
                .await;
            results.into_iter().collect()
        })
    }

    /// Reads several (small) objects, [`PARALLEL`] at a time, in the order asked.
    pub fn get_many(&self, keys: &[String]) -> Result<Vec<Bytes>, BlobError> {
        let store = self.store.clone();
        let paths: Vec<Path> = keys.iter().map(|k| Path::from(k.as_str())).collect();
        self.run(async move {
            let results: Vec<Result<Bytes, BlobError>> = futures_util::stream::iter(paths)
                .map(|path| {
                    let store = store.clone();
                    async move { Ok(store.get(&path).await?.bytes().await?) }
                })
                .buffered(PARALLEL)
                .collect()
                .await;
            results.into_iter().collect()
        })
    }
}

fn read_full(source: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match source.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}
