//! Making sure a watchdog runs after a TLS mount, so that a dead tunnel is restarted.
//! A watchdog that holds its lock on the state directory (see `efs_config::watchdog_lock`) runs,
//! whoever started it (systemd, the EFS CSI driver, an operator): then nothing is done.
//! Otherwise, under systemd (its runtime directory exists, as sd_booted(3) checks) the
//! unit is started without waiting (`systemctl start --no-block`) if it is not active.
//! Elsewhere (a container, another init) `mount.efs` cannot start it: one line in
//! `mount.log` says so and how to run it, nothing on the terminal, and the mount goes on.

use std::process::{Command, Stdio};

use efs_config::Config;
use log::{debug, info, warn};

pub const UNIT: &str = "amazon-efs-mount-watchdog";

pub fn ensure_running(cfg: &Config) {
    let paths = &cfg.paths;
    if efs_config::watchdog_lock::is_held(&paths.state_dir) == Some(true) {
        debug!(
            "{UNIT} runs (it holds the lock on {})",
            paths.state_dir.display()
        );
        return;
    }
    if !paths.systemd_run_dir.is_dir() {
        warn!(
            "{UNIT} is not running, and without systemd mount.efs does not start it: a tunnel that dies is not restarted until one runs. Run {UNIT} as root in the background (from the container's entrypoint or your init system; one per host, a second one exits)"
        );
        return;
    }
    let systemctl = |args: &[&str]| {
        Command::new(&paths.systemctl)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
    };
    match systemctl(&["is-active", "--quiet", UNIT]) {
        Ok(s) if s.success() => {}
        _ => match systemctl(&["start", "--no-block", UNIT]) {
            Ok(s) if s.success() => info!("Started {UNIT}"),
            Ok(s) => warn!(
                "systemctl start {UNIT} failed ({s}); tunnels will not be restarted until it runs"
            ),
            Err(e) => warn!(
                "cannot run {}: {e}; start {UNIT} yourself",
                paths.systemctl.display()
            ),
        },
    }
}
