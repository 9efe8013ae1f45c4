//! `datastack`: the server (`serve`, `migrate`) and the client commands.
#![forbid(unsafe_code)]

mod client;
mod offline;

/// mimalloc instead of the system allocator: the server allocates and frees small objects
/// on several threads (request handling, the audit writer, SQLite's connection threads),
/// where glibc's arenas contend and keep freed memory.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use datastack_server::config::tracing_filter::Targets;
use datastack_server::{Application, Config, ConfigLayer};
use secrecy::ExposeSecret;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The access and security layer of a data-platform API.
#[derive(Parser, Debug)]
#[command(name = "datastack", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server. On the first start against an empty store it prints
    /// `admin token: <token>` once on standard output.
    Serve(ServerArgs),
    /// Apply the store's migrations and exit (serve also applies them at start).
    Migrate(ServerArgs),
    /// Break-glass: print a new 24-hour admin token for an active admin, read straight
    /// from the store (run it where the server runs, with the same settings).
    RecoverAdminToken(RecoverArgs),
    #[command(flatten)]
    Client(client::ClientCommand),
}

/// Server settings. Each also comes from `DATASTACK_<NAME>` and `datastack.toml`;
/// flags win over the environment, which wins over the file.
#[derive(Args, Debug)]
struct ServerArgs {
    /// The configuration file (default: ./datastack.toml if it exists).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on, e.g. 127.0.0.1:8080.
    #[arg(long)]
    listen: Option<String>,
    /// Directory of the embedded SQLite store.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// PostgreSQL URL; when set, the store is PostgreSQL.
    #[arg(long)]
    database_url: Option<String>,
    /// Redis URL for cluster-wide rate-limit counters.
    #[arg(long)]
    redis_url: Option<String>,
    /// Largest accepted request body, in bytes.
    #[arg(long)]
    max_body_bytes: Option<u64>,
    /// Verified credentials kept in memory.
    #[arg(long)]
    cache_capacity: Option<u64>,
    /// Log filter, e.g. info or datastack=debug,info.
    #[arg(long)]
    log: Option<String>,
}

/// Whose token `recover-admin-token` issues.
#[derive(Args, Debug)]
struct RecoverArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The admin's workspace (default: the one created at first start).
    #[arg(long, value_name = "ws_…")]
    workspace: Option<String>,
    /// The admin's email (default: the oldest active admin of the workspace).
    #[arg(long)]
    email: Option<String>,
}

impl ServerArgs {
    fn load(&self) -> Result<Config, datastack_server::ConfigError> {
        let flags = ConfigLayer {
            listen: self.listen.clone(),
            data_dir: self.data_dir.clone(),
            database_url: self.database_url.clone(),
            redis_url: self.redis_url.clone(),
            max_body_bytes: self.max_body_bytes,
            cache_capacity: self.cache_capacity,
            log: self.log.clone(),
            ..ConfigLayer::default()
        };
        ConfigLayer::from_file(self.config.as_deref())?
            .merge(ConfigLayer::from_env(std::env::vars())?)
            .merge(flags)
            .build()
    }
}

fn init_logging(filter: &str) {
    let targets: Targets = filter
        .parse()
        .unwrap_or_else(|_| Targets::new().with_default(tracing::Level::INFO));
    let _ = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_target(false),
        )
        .with(targets)
        .try_init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve(args).await,
            Command::Migrate(args) => migrate(args).await,
            Command::RecoverAdminToken(args) => recover_admin_token(args).await,
            // The audit commands that read the store directly need no server or token.
            Command::Client(client::ClientCommand::Audit {
                cmd: client::AuditCmd::Verify(args),
                conn,
            }) if args.reads_store() => offline::verify(args, conn.json).await,
            Command::Client(client::ClientCommand::Audit {
                cmd: client::AuditCmd::AcknowledgeBreak(args),
                ..
            }) => offline::acknowledge(args).await,
            Command::Client(cmd) => client::run(cmd).await,
        }
    })
}

async fn serve(args: ServerArgs) -> ExitCode {
    let config = match args.load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config.log);
    let mut app = match Application::build(config).await {
        Ok(app) => app,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(token) = app.take_admin_token() {
        // Standard output only, exactly once, never through the log. If it cannot be
        // written, stop: `datastack recover-admin-token` issues another.
        let mut out = std::io::stdout().lock();
        let printed =
            writeln!(out, "admin token: {}", token.expose_secret()).and_then(|()| out.flush());
        if let Err(e) = printed {
            eprintln!(
                "error: cannot print the admin token to standard output ({e}); \
                 run `datastack recover-admin-token` with the same settings to get one"
            );
            return ExitCode::FAILURE;
        }
    }
    match app.run_until_stopped().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn recover_admin_token(args: RecoverArgs) -> ExitCode {
    let config = match args.server.load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match datastack_server::app::recover_admin_token(
        &config,
        args.workspace.as_deref(),
        args.email.as_deref(),
    )
    .await
    {
        Ok((admin, token)) => {
            println!("admin token: {}", token.expose_secret());
            eprintln!(
                "issued to {admin}; it expires in {} hours. Revoke it once you have a regular token.",
                datastack_server::app::RECOVERY_TOKEN_HOURS
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn migrate(args: ServerArgs) -> ExitCode {
    let config = match args.load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let result = datastack_server::app::migrate(&config).await;
    match result {
        Ok(()) => {
            println!("migrations applied");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
