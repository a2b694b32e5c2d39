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
//!   against, or how; the file system; FIPS), or whose client identity differs (the
//!   client certificate's access point, or its IAM credentials: on or off, and from
//!   which source), or one no state file of ours describes: the mount would silently
//!   use another identity than it asked for (EFS authorizes the connection, not the
//!   mount), so it is unmounted again and refused.
//!
//! docs/watchdog.md says why, and what users do about a refusal.

use std::path::Path;

use efs_config::mounts::KernelView;
use efs_config::state::{self, ClientCertRecord, MountState};
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

/// How two mounts' client certificates differ in what EFS authorizes by (access point,
/// IAM), as (what, here, there).
fn client_identity_difference(
    ours: Option<&ClientCertRecord>,
    theirs: Option<&ClientCertRecord>,
) -> Vec<(&'static str, String, String)> {
    let ap = |c: Option<&ClientCertRecord>| {
        c.and_then(|c| c.access_point.clone())
            .unwrap_or_else(|| "none".into())
    };
    let iam = |c: Option<&ClientCertRecord>| match c.and_then(|c| c.iam_source.as_deref()) {
        Some(source) => format!("on ({source})"),
        None => "off".into(),
    };
    let mut d = Vec::new();
    if ap(ours) != ap(theirs) {
        d.push(("access point (accesspoint)", ap(ours), ap(theirs)));
    }
    if iam(ours) != iam(theirs) {
        d.push(("IAM (iam, credentials from)", iam(ours), iam(theirs)));
    }
    d
}

fn describe(diffs: &[(&'static str, String, String)]) -> String {
    diffs
        .iter()
        .map(|(what, here, there)| format!("{what}: {here} here, {there} there"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Whether the mount `ours` may ride on the tunnel of `theirs`: `None` if it may, else
/// the one-line refusal.
fn refusal(ours: &MountState, theirs: &MountState) -> Option<String> {
    let client = client_identity_difference(ours.client_cert.as_ref(), theirs.client_cert.as_ref());
    match identity_difference(&ours.cmd, &theirs.cmd) {
        Some(tls) => {
            let all = if client.is_empty() {
                tls
            } else {
                format!("{tls}; {}", describe(&client))
            };
            Some(format!(
                "{} is already mounted at {} with other TLS settings ({all}), and the kernel's NFS client sends every mount of one server over one connection, so this mount would use that mount's settings; the mount was undone. Mount with the same TLS options as {}, or unmount it first",
                theirs.fs_id, theirs.mountpoint, theirs.mountpoint
            ))
        }
        None if !client.is_empty() => Some(format!(
            "{} is already mounted at {} as another client ({}), and the kernel's NFS client sends every mount of one server over one connection, which EFS authorizes by the first mount's client certificate, so this mount would get that mount's access point and IAM identity; the mount was undone. Mount with the same accesspoint and iam options as {}, or unmount it first; to have both, mount one of them in another network namespace (-o netns=), which has an NFS client of its own",
            theirs.fs_id,
            theirs.mountpoint,
            describe(&client),
            theirs.mountpoint
        )),
        None => None,
    }
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
        Some(theirs) => match refusal(ours, &theirs) {
            None => Transport::Rides {
                port: used,
                state: Box::new(theirs),
            },
            Some(why) => Transport::Refused(why),
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

    fn cert(ap: Option<&str>, iam: Option<&str>) -> ClientCertRecord {
        ClientCertRecord {
            certificate: "/var/run/efs/x+/certificate.pem".into(),
            private_key: "/etc/amazon/efs/privateKey.pem".into(),
            common_name: "ip-10-0-0-1".into(),
            region: "us-east-1".into(),
            access_point: ap.map(str::to_string),
            iam_source: iam.map(str::to_string),
            issued: 1.0,
            not_after: 2.0,
            credentials_expire: None,
            renewed: None,
            renewal_error: None,
        }
    }

    fn mount_state(mountpoint: &str, client_cert: Option<ClientCertRecord>) -> MountState {
        MountState {
            pid: 1,
            cmd: cmd(&[]),
            files: Vec::new(),
            mount_time: 0.0,
            mountpoint: mountpoint.into(),
            service_type: state::SERVICE_TYPE_EFS.into(),
            fs_id: "fs-1".into(),
            port: 20001,
            dns_name: "fs-1.efs.us-east-1.amazonaws.com".into(),
            check_host: "fs-1.efs.us-east-1.amazonaws.com".into(),
            connect: "fs-1.efs.us-east-1.amazonaws.com:2049".into(),
            control_socket: "/var/run/efs/tunnel-20001.sock".into(),
            restarts: 0,
            unmount_time: None,
            served_by: None,
            also_serves: Vec::new(),
            client_cert,
            extra: Default::default(),
        }
    }

    const AP1: &str = "fsap-0123456789abcdef0";
    const AP2: &str = "fsap-0123456789abcdef1";

    #[test]
    fn the_same_client_identity_rides_whatever_the_certificate_file_and_times() {
        let mut other = cert(Some(AP1), Some("metadata:"));
        other.certificate = "/var/run/efs/y+/certificate.pem".into();
        other.issued = 5.0;
        let ours = mount_state("/mnt/b", Some(cert(Some(AP1), Some("metadata:"))));
        assert_eq!(refusal(&ours, &mount_state("/mnt/a", Some(other))), None);
        assert_eq!(
            refusal(&mount_state("/mnt/b", None), &mount_state("/mnt/a", None)),
            None
        );
    }

    #[test]
    fn another_access_point_or_iam_identity_is_refused_naming_both() {
        let there = mount_state("/mnt/a", Some(cert(Some(AP1), None)));
        let here = mount_state("/mnt/b", Some(cert(Some(AP2), None)));
        let why = refusal(&here, &there).unwrap();
        assert!(
            why.starts_with(&format!(
                "fs-1 is already mounted at /mnt/a as another client (access point (accesspoint): {AP2} here, {AP1} there)"
            )),
            "{why}"
        );
        assert!(why.contains("Mount with the same accesspoint and iam options as /mnt/a"));
        assert!(why.contains("-o netns="));
        assert_eq!(why.lines().count(), 1);

        // an access point here, a plain TLS mount there
        let why = refusal(
            &mount_state("/mnt/b", Some(cert(Some(AP1), None))),
            &mount_state("/mnt/a", None),
        )
        .unwrap();
        assert!(
            why.contains(&format!(
                "access point (accesspoint): {AP1} here, none there"
            )),
            "{why}"
        );

        // iam on here, off there; and from another source
        let why = refusal(
            &mount_state("/mnt/b", Some(cert(None, Some("credentials:dev")))),
            &mount_state("/mnt/a", Some(cert(None, None))),
        )
        .unwrap();
        assert!(
            why.contains("IAM (iam, credentials from): on (credentials:dev) here, off there"),
            "{why}"
        );
        let why = refusal(
            &mount_state("/mnt/b", Some(cert(None, Some("ecs:/v2/credentials/b")))),
            &mount_state("/mnt/a", Some(cert(None, Some("ecs:/v2/credentials/a")))),
        )
        .unwrap();
        assert!(
            why.contains("on (ecs:/v2/credentials/b) here, on (ecs:/v2/credentials/a) there"),
            "{why}"
        );
    }

    #[test]
    fn tls_and_client_differences_are_named_together() {
        let mut there = mount_state("/mnt/a", None);
        there.cmd = cmd(&["--fips"]);
        let here = mount_state("/mnt/b", Some(cert(Some(AP1), None)));
        let why = refusal(&here, &there).unwrap();
        assert!(
            why.contains(&format!(
                "with other TLS settings (FIPS mode (fips_mode_enabled): no here, yes there; access point (accesspoint): {AP1} here, none there)"
            )),
            "{why}"
        );
    }
}
