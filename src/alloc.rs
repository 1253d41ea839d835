//! The allocator every tessera binary uses (the command, the examples, the tests).
//!
//! mimalloc keeps freed memory for reuse: a stage's output can take the pages an earlier stage
//! freed, instead of faulting in fresh zeroed pages (on these machines first-touch runs at a
//! fraction of the speed of reused memory). Purging is off ([`keep_freed_memory`]): by default
//! mimalloc returns pages unused for a second to the system, and a streamed sample, which frees
//! and allocates slabs and decoded chunks every few seconds, then faults them in again (12 s of
//! system time instead of 25–38 s on the 4 GiB bench/big.py volume). Memory use stays bounded
//! by `--memory`; the process keeps its high-water mark.

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(feature = "mimalloc")]
unsafe extern "C" {
    /// mimalloc's option setter (linked with the allocator above).
    fn mi_option_set(option: libc::c_int, value: libc::c_long);
}

/// Turns mimalloc's purging off, so freed pages stay mapped for the next allocation. Call it at
/// the start of `main`, before other threads start.
pub fn keep_freed_memory() {
    #[cfg(feature = "mimalloc")]
    // SAFETY: mi_option_set only stores the option's value; 15 is mi_option_purge_delay in
    // mimalloc 3 (libmimalloc-sys 0.1.49), and -1 means "never".
    unsafe {
        mi_option_set(15, -1)
    };
}
