//! The CA bundle installed as `/etc/amazon/efs/efs-utils.crt` (`config/efs-utils.crt`):
//! Amazon Root CA 1-4, exactly the Amazon roots efs-tunnel is built with (webpki-roots),
//! and a file the tunnel loads as its only trust store.

mod common;

use common::*;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, TrustAnchor};

fn bundle_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/efs-utils.crt")
}

fn bundle() -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(bundle_path())
        .expect("config/efs-utils.crt is readable")
        .collect::<Result<_, _>>()
        .expect("config/efs-utils.crt is PEM")
}

/// webpki-roots' entries whose subject's common name is "Amazon Root CA N".
fn amazon_roots() -> Vec<&'static TrustAnchor<'static>> {
    webpki_roots::TLS_SERVER_ROOTS
        .iter()
        .filter(|a| {
            a.subject
                .as_ref()
                .windows(b"Amazon Root CA ".len())
                .any(|w| w == b"Amazon Root CA ")
        })
        .collect()
}

#[test]
fn the_bundle_is_amazon_root_ca_1_to_4_byte_for_byte_as_in_webpki_roots() {
    let certs = bundle();
    let roots = amazon_roots();
    assert_eq!(roots.len(), 4, "webpki-roots has Amazon Root CA 1-4");
    assert_eq!(certs.len(), 4, "the bundle has four certificates");
    for (i, cert) in certs.iter().enumerate() {
        let n = i + 1;
        let ours = webpki::anchor_from_trusted_cert(cert).expect("a CA certificate");
        let name = format!("Amazon Root CA {n}");
        let root = roots
            .iter()
            .find(|r| r.subject.as_ref().ends_with(name.as_bytes()))
            .unwrap_or_else(|| panic!("webpki-roots has no {name}"));
        assert_eq!(
            ours.subject.as_ref(),
            root.subject.as_ref(),
            "Amazon Root CA {n}: subject"
        );
        assert_eq!(
            ours.subject_public_key_info.as_ref(),
            root.subject_public_key_info.as_ref(),
            "Amazon Root CA {n}: public key"
        );
        assert_eq!(
            ours.name_constraints.as_ref().map(|c| c.as_ref()),
            root.name_constraints.as_ref().map(|c| c.as_ref()),
            "Amazon Root CA {n}: name constraints"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_tunnel_loads_the_bundle_as_its_only_trust_store() {
    // A mount target whose certificate another CA signed is refused as not chaining to
    // a trusted CA, not as an unreadable file: the bundle loads, and trusts only Amazon.
    let root = Root::new("");
    let addr = target_addr();
    let _server = TlsServer::start_on(addr, &root.ca.issue(WILDCARD), Behaviour::Echo).await;
    let mp = root.mountpoint("efs");
    let run = root.mount(&[
        "fs-12345678",
        &mp,
        "-o",
        &format!(
            "tls,mounttargetip={},cafile={}",
            addr.ip(),
            bundle_path().display()
        ),
    ]);
    assert_eq!(run.code(), Some(32), "{}", run.stderr());
    assert!(run.stderr().contains("UnknownIssuer"), "{}", run.stderr());
    root.assert_nothing_left();
}
