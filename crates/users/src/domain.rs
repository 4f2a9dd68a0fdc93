//! Pure domain rules of the users service: validated value types, password hashing,
//! session tokens and roles. No I/O here, so everything is unit-testable.

use std::fmt;
use std::sync::LazyLock;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore as _;

use shop_platform::validation;
pub use shop_platform::validation::ValidationError;

pub const EMAIL_MAX_CHARS: usize = 254;
pub const EMAIL_LOCAL_MAX_CHARS: usize = 64;
pub const PASSWORD_MIN_CHARS: usize = 8;
pub const PASSWORD_MAX_CHARS: usize = 128;
pub const NAME_MAX_CHARS: usize = 100;

/// A normalised (trimmed, lower-cased) e-mail address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Email, ValidationError> {
        let err = |m: &str| ValidationError::new("email", m);
        let email = raw.trim().to_lowercase();
        if email.is_empty() {
            return Err(err("must not be empty"));
        }
        if email.chars().count() > EMAIL_MAX_CHARS {
            return Err(err("must be at most 254 characters"));
        }
        if email.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(err("must not contain spaces or control characters"));
        }
        if validation::has_bidi_controls(&email) {
            return Err(err("must not contain bidirectional control characters"));
        }
        let mut parts = email.split('@');
        let (local, domain) = match (parts.next(), parts.next(), parts.next()) {
            (Some(local), Some(domain), None) => (local, domain),
            _ => return Err(err("must contain exactly one '@'")),
        };
        if local.is_empty() {
            return Err(err("local part must not be empty"));
        }
        if local.chars().count() > EMAIL_LOCAL_MAX_CHARS {
            return Err(err("local part must be at most 64 characters"));
        }
        if !domain.contains('.') {
            return Err(err("domain must contain a dot"));
        }
        if domain.split('.').any(str::is_empty) {
            return Err(err("domain must not have empty labels"));
        }
        Ok(Email(email))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Email {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// A plaintext password that passed the length rules. Never printed.
#[derive(Clone)]
pub struct Password(String);

impl Password {
    /// 8..=128 characters (Unicode scalar values, not bytes). Not trimmed: spaces count.
    pub fn parse(raw: String) -> Result<Password, ValidationError> {
        let n = raw.chars().count();
        if n < PASSWORD_MIN_CHARS {
            return Err(ValidationError::new(
                "password",
                "must be at least 8 characters",
            ));
        }
        if n > PASSWORD_MAX_CHARS {
            return Err(ValidationError::new(
                "password",
                "must be at most 128 characters",
            ));
        }
        Ok(Password(raw))
    }

    /// A password a new account may have: [`Password::parse`], and not guessable from a
    /// list of the most common passwords or from the account's e-mail address.
    pub fn parse_for(raw: String, email: &Email) -> Result<Password, ValidationError> {
        let password = Password::parse(raw)?;
        match guessable(password.as_str(), email) {
            Some(why) => Err(ValidationError::new("password", why)),
            None => Ok(password),
        }
    }

    /// The plaintext, for hashing only.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Passwords every guesser tries first (lower-cased), refused at registration.
const COMMON_PASSWORDS: &[&str] = &[
    "12345678",
    "123456789",
    "1234567890",
    "12341234",
    "11111111",
    "00000000",
    "87654321",
    "11223344",
    "password",
    "password1",
    "password12",
    "password123",
    "passw0rd",
    "p@ssw0rd",
    "qwertyui",
    "qwerty12",
    "qwerty123",
    "qwertyuiop",
    "asdfghjk",
    "asdfghjkl",
    "zxcvbnm1",
    "1q2w3e4r",
    "q1w2e3r4",
    "1qaz2wsx",
    "zaq12wsx",
    "qazwsxedc",
    "aa123456",
    "abc12345",
    "abcd1234",
    "iloveyou",
    "sunshine",
    "princess",
    "football",
    "baseball",
    "welcome1",
    "welcome123",
    "letmein1",
    "letmein123",
    "trustno1",
    "superman",
    "administrator",
    "admin123",
    "changeme",
    "computer",
    "internet",
    "whatever",
    "starwars",
    "michael1",
    "monkey12",
    "dragon12",
    "master12",
    "shadow12",
    "jennifer",
    "liverpool",
    "mercedes",
];

/// Why `password` is easy to guess for the owner of `email`, if it is.
pub fn guessable(password: &str, email: &Email) -> Option<&'static str> {
    let lower = password.to_lowercase();
    if lower.trim().is_empty() {
        return Some("must not be only spaces");
    }
    if COMMON_PASSWORDS.contains(&lower.as_str()) {
        return Some("is one of the most common passwords");
    }
    let local = email.as_str().split('@').next().unwrap_or_default();
    if local.chars().count() >= 3 && lower.contains(local) {
        return Some("must not contain the e-mail address");
    }
    None
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(***)")
    }
}

/// A display name: trimmed, 1..=100 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name(String);

impl Name {
    pub fn parse(raw: &str) -> Result<Name, ValidationError> {
        validation::text("name", raw, NAME_MAX_CHARS).map(Name)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

// ---------------------------------------------------------------------------
// Password hashing: argon2id with the OWASP minimum parameters.

/// Memory cost in KiB (19 MiB).
pub const ARGON2_M_COST: u32 = 19456;
/// Iterations.
pub const ARGON2_T_COST: u32 = 2;
/// Parallelism.
pub const ARGON2_P_COST: u32 = 1;

fn argon2id() -> anyhow::Result<Argon2<'static>> {
    let params = Params::new(ARGON2_M_COST, ARGON2_T_COST, ARGON2_P_COST, None)
        .map_err(|e| anyhow::anyhow!("argon2 params: {e}"))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Hash a password into a PHC string (`$argon2id$v=19$m=19456,t=2,p=1$salt$hash`)
/// with a fresh 16-byte random salt.
pub fn hash_password(p: &Password) -> anyhow::Result<String> {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| anyhow::anyhow!("argon2 salt: {e}"))?;
    let hash = argon2id()?
        .hash_password(p.as_str().as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("argon2 hash: {e}"))?;
    Ok(hash.to_string())
}

/// Whether `candidate` matches the stored PHC string. A malformed PHC string is `false`.
/// The parameters stored in the PHC string are used, so older hashes keep verifying.
pub fn verify_password(candidate: &str, phc: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    Argon2::default()
        .verify_password(candidate.as_bytes(), &parsed)
        .is_ok()
}

/// A real argon2id hash of a throw-away password, computed on first use.
static DUMMY_HASH: LazyLock<String> = LazyLock::new(|| {
    let mut secret = [0u8; 24];
    rand::rng().fill_bytes(&mut secret);
    let pw = Password(URL_SAFE_NO_PAD.encode(secret));
    hash_password(&pw).expect("argon2id hashing of the dummy password")
});

/// Compute the dummy hash now (e.g. at start-up), so the first unknown-email login
/// does not pay for it.
pub fn warm_up_dummy_hash() {
    LazyLock::force(&DUMMY_HASH);
}

/// Spend the time of a real verification, for logins with an unknown e-mail, so that
/// they take as long as a wrong password does. The result is always discarded.
pub fn verify_against_dummy(candidate: &str) {
    let ok = verify_password(candidate, &DUMMY_HASH);
    std::hint::black_box(ok);
}

/// The argon2 `(m_cost, t_cost, p_cost)` stored in a PHC string, if it parses.
pub fn hash_params(phc: &str) -> Option<(u32, u32, u32)> {
    let parsed = PasswordHash::new(phc).ok()?;
    let params = Params::try_from(&parsed).ok()?;
    Some((params.m_cost(), params.t_cost(), params.p_cost()))
}

// ---------------------------------------------------------------------------
// Session tokens and roles.

/// Length of a session token: 32 bytes in base64url without padding.
pub const SESSION_TOKEN_LEN: usize = 43;

/// A new opaque session token: 32 bytes from a CSPRNG (`rand::rng()`, a ChaCha12 generator
/// seeded and periodically reseeded from the OS), base64url without padding (43 chars).
pub fn new_session_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Admin => "admin",
        }
    }

    /// Exact, lower-case match (`"user"`, `"admin"`), as stored and serialised.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "user" => Some(Role::User),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guessable_passwords_are_refused_at_registration() {
        let ann = Email::parse("ann.lee@example.com").unwrap();
        for weak in [
            "12345678",
            "password",
            "Password1",
            "        ",
            "ann.lee@example.com",
            "my-ann.lee-pass",
        ] {
            assert!(
                Password::parse_for(weak.into(), &ann).is_err(),
                "{weak:?} accepted"
            );
        }
        for fine in [
            "correct horse battery staple",
            "tr0ub4dor&3x",
            "ann-is-here-1",
        ] {
            assert!(
                Password::parse_for(fine.into(), &ann).is_ok(),
                "{fine:?} refused"
            );
        }
    }

    fn pw(s: &str) -> Password {
        Password::parse(s.to_owned()).unwrap()
    }

    // ---- Email

    #[test]
    fn email_normalises_trim_and_case() {
        let e = Email::parse(" Alice@Example.COM ").unwrap();
        assert_eq!(e.as_str(), "alice@example.com");
        assert_eq!(e.to_string(), "alice@example.com");
    }

    #[test]
    fn email_accepts_valid() {
        for ok in [
            "a@b.co",
            "first.last+tag@sub.example.org",
            "x_y-z@mail.example.travel",
            "\tbob@example.com\n",
        ] {
            assert!(Email::parse(ok).is_ok(), "{ok:?} should be valid");
        }
    }

    #[test]
    fn email_rejects_invalid() {
        for bad in [
            "",
            "   ",
            "alice",
            "alice.example.com",
            "@example.com",
            "alice@",
            "alice@localhost",
            "alice@@example.com",
            "a@b@example.com",
            "al ice@example.com",
            "alice@exa mple.com",
            "alice\u{0}@example.com",
            "alice\u{7}@example.com",
            "alice@example..com",
            "alice@.example.com",
            "alice@example.com.",
        ] {
            let err = Email::parse(bad).unwrap_err();
            assert_eq!(err.field, "email", "{bad:?}");
        }
    }

    #[test]
    fn email_local_part_length() {
        let local64 = "a".repeat(64);
        assert!(Email::parse(&format!("{local64}@example.com")).is_ok());
        let local65 = "a".repeat(65);
        assert!(Email::parse(&format!("{local65}@example.com")).is_err());
    }

    #[test]
    fn email_total_length() {
        // 64 + 1 + 189 = 254 chars: accepted; 255 rejected.
        let local = "a".repeat(64);
        let domain = |n: usize| format!("{}.com", "d".repeat(n - 4));
        let at254 = format!("{local}@{}", domain(189));
        assert_eq!(at254.chars().count(), 254);
        assert!(Email::parse(&at254).is_ok());
        let at255 = format!("{local}@{}", domain(190));
        assert_eq!(at255.chars().count(), 255);
        assert!(Email::parse(&at255).is_err());
        // Surrounding whitespace does not count against the limit.
        assert!(Email::parse(&format!("  {at254}  ")).is_ok());
    }

    #[test]
    fn email_multibyte_counts_chars() {
        let e = Email::parse("Jürgen@Bücher.DE").unwrap();
        assert_eq!(e.as_str(), "jürgen@bücher.de");
        // 64 multibyte chars (128 bytes) in the local part are still fine.
        let local = "é".repeat(64);
        assert!(Email::parse(&format!("{local}@example.com")).is_ok());
        let local = "é".repeat(65);
        assert!(Email::parse(&format!("{local}@example.com")).is_err());
    }

    // ---- Password

    #[test]
    fn password_bounds() {
        assert!(Password::parse("a".repeat(7)).is_err());
        assert!(Password::parse("a".repeat(8)).is_ok());
        assert!(Password::parse("a".repeat(128)).is_ok());
        assert!(Password::parse("a".repeat(129)).is_err());
        assert!(Password::parse(String::new()).is_err());
        assert_eq!(
            Password::parse("short".into()).unwrap_err().field,
            "password"
        );
    }

    #[test]
    fn password_counts_chars_not_bytes() {
        // 7 chars but 21 bytes: too short.
        assert!(Password::parse("€".repeat(7)).is_err());
        // 8 chars, 32 bytes: fine.
        assert!(Password::parse("🔒".repeat(8)).is_ok());
        // 128 chars, 256 bytes: fine; 129 chars: too long.
        assert!(Password::parse("é".repeat(128)).is_ok());
        assert!(Password::parse("é".repeat(129)).is_err());
    }

    #[test]
    fn password_debug_hides_secret() {
        let p = pw("hunter2hunter2");
        let dbg = format!("{p:?}");
        assert_eq!(dbg, "Password(***)");
        assert!(!dbg.contains("hunter2"));
        assert!(!format!("{:?}", Some(&p)).contains("hunter2"));
    }

    // ---- Name

    #[test]
    fn name_rules() {
        assert_eq!(
            Name::parse("  Alice Smith ").unwrap().as_str(),
            "Alice Smith"
        );
        assert!(Name::parse("").is_err());
        assert!(Name::parse("   ").is_err());
        assert!(Name::parse("x").is_ok());
        assert!(Name::parse(&"n".repeat(100)).is_ok());
        assert!(Name::parse(&"n".repeat(101)).is_err());
        assert!(Name::parse(&"ü".repeat(100)).is_ok());
        assert!(Name::parse(&"ü".repeat(101)).is_err());
        assert!(Name::parse("Bob\u{0}").is_err());
        assert!(Name::parse("Bob\nSmith").is_err());
        assert!(Name::parse("Bob\u{1b}[31m").is_err());
        assert_eq!(Name::parse("").unwrap_err().field, "name");
    }

    // ---- ValidationError

    #[test]
    fn validation_error_display() {
        let e = ValidationError::new("email", "must contain exactly one '@'");
        assert_eq!(e.to_string(), "email: must contain exactly one '@'");
        let e = Email::parse("nope").unwrap_err();
        assert!(e.to_string().starts_with("email: "));
    }

    // ---- Hashing

    #[test]
    fn hash_verify_roundtrip_and_wrong_password() {
        let h = hash_password(&pw("correct horse battery")).unwrap();
        assert!(h.starts_with("$argon2id$v=19$"), "{h}");
        assert!(verify_password("correct horse battery", &h));
        assert!(!verify_password("correct horse battery!", &h));
        assert!(!verify_password("", &h));
    }

    #[test]
    fn hash_uses_random_salt() {
        let p = pw("same password");
        let a = hash_password(&p).unwrap();
        let b = hash_password(&p).unwrap();
        assert_ne!(a, b);
        assert!(verify_password("same password", &a));
        assert!(verify_password("same password", &b));
    }

    #[test]
    fn hash_multibyte_password() {
        let h = hash_password(&pw("pässwörd-🔒")).unwrap();
        assert!(verify_password("pässwörd-🔒", &h));
        assert!(!verify_password("passwort-🔒", &h));
    }

    #[test]
    fn verify_garbage_phc_is_false() {
        for garbage in [
            "",
            "not a hash",
            "$argon2id$",
            "$argon2id$v=19$m=19456,t=2,p=1$",
            "$unknown$v=1$abc$def",
        ] {
            assert!(!verify_password("whatever1", garbage), "{garbage:?}");
        }
    }

    #[test]
    fn params_parse_back() {
        let h = hash_password(&pw("parameters")).unwrap();
        assert_eq!(
            hash_params(&h),
            Some((ARGON2_M_COST, ARGON2_T_COST, ARGON2_P_COST))
        );
        assert_eq!(hash_params(&h), Some((19456, 2, 1)));
        assert!(h.contains("m=19456,t=2,p=1"), "{h}");
        assert_eq!(hash_params("garbage"), None);
    }

    #[test]
    fn dummy_verify_runs_and_never_panics() {
        warm_up_dummy_hash();
        assert!(DUMMY_HASH.starts_with("$argon2id$"));
        assert_eq!(hash_params(&DUMMY_HASH), Some((19456, 2, 1)));
        verify_against_dummy("any candidate");
        verify_against_dummy("");
    }

    // ---- Tokens

    #[test]
    fn session_token_shape() {
        let a = new_session_token();
        let b = new_session_token();
        assert_eq!(a.len(), 43);
        assert_eq!(b.len(), SESSION_TOKEN_LEN);
        assert_ne!(a, b);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
        assert_eq!(URL_SAFE_NO_PAD.decode(&a).unwrap().len(), 32);
    }

    // ---- Role

    #[test]
    fn role_str_roundtrip() {
        for r in [Role::User, Role::Admin] {
            assert_eq!(Role::parse(r.as_str()), Some(r));
            assert_eq!(r.to_string(), r.as_str());
        }
        assert_eq!(Role::User.as_str(), "user");
        assert_eq!(Role::Admin.as_str(), "admin");
        assert_eq!(Role::parse("Admin"), None);
        assert_eq!(Role::parse("root"), None);
    }

    #[test]
    fn role_serde_lowercase() {
        assert_eq!(serde_json::to_string(&Role::Admin).unwrap(), "\"admin\"");
        assert_eq!(
            serde_json::from_str::<Role>("\"user\"").unwrap(),
            Role::User
        );
        assert!(serde_json::from_str::<Role>("\"User\"").is_err());
    }
}
