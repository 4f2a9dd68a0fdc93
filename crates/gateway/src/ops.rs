//! The administrators' routes the gateway answers itself, from what it asks the programs
//! (docs/architecture.md, "Browser pages"): the overview of the operations page, every
//! service's dead letters in one list, and one order's timeline. Each service is asked with
//! the administrator's own assertion, so the services hold these reads to their access as
//! they hold any other.

use std::{collections::BTreeMap, collections::VecDeque, net::SocketAddr, time::Duration};

use axum::{
    Json,
    extract::Request,
    http::{Method, Uri},
    response::{IntoResponse, Response},
};
use chrono::SecondsFormat;
use futures::future::join_all;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use shop_platform::{
    admin::{self, DeadLetters, Published, QueueState},
    assertion, dlq,
    http::{ApiError, X_REQUEST_ID},
    metrics,
    timeline::{self, DeadLetterStep, OrderRecord},
};
use tokio::time::Instant;
use tracing::warn;
use uuid::Uuid;

use crate::proxy::{self, Admitted, GATEWAY, Gateway};

const ORDERS: &str = shop_orders::program::IDENTITY.name;

/// The routes the gateway answers itself (besides every service's dead letters).
pub const OVERVIEW: &str = "/api/admin/overview";
pub const TIMELINE: &str = "/api/admin/orders/{id}/timeline";

/// How far back the overview's rates and saga latencies look.
pub const WINDOW: Duration = Duration::from_secs(15);

/// The sagas' counters as the gateway last read them (for rates over [`WINDOW`]).
#[derive(Default)]
pub struct Samples(tokio::sync::Mutex<VecDeque<Sample>>);

struct Sample {
    at: Instant,
    /// Sagas ended, by terminal status, over every instance of orders.
    ended: BTreeMap<String, f64>,
    /// Saga durations' cumulative buckets, over every instance.
    buckets: Vec<(f64, f64)>,
}

/// Whether the gateway answers `req` itself.
pub fn owns(req: &Request) -> bool {
    let uri = req.uri();
    match proxy::classify(req.method(), uri.path()) {
        Ok(route) if route.service == GATEWAY => true,
        // Without `?service=`: every service's.
        Ok(_) => {
            req.method() == Method::GET
                && uri.path().trim_end_matches('/') == admin::DEAD_LETTERS
                && !has_service(uri)
        }
        _ => false,
    }
}

fn has_service(uri: &Uri) -> bool {
    uri.query()
        .is_some_and(|q| q.split('&').any(|p| p.starts_with("service=")))
}

pub async fn serve(gw: &Gateway, peer: SocketAddr, req: Request) -> Result<Response, ApiError> {
    let (parts, _) = req.into_parts();
    let who = proxy::admit(gw, peer, &parts).await?;
    let path = parts.uri.path().trim_end_matches('/');
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    match segs.as_slice() {
        ["api", "admin", "overview"] => Ok(Json(overview(gw, &who).await).into_response()),
        ["api", "admin", "orders", id, "timeline"] => {
            let id = id
                .parse::<Uuid>()
                .map_err(|_| ApiError::not_found("order"))?;
            Ok(Json(order_timeline(gw, &who, id).await?).into_response())
        }
        _ => Ok(Json(all_dead_letters(gw, &who, parts.uri.query()).await?).into_response()),
    }
}

/// Asks `service` (any instance) `GET path_and_query` as the administrator.
async fn ask<T: DeserializeOwned>(
    gw: &Gateway,
    who: &Admitted<'_>,
    service: &'static str,
    path_and_query: &str,
) -> Result<T, ApiError> {
    let instances = gw
        .fleet
        .instances(service)
        .map_err(|_| ApiError::Unavailable(format!("{service} is unavailable")))?;
    let sent = instances
        .send("GET", true, |base| {
            let mut out = gw
                .http
                .get(format!("{base}{path_and_query}"))
                .header(assertion::HEADER, who.assertion(gw, service));
            if let Some(id) = &who.request_id {
                out = out.header(X_REQUEST_ID, id);
            }
            out
        })
        .await
        .map_err(|e| {
            warn!(service, error = %e, "service unreachable");
            ApiError::Unavailable(format!("the {service} service is unavailable, try again"))
        })?;
    let status = sent.status().as_u16();
    if status == 200 {
        return sent
            .json::<T>()
            .await
            .map_err(|e| ApiError::Unavailable(format!("the {service} service's answer: {e}")));
    }
    // The service's refusal is the caller's: said as the service said it.
    let problem: Value = sent.json().await.unwrap_or(Value::Null);
    let detail = problem["detail"].as_str().unwrap_or("refused").to_string();
    Err(match status {
        400 => ApiError::BadRequest(detail),
        403 => ApiError::Forbidden(detail),
        404 => ApiError::NotFound(format!("{service}: {detail}")),
        422 => {
            let field = problem["field"].as_str().unwrap_or("query").to_string();
            let message = detail
                .strip_prefix(&format!("{field}: "))
                .unwrap_or(&detail)
                .to_string();
            ApiError::Validation { field, message }
        }
        status => ApiError::Unavailable(format!(
            "the {service} service answered {status}, try again"
        )),
    })
}

/// GETs `url` (one instance's port: its detailed readiness or metrics, which need no
/// assertion) within two seconds.
async fn scrape(gw: &Gateway, url: String) -> Result<(bool, String), String> {
    let resp = gw
        .http
        .get(&url)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .map_err(|e| format!("unreachable: {e}"))?;
    let ok = resp.status().is_success();
    let text = resp.text().await.map_err(|e| e.to_string())?;
    Ok((ok, text))
}

/// The operations page's live figures: every program instance's readiness and gauges, every
/// service's queue, the orders by status, and the sagas' rates and latencies over the last
/// [`WINDOW`] (`null` until two readings are apart).
async fn overview(gw: &Gateway, who: &Admitted<'_>) -> Value {
    let programs: Vec<_> = gw
        .fleet
        .topology
        .programs()
        .filter(|p| p.name != GATEWAY)
        .filter_map(|p| gw.fleet.instances(p.name).ok())
        .collect();
    let instance_reads = programs.iter().map(|i| async move {
        let reads = i.urls().map(|url| async move {
            let (ready, metrics) = tokio::join!(
                scrape(gw, format!("{url}/health/ready")),
                scrape(gw, format!("{url}/metrics"))
            );
            (url.to_string(), ready, metrics)
        });
        (i.program(), join_all(reads).await)
    });
    let queue_reads = gw.fleet.topology.consuming_services().map(|s| async move {
        match ask::<QueueState>(gw, who, s, admin::QUEUE).await {
            Ok(q) => serde_json::to_value(q).unwrap_or(Value::Null),
            Err(e) => json!({ "service": s, "error": e.to_string() }),
        }
    });
    let stats = ask::<Value>(gw, who, ORDERS, shop_orders::http::ADMIN_STATS);
    let (instances, queues, stats) =
        tokio::join!(join_all(instance_reads), join_all(queue_reads), stats);

    let mut ended = BTreeMap::new();
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    let mut out_programs = vec![json!({
        "name": GATEWAY,
        "instances": [{ "url": "(this one)", "ready": true }],
    })];
    for (program, reads) in instances {
        let mut list = Vec::new();
        for (url, ready, scraped) in reads {
            let (ready, checks, error) = match ready {
                Ok((ok, body)) => {
                    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                    (ok, body.get("details").cloned(), None)
                }
                Err(e) => (false, None, Some(e)),
            };
            let mut entry = json!({ "url": url, "ready": ready, "checks": checks, "error": error });
            if let Ok((true, text)) = scraped {
                let sum = |name: &str| metrics::sample_sum(&text, name, &[]);
                entry["outbox_depth"] = sum("shop_outbox_depth").into();
                entry["outbox_oldest_age_seconds"] =
                    sum("shop_outbox_oldest_unsent_age_seconds").into();
                entry["in_flight"] = sum("shop_messages_in_flight").into();
                entry["resident_memory_bytes"] = sum("shop_process_resident_memory_bytes").into();
                if program == ORDERS {
                    for status in ["CONFIRMED", "CANCELLED"] {
                        let n = metrics::sample_sum(
                            &text,
                            "shop_sagas_ended_total",
                            &[("status", status)],
                        );
                        *ended.entry(status.to_string()).or_insert(0.0) += n;
                    }
                    for (le, n) in metrics::buckets(&text, "shop_saga_duration_seconds") {
                        match buckets.iter_mut().find(|(l, _)| *l == le) {
                            Some((_, c)) => *c += n,
                            None => buckets.push((le, n)),
                        }
                    }
                }
            }
            list.push(entry);
        }
        out_programs.push(json!({ "name": program, "instances": list }));
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let sagas = sagas(gw, ended, buckets).await;
    let orders = match stats {
        Ok(v) => v,
        Err(e) => json!({ "error": e.to_string() }),
    };
    json!({
        "at": chrono::Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
        "programs": out_programs,
        "queues": queues,
        "orders": orders,
        "sagas": sagas,
    })
}

/// Keeps this reading and compares it with the oldest within [`WINDOW`]: sagas ended per
/// second by outcome, and the latency percentiles of those that ended meanwhile.
async fn sagas(gw: &Gateway, ended: BTreeMap<String, f64>, buckets: Vec<(f64, f64)>) -> Value {
    let now = Instant::now();
    let mut samples = gw.sagas.0.lock().await;
    while samples
        .front()
        .is_some_and(|s| now.duration_since(s.at) > WINDOW)
    {
        samples.pop_front();
    }
    let window = samples
        .front()
        .filter(|s| now.duration_since(s.at) >= Duration::from_millis(500))
        .map(|old| {
            let secs = now.duration_since(old.at).as_secs_f64();
            // A restarted instance counts from zero again: no negative rates.
            let per_second: BTreeMap<&String, f64> = ended
                .iter()
                .map(|(k, v)| {
                    let before = old.ended.get(k).copied().unwrap_or(0.0);
                    (k, ((v - before).max(0.0) / secs * 10.0).round() / 10.0)
                })
                .collect();
            let delta: Vec<(f64, f64)> = buckets
                .iter()
                .map(|(le, n)| {
                    let before = old
                        .buckets
                        .iter()
                        .find(|(l, _)| l == le)
                        .map_or(0.0, |b| b.1);
                    (*le, (n - before).max(0.0))
                })
                .collect();
            let ms = |q| metrics::quantile(&delta, q).map(|s| (s * 1000.0).round());
            json!({
                "window_seconds": (secs * 10.0).round() / 10.0,
                "per_second": per_second,
                "latency_ms": { "p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99) },
            })
        });
    let totals = json!(ended);
    samples.push_back(Sample {
        at: now,
        ended,
        buckets,
    });
    // Bounded however often the page asks.
    while samples.len() > 256 {
        samples.pop_front();
    }
    json!({ "ended": totals, "window": window })
}

/// Every consuming service's dead letters (the query, `limit` and `contains`, asked of each).
async fn all_dead_letters(
    gw: &Gateway,
    who: &Admitted<'_>,
    query: Option<&str>,
) -> Result<Value, ApiError> {
    let path = match query {
        Some(q) => format!("{}?{q}", admin::DEAD_LETTERS),
        None => admin::DEAD_LETTERS.to_string(),
    };
    let asks = gw.fleet.topology.consuming_services().map(|s| {
        let path = path.clone();
        async move { (s, ask::<DeadLetters>(gw, who, s, &path).await) }
    });
    let mut items = Vec::new();
    let mut services = Vec::new();
    let mut total = 0;
    for (service, answer) in join_all(asks).await {
        match answer {
            Ok(d) => {
                total += d.total;
                services.push(json!({ "service": service, "total": d.total }));
                items.extend(d.items);
            }
            // A bad query is bad for every service: say it once.
            Err(e @ (ApiError::Validation { .. } | ApiError::BadRequest(_))) => return Err(e),
            Err(e) => services.push(json!({ "service": service, "error": e.to_string() })),
        }
    }
    Ok(json!({ "total": total, "services": services, "items": items }))
}

/// One order's timeline, put together from what each service answers of it.
async fn order_timeline(
    gw: &Gateway,
    who: &Admitted<'_>,
    id: Uuid,
) -> Result<timeline::Timeline, ApiError> {
    let order: OrderRecord = ask(
        gw,
        who,
        ORDERS,
        &shop_orders::http::ADMIN_ORDER.replace("{id}", &id.to_string()),
    )
    .await
    .map_err(|e| match e {
        ApiError::NotFound(_) => ApiError::not_found("order"),
        e => e,
    })?;
    let (since, until) = timeline::window(order.placed_at, order.updated_at);
    let at = |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(SecondsFormat::Micros, true);
    let services = proxy::admin_services(gw);
    let outbox = format!(
        "{}?correlation_id={id}&since={}&until={}",
        admin::OUTBOX,
        at(since),
        at(until)
    );
    let published = join_all(services.iter().map(|s| {
        let outbox = outbox.clone();
        async move {
            let items: Result<Value, _> = ask(gw, who, s, &outbox).await;
            (*s, items)
        }
    }))
    .await;
    let mut all = Vec::new();
    for (service, answer) in published {
        let items = answer?
            .get("items")
            .cloned()
            .and_then(|v| serde_json::from_value::<Vec<Published>>(v).ok())
            .unwrap_or_default();
        all.extend(items.into_iter().map(|p| (service.to_string(), p)));
    }
    let ids: Vec<String> = all.iter().map(|(_, p)| p.event_id.to_string()).collect();
    let mut handled = Vec::new();
    for chunk in ids.chunks(admin::MAX_IDS) {
        let inbox = format!("{}?ids={}", admin::INBOX, chunk.join(","));
        let answers = join_all(services.iter().map(|s| {
            let inbox = inbox.clone();
            async move { (*s, ask::<Value>(gw, who, s, &inbox).await) }
        }))
        .await;
        for (service, answer) in answers {
            for item in answer?["items"].as_array().into_iter().flatten() {
                let id = item["event_id"].as_str().and_then(|s| s.parse().ok());
                let at = item["processed_at"]
                    .as_str()
                    .and_then(|s| s.parse::<chrono::DateTime<chrono::Utc>>().ok());
                if let (Some(id), Some(at)) = (id, at) {
                    handled.push((service.to_string(), id, at));
                }
            }
        }
    }
    let dead = all_dead_letters(
        gw,
        who,
        Some(&format!("contains={id}&limit={}", admin::MAX_LIST)),
    )
    .await
    .ok()
    .filter(|d| {
        d["services"]
            .as_array()
            .is_some_and(|s| s.iter().all(|s| s.get("error").is_none()))
    })
    .and_then(|d| serde_json::from_value::<Vec<dlq::DeadLetter>>(d["items"].clone()).ok())
    .map(|items| items.into_iter().map(DeadLetterStep::from).collect());
    Ok(timeline::assemble(
        order,
        all,
        handled,
        &gw.fleet.topology,
        dead,
    ))
}
