//! `mount.efs` (built as `mount-efs`, installed as `/sbin/mount.efs`): a thin shell around
//! [`efs_mount_helper::run`].

use std::process::ExitCode;

use efs_mount_helper::args::{self, Parsed, USAGE};

fn main() -> ExitCode {
    // util-linux passes the fstab bytes as they are; a Latin-1 mountpoint is not UTF-8.
    let argv: Vec<String> = match std::env::args_os()
        .skip(1)
        .map(std::ffi::OsString::into_string)
        .collect()
    {
        Ok(argv) => argv,
        Err(bad) => {
            eprintln!(
                "mount.efs: argument {:?} is not valid UTF-8; the device, mountpoint and options must be UTF-8 (rename the mountpoint, or mount at a UTF-8 path and bind-mount it)",
                bad.to_string_lossy()
            );
            return ExitCode::from(1);
        }
    };
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
