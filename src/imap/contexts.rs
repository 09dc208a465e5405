//! Search contexts (RFC 5267 CONTEXT=SEARCH and CONTEXT=SORT): a SEARCH or SORT with
//! `RETURN (UPDATE)` keeps its result, and while the folder stays selected every change to
//! it is announced as `* ESEARCH (TAG "t") [UID] REMOVEFROM (...) ADDTO (...)`, until
//! `CANCELUPDATE "t"`.
//!
//! A context keeps its result as UIDs in result order. Expunged messages leave it before
//! the EXPUNGE responses are written ([`Contexts::expunging`]: sequence numbers still mean
//! what the client thinks). New messages and flag changes (other sessions' and this one's)
//! are collected as *touched* UIDs; after the command (or while idling) SEARCH contexts
//! test only the touched messages, SORT contexts sort again, and the difference is
//! announced by positions (`context_updates` runs that; this module keeps the contexts and
//! words the responses). Positions are 0 for SEARCH (the client keeps mailbox order),
//! 1-based places in the sorted result for SORT.

use std::collections::HashSet;

use imap_codec::imap_types::core::Vec1;
use imap_codec::imap_types::extensions::sort::SortCriterion;
use imap_codec::imap_types::search::SearchKey;

use super::view::View;
use super::wire;

/// Updating contexts a session may keep at once; more are refused with NOUPDATE.
const MAX_CONTEXTS: usize = 8;

/// One updating SEARCH or SORT.
pub(super) struct Context {
    tag: String,
    pub key: SearchKey<'static>,
    uid: bool,
    /// The SORT criteria; `None` for a SEARCH.
    pub sort: Option<Vec<SortCriterion>>,
    /// UIDs in result order (ascending for a SEARCH).
    result: Vec<u32>,
}

/// A selected folder's contexts and the messages touched since they were last updated.
#[derive(Default)]
pub(super) struct Contexts {
    list: Vec<Context>,
    touched: Vec<u32>,
}

/// What registering a context did.
pub(super) enum Registered {
    Kept,
    /// The session has [`MAX_CONTEXTS`] already: answered with NOUPDATE.
    Refused,
}

impl Contexts {
    /// Whether no search updates.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Whether a context with this tag updates already (its reuse is a BAD).
    pub fn has(&self, tag: &str) -> bool {
        self.list.iter().any(|c| c.tag == tag)
    }

    /// Takes the touched UIDs (sorted, once each) with the contexts to bring up to date.
    pub fn take_touched(&mut self) -> (Vec<u32>, &mut [Context]) {
        let mut touched = std::mem::take(&mut self.touched);
        touched.sort_unstable();
        touched.dedup();
        (touched, &mut self.list)
    }

    /// Keeps the result of a SEARCH (`sort` None) or SORT with UPDATE.
    pub fn register(
        &mut self,
        tag: &str,
        key: SearchKey<'static>,
        uid: bool,
        sort: Option<Vec<SortCriterion>>,
        result: Vec<u32>,
    ) -> Registered {
        if self.list.len() >= MAX_CONTEXTS {
            return Registered::Refused;
        }
        self.list.push(Context {
            tag: tag.to_owned(),
            key,
            uid,
            sort,
            result,
        });
        Registered::Kept
    }

    /// Ends the contexts of `tags`; false when one of them is not updating.
    pub fn cancel(&mut self, tags: &[String]) -> bool {
        let known = tags.iter().all(|t| self.has(t));
        self.list.retain(|c| !tags.contains(&c.tag));
        known
    }

    /// Whether messages were touched since the contexts were last brought up to date.
    pub fn pending(&self) -> bool {
        !self.touched.is_empty()
    }

    /// Notes messages that are new or whose flags changed.
    pub fn touch(&mut self, uids: impl IntoIterator<Item = u32>) {
        if !self.list.is_empty() {
            self.touched.extend(uids);
        }
    }

    /// Takes expunged messages (`uids`, still in `view`) out of every result and writes the
    /// REMOVEFROM responses; called before the EXPUNGE responses are written.
    pub fn expunging(&mut self, view: &View, uids: &HashSet<u32>, out: &mut Vec<u8>) {
        for c in &mut self.list {
            let gone: Vec<(usize, u32)> = (c.result.iter().enumerate())
                .filter(|(_, uid)| uids.contains(uid))
                .map(|(at, uid)| (at, *uid))
                .collect();
            if gone.is_empty() {
                continue;
            }
            let number = |uid: u32| number_of(view, c.uid, uid);
            let data = match c.sort {
                None => format!("0 {}", wire::number_set(gone.iter().map(|g| number(g.1)))),
                // From the last, so that each position is still the one before removal.
                Some(_) => (gone.iter().rev())
                    .map(|(at, uid)| format!("{} {}", at + 1, number(*uid)))
                    .collect::<Vec<_>>()
                    .join(" "),
            };
            c.result.retain(|uid| !uids.contains(uid));
            let line = format!("{} REMOVEFROM ({data})\r\n", c.prefix());
            out.extend_from_slice(line.as_bytes());
        }
    }
}

impl Context {
    fn prefix(&self) -> String {
        let uid = if self.uid { " UID" } else { "" };
        format!("* ESEARCH (TAG {}){uid}", wire::quoted(&self.tag))
    }
}

/// The criteria of an updating context with its sequence-number keys turned into the UIDs
/// they named when the command came: RFC 5267 §4.3 fixes them then, so later renumbering
/// (expunges, new mail) changes nothing.
pub(super) fn freeze(key: SearchKey<'static>, view: &View) -> SearchKey<'static> {
    use SearchKey::*;
    match key {
        And(keys) => And(Vec1::unvalidated(
            keys.into_inner()
                .into_iter()
                .map(|k| freeze(k, view))
                .collect(),
        )),
        Not(k) => Not(Box::new(freeze(*k, view))),
        Or(a, b) => Or(Box::new(freeze(*a, view)), Box::new(freeze(*b, view))),
        SequenceSet(set) => {
            let uids = view.select(&set, false).into_iter();
            let uids = wire::number_set(uids.map(|i| view.messages[i].uid));
            match imap_codec::imap_types::sequence::SequenceSet::try_from(uids.as_str()) {
                Ok(set) => Uid(set),
                // No message: nothing ever matches.
                Err(_) => Not(Box::new(All)),
            }
        }
        other => other,
    }
}

/// The number a context reports for a message: its UID, or its sequence number now.
fn number_of(view: &View, uid_context: bool, uid: u32) -> u32 {
    match uid_context {
        true => uid,
        false => view
            .messages
            .binary_search_by_key(&uid, |m| m.uid)
            .map(|i| i as u32 + 1)
            .unwrap_or(0),
    }
}

/// A SEARCH context's changes among the touched messages (`now`: those that match).
pub(super) fn search_changes(
    c: &mut Context,
    view: &View,
    among: &[usize],
    now: &HashSet<u32>,
) -> Option<String> {
    let (mut added, mut removed) = (Vec::new(), Vec::new());
    for &i in among {
        let uid = view.messages[i].uid;
        match (c.result.binary_search(&uid), now.contains(&uid)) {
            (Err(at), true) => {
                c.result.insert(at, uid);
                added.push(number_of(view, c.uid, uid));
            }
            (Ok(at), false) => {
                c.result.remove(at);
                removed.push(number_of(view, c.uid, uid));
            }
            _ => {}
        }
    }
    let mut line = c.prefix();
    if !removed.is_empty() {
        line.push_str(&format!(" REMOVEFROM (0 {})", wire::number_set(removed)));
    }
    if !added.is_empty() {
        line.push_str(&format!(" ADDTO (0 {})", wire::number_set(added)));
    }
    (line.len() > c.prefix().len()).then_some(line)
}

/// A SORT context's changes from its result to `now` (UIDs in sort order): removals from
/// the last position down, then insertions in ascending positions; if the kept messages
/// changed their order (they should not), everything is removed and added again.
pub(super) fn sort_changes(c: &mut Context, view: &View, now: Vec<u32>) -> Option<String> {
    let keep: HashSet<u32> = now.iter().copied().collect();
    let before: HashSet<u32> = c.result.iter().copied().collect();
    let number = |uid: u32| number_of(view, c.uid, uid);
    let mut pairs: Vec<(bool, usize, u32)> = Vec::new();
    for (at, uid) in c.result.iter().enumerate().rev() {
        if !keep.contains(uid) {
            pairs.push((false, at + 1, number(*uid)));
        }
    }
    let kept: Vec<u32> = c
        .result
        .iter()
        .copied()
        .filter(|u| keep.contains(u))
        .collect();
    let same_order = kept.iter().eq(now.iter().filter(|u| before.contains(u)));
    if !same_order {
        pairs = (1..=c.result.len())
            .rev()
            .map(|p| (false, p, number(c.result[p - 1])))
            .collect();
    }
    for (at, uid) in now.iter().enumerate() {
        if !same_order || !before.contains(uid) {
            pairs.push((true, at + 1, number(*uid)));
        }
    }
    c.result = now;
    if pairs.is_empty() {
        return None;
    }
    let (removals, additions): (Vec<_>, Vec<_>) = pairs.into_iter().partition(|p| !p.0);
    let list = |ps: &[(bool, usize, u32)]| {
        ps.iter()
            .map(|(_, at, n)| format!("{at} {n}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut line = c.prefix();
    if !removals.is_empty() {
        line.push_str(&format!(" REMOVEFROM ({})", list(&removals)));
    }
    if !additions.is_empty() {
        line.push_str(&format!(" ADDTO ({})", list(&additions)));
    }
    Some(line)
}

#[cfg(test)]
mod tests {
    use super::super::view::test_view as view;
    use super::*;

    fn context(sort: bool, uid: bool, result: &[u32]) -> Context {
        Context {
            tag: "B01".into(),
            key: SearchKey::All,
            uid,
            sort: sort.then(Vec::new),
            result: result.to_vec(),
        }
    }

    #[test]
    fn search_updates_by_mailbox_order() {
        let v = view(&[10, 20, 30, 40]);
        let mut c = context(false, true, &[10, 30]);
        let now = HashSet::from([20, 40]);
        let line = search_changes(&mut c, &v, &[1, 2, 3], &now).unwrap();
        assert_eq!(
            line,
            "* ESEARCH (TAG \"B01\") UID REMOVEFROM (0 30) ADDTO (0 20,40)"
        );
        assert_eq!(c.result, vec![10, 20, 40]);
        let mut seq = context(false, false, &[10]);
        let line = search_changes(&mut seq, &v, &[3], &HashSet::from([40])).unwrap();
        assert_eq!(line, "* ESEARCH (TAG \"B01\") ADDTO (0 4)");
        assert!(search_changes(&mut seq, &v, &[0], &HashSet::from([10])).is_none());
    }

    #[test]
    fn sort_updates_by_position() {
        let v = view(&[1, 2, 3, 4, 5]);
        let mut c = context(true, true, &[5, 3, 1]);
        let line = sort_changes(&mut c, &v, vec![5, 4, 1, 2]).unwrap();
        // 5 3 1 -> remove 3 at 2 -> 5 1 -> add 4 at 2, 2 at 4 -> 5 4 1 2
        assert_eq!(
            line,
            "* ESEARCH (TAG \"B01\") UID REMOVEFROM (2 3) ADDTO (2 4 4 2)"
        );
        assert_eq!(c.result, vec![5, 4, 1, 2]);
        assert!(sort_changes(&mut c, &v, vec![5, 4, 1, 2]).is_none());
        // the kept ones out of order: all out, all in
        let line = sort_changes(&mut c, &v, vec![4, 5]).unwrap();
        assert_eq!(
            line,
            "* ESEARCH (TAG \"B01\") UID REMOVEFROM (4 2 3 1 2 4 1 5) ADDTO (1 4 2 5)"
        );
    }

    #[test]
    fn sequence_numbers_become_the_uids_they_named() {
        let v = view(&[10, 20, 30]);
        let set = |s: &str| imap_codec::imap_types::sequence::SequenceSet::try_from(s).unwrap();
        let key = SearchKey::And(Vec1::unvalidated(vec![
            SearchKey::SequenceSet(set("2:*")),
            SearchKey::Not(Box::new(SearchKey::SequenceSet(set("5")))),
        ]));
        let frozen = freeze(key, &v);
        let want = SearchKey::And(Vec1::unvalidated(vec![
            SearchKey::Uid(set("20,30")),
            SearchKey::Not(Box::new(SearchKey::Not(Box::new(SearchKey::All)))),
        ]));
        assert_eq!(frozen, want);
    }

    #[test]
    fn expunges_leave_results_first() {
        let v = view(&[1, 2, 3, 4]);
        let mut contexts = Contexts::default();
        contexts.list.push(context(false, false, &[2, 3, 4]));
        contexts.list.push(context(true, true, &[4, 2, 1]));
        contexts.list[1].tag = "S1".into();
        let mut out = Vec::new();
        contexts.expunging(&v, &HashSet::from([2, 4]), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "* ESEARCH (TAG \"B01\") REMOVEFROM (0 2,4)\r\n\
             * ESEARCH (TAG \"S1\") UID REMOVEFROM (2 2 1 4)\r\n"
        );
        assert_eq!(contexts.list[0].result, vec![3]);
        assert_eq!(contexts.list[1].result, vec![1]);
        assert!(contexts.cancel(&["S1".into()]));
        assert!(!contexts.cancel(&["S1".into()]), "already gone");
    }
}
