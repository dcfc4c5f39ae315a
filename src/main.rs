//! The `shoal` command: `shoal serve --config FILE`, `shoal --version`.

use clap::{Parser, Subcommand};
use shoal::config::Config;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "shoal",
    version,
    about = "A read-through chunk cache that speaks S3"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve S3 requests.
    Serve {
        /// TOML config file; `SHOAL_…` environment variables override it.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Command::Serve { config } = cli.command;
    let cfg = match Config::load(config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("shoal: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("shoal: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let instance = cfg
            .cluster
            .advertised()
            .unwrap_or_else(|| cfg.server.listen.to_string());
        let telemetry = match shoal::telemetry::init(&cfg.telemetry, &instance) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("shoal: {e}");
                return ExitCode::FAILURE;
            }
        };
        let origin = match shoal::app::build_origin(&cfg).await {
            Ok(o) => o,
            Err(e) => {
                eprintln!("shoal: {e}");
                return ExitCode::FAILURE;
            }
        };
        let running = match shoal::app::start(&cfg, origin).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("shoal: {e}");
                return ExitCode::FAILURE;
            }
        };
        let stop = running.stop_token();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("signal received; shutting down");
            stop.cancel();
        });
        let running = std::sync::Arc::new(running);
        reload_on_sighup(running.clone());
        running.stopped().await;
        let Ok(running) = std::sync::Arc::try_unwrap(running) else {
            tracing::warn!("shutdown while a reload was running; exiting");
            return ExitCode::SUCCESS;
        };
        running.shutdown().await;
        tracing::info!("stopped");
        telemetry.shutdown(std::time::Duration::from_secs(5)).await;
        ExitCode::SUCCESS
    })
}

/// SIGHUP reads the TLS certificate and key again (a renewed certificate needs no restart).
fn reload_on_sighup(running: std::sync::Arc<shoal::app::Running>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        let weak = std::sync::Arc::downgrade(&running);
        drop(running);
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                let Some(r) = weak.upgrade() else { break };
                match r.reload_tls() {
                    Ok(true) => tracing::info!("SIGHUP: TLS certificate reloaded"),
                    Ok(false) => tracing::info!("SIGHUP: nothing to reload (TLS is off)"),
                    Err(e) => {
                        tracing::error!(error = %e, "SIGHUP: TLS reload failed; keeping the old certificate")
                    }
                }
            }
        });
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
