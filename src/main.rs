//! The `hoardfs` binary: parse flags, set up logging, run, report errors plainly.

use clap::Parser;
use hoardfs::cli::{exit_code, run, Cli};

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("hoardfs=info,fuser=warn,warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(cli) {
        Ok(true) => {}
        // The command ran and found a problem it reported (corrupt blocks, failed objects).
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("hoardfs: error: {e:#}");
            std::process::exit(exit_code(&e));
        }
    }
}
