//! Starting the watchdog after a TLS mount, so that a dead tunnel is restarted. Under
//! systemd (its runtime directory exists, as sd_booted(3) checks) the unit is started
//! without waiting (`systemctl start --no-block`) if it is not active; elsewhere (a
//! container, another init) the operator is told once, and the mount goes on.

use std::process::{Command, Stdio};

use efs_config::Config;
use log::{info, warn};

pub const UNIT: &str = "amazon-efs-mount-watchdog";

pub fn ensure_running(cfg: &Config) {
    let paths = &cfg.paths;
    if !paths.systemd_run_dir.is_dir() {
        let msg = format!(
            "Could not start {UNIT}: systemd is not running here. Start {UNIT} yourself, so that tunnels are restarted if they die"
        );
        warn!("{msg}");
        eprintln!("{msg}");
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
