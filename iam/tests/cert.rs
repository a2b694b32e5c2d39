//! The client certificate as EFS sees it: parsed back with x509-parser, every extension's
//! bytes compared with DER written out by hand here, the SigV4 signature recomputed from
//! the parsed certificate's own key, and the fake authorizer's verdicts.

mod common;

use efs_iam::cert::{self, CertificateRequest, HostKey, Iam};
use efs_iam::credentials::{AccessKeyId, Credentials, SecretAccessKey, SessionToken};
use efs_iam::sigv4::{ConnectRequest, SigningTime, EFS_SERVICE};
use efs_iam::testing::{authorize, Denial, Expect, KnownKey, Verdict};
use x509_parser::prelude::{FromDer, X509Certificate};

const KEY_PEM: &[u8] = include_bytes!("data/host-key.pem");
const KEY_PKCS1_PEM: &[u8] = include_bytes!("data/host-key-pkcs1.pem");
const AKID: &str = "ASIAEXAMPLEEXAMPLE01";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
const TOKEN: &str = "IQoJb3JpZ2luX2VjEXAMPLE+token/with=chars";
const AP: &str = "fsap-0123456789abcdef0";

fn key() -> HostKey {
    HostKey::from_pem(KEY_PEM).unwrap()
}

fn creds(token: Option<&str>) -> Credentials {
    Credentials::new(
        AccessKeyId::new(AKID).unwrap(),
        SecretAccessKey::new(SECRET).unwrap(),
        token.map(|t| SessionToken::new(t).unwrap()),
        None,
    )
}

fn now() -> SigningTime {
    SigningTime::from_utc_time("261201203806Z").unwrap()
}

fn request<'a>(c: Option<&'a Credentials>, ap: Option<&'a str>) -> CertificateRequest<'a> {
    CertificateRequest {
        common_name: "ip-10-0-1-5.eu-west-1.compute.internal",
        fs_id: "fs-deadbeef",
        access_point: ap,
        iam: c.map(|credentials| Iam {
            credentials,
            region: "eu-west-1",
            service: EFS_SERVICE,
        }),
        client_source: Some("k8s"),
        efs_utils_version: "3.2.0",
        now: now(),
    }
}

fn tlv(tag: u8, contents: &[u8]) -> Vec<u8> {
    // hand-written DER for the comparisons: lengths here are < 128 or < 65536
    let mut v = vec![tag];
    match contents.len() {
        n if n < 0x80 => v.push(n as u8),
        n if n < 0x100 => v.extend([0x81, n as u8]),
        n => v.extend([0x82, (n >> 8) as u8, n as u8]),
    }
    v.extend_from_slice(contents);
    v
}

fn extensions(cert: &X509Certificate) -> Vec<(String, Vec<u8>)> {
    cert.extensions()
        .iter()
        .map(|e| (e.oid.to_id_string(), e.value.to_vec()))
        .collect()
}

#[test]
fn iam_certificate_carries_every_extension_byte_for_byte() {
    let key = key();
    let c = creds(Some(TOKEN));
    let issued = cert::issue(&key, &request(Some(&c), Some(AP))).unwrap();
    let (rest, x) = X509Certificate::from_der(&issued.der).unwrap();
    assert!(rest.is_empty());

    // self-signed SHA-256 with RSA, CN = hostname, subject = issuer
    assert_eq!(
        x.signature_algorithm.algorithm.to_id_string(),
        "1.2.840.113549.1.1.11"
    );
    x.verify_signature(None).unwrap();
    assert_eq!(
        x.subject().to_string(),
        "CN=ip-10-0-1-5.eu-west-1.compute.internal"
    );
    assert_eq!(x.issuer(), x.subject());
    // validity: now - 15 min .. now + 3 h
    let t = now().datetime().unix_timestamp();
    assert_eq!(x.validity().not_before.timestamp(), t - 15 * 60);
    assert_eq!(x.validity().not_after.timestamp(), t + 3 * 3600);

    // the public key hash, from the parsed certificate (not from our key type)
    let spk = x.public_key().subject_public_key.data.as_ref();
    assert_eq!(spk, key.public_key());
    assert_eq!(
        spk[0], 0x30,
        "PKCS#1 RSAPublicKey SEQUENCE, no unused-bits octet"
    );
    let sha1 = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, spk);
    let pkh: String = sha1.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(pkh, key.public_key_hash());

    let signature = ConnectRequest {
        credentials: &c,
        region: "eu-west-1",
        service: EFS_SERVICE,
        fs_id: "fs-deadbeef",
        public_key_hash: &pkh,
        time: now(),
    }
    .signature();
    assert_eq!(signature.len(), 64);

    let mut auth = tlv(0x0c, AKID.as_bytes());
    auth.extend(tlv(0x04, signature.as_bytes()));
    auth.extend(tlv(0x17, b"261201203806Z"));
    auth.extend(tlv(0xa0, &tlv(0x0c, TOKEN.as_bytes())));
    let mut info = tlv(0x0c, b"k8s");
    info.extend(tlv(0x0c, b"3.2.0"));

    assert_eq!(
        extensions(&x),
        vec![
            ("2.5.29.14".to_string(), tlv(0x04, sha1.as_ref())),
            ("1.3.6.1.4.1.4843.7.1".to_string(), tlv(0x0c, AP.as_bytes())),
            ("1.3.6.1.4.1.4843.7.2".to_string(), tlv(0x30, &auth)),
            (
                "1.3.6.1.4.1.4843.7.3".to_string(),
                tlv(0x0c, b"fs-deadbeef")
            ),
            ("1.3.6.1.4.1.4843.7.4".to_string(), tlv(0x30, &info)),
        ]
    );
    assert!(x.extensions().iter().all(|e| !e.critical));
    assert!(issued.pem.starts_with("-----BEGIN CERTIFICATE-----"));
}

#[test]
fn plain_tls_certificate_has_only_key_id_fs_id_and_client_info() {
    let long_name = "h".repeat(80);
    let mut req = request(None, None);
    req.client_source = None;
    req.common_name = &long_name;
    let issued = cert::issue(&key(), &req).unwrap();
    let (_, x) = X509Certificate::from_der(&issued.der).unwrap();
    let oids: Vec<String> = extensions(&x).into_iter().map(|e| e.0).collect();
    assert_eq!(
        oids,
        ["2.5.29.14", "1.3.6.1.4.1.4843.7.3", "1.3.6.1.4.1.4843.7.4"]
    );
    let mut info = tlv(0x0c, b"unknown");
    info.extend(tlv(0x0c, b"3.2.0"));
    assert_eq!(extensions(&x)[2].1, tlv(0x30, &info));
    // CN is the hostname cut to 64 characters
    assert_eq!(x.subject().to_string(), format!("CN={}", "h".repeat(64)));
}

#[test]
fn certificate_without_session_token_has_three_auth_members() {
    let c = creds(None);
    let issued = cert::issue(&key(), &request(Some(&c), None)).unwrap();
    let (_, x) = X509Certificate::from_der(&issued.der).unwrap();
    let auth = &extensions(&x)[1];
    assert_eq!(auth.0, "1.3.6.1.4.1.4843.7.2");
    // SEQUENCE { UTF8String 20, OCTET STRING 64, UTCTime 13 } = 22 + 66 + 15
    assert_eq!(auth.1[..2], [0x30, 103]);
    assert_eq!(auth.1.len(), 105);
}

#[test]
fn bad_ids_are_refused_before_signing() {
    let c = creds(None);
    let mut req = request(Some(&c), Some("fsap-xyz"));
    assert!(cert::issue(&key(), &req).is_err());
    req.access_point = None;
    req.fs_id = "fs-1/../x";
    assert!(cert::issue(&key(), &req).is_err());
}

#[test]
fn pkcs1_and_pkcs8_files_are_the_same_key() {
    let a = HostKey::from_pem(KEY_PEM).unwrap();
    let b = HostKey::from_pem(KEY_PKCS1_PEM).unwrap();
    assert_eq!(a.public_key(), b.public_key());
    assert!(
        HostKey::from_pem(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
            .is_err()
    );
}

#[test]
fn host_key_is_made_once_with_mode_0400_and_then_reused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = common::Scratch::new("key");
    let path = dir.path().join("privateKey.pem");
    // an empty file, as an interrupted `openssl genpkey` leaves, is replaced
    std::fs::write(&path, "").unwrap();
    let made = HostKey::load_or_create(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o400);
    assert_eq!(made.public_key().len(), 398, "RSA-3072 RSAPublicKey DER");
    let again = HostKey::load_or_create(&path).unwrap();
    assert_eq!(made.public_key_hash(), again.public_key_hash());
    // no temporary file left behind
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

    let broken = dir.path().join("broken.pem");
    std::fs::write(&broken, "garbage").unwrap();
    let e = HostKey::load_or_create(&broken).unwrap_err().to_string();
    assert!(e.contains("broken.pem"), "{e}");
}

fn known(akid: &str) -> Option<KnownKey> {
    (akid == AKID).then(|| KnownKey {
        secret_access_key: SECRET.into(),
        session_token: Some(TOKEN.into()),
    })
}

fn expect<'a>(ap: Option<&'a str>) -> Expect<'a> {
    Expect {
        fs_id: "fs-deadbeef",
        access_point: ap,
        region: "eu-west-1",
        service: EFS_SERVICE,
        require_iam: true,
        known_key: &known,
        now: now().datetime() + time::Duration::minutes(1),
    }
}

#[test]
fn fake_authorizer_lets_in_a_good_certificate() {
    let c = creds(Some(TOKEN));
    let issued = cert::issue(&key(), &request(Some(&c), Some(AP))).unwrap();
    let Verdict::Allowed(who) = authorize(&issued.der, &expect(Some(AP))) else {
        panic!("denied")
    };
    assert_eq!(who.access_key_id.as_deref(), Some(AKID));
    assert_eq!(who.access_point.as_deref(), Some(AP));
    assert_eq!(who.source, "k8s");
    assert_eq!(who.efs_utils_version, "3.2.0");
}

#[test]
fn fake_authorizer_refuses_what_the_service_would() {
    let c = creds(Some(TOKEN));
    let good = cert::issue(&key(), &request(Some(&c), Some(AP)))
        .unwrap()
        .der;
    let denied = |der: &[u8], e: &Expect| match authorize(der, e) {
        Verdict::Denied(d) => d,
        Verdict::Allowed(_) => panic!("allowed"),
    };

    let mut e = expect(Some(AP));
    e.fs_id = "fs-0badf00d";
    assert_eq!(
        denied(&good, &e),
        Denial::WrongFsId {
            found: "fs-deadbeef".into()
        }
    );
    assert!(matches!(
        denied(&good, &expect(None)),
        Denial::WrongAccessPoint { .. }
    ));
    let mut e = expect(Some(AP));
    e.region = "us-east-1";
    assert_eq!(denied(&good, &e), Denial::SignatureMismatch);
    let mut e = expect(Some(AP));
    e.now = now().datetime() + time::Duration::hours(4);
    assert_eq!(denied(&good, &e), Denial::NotValidNow);
    let wrong_secret = |_: &str| {
        Some(KnownKey {
            secret_access_key: "other".into(),
            session_token: Some(TOKEN.into()),
        })
    };
    let mut e = expect(Some(AP));
    e.known_key = &wrong_secret;
    assert_eq!(denied(&good, &e), Denial::SignatureMismatch);
    let unknown = |_: &str| None;
    let mut e = expect(Some(AP));
    e.known_key = &unknown;
    assert_eq!(denied(&good, &e), Denial::UnknownAccessKey(AKID.into()));

    // without IAM where the policy needs it
    let plain = cert::issue(&key(), &request(None, Some(AP))).unwrap().der;
    assert_eq!(
        denied(&plain, &expect(Some(AP))),
        Denial::MissingExtension("IAM (7.2)")
    );
    let mut e = expect(Some(AP));
    e.require_iam = false;
    assert!(matches!(authorize(&plain, &e), Verdict::Allowed(_)));

    // one flipped byte anywhere in the signed part breaks the self-signature
    let mut tampered = good.clone();
    let at = tampered.len() / 2;
    tampered[at] ^= 1;
    assert!(matches!(
        denied(&tampered, &expect(Some(AP))),
        Denial::BadSelfSignature | Denial::NotACertificate(_)
    ));
    assert!(matches!(
        denied(b"junk", &expect(Some(AP))),
        Denial::NotACertificate(_)
    ));
}

#[test]
fn fake_authorizer_refuses_a_signature_made_for_another_key() {
    // a certificate whose 7.2 was signed over another key's hash: what a replay of
    // someone else's signature with one's own key looks like
    let key = key();
    let c = creds(Some(TOKEN));
    let other_hash = "0000000000000000000000000000000000000000";
    let signature = ConnectRequest {
        credentials: &c,
        region: "eu-west-1",
        service: EFS_SERVICE,
        fs_id: "fs-deadbeef",
        public_key_hash: other_hash,
        time: now(),
    }
    .signature();
    let mut params = rcgen::CertificateParams::default();
    params.not_before = now().datetime() - time::Duration::minutes(15);
    params.not_after = now().datetime() + time::Duration::hours(3);
    let sha1 = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, key.public_key());
    params.custom_extensions = vec![
        rcgen::CustomExtension::from_oid_content(&[2, 5, 29, 14], tlv(0x04, sha1.as_ref())),
        rcgen::CustomExtension::from_oid_content(
            cert::OID_CLIENT_AUTH,
            cert::client_auth_extension(&c, &signature, now()),
        ),
        rcgen::CustomExtension::from_oid_content(cert::OID_FS_ID, tlv(0x0c, b"fs-deadbeef")),
        rcgen::CustomExtension::from_oid_content(cert::OID_CLIENT_INFO, {
            let mut info = tlv(0x0c, b"k8s");
            info.extend(tlv(0x0c, b"3.2.0"));
            tlv(0x30, &info)
        }),
    ];
    let kp = rcgen::KeyPair::from_pkcs8_pem_and_sign_algo(
        std::str::from_utf8(KEY_PEM).unwrap(),
        &rcgen::PKCS_RSA_SHA256,
    )
    .unwrap();
    let der = params.self_signed(&kp).unwrap().der().to_vec();
    assert_eq!(
        authorize(&der, &expect(None)),
        Verdict::Denied(Denial::SignatureMismatch)
    );
}

#[test]
fn fake_authorizer_denies_every_truncation_and_many_corruptions_without_panicking() {
    let c = creds(Some(TOKEN));
    let good = cert::issue(&key(), &request(Some(&c), Some(AP)))
        .unwrap()
        .der;
    let e = expect(Some(AP));
    for cut in 0..good.len() {
        assert!(
            matches!(authorize(&good[..cut], &e), Verdict::Denied(_)),
            "{cut}"
        );
    }
    // a flipped bit in any byte before the signature value
    for at in 0..good.len() - 384 {
        let mut bad = good.clone();
        bad[at] ^= 0x20;
        assert!(
            matches!(authorize(&bad, &e), Verdict::Denied(_)),
            "byte {at}"
        );
    }
}
