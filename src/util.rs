//! Small helpers shared by the layers: atomic file writes and name suggestions.

use rayon::prelude::*;
use std::io::Write;
use std::path::{Path, PathBuf};

/// This machine's host name (empty when unknown).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// Whether a process with this id runs on this machine.
pub fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes the temporary files ([`tmp_sibling`] names: `<name>.tmp<pid>-<n>@<host>`) in `dir`
/// whose writing process is gone — what a killed run leaves behind. Only this machine's: a
/// file another host is writing (tasks on a shared file system) is left alone. Returns how many
/// were removed.
pub fn remove_stale_tmp(dir: &Path) -> usize {
    let mut n = 0;
    let here = host_tag();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pos) = name.rfind(".tmp") else { continue };
        let tail = &name[pos + 4..];
        if let Some((_, host)) = tail.split_once('@')
            && host != here
        {
            continue;
        }
        let Ok(pid) = tail.split(['-', '@']).next().unwrap_or("").parse::<u32>() else { continue };
        let gone = |p: &Path| if p.is_dir() { std::fs::remove_dir_all(p) } else { std::fs::remove_file(p) };
        if pid != std::process::id() && !pid_alive(pid) && gone(&e.path()).is_ok() {
            n += 1;
        }
    }
    n
}

/// Reads little-endian values from bytes one after another; `None` past their end (a damaged
/// checkpoint or partial result is an error for its caller, never a panic).
pub struct ByteReader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> ByteReader<'a> {
    pub fn new(b: &'a [u8]) -> ByteReader<'a> {
        ByteReader { b, at: 0 }
    }
    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    /// Bytes not read yet.
    pub fn left(&self) -> usize {
        self.b.len() - self.at
    }
    pub fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|s| s[0])
    }
    pub fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    pub fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    pub fn u128(&mut self) -> Option<u128> {
        Some(u128::from_le_bytes(self.take(16)?.try_into().ok()?))
    }
    /// A UTF-8 string after its length (u64).
    pub fn string(&mut self) -> Option<String> {
        let n = self.u64()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
    /// `n` u64 values as sizes.
    pub fn shape(&mut self, n: usize) -> Option<Vec<usize>> {
        (0..n).map(|_| self.u64().map(|v| v as usize)).collect()
    }
    /// `n` values of `W` bytes each, converted by `f`.
    pub fn les<const W: usize, T>(&mut self, n: usize, f: fn([u8; W]) -> T) -> Option<Vec<T>> {
        let raw = self.take(n.checked_mul(W)?)?;
        Some(raw.chunks_exact(W).map(|c| f(c.try_into().expect("chunk"))).collect())
    }
}

/// Bytes for people: `512 B`, `3.2 KiB`, `1.5 GiB`.
/// A 128-bit digest of `bytes` (the first half of their blake3) as two words: a key for sets of
/// ids or paths too large to hold, where two different keys meeting has a chance of about
/// 10⁻²⁷ among a million.
pub fn hash128(bytes: &[u8]) -> [u64; 2] {
    let h = blake3::hash(bytes);
    let b = h.as_bytes();
    [u64::from_le_bytes(b[..8].try_into().unwrap_or_default()), u64::from_le_bytes(b[8..16].try_into().unwrap_or_default())]
}

pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{b} B") } else { format!("{v:.1} {}", UNITS[u]) }
}

/// Whether finished files are fsynced before they are renamed into place (`--durable`).
static DURABLE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// How many fsyncs [`sync`] has made (for tests).
static SYNCS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Sets whether [`sync`] waits for the disk (`--durable`), for the whole process.
///
/// Without it, files are still written to a temporary name and renamed only when complete, so a
/// killed run never leaves a half-written file under its final name and the page cache keeps
/// everything written (SPEC §5 is about SIGKILL). What `--durable` adds is survival of an
/// operating-system crash or power cut: each output, table and record is on disk before it
/// counts as done. After such a crash without it, a file that had not reached the disk has a
/// different size than its record says (journaling file systems commit a file's size with its
/// data), so it is recomputed; checkpoints are verified by their blake3 either way.
pub fn set_durable(on: bool) {
    DURABLE.store(on, std::sync::atomic::Ordering::SeqCst);
}

/// fsyncs `f` when the process is durable ([`set_durable`]); otherwise does nothing.
pub fn sync(f: &std::fs::File) -> std::io::Result<()> {
    if !DURABLE.load(std::sync::atomic::Ordering::SeqCst) {
        return Ok(());
    }
    SYNCS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    f.sync_all()
}

/// Every file (and symbolic link, not followed) under `dir`, at any depth, sorted.
pub fn files_under(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            if e.file_type()?.is_dir() {
                walk(&e.path(), out)?;
            } else {
                out.push(e.path());
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, &mut out)?;
    out.sort();
    Ok(out)
}

/// fsyncs every file and folder under `dir` when the process is durable ([`set_durable`]) —
/// a store of many files (OME-Zarr) before it is renamed into place. Symbolic links are not
/// followed.
pub fn sync_tree(dir: &Path) -> std::io::Result<()> {
    if !DURABLE.load(std::sync::atomic::Ordering::SeqCst) {
        return Ok(());
    }
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let t = e.file_type()?;
        if t.is_dir() {
            sync_tree(&e.path())?;
        } else if t.is_file() {
            sync(&std::fs::File::open(e.path())?)?;
        }
    }
    sync(&std::fs::File::open(dir)?)
}

/// Ends writing `f`: fsynced when durable ([`set_durable`]), then closed with its error
/// checked. Network file systems (NFS and the like) may report a failed write — a full disk, a
/// quota — only when the file is closed, and dropping a `File` ignores that.
pub fn finish_file(f: std::fs::File) -> std::io::Result<()> {
    sync(&f)?;
    #[cfg(unix)]
    {
        use std::os::fd::IntoRawFd;
        let fd = f.into_raw_fd();
        // SAFETY: `fd` was just taken from the `File`, which no longer owns or closes it.
        if unsafe { libc::close(fd) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Writes `bytes` to `path` through a temporary file in the same folder, renamed into place
/// (fsynced first when durable: [`set_durable`]), so a reader never sees a half-written file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic_with(path, |w| w.write_all(bytes))
}

/// As [`write_atomic`], with the contents written by `fill` through a buffer (for files too
/// large to build in memory first).
pub fn write_atomic_with(path: &Path, fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = tmp_sibling(path);
    let res = (|| {
        let mut w = std::io::BufWriter::with_capacity(1 << 16, std::fs::File::create(&tmp)?);
        fill(&mut w)?;
        finish_file(w.into_inner().map_err(|e| e.into_error())?)
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path)
}

/// A writer shared between an encoder that takes its writer by value (the TIFF encoder, polars'
/// batched writers) and the code that finishes the file after the encoder is done with it.
pub struct Shared<W>(std::sync::Arc<std::sync::Mutex<W>>);

impl<W> Clone for Shared<W> {
    fn clone(&self) -> Self {
        Shared(std::sync::Arc::clone(&self.0))
    }
}

impl<W> Shared<W> {
    pub fn new(w: W) -> Self {
        Shared(std::sync::Arc::new(std::sync::Mutex::new(w)))
    }
    pub fn with<R>(&self, f: impl FnOnce(&mut W) -> R) -> R {
        let mut g = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut g)
    }
    /// The writer, once every other handle is gone; `None` while one is still held.
    pub fn into_inner(self) -> Option<W> {
        std::sync::Arc::try_unwrap(self.0).ok().map(|m| m.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner))
    }
}

impl<W: Write> Write for Shared<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.with(|w| w.write(buf))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.with(|w| w.flush())
    }
}

impl<W: std::io::Seek> std::io::Seek for Shared<W> {
    fn seek(&mut self, pos: std::io::SeekFrom) -> std::io::Result<u64> {
        self.with(|w| w.seek(pos))
    }
}

/// `name.tmp<pid>-<n>@<host>` beside `path`, `n` new for every call: two threads of one
/// process writing the same file (two samples with identical content save the same checkpoint)
/// each get their own temporary file, and the later rename wins with the same bytes; so do two
/// tasks on different hosts with the same process id (a task resubmitted while the first still
/// runs, on a shared file system).
pub fn tmp_sibling(path: &Path) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".tmp{}-{n}@{}", std::process::id(), host_tag()));
    path.with_file_name(name)
}

/// This machine's host name as it goes into file names (letters, digits, `.`, `-`, `_`).
fn host_tag() -> &'static str {
    static HOST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HOST.get_or_init(|| hostname().chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')).collect())
}

/// The candidate closest to `word`, if it is close enough to be a plausible typo.
pub fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let mut best: Option<(f64, &str)> = None;
    for c in candidates {
        let score = strsim::jaro_winkler(&word.to_ascii_lowercase(), &c.to_ascii_lowercase());
        if score >= 0.8 && best.is_none_or(|(s, _)| score > s) {
            best = Some((score, c));
        }
    }
    best.map(|(_, c)| c)
}

/// Bit k of the result says whether byte k of `x` (little-endian) is nonzero: eight voxels of
/// a mask packed with a few integer operations instead of eight shifts and ors.
#[inline]
pub fn nonzero_bits8(x: u64) -> u8 {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    // The high bit of each byte: set iff the byte is nonzero (no carry crosses bytes).
    let high = (((x & LOW7) + LOW7) | x) & 0x8080_8080_8080_8080;
    // Gathers bit 0 of each byte into the top byte, byte k to bit k.
    ((high >> 7).wrapping_mul(0x0102_0408_1020_4080) >> 56) as u8
}

/// Byte k (little-endian) of the result is bit k of `b`, as 0 or 1: the inverse of
/// [`nonzero_bits8`] for 0/1 bytes.
#[inline]
pub fn bits8_to_bytes(b: u8) -> u64 {
    // Byte k keeps only bit k of b; adding 0x7f carries it into the byte's high bit.
    let x = (b as u64).wrapping_mul(0x0101_0101_0101_0101) & 0x8040_2010_0804_0201;
    ((x + 0x7f7f_7f7f_7f7f_7f7f) & 0x8080_8080_8080_8080) >> 7
}

/// Packs `src` (one byte per voxel, nonzero = set) into `out`: bit i of word k is
/// `src[64k + i] != 0`. `out` must hold `src.len().div_ceil(64)` words.
pub fn pack_row(src: &[u8], out: &mut [u64]) {
    for (w, chunk) in out.iter_mut().zip(src.chunks(64)) {
        let mut word = 0u64;
        let mut eights = chunk.chunks_exact(8);
        for (j, e) in (&mut eights).enumerate() {
            let x = u64::from_le_bytes(e.try_into().expect("8 bytes"));
            word |= (nonzero_bits8(x) as u64) << (8 * j);
        }
        let done = chunk.len() - eights.remainder().len();
        for (i, &v) in eights.remainder().iter().enumerate() {
            word |= ((v != 0) as u64) << (done + i);
        }
        *w = word;
    }
}

/// Unpacks [`pack_row`]'s words into one 0/1 byte per voxel (`out.len()` voxels).
pub fn unpack_row(bits: &[u64], out: &mut [u8]) {
    for (&word, chunk) in bits.iter().zip(out.chunks_mut(64)) {
        let bytes = word.to_le_bytes();
        let done = chunk.len() / 8 * 8;
        let mut eights = chunk.chunks_exact_mut(8);
        for (e, &b) in (&mut eights).zip(&bytes) {
            e.copy_from_slice(&bits8_to_bytes(b).to_le_bytes());
        }
        let rest = eights.into_remainder();
        for (i, o) in rest.iter_mut().enumerate() {
            *o = ((word >> (done + i)) & 1) as u8;
        }
    }
}

/// Work running on one of the long-lived background threads ([`background`]).
pub struct Pending<T>(std::sync::mpsc::Receiver<std::thread::Result<T>>);

/// A job for the background threads.
type Job = Box<dyn FnOnce() + Send>;

/// Runs `job` on a background thread: outputs are encoded and written, and checkpoints saved,
/// while the pipeline goes on. The threads live as long as the process (a few more than the
/// pool's), so a study of thousands of samples does not start and end thousands of threads,
/// each with its own stack and allocator heap.
pub fn background<T: Send + 'static>(job: impl FnOnce() -> T + Send + 'static) -> Pending<T> {
    static QUEUE: std::sync::OnceLock<Option<std::sync::mpsc::Sender<Job>>> = std::sync::OnceLock::new();
    let queue = QUEUE.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        let mut started = 0;
        for k in 0..rayon::current_num_threads() + 2 {
            let rx = std::sync::Arc::clone(&rx);
            let spawned = std::thread::Builder::new().name(format!("tessera-writer-{k}")).spawn(move || {
                loop {
                    let job = match rx.lock() {
                        Ok(r) => r.recv(),
                        Err(_) => return,
                    };
                    match job {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                }
            });
            started += usize::from(spawned.is_ok());
        }
        // Without any thread, jobs run where they are started.
        (started > 0).then_some(tx)
    });
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let run: Job = Box::new(move || {
        let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)));
    });
    match queue {
        Some(q) => {
            if let Err(std::sync::mpsc::SendError(run)) = q.send(run) {
                run();
            }
        }
        None => run(),
    }
    Pending(rx)
}

impl<T> Pending<T> {
    /// A job run here and now, as a finished [`Pending`] (for work too small to hand over).
    pub fn now(job: impl FnOnce() -> T) -> Pending<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)));
        Pending(rx)
    }

    /// Waits for the job to end; `Err` if it panicked. On a thread of the rayon pool, the pool's
    /// pending work runs meanwhile: the job may itself be waiting for pool work (a checkpoint
    /// packed in parallel), and a pool thread blocked in a plain wait could leave nobody to run
    /// it.
    pub fn wait(self) -> std::thread::Result<T> {
        let gone = || -> std::thread::Result<T> { Err(Box::new("the background job was dropped")) };
        if rayon::current_thread_index().is_some() {
            loop {
                match self.0.try_recv() {
                    Ok(r) => return r,
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => return gone(),
                    Err(std::sync::mpsc::TryRecvError::Empty) => {
                        if rayon::yield_now() != Some(rayon::Yield::Executed) {
                            std::thread::sleep(std::time::Duration::from_micros(200));
                        }
                    }
                }
            }
        }
        self.0.recv().unwrap_or_else(|_| gone())
    }
}

/// Seconds since the Unix epoch as a readable UTC time, `2026-11-26 01:02:03 UTC`.
pub fn utc_time(unix: u64) -> String {
    let (days, secs) = ((unix / 86_400) as i64, unix % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm, proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC", secs / 3600, secs / 60 % 60, secs % 60)
}

/// [`skip_zeros`] for bytes (masks): 16 bytes at a time as one 128-bit word.
#[inline]
pub fn skip_zeros_u8(s: &[u8], mut from: usize) -> usize {
    while let Some(c) = s.get(from..from + 16) {
        let w = u128::from_le_bytes(c.try_into().expect("16 bytes"));
        if w != 0 {
            // Little-endian: the lowest set bit lies in the first nonzero byte.
            return from + (w.trailing_zeros() / 8) as usize;
        }
        from += 16;
    }
    while from < s.len() && s[from] == 0 {
        from += 1;
    }
    from
}

/// A zeroed vector for a large buffer. On Linux the pages are advised as transparent huge pages
/// before first use: freshly mapped memory costs a page fault per 4 KiB on first touch (about
/// half a millisecond per MB here), and 2 MiB pages cut that to a few faults.
///
/// Buffers of 8 MiB and more are zeroed by all threads: the allocator hands back memory that
/// was used before, which it must clear, and one thread clearing hundreds of MB leaves the
/// others idle.
pub fn zeroed<T: Copy + Default + Send>(n: usize) -> Vec<T> {
    if n.saturating_mul(std::mem::size_of::<T>()) < 8 << 20 {
        return vec![T::default(); n];
    }
    let mut v: Vec<T> = Vec::with_capacity(n);
    advise_huge_raw(v.as_ptr() as usize, n * std::mem::size_of::<T>());
    v.spare_capacity_mut()[..n].par_chunks_mut(1 << 18).for_each(|c| c.fill(std::mem::MaybeUninit::new(T::default())));
    // SAFETY: the first n elements were just initialised.
    unsafe { v.set_len(n) };
    v
}

thread_local! {
    /// A large 4-byte buffer (f32 image, u32 labels) that a value no longer needed gave back
    /// ([`recycle_u32`]), for the next [`zeroed_u32`] or [`overwritten_u32`] of about its size.
    ///
    /// Memory is time here: the kernel zeroes every fresh page on first touch, at a fraction of
    /// the speed of writing memory already mapped. A whole-volume chain frees its smoothed f32
    /// image before it labels; labels of the same voxel count then take that buffer instead of
    /// as many fresh pages. One buffer is kept (the last given back), and the executor empties
    /// the slot after each sample ([`clear_pool`]). A kept buffer that no later stage takes is
    /// memory the allocator could have handed to another stage: at most one buffer of the two
    /// largest values the sample's memory estimate already counts (`stream::whole_run_bytes`).
    ///
    /// The slot is the thread's: a sample's stages run one after the other on the thread that
    /// evaluates it (an op asks for its output buffer before it goes parallel), so one sample's
    /// buffer serves its own later stages, whatever other samples run beside it.
    static POOL: std::cell::RefCell<Option<Vec<u32>>> = const { std::cell::RefCell::new(None) };
}

/// Buffers under this many bytes are not pooled (the allocator's own reuse serves them).
const POOL_MIN_BYTES: usize = 8 << 20;

/// Keeps `v`'s allocation for [`zeroed_u32`]/[`overwritten_u32`] (when it is large), in place
/// of the buffer kept before.
pub fn recycle_u32(v: Vec<u32>) {
    if v.capacity().saturating_mul(4) < POOL_MIN_BYTES {
        return;
    }
    let old = POOL.replace(Some(v));
    drop(old);
}

/// [`recycle_u32`] for an f32 buffer.
pub fn recycle_f32(v: Vec<f32>) {
    let mut v = std::mem::ManuallyDrop::new(v);
    // SAFETY: f32 and u32 have the same size and alignment, so the allocation keeps its layout,
    // and every bit pattern is a valid u32.
    recycle_u32(unsafe { Vec::from_raw_parts(v.as_mut_ptr() as *mut u32, v.len(), v.capacity()) });
}

/// Drops the kept buffer.
pub fn clear_pool() {
    let old = POOL.take();
    drop(old);
}

/// The kept buffer, cut to `n` values, when it holds at least `n` and at most 1.25·n.
fn from_pool(n: usize) -> Option<Vec<u32>> {
    if n.saturating_mul(4) < POOL_MIN_BYTES {
        return None;
    }
    POOL.with_borrow_mut(|p| {
        let fits = p.as_ref().is_some_and(|v| v.len() >= n && v.len() - n <= n / 4);
        let mut v = if fits { p.take() } else { None }?;
        v.truncate(n);
        Some(v)
    })
}

/// `n` zeros: in the kept buffer (cleared by every thread; its pages are mapped already), or
/// in memory from [`zeroed`]. Not `calloc`: in a process that ran samples before, the allocator
/// hands back used memory, and `calloc` would clear hundreds of MB on one thread.
pub fn zeroed_u32(n: usize) -> Vec<u32> {
    match from_pool(n) {
        Some(mut v) => {
            v.par_chunks_mut(1 << 18).for_each(|c| c.fill(0));
            v
        }
        None => zeroed(n),
    }
}

/// `n` values for a caller that overwrites every one: the kept buffer's old values as they
/// are (no clearing pass), or zeros from [`zeroed`].
pub fn overwritten_u32(n: usize) -> Vec<u32> {
    from_pool(n).unwrap_or_else(|| zeroed(n))
}

/// `n` f32 values that `write` gives every one of, in the kept buffer or in fresh memory, never
/// cleared first: for an output computed voxel by voxel (the kept buffer's pages are mapped
/// already; clearing fresh ones would touch them twice).
///
/// # Safety
///
/// `write` must initialise all `n` slots it is given.
pub unsafe fn written_f32(n: usize, write: impl FnOnce(&mut [std::mem::MaybeUninit<f32>])) -> Vec<f32> {
    let mut v: Vec<f32> = match from_pool(n) {
        Some(p) => {
            let mut p = std::mem::ManuallyDrop::new(p);
            // SAFETY: same size and alignment; length 0, so no value is read as f32.
            unsafe { Vec::from_raw_parts(p.as_mut_ptr() as *mut f32, 0, p.capacity()) }
        }
        None => {
            let v = Vec::with_capacity(n);
            advise_huge_raw(v.as_ptr() as usize, n * 4);
            v
        }
    };
    write(&mut v.spare_capacity_mut()[..n]);
    // SAFETY: the caller's `write` initialised the first n values.
    unsafe { v.set_len(n) };
    v
}

/// A zeroed 3D array backed by [`zeroed`] memory.
pub fn zeros3<T: Copy + Default + Send>(dims: (usize, usize, usize)) -> ndarray::Array3<T> {
    ndarray::Array3::from_shape_vec(dims, zeroed(dims.0 * dims.1 * dims.2)).expect("shape matches length")
}

/// `f` applied to every element of `a`, into huge-page-advised memory.
pub fn map3<A: Copy + Sync, B: Copy + Default + Send>(a: &ndarray::Array3<A>, f: impl Fn(A) -> B + Sync + Send) -> ndarray::Array3<B> {
    let mut out = zeros3(a.dim());
    match a.as_slice() {
        // Contiguous: chunks of plain slices (the loops vectorise).
        Some(src) => out
            .as_slice_mut()
            .expect("zeros3 is contiguous")
            .par_chunks_mut(1 << 16)
            .zip(src.par_chunks(1 << 16))
            .for_each(|(o, s)| o.iter_mut().zip(s).for_each(|(o, &v)| *o = f(v))),
        None => ndarray::Zip::from(&mut out).and(a).par_for_each(|o, &v| *o = f(v)),
    }
    out
}

/// Advises the kernel to back `v`'s memory with huge pages (no-op off Linux or for small buffers).
pub fn advise_huge<T>(v: &[T]) {
    advise_huge_raw(v.as_ptr() as usize, std::mem::size_of_val(v));
}

/// [`advise_huge`] for a raw range (e.g. a vector's unused capacity).
pub fn advise_huge_raw(start: usize, bytes: usize) {
    #[cfg(target_os = "linux")]
    {
        if bytes >= 8 << 20 {
            let page = 4096usize;
            let aligned = start.div_ceil(page) * page;
            let len = (start + bytes).saturating_sub(aligned) / page * page;
            if len > 0 {
                // SAFETY: the range lies inside `v`'s allocation; MADV_HUGEPAGE only changes
                // how the kernel backs the pages, never their contents.
                unsafe {
                    libc::madvise(aligned as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
                }
            }
        }
    }
}

/// A number for people: 4 decimals without trailing zeros, scientific when very large or
/// small, `NaN`/`inf` spelled out.
pub fn fmt_num(x: f64) -> String {
    if x.is_nan() {
        "NaN".into()
    } else if x.is_infinite() {
        if x > 0.0 { "inf".into() } else { "-inf".into() }
    } else if x == 0.0 {
        "0".into()
    } else if x.abs() >= 1e6 || x.abs() < 1e-3 {
        format!("{x:.3e}")
    } else {
        format!("{x:.4}").trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// Whether `path` (relative, `/`-separated) matches a shell pattern, ignoring ASCII case
/// (instruments write `.TIF` as often as `.tif`): `*` any run of characters but `/`, `**` any
/// run including `/`, `?` one character, `[abc]`, `[a-z]`, `[!x]` one of (or none of) a set,
/// `{tif,tiff}` one of the alternatives.
pub fn glob_match(pattern: &str, path: &str) -> bool {
    expand_braces(pattern).iter().any(|p| {
        let p: Vec<char> = p.to_ascii_lowercase().chars().collect();
        let s: Vec<char> = path.to_ascii_lowercase().chars().collect();
        glob_here(&p, &s)
    })
}

/// `a{b,c}d` → `abd`, `acd` (nested and repeated braces too; an unclosed brace is literal).
fn expand_braces(p: &str) -> Vec<String> {
    let Some(open) = p.find('{') else { return vec![p.to_string()] };
    let mut depth = 0;
    let mut parts = Vec::new();
    let mut start = open + 1;
    for (i, c) in p[open..].char_indices().map(|(i, c)| (i + open, c)) {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    parts.push(&p[start..i]);
                    let (head, tail) = (&p[..open], &p[i + 1..]);
                    return parts.iter().flat_map(|alt| expand_braces(&format!("{head}{alt}{tail}"))).collect();
                }
            }
            ',' if depth == 1 => {
                parts.push(&p[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    vec![p.to_string()]
}

fn glob_here(p: &[char], s: &[char]) -> bool {
    match p.first() {
        None => s.is_empty(),
        Some('*') if p.get(1) == Some(&'*') => {
            // `**/` also matches no folder at all.
            let rest = if p.get(2) == Some(&'/') { &p[3..] } else { &p[2..] };
            (0..=s.len()).any(|i| glob_here(rest, &s[i..])) || (p.get(2) == Some(&'/') && glob_here(&p[2..], s))
        }
        Some('*') => (0..=s.len()).take_while(|&i| i == 0 || s[i - 1] != '/').any(|i| glob_here(&p[1..], &s[i..])),
        Some('?') => s.first().is_some_and(|&c| c != '/') && glob_here(&p[1..], &s[1..]),
        Some('[') => {
            let Some(close) = p.iter().skip(2).position(|&c| c == ']').map(|i| i + 2) else {
                return s.first() == Some(&'[') && glob_here(&p[1..], &s[1..]);
            };
            let Some(&c) = s.first() else { return false };
            let (negate, set) = if p[1] == '!' || p[1] == '^' { (true, &p[2..close]) } else { (false, &p[1..close]) };
            let mut hit = false;
            let mut i = 0;
            while i < set.len() {
                if i + 2 < set.len() && set[i + 1] == '-' {
                    hit |= set[i] <= c && c <= set[i + 2];
                    i += 3;
                } else {
                    hit |= set[i] == c;
                    i += 1;
                }
            }
            hit != negate && c != '/' && glob_here(&p[close + 1..], &s[1..])
        }
        Some(&c) => s.first() == Some(&c) && glob_here(&p[1..], &s[1..]),
    }
}

/// A seeded stream of pseudo-random u32 for tests (a 64-bit LCG, its high bits).
#[cfg(test)]
pub(crate) fn test_rng(seed: u64) -> impl FnMut() -> u32 {
    let mut state = seed;
    move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooled_buffers_come_back_zeroed() {
        let n = (POOL_MIN_BYTES / 4) + 1000;
        let mut a: Vec<f32> = zeroed(n);
        a.iter_mut().for_each(|v| *v = 1.5);
        let at = a.as_ptr() as usize;
        recycle_f32(a);
        // A request of the same size takes that buffer, all zeros; a much smaller one does not.
        assert!(zeroed_u32(n / 2).iter().all(|&v| v == 0));
        let b = zeroed_u32(n);
        assert!(b.len() == n && b.iter().all(|&v| v == 0));
        assert_eq!(b.as_ptr() as usize, at);
        // Given back again: a caller that overwrites everything gets it as it was.
        recycle_u32(b);
        let c = overwritten_u32(n - 10);
        assert_eq!((c.as_ptr() as usize, c.len()), (at, n - 10));
        // And an output written value by value takes it as f32 slots.
        recycle_u32(c);
        // SAFETY: the closure writes every slot.
        let d = unsafe { written_f32(n - 20, |s| s.fill(std::mem::MaybeUninit::new(2.5))) };
        assert!(d.as_ptr() as usize == at && d.len() == n - 20 && d.iter().all(|&v| v == 2.5));
        assert_eq!(unsafe { written_f32(3, |s| s.fill(std::mem::MaybeUninit::new(1.0))) }, vec![1.0; 3]);
        clear_pool();
        assert!(overwritten_u32(n).iter().all(|&v| v == 0));
    }

    #[test]
    fn skip_zeros_finds_the_first_nonzero() {
        // Every length to 40 and every position of one nonzero value, and none at all.
        for n in 0..40usize {
            for from in 0..=n {
                for at in 0..=n {
                    let mut w = vec![0u32; n];
                    let mut b = vec![0u8; n];
                    if at < n {
                        w[at] = 5;
                        b[at] = 1;
                    }
                    let want = if at >= from { at } else { n };
                    assert_eq!(crate::ops::labels::skip_zeros(&w, from), want, "u32 n {n} from {from} at {at}");
                    assert_eq!(skip_zeros_u8(&b, from), want, "u8 n {n} from {from} at {at}");
                }
            }
        }
    }

    #[test]
    fn glob_patterns() {
        let m = glob_match;
        assert!(m("*.tif", "scan_001.tif") && m("*.tif", "SCAN.TIF") && !m("*.tif", "scan.tif.part"));
        assert!(!m("*.tif", "day1/scan.tif"), "* stops at folders");
        assert!(m("**/*.tif", "day1/scan.tif") && m("**/*.tif", "scan.tif") && m("day*/**", "day2/a/b.npy"));
        assert!(m("*.{tif,tiff,npy}", "a.tiff") && m("*.{tif,tiff,npy}", "a.npy") && !m("*.{tif,tiff}", "a.png"));
        assert!(m("scan_[0-9]?.tif", "scan_12.tif") && !m("scan_[!0-9]?.tif", "scan_12.tif"));
        assert!(m("a{b,{c,d}}e", "ade") && m("[x", "[x") && m("{a", "{a"));
    }

    #[test]
    fn utc_times() {
        assert_eq!(utc_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc_time(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc_time(1_795_568_523), "2026-11-25 01:02:03 UTC");
        assert_eq!(utc_time(4_107_542_399), "2100-02-28 23:59:59 UTC");
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(fmt_num(864.1234567), "864.1235");
        assert_eq!(fmt_num(2.5e-7), "2.500e-7");
        assert_eq!(fmt_num(f64::NAN), "NaN");
        assert_eq!(fmt_num(36.97), "36.97");
    }

    #[test]
    fn durable_decides_whether_files_are_synced() {
        // Only this test turns durability on, so while it is off no fsync can happen.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.json");
        let n0 = SYNCS.load(std::sync::atomic::Ordering::SeqCst);
        write_atomic(&p, b"{}").unwrap();
        assert_eq!(SYNCS.load(std::sync::atomic::Ordering::SeqCst), n0);
        set_durable(true);
        write_atomic(&p, b"{\"a\": 1}").unwrap();
        set_durable(false);
        assert!(SYNCS.load(std::sync::atomic::Ordering::SeqCst) > n0);
        assert_eq!(std::fs::read(&p).unwrap(), b"{\"a\": 1}");
    }

    #[test]
    fn background_jobs_return_their_result_or_their_panic() {
        let jobs: Vec<Pending<usize>> = (0..50).map(|i| background(move || i * 2)).collect();
        assert_eq!(jobs.into_iter().map(|p| p.wait().unwrap()).sum::<usize>(), 2 * (49 * 50 / 2));
        assert!(background(|| panic!("boom")).wait().is_err());
    }

    #[test]
    fn a_pool_thread_waiting_for_a_thread_that_needs_the_pool_does_not_deadlock() {
        // One pool thread; it waits for a thread that runs parallel work on that same pool
        // (as a background checkpoint save does). A plain join would never return.
        let pool = std::sync::Arc::new(rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        let p = pool.clone();
        std::thread::spawn(move || {
            let sum = p.install(|| {
                let inner = p.clone();
                background(move || inner.install(|| (0..10_000u64).into_par_iter().sum::<u64>())).wait().unwrap()
            });
            let _ = tx.send(sum);
        });
        let got = rx.recv_timeout(std::time::Duration::from_secs(60)).expect("deadlocked");
        assert_eq!(got, 10_000 * 9_999 / 2);
    }

    #[test]
    fn bit_packing_matches_the_voxel_by_voxel_definition() {
        let mut rng = crate::stats::kmeans::SplitMix::new(7);
        for len in [0usize, 1, 7, 8, 9, 63, 64, 65, 127, 128, 200] {
            for density in [0u64, 1, 2, 4] {
                let src: Vec<u8> = (0..len)
                    .map(|_| {
                        let r = rng.next_u64();
                        // Nonzero values of every kind, not only 1.
                        if density == 0 || r % 4 >= density { 0 } else { [1u8, 2, 127, 128, 255][(r >> 8) as usize % 5] }
                    })
                    .collect();
                let mut words = vec![0u64; len.div_ceil(64)];
                pack_row(&src, &mut words);
                for (x, &v) in src.iter().enumerate() {
                    assert_eq!((words[x / 64] >> (x % 64)) & 1, (v != 0) as u64, "len {len} x {x}");
                }
                // No bits beyond the row.
                if len % 64 != 0 {
                    assert_eq!(words[len / 64] >> (len % 64), 0);
                }
                let mut back = vec![9u8; len];
                unpack_row(&words, &mut back);
                assert!(back.iter().zip(&src).all(|(&b, &v)| b == (v != 0) as u8), "len {len}");
            }
        }
        for b in 0..=255u8 {
            assert_eq!(nonzero_bits8(bits8_to_bytes(b)), b);
        }
    }

    #[test]
    fn concurrent_writers_of_one_file_do_not_collide() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("same.ckpt");
        assert_ne!(tmp_sibling(&p), tmp_sibling(&p));
        // Eight threads writing the same file at once: every write succeeds.
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..50 {
                        write_atomic(&p, &[7u8; 4096]).unwrap();
                    }
                });
            }
        });
        assert_eq!(std::fs::read(&p).unwrap(), vec![7u8; 4096]);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left");
    }

    #[test]
    fn stale_temporary_files_of_dead_processes_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        // A pid that cannot be alive (above the kernel's limit), in every name form: older
        // ones, and with this host's name.
        let here = format!("d.npy.tmp4194999-1@{}", host_tag());
        for name in ["a.tif.tmp4194999", "b.ckpt.tmp4194999-3", &here] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        // Another host's: its writer may be alive there (a shared file system).
        let other = dir.path().join("e.spill.tmp4194999-2@another-host.example");
        std::fs::write(&other, b"x").unwrap();
        let mine = tmp_sibling(&dir.path().join("c.json"));
        std::fs::write(&mine, b"x").unwrap();
        assert_eq!(remove_stale_tmp(dir.path()), 3);
        assert!(mine.exists(), "this process's own temporary file stays");
        assert!(other.exists(), "another host's temporary file stays");
    }

    #[test]
    fn suggestions() {
        assert_eq!(did_you_mean("gausian", ["gaussian", "label", "measure"]), Some("gaussian"));
        assert_eq!(did_you_mean("conectivity", ["connectivity", "min_size"]), Some("connectivity"));
        assert_eq!(did_you_mean("zzz", ["gaussian", "label"]), None);
    }
}

thread_local!(static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) });

/// Runs `f`, catching a panic in it without printing it: for third-party readers that panic on
/// malformed input, where the caller turns the panic into a clear error. Panics elsewhere (other
/// threads, or after `f`) are printed by the hook in place before, as always.
pub fn catch_quietly<T>(f: impl FnOnce() -> T) -> std::thread::Result<T> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let before = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(|q| q.get()) {
                before(info)
            }
        }));
    });
    let was = QUIET.with(|q| q.replace(true));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET.with(|q| q.set(was));
    r
}
