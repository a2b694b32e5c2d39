//! `optimize_readahead`: since Linux 5.4 an NFS mount's read-ahead defaults to 128 KiB,
//! which throttles sequential reads from EFS; amazon-efs-utils sets it to 15 x rsize
//! (15 MiB for the default 1 MiB rsize), and so do we. The mount's backing device is found
//! from `stat(mountpoint).st_dev`; a failure is logged, never fatal.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use log::{info, warn};

pub fn tune(sysfs_bdi: &Path, mountpoint: &Path, nfs_opts: &str) {
    let rsize: u64 = nfs_opts
        .split(',')
        .find_map(|o| o.strip_prefix("rsize="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_048_576);
    let kb = 15 * rsize / 1024;
    let dev = match std::fs::metadata(mountpoint) {
        Ok(m) => m.dev(),
        Err(e) => {
            warn!(
                "read-ahead not tuned: cannot stat {}: {e}",
                mountpoint.display()
            );
            return;
        }
    };
    let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    let file = sysfs_bdi
        .join(format!("{major}:{minor}"))
        .join("read_ahead_kb");
    match std::fs::write(&file, format!("{kb}\n")) {
        Ok(()) => info!("read_ahead_kb of {} set to {kb}", mountpoint.display()),
        Err(e) => warn!("read-ahead not tuned: cannot write {}: {e}", file.display()),
    }
}
