//! The archive database's error type, shared by the store and its flag tables.

#[derive(Debug, thiserror::Error)]
#[error("archive database: {0}")]
pub struct StoreError(Box<redb::Error>);

/// Wraps any redb error.
pub(super) fn err<E: Into<redb::Error>>(e: E) -> StoreError {
    StoreError(Box::new(e.into()))
}
