//! `mount.efs` (built as `mount-efs`, installed as `/sbin/mount.efs`): a thin shell around
//! [`efs_mount_helper::run`].

use std::process::ExitCode;

use efs_mount_helper::args::{self, Parsed, USAGE};

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let inv = match args::parse(&argv) {
        Ok(Parsed::Help) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Ok(Parsed::Version) => {
            println!("mount.efs Version: {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Ok(Parsed::Mount(inv)) => inv,
        Err(usage) => {
            eprintln!("{usage}");
            return ExitCode::from(1);
        }
    };
    if !nix::unistd::geteuid().is_root() {
        eprintln!("only root can run this command");
        return ExitCode::from(1);
    }
    match efs_mount_helper::run(&inv) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            eprintln!("{e}");
            ExitCode::from(e.exit_code())
        }
    }
}
