//! The client certificate of a mount with `iam` or `accesspoint`: EFS authorizes a TLS
//! client by that certificate alone (its access point, its SigV4-signed credentials), so
//! the mount must have it before its tunnel connects.
//!
//! The work is `efs_client_cert`'s, which also renews it (`efs-renew-cert`, run by the
//! watchdog): one issuer and one writer for every certificate. This module is the
//! mount's side of it: [`prepare`] turns the mount's options into an
//! [`efs_client_cert::MountRequest`] and a failure into the mount's one line; [`write`]
//! puts the PEM at `<state dir>/<state name>+/certificate.pem` once the state name is
//! known (directory 0700, file 0600, replaced whole, never through a symlink).

use std::path::Path;

use efs_config::Config;
use efs_iam::credentials::Request;

use crate::options::EfsOptions;
use crate::MountError;

pub use efs_client_cert::{common_name, endpoints, Prepared, EFS_UTILS_VERSION};

/// The host key, the credentials (with `iam`) and the signed certificate of a mount with
/// `iam` or `accesspoint`; `None` for any other mount. Runs before anything of the mount
/// exists, in the helper's own network namespace (where the watchdog renews).
pub fn prepare(
    cfg: &Config,
    opts: &EfsOptions,
    fs_id: &str,
    region: &str,
) -> Result<Option<Prepared>, MountError> {
    if !opts.client_cert() {
        return Ok(None);
    }
    let req = efs_client_cert::MountRequest {
        fs_id,
        region,
        access_point: opts.accesspoint.as_deref(),
        iam: opts.iam.then_some(Request {
            awscredsuri: opts.awscredsuri.as_deref(),
            awsprofile: opts.awsprofile.as_deref(),
            rolearn: opts.rolearn.as_deref(),
            jwtpath: opts.jwtpath.as_deref(),
            region,
        }),
    };
    efs_client_cert::prepare(cfg, &req)
        .map(Some)
        .map_err(|e| MountError::Failed(e.mount_message(fs_id)))
}

/// Writes `pem` at `path` (`state::client_cert_path`): its directory 0700 (made here, or
/// a leftover real directory of a mount that was never torn down, whose stale
/// certificate is replaced), the file 0600, through `efs_client_cert`'s one writer.
pub fn write(path: &Path, pem: &str) -> std::io::Result<()> {
    use efs_client_cert::WriteError;
    let state_dir = path
        .parent()
        .and_then(Path::parent)
        .unwrap_or(Path::new(""));
    efs_client_cert::write_new(state_dir, path, pem).map_err(|e| match e {
        WriteError::Io { error, .. } => error,
        other => std::io::Error::other(other.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mount_writes_through_the_one_writer() {
        let d = std::env::temp_dir().join(format!("efs-mount-cert-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let path = d.join("fs-1.mnt.20049+").join("certificate.pem");
        write(&path, "PEM").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "PEM");
        // a symlink where the directory goes: refused, named
        let link = d.join("a+");
        std::os::unix::fs::symlink(&d, &link).unwrap();
        let e = write(&link.join("certificate.pem"), "PEM").unwrap_err();
        assert!(e.to_string().contains("is not a directory"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
