//! The one function that issues a mount's client certificate, for `mount.efs` and for
//! every renewal: the `CertificateRequest` is built here only, so a renewed certificate
//! says exactly what the first one said (common name, file system, access point, region,
//! client info), with new credentials and a new date.

use efs_config::state::ClientCertRecord;
use efs_iam::{cert, Credentials, HostKey, Iam, SigningTime};

use crate::Error;

/// Who a certificate says the client is: a mount's, from its options; a renewal's, from
/// the state file's record ([`Identity::of_record`]).
#[derive(Debug, Clone, Copy)]
pub struct Identity<'a> {
    /// The host name, at most 64 characters.
    pub common_name: &'a str,
    pub fs_id: &'a str,
    pub access_point: Option<&'a str>,
    /// The region the IAM signature is scoped to.
    pub region: &'a str,
    /// `[client-info] source` as configured; the certificate says `unknown` unless it is
    /// 1 to 100 characters.
    pub client_source: Option<&'a str>,
}

impl<'a> Identity<'a> {
    /// The identity of the certificate `rec` describes, for its renewal.
    pub fn of_record(
        fs_id: &'a str,
        rec: &'a ClientCertRecord,
        client_source: Option<&'a str>,
    ) -> Identity<'a> {
        Identity {
            common_name: &rec.common_name,
            fs_id,
            access_point: rec.access_point.as_deref(),
            region: &rec.region,
            client_source,
        }
    }
}

/// A signed certificate, not yet written, and the times the state file records.
#[derive(Debug, Clone)]
pub struct Issued {
    pub pem: String,
    /// Seconds since the epoch.
    pub issued: f64,
    pub not_after: f64,
    /// When the credentials in it expire, if the source said.
    pub credentials_expire: Option<f64>,
}

/// Issues the certificate of `who`, signed with `key`, carrying `credentials` (with
/// `iam`), dated `now`.
pub fn issue(
    key: &HostKey,
    who: &Identity,
    credentials: Option<&Credentials>,
    now: SigningTime,
) -> Result<Issued, Error> {
    let issued = cert::issue(
        key,
        &efs_iam::CertificateRequest {
            common_name: who.common_name,
            fs_id: who.fs_id,
            access_point: who.access_point,
            iam: credentials.map(|c| Iam {
                credentials: c,
                region: who.region,
                service: efs_iam::EFS_SERVICE,
            }),
            client_source: who.client_source,
            efs_utils_version: crate::EFS_UTILS_VERSION,
            now,
        },
    )
    .map_err(Error::Certificate)?;
    Ok(Issued {
        pem: issued.pem,
        issued: epoch_secs(now.datetime()),
        not_after: epoch_secs(issued.not_after),
        credentials_expire: credentials.and_then(|c| c.expiration).map(epoch_secs),
    })
}

/// Now, as a certificate can be dated.
pub fn now() -> Result<SigningTime, Error> {
    SigningTime::now().ok_or(Error::Clock)
}

/// Seconds since the epoch, as state files record times.
pub fn epoch_secs(t: time::OffsetDateTime) -> f64 {
    t.unix_timestamp_nanos() as f64 / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;
    use efs_iam::testing::{authorize, Expect, KnownKey, Verdict};

    const KEY_PEM: &[u8] = include_bytes!("../../iam/tests/data/host-key.pem");
    const AP: &str = "fsap-0123456789abcdef0";

    fn creds() -> Credentials {
        Credentials::new(
            efs_iam::credentials::AccessKeyId::new("AKIAEXAMPLEEXAMPLE01").unwrap(),
            efs_iam::credentials::SecretAccessKey::new("secret/Key+0000000000000000000000000000")
                .unwrap(),
            None,
            None,
        )
    }

    #[test]
    fn a_renewal_says_what_the_record_says() {
        let key = HostKey::from_pem(KEY_PEM).unwrap();
        let rec = ClientCertRecord {
            certificate: "/run/efs/fs-deadbeef.mnt.20049+/certificate.pem".into(),
            private_key: "/etc/amazon/efs/privateKey.pem".into(),
            common_name: "ip-10-0-1-5".into(),
            region: "eu-west-1".into(),
            access_point: Some(AP.into()),
            iam_source: Some("metadata:".into()),
            issued: 0.0,
            not_after: 0.0,
            credentials_expire: None,
            renewed: None,
            renewal_error: None,
        };
        let c = creds();
        let now = SigningTime::now().unwrap();
        let who = Identity::of_record("fs-deadbeef", &rec, Some("k8s"));
        let got = issue(&key, &who, Some(&c), now).unwrap();
        assert_eq!(got.issued, now.datetime().unix_timestamp() as f64);
        assert_eq!(got.not_after - got.issued, 3.0 * 3600.0);
        assert_eq!(got.credentials_expire, None);
        use rustls_pki_types::pem::PemObject;
        let der = rustls_pki_types::CertificateDer::from_pem_slice(got.pem.as_bytes()).unwrap();
        let known = |id: &str| {
            (id == "AKIAEXAMPLEEXAMPLE01").then(|| KnownKey {
                secret_access_key: "secret/Key+0000000000000000000000000000".into(),
                session_token: None,
            })
        };
        let verdict = authorize(
            der.as_ref(),
            &Expect {
                fs_id: "fs-deadbeef",
                access_point: Some(AP),
                region: "eu-west-1",
                service: efs_iam::EFS_SERVICE,
                require_iam: true,
                known_key: &known,
                now: now.datetime() + time::Duration::minutes(1),
            },
        );
        match verdict {
            Verdict::Allowed(who) => {
                assert_eq!(who.access_point.as_deref(), Some(AP));
                assert_eq!(who.source, "k8s");
                assert_eq!(who.efs_utils_version, crate::EFS_UTILS_VERSION);
            }
            other => panic!("{other:?}"),
        }
        // What the certificate cannot carry is an error, not a panic.
        let bad = Identity {
            fs_id: "fs-../x",
            ..who
        };
        assert!(matches!(
            issue(&key, &bad, None, now),
            Err(Error::Certificate(_))
        ));
    }
}
