//! The `portcullis` binary: command-line parsing and process wiring only. The
//! gateway itself lives in the library crates.

mod accounts;
mod audit;
mod demo;
mod policy;
mod proxy;
mod report;
mod serve;
mod telemetry;

use clap::{Parser, Subcommand};

// Every proxied call allocates and frees across two threads (the worker and
// the audit committer); glibc's allocator spent a fifth of the call there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "A governed gateway for the Model Context Protocol"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway from a configuration file.
    Serve {
        #[arg(long, short, default_value = "portcullis.yaml")]
        config: PathBuf,
        /// Override the configured listen address.
        #[arg(long)]
        listen: Option<String>,
    },
    /// Check a configuration file and exit.
    Check {
        #[arg(long, short, default_value = "portcullis.yaml")]
        config: PathBuf,
    },
    /// Serve one upstream, unprefixed, at http://ADDR/mcp without a config file.
    Proxy(proxy::ProxyArgs),
    /// Start a demo gateway with sample upstreams at http://127.0.0.1:8080/mcp/demo.
    Demo {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        #[arg(long, default_value = ".portcullis/demo")]
        data_dir: PathBuf,
    },
    /// Create or reset a local administrator.
    Admin(accounts::AdminArgs),
    /// List, disable and enable users.
    User(accounts::UserArgs),
    /// Create service accounts.
    ServiceAccount(accounts::ServiceAccountArgs),
    /// Issue, list and revoke API tokens.
    Token(accounts::TokenArgs),
    /// Rotate the token signing key.
    Keys(accounts::KeysArgs),
    /// Check, test, list and manage Cedar policies.
    Policy(policy::PolicyArgs),
    /// Verify, search and prune the audit log.
    Audit(audit::AuditArgs),
    /// Control-plane report: ownership and risk tiers, explicit decisions,
    /// denial and error rates, top tools per team.
    Report(report::ReportArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PORTCULLIS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    // The main runtime is single-threaded: `serve` adds one server thread per
    // further core (see serve::worker_count).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;

    runtime.block_on(async move {
        match cli.command {
            Command::Serve { config, listen } => {
                let mut cfg = portcullis_config::Config::load(&config)?;
                if let Some(l) = listen {
                    cfg.listen = l;
                }
                serve::run(cfg, &config.display().to_string(), None).await
            }
            Command::Check { config } => {
                let cfg = portcullis_config::Config::load(&config)?;
                portcullis_audit::sinks::validate_sinks(&cfg.audit.sinks)
                    .map_err(|e| anyhow::anyhow!("{}: audit.sinks: {e}", config.display()))?;
                println!(
                    "{}: ok ({} upstreams, {} virtual servers)",
                    config.display(),
                    cfg.upstreams.len(),
                    cfg.virtual_servers.len()
                );
                Ok(())
            }
            Command::Proxy(args) => proxy::run(args).await,
            Command::Demo { listen, data_dir } => demo::run(listen, data_dir).await,
            Command::Admin(a) => accounts::admin(a).await,
            Command::User(a) => accounts::user(a).await,
            Command::ServiceAccount(a) => accounts::service_account(a).await,
            Command::Token(a) => accounts::token(a).await,
            Command::Keys(a) => accounts::keys(a).await,
            Command::Policy(a) => policy::run(a).await,
            Command::Audit(a) => audit::run(a).await,
            Command::Report(a) => report::run(a).await,
        }
    })
}
