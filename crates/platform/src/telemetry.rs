//! Logging, set up once per process. `SHOP_LOG` (or `RUST_LOG`) filters; `SHOP_LOG_FORMAT=json`
//! for machines. Request and message spans carry request ids and message ids to every line.

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

pub fn init(format: &str) {
    let filter = std::env::var("SHOP_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info,sqlx=warn,lapin=warn,tower_http=info".into());
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let _ = if format == "json" {
        registry
            .with(fmt::layer().json().with_current_span(true))
            .try_init()
    } else {
        registry.with(fmt::layer().with_target(false)).try_init()
    };
}
