//! The `hoardfs` binary: parse flags, set up logging, run, report errors plainly.

use clap::Parser;
use hoardfs::cli::{exit_code, rewrite_mount_helper_args, run, Cli, LogFormat};
use tracing_subscriber::fmt::format::FmtSpan;

fn main() {
    // `mount -t fuse.hoardfs` and fstab call `hoardfs SOURCE MOUNTPOINT -o OPTS`.
    let cli = Cli::parse_from(rewrite_mount_helper_args(std::env::args_os().collect()));
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("hoardfs=info,fuser=warn,warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cli.log_format {
        // One JSON object per line, each event carrying the spans it happened in (FUSE operation,
        // fetch, verification unit) with their fields, and a line when each span closes.
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(true).with_span_events(FmtSpan::CLOSE).init(),
        LogFormat::Text => builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init(),
    }
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
