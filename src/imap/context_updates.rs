//! Bringing a selected folder's updating SEARCH and SORT results (RFC 5267 contexts, kept
//! by `contexts`) up to date after a command or while idling: the touched messages are
//! tested again (SEARCH) or the folder is sorted again (SORT), and the ADDTO / REMOVEFROM
//! responses are returned for the session to place before the command's completion.

use std::collections::HashSet;

use super::contexts;
use super::matching::matching_among;
use super::state::{Authed, Selected};

/// Brings every context up to date with the messages touched since the last time: the
/// ADDTO / REMOVEFROM responses.
pub(super) async fn refresh(authed: &Authed, selected: &mut Selected) -> Vec<String> {
    let (touched, contexts) = selected.contexts.take_touched();
    let mut lines = Vec::new();
    let view = &selected.view;
    let among: Vec<usize> = (touched.iter())
        .filter_map(|uid| view.messages.binary_search_by_key(uid, |m| m.uid).ok())
        .collect();
    for c in contexts {
        let line = match &c.sort {
            None => {
                let found = matching_among(authed, view, &c.key, among.clone()).await;
                let now: HashSet<u32> = found.iter().map(|&i| view.messages[i].uid).collect();
                contexts::search_changes(c, view, &among, &now)
            }
            Some(criteria) => {
                let criteria = criteria.clone();
                let now = super::ordering::sorted_uids(authed, view, &criteria, &c.key).await;
                contexts::sort_changes(c, view, now)
            }
        };
        lines.extend(line);
    }
    lines
}
