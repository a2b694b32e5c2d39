//! One watchdog per state directory, and how anyone tells whether one runs. Two
//! watchdogs over one `/var/run/efs` (the host's package plus the EFS CSI driver's own,
//! which shares the directory as a hostPath: CSI issue #1022, efs-utils #265) would
//! restart, adopt and tear down the same tunnels and fight over their state. So the
//! watchdog holds an exclusive `flock` on the state directory itself for as long as it
//! runs ([`acquire`]), and a second one exits at once with [`EXIT_ALREADY_RUNNING`],
//! before it reads or writes any state or touches a tunnel.
//!
//! It lives here, not in the watchdog, because the lock is a fact two programs share:
//! the watchdog takes it, and `mount.efs` ([`is_held`]) asks whether it is taken; both
//! sides of the `flock` stay in one file, and `mount.efs` needs nothing of the watchdog.
//!
//! Why the directory and not a lock file in it: nothing is added to the directory, so
//! there is no file to leave behind, unlink or race over, and every process that sees the
//! directory (another mount namespace, another container) sees the same lock. The
//! descriptor is opened O_CLOEXEC (as std opens every file): tunnels the watchdog starts
//! never inherit it, so a watchdog's death always frees the lock, even when its tunnels
//! live on. `lslocks` shows the holder.
//!
//! `mount.efs` (and anyone else) asks [`is_held`] whether a watchdog runs: it takes a
//! shared lock for an instant, which a watchdog starting at that instant would find
//! taken; [`acquire`] therefore tries for [`ACQUIRE_TRIES`] x [`ACQUIRE_PAUSE`] before it
//! concludes that another watchdog holds it. That also paces a supervisor that restarts
//! the watchdog in a loop with no backoff (the CSI driver does) to ten starts a second.

use std::fmt;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::state;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// The exit code of a watchdog that found another one running (not one of the LSB
/// codes 0-7 systemd gives a meaning to).
pub const EXIT_ALREADY_RUNNING: u8 = 8;

pub const ACQUIRE_TRIES: u32 = 5;
pub const ACQUIRE_PAUSE: Duration = Duration::from_millis(20);

/// Held while the watchdog runs; dropping it (or the process's death) frees the lock.
#[derive(Debug)]
pub struct WatchdogLock {
    _dir: Flock<File>,
}

/// Why the lock was not taken.
#[derive(Debug)]
pub enum LockError {
    /// Another watchdog holds it; its pid when this process can see it.
    Held { dir: PathBuf, pid: Option<i32> },
    /// The state directory cannot be created, opened or locked.
    Unusable { dir: PathBuf, error: String },
}

impl fmt::Display for LockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockError::Held { dir, pid } => {
                let who = match pid {
                    Some(pid) => format!("another amazon-efs-mount-watchdog (pid {pid})"),
                    None => {
                        "another amazon-efs-mount-watchdog (in another container or on the host)"
                            .to_string()
                    }
                };
                write!(
                    f,
                    "{who} already watches the tunnels of {}; exiting without touching them (exit code {EXIT_ALREADY_RUNNING}). Run only one watchdog per host",
                    dir.display()
                )
            }
            LockError::Unusable { dir, error } => write!(
                f,
                "cannot lock the state directory {}: {error}",
                dir.display()
            ),
        }
    }
}

impl std::error::Error for LockError {}

/// Takes the watchdog's lock on `state_dir`, creating the directory (with `mode`) only if
/// it does not exist: a second watchdog changes nothing, not even the directory's mode.
pub fn acquire(state_dir: &Path, mode: u32) -> Result<WatchdogLock, LockError> {
    let unusable = |error: String| LockError::Unusable {
        dir: state_dir.to_path_buf(),
        error,
    };
    if !state_dir.is_dir() {
        state::ensure_state_dir(state_dir, mode).map_err(|e| unusable(e.to_string()))?;
    }
    let mut file = File::open(state_dir).map_err(|e| unusable(e.to_string()))?;
    for attempt in 1..=ACQUIRE_TRIES {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(WatchdogLock { _dir: lock }),
            Err((f, Errno::EWOULDBLOCK)) if attempt < ACQUIRE_TRIES => {
                file = f;
                std::thread::sleep(ACQUIRE_PAUSE);
            }
            Err((_, Errno::EWOULDBLOCK)) => {
                return Err(LockError::Held {
                    dir: state_dir.to_path_buf(),
                    pid: holder_pid(state_dir),
                })
            }
            Err((_, e)) => return Err(unusable(e.to_string())),
        }
    }
    Err(unusable("no attempt was made".into()))
}

/// Whether a watchdog holds the lock on `state_dir`; `None` when that cannot be told (no
/// such directory, no permission).
pub fn is_held(state_dir: &Path) -> Option<bool> {
    let file = File::open(state_dir).ok()?;
    match Flock::lock(file, FlockArg::LockSharedNonblock) {
        Ok(_probe) => Some(false), // released at once, when `_probe` drops
        Err((_, Errno::EWOULDBLOCK)) => Some(true),
        Err(_) => None,
    }
}

/// The pid of the process holding an exclusive `flock` on `dir`, from `/proc/locks`
/// (`1: FLOCK  ADVISORY  WRITE 1234 00:19:5678 0 EOF`, device in hex, inode in decimal).
/// None when the holder is outside this process's pid namespace (the kernel hides it).
pub fn holder_pid(dir: &Path) -> Option<i32> {
    let meta = std::fs::metadata(dir).ok()?;
    let dev = meta.dev();
    let id = format!(
        "{:02x}:{:02x}:{}",
        nix::sys::stat::major(dev),
        nix::sys::stat::minor(dev),
        meta.ino()
    );
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    holder_in(&locks, &id)
}

fn holder_in(locks: &str, id: &str) -> Option<i32> {
    locks.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // "->" marks a waiter, which shifts the fields by one.
        let f = if f.get(1) == Some(&"->") {
            &f[1..]
        } else {
            &f[..]
        };
        match f {
            [_, "FLOCK", _, "WRITE", pid, file, ..] if *file == id => pid.parse().ok(),
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_holder_in_proc_locks() {
        let locks = "1: POSIX  ADVISORY  WRITE 99 00:19:5678 0 EOF\n\
                     2: FLOCK  ADVISORY  READ 98 00:19:5678 0 EOF\n\
                     3: FLOCK  ADVISORY  WRITE 1234 00:19:5678 0 EOF\n\
                     3: -> FLOCK  ADVISORY  WRITE 4321 00:19:5678 0 EOF\n\
                     4: FLOCK  ADVISORY  WRITE 77 00:19:9999 0 EOF\n";
        assert_eq!(holder_in(locks, "00:19:5678"), Some(1234));
        assert_eq!(holder_in(locks, "00:19:1"), None);
        assert_eq!(holder_in("garbage\n\n", "00:19:1"), None);
    }

    #[test]
    fn one_holder_at_a_time_and_a_probe_sees_it() {
        let dir = std::env::temp_dir().join(format!("efs-lock-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(is_held(&dir), None, "no directory: cannot tell");
        let first = acquire(&dir, 0o750).unwrap();
        assert_eq!(is_held(&dir), Some(true));
        match acquire(&dir, 0o750) {
            Err(LockError::Held { pid, .. }) => {
                assert_eq!(pid, Some(std::process::id() as i32))
            }
            other => panic!("{other:?}"),
        }
        drop(first);
        assert_eq!(is_held(&dir), Some(false));
        let again = acquire(&dir, 0o750).unwrap();
        drop(again);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
