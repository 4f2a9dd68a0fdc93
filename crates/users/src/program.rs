//! The users program: migrations, the administrator from configuration, the routes.

use anyhow::Context as _;
use async_trait::async_trait;
use shop_platform::service::{Context, Parts, Program};
use sqlx::PgPool;
use tracing::{info, warn};

use crate::{
    domain::{self, Email, Name, Password},
    hasher::Hasher,
    http::{self, AppState},
    store,
};

pub struct Users;

/// Display name given to an administrator created from configuration.
const ADMIN_NAME: &str = "Administrator";

#[async_trait]
impl Program for Users {
    fn name(&self) -> &'static str {
        "users"
    }

    async fn migrate(&self, pool: &PgPool) -> anyhow::Result<()> {
        sqlx::migrate!("./migrations").run(pool).await?;
        Ok(())
    }

    async fn build(&self, ctx: &Context) -> anyhow::Result<Parts> {
        let pool = ctx.pool().clone();
        let redis = ctx.redis.clone().context("the users service needs Redis")?;
        let hasher = Hasher::default();
        // Pay for the dummy hash now, not in the first login with an unknown e-mail.
        hasher.run(domain::warm_up_dummy_hash).await?;

        match (&ctx.config.admin_email, &ctx.config.admin_password) {
            (Some(email), Some(password)) => ensure_admin(&pool, &hasher, email, password).await?,
            (None, None) => {}
            _ => warn!(
                "set both SHOP_ADMIN_EMAIL and SHOP_ADMIN_PASSWORD to create an administrator"
            ),
        }

        let state = AppState {
            pool,
            redis,
            namespace: ctx.config.namespace.clone(),
            session_ttl_secs: ctx.config.session_ttl_secs,
            hasher,
            outbox: ctx.outbox.clone(),
        };
        Ok(Parts {
            router: http::router(state),
            ..Parts::default()
        })
    }
}

/// Creates the configured administrator, or gives the existing account with that e-mail the
/// administrator role and the configured password. Idempotent; concurrent start-ups agree.
async fn ensure_admin(
    pool: &PgPool,
    hasher: &Hasher,
    email: &str,
    password: &str,
) -> anyhow::Result<()> {
    let email = Email::parse(email).context("SHOP_ADMIN_EMAIL")?;
    let password = Password::parse(password.to_owned()).context("SHOP_ADMIN_PASSWORD")?;
    let name = Name::parse(ADMIN_NAME)?;
    let hash = hasher
        .run(move || domain::hash_password(&password))
        .await??;
    let (user, created) = store::upsert_admin(pool, &email, &name, &hash)
        .await
        .context("creating the administrator")?;
    info!(user_id = %user.id, created, "administrator ready");
    Ok(())
}
