//! One order is one OpenTelemetry trace across the programs it crosses, exported over
//! OTLP/HTTP to a receiver inside the test (decoded with opentelemetry-proto): every program
//! its own process, real servers, stopped with SIGTERM before the spans are read.

use std::{
    collections::{BTreeSet, HashMap},
    time::Duration,
};

use shop_platform::testkit::otlp::{ReceivedSpan, Receiver};

use crate::cluster::Cluster;

/// The programs a confirmed order crosses: the gateway, orders (which asks products for
/// prices over HTTP), inventory, payments and notifications. Users is not on the path (the
/// gateway checks sessions in Redis; a login is a trace of its own).
const CONFIRMED_PATH: &[&str] = &[
    "shop-gateway",
    "shop-orders",
    "shop-products",
    "shop-inventory",
    "shop-payments",
    "shop-notifications",
];

/// The spans of one trace.
struct Trace<'a> {
    spans: Vec<&'a ReceivedSpan>,
}

impl<'a> Trace<'a> {
    /// The one trace whose spans name `order` (the request's and the messages').
    fn of_order(all: &'a [ReceivedSpan], order: &str) -> Trace<'a> {
        let ids: BTreeSet<&str> = all
            .iter()
            .filter(|s| s.attr("shop.order_id") == Some(order))
            .map(|s| s.trace_id.as_str())
            .collect();
        assert_eq!(ids.len(), 1, "order {order} is in traces {ids:?}");
        let id = ids.into_iter().next().unwrap();
        Trace {
            spans: all.iter().filter(|s| s.trace_id == id).collect(),
        }
    }

    fn services(&self) -> BTreeSet<&str> {
        self.spans.iter().map(|s| s.service.as_str()).collect()
    }

    /// Exactly one root (the gateway's server span), every other span's parent present.
    fn assert_unbroken(&self) {
        let ids: BTreeSet<&str> = self.spans.iter().map(|s| s.span_id.as_str()).collect();
        let roots: Vec<&&ReceivedSpan> = self
            .spans
            .iter()
            .filter(|s| s.parent_span_id.is_empty())
            .collect();
        assert_eq!(roots.len(), 1, "roots: {roots:#?}");
        assert_eq!(roots[0].service, "shop-gateway");
        assert_eq!(roots[0].kind, "server");
        assert_eq!(roots[0].name, "POST /api/orders");
        for s in &self.spans {
            assert!(
                s.parent_span_id.is_empty() || ids.contains(s.parent_span_id.as_str()),
                "the parent of {} ({}) was not exported: the chain is broken; the trace:\n{}",
                s.name,
                s.service,
                self.spans
                    .iter()
                    .map(|s| format!(
                        "{} {} {} <- {}",
                        s.service, s.name, s.span_id, s.parent_span_id
                    ))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }

    fn named(&self, name: &str) -> Vec<&&'a ReceivedSpan> {
        self.spans.iter().filter(|s| s.name == name).collect()
    }

    fn parent(&self, s: &ReceivedSpan) -> &'a ReceivedSpan {
        self.spans
            .iter()
            .find(|p| p.span_id == s.parent_span_id)
            .expect("parent exported")
    }
}

/// Waits until the trace of `order` has spans from `services` programs.
async fn wait_spans(receiver: &Receiver, order: &str, services: usize) {
    let seen = || {
        let all = receiver.spans();
        let traces: BTreeSet<String> = all
            .iter()
            .filter(|s| s.attr("shop.order_id") == Some(order))
            .map(|s| s.trace_id.clone())
            .collect();
        all.iter()
            .filter(|s| traces.contains(&s.trace_id))
            .map(|s| s.service.clone())
            .collect::<BTreeSet<String>>()
    };
    let what = format!("the spans of order {order} from {services} programs");
    shop_platform::testkit::eventually(&what, Duration::from_secs(20), || async {
        seen().len() >= services
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn one_order_is_one_trace_across_the_programs_it_crosses() {
    let receiver = Receiver::start().await;
    let mut cluster = Cluster::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ("SHOP_LOG_FORMAT", "json"),
    ])
    .await;
    let admin = cluster.admin().await;
    let (token, _) = cluster.user().await;
    let product = cluster.product(&admin, 1000, 3).await;
    let mut orders = HashMap::new();
    for (what, quantity, payment) in [
        ("confirmed", 1, "tok_visa"),
        ("declined", 1, "tok_decline"),
        ("out of stock", 50, "tok_visa"),
    ] {
        let order = cluster.order(&token, &[(product, quantity)], payment).await;
        let id = order["id"].as_str().unwrap().to_string();
        let done = cluster.settled(&token, &id, Duration::from_secs(30)).await;
        let expected = if what == "confirmed" {
            "CONFIRMED"
        } else {
            "CANCELLED"
        };
        assert_eq!(done["status"], expected, "{what}: {done}");
        orders.insert(what, id);
    }

    // A message redelivered after a crash between its commit and its ack stays in its
    // order's trace: inventory aborts before acking its next message, and is restarted.
    cluster.terminate("inventory");
    cluster.spawn_with("inventory", &[("SHOP_CRASH_POINT", "consumer.before_ack")]);
    cluster.wait_ready(Duration::from_secs(30)).await;
    let order = cluster.order(&token, &[(product, 1)], "tok_visa").await;
    let redelivered = order["id"].as_str().unwrap().to_string();
    let inventory = cluster
        .wait_exit("inventory", Duration::from_secs(30))
        .await;
    assert!(!inventory.success(), "inventory should have aborted");
    cluster.spawn("inventory");
    let done = cluster
        .settled(&token, &redelivered, Duration::from_secs(60))
        .await;
    assert_eq!(done["status"], "CONFIRMED", "{done}");
    wait_spans(&receiver, &orders["confirmed"], CONFIRMED_PATH.len()).await;

    // Every metric the Grafana dashboard queries is declared by a live program's /metrics.
    let mut exposed = String::new();
    for program in shop::names() {
        let url = match program {
            "gateway" => format!("{}/metrics", cluster.admin),
            _ => format!("http://127.0.0.1:{}/metrics", cluster.port(program)),
        };
        let r = cluster.http.get(url).send().await.unwrap();
        assert!(r.status().is_success(), "{program}: {}", r.status());
        exposed += &r.text().await.unwrap();
    }
    let dashboard = include_str!("../../../../deploy/observability/grafana/dashboards/shop.json");
    let queried: BTreeSet<&str> = dashboard
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|t| t.starts_with("shop_"))
        .collect();
    assert!(queried.len() > 15, "{queried:?}");
    for name in queried {
        let base = ["_total", "_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        assert!(
            exposed.contains(&format!("# TYPE {base} ")),
            "the dashboard queries {name}, which no program exposes"
        );
    }
    // Sagas by outcome and their duration, from orders.
    let sagas = shop_platform::metrics::sample_sum(&exposed, "shop_sagas_ended_total", &[]);
    assert_eq!(sagas, 4.0, "four orders ended");
    let confirmed_sagas = shop_platform::metrics::sample_sum(
        &exposed,
        "shop_sagas_ended_total",
        &[("status", "CONFIRMED")],
    );
    assert_eq!(confirmed_sagas, 2.0);
    assert_eq!(
        shop_platform::metrics::sample_sum(&exposed, "shop_saga_duration_seconds_count", &[]),
        4.0
    );

    // Stopping with SIGTERM exports what is still buffered.
    for program in shop::names() {
        let status = cluster.terminate(program);
        assert!(status.success(), "{program} stopped with {status}");
    }
    let all = receiver.spans();
    assert!(receiver.requests() > 0);

    // The confirmed order: one trace across its programs, its chain unbroken.
    let confirmed = Trace::of_order(&all, &orders["confirmed"]);
    let expected: BTreeSet<&str> = CONFIRMED_PATH.iter().copied().collect();
    assert_eq!(confirmed.services(), expected);
    confirmed.assert_unbroken();
    // The HTTP hops: the gateway's client span is the parent of orders' server span, whose
    // call to products continues it.
    let placed = confirmed.named("POST /api/orders");
    let served = placed
        .iter()
        .find(|s| s.service == "shop-orders")
        .expect("orders' server span");
    assert_eq!(served.kind, "server");
    assert_eq!(served.attr("http.route"), Some("/api/orders"));
    assert_eq!(served.attr("http.request.method"), Some("POST"));
    assert_eq!(served.attr("http.response.status_code"), Some("202"));
    let call = confirmed.parent(served);
    assert_eq!(
        (call.kind, call.service.as_str()),
        ("client", "shop-gateway")
    );
    let prices = confirmed
        .spans
        .iter()
        .find(|s| s.service == "shop-products" && s.kind == "server")
        .expect("products' server span");
    assert_eq!(confirmed.parent(prices).kind, "client");
    assert_eq!(confirmed.parent(prices).service, "shop-orders");
    // The order's transaction writes the outbox row the relay publishes from, in its context.
    let tx = confirmed.named("place order");
    assert_eq!(tx.len(), 1);
    assert_eq!(tx[0].attr("db.system.name"), Some("postgresql"));
    assert_eq!(confirmed.parent(tx[0]).span_id, served.span_id);
    let sent = confirmed.named("send order.created");
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].kind, "producer");
    assert_eq!(confirmed.parent(sent[0]).span_id, tx[0].span_id);
    // Each consumer span's parent is the producer span in the message's headers.
    for (event, consumer) in [
        ("order.created", "shop-inventory"),
        ("stock.reserved", "shop-orders"),
        ("payment.requested", "shop-payments"),
        ("payment.succeeded", "shop-orders"),
        ("order.confirmed", "shop-notifications"),
    ] {
        let process = confirmed.named(&format!("process {event}"));
        let process = process
            .iter()
            .find(|s| s.service == consumer)
            .unwrap_or_else(|| panic!("{consumer} processing {event}"));
        assert_eq!(process.kind, "consumer");
        assert_eq!(process.attr("messaging.system"), Some("rabbitmq"));
        assert_eq!(process.attr("messaging.operation.type"), Some("process"));
        assert_eq!(
            process.attr("messaging.rabbitmq.destination.routing_key"),
            Some(event)
        );
        assert!(process.attr("messaging.message.id").is_some());
        assert_eq!(
            process.attr("shop.correlation_id"),
            Some(orders["confirmed"].as_str())
        );
        let producer = confirmed.parent(process);
        assert_eq!(producer.kind, "producer", "{event}");
        assert_eq!(producer.name, format!("send {event}"));
        assert_eq!(producer.attr("messaging.operation.type"), Some("send"));
        // Its handler's transaction.
        assert!(
            confirmed
                .spans
                .iter()
                .any(|s| s.parent_span_id == process.span_id
                    && s.name == format!("handle {event}")
                    && s.attr("db.system.name") == Some("postgresql")),
            "{event}: no transaction span"
        );
    }

    // The e-mail's delivery continues the trace of the transaction that recorded it.
    let deliver = confirmed
        .spans
        .iter()
        .find(|s| s.name.starts_with("deliver "))
        .expect("the e-mail's delivery span");
    assert_eq!(deliver.service, "shop-notifications");
    assert_eq!(confirmed.parent(deliver).name, "handle order.confirmed");

    // A declined and an out-of-stock order: their own traces, through their compensations.
    let declined = Trace::of_order(&all, &orders["declined"]);
    declined.assert_unbroken();
    assert!(!declined.named("process payment.failed").is_empty());
    assert!(!declined.named("process stock.release_requested").is_empty());
    assert!(!declined.named("process order.cancelled").is_empty());
    let stockout = Trace::of_order(&all, &orders["out of stock"]);
    stockout.assert_unbroken();
    assert!(!stockout.named("process stock.rejected").is_empty());
    assert!(stockout.services().contains("shop-notifications"));
    let traces: BTreeSet<&str> = [&confirmed, &declined, &stockout]
        .iter()
        .map(|t| t.spans[0].trace_id.as_str())
        .collect();
    assert_eq!(traces.len(), 3, "each order has its own trace");

    // The redelivered message: processed again (a duplicate for the inbox) in its order's
    // trace, under the producer span of the message's headers. (The aborted process's own
    // spans died with it, as a `kill -9` would take them: their children still name them.)
    let again = Trace::of_order(&all, &redelivered);
    let redone: Vec<_> = again
        .named("process order.created")
        .into_iter()
        .filter(|s| s.attr("shop.redelivered") == Some("true"))
        .collect();
    assert_eq!(
        redone.len(),
        1,
        "the redelivery of order.created in its trace"
    );
    assert_eq!(again.parent(redone[0]).name, "send order.created");
    assert!(
        again.services().is_superset(&expected),
        "{:?}",
        again.services()
    );

    // `shop order`: the same path from what the services recorded, with the trace id.
    let broker = cluster.broker().await;
    let id = orders["confirmed"].parse().unwrap();
    let timeline = shop::timeline::read(&cluster.config, id, Some(&*broker))
        .await
        .unwrap();
    assert_eq!(timeline.status, "CONFIRMED");
    assert_eq!(
        timeline.trace_id.as_deref(),
        Some(confirmed.spans[0].trace_id.as_str())
    );
    let statuses: Vec<&str> = timeline.history.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(statuses, ["PENDING", "AWAITING_PAYMENT", "CONFIRMED"]);
    let path: Vec<(&str, &str)> = timeline
        .events
        .iter()
        .map(|e| (e.event_type.as_str(), e.published_by.as_str()))
        .collect();
    for step in [
        ("order.created", "orders"),
        ("stock.reserved", "inventory"),
        ("payment.requested", "orders"),
        ("payment.succeeded", "payments"),
        ("order.confirmed", "orders"),
    ] {
        assert!(path.contains(&step), "{step:?} not in {path:?}");
    }
    for e in &timeline.events {
        assert!(e.sent_at.is_some(), "{} unsent", e.event_type);
        assert!(
            e.waiting_for.is_empty(),
            "{} waits for {:?}",
            e.event_type,
            e.waiting_for
        );
        assert_eq!(e.trace_id, timeline.trace_id, "{}", e.event_type);
    }
    let created = &timeline.events[0];
    assert_eq!(created.event_type, "order.created");
    assert_eq!(created.handled_by[0].0, "inventory");
    assert_eq!(timeline.dead_letters.as_ref().map(Vec::len), Some(0));
    let table = timeline.table();
    assert!(
        table.contains("CONFIRMED") && table.contains("inventory +"),
        "{table}"
    );
    broker.close().await;

    // A JSON log line written inside a traced span names its trace and span.
    let logs = std::fs::read_to_string(cluster.log_dir.join("orders.log")).unwrap();
    let exported: BTreeSet<(&str, &str)> = all
        .iter()
        .map(|s| (s.trace_id.as_str(), s.span_id.as_str()))
        .collect();
    let traced: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l.get("trace_id").is_some())
        .collect();
    assert!(!traced.is_empty(), "no traced log line in:\n{logs}");
    for line in &traced {
        let ids = (
            line["trace_id"].as_str().unwrap(),
            line["span_id"].as_str().unwrap(),
        );
        assert!(exported.contains(&ids), "{line} names a span not exported");
    }
}

/// Under `shop up`, the seven programs of one process still report as their own services.
#[tokio::test(flavor = "multi_thread")]
async fn one_process_reports_each_program_as_its_own_service() {
    let receiver = Receiver::start().await;
    let mut cluster = Cluster::start_up(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
    ])
    .await;
    let (_, _, _, order) = cluster.confirmed_order().await;
    wait_spans(&receiver, &order, CONFIRMED_PATH.len()).await;
    let status = cluster.terminate("up");
    assert!(status.success(), "shop up stopped with {status}");
    let all = receiver.spans();
    let trace = Trace::of_order(&all, &order);
    let expected: BTreeSet<&str> = CONFIRMED_PATH.iter().copied().collect();
    assert_eq!(trace.services(), expected);
    trace.assert_unbroken();
    // Every span was adopted by a program: none fell to the process's catch-all name.
    let unnamed: Vec<&ReceivedSpan> = all
        .iter()
        .filter(|s| !s.service.starts_with("shop-"))
        .collect();
    assert!(unnamed.is_empty(), "spans of no program: {unnamed:#?}");
    // Each hop between programs crosses services as it does between processes.
    for process in trace.spans.iter().filter(|s| s.kind == "consumer") {
        let producer = trace.parent(process);
        assert_eq!(producer.kind, "producer", "{}", process.name);
    }
}

/// A compensation fired by the saga's deadline is not part of the request that placed the
/// order: it is a trace of its own, linked to the order's, with its events below it.
#[tokio::test(flavor = "multi_thread")]
async fn a_compensation_fired_by_a_deadline_is_a_trace_linked_to_the_orders() {
    let receiver = Receiver::start().await;
    let mut cluster = Cluster::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ("SHOP_SAGA_DEADLINE_MS", "1500"),
    ])
    .await;
    let admin = cluster.admin().await;
    let (token, _) = cluster.user().await;
    let product = cluster.product(&admin, 700, 3).await;
    let order = cluster.order(&token, &[(product, 1)], "tok_timeout").await;
    let id = order["id"].as_str().unwrap().to_string();
    let done = cluster.settled(&token, &id, Duration::from_secs(30)).await;
    assert_eq!(done["cancel_reason"], "timeout", "{done}");
    // Settled: the late payment refunded, nothing in flight.
    cluster.audit_clean().await;
    for program in shop::names() {
        assert!(cluster.terminate(program).success(), "{program}");
    }
    let all = receiver.spans();
    let placed = all
        .iter()
        .find(|s| s.attr("shop.order_id") == Some(id.as_str()) && s.kind == "server")
        .expect("the order's request span");
    let fired = all
        .iter()
        .find(|s| s.name == "saga deadline passed" && s.attr("shop.order_id") == Some(id.as_str()))
        .expect("the deadline's span");
    assert_eq!(fired.service, "shop-orders");
    assert!(fired.parent_span_id.is_empty(), "a root");
    assert_ne!(fired.trace_id, placed.trace_id, "a trace of its own");
    assert_eq!(
        fired.links,
        std::slice::from_ref(&placed.trace_id),
        "linked to the order's trace"
    );
    // The compensation's events continue the deadline's trace.
    let compensation = Trace {
        spans: all
            .iter()
            .filter(|s| s.trace_id == fired.trace_id)
            .collect(),
    };
    let release = compensation.named("send stock.release_requested");
    assert_eq!(release.len(), 1, "{:?}", compensation.services());
    assert_eq!(compensation.parent(release[0]).span_id, fired.span_id);
    assert!(
        !compensation
            .named("process stock.release_requested")
            .is_empty()
    );
    assert!(!compensation.named("process order.cancelled").is_empty());
}
