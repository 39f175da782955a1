//! Structured logs (JSON by default off a terminal). Every reconcile runs in
//! a `reconcile` span carrying the object's name and namespace, so each log
//! line of a reconcile names its object.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

pub fn init() -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new("info,kube=warn"))
        .map_err(|e| anyhow::anyhow!("RUST_LOG is malformed: {e}"))?;
    let json = match std::env::var("LOG_FORMAT").as_deref() {
        Ok("json") => true,
        Ok("text") => false,
        _ => !std::io::stdout().is_terminal(),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let result = if json {
        builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    } else {
        builder.try_init()
    };
    result.map_err(|e| anyhow::anyhow!("installing the log subscriber: {e}"))
}
