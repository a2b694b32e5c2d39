//! The client certificate of a mount with `iam` or `accesspoint`: EFS authorizes a TLS
//! client by that certificate alone (its access point, its SigV4-signed credentials), so
//! the mount must have it before its tunnel connects.
//!
//! [`prepare`] runs before anything of the mount exists (no state directory entry, no
//! bound port, no tunnel): the host key (`[paths] private_key`, made once, 0400), the AWS
//! credentials in the incumbent's order (`efs_iam::credentials::obtain`, endpoints from
//! the config so tests point them at fakes), and the signed certificate. A credential
//! failure is then the mount's one-line error and nothing has to be undone. It runs in
//! the helper's own network namespace, before `netns=` is entered: where the region is
//! looked up and where the watchdog renews. [`write`]
//! puts the PEM at `<state dir>/<state name>+/certificate.pem` once the state name (which
//! holds the port) is known: directory 0700, file 0600, created exclusively, never
//! through a symlink. [`Prepared::record`] is what the state file keeps for the watchdog
//! (renewal) and for [`crate::sharing`] (the client identity two mounts must share).
//!
//! Secrets stay in `efs_iam::Credentials`, whose `Debug` and `Display` redact them; this
//! module logs the access key id and the source, never the secret or the token.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use efs_config::state::ClientCertRecord;
use efs_config::Config;
use efs_iam::credentials::{self, Endpoints, ProcessEnv, Request};
use efs_iam::{cert, CertificateRequest, HostKey, Iam, SigningTime};
use log::info;

use crate::options::EfsOptions;
use crate::MountError;

/// The version the certificate's client-info extension (7.4) names: the amazon-efs-utils
/// release whose behaviour this one reproduces (what EFS sees from its clients).
pub const EFS_UTILS_VERSION: &str = efs_iam::cert::EFS_UTILS_VERSION;

/// A signed certificate and what the state file records of it.
#[derive(Debug)]
pub struct Prepared {
    pub pem: String,
    pub common_name: String,
    pub access_point: Option<String>,
    /// `efs_iam::Source::method` of the credentials; `None` without `iam`.
    pub iam_source: Option<String>,
    pub issued: f64,
    pub not_after: f64,
    pub credentials_expire: Option<f64>,
}

impl Prepared {
    /// The state file's `client_cert`, for the certificate written at `certificate`.
    pub fn record(&self, certificate: &Path, private_key: &Path, region: &str) -> ClientCertRecord {
        ClientCertRecord {
            certificate: certificate.to_path_buf(),
            private_key: private_key.to_path_buf(),
            common_name: self.common_name.clone(),
            region: region.to_string(),
            access_point: self.access_point.clone(),
            iam_source: self.iam_source.clone(),
            issued: self.issued,
            not_after: self.not_after,
            credentials_expire: self.credentials_expire,
            renewed: None,
            renewal_error: None,
        }
    }
}

/// Seconds since the epoch, as state files record times.
fn epoch_secs(t: time::OffsetDateTime) -> f64 {
    t.unix_timestamp_nanos() as f64 / 1e9
}

/// The certificate's common name: the host name, at most 64 characters (the incumbent's
/// `socket.gethostname()[:64]`).
pub fn common_name() -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .map(|h| h.to_string_lossy().into_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    host.chars().take(cert::MAX_COMMON_NAME).collect()
}

/// The `[client-info] source` the certificate carries, if it may (1 to 100 characters;
/// otherwise the certificate says `unknown`).
fn client_source(cfg: &Config) -> Option<&str> {
    cfg.client_info
        .source
        .as_deref()
        .filter(|s| (1..=cert::MAX_SOURCE).contains(&s.chars().count()))
}

/// The credential endpoints the config names.
pub fn endpoints(cfg: &Config, region: &str) -> Endpoints {
    Endpoints {
        ecs: cfg.mount.ecs_credentials_url.clone(),
        imds: cfg.mount.instance_metadata_url.clone(),
        imds_token: !cfg.mount.disable_fetch_ec2_metadata_token,
        sts: cfg.mount.sts_endpoint_url.clone(),
        dns_name_suffix: cfg.dns_name_suffix(region).to_string(),
        ..Endpoints::default()
    }
}

/// The host key, the credentials (with `iam`) and the signed certificate of a mount with
/// `iam` or `accesspoint`; `None` for any other mount.
pub fn prepare(
    cfg: &Config,
    opts: &EfsOptions,
    fs_id: &str,
    region: &str,
) -> Result<Option<Prepared>, MountError> {
    if !opts.client_cert() {
        return Ok(None);
    }
    let key_path = &cfg.paths.private_key;
    let key = HostKey::load_or_create(key_path).map_err(|e| {
        MountError::Failed(format!(
            "cannot make the client certificate for {fs_id}: {e}"
        ))
    })?;
    let obtained = if opts.iam {
        let req = Request {
            awscredsuri: opts.awscredsuri.as_deref(),
            awsprofile: opts.awsprofile.as_deref(),
            rolearn: opts.rolearn.as_deref(),
            jwtpath: opts.jwtpath.as_deref(),
            region,
        };
        let got = credentials::obtain(&req, &ProcessEnv, &endpoints(cfg, region))
            .map_err(|e| MountError::Failed(format!("cannot mount {fs_id} with iam: {e}")))?;
        info!(
            "IAM credentials for {fs_id}: access key id {} from {}{}",
            got.credentials.access_key_id,
            got.source.method(),
            got.credentials
                .expiration
                .map(|t| format!(", expiring {t}"))
                .unwrap_or_default()
        );
        Some(got)
    } else {
        None
    };
    let now = SigningTime::now().ok_or_else(|| {
        MountError::Failed(
            "the system clock is outside 2000-2049, so no client certificate can be dated: set the clock"
                .into(),
        )
    })?;
    let common_name = common_name();
    let issued = cert::issue(
        &key,
        &CertificateRequest {
            common_name: &common_name,
            fs_id,
            access_point: opts.accesspoint.as_deref(),
            iam: obtained.as_ref().map(|o| Iam {
                credentials: &o.credentials,
                region,
                service: efs_iam::EFS_SERVICE,
            }),
            client_source: client_source(cfg),
            efs_utils_version: EFS_UTILS_VERSION,
            now,
        },
    )
    .map_err(|e| {
        MountError::Failed(format!(
            "cannot make the client certificate for {fs_id}: {e}"
        ))
    })?;
    Ok(Some(Prepared {
        pem: issued.pem,
        common_name,
        access_point: opts.accesspoint.clone(),
        iam_source: obtained.as_ref().map(|o| o.source.method()),
        issued: epoch_secs(now.datetime()),
        not_after: epoch_secs(issued.not_after),
        credentials_expire: obtained
            .as_ref()
            .and_then(|o| o.credentials.expiration)
            .map(epoch_secs),
    }))
}

/// Writes `pem` at `path` (`state::client_cert_path`): its directory 0700 (made here, or
/// a leftover real directory of a mount that was never torn down, whose stale
/// certificate is replaced), the file 0600, created exclusively (`O_EXCL` never follows
/// a symlink) and synced.
pub fn write(path: &Path, pem: &str) -> std::io::Result<()> {
    use std::io::{Error, ErrorKind};
    let dir = path
        .parent()
        .ok_or_else(|| Error::new(ErrorKind::InvalidInput, "no directory"))?;
    let made_dir = match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => true,
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            let meta = std::fs::symlink_metadata(dir)?;
            if !meta.file_type().is_dir() {
                return Err(Error::new(
                    ErrorKind::AlreadyExists,
                    format!("{} exists and is not a directory", dir.display()),
                ));
            }
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            false
        }
        Err(e) => return Err(e),
    };
    let written = (|| {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(path)?;
        let done = (|| {
            f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            f.write_all(pem.as_bytes())?;
            f.sync_all()
        })();
        if done.is_err() {
            let _ = std::fs::remove_file(path);
        }
        done
    })();
    if written.is_err() && made_dir {
        let _ = std::fs::remove_dir(dir);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("efs-client-cert-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn the_certificate_is_private_and_replaces_only_its_own_leftover() {
        let d = scratch("write");
        let path = d.join("fs-1.mnt.20049+").join("certificate.pem");
        write(&path, "PEM 1").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "PEM 1");
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        // a leftover of a mount never torn down is replaced
        write(&path, "PEM 2").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "PEM 2");
        efs_config::state::remove_client_cert(&path).unwrap();
        assert!(!path.parent().unwrap().exists());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn never_through_a_symlink() {
        let d = scratch("symlink");
        let elsewhere = d.join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        // the directory is a symlink
        let linked_dir = d.join("a+");
        std::os::unix::fs::symlink(&elsewhere, &linked_dir).unwrap();
        assert!(write(&linked_dir.join("certificate.pem"), "PEM").is_err());
        assert!(!elsewhere.join("certificate.pem").exists());
        // the file is a symlink (a real leftover directory holding one): it is removed,
        // not followed
        let dir = d.join("b+");
        std::fs::create_dir(&dir).unwrap();
        let target = d.join("target");
        std::fs::write(&target, "keep").unwrap();
        std::os::unix::fs::symlink(&target, dir.join("certificate.pem")).unwrap();
        write(&dir.join("certificate.pem"), "PEM").unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        assert!(!std::fs::symlink_metadata(dir.join("certificate.pem"))
            .unwrap()
            .file_type()
            .is_symlink());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn common_name_is_the_host_name_cut_to_64() {
        let cn = common_name();
        assert!(!cn.is_empty() && cn.chars().count() <= 64, "{cn}");
    }
}
