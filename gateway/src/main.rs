//! `herald-gateway`: thin entry point; see the library for everything else.

use herald_gateway::GatewayConfig;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = GatewayConfig::load().unwrap_or_else(|e| e.exit());
    herald_runtime::telemetry::init(config.log_format, "info");
    if let Err(e) = config.validate() {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
    let shutdown = herald_runtime::shutdown::on_signal();
    let handle = herald_gateway::start(config, shutdown).await?;
    handle.stopped().await;
    Ok(())
}
