//! The client certificate every TLS mount presents, as amazon-efs-utils makes it: one
//! RSA-3072 key per host (`/etc/amazon/efs/privateKey.pem`, mode 0400, shared by all
//! mounts), and per mount a self-signed SHA-256/RSA certificate, `CN=<hostname[:64]>`,
//! valid from 15 minutes ago to 3 hours from now, with these extensions in this order:
//!
//! * `subjectKeyIdentifier`: SHA-1 of the subjectPublicKey bits (OpenSSL's `hash`);
//! * `1.3.6.1.4.1.4843.7.1` UTF8String access point id (only with `accesspoint`);
//! * `.7.2` SEQUENCE { accessKeyId UTF8String, signature OCTET STRING (the 64 **ASCII hex
//!   characters** of the SigV4 signature), sigv4DateTime UTCTime, sessionToken `[0]`
//!   EXPLICIT UTF8String OPTIONAL } (only with `iam`);
//! * `.7.3` UTF8String file system id (always);
//! * `.7.4` SEQUENCE { source UTF8String (1-100 characters, else `unknown`),
//!   efs_utils_version UTF8String }.
//!
//! Keys are generated with the pure-Rust `rsa` crate (ring cannot generate RSA keys,
//! and aws-lc-rs stays out of the default build); signing is ring's, through rcgen. The
//! key file is written to a temporary name and hard-linked into place, so two mounts
//! racing to create it end up sharing the first one's key (the incumbent needs a lock
//! file for this). A zero-byte key file (an interrupted `openssl genpkey`) is replaced.
//! `mount.efs` loads or creates the key ([`HostKey::load_or_create`]); a renewal only
//! loads it ([`HostKey::load`]): both read it the one way (`read_key_bytes`).

use crate::credentials::Credentials;
use crate::der;
use crate::sigv4::{hex, ConnectRequest, SigningTime};
use rcgen::{CertificateParams, CustomExtension, DistinguishedName, DnType, KeyPair};
use ring::digest;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub const OID_ACCESS_POINT: &[u64] = &[1, 3, 6, 1, 4, 1, 4843, 7, 1];
pub const OID_CLIENT_AUTH: &[u64] = &[1, 3, 6, 1, 4, 1, 4843, 7, 2];
pub const OID_FS_ID: &[u64] = &[1, 3, 6, 1, 4, 1, 4843, 7, 3];
pub const OID_CLIENT_INFO: &[u64] = &[1, 3, 6, 1, 4, 1, 4843, 7, 4];
const OID_SUBJECT_KEY_IDENTIFIER: &[u64] = &[2, 5, 29, 14];

/// RSA modulus size, as the incumbent's `rsa_keygen_bits:3072`.
pub const KEY_BITS: usize = 3072;
/// Validity: from this long before issue...
pub const NOT_BEFORE: time::Duration = time::Duration::minutes(15);
/// ... to this long after.
pub const NOT_AFTER: time::Duration = time::Duration::hours(3);
/// Longest common name (characters of the hostname).
pub const MAX_COMMON_NAME: usize = 64;
/// Longest `[client-info] source`; longer or empty becomes `unknown`.
pub const MAX_SOURCE: usize = 100;
/// The largest key file read (an RSA-3072 PEM is about 2.5 KiB).
pub const MAX_KEY_FILE: u64 = 64 * 1024;
/// The `efs_utils_version` of extension 7.4: the amazon-efs-utils release whose client
/// certificate (and behaviour) this crate reproduces, so EFS sees what it knows.
pub const EFS_UTILS_VERSION: &str = "3.2.0";

/// Why no key or certificate. One line each, naming what failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertError {
    /// The key file is there but cannot be read or used.
    KeyFile {
        path: PathBuf,
        reason: String,
    },
    /// The key file that must be there (a renewal's: [`HostKey::load`]) cannot be
    /// read or used.
    KeyUnreadable {
        path: PathBuf,
        reason: String,
    },
    /// There is no key file, and none can be written there.
    KeyNotWritable {
        path: PathBuf,
        reason: String,
    },
    KeyGeneration(String),
    /// Not an RSA private key ring can sign with.
    InvalidKey(String),
    InvalidInput {
        what: &'static str,
        value: String,
    },
    Sign(String),
}

impl std::fmt::Display for CertError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CertError::KeyFile { path, reason } => write!(
                f,
                "client key {}: {reason}: remove it to have a new one made",
                path.display()
            ),
            CertError::KeyUnreadable { path, reason } => {
                write!(f, "cannot read the client key {}: {reason}", path.display())
            }
            CertError::KeyNotWritable { path, reason } => write!(
                f,
                "cannot create the client key {}: {reason}: check [paths] private_key, and that its directory exists and root can write there",
                path.display()
            ),
            CertError::KeyGeneration(e) => write!(f, "cannot generate the client key: {e}"),
            CertError::InvalidKey(e) => write!(f, "client key is not a usable RSA key: {e}"),
            CertError::InvalidInput { what, value } => {
                write!(f, "cannot put {what} {value:?} in the client certificate")
            }
            CertError::Sign(e) => write!(f, "cannot sign the client certificate: {e}"),
        }
    }
}

impl std::error::Error for CertError {}

/// The host's RSA key.
pub struct HostKey {
    key_pair: KeyPair,
}

impl std::fmt::Debug for HostKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HostKey(public key hash {})", self.public_key_hash())
    }
}

impl HostKey {
    /// A new RSA-3072 key (a few seconds of CPU).
    pub fn generate() -> Result<HostKey, CertError> {
        use rsa::pkcs8::EncodePrivateKey;
        let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, KEY_BITS)
            .map_err(|e| CertError::KeyGeneration(e.to_string()))?;
        let pkcs8 = key
            .to_pkcs8_der()
            .map_err(|e| CertError::KeyGeneration(e.to_string()))?;
        Self::from_pkcs8_der(pkcs8.as_bytes())
    }

    pub fn from_pkcs8_der(der: &[u8]) -> Result<HostKey, CertError> {
        let pkcs8 = rustls_pki_types::PrivatePkcs8KeyDer::from(der);
        let key_pair = KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &rcgen::PKCS_RSA_SHA256)
            .map_err(|e| CertError::InvalidKey(e.to_string()))?;
        Ok(HostKey { key_pair })
    }

    /// A PEM private key: PKCS#8 (`openssl genpkey`, ours) or PKCS#1 (`BEGIN RSA
    /// PRIVATE KEY`).
    pub fn from_pem(pem: &[u8]) -> Result<HostKey, CertError> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::PrivateKeyDer;
        let key =
            PrivateKeyDer::from_pem_slice(pem).map_err(|e| CertError::InvalidKey(e.to_string()))?;
        match key {
            PrivateKeyDer::Pkcs8(k) => Self::from_pkcs8_der(k.secret_pkcs8_der()),
            PrivateKeyDer::Pkcs1(k) => {
                use rsa::pkcs1::DecodeRsaPrivateKey;
                use rsa::pkcs8::EncodePrivateKey;
                let pkcs8 = rsa::RsaPrivateKey::from_pkcs1_der(k.secret_pkcs1_der())
                    .and_then(|k| k.to_pkcs8_der().map_err(rsa::pkcs1::Error::from))
                    .map_err(|e| CertError::InvalidKey(e.to_string()))?;
                Self::from_pkcs8_der(pkcs8.as_bytes())
            }
            _ => Err(CertError::InvalidKey("not an RSA key".into())),
        }
    }

    /// PKCS#8 PEM, for the tunnel.
    pub fn private_key_pem(&self) -> String {
        self.key_pair.serialize_pem()
    }

    /// The subjectPublicKey BIT STRING's contents without the unused-bits octet: the
    /// PKCS#1 RSAPublicKey DER.
    pub fn public_key(&self) -> &[u8] {
        self.key_pair.public_key_raw()
    }

    /// SHA-1 hex of [`HostKey::public_key`]: the SigV4 `PublicKeyHash`, and the
    /// subjectKeyIdentifier.
    pub fn public_key_hash(&self) -> String {
        hex(self.public_key_sha1().as_ref())
    }

    fn public_key_sha1(&self) -> digest::Digest {
        digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, self.public_key())
    }

    /// The key at `path`, which must be there (a renewal's: `mount.efs` made it). Read
    /// as [`HostKey::load_or_create`] reads it: a regular file (never a FIFO a read would
    /// block on, opened `O_NONBLOCK`), at most [`MAX_KEY_FILE`] bytes.
    pub fn load(path: &Path) -> Result<HostKey, CertError> {
        let unreadable = |reason: String| CertError::KeyUnreadable {
            path: path.to_path_buf(),
            reason,
        };
        let pem = read_key_bytes(path).map_err(|e| unreadable(e.to_string()))?;
        if pem.is_empty() {
            return Err(unreadable("the file is empty".into()));
        }
        Self::from_pem(&pem).map_err(|e| unreadable(e.to_string()))
    }

    /// The key at `path`; made (mode 0400) if there is none, or only an empty file.
    pub fn load_or_create(path: &Path) -> Result<HostKey, CertError> {
        let file_err = |reason: String| CertError::KeyFile {
            path: path.to_path_buf(),
            reason,
        };
        match read_key_file(path) {
            Ok(Some(pem)) => return Self::from_pem(&pem).map_err(|e| file_err(e.to_string())),
            Ok(None) => {}
            Err(e) => return Err(file_err(e)),
        }
        // before seconds of key generation: a key that could not be written anyway
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.is_dir() {
                return Err(CertError::KeyNotWritable {
                    path: path.to_path_buf(),
                    reason: format!("{} is not a directory", dir.display()),
                });
            }
        }
        let key = Self::generate()?;
        let name = path
            .file_name()
            .ok_or_else(|| file_err("not a file path".into()))?
            .to_string_lossy();
        let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let written = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o400)
                .open(&tmp)?;
            f.write_all(key.private_key_pem().as_bytes())?;
            f.sync_all()?;
            std::fs::hard_link(&tmp, path)
        })();
        let _ = std::fs::remove_file(&tmp);
        match written {
            Ok(()) => Ok(key),
            // another mount made it first: share that one
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => match read_key_file(path) {
                Ok(Some(pem)) => Self::from_pem(&pem).map_err(|e| file_err(e.to_string())),
                Ok(None) => Err(file_err("empty after another process created it".into())),
                Err(e) => Err(file_err(e)),
            },
            Err(e) => Err(CertError::KeyNotWritable {
                path: path.to_path_buf(),
                reason: e.to_string(),
            }),
        }
    }
}

/// A key file's bytes: a regular file (opened `O_NONBLOCK`, so a FIFO put there cannot
/// block the reader; then refused), at most [`MAX_KEY_FILE`] bytes. The one way the
/// host key is read.
fn read_key_bytes(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut buf = Vec::new();
    f.take(MAX_KEY_FILE + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > MAX_KEY_FILE {
        return Err(std::io::Error::other(format!(
            "larger than {} KiB",
            MAX_KEY_FILE / 1024
        )));
    }
    Ok(buf)
}

/// The key file's bytes; `None` if missing or empty (an empty one is removed).
fn read_key_file(path: &Path) -> Result<Option<Vec<u8>>, String> {
    match read_key_bytes(path) {
        Ok(b) if b.is_empty() => {
            std::fs::remove_file(path).map_err(|e| format!("empty, and not removable: {e}"))?;
            Ok(None)
        }
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// The IAM part: whose credentials, signed for which region and service.
#[derive(Debug, Clone, Copy)]
pub struct Iam<'a> {
    pub credentials: &'a Credentials,
    pub region: &'a str,
    /// `elasticfilesystem` ([`crate::sigv4::EFS_SERVICE`]).
    pub service: &'a str,
}

/// What goes into one mount's certificate.
#[derive(Debug, Clone, Copy)]
pub struct CertificateRequest<'a> {
    /// The hostname; cut to 64 characters.
    pub common_name: &'a str,
    /// `fs-[0-9a-f]+`.
    pub fs_id: &'a str,
    /// `fsap-[0-9a-f]{17}`.
    pub access_point: Option<&'a str>,
    pub iam: Option<Iam<'a>>,
    /// `[client-info] source`.
    pub client_source: Option<&'a str>,
    pub efs_utils_version: &'a str,
    /// Issue time, also the SigV4 time.
    pub now: SigningTime,
}

/// A signed certificate.
#[derive(Debug, Clone)]
pub struct ClientCertificate {
    pub der: Vec<u8>,
    pub pem: String,
    pub not_before: time::OffsetDateTime,
    pub not_after: time::OffsetDateTime,
}

pub fn valid_fs_id(s: &str) -> bool {
    s.strip_prefix("fs-").is_some_and(|h| {
        !h.is_empty()
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

pub fn valid_access_point(s: &str) -> bool {
    s.strip_prefix("fsap-").is_some_and(|h| {
        h.len() == 17
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// The `source` member of 7.4: the configured one when 1-100 characters, else `unknown`.
pub fn client_source(configured: Option<&str>) -> &str {
    match configured {
        Some(s) if (1..=MAX_SOURCE).contains(&s.chars().count()) => s,
        _ => "unknown",
    }
}

/// The DER of extension 7.2 (`efs_client_auth`).
pub fn client_auth_extension(
    credentials: &Credentials,
    signature_hex: &str,
    time: SigningTime,
) -> Vec<u8> {
    let mut members = vec![
        der::utf8_string(credentials.access_key_id.as_str()),
        der::octet_string(signature_hex.as_bytes()),
        der::tlv(der::UTC_TIME, time.utc_time().as_bytes()),
    ];
    if let Some(token) = credentials.session_token() {
        members.push(der::tlv(der::CONTEXT_0, &der::utf8_string(token.expose())));
    }
    der::sequence(&members)
}

/// Issues one mount's certificate, self-signed with `key`.
pub fn issue(key: &HostKey, req: &CertificateRequest) -> Result<ClientCertificate, CertError> {
    let invalid = |what, value: &str| CertError::InvalidInput {
        what,
        value: value.chars().take(80).collect(),
    };
    if !valid_fs_id(req.fs_id) {
        return Err(invalid("file system id", req.fs_id));
    }
    let cn: String = req.common_name.chars().take(MAX_COMMON_NAME).collect();
    if cn.is_empty() || cn.chars().any(char::is_control) {
        return Err(invalid("common name", req.common_name));
    }
    if req.efs_utils_version.is_empty() {
        return Err(invalid("efs_utils_version", req.efs_utils_version));
    }

    let mut ext = Vec::new();
    let ski = der::octet_string(key.public_key_sha1().as_ref());
    ext.push(CustomExtension::from_oid_content(
        OID_SUBJECT_KEY_IDENTIFIER,
        ski,
    ));
    if let Some(ap) = req.access_point {
        if !valid_access_point(ap) {
            return Err(invalid("access point id", ap));
        }
        ext.push(CustomExtension::from_oid_content(
            OID_ACCESS_POINT,
            der::utf8_string(ap),
        ));
    }
    if let Some(iam) = req.iam {
        let hash = key.public_key_hash();
        let signature = ConnectRequest {
            credentials: iam.credentials,
            region: iam.region,
            service: iam.service,
            fs_id: req.fs_id,
            public_key_hash: &hash,
            time: req.now,
        }
        .signature();
        ext.push(CustomExtension::from_oid_content(
            OID_CLIENT_AUTH,
            client_auth_extension(iam.credentials, &signature, req.now),
        ));
    }
    ext.push(CustomExtension::from_oid_content(
        OID_FS_ID,
        der::utf8_string(req.fs_id),
    ));
    ext.push(CustomExtension::from_oid_content(
        OID_CLIENT_INFO,
        der::sequence(&[
            der::utf8_string(client_source(req.client_source)),
            der::utf8_string(req.efs_utils_version),
        ]),
    ));

    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.not_before = req.now.datetime() - NOT_BEFORE;
    params.not_after = req.now.datetime() + NOT_AFTER;
    params.serial_number = Some(random_serial()?);
    params.custom_extensions = ext;
    let cert = params
        .self_signed(&key.key_pair)
        .map_err(|e| CertError::Sign(e.to_string()))?;
    Ok(ClientCertificate {
        der: cert.der().to_vec(),
        pem: cert.pem(),
        not_before: params.not_before,
        not_after: params.not_after,
    })
}

/// 16 random bytes, positive and without a leading zero octet.
fn random_serial() -> Result<rcgen::SerialNumber, CertError> {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| CertError::Sign("no randomness for the serial number".into()))?;
    b[0] = (b[0] & 0x7f) | 0x40;
    Ok(rcgen::SerialNumber::from_slice(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_source() {
        assert!(valid_fs_id("fs-deadbeef"));
        assert!(!valid_fs_id("fs-"));
        assert!(!valid_fs_id("fs-DEADBEEF"));
        assert!(valid_access_point("fsap-0123456789abcdef0"));
        assert!(!valid_access_point("fsap-0123456789abcdef"));
        assert_eq!(client_source(Some("k8s")), "k8s");
        assert_eq!(client_source(Some("")), "unknown");
        assert_eq!(client_source(Some(&"x".repeat(101))), "unknown");
        assert_eq!(client_source(None), "unknown");
    }

    #[test]
    fn load_reads_only_a_bounded_regular_key_file_and_never_makes_one() {
        let dir = std::env::temp_dir().join(format!("efs-iam-load-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("privateKey.pem");
        let pem = include_bytes!("../tests/data/host-key.pem");
        std::fs::write(&key, pem).unwrap();
        let loaded = HostKey::load(&key).unwrap();
        assert_eq!(
            loaded.public_key_hash(),
            HostKey::from_pem(pem).unwrap().public_key_hash()
        );
        let said = |p: &Path| HostKey::load(p).unwrap_err().to_string();
        // Missing: an error, and nothing is made.
        let missing = dir.join("missing.pem");
        assert!(said(&missing).starts_with("cannot read the client key"));
        assert!(!missing.exists());
        // Empty: an error, and the file stays (only mount.efs replaces it).
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        assert!(said(&empty).contains("empty"));
        assert!(empty.exists());
        // A FIFO does not block the reader; a directory and a huge file are refused.
        let fifo = dir.join("fifo.pem");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(
            said(&fifo).contains("not a regular file"),
            "{}",
            said(&fifo)
        );
        assert!(said(&dir).contains("not a regular file"));
        let huge = dir.join("huge.pem");
        std::fs::write(&huge, vec![b'A'; MAX_KEY_FILE as usize + 1]).unwrap();
        assert!(said(&huge).contains("larger than 64 KiB"));
        let garbage = dir.join("garbage.pem");
        std::fs::write(&garbage, "garbage").unwrap();
        assert!(said(&garbage).contains("garbage.pem"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
