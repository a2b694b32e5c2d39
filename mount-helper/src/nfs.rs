//! Running `mount.nfs4`, with amazon-efs-utils' retry rules: with `retry_nfs_mount_command`
//! on and N tries, tries 1..N-1 are killed after `retry_nfs_mount_command_timeout_sec` and
//! retried, as are failures whose message says "reset by peer"; the last try runs without a
//! time limit, and its exit code is what `mount.efs` exits with. Between tries the helper
//! waits 1.5^i seconds plus up to one second of jitter.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use log::{info, warn};

/// How `mount.nfs4` ended.
#[derive(Debug)]
pub enum NfsError {
    Spawn(String),
    /// Its exit code (passed through) and what it printed on stderr.
    Failed {
        code: i32,
        stderr: String,
    },
}

/// Retry policy from the config.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    pub enabled: bool,
    pub count: u32,
    pub timeout: Duration,
}

/// Runs `mount_nfs source mountpoint -o options`.
pub fn mount(
    mount_nfs: &Path,
    source: &str,
    mountpoint: &str,
    options: &str,
    retry: Retry,
) -> Result<(), NfsError> {
    let tries = if retry.enabled { retry.count.max(1) } else { 1 };
    for attempt in 1..=tries {
        let last = attempt == tries;
        let limit = (!last).then_some(retry.timeout);
        let limit_text = limit
            .map(|l| format!(" with {} sec time limit", l.as_secs()))
            .unwrap_or_default();
        info!(
            "Executing: \"{} {source} {mountpoint} -o {options}\"{limit_text}",
            mount_nfs.display()
        );
        let why = match run_once(mount_nfs, source, mountpoint, options, limit)? {
            Outcome::Mounted => return Ok(()),
            Outcome::TimedOut => format!("timeout after {} sec", retry.timeout.as_secs()),
            Outcome::Failed { code, stderr } => {
                if last || !stderr.contains("reset by peer") {
                    return Err(NfsError::Failed { code, stderr });
                }
                stderr.trim().to_string()
            }
        };
        let wait = 1.5f64.powi(attempt as i32 - 1)
            + f64::from(crate::launch::random_u32() % 1000) / 1000.0;
        let message = format!("Mount attempt {attempt}/{tries} failed due to {why}, wait {wait:.0} sec before next attempt.");
        warn!("{message}");
        eprintln!("{message}");
        std::thread::sleep(Duration::from_secs_f64(wait));
    }
    Err(NfsError::Spawn("no mount attempt was made".into()))
}

enum Outcome {
    Mounted,
    TimedOut,
    Failed { code: i32, stderr: String },
}

fn run_once(
    mount_nfs: &Path,
    source: &str,
    mountpoint: &str,
    options: &str,
    limit: Option<Duration>,
) -> Result<Outcome, NfsError> {
    let mut child = Command::new(mount_nfs)
        .args([source, mountpoint, "-o", options])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            NfsError::Spawn(format!(
                "cannot run {}: {e}; install nfs-common (Debian, Ubuntu) or nfs-utils",
                mount_nfs.display()
            ))
        })?;
    let mut stderr_pipe = child.stderr.take();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(p) = stderr_pipe.as_mut() {
            let _ = p.read_to_string(&mut s);
        }
        s
    });
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) => {}
            Err(e) => return Err(NfsError::Spawn(e.to_string())),
        }
        if limit.is_some_and(|l| start.elapsed() > l) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = reader.join().unwrap_or_default();
    Ok(match status {
        None => Outcome::TimedOut,
        Some(s) if s.success() => Outcome::Mounted,
        Some(s) => Outcome::Failed {
            code: s.code().unwrap_or(32),
            stderr,
        },
    })
}
