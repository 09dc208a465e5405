//! LOGIN and AUTHENTICATE PLAIN (with SASL-IR), refused before TLS; the per-login session
//! limit; and PREAUTH sessions for tests and fuzzing.

use imap_codec::imap_types::auth::AuthMechanism;
use imap_codec::imap_types::core::Tag;
use imap_codec::imap_types::response::{CommandContinuationRequest, Status};
use imap_next::server::Server;

use super::session::Session;
use super::state::{Authed, CountGuard, Phase};
use crate::accounts::{self, Account};
use crate::auth::AuthError;

impl Session {
    /// Enters the authenticated state without a password (PREAUTH).
    pub fn open_preauth(&mut self, account: Account) {
        let guard = CountGuard::take(&self.conn.state, &account.id, true).expect("forced");
        self.phase = Phase::Authenticated(Authed::new(account, guard));
    }

    /// The LOGIN command.
    pub(super) async fn login_command(&mut self, tag: &Tag<'static>, user: &str, password: &str) {
        if !self.conn.tls {
            self.conn.errors += 1;
            self.conn.tagged(
                tag,
                "NO [PRIVACYREQUIRED] LOGIN requires TLS; use STARTTLS first",
            );
        } else if self.phase.authed().is_some() {
            self.conn.bad(tag, "Already authenticated");
        } else {
            let reply = self.login(user, password).await;
            if reply.starts_with("NO") {
                self.conn.errors += 1;
            }
            self.conn.tagged(tag, reply);
        }
    }

    /// Checks a login and opens the session. Returns the tagged reply text.
    async fn login(&mut self, user: &str, password: &str) -> String {
        let (state, peer) = (self.conn.state.clone(), self.conn.peer);
        match accounts::login(&state, peer.ip(), user, password).await {
            Ok(account) => {
                let noun = account.kind.noun();
                let Some(guard) = CountGuard::take(&state, &account.id, false) else {
                    tracing::info!(client = %peer, login = %account.id, "imap login refused: too many sessions");
                    return format!("NO [LIMIT] Too many sessions for this {noun}");
                };
                tracing::info!(client = %peer, kind = noun, login = %account.id, "imap login");
                state
                    .telemetry
                    .login("imap", true, Some(&account.id), peer.ip());
                self.phase = Phase::Authenticated(Authed::new(account, guard));
                format!("OK [CAPABILITY {}] Logged in", self.conn.capabilities(true))
            }
            Err(AuthError::Invalid) => {
                state.telemetry.login("imap", false, None, peer.ip());
                tracing::info!(client = %peer, "imap login failed");
                "NO [AUTHENTICATIONFAILED] Invalid login or password".into()
            }
            Err(AuthError::Busy) => {
                tracing::info!(client = %peer, "imap login refused: too many logins in progress");
                "NO [UNAVAILABLE] Too many logins in progress from your address; try again".into()
            }
            Err(AuthError::Temporary(e)) => {
                tracing::error!(client = %peer, error = %e, "imap login could not be checked");
                "NO [UNAVAILABLE] Temporary failure, try again later".into()
            }
        }
    }

    pub(super) async fn authenticate_start(
        &mut self,
        server: &mut Server,
        tag: Tag<'static>,
        mechanism: AuthMechanism<'static>,
        initial: Option<Vec<u8>>,
    ) {
        let refusal = if !self.conn.tls {
            Some("NO [PRIVACYREQUIRED] Authentication requires TLS; use STARTTLS first")
        } else if self.phase.authed().is_some() {
            Some("BAD Already authenticated")
        } else if mechanism != AuthMechanism::Plain {
            Some("NO [CANNOT] Only AUTHENTICATE PLAIN is supported")
        } else {
            None
        };
        if let Some(text) = refusal {
            self.finish_with(server, &tag, text);
            return;
        }
        self.auth_tag = Some(tag);
        match initial {
            Some(data) => self.authenticate_finish(server, Some(data)).await,
            None => {
                let _ =
                    server.authenticate_continue(CommandContinuationRequest::base64(Vec::new()));
            }
        }
    }

    pub(super) async fn authenticate_finish(&mut self, server: &mut Server, data: Option<Vec<u8>>) {
        let Some(tag) = self.auth_tag.take() else {
            return;
        };
        let Some(data) = data else {
            self.finish_with(server, &tag, "BAD Authentication cancelled");
            return;
        };
        let reply = match crate::auth::parse_sasl_plain(&data) {
            Some((user, password)) => self.login(&user, &password).await,
            None => "NO [AUTHENTICATIONFAILED] Invalid SASL PLAIN response".to_owned(),
        };
        self.finish_with(server, &tag, &reply);
    }

    /// Ends an AUTHENTICATE exchange in imap-next and writes our own tagged line instead.
    fn finish_with(&mut self, server: &mut Server, tag: &Tag<'static>, text: &str) {
        let dummy = Status::no(Some(tag.clone()), None, "x").expect("valid status");
        if server.authenticate_finish(dummy).is_ok() {
            self.suppress += 1;
        }
        if text.starts_with("BAD") || text.starts_with("NO") {
            self.conn.errors += 1;
        }
        self.conn.tagged(tag, text);
    }
}
