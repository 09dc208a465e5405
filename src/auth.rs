//! Logins shared by POP3 and IMAP: credential checks that unwrap the mailbox key, and a
//! per-client-address delay that doubles with each failure.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::archive::users::{UserError, UserRecord, Users};
use crate::config::AuthConfig;
use crate::crypto::{self, CryptoError, Identity};
use crate::mailbox::{MailboxError, MailboxId, MailboxRecord, Mailboxes};

/// Failures older than this are forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("invalid mailbox ID or password")]
    Invalid,
    #[error("temporary failure: {0}")]
    Temporary(String),
    /// A login from an address with recent failures while another of its logins is still
    /// being checked.
    #[error("too many logins in progress from this address")]
    Busy,
}

/// A successful login: the mailbox and its unwrapped secret key.
#[derive(Clone)]
pub struct Session {
    pub record: MailboxRecord,
    pub identity: Identity,
}

/// A successful archive-user login: the user and their unwrapped secret key.
#[derive(Clone)]
pub struct UserSession {
    pub user: UserRecord,
    pub identity: Identity,
}

pub struct Authenticator {
    mailboxes: Mailboxes,
    users: Option<Users>,
    config: AuthConfig,
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
    /// Each unwrap costs 32 MiB and tens of ms of scrypt: one at a time keeps memory flat
    /// (8 simultaneous logins raised peak RSS to 166 MB with four in parallel).
    unwraps: Semaphore,
    /// A key sealed to a random password: unknown logins unwrap it, so that they cost what a
    /// wrong password for a real mailbox costs (no user enumeration by timing).
    decoy: Vec<u8>,
    in_flight: Mutex<HashMap<IpAddr, usize>>,
}

/// One login being checked; frees its slot when dropped.
struct InFlight<'a> {
    auth: &'a Authenticator,
    client: IpAddr,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut map = self
            .auth
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.client);
            }
        }
    }
}

impl Authenticator {
    pub fn new(
        mailboxes: Mailboxes,
        users: Option<Users>,
        config: AuthConfig,
    ) -> Arc<Authenticator> {
        let decoy = crypto::generate_keypair(&crypto::random_password())
            .map(|k| k.wrapped_secret)
            .unwrap_or_default();
        Arc::new(Authenticator {
            mailboxes,
            users,
            config,
            failures: Mutex::new(HashMap::new()),
            unwraps: Semaphore::new(1),
            decoy,
            in_flight: Mutex::new(HashMap::new()),
        })
    }

    /// Lets a login be checked. An address that failed recently gets one check at a time;
    /// its other attempts are refused at once instead of queueing behind the one-at-a-time
    /// key unwrap, where a password-guessing flood would delay everyone's logins. Addresses
    /// without failures (an archiver opening several sessions) are never refused here.
    fn admit(&self, client: IpAddr) -> Result<InFlight<'_>, AuthError> {
        let failing = self
            .failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&client)
            .is_some_and(|(_, last)| last.elapsed() < FORGET_AFTER);
        let mut map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        if failing && map.get(&client).is_some_and(|n| *n >= 1) {
            return Err(AuthError::Busy);
        }
        *map.entry(client).or_insert(0) += 1;
        Ok(InFlight { auth: self, client })
    }

    /// Costs what checking a real password costs, then fails.
    async fn refuse_like_a_wrong_password<T>(&self, password: &str) -> Result<T, AuthError> {
        let _ = self.unwrap(self.decoy.clone(), password).await;
        Err(AuthError::Invalid)
    }

    /// Checks a login. On failure, waits the client's current penalty before answering.
    pub async fn login(
        &self,
        client: IpAddr,
        user: &str,
        password: &str,
    ) -> Result<Session, AuthError> {
        let _slot = self.admit(client)?;
        let result = self.verify(user, password).await;
        self.penalise(client, &result).await;
        result
    }

    /// Runs another kind of login check (the console's admins) under the same per-client
    /// admission and doubling delay as mailbox logins.
    pub async fn checked<T>(
        &self,
        client: IpAddr,
        check: impl std::future::Future<Output = Result<T, AuthError>>,
    ) -> Result<T, AuthError> {
        let _slot = self.admit(client)?;
        let result = check.await;
        self.penalise(client, &result).await;
        result
    }

    /// Checks an archive user's login (primary address and password), with the same
    /// per-client delay as mailbox logins.
    pub async fn login_user(
        &self,
        client: IpAddr,
        login: &str,
        password: &str,
    ) -> Result<UserSession, AuthError> {
        let _slot = self.admit(client)?;
        let result = self.verify_user(login, password).await;
        self.penalise(client, &result).await;
        result
    }

    async fn verify_user(&self, login: &str, password: &str) -> Result<UserSession, AuthError> {
        let Some(users) = self.users.as_ref() else {
            return self.refuse_like_a_wrong_password(password).await;
        };
        let user = match users.find(login) {
            Ok(u) if u.login == login.trim().to_lowercase() => u,
            Ok(_) | Err(UserError::NotFound(_)) => {
                return self.refuse_like_a_wrong_password(password).await
            }
            Err(e) => return Err(AuthError::Temporary(e.to_string())),
        };
        let wrapped = users
            .wrapped_identity(&user.id)
            .map_err(|e| AuthError::Temporary(e.to_string()))?;
        let identity = self.unwrap(wrapped, password).await?;
        Ok(UserSession { user, identity })
    }

    async fn unwrap(&self, wrapped: Vec<u8>, password: &str) -> Result<Identity, AuthError> {
        let _permit = self
            .unwraps
            .acquire()
            .await
            .map_err(|e| AuthError::Temporary(e.to_string()))?;
        let password = password.to_owned();
        let identity =
            tokio::task::spawn_blocking(move || crypto::unwrap_identity(&wrapped, &password))
                .await
                .map_err(|e| AuthError::Temporary(e.to_string()))?;
        match identity {
            Ok(identity) => Ok(identity),
            Err(CryptoError::WrongPassword) => Err(AuthError::Invalid),
            Err(e) => Err(AuthError::Temporary(e.to_string())),
        }
    }

    async fn penalise<T>(&self, client: IpAddr, result: &Result<T, AuthError>) {
        match result {
            Ok(_) => {
                self.failures.lock().unwrap().remove(&client);
            }
            Err(AuthError::Invalid) => {
                let delay = self.record_failure(client);
                tokio::time::sleep(delay).await;
            }
            Err(AuthError::Temporary(_) | AuthError::Busy) => {}
        }
    }

    async fn verify(&self, user: &str, password: &str) -> Result<Session, AuthError> {
        let Ok(id) = MailboxId::parse(user) else {
            return self.refuse_like_a_wrong_password(password).await;
        };
        let (record, wrapped) = match (
            self.mailboxes.load(&id),
            self.mailboxes.wrapped_identity(&id),
        ) {
            (Ok(r), Ok(w)) => (r, w),
            (Err(MailboxError::NotFound(_)), _) | (_, Err(MailboxError::NotFound(_))) => {
                return self.refuse_like_a_wrong_password(password).await
            }
            (Err(e), _) | (_, Err(e)) => return Err(AuthError::Temporary(e.to_string())),
        };
        let identity = self.unwrap(wrapped, password).await?;
        Ok(Session { record, identity })
    }

    /// Records a failure and returns the delay to impose: base, 2×base, 4×base... up to max.
    fn record_failure(&self, client: IpAddr) -> Duration {
        let mut failures = self.failures.lock().unwrap();
        let now = Instant::now();
        failures.retain(|_, (_, last)| now.duration_since(*last) < FORGET_AFTER);
        let entry = failures.entry(client).or_insert((0, now));
        entry.0 = entry.0.saturating_add(1);
        entry.1 = now;
        let factor = 1u64 << (entry.0 - 1).min(20);
        Duration::from_millis(
            self.config
                .failure_delay_ms
                .saturating_mul(factor)
                .min(self.config.max_failure_delay_ms),
        )
    }
}

/// Parses a SASL PLAIN message (RFC 4616), already base64-decoded:
/// `authzid NUL authcid NUL password`. An authzid other than the authcid is refused.
pub fn parse_sasl_plain(data: &[u8]) -> Option<(String, String)> {
    let mut parts = data.split(|b| *b == 0);
    let authz = std::str::from_utf8(parts.next()?).ok()?;
    let user = std::str::from_utf8(parts.next()?).ok()?;
    let pass = std::str::from_utf8(parts.next()?).ok()?;
    if parts.next().is_some() || (!authz.is_empty() && authz != user) {
        return None;
    }
    Some((user.to_owned(), pass.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sasl_plain() {
        assert_eq!(
            parse_sasl_plain(b"\0mbx\0pw"),
            Some(("mbx".into(), "pw".into()))
        );
        assert_eq!(
            parse_sasl_plain(b"mbx\0mbx\0pw"),
            Some(("mbx".into(), "pw".into()))
        );
        assert_eq!(parse_sasl_plain(b"x\0mbx\0pw"), None);
        assert_eq!(parse_sasl_plain(b"mbx\0pw"), None);
    }

    #[test]
    fn delay_doubles_and_is_capped() {
        let auth = Authenticator::new(
            Mailboxes::new(std::path::Path::new("/nonexistent")),
            None,
            AuthConfig {
                failure_delay_ms: 100,
                max_failure_delay_ms: 350,
            },
        );
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let delays: Vec<u64> = (0..4)
            .map(|_| auth.record_failure(ip).as_millis() as u64)
            .collect();
        assert_eq!(delays, vec![100, 200, 350, 350]);
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        assert_eq!(auth.record_failure(other).as_millis(), 100);
    }
}
