//! Who may do what: subscriber tokens (JWT), ingest credentials, the admin
//! token and allowed origins.
//!
//! Subscriber tokens are JWTs verified with `jsonwebtoken`, with the one
//! algorithm the configured key is for (HS256 for `--jwt-secret`, RS256 or
//! EdDSA for `--jwt-public-key`): a token naming another algorithm, `none`
//! included, is refused, as are a wrong signature, audience or issuer, and a
//! token expired or not yet valid (no leeway). The published TypeScript
//! client sends its token as the `hs_token` query parameter (or an
//! `Authorization: Bearer` header) and refreshes it in-band with
//! `refresh_auth` before `exp`.
//!
//! Claims: `sub`, `exp`, optional `nbf`, optional `views` (patterns such as
//! `Token/*`, `ActiveGame/latest`, `*`), optional `keys` (view -> the keys
//! of it the holder may subscribe to), optional `streams` (for ingest) and
//! optional `admin` (`true`: the admin routes). `vista token` mints such
//! tokens for a `--jwt-secret` setup ([`TokenRequest`]).
//!
//! The admin routes (`/plugins`, `/metrics`, `/status`, `/admin/*`,
//! reprojection) take the `--admin-token`, or a JWT with `"admin": true`
//! when the verifier is configured. They are protected once either
//! `--admin-token` or `--admin-jwt` is given; otherwise they are open, which
//! `vista serve` allows on loopback only: on a public address it refuses
//! to start without one of them or `--allow-anonymous-admin`, because
//! anyone reaching the port could read every view definition and start a
//! rebuild of the whole history.
//!
//! Ingest takes `--ingest-token TOKEN[:stream,stream]` values or a JWT with
//! a `streams` claim, as `Authorization: Bearer`, compared in constant time.
//! With no authentication configured everything is open: fine on loopback
//! (the host says so at start), refused on a public address unless
//! `--allow-anonymous`.

use std::collections::HashMap;
use std::path::Path;

use jsonwebtoken::{errors::ErrorKind, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::Deserialize;

/// What a verified token allows.
#[derive(Debug, Clone, Deserialize)]
pub struct Claims {
    /// Subject.
    #[serde(default)]
    pub sub: Option<String>,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// View patterns the holder may subscribe to (absent: all).
    #[serde(default)]
    pub views: Option<Vec<String>>,
    /// Per view: the only keys the holder may subscribe to.
    #[serde(default)]
    pub keys: Option<HashMap<String, Vec<String>>>,
    /// Streams the holder may ingest into (absent: none by JWT).
    #[serde(default)]
    pub streams: Option<Vec<String>>,
    /// Whether the holder may use the admin routes.
    #[serde(default)]
    pub admin: bool,
}

/// What a token minted by [`JwtVerifier::mint`] carries.
#[derive(Debug, Clone, Default)]
pub struct TokenRequest {
    /// `sub`.
    pub subject: String,
    /// `views` (`None`: every view).
    pub views: Option<Vec<String>>,
    /// `streams` (`None`: no ingest by this token).
    pub streams: Option<Vec<String>>,
    /// `admin: true`.
    pub admin: bool,
    /// Lifetime from now.
    pub ttl: std::time::Duration,
}

/// Why a token was refused, with the code clients see.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token where one is needed.
    #[error("auth-required: this server needs a token")]
    Required,
    /// Bad signature, algorithm, audience, issuer, shape, or not yet valid.
    #[error("token-invalid: {0}")]
    Invalid(String),
    /// Past its `exp`.
    #[error("token-expired: the token has expired")]
    Expired,
}

impl AuthError {
    /// The kebab-case code (`auth-required`, `token-invalid`, `token-expired`).
    pub fn code(&self) -> crate::codes::HttpCode {
        use crate::codes::HttpCode;
        match self {
            AuthError::Required => HttpCode::AuthRequired,
            AuthError::Invalid(_) => HttpCode::TokenInvalid,
            AuthError::Expired => HttpCode::TokenExpired,
        }
    }
}

/// Checks subscriber (and ingest) JWTs.
pub struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
    /// The same secret for signing (HS256 only): the token endpoint.
    signer: Option<EncodingKey>,
    audience: Option<String>,
    issuer: Option<String>,
}

impl JwtVerifier {
    /// HS256 with a shared secret.
    pub fn with_secret(secret: &str) -> Self {
        let mut verifier = Self::new(
            DecodingKey::from_secret(secret.as_bytes()),
            Algorithm::HS256,
        );
        verifier.signer = Some(EncodingKey::from_secret(secret.as_bytes()));
        verifier
    }

    /// RS256 or EdDSA with a PEM public key file.
    pub fn with_public_key(file: &Path) -> Result<Self, String> {
        let pem = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
        if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
            return Ok(Self::new(key, Algorithm::RS256));
        }
        DecodingKey::from_ed_pem(&pem)
            .map(|key| Self::new(key, Algorithm::EdDSA))
            .map_err(|e| format!("{}: not an RSA or Ed25519 public key: {e}", file.display()))
    }

    fn new(key: DecodingKey, algorithm: Algorithm) -> Self {
        let mut validation = Validation::new(algorithm);
        validation.leeway = 0;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        Self {
            key,
            validation,
            signer: None,
            audience: None,
            issuer: None,
        }
    }

    /// Requires this audience.
    pub fn audience(mut self, audience: &str) -> Self {
        self.validation.set_audience(&[audience]);
        self.validation.validate_aud = true;
        self.audience = Some(audience.to_owned());
        self
    }

    /// Requires this issuer.
    pub fn issuer(mut self, issuer: &str) -> Self {
        self.validation.set_issuer(&[issuer]);
        self.issuer = Some(issuer.to_owned());
        self
    }

    /// Signs a token for `subject` valid for `ttl`, limited to `views`.
    pub fn issue(
        &self,
        subject: &str,
        views: Option<&[String]>,
        ttl: std::time::Duration,
    ) -> Option<(String, u64)> {
        self.mint(&TokenRequest {
            subject: subject.to_owned(),
            views: views.map(<[String]>::to_vec),
            ttl,
            ..TokenRequest::default()
        })
    }

    /// Signs a token with these claims (HS256 only: `None` for a public
    /// key verifier), with the configured audience and issuer; returns it
    /// with its `exp`.
    pub fn mint(&self, request: &TokenRequest) -> Option<(String, u64)> {
        let signer = self.signer.as_ref()?;
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_secs()
            + request.ttl.as_secs();
        let mut claims = serde_json::json!({"sub": request.subject, "exp": exp});
        if let Some(views) = &request.views {
            claims["views"] = serde_json::json!(views);
        }
        if let Some(streams) = &request.streams {
            claims["streams"] = serde_json::json!(streams);
        }
        if request.admin {
            claims["admin"] = serde_json::json!(true);
        }
        if let Some(audience) = &self.audience {
            claims["aud"] = serde_json::json!(audience);
        }
        if let Some(issuer) = &self.issuer {
            claims["iss"] = serde_json::json!(issuer);
        }
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, signer).ok()?;
        Some((token, exp))
    }

    /// Verifies a token.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map(|data| data.claims)
            .map_err(|err| match err.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::Invalid("not valid yet (nbf)".into()),
                ErrorKind::InvalidAudience => AuthError::Invalid("wrong audience".into()),
                ErrorKind::InvalidIssuer => AuthError::Invalid("wrong issuer".into()),
                ErrorKind::InvalidSignature => AuthError::Invalid("bad signature".into()),
                ErrorKind::InvalidAlgorithm => AuthError::Invalid("algorithm not accepted".into()),
                other => AuthError::Invalid(format!("{other:?}")),
            })
    }
}

/// Whether `view` matches `pattern` (`*`, `Entity/*`, or exact).
fn view_matches(pattern: &str, view: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => view.starts_with(prefix),
        None => pattern == view,
    }
}

impl Claims {
    /// Whether the holder may subscribe to (view, key).
    pub fn allows_view(&self, view: &str, key: Option<&str>) -> bool {
        let view_ok = self
            .views
            .as_ref()
            .is_none_or(|patterns| patterns.iter().any(|p| view_matches(p, view)));
        let key_ok = match self.keys.as_ref().and_then(|keys| {
            keys.iter()
                .find(|(pattern, _)| view_matches(pattern, view))
                .map(|(_, allowed)| allowed)
        }) {
            None => true,
            Some(allowed) => key.is_some_and(|k| allowed.iter().any(|a| a == k)),
        };
        view_ok && key_ok
    }

    /// Whether the holder may ingest into `stream`.
    pub fn allows_stream(&self, stream: &str) -> bool {
        self.streams
            .as_ref()
            .is_some_and(|streams| streams.iter().any(|s| s == stream || s == "*"))
    }
}

/// One `--ingest-token TOKEN[:stream,stream]`.
#[derive(Debug, Clone)]
pub struct IngestToken {
    token: String,
    /// `None`: every stream.
    streams: Option<Vec<String>>,
}

impl std::str::FromStr for IngestToken {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (token, streams) = match text.split_once(':') {
            Some((token, streams)) => {
                (token, Some(streams.split(',').map(str::to_owned).collect()))
            }
            None => (text, None),
        };
        if token.len() < 8 {
            return Err("an ingest token needs at least 8 characters".into());
        }
        Ok(IngestToken {
            token: token.to_owned(),
            streams,
        })
    }
}

/// Compares without an early exit, so timing says nothing about where two
/// secrets differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A token bucket: `rate` tokens a second, at most `burst` saved up. Used
/// for every rate limit (subscribes per connection, ingest requests and
/// connections per client); small enough to own rather than pull in a
/// rate-limiting crate.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    refilled: std::time::Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: f64, burst: f64) -> Self {
        let burst = burst.max(1.0);
        Self {
            rate,
            burst,
            tokens: burst,
            refilled: std::time::Instant::now(),
        }
    }

    /// Takes a token, or says how long until one is there.
    pub fn take(&mut self) -> Result<(), std::time::Duration> {
        let now = std::time::Instant::now();
        let earned = now.duration_since(self.refilled).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + earned).min(self.burst);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - self.tokens) / self.rate.max(1e-3);
            Err(std::time::Duration::from_secs_f64(wait.min(86_400.0)))
        }
    }
}

/// Requests per second per client (an ingest credential, or an address):
/// a [`TokenBucket`] per client, `rate` a second, bursts of twice that.
/// Buckets idle for a minute are forgotten, so memory follows the clients
/// active now, not every client ever seen.
pub struct RateLimiter {
    rate: f64,
    buckets: std::sync::Mutex<HashMap<String, TokenBucket>>,
}

impl RateLimiter {
    /// `rate` requests a second per client.
    pub fn new(rate: u32) -> Self {
        Self {
            rate: f64::from(rate.max(1)),
            buckets: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request from `client`'s bucket, or says how long until
    /// one is there.
    pub fn check(&self, client: &str) -> Result<(), std::time::Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() > 10_000 {
            buckets.retain(|_, bucket| bucket.refilled.elapsed().as_secs() < 60);
        }
        if let Some(bucket) = buckets.get_mut(client) {
            return bucket.take();
        }
        let mut bucket = TokenBucket::new(self.rate, self.rate * 2.0);
        let taken = bucket.take();
        buckets.insert(client.to_owned(), bucket);
        taken
    }
}

/// One `--publishable-key KEY[:view,view]`: a key a browser app may hold,
/// exchanged at `POST /auth/token` for a short-lived subscriber token.
#[derive(Debug, Clone)]
pub struct PublishableKey {
    key: String,
    /// View patterns of the tokens it yields (`None`: all).
    views: Option<Vec<String>>,
}

impl std::str::FromStr for PublishableKey {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (key, views) = match text.split_once(':') {
            Some((key, views)) => (key, Some(views.split(',').map(str::to_owned).collect())),
            None => (text, None),
        };
        if key.len() < 8 {
            return Err("a publishable key needs at least 8 characters".into());
        }
        Ok(PublishableKey {
            key: key.to_owned(),
            views,
        })
    }
}

/// The host's authentication settings.
#[derive(Default)]
pub struct Auth {
    /// Verifies subscriber tokens; `None`: subscribers need none.
    pub jwt: Option<JwtVerifier>,
    /// Static ingest credentials.
    pub ingest_tokens: Vec<IngestToken>,
    /// Bearer token for `/plugins`, `/metrics`, `/status`, `/admin/*` and
    /// reprojection.
    pub admin_token: Option<String>,
    /// The admin routes need a credential even without `admin_token`: a JWT
    /// with `"admin": true` (`--admin-jwt`).
    pub admin_jwt: bool,
    /// `Origin`s allowed to open WebSockets (empty: any).
    pub allowed_origins: Vec<String>,
    /// `Host` header values allowed on WebSocket upgrades (empty: any):
    /// a page on another name resolving to this address (DNS rebinding)
    /// cannot reach the host.
    pub allowed_hosts: Vec<String>,
    /// Keys exchanged at `POST /auth/token`.
    pub publishable_keys: Vec<PublishableKey>,
    /// Lifetime of tokens the host issues.
    pub token_ttl: std::time::Duration,
    /// Ingest requests per second per credential (or address).
    pub ingest_rate: Option<RateLimiter>,
    /// New WebSocket connections per second per address.
    pub connection_rate: Option<RateLimiter>,
}

/// Why an ingest request was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum IngestDenied {
    /// No or bad credentials (401).
    Unauthenticated(AuthError),
    /// Valid credentials, another stream (403).
    Forbidden,
}

impl Auth {
    /// Whether any authentication is configured.
    pub fn is_enabled(&self) -> bool {
        self.jwt.is_some() || !self.ingest_tokens.is_empty() || self.admin_token.is_some()
    }

    /// Checks a WebSocket handshake's token (`None` when subscribers need
    /// no token).
    pub fn subscriber(&self, token: Option<&str>) -> Result<Option<Claims>, AuthError> {
        let Some(jwt) = &self.jwt else {
            return Ok(None);
        };
        jwt.verify(token.ok_or(AuthError::Required)?).map(Some)
    }

    /// [`Auth::subscriber`], also accepting the admin token, which may
    /// subscribe to every view and does not expire (the dashboard's view
    /// inspector connects with it).
    pub fn subscriber_or_admin(&self, token: Option<&str>) -> Result<Option<Claims>, AuthError> {
        match self.subscriber(token) {
            Err(_)
                if self.admin_token.is_some() && token.is_some() && self.admin(token).is_ok() =>
            {
                Ok(None)
            }
            other => other,
        }
    }

    /// Checks an ingest request's bearer token for `stream`.
    pub fn ingest(&self, bearer: Option<&str>, stream: &str) -> Result<(), IngestDenied> {
        if self.ingest_tokens.is_empty() && self.jwt.is_none() {
            return Ok(());
        }
        let token = bearer.ok_or(IngestDenied::Unauthenticated(AuthError::Required))?;
        let mut known = false;
        for candidate in &self.ingest_tokens {
            if constant_time_eq(candidate.token.as_bytes(), token.as_bytes()) {
                known = true;
                if candidate
                    .streams
                    .as_ref()
                    .is_none_or(|streams| streams.iter().any(|s| s == stream))
                {
                    return Ok(());
                }
            }
        }
        if known {
            return Err(IngestDenied::Forbidden);
        }
        match &self.jwt {
            Some(jwt) => {
                let claims = jwt.verify(token).map_err(IngestDenied::Unauthenticated)?;
                if claims.allows_stream(stream) {
                    Ok(())
                } else {
                    Err(IngestDenied::Forbidden)
                }
            }
            None => Err(IngestDenied::Unauthenticated(AuthError::Invalid(
                "unknown ingest token".into(),
            ))),
        }
    }

    /// Whether the admin routes need a credential.
    pub fn admin_protected(&self) -> bool {
        self.admin_token.is_some() || (self.admin_jwt && self.jwt.is_some())
    }

    /// Checks an admin route's bearer token: the admin token, or a JWT
    /// with `"admin": true`.
    pub fn admin(&self, bearer: Option<&str>) -> Result<(), AuthError> {
        if !self.admin_protected() {
            return Ok(());
        }
        let token = bearer.ok_or(AuthError::Required)?;
        if let Some(expected) = &self.admin_token {
            if constant_time_eq(expected.as_bytes(), token.as_bytes()) {
                return Ok(());
            }
        }
        match &self.jwt {
            // Only something shaped like a JWT is worth a verification
            // error; a mistyped admin token gets the plain answer.
            Some(jwt) if token.split('.').count() == 3 => match jwt.verify(token)? {
                claims if claims.admin => Ok(()),
                _ => Err(AuthError::Invalid("the token has no admin claim".into())),
            },
            _ => Err(AuthError::Invalid("not the admin token".into())),
        }
    }

    /// `POST /auth/token`: a subscriber token for a publishable key, with
    /// its expiry.
    pub fn exchange(&self, bearer: Option<&str>) -> Result<(String, u64), AuthError> {
        let presented = bearer.ok_or(AuthError::Required)?;
        let key = self
            .publishable_keys
            .iter()
            .find(|k| constant_time_eq(k.key.as_bytes(), presented.as_bytes()))
            .ok_or_else(|| AuthError::Invalid("unknown publishable key".into()))?;
        let subject = format!("publishable:{}", &key.key[..key.key.len().min(6)]);
        self.jwt
            .as_ref()
            .and_then(|jwt| jwt.issue(&subject, key.views.as_deref(), self.token_ttl))
            .ok_or_else(|| {
                AuthError::Invalid("this host cannot sign tokens (needs --jwt-secret)".into())
            })
    }

    /// Whether an upgrade naming this `Host` may connect (the port is
    /// ignored).
    pub fn host_allowed(&self, host: Option<&str>) -> bool {
        if self.allowed_hosts.is_empty() {
            return true;
        }
        let Some(host) = host else {
            return false;
        };
        let name = host.rsplit_once(':').map_or(host, |(name, port)| {
            if port.chars().all(|c| c.is_ascii_digit()) {
                name
            } else {
                host
            }
        });
        self.allowed_hosts.iter().any(|allowed| allowed == name)
    }

    /// Whether a WebSocket from this `Origin` may connect.
    pub fn origin_allowed(&self, origin: Option<&str>) -> bool {
        let Some(origin) = origin else {
            return true; // not a browser
        };
        self.allowed_origins.is_empty()
            || self.allowed_origins.iter().any(|allowed| {
                allowed == "*"
                    || allowed == origin
                    || allowed.strip_prefix("*.").is_some_and(|suffix| {
                        origin
                            .split_once("://")
                            .is_some_and(|(_, host)| host.ends_with(&format!(".{suffix}")))
                    })
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(views: Option<Vec<&str>>, keys: Option<Vec<(&str, Vec<&str>)>>) -> Claims {
        Claims {
            sub: None,
            exp: u64::MAX,
            views: views.map(|v| v.into_iter().map(str::to_owned).collect()),
            keys: keys.map(|k| {
                k.into_iter()
                    .map(|(v, ks)| (v.to_owned(), ks.into_iter().map(str::to_owned).collect()))
                    .collect()
            }),
            streams: None,
            admin: false,
        }
    }

    #[test]
    fn admin_routes_take_the_admin_token_or_an_admin_jwt() {
        let open = Auth {
            jwt: Some(JwtVerifier::with_secret("s3cret")),
            ..Auth::default()
        };
        assert!(!open.admin_protected(), "--jwt-secret alone leaves it open");
        let auth = Auth {
            jwt: Some(JwtVerifier::with_secret("s3cret")),
            admin_jwt: true,
            ..Auth::default()
        };
        let jwt = auth.jwt.as_ref().unwrap();
        let token = |admin| {
            jwt.mint(&TokenRequest {
                subject: "ops".into(),
                admin,
                ttl: std::time::Duration::from_secs(60),
                ..TokenRequest::default()
            })
            .unwrap()
            .0
        };
        let (admin, plain) = (token(true), token(false));
        assert_eq!(auth.admin(Some(&admin)), Ok(()));
        assert_eq!(
            auth.admin(Some(&plain)),
            Err(AuthError::Invalid("the token has no admin claim".into()))
        );
        assert_eq!(auth.admin(None), Err(AuthError::Required));
        let both = Auth {
            admin_token: Some("admin-secret".into()),
            ..auth
        };
        assert_eq!(both.admin(Some("admin-secret")), Ok(()));
        assert_eq!(both.admin(Some(&admin)), Ok(()));
        assert!(both.admin(Some("admin-secreX")).is_err());
    }

    #[test]
    fn view_patterns_and_per_view_keys() {
        let c = claims(
            Some(vec!["Token/*", "ActiveGame/latest"]),
            Some(vec![("Token/state", vec!["a"])]),
        );
        assert!(c.allows_view("Token/list", None));
        assert!(c.allows_view("ActiveGame/latest", None));
        assert!(!c.allows_view("Game/list", None));
        assert!(c.allows_view("Token/state", Some("a")));
        assert!(!c.allows_view("Token/state", Some("b")));
        assert!(
            !c.allows_view("Token/state", None),
            "all keys is more than key a"
        );
        assert!(claims(None, None).allows_view("Anything/list", None));
    }

    #[test]
    fn ingest_tokens_are_scoped_and_compared_whole() {
        let auth = Auth {
            ingest_tokens: vec!["feed-secret:tokens".parse().unwrap()],
            ..Auth::default()
        };
        assert_eq!(auth.ingest(Some("feed-secret"), "tokens"), Ok(()));
        assert_eq!(
            auth.ingest(Some("feed-secret"), "games"),
            Err(IngestDenied::Forbidden)
        );
        assert!(matches!(
            auth.ingest(Some("feed-secreX"), "tokens"),
            Err(IngestDenied::Unauthenticated(AuthError::Invalid(_)))
        ));
        assert_eq!(
            auth.ingest(None, "tokens"),
            Err(IngestDenied::Unauthenticated(AuthError::Required))
        );
        assert!("short".parse::<IngestToken>().is_err());
    }

    #[test]
    fn buckets_allow_bursts_then_the_rate_and_say_how_long_to_wait() {
        let mut bucket = TokenBucket::new(1.0, 3.0);
        assert!((0..3).all(|_| bucket.take().is_ok()));
        let wait = bucket.take().unwrap_err();
        assert!(
            wait > std::time::Duration::from_millis(900)
                && wait <= std::time::Duration::from_secs(1)
        );
        let limiter = RateLimiter::new(1);
        assert!(limiter.check("a").is_ok() && limiter.check("a").is_ok());
        assert!(limiter.check("a").is_err(), "bursts of twice the rate");
        assert!(limiter.check("b").is_ok(), "one bucket per client");
    }

    #[test]
    fn origins() {
        let auth = Auth {
            allowed_origins: vec!["https://app.example".into(), "*.example.org".into()],
            ..Auth::default()
        };
        assert!(auth.origin_allowed(Some("https://app.example")));
        assert!(auth.origin_allowed(Some("https://x.example.org")));
        assert!(!auth.origin_allowed(Some("https://evil.example")));
        assert!(auth.origin_allowed(None));
    }
}
