//! The health check, on a thread of its own so that a tunnel that hangs can never stall
//! the main loop: every `stunnel_health_check_interval_min` minutes it asks each tunnel's
//! control socket for its status, with a timeout, and reports the ones that do not answer;
//! the main loop then kills them, and their death restarts them. A tunnel that answers is
//! healthy even if its mount target is unreachable: that is the network's problem, and a
//! restart would not fix it.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use efs_config::Config;

type Targets = Arc<Mutex<Vec<(PathBuf, PathBuf, i32)>>>;

pub fn spawn(cfg: &Config, targets: Targets, report: Sender<(PathBuf, i32)>, mut wake: UnixStream) {
    if !cfg.watchdog.stunnel_health_check_enabled {
        return;
    }
    let interval = Duration::from_secs(cfg.watchdog.stunnel_health_check_interval_min * 60);
    let timeout = Duration::from_secs(
        cfg.watchdog
            .stunnel_health_check_command_timeout_sec
            .min(30),
    );
    let spawned = std::thread::Builder::new()
        .name("health".into())
        .spawn(move || loop {
            std::thread::sleep(interval);
            let list = targets.lock().map(|t| t.clone()).unwrap_or_default();
            for (state, control, pid) in list {
                if let Err(e) = efs_tunnel_contract::query_status(&control, timeout) {
                    log::warn!("health check of pid {pid} ({}): {e}", control.display());
                    if report.send((state, pid)).is_err() {
                        return;
                    }
                    let _ = wake.write_all(b"!");
                }
            }
        });
    if let Err(e) = spawned {
        log::warn!("cannot start the health check thread: {e}");
    }
}
