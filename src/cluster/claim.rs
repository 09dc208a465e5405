//! Exclusive locks between gateway nodes on an object store that has no compare-and-swap.
//!
//! Garage (2.5) ignores `If-None-Match` on PutObject, so a lock is a *claim* protocol over
//! plain writes and listings: a node writes its claim `<prefix>/<owner>.<expires>`, then lists
//! the prefix. It holds the lock when every live claim listed is its own; otherwise it
//! deletes its claim, waits a random moment and tries again. Two claimants can both back
//! off, but never both win, as long as a listing that starts after a write has completed
//! sees that write (read-after-write: Garage writes to and reads from a quorum of the
//! replicas, 2 of 3, and two quorums always share a node). Claims carry an expiry, so a
//! node killed while holding a lock stops blocking others once it passes; a holder renews
//! its claim (a new claim, then the old one deleted) well before that.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::Rng;

use super::blobs::{BlobError, Blobs};

/// How long a claim lives unless renewed.
pub const LEASE: Duration = Duration::from_secs(30);
/// Clocks of the nodes may differ by this much: an expired claim is ignored only past it.
const SKEW: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("held by another node")]
    Busy,
    #[error(transparent)]
    Store(#[from] BlobError),
}

/// A lock this node holds; released (its claim deleted) on drop.
pub struct Claim {
    blobs: Blobs,
    prefix: String,
    owner: String,
    key: String,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn claim_key(prefix: &str, owner: &str) -> String {
    let expires = now_ms() + LEASE.as_millis() as u64;
    format!("{prefix}/{owner}.{expires:013}")
}

/// `(owner, expires_ms)` of a claim's key.
fn parse(prefix: &str, key: &str) -> Option<(String, u64)> {
    let name = key.strip_prefix(prefix)?.strip_prefix('/')?;
    let (owner, expires) = name.rsplit_once('.')?;
    Some((owner.to_owned(), expires.parse().ok()?))
}

impl Claim {
    /// Tries to take the lock at `prefix` until `wait` has passed.
    pub fn acquire(
        blobs: &Blobs,
        prefix: &str,
        node: &str,
        wait: Duration,
    ) -> Result<Claim, ClaimError> {
        let owner = format!("{node}-{}", &crate::crypto::random_hex128()[..12]);
        let started = Instant::now();
        loop {
            let key = claim_key(prefix, &owner);
            blobs.put(&key, Vec::new())?;
            let claim = Claim {
                blobs: blobs.clone(),
                prefix: prefix.to_owned(),
                owner: owner.clone(),
                key,
            };
            if claim.others_live()? == 0 {
                return Ok(claim);
            }
            drop(claim);
            if started.elapsed() >= wait {
                return Err(ClaimError::Busy);
            }
            let pause = rand::thread_rng().gen_range(20..120);
            std::thread::sleep(Duration::from_millis(pause));
        }
    }

    /// Live claims of other owners now; deletes long-expired ones on the way.
    fn others_live(&self) -> Result<usize, BlobError> {
        let now = now_ms();
        let mut live = 0;
        for listed in self.blobs.list(&format!("{}/", self.prefix))? {
            let Some((owner, expires)) = parse(&self.prefix, &listed.key) else {
                continue;
            };
            if owner == self.owner {
                continue;
            }
            if expires + SKEW.as_millis() as u64 >= now {
                live += 1;
            } else if expires + 10 * (SKEW.as_millis() as u64) < now {
                let _ = self.blobs.delete(&listed.key);
            }
        }
        Ok(live)
    }

    /// Extends the lease: a new claim first, then the old one deleted, so it is never
    /// unclaimed in between.
    pub fn renew(&mut self) -> Result<(), BlobError> {
        let key = claim_key(&self.prefix, &self.owner);
        if key == self.key {
            return Ok(());
        }
        self.blobs.put(&key, Vec::new())?;
        let old = std::mem::replace(&mut self.key, key);
        self.blobs.delete(&old)
    }
}

/// A claim kept alive by a renewing thread until dropped (then released).
pub struct Held {
    _stop: std::sync::mpsc::Sender<()>,
}

impl Claim {
    /// Renews the claim every third of [`LEASE`] until the returned value is dropped.
    pub fn keep(self) -> Held {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            let mut claim = self;
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                stopped.recv_timeout(LEASE / 3)
            {
                if let Err(e) = claim.renew() {
                    tracing::warn!(error = %e, "cannot renew a cluster lock");
                }
            }
        });
        Held { _stop: stop }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Err(e) = self.blobs.delete(&self.key) {
            tracing::warn!(error = %e, "cannot release a cluster lock; it expires by itself");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blobs() -> Blobs {
        let store = std::sync::Arc::new(object_store::memory::InMemory::new());
        Blobs::new(store, Duration::from_secs(5)).unwrap()
    }

    #[test]
    fn one_holder_at_a_time_and_release_on_drop() {
        let b = blobs();
        let first = Claim::acquire(&b, "locks/x", "a", Duration::ZERO).unwrap();
        assert!(matches!(
            Claim::acquire(&b, "locks/x", "b", Duration::from_millis(200)),
            Err(ClaimError::Busy)
        ));
        drop(first);
        Claim::acquire(&b, "locks/x", "b", Duration::ZERO).unwrap();
    }

    #[test]
    fn renewing_keeps_the_lock() {
        let b = blobs();
        let mut held = Claim::acquire(&b, "locks/y", "a", Duration::ZERO).unwrap();
        held.renew().unwrap();
        assert_eq!(b.list("locks/y/").unwrap().len(), 1);
        assert!(Claim::acquire(&b, "locks/y", "b", Duration::ZERO).is_err());
    }

    #[test]
    fn racing_threads_never_both_hold() {
        let b = blobs();
        let inside = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let (b, inside) = (b.clone(), inside.clone());
                std::thread::spawn(move || {
                    for _ in 0..10 {
                        let c = Claim::acquire(&b, "locks/z", &format!("n{i}"), LEASE).unwrap();
                        let n = inside.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        assert_eq!(n, 0, "two holders at once");
                        std::thread::sleep(Duration::from_millis(2));
                        inside.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                        drop(c);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    }
}
