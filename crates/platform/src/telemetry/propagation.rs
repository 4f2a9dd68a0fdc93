//! Carrying the trace context across the hops of a saga: HTTP headers, the outbox row, AMQP
//! message headers (W3C `traceparent`, through the global propagator), and putting a
//! program's root spans under the context they continue.
//!
//! Everything here is a no-op costing a load of one flag when the process exports nothing.

use lapin::types::{AMQPValue, FieldTable};
use opentelemetry::{
    Context,
    propagation::{Extractor, Injector},
    trace::{Status, TraceContextExt as _},
};
use opentelemetry_semantic_conventions::attribute::{
    DB_OPERATION_NAME, DB_SYSTEM_NAME, ERROR_TYPE, HTTP_REQUEST_METHOD, HTTP_RESPONSE_STATUS_CODE,
    HTTP_ROUTE, SERVER_ADDRESS,
};
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::exporting;

/// The program a span belongs to, carried in the OpenTelemetry context from a program's
/// root span to every span below it (see [`adopt`]).
#[derive(Clone, Copy, Debug)]
pub(super) struct Program(pub &'static str);

/// Makes `span` a root span of `program`, continuing `parent` (a context extracted from a
/// request or a message, or `Context::new()` for a new trace). Call it right after creating
/// the span, before it is first entered.
pub fn adopt(span: &tracing::Span, program: &'static str, parent: Context) {
    if exporting() {
        let _ = span.set_parent(parent.with_value(Program(program)));
    }
}

/// A span for one database transaction (a client span, `db.system.name=postgresql`, named
/// by what the transaction does).
fn db_span(operation: String) -> tracing::Span {
    let span = tracing::info_span!("db", otel.name = %operation, otel.kind = "client");
    span.set_attribute(DB_SYSTEM_NAME, "postgresql");
    span.set_attribute(DB_OPERATION_NAME, operation);
    span
}

/// A client span for an HTTP request to another program (`service`), inside the current span.
fn client_span(method: &str, service: &str) -> tracing::Span {
    let span = tracing::info_span!("call", otel.name = %method, otel.kind = "client", service);
    span.set_attribute(HTTP_REQUEST_METHOD, method.to_string());
    span.set_attribute(SERVER_ADDRESS, service.to_string());
    span
}

/// Sends a request to another program (`service`) in a client span of the current trace,
/// carrying its `traceparent`; just sends it when not exporting.
pub async fn send(
    request: reqwest::RequestBuilder,
    method: &str,
    service: &str,
) -> reqwest::Result<reqwest::Response> {
    if !exporting() {
        return request.send().await;
    }
    let call = client_span(method, service);
    let sent = request
        .headers(http_headers(&call))
        .send()
        .instrument(call.clone())
        .await;
    match &sent {
        Ok(r) => record_status(&call, r.status().as_u16()),
        Err(e) => set_error(&call, "connect", e.to_string()),
    }
    sent
}

/// The answer's status on a client span (a 5xx marks it failed).
fn record_status(span: &tracing::Span, status: u16) {
    if exporting() {
        span.set_attribute(HTTP_RESPONSE_STATUS_CODE, i64::from(status));
        if status >= 500 {
            set_error(span, "http.5xx", status.to_string());
        }
    }
}

/// Runs a database transaction (`work`) in a [`db_span`] named `operation()`, failed with the
/// error's text if it fails; just runs it when not exporting.
pub async fn in_db_span<T, E: std::fmt::Display>(
    operation: impl FnOnce() -> String,
    work: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    if !exporting() {
        return work.await;
    }
    let span = db_span(operation());
    let result = work.instrument(span.clone()).await;
    if let Err(e) = &result {
        set_error(&span, "db", e.to_string());
    }
    result
}

/// Sets an attribute of `span` (such as `shop.order_id`, which a search by order finds),
/// when exporting.
pub fn annotate(span: &tracing::Span, key: &'static str, value: impl std::fmt::Display) {
    if exporting() {
        span.set_attribute(key, value.to_string());
    }
}

/// Names the current (server) span's route, for a handler behind a catch-all route: the
/// span becomes `METHOD template`, with `http.route`.
pub fn route(method: &str, template: &str) {
    if exporting() {
        let span = tracing::Span::current();
        // Started already (when first entered): renamed through its OpenTelemetry span.
        span.context()
            .span()
            .update_name(format!("{method} {template}"));
        span.set_attribute(HTTP_ROUTE, template.to_string());
    }
}

/// Makes `span` the root of a new trace of `program`, linked to the traces stored
/// `traceparent`s name (work that follows from earlier requests without being part of them:
/// a deadline's compensation, a relay batch carrying many orders' events).
pub fn adopt_linked<'a>(
    span: &tracing::Span,
    program: &'static str,
    traceparents: impl IntoIterator<Item = &'a str>,
) {
    if exporting() {
        adopt(span, program, Context::new());
        for tp in traceparents {
            let linked = context_of_traceparent(tp);
            let sc = linked.span().span_context().clone();
            if sc.is_valid() {
                span.add_link(sc);
            }
        }
    }
}

/// Marks `span` failed with the error's type (a short, low-cardinality name) and message.
pub fn set_error(span: &tracing::Span, error_type: &'static str, message: String) {
    if exporting() {
        span.set_attribute(ERROR_TYPE, error_type);
        span.set_status(Status::error(message));
    }
}

/// The trace id of `span`, if it is traced (for logs and `shop order`).
pub fn trace_id_of(span: &tracing::Span) -> Option<String> {
    if !exporting() {
        return None;
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

/// The `traceparent` of the current span: what the outbox keeps with each row, so the relay
/// publishes each event in the context of the transaction that wrote it.
pub fn current_traceparent() -> Option<String> {
    if !exporting() {
        return None;
    }
    let mut carrier = Traceparent(None);
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&tracing::Span::current().context(), &mut carrier)
    });
    carrier.0
}

/// The context a stored `traceparent` names (an empty context if it is not one).
pub fn context_of_traceparent(traceparent: &str) -> Context {
    let carrier = Traceparent(Some(traceparent.to_string()));
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&carrier))
}

/// Holds one `traceparent` value (tracestate is not kept: Shop's spans write none).
struct Traceparent(Option<String>);

impl Injector for Traceparent {
    fn set(&mut self, key: &str, value: String) {
        if key == "traceparent" {
            self.0 = Some(value);
        }
    }
}

impl Extractor for Traceparent {
    fn get(&self, key: &str) -> Option<&str> {
        (key == "traceparent")
            .then_some(self.0.as_deref())
            .flatten()
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent"]
    }
}

/// The context a message's headers carry (empty when none, or when not exporting).
pub fn extract_amqp(headers: Option<&FieldTable>) -> Context {
    match headers {
        Some(headers) if exporting() => {
            opentelemetry::global::get_text_map_propagator(|p| p.extract(&AmqpHeaders(headers)))
        }
        _ => Context::new(),
    }
}

/// Writes `cx` into a message's headers.
pub fn inject_amqp(cx: &Context, headers: &mut FieldTable) {
    if exporting() {
        opentelemetry::global::get_text_map_propagator(|p| {
            p.inject_context(cx, &mut AmqpHeadersMut(headers))
        });
    }
}

struct AmqpHeaders<'a>(&'a FieldTable);

impl Extractor for AmqpHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match self.0.inner().get(key)? {
            AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
            AMQPValue::ShortString(s) => Some(s.as_str()),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        self.0.inner().keys().map(|k| k.as_str()).collect()
    }
}

struct AmqpHeadersMut<'a>(&'a mut FieldTable);

impl Injector for AmqpHeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0
            .insert(key.into(), AMQPValue::LongString(value.into()));
    }
}

/// The context a request's headers carry (empty when none, or when not exporting).
pub fn extract_http(headers: &axum::http::HeaderMap) -> Context {
    if !exporting() {
        return Context::new();
    }
    opentelemetry::global::get_text_map_propagator(|p| {
        p.extract(&opentelemetry_http::HeaderExtractor(headers))
    })
}

/// The headers that continue `span`'s trace in a request it makes (none when not exporting).
pub fn http_headers(span: &tracing::Span) -> axum::http::HeaderMap {
    let mut headers = axum::http::HeaderMap::new();
    if exporting() {
        let cx = span.context();
        opentelemetry::global::get_text_map_propagator(|p| {
            p.inject_context(&cx, &mut opentelemetry_http::HeaderInjector(&mut headers))
        });
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

    fn remote() -> Context {
        Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        ))
    }

    fn propagator() {
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
    }

    #[test]
    fn amqp_headers_carry_the_context_both_ways() {
        propagator();
        let mut headers = FieldTable::default();
        headers.insert("x-shop-attempts".into(), AMQPValue::LongLongInt(2));
        opentelemetry::global::get_text_map_propagator(|p| {
            p.inject_context(&remote(), &mut AmqpHeadersMut(&mut headers))
        });
        match headers.inner().get("traceparent") {
            Some(AMQPValue::LongString(s)) => assert_eq!(
                std::str::from_utf8(s.as_bytes()).unwrap(),
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            ),
            other => panic!("traceparent header: {other:?}"),
        }
        let back =
            opentelemetry::global::get_text_map_propagator(|p| p.extract(&AmqpHeaders(&headers)));
        let sc = back.span().span_context().clone();
        assert!(sc.is_remote());
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert!(sc.is_sampled());
        // The other headers are untouched, and a short string is read as well.
        assert!(headers.inner().contains_key("x-shop-attempts"));
        let mut short = FieldTable::default();
        short.insert(
            "traceparent".into(),
            AMQPValue::ShortString(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00".into(),
            ),
        );
        let cx =
            opentelemetry::global::get_text_map_propagator(|p| p.extract(&AmqpHeaders(&short)));
        assert!(cx.span().span_context().is_valid());
        assert!(!cx.span().span_context().is_sampled());
    }

    #[test]
    fn a_message_without_or_with_a_broken_traceparent_starts_nothing() {
        propagator();
        for value in [None, Some("garbage"), Some("00-0000-00f067aa0ba902b7-01")] {
            let mut headers = FieldTable::default();
            if let Some(v) = value {
                headers.insert("traceparent".into(), AMQPValue::LongString(v.into()));
            }
            let cx = opentelemetry::global::get_text_map_propagator(|p| {
                p.extract(&AmqpHeaders(&headers))
            });
            assert!(!cx.span().span_context().is_valid(), "{value:?}");
        }
    }

    #[test]
    fn a_stored_traceparent_round_trips() {
        propagator();
        let mut carrier = Traceparent(None);
        opentelemetry::global::get_text_map_propagator(|p| {
            p.inject_context(&remote(), &mut carrier)
        });
        let stored = carrier.0.expect("a traceparent");
        let cx = opentelemetry::global::get_text_map_propagator(|p| {
            p.extract(&Traceparent(Some(stored.clone())))
        });
        assert_eq!(
            cx.span().span_context().trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        // Not a context: nothing.
        let cx = opentelemetry::global::get_text_map_propagator(|p| {
            p.extract(&Traceparent(Some("not one".into())))
        });
        assert!(!cx.span().span_context().is_valid());
    }
}
