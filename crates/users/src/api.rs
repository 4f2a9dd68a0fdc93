//! The users service's public request and response bodies. The gateway builds
//! `/openapi.json` from these types (and from [`crate::openapi`]), so they are the contract:
//! request bodies reject unknown fields (no mass assignment, e.g. of `role`).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

pub use crate::domain::Role;

/// `POST /api/auth/register`.
#[derive(Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// Trimmed and lower-cased before it is stored: one `@`, a local part of 1 to 64
    /// characters, a domain with a dot and no empty label, no spaces or control characters.
    #[schema(
        example = "alice@example.com",
        max_length = 254,
        pattern = r"^[^@\s\u0000-\u001f\u007f-\u009f\u200e\u200f\u061c\u202a-\u202e\u2066-\u2069]{1,64}@[^@\s.\u0000-\u001f\u007f-\u009f\u200e\u200f\u061c\u202a-\u202e\u2066-\u2069]+(\.[^@\s.\u0000-\u001f\u007f-\u009f\u200e\u200f\u061c\u202a-\u202e\u2066-\u2069]+)+$"
    )]
    pub email: String,
    /// 8 to 128 characters; not only spaces, not one of the most common passwords, and not
    /// containing the e-mail address's local part.
    #[schema(
        example = "correct horse battery staple",
        min_length = 8,
        max_length = 128
    )]
    pub password: String,
    /// Display name, 1 to 100 characters (trimmed), no control characters.
    #[schema(example = "Alice", min_length = 1, max_length = 100, format = "text")]
    pub name: String,
}

impl std::fmt::Debug for RegisterRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisterRequest")
            .field("email", &self.email)
            .field("password", &"***")
            .field("name", &self.name)
            .finish()
    }
}

/// `POST /api/auth/login`.
#[derive(Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    #[schema(example = "alice@example.com")]
    pub email: String,
    #[schema(example = "correct horse battery staple")]
    pub password: String,
}

impl std::fmt::Debug for LoginRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginRequest")
            .field("email", &self.email)
            .field("password", &"***")
            .finish()
    }
}

/// A user as the API shows it (never the password hash).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
pub struct User {
    pub id: Uuid,
    #[schema(example = "alice@example.com")]
    pub email: String,
    #[schema(example = "Alice")]
    pub name: String,
    pub role: Role,
}

/// The answer to a successful login.
#[derive(Clone, Deserialize, Serialize, ToSchema)]
pub struct LoginResponse {
    /// Opaque bearer token: send it as `Authorization: Bearer <token>`.
    pub token: String,
    /// Seconds the session lives without use; each authenticated request extends it.
    #[schema(example = 86400)]
    pub expires_in: u64,
    pub user: User,
}

impl std::fmt::Debug for LoginResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginResponse")
            .field("token", &"***")
            .field("expires_in", &self.expires_in)
            .field("user", &self.user)
            .finish()
    }
}
