//! `amazon-efs-mount-watchdog`: a thin shell around [`efs_watchdog::daemon`]. Before it
//! logs, reads state or touches a tunnel it takes the one-watchdog lock
//! ([`efs_config::watchdog_lock`]): a second watchdog exits at once with its own exit code.

use std::process::ExitCode;

use efs_config::watchdog_lock as lock;
use efs_config::{logging, Config};
use log::{error, info, warn};

const USAGE: &str = "Usage: amazon-efs-mount-watchdog [--version] [-h|--help]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!(
            "{USAGE}\nRestarts dead TLS tunnels of EFS mounts and removes them after unmount."
        );
        return ExitCode::SUCCESS;
    }
    if args.iter().any(|a| a == "--version") {
        println!(
            "amazon-efs-mount-watchdog Version: {}",
            env!("CARGO_PKG_VERSION")
        );
        return ExitCode::SUCCESS;
    }
    if let Some(other) = args.first() {
        eprintln!("unexpected argument \"{other}\"\n{USAGE}");
        return ExitCode::from(1);
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("only root can run amazon-efs-mount-watchdog");
        return ExitCode::from(1);
    }
    let cfg = match Config::load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("amazon-efs-mount-watchdog: {e}");
            return ExitCode::from(1);
        }
    };
    // Held until main returns. Only stderr on refusal: a supervisor restarting us in a
    // loop must not fill the log.
    let _lock = match cfg.watchdog.enabled {
        false => None,
        true => match lock::acquire(&cfg.paths.state_dir, cfg.state_file_dir_mode) {
            Ok(l) => Some(l),
            Err(e @ lock::LockError::Held { .. }) => {
                eprintln!("amazon-efs-mount-watchdog: {e}");
                return ExitCode::from(lock::EXIT_ALREADY_RUNNING);
            }
            Err(e) => {
                eprintln!("amazon-efs-mount-watchdog: {e}");
                return ExitCode::from(1);
            }
        },
    };
    if let Err(e) = logging::init(cfg.log_spec("mount-watchdog.log", true)) {
        eprintln!("amazon-efs-mount-watchdog: cannot open its log: {e}; logging to stderr only");
        let _ = logging::init(logging::LogSpec {
            level: cfg.logging_level,
            file: None,
            stderr: true,
        });
    }
    for w in &cfg.warnings {
        warn!("{w}");
    }
    if !cfg.watchdog.enabled {
        info!(
            "amazon-efs-mount-watchdog is not enabled ([mount-watchdog] enabled = false); exiting"
        );
        efs_watchdog::notify::send("READY=1\nSTATUS=disabled by configuration");
        return ExitCode::SUCCESS;
    }
    info!(
        "amazon-efs-mount-watchdog, version {}, is enabled and started",
        env!("CARGO_PKG_VERSION")
    );
    match efs_watchdog::daemon::Daemon::new(cfg).and_then(|d| d.run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::from(1)
        }
    }
}
