//! What the console and the API do, once: list, create, change and delete mailboxes and
//! archive users, read and renew the certificate, and the status of everything. The page
//! handlers and the JSON handlers both call these, so every console action is the API's.
//! All of it touches files: call it from a blocking thread.

use std::sync::Arc;

use serde::Serialize;

use crate::archive::users::{UserError, UserRecord};
use crate::context::State;
use crate::mailbox::{MailboxError, MailboxId, MailboxRecord, Status};
use crate::telemetry::activity::Collection;

/// Why an operation failed, as the API's error codes.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl From<MailboxError> for OpError {
    fn from(e: MailboxError) -> Self {
        match e {
            MailboxError::NotFound(_) => OpError::NotFound(e.to_string()),
            MailboxError::BadId => OpError::NotFound("no such mailbox".into()),
            MailboxError::NotSuspended(_) => OpError::Conflict(e.to_string()),
            e => OpError::Internal(e.to_string()),
        }
    }
}

impl From<UserError> for OpError {
    fn from(e: UserError) -> Self {
        match e {
            UserError::NotFound(_) => OpError::NotFound(e.to_string()),
            UserError::Taken(..) => OpError::Conflict(e.to_string()),
            UserError::BadAddress(_) => OpError::BadRequest(e.to_string()),
            e => OpError::Internal(e.to_string()),
        }
    }
}

/// A mailbox as the console shows it.
#[derive(Debug, Clone, Serialize)]
pub struct MailboxView {
    pub id: String,
    pub address: String,
    pub name: String,
    pub description: String,
    pub status: String,
    pub created: String,
    pub tenant: Option<String>,
    pub messages: u64,
    pub bytes: u64,
    pub last_received: Option<String>,
    pub last_collected: Option<CollectionView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CollectionView {
    pub time: String,
    pub protocol: String,
    pub client: String,
}

/// An archive user as the console shows it.
#[derive(Debug, Clone, Serialize)]
pub struct UserView {
    pub id: String,
    pub login: String,
    pub aliases: Vec<String>,
    pub name: String,
    pub auditor: bool,
    pub created: String,
}

impl From<&UserRecord> for UserView {
    fn from(u: &UserRecord) -> Self {
        UserView {
            id: u.id.clone(),
            login: u.login.clone(),
            aliases: u.aliases.clone(),
            name: u.name.clone(),
            auditor: u.auditor,
            created: u.created.clone(),
        }
    }
}

pub use crate::telemetry::rfc3339;

fn status_name(status: Status) -> &'static str {
    match status {
        Status::Active => "active",
        Status::Suspended => "suspended",
    }
}

/// How a mailbox looks now: its record, what waits in it, and its activity.
pub fn view(state: &State, record: &MailboxRecord) -> MailboxView {
    let (messages, bytes) = match state.mailbox_totals(&record.id) {
        Ok(totals) => totals,
        Err(e) => {
            tracing::warn!(mailbox = %record.id, error = %e, "cannot list mailbox");
            (0, 0)
        }
    };
    let activity = state.telemetry.activity.mailbox(record.id.as_str());
    MailboxView {
        id: record.id.to_string(),
        address: format!("{}@{}", record.id, state.config.domain()),
        name: record.name.clone(),
        description: record.description.clone(),
        status: status_name(record.status).into(),
        created: record.created.clone(),
        tenant: record.tenant.clone(),
        messages,
        bytes,
        last_received: activity.last_received.map(rfc3339),
        last_collected: activity.last_collected.map(|c: Collection| CollectionView {
            time: rfc3339(c.time),
            protocol: c.protocol,
            client: c.client,
        }),
    }
}

fn parse(id: &str) -> Result<MailboxId, OpError> {
    MailboxId::parse(id).map_err(|_| OpError::NotFound(format!("no such mailbox: {id}")))
}

pub fn mailboxes(state: &State) -> Result<Vec<MailboxView>, OpError> {
    let boxes = state.spool.mailboxes();
    Ok(boxes.list()?.iter().map(|r| view(state, r)).collect())
}

pub fn mailbox(state: &State, id: &str) -> Result<MailboxView, OpError> {
    Ok(view(state, &state.spool.mailboxes().load(&parse(id)?)?))
}

/// Creates a mailbox; returns it and its password (shown once).
pub fn create_mailbox(
    state: &State,
    name: &str,
    description: &str,
) -> Result<(MailboxView, String), OpError> {
    let (record, password) = state.spool.mailboxes().create(name, description)?;
    Ok((view(state, &record), password))
}

/// Changes a mailbox's name, description or status.
pub fn update_mailbox(
    state: &State,
    id: &str,
    name: Option<&str>,
    description: Option<&str>,
    status: Option<&str>,
) -> Result<MailboxView, OpError> {
    let id = parse(id)?;
    let boxes = state.spool.mailboxes();
    let mut record = boxes.set_details(&id, name, description)?;
    if let Some(status) = status {
        let status = match status {
            "active" => Status::Active,
            "suspended" => Status::Suspended,
            other => return Err(OpError::BadRequest(format!("unknown status {other:?}"))),
        };
        record = boxes.set_status(&id, status)?;
    }
    Ok(view(state, &record))
}

/// Deletes a suspended mailbox and all its mail.
pub fn delete_mailbox(state: &State, id: &str) -> Result<(), OpError> {
    state.spool.mailboxes().delete(&parse(id)?)?;
    reindex(state);
    Ok(())
}

/// A new password (and key) for a mailbox; returns the password.
pub fn reset_mailbox(state: &State, id: &str) -> Result<String, OpError> {
    let (_, password) = state.spool.mailboxes().reset_password(&parse(id)?)?;
    reindex(state);
    Ok(password)
}

/// After a mailbox's files moved, the index follows them.
fn reindex(state: &State) {
    if let Err(e) = state.spool.reconcile() {
        tracing::warn!(error = %e, "index reconcile after a mailbox change failed");
    }
}

fn users(state: &State) -> Result<&crate::archive::users::Users, OpError> {
    state.archive.as_ref().map(|a| a.users()).ok_or_else(|| {
        OpError::Conflict("the archive is disabled (archive.enabled = false)".into())
    })
}

pub fn list_users(state: &State) -> Result<Vec<UserView>, OpError> {
    Ok(users(state)?.list()?.iter().map(UserView::from).collect())
}

pub fn user(state: &State, login: &str) -> Result<UserView, OpError> {
    Ok(UserView::from(&users(state)?.find(login)?))
}

/// Adds an archive user; returns it and its password (shown once).
pub fn create_user(
    state: &State,
    email: &str,
    aliases: &[String],
    name: &str,
    auditor: bool,
) -> Result<(UserView, String), OpError> {
    let aliases: Vec<String> = aliases
        .iter()
        .map(|a| a.trim().to_owned())
        .filter(|a| !a.is_empty())
        .collect();
    let (record, password) = users(state)?.add(email, &aliases, name, auditor)?;
    Ok((UserView::from(&record), password))
}

pub fn update_user(
    state: &State,
    login: &str,
    aliases: Option<&[String]>,
    name: Option<&str>,
) -> Result<UserView, OpError> {
    let users = users(state)?;
    let mut record = users.find(login)?;
    if let Some(name) = name {
        record = users.set_name(&record.login, name)?;
    }
    if let Some(aliases) = aliases {
        record = users.set_aliases(&record.login, aliases)?;
    }
    Ok(UserView::from(&record))
}

pub fn delete_user(state: &State, login: &str) -> Result<(), OpError> {
    users(state)?.delete(login)?;
    Ok(())
}

pub fn reset_user(state: &State, login: &str) -> Result<String, OpError> {
    Ok(users(state)?.reset_password(login)?.1)
}

/// Free space on the data directory's filesystem.
pub fn disk_free(state: &State) -> u64 {
    crate::fsutil::free_bytes(&state.config.data_dir).unwrap_or(0)
}

/// The whole picture, as `GET /api/v1/status` and the dashboard show it.
#[derive(Debug, Serialize)]
pub struct Overview {
    pub version: &'static str,
    pub hostname: String,
    pub uptime_secs: u64,
    pub mailboxes: Vec<MailboxView>,
    pub archive: Option<serde_json::Value>,
    pub certificate: serde_json::Value,
    pub disk: serde_json::Value,
    pub listeners: Vec<serde_json::Value>,
    pub alerts: Vec<crate::alerts::AlertView>,
    pub recovery_key: bool,
    /// Cluster mode: the store, the registry sync and the nodes seen.
    pub cluster: Option<crate::cluster::status::ClusterStatus>,
}

pub fn status(state: &Arc<State>) -> Result<Overview, OpError> {
    let archive = state.archive.as_ref().map(|a| {
        a.stats()
            .map(|s| serde_json::to_value(s).unwrap_or_default())
            .unwrap_or_else(|e| serde_json::json!({"error": e.to_string()}))
    });
    let recovery_key = state
        .archive
        .as_ref()
        .is_some_and(|a| a.recovery_key().is_some());
    Ok(Overview {
        version: env!("CARGO_PKG_VERSION"),
        hostname: state.config.hostname.clone(),
        uptime_secs: state.started.elapsed().as_secs(),
        mailboxes: mailboxes(state)?,
        archive,
        certificate: certificate(state),
        disk: serde_json::json!({
            "free_bytes": disk_free(state),
            "reserve_bytes": state.config.spool.min_free_bytes,
        }),
        listeners: state
            .listeners()
            .iter()
            .map(|(p, a)| serde_json::json!({"protocol": p, "addr": a.to_string()}))
            .collect(),
        alerts: state.alerts.firing(),
        recovery_key,
        cluster: state.cluster.as_ref().map(|c| c.status.get()),
    })
}

/// The certificate in use.
pub fn certificate(state: &State) -> serde_json::Value {
    serde_json::to_value(state.resolver.status(state.config.tls.source)).unwrap_or_default()
}
