//! The `tessera` binary: parse the command line, build the one rayon pool, run, exit.

use clap::Parser;

fn main() {
    // Like other Unix tools, end quietly when stdout is closed early (`tessera ops | head`).
    // SAFETY: called before any thread starts; SIG_DFL is a valid disposition for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    tessera::alloc::keep_freed_memory();
    let cli = match tessera::cli::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    let threads = match &cli.command {
        tessera::cli::Command::Run(a) => a.resources.threads,
        tessera::cli::Command::Watch(a) => a.resources.threads,
        tessera::cli::Command::Stats(a) => a.threads,
        tessera::cli::Command::Train(a) => a.threads,
        tessera::cli::Command::Predict(a) => a.threads,
        _ => None,
    };
    if let Some(n) = threads
        && let Err(e) = rayon::ThreadPoolBuilder::new().num_threads(n as usize).build_global()
    {
        eprintln!("error: cannot start {n} threads: {e}");
        std::process::exit(2);
    }
    std::process::exit(tessera::cli::main_with(cli));
}
