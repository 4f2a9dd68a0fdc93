//! The span exporter: OTLP over HTTP/protobuf, configured by the standard variables only.
//!
//! - `OTEL_EXPORTER_OTLP_ENDPOINT` (`/v1/traces` appended) or
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as given): where; neither set, nothing is
//!   exported and no span is made. `..._HEADERS`, `..._TIMEOUT` are read by the exporter.
//! - `OTEL_EXPORTER_OTLP_{,TRACES_}PROTOCOL`: `http/protobuf` (the default, and the only one
//!   built in: gRPC would add tonic to every build; a Collector takes HTTP and forwards gRPC).
//! - `OTEL_SERVICE_NAME` (only for `shop run`: `shop up` names its seven services
//!   `shop-<program>`), `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER` and `_ARG` (read by
//!   the SDK; the default samples every trace whose parent is sampled), `OTEL_BSP_*`.
//! - `OTEL_SDK_DISABLED=true`, or `OTEL_TRACES_EXPORTER=none`: off whatever else is set.
//!
//! One batch processor (and thread) per program, each with its program's resource: spans are
//! routed to them by the program that [`super::adopt`]ed their root.

use anyhow::Context as _;
use opentelemetry::{Context, KeyValue, trace::TracerProvider as _};
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    trace::{BatchSpanProcessor, SdkTracer, SdkTracerProvider, Span, SpanData, SpanProcessor},
};
use opentelemetry_semantic_conventions::resource::{SERVICE_INSTANCE_ID, SERVICE_VERSION};

use super::propagation::Program;

/// The standard OpenTelemetry variables Shop's tracing honours (read here or by the SDK).
pub const OTEL_VARIABLES: &[&str] = &[
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_TRACES_EXPORTER",
    "OTEL_SDK_DISABLED",
    "OTEL_BSP_SCHEDULE_DELAY",
    "OTEL_BSP_MAX_QUEUE_SIZE",
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
    "OTEL_BSP_EXPORT_TIMEOUT",
];

/// The attribute that carries a span's program from its start to its end (removed before
/// export: the program is the resource's `service.name`).
const PROGRAM: &str = "shop.program";

/// This process's tracing: the provider (none when nothing is exported).
#[derive(Default)]
pub struct Tracing {
    provider: Option<SdkTracerProvider>,
    endpoint: String,
    services: Vec<String>,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl Tracing {
    pub(super) fn from_env(programs: &[&'static str]) -> anyhow::Result<Tracing> {
        let disabled = var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"));
        let endpoint = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| {
            var("OTEL_EXPORTER_OTLP_ENDPOINT")
                .map(|e| format!("{}/v1/traces", e.trim_end_matches('/')))
        });
        let Some(endpoint) = endpoint.filter(|_| !disabled) else {
            return Ok(Tracing::default());
        };
        let protocol = var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .unwrap_or_else(|| "http/protobuf".into());
        anyhow::ensure!(
            protocol == "http/protobuf",
            "OTEL_EXPORTER_OTLP_PROTOCOL={protocol} is not built in: Shop exports http/protobuf (an OpenTelemetry Collector receives it and forwards over gRPC)"
        );
        let instance = uuid::Uuid::new_v4().to_string();
        let named = match programs {
            [_] => var("OTEL_SERVICE_NAME"),
            _ => None,
        };
        let mut routes = Vec::with_capacity(programs.len() + 1);
        let mut services = Vec::new();
        for program in programs {
            let service = named.clone().unwrap_or_else(|| format!("shop-{program}"));
            routes.push((Some(*program), processor(&service, &instance)?));
            services.push(service);
        }
        if programs.len() > 1 {
            // Spans no program adopted (none are expected): kept, under the process's name.
            routes.push((None, processor("shop", &instance)?));
        }
        let provider = SdkTracerProvider::builder()
            .with_span_processor(PerProgram { routes })
            .build();
        Ok(Tracing {
            provider: Some(provider),
            endpoint,
            services,
        })
    }

    pub(super) fn tracer(&self) -> Option<SdkTracer> {
        self.provider.as_ref().map(|p| p.tracer("shop"))
    }

    pub(super) fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub(super) fn services(&self) -> &[String] {
        &self.services
    }

    /// Exports the spans still buffered and stops the exporters (after the programs stopped).
    pub fn shutdown(&self) {
        if let Some(provider) = &self.provider
            && let Err(e) = provider.shutdown()
        {
            eprintln!("warning: not every span was exported at shutdown: {e}");
        }
    }
}

/// A batch processor exporting to the configured endpoint as `service`.
fn processor(service: &str, instance: &str) -> anyhow::Result<BatchSpanProcessor> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .context("building the OTLP exporter")?;
    let mut processor = BatchSpanProcessor::builder(exporter).build();
    // Reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; the program's name wins over
    // OTEL_SERVICE_NAME only where the caller chose it.
    let mut resource = Resource::builder();
    if var("OTEL_SERVICE_NAME").as_deref() != Some(service) {
        resource = resource.with_service_name(service.to_string());
    }
    let resource = resource
        .with_attributes([
            KeyValue::new(SERVICE_VERSION, env!("CARGO_PKG_VERSION")),
            KeyValue::new(SERVICE_INSTANCE_ID, instance.to_string()),
        ])
        .build();
    processor.set_resource(&resource);
    Ok(processor)
}

/// Routes each finished span to its program's processor.
#[derive(Debug)]
struct PerProgram {
    /// `None`: the processor for spans of no program (present only with several programs).
    routes: Vec<(Option<&'static str>, BatchSpanProcessor)>,
}

impl SpanProcessor for PerProgram {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        if self.routes.len() > 1
            && let Some(Program(p)) = cx.get::<Program>()
        {
            opentelemetry::trace::Span::set_attribute(span, KeyValue::new(PROGRAM, *p));
        }
    }

    fn on_end(&self, mut span: SpanData) {
        let route = match self.routes.len() {
            1 => 0,
            _ => {
                let program = span
                    .attributes
                    .iter()
                    .position(|kv| kv.key.as_str() == PROGRAM)
                    .map(|i| span.attributes.swap_remove(i).value);
                program
                    .and_then(|p| {
                        let p = p.as_str();
                        self.routes.iter().position(|(name, _)| *name == Some(&*p))
                    })
                    .unwrap_or(self.routes.len() - 1)
            }
        };
        self.routes[route].1.on_end(span)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.routes
            .iter()
            .map(|(_, p)| p.force_flush())
            .fold(Ok(()), Result::and)
    }

    fn shutdown_with_timeout(&self, timeout: std::time::Duration) -> OTelSdkResult {
        self.routes
            .iter()
            .map(|(_, p)| p.shutdown_with_timeout(timeout))
            .fold(Ok(()), Result::and)
    }

    /// Each program's processor has its own resource (set when built).
    fn set_resource(&mut self, _resource: &Resource) {}
}
