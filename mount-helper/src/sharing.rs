//! After `mount.nfs4`: which tunnel does the kernel really send the new mount through?
//!
//! The kernel's NFSv4.1 client puts a mount of a server it already has a client for on
//! that client's transport (client ID trunking: same server owner), whatever `port=` the
//! mount asked for. The tunnel `mount.efs` just started then never carries a byte, and
//! the mount depends on another mount's tunnel. [`after_mount`] reads the NFS client's
//! tables (`efs_config::mounts`) and decides:
//! * the kernel uses the new tunnel: nothing to do;
//! * it uses another mount's tunnel with the same TLS identity: the new mount rides on
//!   it. The new tunnel would stay idle for as long as the mount lives (a superblock
//!   never changes client), so it is stopped, and the state records `served_by`; the
//!   watchdog keeps the serving tunnel alive while any mount rides on it;
//! * it uses a tunnel whose TLS identity differs (what the server certificate is checked
//!   against, or how; the file system; FIPS; later the client certificate's IAM identity
//!   and access point), or one no state file of ours describes: the mount would silently
//!   use another identity than it asked for, so it is unmounted again and refused.
//!
//! docs/watchdog.md says why, and what users do about a refusal.

use std::path::Path;

use efs_config::mounts::KernelView;
use efs_config::state::{self, MountState};
use efs_config::Config;
use efs_tunnel_contract::TunnelCommand;
use log::{debug, warn};

/// Where the kernel put a new mount.
#[derive(Debug)]
pub enum Transport {
    /// Its own tunnel (or the kernel's tables cannot tell).
    Own,
    /// The tunnel of the mount `state`, on `port`, with the same TLS identity.
    Rides { port: u16, state: Box<MountState> },
    /// A tunnel it must not use: why, as the one-line error.
    Refused(String),
}

/// How two recorded tunnel command lines differ in TLS identity, if they do (see
/// [`efs_tunnel_contract::command::TlsIdentity`]).
fn identity_difference(ours: &[String], theirs: &[String]) -> Option<String> {
    let (ours, theirs) = match (
        TunnelCommand::from_recorded(ours),
        TunnelCommand::from_recorded(theirs),
    ) {
        (Ok(a), Ok(b)) => (a.tls_identity(), b.tls_identity()),
        _ => return Some("its TLS settings cannot be read".into()),
    };
    let diffs: Vec<String> = ours
        .differences(&theirs)
        .into_iter()
        .map(|(what, here, there)| format!("{what}: {here} here, {there} there"))
        .collect();
    (!diffs.is_empty()).then(|| diffs.join("; "))
}

/// Finds out which tunnel carries the mount at `mountpoint` that `ours` describes.
pub fn after_mount(cfg: &Config, mountpoint: &str, ours: &MountState) -> Transport {
    let view = match KernelView::read(&cfg.paths.mountinfo, &cfg.paths.nfsfs) {
        Ok(v) => v,
        Err(e) => {
            warn!("cannot tell which connection the kernel gave this mount: {e}");
            return Transport::Own;
        }
    };
    let Some(used) = view
        .local_mount_at(mountpoint)
        .and_then(|m| view.transport_port(m))
    else {
        debug!("{mountpoint} is not in the mount table as a tunnel mount");
        return Transport::Own;
    };
    if used == ours.port {
        return Transport::Own;
    }
    match serving_state(&cfg.paths.state_dir, used) {
        None => Transport::Refused(format!(
            "the kernel's NFS client put this mount of {} on its existing connection through 127.0.0.1:{used}, which is not a tunnel of this efs-utils, so its encryption and identity are unknown; the mount was undone. Unmount what uses port {used} first",
            ours.fs_id
        )),
        Some(theirs) => match identity_difference(&ours.cmd, &theirs.cmd) {
            None => Transport::Rides {
                port: used,
                state: Box::new(theirs),
            },
            Some(diff) => Transport::Refused(format!(
                "{} is already mounted at {} with other TLS settings ({diff}), and the kernel's NFS client sends every mount of one server over one connection, so this mount would use that mount's settings; the mount was undone. Mount with the same TLS options as {}, or unmount it first",
                theirs.fs_id, theirs.mountpoint, theirs.mountpoint
            )),
        },
    }
}

/// The state of the mount whose own tunnel listens on `port`.
fn serving_state(dir: &Path, port: u16) -> Option<MountState> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| state::is_state_file_name(&e.file_name().to_string_lossy()))
        .filter_map(|e| MountState::read(&e.path()).ok())
        .find(|st| st.port == port && st.served_by.is_none())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(extra: &[&str]) -> Vec<String> {
        let mut c: Vec<String> = [
            "/usr/bin/efs-tunnel",
            "--detach",
            "--connect",
            "fs-1.efs.us-east-1.amazonaws.com:2049",
            "--check-host",
            "fs-1.efs.us-east-1.amazonaws.com",
            "--fs-id",
            "fs-1",
            "--control",
            "/var/run/efs/tunnel-20001.sock",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        c.extend(extra.iter().map(|s| s.to_string()));
        c
    }

    #[test]
    fn same_identity_whatever_the_control_socket_and_target_address() {
        let mut other = cmd(&[]);
        other[3] = "10.0.0.5:2049".into();
        other[9] = "/var/run/efs/tunnel-20002.sock".into();
        assert_eq!(identity_difference(&cmd(&[]), &other), None);
    }

    #[test]
    fn a_different_ca_file_or_a_switched_off_check_is_another_identity() {
        let d = identity_difference(&cmd(&["--cafile", "/a.pem"]), &cmd(&[])).unwrap();
        assert_eq!(
            d,
            "CA file (cafile, stunnel_cafile): /a.pem here, none there"
        );
        let d = identity_difference(&cmd(&["--fips"]), &cmd(&["--insecure-no-hostname-check"]))
            .unwrap();
        assert_eq!(
            d,
            "FIPS mode (fips_mode_enabled): yes here, no there; \
             no hostname check (stunnel_check_cert_hostname = false): no here, yes there"
        );
        let d = identity_difference(&cmd(&[]), &cmd(&["--from-the-future"])).unwrap();
        assert_eq!(d, "its TLS settings cannot be read");
    }
}
