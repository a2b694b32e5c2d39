//! A fake EFS authorizer (feature `testing`): given a client certificate and what the
//! service knows (the file system, the access point, the secret of each access key),
//! it checks what the real service checks and returns a typed [`Verdict`]. It has no
//! tokio and no I/O, so the e2e "EFS" terminator and host integration tests can call it
//! from their TLS server's client-certificate verifier.
//!
//! Checked: the certificate parses (its envelope strictly as DER) and is self-signed with SHA-256/RSA by its own key
//! and valid now; `subjectKeyIdentifier` is the SHA-1 of its public key; 7.3 names the
//! file system; 7.1 is the expected access point (and absent when none is expected);
//! 7.4 is well-formed; 7.2, when present (or required), is well-formed, names a known
//! access key (and its session token), is dated within its 24 h `X-Amz-Expires` (5 min
//! of clock skew allowed), and its signature recomputes from the certificate's own
//! public key hash and date.

use crate::cert::{OID_ACCESS_POINT, OID_CLIENT_AUTH, OID_CLIENT_INFO, OID_FS_ID};
use crate::credentials::{AccessKeyId, Credentials, SecretAccessKey, SessionToken};
use crate::der::{self, Reader};
use crate::sigv4::{hex, ConnectRequest, SigningTime, EXPIRES_SECS};
use ::time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

/// What the service knows of an access key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownKey {
    pub secret_access_key: String,
    /// The token that must come with it (temporary credentials), if any.
    pub session_token: Option<String>,
}

/// What the fake service expects.
pub struct Expect<'a> {
    pub fs_id: &'a str,
    pub access_point: Option<&'a str>,
    pub region: &'a str,
    pub service: &'a str,
    /// The file system policy needs IAM: 7.2 must be there.
    pub require_iam: bool,
    /// The secret (and token) of an access key id, `None` if unknown.
    pub known_key: &'a dyn Fn(&str) -> Option<KnownKey>,
    pub now: OffsetDateTime,
}

/// Who was let in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub access_key_id: Option<String>,
    pub access_point: Option<String>,
    pub source: String,
    pub efs_utils_version: String,
}

/// Why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    NotACertificate(String),
    NotSha256WithRsa,
    BadSelfSignature,
    NotValidNow,
    MissingExtension(&'static str),
    DuplicateExtension(&'static str),
    Malformed {
        extension: &'static str,
        why: String,
    },
    WrongKeyIdentifier,
    WrongFsId {
        found: String,
    },
    WrongAccessPoint {
        found: Option<String>,
    },
    UnknownAccessKey(String),
    WrongSessionToken,
    StaleSignature,
    SignatureMismatch,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allowed(Identity),
    Denied(Denial),
}

fn oid_string(oid: &[u64]) -> String {
    oid.iter().map(u64::to_string).collect::<Vec<_>>().join(".")
}

const SHA256_WITH_RSA: &str = "1.2.840.113549.1.1.11";
const SKI: &str = "2.5.29.14";

/// The one extension with `oid` (name for the denial), if present.
fn extension<'a>(
    cert: &'a X509Certificate<'a>,
    oid: &str,
    name: &'static str,
) -> Result<Option<&'a [u8]>, Denial> {
    let mut found = cert
        .extensions()
        .iter()
        .filter(|e| e.oid.to_id_string() == oid);
    let first = found.next();
    if found.next().is_some() {
        return Err(Denial::DuplicateExtension(name));
    }
    Ok(first.map(|e| e.value))
}

fn malformed(extension: &'static str) -> impl Fn(der::DerError) -> Denial {
    move |e| Denial::Malformed {
        extension,
        why: e.to_string(),
    }
}

/// Checks a client certificate (DER) as EFS would.
pub fn authorize(cert_der: &[u8], expect: &Expect) -> Verdict {
    match check(cert_der, expect) {
        Ok(identity) => Verdict::Allowed(identity),
        Err(denial) => Verdict::Denied(denial),
    }
}

/// `sha256WithRSAEncryption` AlgorithmIdentifier contents: the OID, then NULL.
const SHA256_WITH_RSA_DER: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b, 0x05, 0x00,
];

/// The envelope, strictly (x509-parser is lenient with the unsigned outer fields):
/// SEQUENCE { tbsCertificate SEQUENCE, signatureAlgorithm SEQUENCE, BIT STRING }.
fn check_envelope(cert_der: &[u8]) -> Result<(), Denial> {
    let not = |e: der::DerError| Denial::NotACertificate(e.to_string());
    let mut outer = Reader::new(der::read_only(cert_der, der::SEQUENCE).map_err(not)?);
    outer.read(der::SEQUENCE).map_err(not)?;
    let alg = outer.read(der::SEQUENCE).map_err(not)?;
    outer.read(0x03).map_err(not)?;
    outer.finish().map_err(not)?;
    if alg != SHA256_WITH_RSA_DER {
        return Err(Denial::NotSha256WithRsa);
    }
    Ok(())
}

fn check(cert_der: &[u8], expect: &Expect) -> Result<Identity, Denial> {
    check_envelope(cert_der)?;
    let (rest, cert) =
        X509Certificate::from_der(cert_der).map_err(|e| Denial::NotACertificate(e.to_string()))?;
    if !rest.is_empty() {
        return Err(Denial::NotACertificate(
            "bytes after the certificate".into(),
        ));
    }
    if cert.signature_algorithm.algorithm.to_id_string() != SHA256_WITH_RSA
        || cert.tbs_certificate.signature.algorithm.to_id_string() != SHA256_WITH_RSA
    {
        return Err(Denial::NotSha256WithRsa);
    }
    cert.verify_signature(None)
        .map_err(|_| Denial::BadSelfSignature)?;
    let now = expect.now.unix_timestamp();
    let validity = cert.validity();
    if now < validity.not_before.timestamp() || now > validity.not_after.timestamp() {
        return Err(Denial::NotValidNow);
    }
    let public_key = cert.public_key().subject_public_key.data.as_ref();
    let public_key_hash = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, public_key);

    let ski = extension(&cert, SKI, "subjectKeyIdentifier")?
        .ok_or(Denial::MissingExtension("subjectKeyIdentifier"))?;
    let ski = der::read_only(ski, der::OCTET_STRING).map_err(malformed("subjectKeyIdentifier"))?;
    if ski != public_key_hash.as_ref() {
        return Err(Denial::WrongKeyIdentifier);
    }

    let fs = extension(&cert, &oid_string(OID_FS_ID), "fs id (7.3)")?
        .ok_or(Denial::MissingExtension("fs id (7.3)"))?;
    let mut r = Reader::new(fs);
    let fs_id = r.read_utf8().map_err(malformed("fs id (7.3)"))?;
    r.finish().map_err(malformed("fs id (7.3)"))?;
    if fs_id != expect.fs_id {
        return Err(Denial::WrongFsId {
            found: fs_id.to_string(),
        });
    }

    let ap = match extension(&cert, &oid_string(OID_ACCESS_POINT), "access point (7.1)")? {
        Some(v) => {
            let mut r = Reader::new(v);
            let ap = r.read_utf8().map_err(malformed("access point (7.1)"))?;
            r.finish().map_err(malformed("access point (7.1)"))?;
            Some(ap.to_string())
        }
        None => None,
    };
    if ap.as_deref() != expect.access_point {
        return Err(Denial::WrongAccessPoint { found: ap });
    }

    let info = extension(&cert, &oid_string(OID_CLIENT_INFO), "client info (7.4)")?
        .ok_or(Denial::MissingExtension("client info (7.4)"))?;
    let m = malformed("client info (7.4)");
    let mut seq = Reader::new(der::read_only(info, der::SEQUENCE).map_err(&m)?);
    let source = seq.read_utf8().map_err(&m)?.to_string();
    let efs_utils_version = seq.read_utf8().map_err(&m)?.to_string();
    seq.finish().map_err(&m)?;
    if source.is_empty() || source.chars().count() > 100 || efs_utils_version.is_empty() {
        return Err(Denial::Malformed {
            extension: "client info (7.4)",
            why: "empty or over-long member".into(),
        });
    }

    let access_key_id = match extension(&cert, &oid_string(OID_CLIENT_AUTH), "IAM (7.2)")? {
        None if expect.require_iam => return Err(Denial::MissingExtension("IAM (7.2)")),
        None => None,
        Some(auth) => Some(check_iam(
            auth,
            expect,
            fs_id,
            &hex(public_key_hash.as_ref()),
        )?),
    };

    Ok(Identity {
        access_key_id,
        access_point: ap,
        source,
        efs_utils_version,
    })
}

fn check_iam(auth: &[u8], expect: &Expect, fs_id: &str, pkh: &str) -> Result<String, Denial> {
    let m = malformed("IAM (7.2)");
    let bad = |why: &str| Denial::Malformed {
        extension: "IAM (7.2)",
        why: why.to_string(),
    };
    let mut seq = Reader::new(der::read_only(auth, der::SEQUENCE).map_err(&m)?);
    let akid = seq.read_utf8().map_err(&m)?;
    let signature = seq.read(der::OCTET_STRING).map_err(&m)?;
    let date = seq.read(der::UTC_TIME).map_err(&m)?;
    let token = if seq.peek_tag() == Some(der::CONTEXT_0) {
        let explicit = seq.read(der::CONTEXT_0).map_err(&m)?;
        let mut inner = Reader::new(explicit);
        let t = inner.read_utf8().map_err(&m)?;
        inner.finish().map_err(&m)?;
        Some(t)
    } else {
        None
    };
    seq.finish().map_err(&m)?;
    if signature.len() != 64
        || !signature
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
    {
        return Err(bad("signature is not 64 lower-case hex characters"));
    }
    let date = std::str::from_utf8(date)
        .ok()
        .and_then(SigningTime::from_utc_time)
        .ok_or_else(|| bad("sigv4DateTime is not a UTCTime"))?;

    let known = (expect.known_key)(akid).ok_or_else(|| Denial::UnknownAccessKey(akid.into()))?;
    if known.session_token.as_deref() != token {
        return Err(Denial::WrongSessionToken);
    }
    let signed_at = date.datetime().unix_timestamp();
    let now = expect.now.unix_timestamp();
    if now < signed_at - 300 || now > signed_at + i64::from(EXPIRES_SECS) {
        return Err(Denial::StaleSignature);
    }
    let credentials = Credentials::new(
        AccessKeyId::new(akid).map_err(|e| bad(&e.to_string()))?,
        SecretAccessKey::new(&known.secret_access_key).map_err(|e| bad(&e.to_string()))?,
        token
            .map(SessionToken::new)
            .transpose()
            .map_err(|e| bad(&e.to_string()))?,
        None,
    );
    let expected = ConnectRequest {
        credentials: &credentials,
        region: expect.region,
        service: expect.service,
        fs_id,
        public_key_hash: pkh,
        time: date,
    }
    .signature();
    // not constant-time: this is a test double
    if expected.as_bytes() != signature {
        return Err(Denial::SignatureMismatch);
    }
    Ok(akid.to_string())
}
