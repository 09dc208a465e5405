//! The SEARCH command (RFC 3501 §6.4.4): charset check, then each message of the selected
//! folder tested against the criteria (see `criteria` and `matching`), reading only what
//! the answer needs; answered as `* SEARCH` or, with RETURN options, `* ESEARCH` (RFC 4731),
//! with the highest MODSEQ when the criteria use MODSEQ (RFC 7162 §3.1.5).

use imap_codec::imap_types::core::{Charset, Tag, Vec1};
use imap_codec::imap_types::extensions::sort::SortCriterion;
use imap_codec::imap_types::search::SearchKey;

use super::criteria;
use super::matching::matching;
use super::state::{Authed, Conn, Selected};

/// What a SEARCH asks for.
pub(super) struct Request {
    pub charset: Option<Charset<'static>>,
    pub criteria: Vec1<SearchKey<'static>>,
    pub uid: bool,
    /// ESEARCH RETURN options (empty: ALL); None for a plain SEARCH.
    pub returns: Option<Vec<String>>,
}

pub(super) async fn command(
    conn: &mut Conn,
    authed: &Authed,
    selected: &mut Selected,
    tag: &Tag<'_>,
    request: Request,
) {
    let Some(updating) = wants_update(conn, selected, tag, &request.returns) else {
        return;
    };
    let key = SearchKey::And(request.criteria);
    match checked(&request.charset, &key) {
        Err((true, text)) => conn.bad(tag, text),
        Err((false, text)) => conn.tagged(tag, text),
        Ok(()) => {
            if criteria::uses_modseq(&key) {
                selected.enable_condstore(conn, authed);
            }
            let found = matching(authed, selected, &key).await;
            let modseq = criteria::uses_modseq(&key).then(|| {
                found
                    .iter()
                    .map(|&i| selected.view.messages[i].modseq.max(1))
                    .max()
            });
            let numbers: Vec<u32> = found
                .iter()
                .map(|&i| match request.uid {
                    true => selected.view.messages[i].uid,
                    false => i as u32 + 1,
                })
                .collect();
            let answer = Answer {
                numbers: &numbers,
                uid: request.uid,
                modseq: modseq.flatten(),
                sorted: false,
            };
            answer.write(conn, tag, request.returns.as_deref(), "SEARCH");
            if updating {
                let uids = found
                    .iter()
                    .map(|&i| selected.view.messages[i].uid)
                    .collect();
                let key = super::contexts::freeze(key, &selected.view);
                keep(conn, selected, tag, key, request.uid, None, uids);
            }
            selected.sync(conn, authed, request.uid);
            conn.tagged(tag, "OK SEARCH completed");
        }
    }
}

/// Whether a SEARCH or SORT asks for updates: `Some(true)` when it does, `None` when its
/// tag already names an updating context (answered BAD: the command has no effect).
pub(super) fn wants_update(
    conn: &mut Conn,
    selected: &Selected,
    tag: &Tag<'_>,
    returns: &Option<Vec<String>>,
) -> Option<bool> {
    let updating = returns
        .as_ref()
        .is_some_and(|r| r.iter().any(|o| o == "UPDATE"));
    if updating && selected.contexts.has(tag.as_ref()) {
        conn.bad(tag, "Tag reuse: that tag names an updating search already");
        return None;
    }
    Some(updating)
}

/// Keeps an updating context (or answers NOUPDATE when the session has too many).
pub(super) fn keep(
    conn: &mut Conn,
    selected: &mut Selected,
    tag: &Tag<'_>,
    key: SearchKey<'static>,
    uid: bool,
    sort: Option<Vec<SortCriterion>>,
    result: Vec<u32>,
) {
    let tag = tag.as_ref();
    if let super::contexts::Registered::Refused =
        selected.contexts.register(tag, key, uid, sort, result)
    {
        let quoted = super::wire::quoted(tag);
        conn.line(format!(
            "* NO [NOUPDATE {quoted}] Too many updating searches"
        ));
    }
}

/// The charset is UTF-8 or US-ASCII and the strings are valid UTF-8; else (is BAD, text).
pub(super) fn checked(
    charset: &Option<Charset<'static>>,
    key: &SearchKey<'_>,
) -> Result<(), (bool, &'static str)> {
    let charset_ok = charset.as_ref().is_none_or(|c| {
        let c: &str = c.as_ref();
        c.eq_ignore_ascii_case("UTF-8") || c.eq_ignore_ascii_case("US-ASCII")
    });
    if !charset_ok {
        Err((
            false,
            "NO [BADCHARSET (UTF-8 US-ASCII)] Unsupported charset",
        ))
    } else if !criteria::strings_are_utf8(key) {
        Err((true, "Search string is not valid UTF-8"))
    } else {
        Ok(())
    }
}

impl Answer<'_> {
    /// The results at the positions of a PARTIAL range (RFC 5267 §4.4, RFC 9394's
    /// negative ranges from the end), or `NIL` when none is there.
    fn partial(&self, range: &str) -> String {
        let Some((from_end, low, high)) = super::input::partial_range(range) else {
            return "NIL".into();
        };
        let n = self.numbers.len();
        let (low, high) = (low as usize, (high as usize).min(n));
        let picked: &[u32] = match from_end {
            false if low <= n => &self.numbers[low - 1..high],
            true if low <= n => &self.numbers[n - high..=n - low],
            _ => &[],
        };
        match (picked.is_empty(), self.sorted) {
            (true, _) => "NIL".into(),
            (false, true) => super::wire::ordered_set(picked),
            (false, false) => super::wire::number_set(picked.iter().copied()),
        }
    }
}

/// The result of a SEARCH or SORT, as the client asked to see it.
pub(super) struct Answer<'a> {
    /// Sequence numbers or UIDs, in result order.
    pub numbers: &'a [u32],
    pub uid: bool,
    /// The highest MODSEQ of the result, when the criteria used MODSEQ.
    pub modseq: Option<u64>,
    /// A SORT result: order matters (ESORT ALL keeps it; MIN/MAX are first/last).
    pub sorted: bool,
}

impl Answer<'_> {
    /// `* SEARCH ...` / `* SORT ...`, or `* ESEARCH ...` when RETURN options were given.
    pub fn write(&self, conn: &mut Conn, tag: &Tag<'_>, returns: Option<&[String]>, verb: &str) {
        let modseq = self
            .modseq
            .map(|m| format!(" (MODSEQ {m})"))
            .unwrap_or_default();
        let Some(returns) = returns else {
            let list: Vec<String> = self.numbers.iter().map(u32::to_string).collect();
            let sep = if list.is_empty() { "" } else { " " };
            conn.line(format!("* {verb}{sep}{}{modseq}", list.join(" ")));
            return;
        };
        // RETURN () means ALL; UPDATE and CONTEXT alone return only the tag (RFC 5267).
        let all = returns.is_empty() || returns.iter().any(|r| r == "ALL");
        let mut out = format!("* ESEARCH (TAG {})", super::wire::quoted(tag.as_ref()));
        if self.uid {
            out.push_str(" UID");
        }
        let (min, max) = match self.sorted {
            true => (self.numbers.first(), self.numbers.last()),
            false => (self.numbers.iter().min(), self.numbers.iter().max()),
        };
        let wants = |o: &str| returns.iter().any(|r| r == o);
        if let (true, Some(min)) = (wants("MIN"), min) {
            out.push_str(&format!(" MIN {min}"));
        }
        if let (true, Some(max)) = (wants("MAX"), max) {
            out.push_str(&format!(" MAX {max}"));
        }
        if wants("COUNT") {
            out.push_str(&format!(" COUNT {}", self.numbers.len()));
        }
        if all && !self.numbers.is_empty() {
            let set = match self.sorted {
                true => super::wire::ordered_set(self.numbers),
                false => super::wire::number_set(self.numbers.iter().copied()),
            };
            out.push_str(&format!(" ALL {set}"));
        }
        if let Some(range) = returns.iter().find_map(|r| r.strip_prefix("PARTIAL ")) {
            out.push_str(&format!(" PARTIAL ({range} {})", self.partial(range)));
        }
        if let Some(m) = self.modseq {
            out.push_str(&format!(" MODSEQ {m}"));
        }
        conn.line(out);
    }
}
