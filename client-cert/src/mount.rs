//! `mount.efs`'s part: the client certificate of a mount with `iam` or `accesspoint`,
//! which the mount must have before its tunnel connects.
//!
//! [`prepare`] runs before anything of the mount exists (no state directory entry, no
//! bound port, no tunnel): the host key (`[paths] private_key`, made once, 0400), the AWS
//! credentials in the incumbent's order (`efs_iam::credentials::obtain`, endpoints from
//! the config so tests point them at fakes), and the signed certificate ([`issue()`]). A
//! credential failure is then the mount's one-line error and nothing has to be undone.
//! The caller runs it in the helper's own network namespace, before `netns=` is
//! entered: where the region is looked up and where the watchdog renews. Once the state
//! name (which holds the port) is known, [`crate::write_new`] puts the PEM at
//! `<state dir>/<state name>+/certificate.pem`; [`Prepared::record`] is what the state
//! file keeps for the renewal and for `mount.efs`'s sharing check (the client identity
//! two mounts must share).
//!
//! Secrets stay in `efs_iam::Credentials`, whose `Debug` and `Display` redact them; this
//! module logs the access key id and the source, never the secret or the token.

use std::path::Path;

use efs_config::renewal;
use efs_config::state::ClientCertRecord;
use efs_config::Config;
use efs_iam::credentials::{self, Endpoints, ProcessEnv, Request};
use efs_iam::{cert, HostKey};
use log::info;

use crate::issue::{self, issue, Identity};
use crate::Error;

/// What a mount asks for: its file system, region, access point, and with `iam` where
/// to look for credentials (its options).
#[derive(Debug, Clone, Copy)]
pub struct MountRequest<'a> {
    pub fs_id: &'a str,
    pub region: &'a str,
    pub access_point: Option<&'a str>,
    /// `Some` with `iam`: the options that choose the credential source.
    pub iam: Option<Request<'a>>,
}

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

/// The credential endpoints the config names, for a mount in `region` (the mapping a
/// renewal's job carries too: [`renewal::Endpoints::from_config`]).
pub fn endpoints(cfg: &Config, region: &str) -> Endpoints {
    crate::iam_endpoints(&renewal::Endpoints::from_config(cfg, region))
}

/// The host key, the credentials (with `iam`) and the signed certificate of a mount
/// with `iam` or `accesspoint`.
pub fn prepare(cfg: &Config, req: &MountRequest) -> Result<Prepared, Error> {
    let key = HostKey::load_or_create(&cfg.paths.private_key).map_err(Error::Key)?;
    let obtained = match &req.iam {
        Some(creds_req) => {
            let got = credentials::obtain(creds_req, &ProcessEnv, &endpoints(cfg, req.region))
                .map_err(Error::Credentials)?;
            info!(
                "IAM credentials for {}: access key id {} from {}{}",
                req.fs_id,
                got.credentials.access_key_id,
                got.source.method(),
                got.credentials
                    .expiration
                    .map(|t| format!(", expiring {t}"))
                    .unwrap_or_default()
            );
            Some(got)
        }
        None => None,
    };
    let now = issue::now()?;
    let common_name = common_name();
    let issued = issue(
        &key,
        &Identity {
            common_name: &common_name,
            fs_id: req.fs_id,
            access_point: req.access_point,
            region: req.region,
            client_source: cfg.client_info.source.as_deref(),
        },
        obtained.as_ref().map(|o| &o.credentials),
        now,
    )?;
    Ok(Prepared {
        pem: issued.pem,
        common_name,
        access_point: req.access_point.map(str::to_string),
        iam_source: obtained.as_ref().map(|o| o.source.method()),
        issued: issued.issued,
        not_after: issued.not_after,
        credentials_expire: issued.credentials_expire,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_name_is_the_host_name_cut_to_64() {
        let cn = common_name();
        assert!(!cn.is_empty() && cn.chars().count() <= 64, "{cn}");
    }

    #[test]
    fn the_endpoints_are_the_configs() {
        let mut cfg = Config::default();
        cfg.mount.instance_metadata_url = "http://127.0.0.1:9".into();
        cfg.mount.disable_fetch_ec2_metadata_token = true;
        cfg.mount.sts_endpoint_url = Some("http://127.0.0.1:9/".into());
        let e = endpoints(&cfg, "cn-north-1");
        assert_eq!(e.imds, "http://127.0.0.1:9");
        assert!(!e.imds_token);
        assert_eq!(e.sts.as_deref(), Some("http://127.0.0.1:9/"));
        assert_eq!(e.dns_name_suffix, "amazonaws.com.cn");
        assert_eq!(e.ecs, Endpoints::default().ecs);
        assert_eq!(e.timeout, Endpoints::default().timeout);
    }
}
