//! The `infergate` command: parses arguments, sets up logging, and hands over to [`infergate::run`].

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use infergate::auth::{KeyStore, Principal, generate_key};
use infergate::config::Config;
use tokio::net::TcpListener;

#[derive(Parser)]
#[command(
    name = "infergate",
    version,
    about = "Serve AI models behind sandboxed WebAssembly plugins"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve plugins over HTTP (the embedded default when no config is given).
    Serve {
        /// A TOML config file.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Address to listen on, overriding the config (`127.0.0.1:0` picks a free port).
        #[arg(long, short)]
        listen: Option<SocketAddr>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("INFERGATE_LOG")
                .unwrap_or_else(|_| "info,wasmtime=warn,cranelift=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config, listen } => serve(config, listen).await,
    }
}

async fn serve(config_path: Option<PathBuf>, listen: Option<SocketAddr>) -> anyhow::Result<()> {
    let mut config = match &config_path {
        Some(path) => Config::from_file(path)?,
        None => Config::embedded(&infergate::home()).context(
            "the embedded default needs the bundled models: run `models/fetch.sh` (or set INFERGATE_HOME)",
        )?,
    };
    if let Some(addr) = listen {
        config.listen = addr;
    }
    let keys = key_store(&config);
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    println!("infergate listening on http://{addr}");
    let admin_key = config.admin.key.clone().or_else(|| {
        std::env::var("INFERGATE_ADMIN_KEY")
            .ok()
            .filter(|k| !k.is_empty())
    });
    if admin_key.is_none() {
        tracing::info!("no admin key (INFERGATE_ADMIN_KEY or [admin] key): the admin API is off");
    }
    infergate::run(listener, config, keys, admin_key, shutdown_signal()).await
}

/// Keys from the config, plus `INFERGATE_API_KEY` for tenant `default` (generated and printed
/// when unset and the config declares no keys).
fn key_store(config: &Config) -> KeyStore {
    let mut keys = KeyStore::default();
    for k in &config.auth.api_keys {
        keys.insert(
            &k.key,
            Principal {
                tenant: k.tenant.clone(),
                key_id: k.id.clone(),
                scopes: k.scopes.clone(),
            },
        );
    }
    let default_principal = Principal {
        tenant: "default".into(),
        key_id: "env".into(),
        scopes: vec![],
    };
    match std::env::var("INFERGATE_API_KEY") {
        Ok(key) if !key.is_empty() => keys.insert(&key, default_principal),
        _ if keys.is_empty() => {
            let key = generate_key();
            println!(
                "INFERGATE_API_KEY is not set; generated an API key for tenant `default`: {key}"
            );
            keys.insert(&key, default_principal);
        }
        _ => {}
    }
    keys
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down: finishing in-flight requests");
}
