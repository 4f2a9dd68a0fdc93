//! Logging, set up once per process, to standard error (standard output stays for what a
//! command prints: tables, JSON). `SHOP_LOG` (or `RUST_LOG`) filters; `SHOP_LOG_FORMAT=json`
//! for machines. The text format is coloured only on a terminal and never when `NO_COLOR`
//! is set. Request and message spans carry request ids and message ids to every line.

use std::io::IsTerminal as _;

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// The filter when neither SHOP_LOG nor RUST_LOG is set. lapin's own lines are off: they
/// repeat, in its internal terms, what the broker supervisor already reports in one line.
pub const DEFAULT_FILTER: &str = "info,sqlx=warn,lapin=off,tower_http=info";

/// `filter`: SHOP_LOG if given; otherwise RUST_LOG, otherwise [`DEFAULT_FILTER`].
pub fn init(filter: Option<&str>, format: &str) {
    let filter = filter
        .map(str::to_string)
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| DEFAULT_FILTER.into());
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let _ = if format == "json" {
        registry
            .with(
                fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_writer(std::io::stderr),
            )
            .try_init()
    } else {
        registry
            .with(
                fmt::layer()
                    .with_target(false)
                    .with_ansi(colour(std::io::stderr().is_terminal()))
                    .with_writer(std::io::stderr),
            )
            .try_init()
    };
}

/// Whether to colour text: on a terminal, unless NO_COLOR is set to anything non-empty.
fn colour(terminal: bool) -> bool {
    terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}
