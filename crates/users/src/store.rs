//! All SQL of the users service. Writes that emit events take the transaction they share
//! with their outbox row.

use shop_platform::{Envelope, events::UserRegistered, outbox};
use sqlx::{PgPool, Row as _, postgres::PgRow};
use uuid::Uuid;

use crate::{
    api::User,
    domain::{Email, Name, Role},
};

/// Name of the unique constraint on `users.email` (see migrations/0001_init.sql).
const EMAIL_UNIQUE: &str = "users_email_unique";

/// Why a registration was not stored.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("an account with this e-mail address already exists")]
    EmailTaken,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// A user with the hash to check a password against.
pub struct Credentials {
    pub user: User,
    pub password_hash: String,
}

fn user_from_row(row: &PgRow) -> sqlx::Result<User> {
    let role: String = row.try_get("role")?;
    let role = Role::parse(&role).ok_or_else(|| sqlx::Error::ColumnDecode {
        index: "role".into(),
        source: format!("unknown role {role:?}").into(),
    })?;
    Ok(User {
        id: row.try_get("id")?,
        email: row.try_get("email")?,
        name: row.try_get("name")?,
        role,
    })
}

/// Stores a new user (role `user`) and its `user.registered` event in one transaction.
pub async fn register(
    pool: &PgPool,
    email: &Email,
    name: &Name,
    password_hash: &str,
) -> Result<User, RegisterError> {
    let id = Uuid::now_v7();
    let mut tx = pool.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO users (id, email, name, password_hash, role) VALUES ($1, $2, $3, $4, 'user') \
         RETURNING id, email, name, role",
    )
    .bind(id)
    .bind(email.as_str())
    .bind(name.as_str())
    .bind(password_hash)
    .fetch_one(&mut *tx)
    .await;
    let row = match inserted {
        Ok(row) => row,
        Err(e) if is_unique_violation(&e, EMAIL_UNIQUE) => return Err(RegisterError::EmailTaken),
        Err(e) => return Err(e.into()),
    };
    let user = user_from_row(&row)?;
    enqueue_registered(&mut tx, &user).await?;
    tx.commit().await?;
    Ok(user)
}

async fn enqueue_registered(tx: &mut sqlx::PgConnection, user: &User) -> sqlx::Result<()> {
    // A request starts a new chain of consequences: fresh correlation/causation id.
    let cause = Uuid::now_v7();
    let payload = UserRegistered {
        user_id: user.id,
        email: user.email.clone(),
        name: user.name.clone(),
    };
    outbox::enqueue(tx, &Envelope::new(user.id, &payload, cause, cause)).await
}

/// Creates the administrator, or makes the existing account with that e-mail an administrator
/// with this password. Idempotent, and safe when several instances start at once (the
/// upsert resolves the race inside PostgreSQL). Returns the user and whether it was created.
pub async fn upsert_admin(
    pool: &PgPool,
    email: &Email,
    name: &Name,
    password_hash: &str,
) -> sqlx::Result<(User, bool)> {
    let mut tx = pool.begin().await?;
    let row = sqlx::query(
        "INSERT INTO users (id, email, name, password_hash, role) VALUES ($1, $2, $3, $4, 'admin') \
         ON CONFLICT (email) DO UPDATE \
             SET password_hash = EXCLUDED.password_hash, role = 'admin', updated_at = now() \
         RETURNING id, email, name, role, (xmax = 0) AS inserted",
    )
    .bind(Uuid::now_v7())
    .bind(email.as_str())
    .bind(name.as_str())
    .bind(password_hash)
    .fetch_one(&mut *tx)
    .await?;
    let user = user_from_row(&row)?;
    let inserted: bool = row.try_get("inserted")?;
    if inserted {
        enqueue_registered(&mut tx, &user).await?;
    }
    tx.commit().await?;
    Ok((user, inserted))
}

pub async fn find(pool: &PgPool, id: Uuid) -> sqlx::Result<Option<User>> {
    sqlx::query("SELECT id, email, name, role FROM users WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await?
        .as_ref()
        .map(user_from_row)
        .transpose()
}

pub async fn credentials(pool: &PgPool, email: &Email) -> sqlx::Result<Option<Credentials>> {
    sqlx::query("SELECT id, email, name, role, password_hash FROM users WHERE email = $1")
        .bind(email.as_str())
        .fetch_optional(pool)
        .await?
        .as_ref()
        .map(|row| {
            Ok(Credentials {
                user: user_from_row(row)?,
                password_hash: row.try_get("password_hash")?,
            })
        })
        .transpose()
}

fn is_unique_violation(e: &sqlx::Error, constraint: &str) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.is_unique_violation() && d.constraint() == Some(constraint))
}
