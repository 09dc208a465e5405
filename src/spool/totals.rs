//! Per-mailbox totals (messages waiting, their bytes) for the console, the API and
//! `/metrics`, kept until the mailbox changes, so that a page or a scrape over a thousand
//! mailboxes does not list every one of them each time.
//!
//! Each mailbox has a generation, raised by every delivery and expunge *after* the index
//! is written, and all of them by a reconcile (files moved, e.g. a password reset setting mail
//! aside). A total computed while the generation stayed the same is kept; one that raced
//! with a change is returned but not kept.

use std::collections::HashMap;
use std::sync::Mutex;

/// (messages, bytes).
type Pair = (u64, u64);

/// (generation, totals when known) by mailbox ID.
#[derive(Debug, Default)]
pub struct Totals(Mutex<Kept>);

#[derive(Debug, Default)]
struct Kept {
    /// Raised when every mailbox changed.
    epoch: u64,
    mailboxes: HashMap<String, (u64, Option<Pair>)>,
}

impl Totals {
    /// The mailbox changed: its totals must be computed again.
    pub fn changed(&self, id: &str) {
        let mut kept = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let entry = kept.mailboxes.entry(id.to_owned()).or_insert((0, None));
        entry.0 += 1;
        entry.1 = None;
    }

    /// Every mailbox may have changed.
    pub fn changed_all(&self) {
        let mut kept = self.0.lock().unwrap_or_else(|p| p.into_inner());
        kept.epoch += 1;
        kept.mailboxes.clear();
    }

    /// The totals of a mailbox: kept ones, else `compute`d (and kept if nothing changed
    /// meanwhile).
    pub fn get_or<E>(
        &self,
        id: &str,
        compute: impl FnOnce() -> Result<Pair, E>,
    ) -> Result<Pair, E> {
        let (epoch, generation) = {
            let kept = self.0.lock().unwrap_or_else(|p| p.into_inner());
            match kept.mailboxes.get(id) {
                Some((_, Some(totals))) => return Ok(*totals),
                Some((generation, None)) => (kept.epoch, *generation),
                None => (kept.epoch, 0),
            }
        };
        let totals = compute()?;
        let mut kept = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if kept.epoch == epoch {
            let entry = kept.mailboxes.entry(id.to_owned()).or_insert((0, None));
            if entry.0 == generation {
                entry.1 = Some(totals);
            }
        }
        Ok(totals)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_until_changed_and_never_kept_across_a_change() {
        let t = Totals::default();
        let calls = std::cell::Cell::new(0);
        let get = |t: &Totals, v| {
            t.get_or::<()>("m", || {
                calls.set(calls.get() + 1);
                Ok(v)
            })
            .unwrap()
        };
        assert_eq!(get(&t, (1, 10)), (1, 10));
        assert_eq!(get(&t, (9, 90)), (1, 10));
        t.changed("m");
        assert_eq!(get(&t, (2, 20)), (2, 20));
        assert_eq!(calls.get(), 2);
        // a change while computing: the result is returned, not kept
        let racing = t
            .get_or::<()>("x", || {
                t.changed("x");
                Ok((5, 5))
            })
            .unwrap();
        assert_eq!(racing, (5, 5));
        assert_eq!(t.get_or::<()>("x", || Ok((6, 6))).unwrap(), (6, 6));
        t.changed_all();
        assert_eq!(get(&t, (3, 30)), (3, 30));
        assert_eq!(calls.get(), 3);
    }
}
