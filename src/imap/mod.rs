//! IMAP access to a login's mail store (RFC 3501; IDLE 2177, UIDPLUS 4315, LITERAL+ 7888,
//! ID 2971, ENABLE 5161, NAMESPACE 2342, UNSELECT 3691, SASL-IR 4959, BINARY 3516,
//! CONDSTORE/QRESYNC 7162, ESEARCH 4731, SORT/THREAD 5256, SORT=DISPLAY 5957, ESORT and
//! CONTEXT=SEARCH/SORT 5267 (with RFC 9394's negative PARTIAL ranges), LIST-EXTENDED 5258
//! (as far as a fixed folder tree needs), LIST-STATUS 5819).
//!
//! Commands are framed and parsed by imap-next / imap-codec (literals, AUTHENTICATE, IDLE);
//! responses are written here so that large message literals stream from the store.
//! A login opens an [`Account`](crate::accounts::Account) whose
//! [`MailStore`](crate::store::MailStore) is a gateway mailbox (one folder, read and
//! delete) or an archive user's read-only folders; this module does not know which.
//! Logins are refused before TLS.
//!
//! Layout, one file per concern: `session` (state machine, read loop, dispatch), `input`
//! (unparsable input and extension forms rewritten), `auth` (LOGIN, AUTHENTICATE),
//! `mailboxes` (LIST, STATUS and the other authenticated-state commands), `select` (SELECT,
//! EXAMINE, QRESYNC), `fetch` + `render` + `structure` + `address` (FETCH), `search` +
//! `criteria` (SEARCH, ESEARCH), `ordering` + `sortkeys` + `thread` (SORT, THREAD),
//! `contexts` + `context_updates` (updating SEARCH/SORT results, CANCELUPDATE), `update`
//! (STORE, EXPUNGE, CLOSE), `idle`, `view` and `state` (the selected folder as a session sees
//! it: flags, keywords, `\Recent`), `wire` (IMAP string forms).

mod address;
mod auth;
mod context_updates;
mod contexts;
mod criteria;
mod fetch;
mod idle;
mod input;
mod load;
mod mailboxes;
mod matching;
mod ordering;
mod render;
mod search;
mod select;
mod session;
pub mod sortkeys;
mod state;
pub mod structure;
pub mod thread;
mod update;
mod view;
mod wire;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::accounts::Account;
use crate::context::{self, State};
use crate::net::Stream;
use session::Session;

/// Accepts IMAP connections until shutdown; `implicit_tls` for port 993.
pub async fn run(listener: TcpListener, implicit_tls: bool, state: Arc<State>) {
    let how = context::Listener {
        protocol: if implicit_tls { "imaps" } else { "imap" },
        implicit_tls,
        limit: state.imap_limit.clone(),
        per_ip: state.imap_per_ip.clone(),
        busy: b"* BYE [UNAVAILABLE] Too many connections\r\n",
    };
    context::accept_loop(listener, how, state, |stream, peer, state| {
        serve_connection(stream, peer, state, None)
    })
    .await
}

/// Runs one IMAP session on an accepted (and, for implicit TLS, handshaken) stream.
/// With `preauth`, the session starts logged in (RFC 3501 `PREAUTH` greeting); tests and
/// the fuzz target use that to reach the selected state without a password hash per run.
pub async fn serve_connection(
    stream: Stream,
    peer: SocketAddr,
    state: Arc<State>,
    preauth: Option<Account>,
) -> std::io::Result<()> {
    let mut session = Session::new(peer, state);
    if let Some(account) = preauth {
        session.open_preauth(account);
    }
    session.handle(stream).await
}
