//! From a login to a mail store. A login name that is a gateway mailbox ID (`mbx-...`, alone
//! or `@hostname`) opens that mailbox; any other address opens that archive user's read-only
//! folders. The protocols ask this module and get an [`Account`], so they never branch on
//! which store they serve.

use std::net::IpAddr;
use std::sync::Arc;

use crate::archive::{Access, ArchiveStore};
use crate::audit::Event;
use crate::auth::{self, AuthError};
use crate::cluster::ClusterStore;
use crate::context::State;
use crate::mailbox::MailboxId;
use crate::spool::{Collector, GatewayStore};
use crate::store::MailStore;

/// What a login gets.
#[derive(Clone)]
pub struct Account {
    /// Names the login in session limits and logs: the mailbox ID or the archive user's ID.
    pub id: String,
    /// What kind of login it is, for logs and refusals ("mailbox" or "user").
    pub kind: Kind,
    pub store: Arc<dyn MailStore>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Mailbox,
    User,
}

impl Kind {
    pub fn noun(self) -> &'static str {
        match self {
            Kind::Mailbox => "mailbox",
            Kind::User => "user",
        }
    }
}

/// Which kind of login a user name asks for.
fn kind_of(state: &State, user: &str) -> (Kind, String) {
    match user.split_once('@') {
        Some((local, domain))
            if domain.eq_ignore_ascii_case(&state.config.domain())
                && MailboxId::parse(local).is_ok() =>
        {
            (Kind::Mailbox, local.to_owned())
        }
        Some(_) if state.archive.is_some() => (Kind::User, user.to_owned()),
        // An address that is no mailbox and no archive: checked (and refused) as a mailbox,
        // at the same cost.
        Some(_) => (Kind::Mailbox, String::new()),
        None => (Kind::Mailbox, user.to_owned()),
    }
}

/// Checks a login (with the per-client delay of [`auth`]) and opens its store.
pub async fn login(
    state: &State,
    client: IpAddr,
    user: &str,
    password: &str,
) -> Result<Account, AuthError> {
    match kind_of(state, user) {
        (Kind::Mailbox, id) => {
            let session = state.auth.login(client, &id, password).await?;
            Ok(gateway(state, session, "imap", client))
        }
        (Kind::User, login) => {
            let archive = state
                .archive
                .clone()
                .ok_or_else(|| AuthError::Temporary("the archive is off".into()))?;
            let session = match state.auth.login_user(client, &login, password).await {
                Ok(session) => session,
                Err(e) => {
                    if matches!(e, AuthError::Invalid) {
                        audit_failure(state, &archive, client, &login);
                    }
                    return Err(e);
                }
            };
            state.audit.record(
                Event::new("archive.login", format!("imap:{}", session.user.login))
                    .client(client)
                    .target(&session.user.login),
            );
            let store = ArchiveStore::new(
                archive,
                session.user.clone(),
                session.identity,
                Access {
                    auditor: state.audit.clone(),
                    client,
                },
            );
            Ok(Account {
                id: session.user.id,
                kind: Kind::User,
                store: Arc::new(store),
            })
        }
    }
}

/// Records a failed archive login: under the login when it is a user's (never what an
/// unknown name was: it may be a password typed in the wrong field).
fn audit_failure(state: &State, archive: &crate::archive::Archive, client: IpAddr, login: &str) {
    let typed = login.trim().to_lowercase();
    let known = archive.user_list().iter().any(|u| u.login == typed);
    let target = if known { typed } else { "(unknown)".into() };
    state.audit.record(
        Event::new("archive.login", "imap")
            .client(client)
            .target(target)
            .result("failed"),
    );
}

/// The account of a gateway mailbox whose key is already unwrapped (POP3, PREAUTH, tests,
/// fuzzing), collected over `protocol` from `client`.
pub fn gateway(
    state: &State,
    session: auth::Session,
    protocol: &'static str,
    client: IpAddr,
) -> Account {
    let collector = Collector {
        protocol,
        client,
        telemetry: state.telemetry.clone(),
    };
    let id = session.record.id.to_string();
    let store: Arc<dyn MailStore> = match &state.cluster {
        Some(cluster) => Arc::new(ClusterStore::new(
            cluster.clone(),
            session.record,
            session.identity,
            collector,
            state.spool.data_dir().join("tmp"),
        )),
        None => Arc::new(GatewayStore::new(
            state.spool.clone(),
            session.record,
            session.identity,
            collector,
        )),
    };
    Account {
        id,
        kind: Kind::Mailbox,
        store,
    }
}
