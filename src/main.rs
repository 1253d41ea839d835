//! The `tessera` binary: parse the command line, build the one rayon pool, run, exit.

use clap::Parser;

fn main() {
    // Like other Unix tools, end quietly when stdout is closed early (`tessera ops | head`).
    // SAFETY: called before any thread starts; SIG_DFL is a valid disposition for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // SAFETY: mi_option_set only stores the option's value; 15 is mi_option_purge_delay in
    // mimalloc 3 (libmimalloc-sys 0.1.49), and -1 means "never".
    unsafe { mi_option_set(15, -1) };
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

/// mimalloc keeps freed memory for reuse: a stage's output can take the pages an earlier stage
/// freed, instead of faulting in fresh zeroed pages (on these machines first-touch runs at a
/// fraction of the speed of reused memory). Purging is off (`main`): by default mimalloc returns
/// pages unused for a second to the system, and a streamed sample, which frees and allocates
/// slabs and decoded chunks every few seconds, then faults them in again (12 s of system time
/// instead of 25–38 s on the 4 GiB bench/big.py volume). Memory use stays bounded by `--memory`;
/// the process keeps its high-water mark.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

unsafe extern "C" {
    /// mimalloc's option setter (linked with the allocator above).
    fn mi_option_set(option: libc::c_int, value: libc::c_long);
}
