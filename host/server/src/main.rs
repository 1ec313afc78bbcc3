//! The `infergate` command: parses arguments, sets up logging, and hands over to [`infergate::run`].

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use infergate::auth::generate_key;
use infergate::auth::operator::check_secret;
use infergate::config::Config;
use tokio::net::TcpListener;

/// Every request allocates and frees many small buffers (HTTP, JSON, wasm instance state) on
/// two or more threads; mimalloc does that faster than glibc's malloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Create a plugin project (Rust, Python or JavaScript) that builds, with a test.
    New {
        /// The plugin's name (its routes are served under `/NAME`).
        name: String,
        #[arg(long, value_enum, default_value = "rust")]
        lang: infergate::dev::new::Lang,
        /// Where to create it (default: `./NAME`).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Load a plugin in the real sandbox and report its routes, models, size and timings.
    Check {
        /// The `.wasm` component.
        wasm: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Upload a plugin to a running host (admin API, or a tenant's own with `--tenant`).
    Deploy {
        /// The `.wasm` component.
        wasm: PathBuf,
        /// The host's base URL.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        to: String,
        /// The name to deploy it as (default: the file's stem).
        #[arg(long)]
        name: Option<String>,
        /// Deploy as a tenant through `/tenant/plugins` (key: INFERGATE_API_KEY).
        #[arg(long)]
        tenant: bool,
        /// The admin key (default INFERGATE_ADMIN_KEY), or with `--tenant` the tenant's API key
        /// (default INFERGATE_API_KEY).
        #[arg(long)]
        key: Option<String>,
        /// Comma-separated models to grant.
        #[arg(long, value_delimiter = ',')]
        models: Vec<String>,
        /// Requests one warm instance may serve (one tenant's, in turn).
        #[arg(long)]
        reuse: Option<u32>,
        /// Path prefix to mount it under (admin deploys only).
        #[arg(long)]
        mount: Option<String>,
    },
    /// Manage API keys in the auth database of a local install.
    Keys {
        /// The config file whose `[auth] database` to use (default: the embedded default's).
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Manage tenants in the auth database of a local install.
    Tenants {
        /// The config file whose `[auth] database` to use (default: the embedded default's).
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: TenantsCommand,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key and print it (the only time the secret is shown).
    Create {
        #[arg(long)]
        tenant: String,
        /// Comma-separated scopes (default `*`).
        #[arg(long, value_delimiter = ',')]
        scopes: Option<Vec<String>>,
        /// Comma-separated limit policies, e.g. `60/minute,1000/day`.
        #[arg(long, value_delimiter = ',')]
        limits: Vec<String>,
        /// Lifetime: `30d`, `12h`, `90m` or seconds.
        #[arg(long)]
        expires: Option<String>,
        /// A note on what the key is for.
        #[arg(long)]
        name: Option<String>,
    },
    /// List keys (never their secrets).
    List {
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Revoke a key by id.
    Revoke { id: String },
}

#[derive(Subcommand)]
enum TenantsCommand {
    Create {
        id: String,
        /// Weight in the models' fair queues (default: the config's, else 1).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        priority: Option<u32>,
        /// Comma-separated limit policies, e.g. `60/minute,1000/day`.
        #[arg(long, value_delimiter = ',')]
        limits: Vec<String>,
    },
    List,
    /// Delete a tenant and revoke its keys.
    Delete {
        id: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    infergate::telemetry::logs::init(infergate::telemetry::logs::Format::from_env()?)?;
    let cli = Cli::parse();
    let done = match cli.command {
        Command::Serve { config, listen } => serve(config, listen).await,
        Command::New { name, lang, dir } => {
            let dir = infergate::dev::new::scaffold(&name, lang, dir, &infergate::home())?;
            print!("{}", infergate::dev::new::next_steps(&name, lang, &dir));
            Ok(())
        }
        Command::Check { wasm, json } => {
            let inspection = infergate::dev::check::check(&wasm).await?;
            if json {
                let report = infergate::dev::check::to_json(&wasm, &inspection);
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", infergate::dev::check::render(&wasm, &inspection));
            }
            Ok(())
        }
        Command::Deploy {
            wasm,
            to,
            name,
            tenant,
            key,
            models,
            reuse,
            mount,
        } => {
            let var = if tenant {
                "INFERGATE_API_KEY"
            } else {
                "INFERGATE_ADMIN_KEY"
            };
            let key = key
                .or_else(|| env_secret(var))
                .with_context(|| format!("give --key or set {var}"))?;
            let answer = infergate::dev::deploy::deploy(&infergate::dev::deploy::Deploy {
                wasm,
                to,
                name,
                key,
                tenant,
                models,
                reuse,
                mount,
            })
            .await?;
            println!("{}", serde_json::to_string_pretty(&answer)?);
            Ok(())
        }
        Command::Keys { config, command } => keys(config, command).await,
        Command::Tenants { config, command } => tenants(config, command).await,
    };
    infergate::telemetry::trace::shutdown();
    done
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
    config.admin.key = config
        .admin
        .key
        .take()
        .or_else(|| env_secret("INFERGATE_ADMIN_KEY"));
    config.admin.metrics_key =
        (config.admin.metrics_key.take()).or_else(|| env_secret("INFERGATE_METRICS_KEY"));
    config.auth.encryption_key =
        (config.auth.encryption_key.take()).or_else(|| env_secret("INFERGATE_ENCRYPTION_KEY"));
    let api_key = env_key(&config);
    for (name, secret) in [
        ("INFERGATE_API_KEY", &api_key),
        (
            "the admin key (INFERGATE_ADMIN_KEY or [admin] key)",
            &config.admin.key,
        ),
        (
            "the metrics key (INFERGATE_METRICS_KEY or [admin] metrics_key)",
            &config.admin.metrics_key,
        ),
    ] {
        if let Some(secret) = secret {
            check_secret(name, secret).map_err(anyhow::Error::msg)?;
        }
    }
    let auth = infergate::auth::Auth::new(&config.auth, api_key.as_deref()).await?;
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    println!("infergate listening on http://{addr}");
    if config.admin.key.is_none() {
        tracing::info!("no admin key (INFERGATE_ADMIN_KEY or [admin] key): the admin API is off");
    }
    infergate::run(listener, config, auth, shutdown_signal()?).await
}

/// A secret from the environment; empty is unset.
fn env_secret(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|k| !k.is_empty())
}

/// The key of tenant `default`: `INFERGATE_API_KEY`, else (when the config declares no keys)
/// generated and printed.
fn env_key(config: &Config) -> Option<String> {
    match env_secret("INFERGATE_API_KEY") {
        Some(key) => Some(key),
        _ if config.auth.api_keys.is_empty() => {
            let key = generate_key();
            println!(
                "INFERGATE_API_KEY is not set; generated an API key for tenant `default`: {key}"
            );
            Some(key)
        }
        _ => None,
    }
}

/// The auth database of a config file, or of the embedded default.
async fn open_db(config: Option<PathBuf>) -> anyhow::Result<infergate::auth::keys::KeyStore> {
    let config = match &config {
        Some(path) => Config::from_file(path)?,
        None => Config::embedded(&infergate::home())?,
    };
    let db = infergate::auth::db::Db::open(&infergate::auth::database_url(&config.auth)).await?;
    Ok(infergate::auth::keys::KeyStore::new(db))
}

/// `30d`, `12h`, `90m`, `45s` or plain seconds.
fn parse_duration_s(text: &str) -> anyhow::Result<i64> {
    let (n, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: i64 = n
        .parse()
        .with_context(|| format!("`{text}` is not a duration"))?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => anyhow::bail!("`{text}`: use s, m, h or d"),
    };
    Ok(n * unit)
}

async fn keys(config: Option<PathBuf>, command: KeysCommand) -> anyhow::Result<()> {
    let store = open_db(config).await?;
    match command {
        KeysCommand::Create {
            tenant,
            scopes,
            limits,
            expires,
            name,
        } => {
            let expires_at = match expires {
                Some(e) => Some(infergate_now() + parse_duration_s(&e)?),
                None => None,
            };
            anyhow::ensure!(
                infergate::auth::admin::valid_tenant(&tenant),
                "tenant ids are {}",
                infergate::registry::names::SEGMENT_RULE
            );
            if store.tenant(&tenant).await?.is_none() {
                store.create_tenant(&tenant, None, &[]).await?;
                eprintln!("created tenant `{tenant}`");
            }
            let new = infergate::auth::admin::new_key(
                tenant,
                scopes.unwrap_or_else(infergate::auth::all_scopes),
                limits,
                name,
                expires_at,
            )
            .map_err(anyhow::Error::msg)?;
            let (record, key) = store.create_key(new).await?;
            eprintln!(
                "key `{}` for tenant `{}` (scopes: {}); the secret is shown only now:",
                record.id,
                record.tenant,
                record.scopes.join(" ")
            );
            println!("{key}");
        }
        KeysCommand::List { tenant } => {
            for k in store.keys(tenant.as_deref()).await? {
                println!("{}", serde_json::to_string(&k)?);
            }
        }
        KeysCommand::Revoke { id } => {
            store.revoke(&id).await?;
            eprintln!("revoked key `{id}`");
        }
    }
    Ok(())
}

async fn tenants(config: Option<PathBuf>, command: TenantsCommand) -> anyhow::Result<()> {
    let store = open_db(config).await?;
    match command {
        TenantsCommand::Create {
            id,
            priority,
            limits,
        } => {
            anyhow::ensure!(
                infergate::auth::admin::valid_tenant(&id),
                "tenant ids are {}",
                infergate::registry::names::SEGMENT_RULE
            );
            infergate::auth::admin::validate_limits(&limits).map_err(anyhow::Error::msg)?;
            let t = store.create_tenant(&id, priority, &limits).await?;
            println!("{}", serde_json::to_string(&t)?);
        }
        TenantsCommand::List => {
            for t in store.tenants().await? {
                println!("{}", serde_json::to_string(&t)?);
            }
        }
        TenantsCommand::Delete { id } => {
            store.delete_tenant(&id).await?;
            eprintln!("deleted tenant `{id}` and revoked its keys");
        }
    }
    Ok(())
}

fn infergate_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Resolves at the first SIGTERM or Ctrl-C (the host then shuts down gracefully: see
/// [`infergate::run`]); a second one ends the process at once.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = interrupt.recv() => {},
        }
        tracing::info!("shutting down (a second signal ends the process at once)");
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {},
                _ = interrupt.recv() => {},
            }
            tracing::warn!("second signal: exiting without finishing the requests in flight");
            std::process::exit(130);
        });
    })
}
