//! What the fuzz targets share: splitting one input into several, a private scratch
//! directory, and the process setup libFuzzer's own `main` skips (Rust's runtime would
//! ignore SIGPIPE before `main`; libFuzzer's C `main` does not, so a write to a socket the
//! other side closed would kill the run instead of returning EPIPE).
//!
//! Harness code: it may unwrap its own setup, never the input.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Splits `data` at NUL bytes into at most `max` parts (the last keeps any further NULs).
pub fn split_nul(data: &[u8], max: usize) -> Vec<&[u8]> {
    data.splitn(max, |b| *b == 0).collect()
}

/// Like [`split_nul`], as text; `None` if any part is not UTF-8.
pub fn split_nul_str(data: &[u8], max: usize) -> Option<Vec<&str>> {
    split_nul(data, max)
        .into_iter()
        .map(|p| std::str::from_utf8(p).ok())
        .collect()
}

static SCRATCH: OnceLock<PathBuf> = OnceLock::new();

/// A directory of this process's own, made once and removed when libFuzzer exits normally
/// (after a crash it stays, next to the crash's input).
pub fn scratch_dir() -> &'static Path {
    SCRATCH.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("efs-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch directory");
        // SAFETY: registers a plain function with no arguments, as atexit(3) requires.
        unsafe {
            libc::atexit(remove_scratch);
        }
        dir
    })
}

extern "C" fn remove_scratch() {
    if let Some(dir) = SCRATCH.get() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Writes to a closed socket return EPIPE instead of killing the process.
pub fn ignore_sigpipe() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        // SAFETY: setting a signal's disposition to SIG_IGN has no handler to be unsafe in.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        }
    });
}

/// Seconds since the epoch, as the product's status code computes it.
pub fn unix_now() -> i64 {
    efs_tunnel::stats::unix_now()
}
