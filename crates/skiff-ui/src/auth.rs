//! One-time login codes and the sessions they open.
//!
//! `skiff dashboard` asks the API (with the daemon's token) for a code and prints
//! `…/ui/login?code=…`; opening it once, within [`CODE_TTL`], trades the code for a session
//! whose token only ever travels in an HttpOnly, SameSite=Strict cookie. Only SHA-256 hashes
//! of codes and tokens are kept, so a memory dump or a log line holds nothing to replay.
//! Time is passed in, so expiry is tested on a simulated clock.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rand::RngCore;
use sha2::{Digest, Sha256};

/// How long a login code can be used.
pub const CODE_TTL: Duration = Duration::from_secs(5 * 60);
/// How long a session lasts from its login.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 60 * 60);
/// Codes outstanding at once; the oldest goes when another is made.
const MAX_CODES: usize = 64;
/// Sessions open at once; the oldest goes when another opens.
const MAX_SESSIONS: usize = 256;

/// Why a login code was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    /// No such code was issued (or it was dropped for newer ones).
    #[error("this login link is not valid; run `skiff dashboard` for a new one")]
    Unknown,
    /// The code was already used.
    #[error(
        "this login link was already used; each works once: run `skiff dashboard` for a new one"
    )]
    Used,
    /// The code is older than [`CODE_TTL`].
    #[error(
        "this login link has expired (links last 5 minutes); run `skiff dashboard` for a new one"
    )]
    Expired,
}

type Hash = [u8; 32];

fn hash(secret: &str) -> Hash {
    Sha256::digest(secret.as_bytes()).into()
}

fn secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

#[derive(Debug, Clone, Copy)]
struct Code {
    expires: Instant,
    used: bool,
}

/// Login codes and sessions.
#[derive(Debug, Default)]
pub struct Logins {
    codes: HashMap<Hash, Code>,
    sessions: HashMap<Hash, Instant>,
}

impl Logins {
    /// A new login code, valid until the instant returned.
    pub fn issue_code(&mut self, now: Instant) -> (String, Instant) {
        self.codes.retain(|_, c| c.expires > now);
        if self.codes.len() >= MAX_CODES
            && let Some(oldest) = self
                .codes
                .iter()
                .min_by_key(|(_, c)| c.expires)
                .map(|(h, _)| *h)
        {
            self.codes.remove(&oldest);
        }
        let code = secret();
        let expires = now + CODE_TTL;
        self.codes.insert(
            hash(&code),
            Code {
                expires,
                used: false,
            },
        );
        (code, expires)
    }

    /// Trades `code` for a new session's token, once.
    pub fn redeem(&mut self, code: &str, now: Instant) -> Result<String, LoginError> {
        let entry = self.codes.get_mut(&hash(code)).ok_or(LoginError::Unknown)?;
        if entry.used {
            return Err(LoginError::Used);
        }
        if entry.expires <= now {
            return Err(LoginError::Expired);
        }
        // A used code is kept until it would have expired, to say why it is refused.
        entry.used = true;
        self.sessions.retain(|_, expires| *expires > now);
        if self.sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = self
                .sessions
                .iter()
                .min_by_key(|(_, e)| **e)
                .map(|(h, _)| *h)
        {
            self.sessions.remove(&oldest);
        }
        let token = secret();
        self.sessions.insert(hash(&token), now + SESSION_TTL);
        Ok(token)
    }

    /// Whether `token` names an open session.
    pub fn is_valid(&self, token: &str, now: Instant) -> bool {
        self.sessions
            .get(&hash(token))
            .is_some_and(|expires| *expires > now)
    }

    /// Closes the session of `token`, if open.
    pub fn logout(&mut self, token: &str) {
        self.sessions.remove(&hash(token));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_opens_one_session_once() {
        let mut l = Logins::default();
        let t0 = Instant::now();
        let (code, expires) = l.issue_code(t0);
        assert_eq!(expires, t0 + CODE_TTL);
        assert_eq!(code.len(), 64);
        let token = l
            .redeem(&code, t0 + Duration::from_secs(1))
            .expect("redeems");
        assert!(l.is_valid(&token, t0 + Duration::from_secs(2)));
        assert_eq!(
            l.redeem(&code, t0 + Duration::from_secs(3)),
            Err(LoginError::Used)
        );
        assert!(!l.is_valid(&code, t0), "a code is not a session");
        assert_eq!(l.redeem("nope", t0), Err(LoginError::Unknown));
    }

    #[test]
    fn codes_expire_after_five_minutes() {
        let mut l = Logins::default();
        let t0 = Instant::now();
        let (late, _) = l.issue_code(t0);
        let (in_time, _) = l.issue_code(t0);
        assert!(
            l.redeem(&in_time, t0 + CODE_TTL - Duration::from_secs(1))
                .is_ok()
        );
        assert_eq!(l.redeem(&late, t0 + CODE_TTL), Err(LoginError::Expired));
    }

    #[test]
    fn sessions_expire_and_log_out() {
        let mut l = Logins::default();
        let t0 = Instant::now();
        let (code, _) = l.issue_code(t0);
        let token = l.redeem(&code, t0).expect("redeems");
        assert!(l.is_valid(&token, t0 + SESSION_TTL - Duration::from_secs(1)));
        assert!(!l.is_valid(&token, t0 + SESSION_TTL));
        let (code, _) = l.issue_code(t0);
        let token = l.redeem(&code, t0).expect("redeems");
        l.logout(&token);
        assert!(!l.is_valid(&token, t0));
    }

    #[test]
    fn outstanding_codes_and_sessions_are_bounded() {
        let mut l = Logins::default();
        let t0 = Instant::now();
        let first = l.issue_code(t0).0;
        for i in 0..MAX_CODES * 2 {
            l.issue_code(t0 + Duration::from_millis(i as u64 + 1));
        }
        assert_eq!(l.codes.len(), MAX_CODES);
        assert_eq!(l.redeem(&first, t0), Err(LoginError::Unknown));
        for i in 0..MAX_SESSIONS + 10 {
            let at = t0 + Duration::from_millis(i as u64);
            let (c, _) = l.issue_code(at);
            l.redeem(&c, at).expect("redeems");
        }
        assert_eq!(l.sessions.len(), MAX_SESSIONS);
    }
}
