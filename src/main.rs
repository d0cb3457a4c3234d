//! The `weir` command line.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// mimalloc, not glibc's malloc: measured in `benches/cpu.sh` (see README,
/// Benchmarks). glibc's arenas cost ~15% of weir's samples at load, and lock
/// contention whenever one thread frees what another allocated.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "weir", version, about = "A programmable edge proxy for LLM providers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway
    Serve {
        #[arg(short, long, default_value = "conf/weir.yaml")]
        config: PathBuf,
        /// Take the listening sockets over from a running weir
        #[arg(long)]
        upgrade: bool,
    },
    /// Validate a config; exit 0, or 1 with the errors
    Check {
        #[arg(short, long, default_value = "conf/weir.yaml")]
        config: PathBuf,
    },
    /// Mock providers and a gateway from conf/demo.yaml; prints curl commands to try
    Demo {
        #[arg(short, long, default_value = "conf/demo.yaml")]
        config: PathBuf,
    },
    /// A mock OpenAI-compatible provider
    Mock(weir::mock::MockOptions),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info,pingora=warn")).init();
    let result = match cli.command {
        Command::Serve { config, upgrade } => weir::server::run(&config, upgrade, Vec::new()),
        Command::Check { config } => check(&config),
        Command::Demo { config } => weir::demo::run(&config),
        Command::Mock(opts) => weir::mock::run(opts),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}

fn check(config: &std::path::Path) -> Result<(), String> {
    let (cfg, index) = weir::config::load(config).map_err(|e| e.to_string())?;
    weir::runtime::Runtime::build(cfg, &index, 0, None).map_err(|e| e.to_string())?;
    println!("{}: ok", config.display());
    Ok(())
}
