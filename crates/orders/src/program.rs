//! The orders program: the saga orchestrator.

use std::time::Duration;

use async_trait::async_trait;
use shop_platform::service::{Context, Parts, Program};
use sqlx::{PgPool, postgres::PgListener};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::debug;
use uuid::Uuid;

use crate::{handlers, http, store};

pub struct Orders;

#[async_trait]
impl Program for Orders {
    fn name(&self) -> &'static str {
        "orders"
    }

    async fn migrate(&self, pool: &PgPool) -> anyhow::Result<()> {
        sqlx::migrate!("./migrations").run(pool).await?;
        Ok(())
    }

    async fn build(&self, ctx: &Context) -> anyhow::Result<Parts> {
        let pool = ctx.pool().clone();
        let deadline = ctx.config.saga_deadline();
        let (changes, _) = broadcast::channel(1024);
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(32)
            .build()?;
        let state = http::AppState {
            pool: pool.clone(),
            http: client,
            products_url: ctx.config.service_url("products"),
            deadline,
            changes: changes.clone(),
        };
        let tasks = vec![
            tokio::spawn(handlers::run_deadlines(
                pool.clone(),
                deadline,
                ctx.stop.clone(),
            )),
            tokio::spawn(forward_status_changes(pool, changes, ctx.stop.clone())),
        ];
        Ok(Parts {
            router: http::router(state),
            handler: Some(handlers::handler(deadline)),
            tasks,
            ..Default::default()
        })
    }
}

/// Relays PostgreSQL NOTIFYs of status changes to the event streams of this instance.
async fn forward_status_changes(
    pool: PgPool,
    changes: broadcast::Sender<Uuid>,
    stop: CancellationToken,
) {
    loop {
        let listener = async {
            let mut l = PgListener::connect_with(&pool).await?;
            l.listen(store::STATUS_CHANNEL).await?;
            Ok::<_, sqlx::Error>(l)
        };
        match listener.await {
            Ok(mut l) => loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    n = l.recv() => match n {
                        Ok(n) => {
                            if let Ok(id) = n.payload().parse() {
                                let _ = changes.send(id);
                            }
                        }
                        Err(e) => {
                            debug!(error = %e, "status listener lost; reconnecting");
                            break;
                        }
                    }
                }
            },
            Err(e) => debug!(error = %e, "status listener unavailable"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
