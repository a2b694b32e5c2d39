//! The health check, on a thread of its own so that a tunnel that hangs can never stall
//! the main loop: every `stunnel_health_check_interval_min` minutes it asks each tunnel's
//! control socket for its status, with a timeout, and reports the ones that do not answer;
//! the main loop then kills them, and their death restarts them. A tunnel that answers is
//! healthy even if its mount target is unreachable: that is the network's problem, and a
//! restart would not fix it.
//!
//! The settings are shared with the main loop, which replaces them on SIGHUP: a new
//! interval, timeout or on/off takes effect within a second, without a restart.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use efs_config::Config;

/// (state file, control socket, pid) of each running tunnel.
pub type Targets = Arc<Mutex<Vec<(PathBuf, PathBuf, i32)>>>;

/// A tunnel gets at most this long to answer, whatever the configuration says: the
/// thread asks tunnels one after another, and a stuck one must not delay the rest by
/// minutes.
pub const MAX_ANSWER_TIME: Duration = Duration::from_secs(30);

/// What the health thread does, from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub enabled: bool,
    pub interval: Duration,
    pub timeout: Duration,
}

impl Settings {
    pub fn from_config(cfg: &Config) -> Settings {
        let w = &cfg.watchdog;
        Settings {
            enabled: w.stunnel_health_check_enabled,
            interval: Duration::from_secs(w.stunnel_health_check_interval_min.saturating_mul(60)),
            timeout: Duration::from_secs(w.stunnel_health_check_command_timeout_sec)
                .min(MAX_ANSWER_TIME),
        }
    }
}

pub type SharedSettings = Arc<Mutex<Settings>>;

pub fn spawn(
    settings: SharedSettings,
    targets: Targets,
    report: Sender<(PathBuf, i32)>,
    mut wake: UnixStream,
) {
    let current = move || settings.lock().map(|s| *s).ok();
    let spawned = std::thread::Builder::new()
        .name("health".into())
        .spawn(move || {
            let mut last = Instant::now();
            loop {
                std::thread::sleep(Duration::from_secs(1));
                let Some(s) = current() else { return };
                if !s.enabled || last.elapsed() < s.interval {
                    continue;
                }
                last = Instant::now();
                let list = targets.lock().map(|t| t.clone()).unwrap_or_default();
                for (state, control, pid) in list {
                    if let Err(e) = efs_tunnel_contract::query_status(&control, s.timeout) {
                        log::warn!("health check of pid {pid} ({}): {e}", control.display());
                        if report.send((state, pid)).is_err() {
                            return;
                        }
                        let _ = wake.write_all(b"!");
                    }
                }
            }
        });
    if let Err(e) = spawned {
        log::warn!("cannot start the health check thread: {e}");
    }
}
