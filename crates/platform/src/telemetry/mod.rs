//! Logs and traces, set up once per process ([`init`]).
//!
//! **Logs** go to standard error (standard output stays for what a command prints: tables,
//! JSON). `SHOP_LOG` (or `RUST_LOG`) filters; `SHOP_LOG_FORMAT=json` for machines, where each
//! line written inside a traced span carries its `trace_id` and `span_id`. The text format is
//! coloured only on a terminal and never when `NO_COLOR` is set. Request and message spans
//! carry request ids and message ids to every line.
//!
//! **Traces** are OpenTelemetry spans exported over OTLP ([`export`]), configured only by the
//! standard `OTEL_*` variables; with no endpoint set there is no exporter and no tracing cost.
//! Each program reports its own `service.name` (`shop-orders`, ...), also when `shop up` runs
//! all seven in one process: a program's root spans are [`adopt`]ed by it, and every span
//! below inherits it. The trace context crosses HTTP in `traceparent` headers, the outbox in
//! a column of each row, and AMQP in message headers ([`propagation`]), so one order is one
//! trace across every program. See docs/architecture.md, "Observability".

mod export;
mod json;
pub mod propagation;

use std::{
    io::IsTerminal as _,
    sync::atomic::{AtomicBool, Ordering},
};

pub use export::{OTEL_VARIABLES, Tracing};
pub use propagation::{
    adopt, adopt_linked, annotate, context_of_traceparent, current_traceparent, extract_amqp,
    extract_http, http_headers, in_db_span, inject_amqp, route, send, set_error, trace_id_of,
};
use tracing::Level;
use tracing_subscriber::{EnvFilter, Layer as _, filter, fmt, prelude::*};

/// The filter when neither SHOP_LOG nor RUST_LOG is set. lapin's own lines are off: they
/// repeat, in its internal terms, what the broker supervisor already reports in one line.
pub const DEFAULT_FILTER: &str = "info,sqlx=warn,lapin=off,tower_http=info";

/// Whether spans are exported (an OTLP endpoint is configured): the code that only feeds
/// traces (attributes, links, parsing stored contexts) skips its work when not.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether this process exports spans.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Sets up logging, and tracing for `programs` (empty for a command that is not a program:
/// it exports nothing). `filter`: SHOP_LOG if given; otherwise RUST_LOG, otherwise
/// [`DEFAULT_FILTER`]. Keep the returned [`Tracing`] and call [`Tracing::shutdown`] after
/// the programs stopped: spans still buffered are exported then.
pub fn init(filter: Option<&str>, format: &str, programs: &[&'static str]) -> Tracing {
    // The global propagator is a no-op until set: with it, extraction and injection work
    // whatever else is configured.
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let (tracing, problem) = match programs.is_empty() {
        true => (Tracing::default(), None),
        false => match export::Tracing::from_env(programs) {
            Ok(t) => (t, None),
            Err(e) => (Tracing::default(), Some(e)),
        },
    };
    let filter = filter
        .map(str::to_string)
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| DEFAULT_FILTER.into());
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = if format == "json" {
        fmt::layer()
            .fmt_fields(fmt::format::JsonFields::new())
            .event_format(json::Json)
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        fmt::layer()
            .with_target(false)
            .fmt_fields(json::TextFields)
            .with_ansi(colour(std::io::stderr().is_terminal()))
            .with_writer(std::io::stderr)
            .boxed()
    };
    let traces = tracing.tracer().map(|tracer| {
        EXPORTING.store(true, Ordering::Relaxed);
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_level(false)
            .with_tracked_inactivity(false)
            // Not made current at every poll of an instrumented future (measured: a tenth of
            // the saga throughput with it); the few readers ask the span for its context.
            .with_context_activation(false)
            // The spans that name their kind (`otel.kind`: requests, messages, transactions);
            // the others only give log lines their context (a program's whole life, say).
            // Warnings and errors become span events; the info lines of a span stay in the
            // logs (they would double every span's size).
            .with_filter(filter::filter_fn(|meta| {
                if meta.is_span() {
                    *meta.level() <= Level::INFO && meta.fields().field("otel.kind").is_some()
                } else {
                    *meta.level() <= Level::WARN
                }
            }))
    });
    let _ = tracing_subscriber::registry()
        .with(logs.with_filter(filter))
        .with(traces)
        .try_init();
    match problem {
        Some(e) => tracing::warn!(error = %format!("{e:#}"), "traces are not exported"),
        None if exporting() => tracing::info!(
            endpoint = %tracing.endpoint(),
            services = %tracing.services().join(","),
            "exporting traces over OTLP"
        ),
        None => {}
    }
    tracing
}

/// Whether to colour text: on a terminal, unless NO_COLOR is set to anything non-empty.
fn colour(terminal: bool) -> bool {
    terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}
