//! The client certificate the tunnel presents to the mount target. EFS authorizes a TLS
//! client by that certificate alone (its IAM signature, its access point: docs/iam.md),
//! so a tunnel started with `--client-cert FILE --client-key FILE` presents the pair on
//! every upstream handshake, and reads both files again on SIGHUP, after the watchdog has
//! renewed the certificate (it is valid for 3 hours, its credentials maybe for less).
//!
//! This module loads and checks one pair ([`load`]) and keeps the pair in use with what
//! the status reports about it ([`ClientCert`]). Which connection uses which pair is the
//! server's business (`tls_config`): new connections the newest good pair, open ones the
//! pair they started with.
//!
//! Nothing of the key is ever logged or put in an error: errors name the file and what is
//! wrong with it, never its contents. The certificate's subject and notAfter may be logged.

use std::fmt;
use std::path::{Path, PathBuf};

use efs_config::logging::format_utc;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use crate::certinfo;
use crate::control::ClientCertStatus;
use crate::stats::unix_now;

/// Where the pair is read from (`--client-cert`, `--client-key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertFiles {
    /// PEM: the certificate, then any intermediates.
    pub cert: PathBuf,
    /// PEM: the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// A pair that loaded and whose key matches its certificate.
#[derive(Clone)]
pub struct ClientPair {
    /// The chain and the signing key, as rustls presents them.
    pub certified: CertifiedKey,
    /// The certificate's subject, `CN=...`.
    pub subject: String,
    /// The certificate's notAfter, seconds since the epoch.
    pub not_after_unix: i64,
}

impl fmt::Debug for ClientPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("ClientPair")
            .field("subject", &self.subject)
            .field("not_after_unix", &self.not_after_unix)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for ClientPair {
    /// For the log: `CN=..., valid until 2026-12-02 06:05:09 UTC`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let until = u64::try_from(self.not_after_unix).unwrap_or(0);
        write!(f, "{}, valid until {}", self.subject, format_utc(until))
    }
}

/// Why a pair could not be used. Each is one line naming the file and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientCertError {
    CertUnreadable { path: PathBuf, reason: String },
    NoCertificate { path: PathBuf },
    BadCertificate { path: PathBuf, reason: String },
    KeyUnreadable { path: PathBuf, reason: String },
    BadKey { path: PathBuf, reason: String },
    Mismatch { cert: PathBuf, key: PathBuf },
}

impl fmt::Display for ClientCertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const CERT_HINT: &str =
            "--client-cert must name a PEM certificate file (BEGIN CERTIFICATE) readable by root";
        const KEY_HINT: &str = "--client-key must name the PEM private key (PKCS#8, PKCS#1 or SEC1) of --client-cert, readable by root";
        match self {
            ClientCertError::CertUnreadable { path, reason } => write!(
                f,
                "cannot read client certificate {}: {reason}; {CERT_HINT}",
                path.display()
            ),
            ClientCertError::NoCertificate { path } => write!(
                f,
                "client certificate {} holds no PEM certificate; {CERT_HINT}",
                path.display()
            ),
            ClientCertError::BadCertificate { path, reason } => write!(
                f,
                "client certificate {} is not a usable certificate: {reason}; {CERT_HINT}",
                path.display()
            ),
            ClientCertError::KeyUnreadable { path, reason } => write!(
                f,
                "cannot read client key {}: {reason}; {KEY_HINT}",
                path.display()
            ),
            ClientCertError::BadKey { path, reason } => write!(
                f,
                "client key {} is not a usable private key: {reason}; {KEY_HINT}",
                path.display()
            ),
            ClientCertError::Mismatch { cert, key } => write!(
                f,
                "client key {} does not match client certificate {}; give the key the certificate was issued for (mount.efs uses /etc/amazon/efs/privateKey.pem)",
                key.display(),
                cert.display()
            ),
        }
    }
}

impl std::error::Error for ClientCertError {}

/// Reads both files and checks that they make a pair rustls can present: one or more PEM
/// certificates, a PEM private key of a kind `provider` can sign with, whose public half
/// is the first certificate's.
pub fn load(
    files: &ClientCertFiles,
    provider: &CryptoProvider,
) -> Result<ClientPair, ClientCertError> {
    let chain = read_chain(&files.cert)?;
    let key = read_key(&files.key)?;
    let bad_cert = |reason: String| ClientCertError::BadCertificate {
        path: files.cert.clone(),
        reason,
    };
    let summary = chain
        .first()
        .and_then(|c| certinfo::summarize(c.as_ref()))
        .ok_or_else(|| bad_cert("not an X.509 certificate".into()))?;
    let signing_key =
        provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| ClientCertError::BadKey {
                path: files.key.clone(),
                reason: e.to_string(),
            })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        // The key cannot tell its public half: rustls (and EFS) will judge the signature.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(_)) => {
            return Err(ClientCertError::Mismatch {
                cert: files.cert.clone(),
                key: files.key.clone(),
            })
        }
        Err(e) => return Err(bad_cert(e.to_string())),
    }
    Ok(ClientPair {
        certified,
        subject: summary.subject,
        not_after_unix: summary.not_after_unix,
    })
}

/// More than any certificate chain or key: a path that names something else (a device,
/// a log) is refused instead of read to the end.
const MAX_FILE: u64 = 1 << 20;

fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_FILE + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(std::io::Error::other(format!(
            "larger than {} KiB",
            MAX_FILE / 1024
        )));
    }
    Ok(bytes)
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, ClientCertError> {
    let bytes = read_bounded(path).map_err(|e| ClientCertError::CertUnreadable {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let chain = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ClientCertError::BadCertificate {
            path: path.to_path_buf(),
            reason: format!("bad PEM: {e}"),
        })?;
    if chain.is_empty() {
        return Err(ClientCertError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(chain)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, ClientCertError> {
    let bytes = read_bounded(path).map_err(|e| ClientCertError::KeyUnreadable {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| ClientCertError::BadKey {
        path: path.to_path_buf(),
        // Said in our words: a PEM error may quote a line of the file.
        reason: match e {
            pem::Error::NoItemsFound => "it holds no PEM private key".into(),
            _ => "bad PEM".into(),
        },
    })
}

/// The pair new connections present, and its history for the status.
#[derive(Debug)]
pub struct ClientCert {
    current: ClientPair,
    loaded_unix: i64,
    reloads: u64,
    reload_error: Option<String>,
}

impl ClientCert {
    /// The pair at start. An error here stops the tunnel.
    pub fn load(
        files: &ClientCertFiles,
        provider: &CryptoProvider,
    ) -> Result<Self, ClientCertError> {
        let current = load(files, provider)?;
        Ok(ClientCert {
            current,
            loaded_unix: unix_now(),
            reloads: 0,
            reload_error: None,
        })
    }

    pub fn current(&self) -> &ClientPair {
        &self.current
    }

    /// Takes the outcome of reading the files again: a good pair replaces the current
    /// one and clears the last reload error; a bad one is remembered as that error, and
    /// the current pair stays.
    pub fn reloaded(&mut self, outcome: Result<ClientPair, ClientCertError>) {
        match outcome {
            Ok(pair) => {
                self.current = pair;
                self.loaded_unix = unix_now();
                self.reloads += 1;
                self.reload_error = None;
            }
            Err(e) => self.reload_error = Some(e.to_string()),
        }
    }

    pub fn status(&self) -> ClientCertStatus {
        ClientCertStatus {
            not_after_unix: self.current.not_after_unix,
            loaded_unix: self.loaded_unix,
            reloads: self.reloads,
            reload_error: self.reload_error.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);

    impl Dir {
        fn new(tag: &str) -> Dir {
            let p =
                std::env::temp_dir().join(format!("efs-client-cert-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }

        /// Writes `tag-cert.pem` and `tag-key.pem`.
        fn pair(&self, tag: &str, cert: &str, key: &str) -> ClientCertFiles {
            let files = ClientCertFiles {
                cert: self.0.join(format!("{tag}-cert.pem")),
                key: self.0.join(format!("{tag}-key.pem")),
            };
            std::fs::write(&files.cert, cert).unwrap();
            std::fs::write(&files.key, key).unwrap();
            files
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn self_signed(cn: &str) -> (String, String) {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.not_after = rcgen::date_time_ymd(2031, 7, 4);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn provider() -> CryptoProvider {
        crate::policy::provider(false)
    }

    #[test]
    fn a_good_pair_loads_with_its_subject_and_expiry() {
        let dir = Dir::new("good");
        let (cert, key) = self_signed("ip-10-0-1-5");
        let pair = load(&dir.pair("good", &cert, &key), &provider()).unwrap();
        assert_eq!(pair.subject, "CN=ip-10-0-1-5");
        assert_eq!(pair.not_after_unix, 1_940_889_600);
        assert_eq!(
            pair.to_string(),
            "CN=ip-10-0-1-5, valid until 2031-07-04 00:00:00 UTC"
        );
        assert!(!format!("{pair:?}").contains("PRIVATE"));
    }

    #[test]
    fn every_bad_pair_is_one_line_naming_the_file() {
        let dir = Dir::new("bad");
        let (cert, key) = self_signed("a");
        let (_, other_key) = self_signed("b");
        let files = dir.pair("good", &cert, &key);
        let missing = ClientCertFiles {
            cert: dir.0.join("missing.pem"),
            key: files.key.clone(),
        };
        let cases: Vec<(ClientCertFiles, &str, &str)> = vec![
            (missing, "missing.pem", "cannot read client certificate"),
            (
                dir.pair("a", "garbage\n", &key),
                "cert.pem",
                "holds no PEM certificate",
            ),
            (
                dir.pair(
                    "b",
                    "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                    &key,
                ),
                "cert.pem",
                "not a usable certificate",
            ),
            (
                dir.pair("c", &cert, "garbage\n"),
                "key.pem",
                "holds no PEM private key",
            ),
            (
                dir.pair("d", &cert, &cert),
                "key.pem",
                "holds no PEM private key",
            ),
            (
                dir.pair("e", &cert, &other_key),
                "key.pem",
                "does not match",
            ),
            (
                ClientCertFiles {
                    cert: "/dev/zero".into(),
                    key: files.key.clone(),
                },
                "/dev/zero",
                "larger than 1024 KiB",
            ),
        ];
        for (files, names, says) in cases {
            let err = load(&files, &provider()).unwrap_err().to_string();
            assert!(err.contains(names) && err.contains(says), "{err}");
            assert_eq!(err.lines().count(), 1, "{err}");
            assert!(!err.contains("PRIVATE KEY-----"), "{err}");
        }
    }

    #[test]
    fn a_bad_reload_keeps_the_pair_and_a_good_one_clears_the_error() {
        let dir = Dir::new("reload");
        let (cert, key) = self_signed("first");
        let mut cc = ClientCert::load(&dir.pair("1", &cert, &key), &provider()).unwrap();
        assert_eq!(cc.status().reloads, 0);
        cc.reloaded(load(&dir.pair("2", "garbage", &key), &provider()));
        assert_eq!(cc.current().subject, "CN=first");
        assert!(cc.status().reload_error.unwrap().contains("cert.pem"));
        let (cert, key) = self_signed("second");
        cc.reloaded(load(&dir.pair("3", &cert, &key), &provider()));
        let st = cc.status();
        assert_eq!((st.reloads, st.reload_error), (1, None));
        assert_eq!(cc.current().subject, "CN=second");
    }
}
