//! Console sessions: a random cookie (only its SHA-256 is kept, in memory) that names the
//! administrator, a CSRF token for its forms, and two expiries — idle and absolute. A
//! session also ends when its administrator is deleted or gets a new password.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::RngCore;

use super::accounts::token_digest;

/// The cookie that carries a session.
pub const COOKIE: &str = "jg_session";

/// What a live session says.
#[derive(Debug, Clone)]
pub struct Session {
    pub admin: String,
    pub csrf: String,
    /// The administrator's password hash when the session began (a reset ends it).
    pub hash: String,
    created: Instant,
    last: Instant,
}

pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
    idle: Duration,
    max: Duration,
}

fn random_token() -> String {
    let mut raw = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    hex::encode(raw)
}

impl Sessions {
    pub fn new(idle: Duration, max: Duration) -> Sessions {
        Sessions {
            map: Mutex::new(HashMap::new()),
            idle,
            max,
        }
    }

    /// Starts a session; returns (cookie value, CSRF token).
    pub fn create(&self, admin: &str, hash: &str) -> (String, String) {
        let cookie = random_token();
        let csrf = random_token();
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, s| self.alive(s, now));
        map.insert(
            token_digest(&cookie),
            Session {
                admin: admin.to_owned(),
                csrf: csrf.clone(),
                hash: hash.to_owned(),
                created: now,
                last: now,
            },
        );
        (cookie, csrf)
    }

    fn alive(&self, s: &Session, now: Instant) -> bool {
        now.duration_since(s.last) < self.idle && now.duration_since(s.created) < self.max
    }

    /// The session a cookie names, if it is alive (and marks it used).
    pub fn get(&self, cookie: &str) -> Option<Session> {
        let key = token_digest(cookie);
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let alive = map.get(&key).is_some_and(|s| self.alive(s, now));
        if !alive {
            map.remove(&key);
            return None;
        }
        let session = map.get_mut(&key).expect("checked");
        session.last = now;
        Some(session.clone())
    }

    pub fn end(&self, cookie: &str) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(&token_digest(cookie));
    }
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

/// The `Set-Cookie` header for a session (`Secure` unless the connection is plain HTTP).
pub fn set_cookie(value: &str, secure: bool, max_age: Duration) -> String {
    format!(
        "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        max_age.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` header that removes the session cookie.
pub fn clear_cookie(secure: bool) -> String {
    format!(
        "{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
        if secure { "; Secure" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_and_end() {
        let sessions = Sessions::new(Duration::from_millis(50), Duration::from_secs(60));
        let (cookie, csrf) = sessions.create("ops", "h");
        let s = sessions.get(&cookie).unwrap();
        assert_eq!((s.admin.as_str(), s.csrf.as_str()), ("ops", csrf.as_str()));
        assert!(sessions.get("forged").is_none());
        std::thread::sleep(Duration::from_millis(80));
        assert!(sessions.get(&cookie).is_none(), "idle expiry");
        let (again, _) = sessions.create("ops", "h");
        sessions.end(&again);
        assert!(sessions.get(&again).is_none());
        assert_eq!(
            cookie_value("a=1; jg_session=xyz; b=2", COOKIE),
            Some("xyz")
        );
        assert!(set_cookie("v", true, Duration::from_secs(5)).contains("HttpOnly; SameSite=Strict"));
    }
}
