//! The `tessera` binary: parse the command line, build the one rayon pool, run, exit.

use clap::Parser;

fn main() {
    // Like other Unix tools, end quietly when stdout is closed early (`tessera ops | head`).
    // SAFETY: called before any thread starts; SIG_DFL is a valid disposition for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = match tessera::cli::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    if let tessera::cli::Command::Run(args) = &cli.command
        && let Some(n) = args.threads
        && let Err(e) = rayon::ThreadPoolBuilder::new().num_threads(n as usize).build_global()
    {
        eprintln!("error: cannot start {n} threads: {e}");
        std::process::exit(2);
    }
    std::process::exit(tessera::cli::main_with(cli));
}
