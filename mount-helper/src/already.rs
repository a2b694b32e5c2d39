//! Is this mount already there? `mount -a` run twice (cloud-init, config management)
//! calls `mount.efs` again for every fstab line: util-linux cannot tell that
//! `fs-12345678:/ /mnt/efs` is mounted, because the kernel shows the mount as
//! `127.0.0.1:/`. Without this check a second tunnel would start and a second NFS mount
//! would be stacked on the first.
//!
//! A mountpoint counts as already mounted when the topmost NFS mount at it goes to a
//! local tunnel whose state file (found by the mount's `port=`) records the same file
//! system, and the mount's path is the one asked for. Anything else at that mountpoint
//! (another file system, plain NFS, a port no state file describes, another path) is
//! mounted over as before. When the mount table or the state directory cannot be read,
//! nothing is assumed: the mount goes ahead.

use std::path::{Path, PathBuf};

use efs_config::mounts::KernelView;
use efs_config::state::{self, MountState};
use efs_config::Config;
use log::{debug, warn};

/// The incumbent's words, printed on stdout (exit code 0).
pub fn message(mountpoint: &str) -> String {
    format!("{mountpoint} is already mounted, please run 'mount' command to verify")
}

/// The state of our tunnel that already serves `fs_id:path` at `mountpoint`, if any.
pub fn mounted(cfg: &Config, mountpoint: &str, fs_id: &str, path: &str) -> Option<MountState> {
    let view = match KernelView::read(&cfg.paths.mountinfo, &cfg.paths.nfsfs) {
        Ok(v) => v,
        Err(e) => {
            warn!(
                "cannot read the mount table {} ({e}); not checking whether {mountpoint} is already mounted",
                cfg.paths.mountinfo.display()
            );
            return None;
        }
    };
    let wanted = absolute(mountpoint);
    // Mounts stack: the last line at a mountpoint is the one on top.
    let top = view
        .mounts
        .iter()
        .rev()
        .find(|m| absolute(&m.mountpoint) == wanted)?;
    let port = top.port.filter(|_| top.local)?;
    let mounted_path = top.source.split_once(':').map(|(_, p)| p)?;
    if !same_path(mounted_path, path) {
        debug!("{mountpoint} has {} on top, not {fs_id}:{path}", top.source);
        return None;
    }
    let entries = std::fs::read_dir(&cfg.paths.state_dir).ok()?;
    let suffix = format!(".{port}");
    entries
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            state::is_state_file_name(&name) && name.ends_with(&suffix)
        })
        .filter_map(|e| MountState::read(&e.path()).ok())
        .find(|st| st.port == port && st.fs_id == fs_id && st.unmount_time.is_none())
}

/// `/mnt/efs/`, `/mnt//efs` and `/mnt/./efs` are one mountpoint; a relative one is taken
/// from the current directory, as `mount.nfs4` takes it. Lexical only: resolving links
/// would stat the mount, which hangs if its server does not answer.
fn absolute(p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.components().collect()
    } else {
        std::env::current_dir()
            .unwrap_or_else(|_| PathBuf::from("/"))
            .join(p)
            .components()
            .collect()
    }
}

/// `/`, `/data` and `/data/` as the kernel and the user write them.
fn same_path(mounted: &str, asked: &str) -> bool {
    let trim = |s: &str| s.trim_end_matches('/').to_string();
    trim(mounted) == trim(asked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountpoints_and_paths_compare_as_written_differently() {
        assert_eq!(absolute("/mnt/efs/"), absolute("/mnt//efs"));
        assert_eq!(absolute("/mnt/./efs"), PathBuf::from("/mnt/efs"));
        assert_ne!(absolute("/mnt/efs"), absolute("/mnt/efs2"));
        assert!(same_path("/", "/"));
        assert!(same_path("/data", "/data/"));
        assert!(!same_path("/data", "/other"));
        assert_eq!(
            message("/mnt/efs"),
            "/mnt/efs is already mounted, please run 'mount' command to verify"
        );
    }
}
