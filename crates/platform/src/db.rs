//! PostgreSQL: the database is created if missing; each service gets a pool whose
//! connections use its own schema, where its outbox and inbox live beside its tables.

use std::{str::FromStr, time::Duration};

use anyhow::Context as _;
use sqlx::{
    ConnectOptions as _, Connection as _, Executor as _, PgPool,
    postgres::{PgConnectOptions, PgConnection, PgPoolOptions},
};

use crate::config::redact_url;

fn options(url: &str) -> anyhow::Result<PgConnectOptions> {
    Ok(PgConnectOptions::from_str(url)
        .with_context(|| format!("invalid database URL {}", redact_url(url)))?
        .disable_statement_logging())
}

/// Creates the database named in `url` if it does not exist.
pub async fn ensure_database(url: &str) -> anyhow::Result<()> {
    let opts = options(url)?;
    let name = opts.get_database().unwrap_or("postgres").to_string();
    let mut admin = tokio::time::timeout(
        Duration::from_secs(10),
        PgConnection::connect_with(&opts.clone().database("postgres")),
    )
    .await
    .map_err(|_| anyhow::anyhow!("timed out"))
    .and_then(|r| r.map_err(anyhow::Error::from))
    .with_context(|| format!("cannot connect to PostgreSQL at {}", redact_url(url)))?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await?;
    if !exists {
        let r = admin
            .execute(format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\"")).as_str())
            .await;
        if let Err(e) = r {
            // Another program created it at the same moment.
            let raced = e
                .as_database_error()
                .and_then(|d| d.code())
                .is_some_and(|c| c == "42P04" || c == "23505");
            if !raced {
                return Err(e).with_context(|| format!("creating database {name}"));
            }
        }
    }
    Ok(())
}

/// Drops a database (for tests).
pub async fn drop_database(url: &str) -> anyhow::Result<()> {
    let opts = options(url)?;
    let name = opts.get_database().unwrap_or("postgres").to_string();
    let mut admin = PgConnection::connect_with(&opts.database("postgres")).await?;
    admin
        .execute(
            format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                name.replace('"', "\"\"")
            )
            .as_str(),
        )
        .await?;
    Ok(())
}

/// Whether a database error means "the database is away for now, try again" rather than a
/// bug: no connection to be had, the connection broke, or the server ended the session
/// (SQLSTATE class 08, connection exception; 57P01 administrator command, 57P02 crash
/// shutdown, 57P03 cannot connect now: PostgreSQL restarting or recovering).
pub fn unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => true,
        sqlx::Error::Database(d) => d.code().is_some_and(|c| {
            c.starts_with("08") || matches!(c.as_ref(), "57P01" | "57P02" | "57P03")
        }),
        _ => false,
    }
}

/// A pool for `schema`: creates the database and schema if needed and the platform tables
/// (outbox, inbox).
pub async fn connect(url: &str, schema: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    ensure_database(url).await?;
    let opts = options(url)?.options([("search_path", schema)]);
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(opts)
        .await
        .with_context(|| format!("cannot connect to PostgreSQL at {}", redact_url(url)))?;
    create_platform_tables(&pool, schema)
        .await
        .with_context(|| format!("creating platform tables in schema {schema}"))?;
    Ok(pool)
}

async fn create_platform_tables(pool: &PgPool, schema: &str) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    // Programs starting together must not race on CREATE ... IF NOT EXISTS.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('shop-platform-' || $1))")
        .bind(schema)
        .execute(&mut *tx)
        .await?;
    let ddl = format!(
        r#"
        CREATE SCHEMA IF NOT EXISTS {schema};
        CREATE TABLE IF NOT EXISTS {schema}.outbox (
            id BIGSERIAL PRIMARY KEY,
            event_id UUID NOT NULL UNIQUE,
            event_type TEXT NOT NULL,
            body TEXT NOT NULL,
            created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            sent_at TIMESTAMPTZ
        );
        CREATE INDEX IF NOT EXISTS outbox_unsent ON {schema}.outbox (id) WHERE sent_at IS NULL;
        CREATE INDEX IF NOT EXISTS outbox_sent_at ON {schema}.outbox (sent_at) WHERE sent_at IS NOT NULL;
        CREATE TABLE IF NOT EXISTS {schema}.inbox (
            event_id UUID PRIMARY KEY,
            event_type TEXT NOT NULL,
            processed_at TIMESTAMPTZ NOT NULL DEFAULT now()
        );
        CREATE INDEX IF NOT EXISTS inbox_processed_at ON {schema}.inbox (processed_at);
        -- Relays are woken in-process now (see outbox.rs): a NOTIFY per insert serialised
        -- every commit in the cluster. Removed from databases made by older versions.
        -- (Checked first: DROP TRIGGER locks the table even when there is nothing to drop.)
        DO $$ BEGIN
            IF EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'outbox_notify'
                       AND tgrelid = '{schema}.outbox'::regclass) THEN
                DROP TRIGGER outbox_notify ON {schema}.outbox;
            END IF;
        END $$;
        DROP FUNCTION IF EXISTS {schema}.outbox_notify();
        "#
    );
    sqlx::raw_sql(&ddl).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(())
}
