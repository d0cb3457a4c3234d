//! The `weir` command line.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// mimalloc, not glibc's malloc: measured in `benches/cpu.sh` (see README,
/// Benchmarks). glibc's arenas cost ~15% of weir's samples at load, and lock
/// contention whenever one thread frees what another allocated.
#[global_allocator]
static GLOBAL: Mimalloc = Mimalloc;

/// mimalloc through its plain entry points wherever the alignment asked
/// for is one every mimalloc block already has (a machine word: mimalloc's
/// own `mi_realloc_aligned` draws the line there too), and through its
/// aligned ones only above that (tokio's 128-byte task cells).
///
/// The `mimalloc` crate's allocator calls `mi_malloc_aligned` for every
/// allocation. Its fast path serves only small blocks that happen to be
/// aligned, so every allocation over 1 KiB (a boxed request future, a
/// read buffer) took the generic aligned path, most of them the
/// over-allocating one: 73 allocations per proxied request cost 5.8k
/// instructions (callgrind; README, Benchmarks).
struct Mimalloc;

const WORD: usize = std::mem::size_of::<usize>();

// SAFETY: every block comes from mimalloc and goes back to it; a layout
// whose alignment is above a word goes through mimalloc's aligned calls,
// which honour it, and one at or below a word is honoured by every block
// mimalloc hands out.
unsafe impl std::alloc::GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        if layout.align() <= WORD {
            libmimalloc_sys::mi_malloc(layout.size()) as *mut u8
        } else {
            libmimalloc_sys::mi_malloc_aligned(layout.size(), layout.align()) as *mut u8
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        if layout.align() <= WORD {
            libmimalloc_sys::mi_zalloc(layout.size()) as *mut u8
        } else {
            libmimalloc_sys::mi_zalloc_aligned(layout.size(), layout.align()) as *mut u8
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: std::alloc::Layout) {
        libmimalloc_sys::mi_free(ptr as *mut std::ffi::c_void)
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        let ptr = ptr as *mut std::ffi::c_void;
        if layout.align() <= WORD {
            libmimalloc_sys::mi_realloc(ptr, new_size) as *mut u8
        } else {
            libmimalloc_sys::mi_realloc_aligned(ptr, new_size, layout.align()) as *mut u8
        }
    }
}

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
