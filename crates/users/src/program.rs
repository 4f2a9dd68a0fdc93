//! The users program: migrations, the administrator from configuration, the routes.

use anyhow::Context as _;
use async_trait::async_trait;
use clap::Args;
use shop_platform::{
    Event as _,
    events::UserRegistered,
    redis_util::RedisConn,
    service::{Context, Parts, Program},
    session::{self, SessionSettings},
};
use sqlx::PgPool;
use tracing::{info, warn};

use crate::{
    domain::{self, Email, Name, Password, Role},
    hasher::Hasher,
    http::{self, AppState},
    store,
};

shop_platform::service! {
    /// Who the users service is: it consumes no events.
    Users: "users" on port 8081, consumes &[], publishes &[UserRegistered::TYPE]
}

/// The users service's own settings.
#[derive(Args, Clone, Debug)]
pub struct UsersSettings {
    /// E-mail of the administrator created or updated at start-up (none if unset).
    #[arg(long, env = "SHOP_ADMIN_EMAIL", global = true)]
    pub admin_email: Option<String>,

    /// Password of that administrator.
    #[arg(
        long,
        env = "SHOP_ADMIN_PASSWORD",
        global = true,
        hide_env_values = true
    )]
    pub admin_password: Option<String>,

    /// Login attempts per minute allowed for one account, wherever they come from.
    #[arg(long, env = "SHOP_LOGINS_PER_ACCOUNT_PER_MIN", global = true)]
    #[arg(default_value_t = 10)]
    pub logins_per_account_per_min: u32,

    /// Login attempts per minute allowed from one client address (as the gateway names it).
    #[arg(long, env = "SHOP_LOGINS_PER_ADDRESS_PER_MIN", global = true)]
    #[arg(default_value_t = 30)]
    pub logins_per_address_per_min: u32,

    /// Registrations per minute allowed from one client address (each costs an Argon2 hash).
    #[arg(long, env = "SHOP_REGISTRATIONS_PER_ADDRESS_PER_MIN", global = true)]
    #[arg(default_value_t = 20)]
    pub registrations_per_address_per_min: u32,
}

pub struct Users {
    pub settings: UsersSettings,
    pub sessions: SessionSettings,
}

/// Display name given to an administrator created from configuration.
const ADMIN_NAME: &str = "Administrator";

#[async_trait]
impl Program for Users {
    async fn build(&self, ctx: &Context) -> anyhow::Result<Parts> {
        let pool = ctx.pool().clone();
        let redis = ctx.redis.clone().context("the users service needs Redis")?;
        let hasher = Hasher::default();
        // Pay for the dummy hash now, not in the first login with an unknown e-mail.
        hasher.run(domain::warm_up_dummy_hash).await?;

        match (&self.settings.admin_email, &self.settings.admin_password) {
            (Some(email), Some(password)) => {
                let mut redis = redis.clone();
                let namespace = &ctx.config.namespace;
                ensure_admin(&pool, &hasher, (&mut redis, namespace), email, password).await?
            }
            (None, None) => {}
            _ => warn!(
                "set both SHOP_ADMIN_EMAIL and SHOP_ADMIN_PASSWORD to create an administrator"
            ),
        }

        let state = AppState {
            pool,
            redis,
            namespace: ctx.config.namespace.clone(),
            session_ttl_secs: self.sessions.session_ttl_secs,
            hasher,
            outbox: ctx.outbox.clone(),
            settings: self.settings.clone(),
        };
        Ok(Parts {
            router: http::router(state),
            ..Parts::default()
        })
    }
}

/// Creates the configured administrator, or gives the existing account with that e-mail the
/// administrator role and the configured password. Idempotent; concurrent start-ups agree.
/// When that changes an existing account's password or role, its sessions end (a token
/// taken with the old password stops working).
async fn ensure_admin(
    pool: &PgPool,
    hasher: &Hasher,
    (redis, namespace): (&mut RedisConn, &str),
    email: &str,
    password: &str,
) -> anyhow::Result<()> {
    let email = Email::parse(email).context("SHOP_ADMIN_EMAIL")?;
    let password = Password::parse(password.to_owned()).context("SHOP_ADMIN_PASSWORD")?;
    let name = Name::parse(ADMIN_NAME)?;
    if let Some(existing) = store::credentials(pool, &email).await? {
        let (candidate, phc) = (password.as_str().to_owned(), existing.password_hash);
        let same_password = hasher
            .run(move || domain::verify_password(&candidate, &phc))
            .await?;
        if same_password && existing.user.role == Role::Admin {
            info!(user_id = %existing.user.id, "administrator ready (unchanged)");
            return Ok(());
        }
    }
    let hash = hasher
        .run(move || domain::hash_password(&password))
        .await??;
    let (user, created) = store::upsert_admin(pool, &email, &name, &hash)
        .await
        .context("creating the administrator")?;
    if !created {
        let ended = session::revoke_all(redis, namespace, user.id)
            .await
            .context("ending the administrator's sessions after the change")?;
        info!(user_id = %user.id, sessions_ended = ended, "administrator's password or role changed");
    }
    info!(user_id = %user.id, created, "administrator ready");
    Ok(())
}
