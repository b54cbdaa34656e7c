//! Client authentication: HS256-signed JSON Web Tokens.
//!
//! With `--token-secret-file F` a client proves who it is with a token
//! signed by the operator's secret: `LOGIN alice <token>`, or at the
//! WebSocket handshake `/ws?user=alice&token=...` (or an `Authorization:
//! Bearer` header). [`TokenAuth::verify`] checks the token and
//! [`TokenAuth::verify_user`] also that it names the user logging in; the
//! session answers a failure with `ERR auth <reason>` or closes with 1008,
//! the reason being the [`AuthError`]'s message. `sb-token` (and
//! `scripts/token`) mint tokens with [`TokenAuth::mint`].
//!
//! A token is `base64url(header).base64url(claims).base64url(hmac)` with the
//! [`Claims`] below. Only HS256 is accepted: the algorithm is pinned here,
//! never taken from the token, so `alg: none` and public-key algorithms
//! (the classic confusion attacks) are refused before any signature check.
//!
//! Nothing here logs, and no error message carries the token or any part
//! of it: tokens are bearer credentials and logs travel further than they
//! should.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Shortest secret accepted, in bytes. HS256 wants 32 random bytes; 16 is
/// the floor below which a secret is a password, not a key.
pub const MIN_SECRET_LEN: usize = 16;

/// Clock skew tolerated on `exp` (and `nbf`), in seconds: the server that
/// checks a token and the machine that minted it run separate clocks.
pub const LEEWAY_SECS: u64 = 10;

/// Longest token considered, in bytes. A real one is a few hundred; the cap
/// keeps a hostile client from making us base64-decode megabytes.
pub const MAX_TOKEN_LEN: usize = 4096;

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user the token was issued to.
    pub sub: String,
    /// Expiry, in seconds since the Unix epoch.
    pub exp: u64,
    /// May use admin-only commands (`ALL`).
    #[serde(default)]
    pub admin: bool,
}

/// Why a token (or the secret) was refused. Messages are lowercase, fit
/// after `ERR auth `, never contain the token, and include their cause
/// (not also exposed as `source()`, so `{:#}` chains do not repeat it).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The token's `exp` is past (beyond the leeway).
    #[error("token expired")]
    Expired,
    /// The token's `nbf` is in the future (beyond the leeway).
    #[error("token not valid yet")]
    NotYetValid,
    /// The signature does not match: another secret signed it, or some part
    /// was changed after signing.
    #[error("token signature is invalid")]
    BadSignature,
    /// The header names an algorithm other than HS256 (`none` included).
    /// Holds the algorithm name, cleaned to a short printable word.
    #[error("token algorithm {0} is not accepted, only HS256")]
    WrongAlgorithm(String),
    /// Not a JWT: wrong shape, bad base64 or JSON, or claims of the wrong
    /// type. Holds which of these, never the offending text.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// A claim the server needs (`sub`, `exp`) is absent.
    #[error("token has no {0} claim")]
    MissingClaim(&'static str),
    /// The token is valid but issued to someone else than the user logging
    /// in.
    #[error("token was issued to another user")]
    WrongUser,
    /// The user name cannot be put in a token (minting only).
    #[error("invalid user name: {0}")]
    BadUser(shared::ids::NameError),
    /// Signing failed, or the lifetime overflows the clock (minting only).
    #[error("cannot mint token: {0}")]
    Mint(String),
    /// The secret file cannot be read.
    #[error("token secret: {0}")]
    SecretFile(#[source] entry::secret::SecretError),
    /// The secret is shorter than [`MIN_SECRET_LEN`].
    #[error(
        "token secret in {path} is {len} bytes, at least {MIN_SECRET_LEN} are needed \
         (e.g. `head -c 32 /dev/urandom | base64 > {path}`)"
    )]
    SecretTooShort {
        /// The file.
        path: PathBuf,
        /// How long the secret is.
        len: usize,
    },
}

/// Reads an HMAC secret from a file, trailing whitespace (the newline an
/// editor or `echo` adds) trimmed. Refuses an empty or short secret so a
/// misconfigured server fails at start-up, not at the first login.
pub fn load_secret(path: &Path) -> Result<Vec<u8>, AuthError> {
    let secret = entry::secret::read_secret(path).map_err(AuthError::SecretFile)?;
    if secret.len() < MIN_SECRET_LEN {
        return Err(AuthError::SecretTooShort {
            path: path.to_owned(),
            len: secret.len(),
        });
    }
    Ok(secret)
}

/// Verifies and mints tokens with one HMAC secret.
#[derive(Clone)]
pub struct TokenAuth {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl fmt::Debug for TokenAuth {
    // The keys hold the secret: never print them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenAuth").finish_non_exhaustive()
    }
}

/// Claims as decoded, before the required ones are known to be there: so a
/// token without `sub` is told apart from one with claims of the wrong type.
#[derive(Deserialize)]
struct RawClaims {
    sub: Option<String>,
    exp: Option<u64>,
    #[serde(default)]
    admin: bool,
}

/// The only header field looked at before verification.
#[derive(Deserialize)]
struct AlgOnly {
    alg: String,
}

impl TokenAuth {
    /// A verifier and minter for `secret` (see [`load_secret`]).
    pub fn from_secret(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        // No audience is issued or expected; a token that carries one is
        // still ours if our secret signed it.
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "sub"]);
        TokenAuth {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// Checks a token: shape, algorithm (HS256 only), signature, then
    /// expiry with [`LEEWAY_SECS`] of tolerance, and that `sub` is a valid
    /// user name. Returns its claims.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        check_header(token)?;
        let raw = jsonwebtoken::decode::<RawClaims>(token, &self.decoding, &self.validation)
            .map_err(|e| map_error(e.kind()))?
            .claims;
        // The validation requires both; checked again rather than trusted.
        let sub = raw.sub.ok_or(AuthError::MissingClaim("sub"))?;
        if shared::ids::check_name(&sub).is_err() {
            return Err(AuthError::Malformed("sub is not a valid user name"));
        }
        Ok(Claims {
            sub,
            exp: raw.exp.ok_or(AuthError::MissingClaim("exp"))?,
            admin: raw.admin,
        })
    }

    /// [`verify`](Self::verify), and the token must have been issued to
    /// `user`: what `LOGIN <user> <token>` and `/ws?user=..&token=..` need.
    pub fn verify_user(&self, token: &str, user: &str) -> Result<Claims, AuthError> {
        let claims = self.verify(token)?;
        if claims.sub != user {
            return Err(AuthError::WrongUser);
        }
        Ok(claims)
    }

    /// A token for `user`, valid for `ttl` from now, with the admin role
    /// when `admin`.
    pub fn mint(&self, user: &str, ttl: Duration, admin: bool) -> Result<String, AuthError> {
        shared::ids::check_name(user).map_err(AuthError::BadUser)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| AuthError::Mint("the system clock is before 1970".into()))?;
        let exp = now
            .checked_add(ttl)
            .ok_or_else(|| AuthError::Mint("lifetime too long".into()))?
            .as_secs();
        let claims = Claims {
            sub: user.to_owned(),
            exp,
            admin,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| AuthError::Mint(e.to_string()))
    }
}

/// Refuses, before any crypto, what is not a three-part token whose header
/// says HS256. jsonwebtoken would refuse these too, but as a JSON error
/// ("unknown variant `none`") that cannot be told apart from garbage.
fn check_header(token: &str) -> Result<(), AuthError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(AuthError::Malformed("too long"));
    }
    let mut parts = token.split('.');
    let (Some(header), Some(_claims), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed("not three dot-separated parts"));
    };
    let header = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| AuthError::Malformed("header is not base64url"))?;
    let AlgOnly { alg } = serde_json::from_slice(&header)
        .map_err(|_| AuthError::Malformed("header is not a json object with alg"))?;
    if alg != "HS256" {
        return Err(AuthError::WrongAlgorithm(printable(&alg)));
    }
    Ok(())
}

/// A short, printable rendering of an attacker-chosen word for an error
/// message: at most 16 ASCII alphanumerics, anything else becomes `?`.
fn printable(word: &str) -> String {
    let mut out: String = word
        .chars()
        .take(16)
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '?' })
        .collect();
    if out.is_empty() {
        out.push_str("\"\"");
    }
    out
}

/// jsonwebtoken's verdict in our words. Its own messages are not reused:
/// some quote parts of the token (serde's "invalid type: string ...").
fn map_error(kind: &ErrorKind) -> AuthError {
    match kind {
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            AuthError::WrongAlgorithm("unknown".into())
        }
        ErrorKind::MissingRequiredClaim(claim) if claim == "sub" => AuthError::MissingClaim("sub"),
        ErrorKind::MissingRequiredClaim(_) => AuthError::MissingClaim("exp"),
        ErrorKind::InvalidClaimFormat(_) => AuthError::Malformed("a claim has the wrong type"),
        ErrorKind::Base64(_) => AuthError::Malformed("not base64url"),
        ErrorKind::Json(_) => AuthError::Malformed("claims are not the expected json"),
        ErrorKind::Utf8(_) => AuthError::Malformed("not utf-8"),
        ErrorKind::InvalidToken => AuthError::Malformed("not a jwt"),
        _ => AuthError::Malformed("cannot be verified"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const OTHER: &[u8] = b"fedcba9876543210fedcba9876543210";
    const DAY: Duration = Duration::from_secs(86_400);

    fn auth() -> TokenAuth {
        TokenAuth::from_secret(SECRET)
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn b64(json: &str) -> String {
        URL_SAFE_NO_PAD.encode(json)
    }

    /// A token signed with `secret` over whatever header and claims.
    fn raw_token(secret: &[u8], header: &str, claims: &str) -> String {
        use hmac::{Hmac, Mac};
        let signing_input = format!("{}.{}", b64(header), b64(claims));
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
        mac.update(signing_input.as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{signing_input}.{sig}")
    }

    fn claims_json(sub: &str, exp: u64, admin: bool) -> String {
        format!(r#"{{"sub":"{sub}","exp":{exp},"admin":{admin}}}"#)
    }

    const HS256: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

    #[test]
    fn round_trip() {
        let token = auth().mint("alice", DAY, false).unwrap();
        let claims = auth().verify(&token).unwrap();
        assert_eq!(claims.sub, "alice");
        assert!(!claims.admin);
        assert!(claims.exp >= now() + DAY.as_secs() - 5);
        assert_eq!(auth().verify_user(&token, "alice").unwrap(), claims);

        let admin = auth().mint("root", DAY, true).unwrap();
        assert!(auth().verify(&admin).unwrap().admin);
    }

    #[test]
    fn admin_defaults_to_false() {
        let token = raw_token(
            SECRET,
            HS256,
            &format!(r#"{{"sub":"bob","exp":{}}}"#, now() + 60),
        );
        assert!(!auth().verify(&token).unwrap().admin);
    }

    #[test]
    fn another_users_token_is_refused() {
        let token = auth().mint("alice", DAY, false).unwrap();
        assert!(matches!(
            auth().verify_user(&token, "bob"),
            Err(AuthError::WrongUser)
        ));
    }

    #[test]
    fn expired() {
        let token = raw_token(SECRET, HS256, &claims_json("alice", now() - 3600, false));
        assert!(matches!(auth().verify(&token), Err(AuthError::Expired)));
        // Within the leeway it still passes.
        let token = raw_token(SECRET, HS256, &claims_json("alice", now() - 2, false));
        assert!(auth().verify(&token).is_ok());
        // A zero lifetime is valid only for the leeway.
        let token = auth().mint("alice", Duration::ZERO, false).unwrap();
        assert!(auth().verify(&token).is_ok());
    }

    #[test]
    fn not_valid_yet() {
        let claims = format!(
            r#"{{"sub":"alice","exp":{},"nbf":{}}}"#,
            now() + 7200,
            now() + 3600
        );
        let token = raw_token(SECRET, HS256, &claims);
        assert!(matches!(auth().verify(&token), Err(AuthError::NotYetValid)));
    }

    #[test]
    fn forged_with_another_secret() {
        let token = TokenAuth::from_secret(OTHER)
            .mint("alice", DAY, true)
            .unwrap();
        assert!(matches!(
            auth().verify(&token),
            Err(AuthError::BadSignature)
        ));
        // Even when it is also expired, the signature is what fails.
        let token = raw_token(OTHER, HS256, &claims_json("alice", now() - 3600, false));
        assert!(matches!(
            auth().verify(&token),
            Err(AuthError::BadSignature)
        ));
    }

    #[test]
    fn tampered_payload() {
        let token = auth().mint("alice", DAY, false).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        // Same signature, claims rewritten to grant admin to someone else.
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            b64(&claims_json("mallory", now() + 3600, true)),
            parts[2]
        );
        assert!(matches!(
            auth().verify(&forged),
            Err(AuthError::BadSignature)
        ));
        // One flipped signature character.
        let mut sig = parts[2].to_owned();
        let flipped = if sig.starts_with('A') { "B" } else { "A" };
        sig.replace_range(0..1, flipped);
        let forged = format!("{}.{}.{}", parts[0], parts[1], sig);
        assert!(matches!(
            auth().verify(&forged),
            Err(AuthError::BadSignature)
        ));
    }

    #[test]
    fn alg_none_is_refused() {
        let claims = claims_json("alice", now() + 3600, true);
        for header in [
            r#"{"alg":"none","typ":"JWT"}"#,
            r#"{"alg":"None"}"#,
            r#"{"alg":"NONE"}"#,
        ] {
            let token = format!("{}.{}.", b64(header), b64(&claims));
            let err = auth().verify(&token).unwrap_err();
            assert!(matches!(err, AuthError::WrongAlgorithm(_)), "{err:?}");
            assert!(
                err.to_string()
                    .to_lowercase()
                    .starts_with("token algorithm none "),
                "{err}"
            );
        }
    }

    #[test]
    fn other_algorithms_are_refused() {
        let claims = claims_json("alice", now() + 3600, false);
        for alg in ["HS384", "HS512", "RS256", "ES256", "EdDSA", "hs256", ""] {
            // Signed with HS256 over the secret: the classic confusion,
            // where a verifier trusts the header's choice of algorithm.
            let token = raw_token(SECRET, &format!(r#"{{"alg":"{alg}"}}"#), &claims);
            let err = auth().verify(&token).unwrap_err();
            assert!(
                matches!(err, AuthError::WrongAlgorithm(_)),
                "{alg}: {err:?}"
            );
        }
        let token = raw_token(SECRET, r#"{"alg":"<script>\u0000x"}"#, &claims);
        assert_eq!(
            auth().verify(&token).unwrap_err().to_string(),
            "token algorithm ?script??x is not accepted, only HS256"
        );
    }

    #[test]
    fn garbage() {
        let cases: &[&str] = &[
            "",
            ".",
            "..",
            "...",
            "a.b",
            "a.b.c.d",
            "not a token",
            "!!!.!!!.!!!",
            "eyJhbGciOiJIUzI1NiJ9",
            "eyJhbGciOiJIUzI1NiJ9..",
            "eyJhbGciOiJIUzI1NiJ9.!!!.sig",
            "eyJhbGciOiJIUzI1NiJ9.e30.",
            "bnVsbA.e30.e30",
            "\u{0}\u{ffff}.\u{1F600}.x",
        ];
        for token in cases {
            let err = auth().verify(token).unwrap_err();
            assert!(
                matches!(
                    err,
                    AuthError::Malformed(_) | AuthError::BadSignature | AuthError::MissingClaim(_)
                ),
                "{token:?}: {err:?}"
            );
        }
        let huge = "a".repeat(MAX_TOKEN_LEN + 1);
        assert!(matches!(
            auth().verify(&huge),
            Err(AuthError::Malformed("too long"))
        ));
    }

    #[test]
    fn a_subject_that_is_no_user_name_is_refused() {
        for sub in ["", "two words", "a/b"] {
            let token = raw_token(SECRET, HS256, &claims_json(sub, now() + 60, false));
            assert!(
                matches!(auth().verify(&token), Err(AuthError::Malformed(_))),
                "{sub:?}"
            );
        }
    }

    #[test]
    fn wrong_claims_are_refused_with_a_reason() {
        let token = raw_token(SECRET, HS256, &format!(r#"{{"exp":{}}}"#, now() + 60));
        assert!(matches!(
            auth().verify(&token),
            Err(AuthError::MissingClaim("sub"))
        ));
        let token = raw_token(SECRET, HS256, r#"{"sub":"alice"}"#);
        assert!(matches!(
            auth().verify(&token),
            Err(AuthError::MissingClaim("exp"))
        ));
        let token = raw_token(SECRET, HS256, r#"{"sub":"alice","exp":"tomorrow"}"#);
        assert!(matches!(
            auth().verify(&token),
            Err(AuthError::Malformed(_))
        ));
        let token = raw_token(
            SECRET,
            HS256,
            &format!(r#"{{"sub":"alice","exp":{},"admin":"yes"}}"#, now() + 60),
        );
        assert!(matches!(
            auth().verify(&token),
            Err(AuthError::Malformed(_))
        ));
    }

    #[test]
    fn errors_never_quote_the_token() {
        let secret_looking = "SEKRITsecretSEKRIT";
        let tokens = [
            raw_token(
                SECRET,
                HS256,
                &format!(r#"{{"sub":"alice","exp":"{secret_looking}"}}"#),
            ),
            raw_token(
                SECRET,
                HS256,
                &format!(r#"{{"sub":"alice","exp":1,"admin":"{secret_looking}"}}"#),
            ),
            format!("{}.{secret_looking}.x", b64(HS256)),
            format!("{secret_looking}.{secret_looking}.{secret_looking}"),
        ];
        for token in tokens {
            let err = auth().verify(&token).unwrap_err();
            let text = format!("{err} {err:?}");
            assert!(!text.contains(secret_looking), "{text}");
            assert!(!text.contains(&token), "{text}");
        }
    }

    #[test]
    fn mint_checks_the_user_name() {
        assert!(matches!(
            auth().mint("bad name", DAY, false),
            Err(AuthError::BadUser(_))
        ));
        assert!(matches!(
            auth().mint("", DAY, false),
            Err(AuthError::BadUser(_))
        ));
        assert!(matches!(
            auth().mint("alice", Duration::MAX, false),
            Err(AuthError::Mint(_))
        ));
    }

    #[test]
    fn debug_hides_the_secret() {
        let text = format!("{:?}", TokenAuth::from_secret(b"very-secret-bytes-here"));
        assert!(!text.contains("very"), "{text}");
    }

    #[test]
    fn load_secret_uses_the_one_rule_and_checks_length() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");

        // One trailing newline goes; any other whitespace is the secret's.
        std::fs::write(&path, "0123456789abcdef0123 \n").unwrap();
        assert_eq!(load_secret(&path).unwrap(), b"0123456789abcdef0123 ");
        std::fs::write(&path, " 0123456789abcdef\n").unwrap();
        assert_eq!(load_secret(&path).unwrap(), b" 0123456789abcdef");

        std::fs::write(&path, "\n").unwrap();
        assert!(matches!(
            load_secret(&path),
            Err(AuthError::SecretFile(entry::secret::SecretError::Empty(_)))
        ));
        std::fs::write(&path, "short\n").unwrap();
        let err = load_secret(&path).unwrap_err();
        assert!(
            matches!(err, AuthError::SecretTooShort { len: 5, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("at least 16"), "{err}");

        let missing = dir.path().join("missing");
        let err = load_secret(&missing).unwrap_err();
        assert!(matches!(err, AuthError::SecretFile(_)), "{err:?}");
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn a_loaded_secret_verifies_what_it_minted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "0123456789abcdef0123456789abcdef\n").unwrap();
        let minted = TokenAuth::from_secret(&load_secret(&path).unwrap())
            .mint("alice", DAY, false)
            .unwrap();
        // The newline was not part of the key.
        assert_eq!(auth().verify(&minted).unwrap().sub, "alice");
    }
}
