//! The command line: `entitled [--config FILE] <command>`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::changes::Change;
use crate::changes::Publisher;
use crate::config::{Config, LogFormat};
use crate::store::{db, environments::sync_environments};
use crate::{app, seed, store};

mod progress;

#[derive(Debug, Parser)]
#[command(
    name = "entitled",
    version,
    about = "Self-hosted entitlements: Stripe in, feature checks out."
)]
pub struct Cli {
    /// A TOML file layered over the built-in defaults.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the HTTP API (runs pending migrations first unless disabled).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Manage API keys.
    #[command(name = "api-key", subcommand)]
    ApiKey(ApiKeyCommand),
    /// Load a catalog (features, plans, entitlements) from a JSON or TOML file, idempotently.
    Seed {
        /// The catalog file, e.g. fixtures/demo-catalog.toml.
        file: PathBuf,
    },
    /// Manage the people who use the admin console at /console.
    #[command(name = "console-user", subcommand)]
    ConsoleUser(ConsoleUserCommand),
    /// One full Stripe reconciliation, with progress, then a summary. Exits non-zero if any
    /// run failed.
    Reconcile {
        /// Only this environment (default: every environment with a stripe_api_key).
        #[arg(long, value_name = "KEY")]
        environment: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ApiKeyCommand {
    /// Create a key; the secret is printed as the last line of stdout.
    Create {
        #[arg(long)]
        environment: String,
        #[arg(long)]
        name: String,
        /// The key may only check flags and read.
        #[arg(long)]
        readonly: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConsoleUserCommand {
    /// Create a console user; a one-time password is printed as the last line of stdout
    /// (the first sign-in with it asks for a new password).
    Create {
        #[arg(long)]
        email: String,
        /// The user may only read (default: admin, who may also write).
        #[arg(long)]
        viewer: bool,
    },
    /// Set a new one-time password (printed as the last line of stdout), unlock the account
    /// and end its sessions.
    ResetPassword {
        #[arg(long)]
        email: String,
    },
    /// Disable the user and end their sessions.
    Disable {
        #[arg(long)]
        email: String,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("entitled: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("entitled: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("entitled: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match config.log.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}

async fn run(command: Command, config: Config) -> anyhow::Result<()> {
    match command {
        Command::Serve => {
            let listener = tokio::net::TcpListener::bind(config.listen_addr())
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.server.listen))?;
            let shutdown = CancellationToken::new();
            let token = shutdown.clone();
            tokio::spawn(async move {
                shutdown_signal().await;
                tracing::info!("shutting down");
                token.cancel();
            });
            app::run(config, listener, shutdown).await
        }
        Command::Migrate => {
            let pool = db::pool(&config)?;
            db::migrate(&pool).await?;
            println!("migrations applied");
            Ok(())
        }
        Command::ApiKey(ApiKeyCommand::Create {
            environment,
            name,
            readonly,
        }) => {
            if config.environment(&environment).is_none() {
                let known: Vec<_> = config.environments.iter().map(|e| e.key.as_str()).collect();
                anyhow::bail!(
                    "--environment {environment:?} is not configured (known: {})",
                    known.join(", ")
                );
            }
            if name.trim().is_empty() {
                anyhow::bail!("--name must not be empty");
            }
            let pool = db::pool(&config)?;
            if config.database.migrate_on_start {
                db::migrate(&pool).await?;
            }
            let envs = sync_environments(&pool, &config.environments).await?;
            let env = envs
                .iter()
                .find(|e| e.key == environment)
                .ok_or_else(|| anyhow::anyhow!("environment {environment:?} missing after sync"))?;
            let mut tx = store::begin(&pool).await?;
            let (id, secret) =
                store::api_keys::create(&mut tx, &env.id, name.trim(), readonly).await?;
            Publisher::detached("cli")
                .commit(tx, &[Change::ApiKeys])
                .await?;
            println!(
                "created API key {id} for environment {environment}{}",
                if readonly { " (readonly)" } else { "" }
            );
            println!("{secret}");
            Ok(())
        }
        Command::Reconcile { environment } => reconcile(config, environment).await,
        Command::ConsoleUser(command) => console_user(config, command).await,
        Command::Seed { file } => {
            let pool = db::pool(&config)?;
            if config.database.migrate_on_start {
                db::migrate(&pool).await?;
            }
            let summary = seed::seed_file(&pool, &file).await?;
            println!("{summary}");
            Ok(())
        }
    }
}

/// `entitled console-user …`.
async fn console_user(config: Config, command: ConsoleUserCommand) -> anyhow::Result<()> {
    use crate::console::session::{hash_password, one_time_password};

    let email = match &command {
        ConsoleUserCommand::Create { email, .. }
        | ConsoleUserCommand::ResetPassword { email }
        | ConsoleUserCommand::Disable { email } => email.trim().to_lowercase(),
    };
    if !email.contains('@') || email.len() < 3 || email.len() > 320 {
        anyhow::bail!("--email {email:?} is not an email address");
    }
    let pool = db::pool(&config)?;
    if config.database.migrate_on_start {
        db::migrate(&pool).await?;
    }
    let mut conn = pool.acquire().await?;
    match command {
        ConsoleUserCommand::Create { viewer, .. } => {
            let password = one_time_password();
            let role = if viewer { "viewer" } else { "admin" };
            let id =
                store::console::create_user(&mut conn, &email, &hash_password(&password)?, role)
                    .await?;
            println!("created console user {id} <{email}> ({role}); sign in at /console/login");
            println!("one-time password (a new one is asked for at the first sign-in):");
            println!("{password}");
        }
        ConsoleUserCommand::ResetPassword { .. } => {
            let password = one_time_password();
            store::console::reset_password(&mut conn, &email, &hash_password(&password)?)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no console user has email {email:?}"))?;
            println!("password of {email} reset; its sessions are ended. One-time password:");
            println!("{password}");
        }
        ConsoleUserCommand::Disable { .. } => {
            store::console::disable_user(&mut conn, &email)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no console user has email {email:?}"))?;
            println!("console user {email} disabled; its sessions are ended");
        }
    }
    Ok(())
}

/// `entitled reconcile`: runs in the foreground; Ctrl-C stops at the next safe point.
async fn reconcile(config: Config, environment: Option<String>) -> anyhow::Result<()> {
    use crate::stripe::reconcile::{self as rec, Trigger};
    use crate::stripe::{Stripe, SyncContext};

    if let Some(key) = &environment {
        let env = config.environment(key).ok_or_else(|| {
            let known: Vec<_> = config.environments.iter().map(|e| e.key.as_str()).collect();
            anyhow::anyhow!(
                "--environment {key:?} is not configured (known: {})",
                known.join(", ")
            )
        })?;
        if env.stripe_api_key.is_empty() {
            anyhow::bail!(
                "environment {key:?} has no stripe_api_key: Stripe sync is disabled for it"
            );
        }
    } else if config
        .environments
        .iter()
        .all(|e| e.stripe_api_key.is_empty())
    {
        anyhow::bail!(
            "no environment has a stripe_api_key; set environments[].stripe_api_key \
             (or ENTITLED_ENVIRONMENTS__0__STRIPE_API_KEY)"
        );
    }
    let pool = db::pool(&config)?;
    if config.database.migrate_on_start {
        db::migrate(&pool).await?;
    }
    let envs = sync_environments(&pool, &config.environments).await?;
    let pairs: Vec<(String, crate::config::EnvironmentConfig)> = envs
        .iter()
        .zip(config.environments.iter())
        .map(|(e, c)| (e.id.clone(), c.clone()))
        .collect();
    let sync = SyncContext::new(
        pool.clone(),
        std::sync::Arc::new(Stripe::default()),
        pairs.iter().cloned(),
        Publisher::detached("cli"),
    );
    let cancel = CancellationToken::new();
    let token = cancel.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        eprintln!("stopping at the next safe point…");
        token.cancel();
    });
    let mut all_ok = true;
    for (env_id, env_config) in &pairs {
        let wanted = match &environment {
            Some(k) => &env_config.key == k,
            None => !env_config.stripe_api_key.is_empty(),
        };
        if !wanted {
            continue;
        }
        let started = rec::start(&sync, env_id, Trigger::Cli).await?;
        eprintln!(
            "reconciling environment {} with {} (at most {} requests/s), run {}",
            env_config.key,
            env_config.stripe_api_base,
            env_config.stripe_max_requests_per_sec,
            started.record.id
        );
        let progress = progress::Terminal::new();
        let began = std::time::Instant::now();
        let run = started.run(&sync, &progress, &cancel).await?;
        progress.finish();
        print!("{}", progress::summary(&run, began.elapsed()));
        all_ok &= run.status == "succeeded";
        if cancel.is_cancelled() {
            break;
        }
    }
    pool.close().await;
    if !all_ok {
        anyhow::bail!("reconcile did not succeed (see the errors above)");
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
