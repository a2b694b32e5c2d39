//! `efs-renew-cert`'s part: one renewal, start to end. The watchdog decided it is due and
//! checked the state file; this checks where the certificate goes (before any request
//! leaves the host), reads the host key ([`HostKey::load`]: never made here), fetches
//! credentials again from the recorded source (`credentials::renew`, in this process's
//! environment: the watchdog's), issues the certificate with the same identity
//! ([`issue()`]) and writes it over the old one ([`CertDir`]). A failure
//! anywhere leaves the old file as it was.

use efs_config::renewal::{Job, Renewed};
use efs_iam::credentials::{self, Env, Source};
use efs_iam::HostKey;

use crate::issue::{self, issue, Identity};
use crate::write::CertDir;
use crate::Error;

/// Renews the certificate of `job` and writes it; blocks for as long as the credential
/// source takes (each request has its deadline).
pub fn renew(job: &Job, env: &dyn Env) -> Result<Renewed, Error> {
    let rec = &job.record;
    // Opened before any request leaves the host, and checked to be the directory the
    // renewal was asked for: a renewal never writes into a newer mount's directory of the
    // same name, and if its own mount goes while it waits, the certificate goes nowhere.
    let dir =
        CertDir::open(&job.state_dir, &rec.certificate, job.directory).map_err(Error::Write)?;
    let key = HostKey::load(&rec.private_key).map_err(Error::Key)?;
    let creds = match &rec.iam_source {
        None => None,
        Some(method) => {
            let source = Source::from_method(method).ok_or_else(|| {
                Error::Credentials(credentials::Error::UnknownMethod(method.clone()))
            })?;
            let endpoints = crate::iam_endpoints(&job.endpoints);
            Some(
                credentials::renew(&source, &rec.region, env, &endpoints)
                    .map_err(Error::Credentials)?,
            )
        }
    };
    let now = issue::now()?;
    let who = Identity::of_record(&job.fs_id, rec, job.client_source.as_deref());
    let issued = issue(&key, &who, creds.as_ref(), now)?;
    dir.write(&issued.pem).map_err(Error::Write)?;
    Ok(Renewed {
        issued: issued.issued,
        not_after: issued.not_after,
        credentials_expire: issued.credentials_expire,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use efs_config::state::ClientCertRecord;
    use efs_config::Config;
    use std::collections::HashMap;
    use std::os::unix::fs::PermissionsExt;
    use std::path::{Path, PathBuf};

    const KEY_PEM: &[u8] = include_bytes!("../../iam/tests/data/host-key.pem");

    struct Scene {
        dir: PathBuf,
        job: Job,
        env: HashMap<String, String>,
    }

    impl Drop for Scene {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// A state directory with one mount's certificate directory, the host key, and a
    /// credentials file with `[efs-mount]`; the job renews from that profile.
    fn scene(name: &str) -> Scene {
        let dir = std::env::temp_dir().join(format!("efs-renew-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let state_dir = dir.join("run");
        let cert_dir = state_dir.join("fs-deadbeef.mnt.20049+");
        std::fs::create_dir_all(&cert_dir).unwrap();
        std::fs::set_permissions(&cert_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(cert_dir.join("certificate.pem"), "old").unwrap();
        let key = dir.join("privateKey.pem");
        std::fs::write(&key, KEY_PEM).unwrap();
        let creds = dir.join("credentials");
        std::fs::write(
            &creds,
            "[efs-mount]\naws_access_key_id = AKIAEXAMPLEEXAMPLE01\naws_secret_access_key = s3cret\n",
        )
        .unwrap();
        let record = ClientCertRecord {
            certificate: cert_dir.join("certificate.pem"),
            private_key: key,
            common_name: "test-host".into(),
            region: "us-east-1".into(),
            access_point: Some("fsap-0123456789abcdef0".into()),
            iam_source: Some("credentials:efs-mount".into()),
            issued: 0.0,
            not_after: 0.0,
            credentials_expire: None,
            renewed: None,
            renewal_error: None,
        };
        let mut cfg = Config::default();
        cfg.paths.state_dir = state_dir;
        for url in [
            &mut cfg.mount.instance_metadata_url,
            &mut cfg.mount.ecs_credentials_url,
        ] {
            *url = "http://127.0.0.1:9".into();
        }
        let env = HashMap::from([
            ("HOME".to_string(), dir.display().to_string()),
            (
                "AWS_SHARED_CREDENTIALS_FILE".to_string(),
                creds.display().to_string(),
            ),
            (
                "AWS_CONFIG_FILE".to_string(),
                dir.join("config").display().to_string(),
            ),
        ]);
        Scene {
            job: Job::new("fs-deadbeef", &record, &cfg),
            dir,
            env,
        }
    }

    fn cert(s: &Scene) -> String {
        std::fs::read_to_string(&s.job.record.certificate).unwrap()
    }

    #[test]
    fn a_renewal_writes_the_new_certificate_and_answers_its_times() {
        let s = scene("ok");
        let r = renew(&s.job, &s.env).unwrap();
        assert!((r.not_after - r.issued - 3.0 * 3600.0).abs() < 1.0, "{r:?}");
        assert_eq!(r.credentials_expire, None);
        assert!(cert(&s).starts_with("-----BEGIN CERTIFICATE-----"));
        let names: Vec<_> = std::fs::read_dir(s.job.record.certificate.parent().unwrap())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, ["certificate.pem"]);
    }

    #[test]
    fn a_failed_renewal_leaves_the_old_certificate() {
        let fails = |s: &Scene, says: &str| {
            let e = renew(&s.job, &s.env).unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
            assert_eq!(cert(s), "old");
        };
        let mut s = scene("profile");
        s.job.record.iam_source = Some("credentials:gone".into());
        fails(&s, "AWS profile [gone] not found");
        let mut s = scene("method");
        s.job.record.iam_source = Some("carrier-pigeon:".into());
        fails(&s, "carrier-pigeon");
        let mut s = scene("key");
        s.job.record.private_key = s.dir.join("no-such-key.pem");
        fails(&s, "cannot read the client key");
        assert!(!s.dir.join("no-such-key.pem").exists(), "never made");
        // Outside the state directory: refused before anything else (no key is read).
        let mut s = scene("outside");
        let victim = s.dir.join("victim+").join("certificate.pem");
        std::fs::create_dir_all(victim.parent().unwrap()).unwrap();
        std::fs::write(&victim, "keep me").unwrap();
        s.job.record.certificate = victim.clone();
        s.job.record.private_key = Path::new("/nonexistent").into();
        let e = renew(&s.job, &s.env).unwrap_err().to_string();
        assert!(
            e.contains("is not a certificate in the state directory"),
            "{e}"
        );
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");
    }

    #[test]
    fn a_renewal_never_writes_into_a_newer_mount_of_the_same_name() {
        // The mount was unmounted and mounted again while the renewal waited: its
        // directory was made again by the same name (the old one kept elsewhere here, so
        // that its inode cannot be reused).
        let s = scene("remounted");
        let cert_dir = s.job.record.certificate.parent().unwrap().to_path_buf();
        assert!(s.job.directory.is_some(), "the job names its directory");
        std::fs::rename(&cert_dir, s.dir.join("old-mount+")).unwrap();
        std::fs::create_dir(&cert_dir).unwrap();
        std::fs::set_permissions(&cert_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(&s.job.record.certificate, "the new mount's").unwrap();
        let e = renew(&s.job, &s.env).unwrap_err().to_string();
        assert!(e.contains("belongs to a newer mount"), "{e}");
        assert_eq!(cert(&s), "the new mount's");
    }
}
