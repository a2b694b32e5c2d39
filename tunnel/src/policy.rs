//! The TLS policy: the one place that decides what the tunnel will accept from a mount
//! target. Everything here is fixed at build time except three operator choices (the CA
//! file, FIPS mode, and the explicit opt-out of hostname checking).
//!
//! * Protocol versions: TLS 1.3 and TLS 1.2 only. SSLv3, TLS 1.0 and 1.1, renegotiation
//!   and compression are not implemented by rustls at all, so they cannot be switched on.
//! * Cipher suites: only the AEAD set AWS documents for its endpoints, in this order:
//!   TLS 1.3 AES-256-GCM, CHACHA20-POLY1305, AES-128-GCM; TLS 1.2 ECDHE (ECDSA or RSA)
//!   with AES-256-GCM-SHA384, CHACHA20-POLY1305-SHA256, AES-128-GCM-SHA256.
//! * Key exchange: X25519 first, then P-256 and P-384.
//! * FIPS mode narrows this to AES-GCM suites and the P-256/P-384 groups. Whether the
//!   crypto module itself is the FIPS-validated AWS-LC build is a compile-time fact
//!   (the `fips` cargo feature), reported by [`fips_module_built_in`].
//! * The crypto provider is *ring* by default and AWS-LC's FIPS module with the `fips`
//!   feature. ring is the default because its AES-GCM uses the VAES/VPCLMULQDQ AVX2 code
//!   on the CPUs EFS clients run on, which made sealing 16 KiB records 1.4-2x cheaper than
//!   AWS-LC's AES-NI code on the benchmark machine (0.21 against 0.30-0.45 CPU-s/GiB), and
//!   AES-GCM is the largest single cost of the data path (docs/performance.md).
//! * Verification is always on: the chain must lead to a trusted root (the CA file, or
//!   the bundled webpki roots, which include the Amazon roots), and the leaf must match
//!   the check-host name (RFC 6125 wildcards), which is also sent as SNI, whatever address
//!   the TCP connection goes to. Only the hostname match can be turned off, and only
//!   through [`HostnameCheck::DisabledByConfig`], which the caller must log loudly.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use backend::{cipher_suite as cs, kx_group};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
#[cfg(feature = "fips")]
use rustls::crypto::aws_lc_rs as backend;
#[cfg(not(feature = "fips"))]
use rustls::crypto::ring as backend;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

/// Which roots a server certificate chain must lead to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// The PEM bundle at this path (reloaded on SIGHUP).
    CaFile(PathBuf),
    /// The Mozilla root set compiled into the binary (includes Amazon Root CA 1-4).
    BundledRoots,
}

/// Whether the server certificate must match the check-host name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostnameCheck {
    Required,
    /// The operator set `stunnel_check_cert_hostname = false`. The chain is still
    /// verified; only the name match is skipped.
    DisabledByConfig,
}

/// The operator's choices; everything else about TLS is fixed by this module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPolicy {
    pub trust: Trust,
    pub hostname: HostnameCheck,
    /// Restrict to FIPS-approved algorithms (`fips_mode_enabled`).
    pub fips: bool,
    /// Let a connection's traffic keys leave rustls for the kernel's TLS after the
    /// handshake ([`crate::ktls`]). Never with `fips`: the kernel's ciphers are not the
    /// validated module.
    pub kernel_tls: bool,
}

/// Why a TLS client configuration could not be built.
#[derive(Debug)]
pub enum PolicyError {
    CaFileUnreadable { path: PathBuf, reason: String },
    CaFileHasNoCertificates { path: PathBuf },
    Rustls(String),
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyError::CaFileUnreadable { path, reason } => write!(
                f,
                "cannot read CA file {}: {reason}; check the cafile option or stunnel_cafile in the config",
                path.display()
            ),
            PolicyError::CaFileHasNoCertificates { path } => write!(
                f,
                "CA file {} holds no PEM certificate; point cafile at a PEM bundle",
                path.display()
            ),
            PolicyError::Rustls(e) => write!(f, "TLS configuration rejected: {e}"),
        }
    }
}

impl std::error::Error for PolicyError {}

/// True when this binary was built with the FIPS-validated AWS-LC module.
pub fn fips_module_built_in() -> bool {
    cfg!(feature = "fips")
}

/// The crypto library this build carries, for `--version`.
pub fn crypto_module() -> &'static str {
    if fips_module_built_in() {
        "aws-lc-rs FIPS"
    } else {
        "ring"
    }
}

/// One line for `--version`: what the FIPS switch means in this build.
pub fn fips_description() -> &'static str {
    if fips_module_built_in() {
        "FIPS: built with the FIPS 140-3 validated AWS-LC module; fips_mode_enabled also restricts algorithms"
    } else {
        "FIPS: not built with a validated module; fips_mode_enabled only restricts algorithms to FIPS-approved ones"
    }
}

/// The crypto provider: the allowed suites and groups, in preference order.
pub fn provider(fips: bool) -> CryptoProvider {
    let base = backend::default_provider();
    let cipher_suites = if fips {
        vec![
            cs::TLS13_AES_256_GCM_SHA384,
            cs::TLS13_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        ]
    } else {
        vec![
            cs::TLS13_AES_256_GCM_SHA384,
            cs::TLS13_CHACHA20_POLY1305_SHA256,
            cs::TLS13_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        ]
    };
    let kx_groups = if fips {
        vec![kx_group::SECP256R1, kx_group::SECP384R1]
    } else {
        vec![kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1]
    };
    CryptoProvider {
        cipher_suites,
        kx_groups,
        ..base
    }
}

/// Loads the trust anchors the policy names.
pub fn root_store(trust: &Trust) -> Result<RootCertStore, PolicyError> {
    let mut roots = RootCertStore::empty();
    match trust {
        Trust::BundledRoots => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Trust::CaFile(path) => {
            for cert in read_pem_certs(path)? {
                // A bundle may carry certificates webpki cannot use as anchors (odd
                // encodings); skip those as OpenSSL-based tools do, but demand one good one.
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(PolicyError::CaFileHasNoCertificates { path: path.clone() });
            }
        }
    }
    Ok(roots)
}

fn read_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PolicyError> {
    let unreadable = |reason: String| PolicyError::CaFileUnreadable {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| unreadable(e.to_string()))?;
    CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unreadable(format!("bad PEM: {e}")))
}

/// Builds the client configuration for upstream connections, presenting no client
/// certificate. One configuration is shared by all connections of a tunnel, so its
/// session cache gives resumption across reconnects.
pub fn client_config(policy: &TlsPolicy) -> Result<ClientConfig, PolicyError> {
    client_config_from(policy, Arc::new(root_store(&policy.trust)?), None)
}

/// Builds the client configuration from trust anchors already loaded, presenting
/// `client_cert` to the mount target if given (what `with_client_auth_cert` does, with a
/// key that was parsed and checked once, in `client_cert::load`). Each configuration
/// starts with a session cache of its own, empty.
pub fn client_config_from(
    policy: &TlsPolicy,
    roots: Arc<RootCertStore>,
    client_cert: Option<&CertifiedKey>,
) -> Result<ClientConfig, PolicyError> {
    let provider = Arc::new(provider(policy.fips));
    let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| PolicyError::Rustls(e.to_string()))?;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| PolicyError::Rustls(e.to_string()))?;
    let builder = match policy.hostname {
        HostnameCheck::Required => builder.with_webpki_verifier(webpki),
        HostnameCheck::DisabledByConfig => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ChainOnlyVerifier(webpki))),
    };
    let mut config = match client_cert {
        None => builder.with_no_client_auth(),
        Some(pair) => {
            builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(pair.clone())))
        }
    };
    config.enable_secret_extraction = policy.kernel_tls && !policy.fips;
    Ok(config)
}

/// Verifies the chain exactly as webpki does and forgives only a name mismatch. webpki
/// checks the chain before the name, so a `NotValidForName` error means the chain was
/// good.
#[derive(Debug)]
struct ChainOnlyVerifier(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnlyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::{CipherSuite, NamedGroup, ProtocolVersion};

    fn suites(p: &CryptoProvider) -> Vec<CipherSuite> {
        p.cipher_suites.iter().map(|s| s.suite()).collect()
    }

    #[test]
    fn default_suites_are_the_aws_aead_set_in_order() {
        use CipherSuite::*;
        assert_eq!(
            suites(&provider(false)),
            vec![
                TLS13_AES_256_GCM_SHA384,
                TLS13_CHACHA20_POLY1305_SHA256,
                TLS13_AES_128_GCM_SHA256,
                TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
                TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
                TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
                TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
                TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            ]
        );
    }

    #[test]
    fn every_suite_is_aead_and_tls12_or_newer() {
        for fips in [false, true] {
            for s in provider(fips).cipher_suites {
                let name = format!("{:?}", s.suite());
                assert!(
                    name.contains("_GCM_") || name.contains("CHACHA20_POLY1305"),
                    "{name} is not AEAD"
                );
                assert!(
                    !name.contains("CBC") && !name.contains("_SHA,") && !name.ends_with("_SHA")
                );
                assert!(matches!(
                    s.version().version,
                    ProtocolVersion::TLSv1_2 | ProtocolVersion::TLSv1_3
                ));
            }
        }
    }

    #[test]
    fn groups_prefer_x25519_then_nist_curves() {
        let groups: Vec<NamedGroup> = provider(false).kx_groups.iter().map(|g| g.name()).collect();
        assert_eq!(
            groups,
            vec![
                NamedGroup::X25519,
                NamedGroup::secp256r1,
                NamedGroup::secp384r1
            ]
        );
    }

    #[test]
    fn fips_mode_keeps_only_aes_gcm_and_nist_curves() {
        let p = provider(true);
        for s in &p.cipher_suites {
            assert!(
                format!("{:?}", s.suite()).contains("AES"),
                "{:?}",
                s.suite()
            );
        }
        let groups: Vec<NamedGroup> = p.kx_groups.iter().map(|g| g.name()).collect();
        assert_eq!(groups, vec![NamedGroup::secp256r1, NamedGroup::secp384r1]);
        // The FIPS set is a subset of the default set, never something new.
        let all = suites(&provider(false));
        assert!(suites(&p).iter().all(|s| all.contains(s)));
    }

    #[test]
    fn client_config_offers_only_tls12_and_tls13() {
        let cfg = client_config(&TlsPolicy {
            trust: Trust::BundledRoots,
            hostname: HostnameCheck::Required,
            fips: false,
            kernel_tls: false,
        })
        .unwrap();
        assert!(cfg.enable_sni, "SNI must carry the check-host name");
        let versions: Vec<ProtocolVersion> = cfg
            .crypto_provider()
            .cipher_suites
            .iter()
            .map(|s| s.version().version)
            .collect();
        assert!(versions.contains(&ProtocolVersion::TLSv1_3));
        assert!(versions.contains(&ProtocolVersion::TLSv1_2));
        assert_eq!(cfg.fips(), fips_module_built_in());
    }

    #[test]
    fn bundled_roots_include_amazon_root_ca_1() {
        let found = webpki_roots::TLS_SERVER_ROOTS
            .iter()
            .any(|ta| String::from_utf8_lossy(ta.subject.as_ref()).contains("Amazon Root CA 1"));
        assert!(found);
    }

    #[test]
    fn ca_file_errors_name_the_file_and_what_to_do() {
        let missing = PathBuf::from("/nonexistent/efs-ca.pem");
        let err = root_store(&Trust::CaFile(missing)).unwrap_err().to_string();
        assert!(
            err.contains("/nonexistent/efs-ca.pem") && err.contains("cafile"),
            "{err}"
        );

        let empty = std::env::temp_dir().join(format!("efs-empty-ca-{}.pem", std::process::id()));
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = root_store(&Trust::CaFile(empty.clone())).unwrap_err();
        assert!(
            matches!(err, PolicyError::CaFileHasNoCertificates { .. }),
            "{err}"
        );
        std::fs::remove_file(empty).unwrap();
    }
}
