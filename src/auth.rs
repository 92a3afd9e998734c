//! Credentials: generated logins and passwords, Argon2id hashes, HTTP Basic parsing, a short cache of
//! successful verifications (Argon2 costs ~45 ms; a sync sends credentials with every request), and
//! throttling of repeated failures.

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier, phc::PasswordHash};
use base64::Engine as _;
use rand::Rng as _;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// Letters and digits without look-alikes (0/O/o, 1/l/I).
const PASSWORD_ALPHABET: &[u8] = b"23456789abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ";
const PASSWORD_LEN: usize = 24; // 24 × log2(56) ≈ 139 bits
const LOGIN_ALPHABET: &[u8] = b"23456789abcdefghijkmnpqrstuvwxyz";
const LOGIN_ID_LEN: usize = 10;

/// Uniform random characters from `alphabet`, by rejection sampling over OS randomness.
fn random_string(alphabet: &[u8], len: usize) -> String {
    let limit = 256 - (256 % alphabet.len());
    let mut out = String::with_capacity(len);
    let mut rng = rand::rng();
    while out.len() < len {
        let mut buf = [0u8; 64];
        rng.fill_bytes(&mut buf);
        for b in buf {
            if (b as usize) < limit && out.len() < len {
                out.push(alphabet[b as usize % alphabet.len()] as char);
            }
        }
    }
    out
}

pub fn generate_password() -> String {
    random_string(PASSWORD_ALPHABET, PASSWORD_LEN)
}

pub fn generate_login(domain: &str) -> String {
    format!("{}@{}", random_string(LOGIN_ALPHABET, LOGIN_ID_LEN), domain)
}

/// A random secret for tokens (admin, integrations): 32 bytes, URL-safe base64.
pub fn generate_token(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{prefix}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// Tokens are high-entropy, so a plain SHA-256 is a safe stored form (no need for a slow hash).
pub fn token_hash(token: &str) -> String {
    Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

pub fn token_matches(token: &str, stored_hash: &str) -> bool {
    token_hash(token).as_bytes().ct_eq(stored_hash.as_bytes()).into()
}

pub fn hash_password(password: &str) -> Result<String, String> {
    Argon2::default().hash_password(password.as_bytes()).map(|h| h.to_string()).map_err(|e| e.to_string())
}

/// Argon2 verifications on a fixed set of threads (one per core). Each verification allocates a 19 MB block;
/// on tokio's blocking pool every one of up to hundreds of threads would keep such a block in its malloc
/// arena (an uncached burst measured 0.9 GB RSS), and more parallel verifications than cores gain nothing.
pub struct Verifier {
    jobs: std::sync::mpsc::Sender<VerifyJob>,
}

type VerifyJob = (String, String, tokio::sync::oneshot::Sender<bool>);

impl Verifier {
    pub fn new(threads: usize) -> Verifier {
        let (jobs, queue) = std::sync::mpsc::channel::<VerifyJob>();
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..threads.max(1) {
            let queue = queue.clone();
            let spawned = std::thread::Builder::new().name(format!("kartei-argon2-{i}")).spawn(move || {
                loop {
                    let job = match queue.lock() {
                        Ok(q) => q.recv(),
                        Err(_) => return,
                    };
                    let Ok((password, stored, reply)) = job else { return };
                    let _ = reply.send(verify_password(&password, &stored));
                }
            });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start an Argon2 thread");
            }
        }
        Verifier { jobs }
    }

    /// False also when no verifier thread is left (the login is refused, never let through).
    pub async fn verify(&self, password: String, stored: String) -> bool {
        let (reply, answer) = tokio::sync::oneshot::channel();
        if self.jobs.send((password, stored, reply)).is_err() {
            return false;
        }
        answer.await.unwrap_or(false)
    }
}

pub fn verify_password(password: &str, stored: &str) -> bool {
    match PasswordHash::new(stored) {
        Ok(hash) => Argon2::default().verify_password(password.as_bytes(), &hash).is_ok(),
        Err(_) => false,
    }
}

/// The user name and password of an `Authorization: Basic` header (RFC 7617), if well-formed.
pub fn parse_basic(header: &str) -> Option<(String, String)> {
    let (scheme, encoded) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    if user.is_empty() {
        return None;
    }
    Some((user.to_string(), password.to_string()))
}

pub fn parse_bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

struct CachedLogin {
    username: String,
    generation: i64,
    expires: Instant,
}

struct Failures {
    /// Failed attempts in the window.
    count: u32,
    /// Attempts whose password is being checked right now.
    in_flight: u32,
    window_start: Instant,
}

/// In-memory authentication state: the verification cache and the failure counters.
pub struct AuthState {
    /// Keyed by SHA-256(secret ‖ user ‖ password): a memory dump does not reveal passwords.
    cache: Mutex<HashMap<[u8; 32], CachedLogin>>,
    failures: Mutex<HashMap<String, Failures>>,
    /// Woken whenever an attempt ends, for attempts waiting for one in flight (see `begin_attempt`).
    attempt_ended: tokio::sync::Notify,
    secret: [u8; 32],
    cache_ttl: Duration,
    max_failures: u32,
    window: Duration,
}

impl AuthState {
    pub fn new(cache_ttl: Duration, max_failures: u32, window: Duration) -> Self {
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        AuthState {
            cache: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            attempt_ended: tokio::sync::Notify::new(),
            secret,
            cache_ttl,
            max_failures,
            window,
        }
    }

    fn cache_key(&self, user: &str, password: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.secret);
        h.update((user.len() as u64).to_le_bytes());
        h.update(user.as_bytes());
        h.update(password.as_bytes());
        h.finalize().into()
    }

    /// Was this exact login verified recently, for the user's current credential generation?
    pub fn cached(&self, user: &str, password: &str, generation: i64) -> bool {
        let key = self.cache_key(user, password);
        let Ok(cache) = self.cache.lock() else { return false };
        cache.get(&key).is_some_and(|c| c.username == user && c.generation == generation && c.expires > Instant::now())
    }

    pub fn remember(&self, user: &str, password: &str, generation: i64) {
        let key = self.cache_key(user, password);
        if let Ok(mut cache) = self.cache.lock() {
            let now = Instant::now();
            if cache.len() > 10_000 {
                cache.retain(|_, c| c.expires > now);
            }
            cache.insert(key, CachedLogin { username: user.to_string(), generation, expires: now + self.cache_ttl });
        }
    }

    /// Drops every cached login of a user (credential reset, disable, delete).
    pub fn forget(&self, user: &str) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.retain(|_, c| c.username != user);
        }
    }

    /// Starts a login attempt for each key (its address, and its login from that address) *before* the
    /// password is checked. Failures plus attempts in flight never exceed the limit, so guesses sent in
    /// parallel cannot all be tried before the first failure is counted; an attempt beyond it waits for one
    /// in flight to end (a burst of right passwords, say an office's devices after a restart, only waits
    /// for a few Argon2 checks). `Err(seconds to wait)` once the failures alone reach the limit.
    pub async fn begin_attempt(&self, keys: [String; 2]) -> Result<Attempt<'_>, u64> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let ended = self.attempt_ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            {
                // A poisoned lock only means a panic elsewhere: logins go on unthrottled rather than refused.
                let Ok(mut failures) = self.failures.lock() else { return Ok(Attempt { state: self, keys: None }) };
                let now = Instant::now();
                if failures.len() > 100_000 {
                    failures.retain(|_, f| f.in_flight > 0 || now.duration_since(f.window_start) < self.window);
                }
                let mut room = true;
                for key in &keys {
                    let Some(f) = failures.get_mut(key) else { continue };
                    let elapsed = now.duration_since(f.window_start);
                    if elapsed >= self.window {
                        f.count = 0;
                        f.window_start = now;
                    } else if f.count >= self.max_failures {
                        // Rounded up, so that a client honouring Retry-After is not refused again.
                        let left = self.window - elapsed;
                        return Err((left.as_secs() + u64::from(left.subsec_nanos() > 0)).max(1));
                    }
                    room &= f.count + f.in_flight < self.max_failures;
                }
                if room {
                    for key in &keys {
                        let f = failures.entry(key.clone()).or_insert(Failures {
                            count: 0,
                            in_flight: 0,
                            window_start: now,
                        });
                        f.in_flight += 1;
                    }
                    return Ok(Attempt { state: self, keys: Some(keys) });
                }
            }
            if tokio::time::timeout_at(deadline, ended).await.is_err() {
                return Err(1);
            }
        }
    }

    fn end_attempt(&self, keys: &[String; 2], failed: bool) {
        if let Ok(mut failures) = self.failures.lock() {
            for key in keys {
                if let Some(f) = failures.get_mut(key) {
                    f.in_flight = f.in_flight.saturating_sub(1);
                    if failed {
                        f.count += 1;
                    }
                }
            }
            if !failed {
                // The login's count from this address starts over (the address's failures stay: a valid login
                // of one's own must not wipe out failed guesses).
                if let Some(f) = failures.get_mut(&keys[1])
                    && f.in_flight == 0
                {
                    failures.remove(&keys[1]);
                }
            }
        }
        self.attempt_ended.notify_waiters();
    }
}

/// A login attempt in flight (from `AuthState::begin_attempt`). `failed` counts it as a failure; dropped
/// otherwise (the password was right, or the request went away), it only ends.
pub struct Attempt<'a> {
    state: &'a AuthState,
    /// `[address key, login-from-address key]`; None when throttling is unavailable.
    keys: Option<[String; 2]>,
}

impl Attempt<'_> {
    pub fn failed(mut self) {
        if let Some(keys) = self.keys.take() {
            self.state.end_attempt(&keys, true);
        }
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if let Some(keys) = self.keys.take() {
            self.state.end_attempt(&keys, false);
        }
    }
}

pub fn ip_key(ip: IpAddr) -> String {
    format!("ip:{ip}")
}

/// A login from one address. Throttling by login alone would let anyone lock a person out with a few
/// wrong guesses; per address and per login from that address, an attacker only throttles themselves (and
/// whoever shares their address). Generated passwords are far too strong to guess online anyway: the limit
/// is about the Argon2 work an address can cause.
pub fn pair_key(user: &str, ip: IpAddr) -> String {
    format!("login:{}|{ip}", user.to_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_long_and_from_the_alphabet() {
        let p = generate_password();
        assert_eq!(p.len(), PASSWORD_LEN);
        assert!(p.bytes().all(|b| PASSWORD_ALPHABET.contains(&b)));
        assert_ne!(p, generate_password());
        let login = generate_login("example.org");
        assert!(login.ends_with("@example.org") && login.len() == LOGIN_ID_LEN + 12);
    }

    #[test]
    fn basic_header_parsing() {
        let h = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("ann@x.org:pa:ss"));
        assert_eq!(parse_basic(&h), Some(("ann@x.org".into(), "pa:ss".into())));
        assert_eq!(parse_basic("Basic !!!"), None);
        assert_eq!(parse_basic("Bearer abc"), None);
        assert_eq!(parse_basic(&format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(":pw"))), None);
        assert_eq!(
            parse_basic(&format!("Basic {}", base64::engine::general_purpose::STANDARD.encode([0xff, b':', b'a']))),
            None
        );
    }

    #[test]
    fn cache_respects_generation_and_forget() {
        let a = AuthState::new(Duration::from_secs(60), 3, Duration::from_secs(60));
        a.remember("u", "pw", 1);
        assert!(a.cached("u", "pw", 1));
        assert!(!a.cached("u", "pw", 2));
        assert!(!a.cached("u", "other", 1));
        a.forget("u");
        assert!(!a.cached("u", "pw", 1));
    }

    #[tokio::test]
    async fn throttle_counts_attempts_in_flight_and_lets_right_passwords_wait() {
        let a = AuthState::new(Duration::from_secs(60), 3, Duration::from_secs(60));
        let keys = |pair: &str| ["ip".to_string(), pair.to_string()];
        // Three attempts in flight fill the limit: a fourth waits until one ends.
        let first = a.begin_attempt(keys("p")).await.expect("1");
        let second = a.begin_attempt(keys("p")).await.expect("2");
        let third = a.begin_attempt(keys("p")).await.expect("3");
        let fourth = a.begin_attempt(keys("p"));
        tokio::pin!(fourth);
        assert!(tokio::time::timeout(Duration::from_millis(50), fourth.as_mut()).await.is_err(), "waits");
        drop(first); // a right password: it only ends
        let fourth = tokio::time::timeout(Duration::from_secs(1), fourth).await.expect("woken").expect("4");
        assert!(a.begin_attempt(["other-ip".into(), "q".into()]).await.is_ok(), "other keys are not affected");
        // Failures count: with 3 of them the address is refused at once, with the time left.
        second.failed();
        third.failed();
        fourth.failed();
        let refused = a.begin_attempt(keys("p2")).await.err().expect("refused");
        assert!((1..=60).contains(&refused), "{refused}");
    }

    #[test]
    fn hashes_verify() {
        let h = hash_password("secret").expect("hash");
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("secret", &h));
        assert!(!verify_password("Secret", &h));
        assert!(token_matches("t", &token_hash("t")));
    }
}
