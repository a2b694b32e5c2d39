//! The fake EFS (`TlsServer::start_requiring_client_cert` with a `FakeEfsVerifier`) lets
//! in exactly the clients EFS would: a correct certificate (IAM and access point) is
//! admitted and its identity recorded; no certificate, or one signed with a wrong secret,
//! is refused, and no byte it sends is served. Other tests rely on this.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use efs_iam::cert::{ClientCertificate, HostKey};
use efs_iam::testing::{Denial, Verdict};
use efs_testkit::efs::{client_certificate, FakeEfsPolicy, FakeEfsVerifier};
use efs_testkit::{Behaviour, TestCa, TlsServer, CHECK_HOST, WILDCARD};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KEY_ID: &str = "AKIAFAKEEFSTEST00001";
const SECRET: &str = "fake/efs/secret/0123456789abcdefghijklmn";
const ACCESS_POINT: &str = "fsap-0123456789abcdef0";

/// Connects to `server` as a rustls client presenting `cert` (with `key`) if given,
/// sends `ping` and reads the echo. The error says which step failed.
async fn ping(
    server: &TlsServer,
    ca: &TestCa,
    cert: Option<(&ClientCertificate, &HostKey)>,
) -> Result<Vec<u8>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca.pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let config = match cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from(cert.der.clone())],
                PrivateKeyDer::from_pem_slice(key.private_key_pem().as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let name = ServerName::try_from(CHECK_HOST).unwrap();
    let talk = async {
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tls.write_all(b"ping")
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut back = vec![0u8; 4];
        tls.read_exact(&mut back)
            .await
            .map_err(|e| format!("read: {e}"))?;
        Ok(back)
    };
    tokio::time::timeout(Duration::from_secs(10), talk)
        .await
        .map_err(|_| "timed out".to_string())?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admits_a_correct_certificate_and_refuses_none_or_a_wrong_secret() {
    let ca = TestCa::new("Fake EFS CA");
    let policy = FakeEfsPolicy {
        access_point: Some(ACCESS_POINT.into()),
        require_iam: true,
        ..FakeEfsPolicy::new().with_key(KEY_ID, SECRET, None)
    };
    let verifier = FakeEfsVerifier::new(policy);
    let server = TlsServer::start_requiring_client_cert(
        &ca.issue(WILDCARD),
        Behaviour::Echo,
        verifier.clone(),
    )
    .await;
    let key = HostKey::generate().unwrap();

    // Correct: IAM signed with a known key, the expected access point.
    let good = client_certificate(&key, Some((KEY_ID, SECRET)), Some(ACCESS_POINT));
    assert_eq!(
        ping(&server, &ca, Some((&good, &key))).await,
        Ok(b"ping".to_vec())
    );
    match verifier.verdicts().as_slice() {
        [Verdict::Allowed(who)] => {
            assert_eq!(who.access_key_id.as_deref(), Some(KEY_ID));
            assert_eq!(who.access_point.as_deref(), Some(ACCESS_POINT));
        }
        other => panic!("verdicts: {other:?}"),
    }
    assert_eq!(server.received.load(Ordering::Relaxed), 4);

    // No certificate: refused before the verifier is asked (nothing to judge).
    let err = ping(&server, &ca, None).await.unwrap_err();
    assert!(err.contains("CertificateRequired"), "{err}");
    assert_eq!(verifier.verdicts().len(), 1);

    // The right key id, signed with a wrong secret.
    let forged = client_certificate(&key, Some((KEY_ID, "not/the/secret")), Some(ACCESS_POINT));
    let err = ping(&server, &ca, Some((&forged, &key))).await.unwrap_err();
    assert!(err.contains("HandshakeFailure"), "{err}");
    assert_eq!(
        verifier.verdicts().last(),
        Some(&Verdict::Denied(Denial::SignatureMismatch))
    );

    // Without IAM where the file system requires it.
    let no_iam = client_certificate(&key, None, Some(ACCESS_POINT));
    assert!(ping(&server, &ca, Some((&no_iam, &key))).await.is_err());
    assert!(matches!(
        verifier.verdicts().last(),
        Some(Verdict::Denied(Denial::MissingExtension(_)))
    ));

    // Only the admitted client was served.
    assert_eq!(server.handshakes.load(Ordering::Relaxed), 1);
    assert_eq!(server.received.load(Ordering::Relaxed), 4);
}
