//! `tcbridge`: the one binary. `serve` behind the Functions host, `serve --standalone` on its
//! own, and the operator commands (`src/cli/`): this file only parses the command line and
//! starts the runtime.

#![deny(clippy::string_slice, clippy::indexing_slicing)]

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

use truecontext_bridge::cli::{self, Cli};
use truecontext_bridge::config::RawSettings;

fn main() -> ExitCode {
    truecontext_bridge::tls::install_crypto_provider();
    let cli = Cli::parse();
    if !cli.command.is_serve() {
        cli::quiet_on_closed_output();
    }
    let raw = RawSettings::from_environment(cli.settings.as_deref());
    // Blocking threads serve the embedded store, whose one SQLite connection is behind a mutex:
    // past a few, extra threads only queue on it, each with its stack (tokio's default of 512
    // let a long sync grow to 40 threads). Stacks of 8 MiB, not 2: a timer run polls futures
    // nested many deep (the invocation, the tick, a connection's run, a page, a landing, the
    // Azure SDK's pipeline), and a debug build overflowed 2 MiB on the Azure store. Stack is
    // address space until it is touched, so ten threads of 8 MiB cost what they use.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(8)
        .thread_stack_size(8 * 1024 * 1024)
        .enable_all()
        .build();
    match runtime {
        Ok(runtime) => cli::exit_code(runtime.block_on(cli::run(cli.command, raw))),
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}
