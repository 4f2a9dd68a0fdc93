//! `shop order <id>`: one order's path across the services, from what they recorded, with no
//! tracing backend (see [`shop_platform::timeline`]): read here from every service's schema
//! (read-only) and the broker's dead-letter queues. The answer to "where is this order
//! stuck?" in one command.

use anyhow::Context as _;
use shop_platform::{
    admin,
    amqp::Broker,
    config::Config,
    dlq,
    timeline::{self, DeadLetterStep, Timeline},
};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{PROGRAMS, topology};

/// Reads the timeline of `order_id` (read-only, as the `audit` role when it has a password);
/// `broker` adds the dead letters.
pub async fn read(
    config: &Config,
    order_id: Uuid,
    broker: Option<&Broker>,
) -> anyhow::Result<Timeline> {
    let pool = crate::audit::read_only_pool(config).await?;
    let result = read_from(&pool, order_id, broker).await;
    pool.close().await;
    result
}

async fn read_from(
    pool: &PgPool,
    order_id: Uuid,
    broker: Option<&Broker>,
) -> anyhow::Result<Timeline> {
    let orders = shop_orders::program::IDENTITY.name;
    let order = shop_orders::store::record(pool, Some(orders), order_id)
        .await?
        .with_context(|| format!("no order {order_id}"))?;
    let (since, until) = timeline::window(order.placed_at, order.updated_at);

    // Each service's outbox, within the order's time window (the index on sent_at), and
    // its inbox by event id.
    let with_schema: Vec<&'static str> = PROGRAMS
        .iter()
        .filter(|e| e.identity.uses_database)
        .map(|e| e.identity.name)
        .collect();
    let mut published = Vec::new();
    for schema in &with_schema {
        for p in admin::published(pool, Some(schema), order_id, since, until).await? {
            published.push((schema.to_string(), p));
        }
    }
    let ids: Vec<Uuid> = published.iter().map(|(_, p)| p.event_id).collect();
    let mut handled = Vec::new();
    for schema in &with_schema {
        for (id, at) in admin::handled(pool, Some(schema), &ids).await? {
            handled.push((schema.to_string(), id, at));
        }
    }

    let dead_letters = match broker {
        Some(broker) => {
            let needle = order_id.to_string();
            let all = dlq::list(broker, None).await?;
            Some(
                all.into_iter()
                    .filter(|d| d.body.contains(&needle))
                    .map(DeadLetterStep::from)
                    .collect(),
            )
        }
        None => None,
    };
    Ok(timeline::assemble(
        order,
        published,
        handled,
        &topology(),
        dead_letters,
    ))
}
