//! PostgreSQL: the database is created if missing; each service gets a pool whose
//! connections use its own schema, where its outbox and inbox live beside its tables. With
//! [`Config::db_passwords`] each service connects as its own role, owner of its schema and
//! of nothing else ([`setup_roles`] makes them), and `shop audit` as a read-only one.

use std::{str::FromStr, time::Duration};

use anyhow::Context as _;
use sqlx::{
    ConnectOptions as _, Connection as _, Executor as _, PgPool,
    postgres::{PgConnectOptions, PgConnection, PgPoolOptions},
};

use crate::config::{Config, redact_url};

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

/// The role `name` (a service, or `audit`) logs in as when it has a password of its own:
/// `<database>_<name>`, so shops (and test runs) with their own databases do not share roles.
pub fn role_name(url: &str, name: &str) -> anyhow::Result<String> {
    let opts = options(url)?;
    Ok(format!(
        "{}_{name}",
        opts.get_database().unwrap_or("postgres")
    ))
}

/// How `name` logs in: as its own role with its own password if [`Config::db_password`]
/// has one, else as `SHOP_DATABASE_URL`'s user.
pub fn login(config: &Config, name: &str) -> anyhow::Result<PgConnectOptions> {
    let opts = options(&config.database_url)?;
    Ok(match config.db_password(name) {
        Some(password) => opts
            .username(&role_name(&config.database_url, name)?)
            .password(&password),
        None => opts,
    })
}

/// A service's pool, as its own role when it has one (then the database, the role and its
/// schema must exist: `shop migrate` makes them), else as [`connect`].
pub async fn connect_service(
    config: &Config,
    schema: &str,
    max_connections: u32,
) -> anyhow::Result<PgPool> {
    if config.db_password(schema).is_none() {
        return connect(&config.database_url, schema, max_connections).await;
    }
    let opts = service_session(login(config, schema)?, schema);
    let role = opts.get_username().to_string();
    let pool = pool(opts, max_connections).await.with_context(|| {
        format!(
            "cannot connect to PostgreSQL as {role} (run `shop migrate` first: it makes the role)"
        )
    })?;
    create_platform_tables(&pool, schema, false)
        .await
        .with_context(|| format!("creating platform tables in schema {schema}"))?;
    Ok(pool)
}

/// The session settings of every service connection: its schema first on the search path,
/// and a transaction whose client went silent (its host or link lost mid-transaction) ended
/// by PostgreSQL after a minute, so that its row locks do not stall the other instances
/// until TCP gives up on it (no handler keeps a transaction open and idle for that long).
fn service_session(opts: PgConnectOptions, schema: &str) -> PgConnectOptions {
    opts.options([
        ("search_path", schema),
        ("idle_in_transaction_session_timeout", "60s"),
    ])
}

/// A pooled connection idle for longer than this is checked (a round trip) before it is
/// handed out; one in steady use is not.
const CHECK_IF_IDLE_FOR: Duration = Duration::from_secs(1);

async fn pool(opts: PgConnectOptions, max_connections: u32) -> sqlx::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        // sqlx pings every connection it hands out by default: a round trip (and a wake-up of
        // its PostgreSQL backend) per transaction. Only a connection that sat idle is pinged;
        // one that broke while in use fails its statement, which the callers treat as
        // transient (503, or the message retried), and the pool drops it.
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for > CHECK_IF_IDLE_FOR {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
        .connect_with(opts)
        .await
}

/// Makes each service's role (password from [`Config::db_passwords`]), gives it its schema
/// and what is in it, and lets it connect; and, if `audit` has a password, a role that may
/// only read every schema. Run as `SHOP_DATABASE_URL`'s user (it needs CREATEROLE and the
/// database's ownership). Nothing to do without `SHOP_DB_PASSWORDS`.
pub async fn setup_roles(config: &Config, schemas: &[&str]) -> anyhow::Result<()> {
    if config.db_passwords.is_none() {
        return Ok(());
    }
    let url = &config.database_url;
    ensure_database(url).await?;
    let opts = options(url)?;
    let database = quote(opts.get_database().unwrap_or("postgres"));
    let mut admin = PgConnection::connect_with(&opts)
        .await
        .with_context(|| format!("cannot connect to PostgreSQL at {}", redact_url(url)))?;
    let mut ddl = format!(
        "SELECT pg_advisory_lock(hashtext('shop-roles'));
         REVOKE ALL ON DATABASE {database} FROM PUBLIC;\n"
    );
    let mut role_of = Vec::new();
    for schema in schemas {
        let password = config.db_password(schema).with_context(|| {
            format!("SHOP_DB_PASSWORDS has no password for {schema} (it needs one per service)")
        })?;
        let role = role_name(url, schema)?;
        ddl += &login_role(&role, &password, &database);
        let (s, r) = (quote(schema), quote(&role));
        ddl += &format!(
            "CREATE SCHEMA IF NOT EXISTS {s} AUTHORIZATION {r};
             ALTER SCHEMA {s} OWNER TO {r};
             DO $$ DECLARE o record; BEGIN
                 FOR o IN SELECT c.relname, c.relkind FROM pg_class c
                          WHERE c.relnamespace = {schema_literal}::regnamespace
                            AND c.relkind IN ('r', 'p', 'S', 'v', 'm')
                            AND pg_get_userbyid(c.relowner) <> {role_literal}
                            -- A serial's sequence follows its table (and may not move alone).
                            AND NOT (c.relkind = 'S' AND EXISTS (
                                SELECT 1 FROM pg_depend d
                                WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                                  AND d.deptype IN ('a', 'i'))) LOOP
                     EXECUTE format('ALTER %s %I.%I OWNER TO %I',
                         CASE WHEN o.relkind = 'S' THEN 'SEQUENCE' ELSE 'TABLE' END,
                         {schema_literal}, o.relname, {role_literal});
                 END LOOP;
                 FOR o IN SELECT p.proname, pg_get_function_identity_arguments(p.oid) AS args
                          FROM pg_proc p
                          WHERE p.pronamespace = {schema_literal}::regnamespace
                            AND pg_get_userbyid(p.proowner) <> {role_literal} LOOP
                     EXECUTE format('ALTER ROUTINE %I.%I(%s) OWNER TO %I',
                         {schema_literal}, o.proname, o.args, {role_literal});
                 END LOOP;
             END $$;\n",
            schema_literal = literal(schema),
            role_literal = literal(&role),
        );
        role_of.push((s, r));
    }
    if let Some(password) = config.db_password("audit") {
        let audit = role_name(url, "audit")?;
        ddl += &login_role(&audit, &password, &database);
        let a = quote(&audit);
        for (s, r) in &role_of {
            ddl += &format!(
                "GRANT USAGE ON SCHEMA {s} TO {a};
                 GRANT SELECT ON ALL TABLES IN SCHEMA {s} TO {a};
                 ALTER DEFAULT PRIVILEGES FOR ROLE {r} IN SCHEMA {s} GRANT SELECT ON TABLES TO {a};\n"
            );
        }
    }
    ddl += "SELECT pg_advisory_unlock(hashtext('shop-roles'));";
    sqlx::raw_sql(&ddl)
        .execute(&mut admin)
        .await
        .context("making the services' PostgreSQL roles")?;
    Ok(())
}

/// Creates `role` unless it exists, sets its password and lets it connect to `database`.
fn login_role(role: &str, password: &str, database: &str) -> String {
    format!(
        "DO $$ BEGIN
             IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {name}) THEN
                 CREATE ROLE {role} LOGIN;
             END IF;
         END $$;
         ALTER ROLE {role} WITH LOGIN PASSWORD {password};
         GRANT CONNECT, TEMPORARY ON DATABASE {database} TO {role};\n",
        name = literal(role),
        role = quote(role),
        password = literal(password),
    )
}

/// Drops roles made by [`setup_roles`] (for tests, after their database is dropped).
pub async fn drop_roles(config: &Config, names: &[&str]) -> anyhow::Result<()> {
    let opts = options(&config.database_url)?;
    let mut admin = PgConnection::connect_with(&opts.clone().database("postgres")).await?;
    for name in names {
        let role = quote(&role_name(&config.database_url, name)?);
        admin
            .execute(format!("DROP ROLE IF EXISTS {role}").as_str())
            .await?;
    }
    Ok(())
}

/// An SQL identifier, quoted.
fn quote(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

/// An SQL string literal.
fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// A pool for `schema`: creates the database and schema if needed and the platform tables
/// (outbox, inbox).
pub async fn connect(url: &str, schema: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    ensure_database(url).await?;
    let opts = service_session(options(url)?, schema);
    let pool = pool(opts, max_connections)
        .await
        .with_context(|| format!("cannot connect to PostgreSQL at {}", redact_url(url)))?;
    create_platform_tables(&pool, schema, true)
        .await
        .with_context(|| format!("creating platform tables in schema {schema}"))?;
    Ok(pool)
}

/// `create_schema`: as the database's administrator; a service's own role finds its schema
/// made (and may not create one).
async fn create_platform_tables(
    pool: &PgPool,
    schema: &str,
    create_schema: bool,
) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    // Programs starting together must not race on CREATE ... IF NOT EXISTS.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('shop-platform-' || $1))")
        .bind(schema)
        .execute(&mut *tx)
        .await?;
    if create_schema {
        sqlx::raw_sql(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
            .execute(&mut *tx)
            .await?;
    }
    let ddl = format!(
        r#"
        CREATE TABLE IF NOT EXISTS {schema}.outbox (
            id BIGSERIAL PRIMARY KEY,
            event_id UUID NOT NULL UNIQUE,
            event_type TEXT NOT NULL,
            body TEXT NOT NULL,
            created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            sent_at TIMESTAMPTZ,
            -- The W3C traceparent of the transaction that wrote the row (NULL: not traced).
            trace_context TEXT
        );
        -- Added by the tracing version (checked first: ALTER TABLE locks the table even
        -- when the column exists).
        DO $$ BEGIN
            IF NOT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = '{schema}'
                           AND table_name = 'outbox' AND column_name = 'trace_context') THEN
                ALTER TABLE {schema}.outbox ADD COLUMN trace_context TEXT;
            END IF;
        END $$;
        CREATE TABLE IF NOT EXISTS {schema}.inbox (
            event_id UUID PRIMARY KEY,
            event_type TEXT NOT NULL,
            processed_at TIMESTAMPTZ NOT NULL DEFAULT now()
        );
        -- Checked first: CREATE INDEX IF NOT EXISTS takes its table's SHARE lock even when
        -- the index exists, and one instance starting while another writes deadlocked here
        -- (outbox locked by this, inbox by a handler that then wanted the outbox).
        DO $$ BEGIN
            IF to_regclass('{schema}.outbox_unsent') IS NULL THEN
                CREATE INDEX outbox_unsent ON {schema}.outbox (id) WHERE sent_at IS NULL;
            END IF;
            IF to_regclass('{schema}.outbox_sent_at') IS NULL THEN
                CREATE INDEX outbox_sent_at ON {schema}.outbox (sent_at) WHERE sent_at IS NOT NULL;
            END IF;
            IF to_regclass('{schema}.inbox_processed_at') IS NULL THEN
                CREATE INDEX inbox_processed_at ON {schema}.inbox (processed_at);
            END IF;
        END $$;
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
