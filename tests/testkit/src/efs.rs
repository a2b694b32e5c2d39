//! A fake EFS's door: a rustls client-certificate verifier that lets a TLS client in
//! only if its certificate is what EFS would authorize (`efs_iam::testing::authorize`:
//! every extension, the self-signature, the SigV4 signature against the secret of a
//! known access key). Named as a fake: the real authorization runs inside EFS.
//!
//! Each verdict is recorded, so a test can assert who was let in (or why not).
//!
//! [`client_certificate`] issues what a client presents, as `mount.efs` does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use efs_iam::cert::{self, CertificateRequest, ClientCertificate, HostKey, Iam};
use efs_iam::credentials::{AccessKeyId, Credentials, SecretAccessKey};
use efs_iam::testing::{authorize, Expect, KnownKey, Verdict};
use efs_iam::SigningTime;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// What the fake service knows and expects of its clients.
#[derive(Debug, Clone)]
pub struct FakeEfsPolicy {
    pub fs_id: String,
    /// The access point a client must name (`None`: it must name none).
    pub access_point: Option<String>,
    pub region: String,
    /// The file system policy requires IAM: the 7.2 extension must be there.
    pub require_iam: bool,
    /// Access key id -> its secret (and session token).
    pub keys: HashMap<String, KnownKey>,
}

impl FakeEfsPolicy {
    /// The file system [`crate::FS_ID`] in us-east-1, no access point, no IAM required,
    /// no keys known.
    pub fn new() -> FakeEfsPolicy {
        FakeEfsPolicy {
            fs_id: crate::FS_ID.into(),
            access_point: None,
            region: "us-east-1".into(),
            require_iam: false,
            keys: HashMap::new(),
        }
    }

    /// Knows an access key (with its session token, if temporary).
    pub fn with_key(mut self, id: &str, secret: &str, token: Option<&str>) -> FakeEfsPolicy {
        self.keys.insert(
            id.into(),
            KnownKey {
                secret_access_key: secret.into(),
                session_token: token.map(str::to_string),
            },
        );
        self
    }
}

impl Default for FakeEfsPolicy {
    fn default() -> Self {
        FakeEfsPolicy::new()
    }
}

/// A client certificate for [`crate::FS_ID`], issued now with `host_key` as `mount.efs`
/// issues it: signed for us-east-1 with `access_key` (id, secret) if given (`-o iam`),
/// naming `access_point` if given. Generate the [`HostKey`] once per test: RSA-3072 takes
/// a second or so.
pub fn client_certificate(
    host_key: &HostKey,
    access_key: Option<(&str, &str)>,
    access_point: Option<&str>,
) -> ClientCertificate {
    let credentials = access_key.map(|(id, secret)| {
        Credentials::new(
            AccessKeyId::new(id).expect("an access key id of 16-128 [A-Za-z0-9_]"),
            SecretAccessKey::new(secret).expect("a printable secret"),
            None,
            None,
        )
    });
    let request = CertificateRequest {
        common_name: "efs-test-client",
        fs_id: crate::FS_ID,
        access_point,
        iam: credentials.as_ref().map(|credentials| Iam {
            credentials,
            region: "us-east-1",
            service: efs_iam::EFS_SERVICE,
        }),
        client_source: Some("efs-testkit"),
        efs_utils_version: "3.2.0",
        now: SigningTime::now().expect("a clock after 2000"),
    };
    cert::issue(host_key, &request).expect("a certificate for a valid request")
}

/// The verifier: authorizes a client certificate by [`FakeEfsPolicy`], and requires one
/// when the policy needs an identity.
#[derive(Debug)]
pub struct FakeEfsVerifier {
    policy: Mutex<FakeEfsPolicy>,
    algorithms: WebPkiSupportedAlgorithms,
    /// Every verdict, in order.
    pub verdicts: Mutex<Vec<Verdict>>,
}

impl FakeEfsVerifier {
    pub fn new(policy: FakeEfsPolicy) -> Arc<FakeEfsVerifier> {
        Arc::new(FakeEfsVerifier {
            policy: Mutex::new(policy),
            algorithms: rustls::crypto::ring::default_provider().signature_verification_algorithms,
            verdicts: Mutex::new(Vec::new()),
        })
    }

    /// Changes what the service expects from the next handshake on (rotated keys, a
    /// revoked one).
    pub fn set_policy(&self, policy: FakeEfsPolicy) {
        *self.policy.lock().unwrap_or_else(|e| e.into_inner()) = policy;
    }

    /// The verdicts so far.
    pub fn verdicts(&self) -> Vec<Verdict> {
        self.verdicts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn judge(&self, der: &[u8]) -> Verdict {
        let policy = self
            .policy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let known = |id: &str| policy.keys.get(id).cloned();
        authorize(
            der,
            &Expect {
                fs_id: &policy.fs_id,
                access_point: policy.access_point.as_deref(),
                region: &policy.region,
                service: efs_iam::EFS_SERVICE,
                require_iam: policy.require_iam,
                known_key: &known,
                now: time::OffsetDateTime::now_utc(),
            },
        )
    }
}

impl ClientCertVerifier for FakeEfsVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    /// As EFS: a client certificate is needed only when the policy asks for an identity
    /// (IAM, an access point); otherwise plain TLS is let in, and a certificate that is
    /// presented is still checked.
    fn client_auth_mandatory(&self) -> bool {
        let policy = self.policy.lock().unwrap_or_else(|e| e.into_inner());
        policy.require_iam || policy.access_point.is_some()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verdict = self.judge(end_entity.as_ref());
        self.verdicts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(verdict.clone());
        match verdict {
            Verdict::Allowed(_) => Ok(ClientCertVerified::assertion()),
            Verdict::Denied(why) => Err(rustls::Error::General(format!(
                "fake EFS refused the client certificate: {why:?}"
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
