//! The control channel's server half: a Unix socket per tunnel (mode 0600, next to the
//! mount's state file) that answers "how are you?" for the watchdog's health check and
//! the status command.
//!
//! The protocol (request, answer, the [`Status`] type and the blocking client
//! [`query_status`]) is `efs_tunnel_contract::control`, so that its clients need neither
//! tokio nor rustls; it is re-exported here. What is the tunnel's own: serving it, and
//! the names a [`TlsSession`] gives TLS versions and cipher suites
//! ([`tls_version_name`], [`cipher_suite_name`]): efs-utils' own stable strings, mapped
//! from rustls' values in this one table, never rustls' `Debug` text (which may change
//! with any rustls release). They are the names OpenSSL and the IANA registry use
//! (`TLSv1.3`, `TLS_AES_256_GCM_SHA384`), which operators know from `openssl s_client`;
//! before this table, status showed rustls' `Debug` text (`TLSv1_3`,
//! `TLS13_AES_256_GCM_SHA384`): docs/tunnel.md.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::{CipherSuite, ProtocolVersion};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::UnixListener;

pub use efs_tunnel_contract::control::{
    query_status, ClientCertStatus, ControlError, LastError, Status, TlsSession, MAX_REQUEST,
};

use crate::shutdown::Shutdown;

/// Our name for a TLS version, as OpenSSL prints it: `TLSv1.3`, `TLSv1.2`; another version (the policy allows
/// none) as its code point.
pub fn tls_version_name(version: ProtocolVersion) -> String {
    match version {
        ProtocolVersion::TLSv1_3 => "TLSv1.3".into(),
        ProtocolVersion::TLSv1_2 => "TLSv1.2".into(),
        other => code_point(u16::from(other)),
    }
}

/// Our name for a cipher suite, for every suite the policy can negotiate; another suite
/// as its code point.
pub fn cipher_suite_name(suite: CipherSuite) -> String {
    use CipherSuite as C;
    let name = match suite {
        C::TLS13_AES_256_GCM_SHA384 => "TLS_AES_256_GCM_SHA384",
        C::TLS13_AES_128_GCM_SHA256 => "TLS_AES_128_GCM_SHA256",
        C::TLS13_CHACHA20_POLY1305_SHA256 => "TLS_CHACHA20_POLY1305_SHA256",
        C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 => "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 => "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 => {
            "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"
        }
        C::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        C::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => {
            "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256"
        }
        other => return code_point(u16::from(other)),
    };
    name.into()
}

fn code_point(code: u16) -> String {
    format!("0x{code:04X}")
}

/// The listening side, owned by the tunnel process. Removes its socket file when dropped.
pub struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ControlSocket {
    /// Binds the socket, replacing a stale one left by a dead predecessor.
    pub fn bind(path: &Path) -> std::io::Result<ControlSocket> {
        if std::fs::symlink_metadata(path).is_ok() {
            std::fs::remove_file(path)?;
        }
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        Ok(ControlSocket {
            listener,
            path: path.to_path_buf(),
        })
    }

    /// Answers requests until shutdown. `status` builds a fresh snapshot per request.
    pub async fn serve(
        self,
        status: Arc<dyn Fn() -> Status + Send + Sync>,
        mut shutdown: Shutdown,
    ) {
        loop {
            let stream = tokio::select! {
                r = self.listener.accept() => match r {
                    Ok((stream, _)) => stream,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = shutdown.recv() => return,
            };
            let status = status.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(2), answer(stream, status)).await;
            });
        }
    }
}

async fn answer(
    stream: tokio::net::UnixStream,
    status: Arc<dyn Fn() -> Status + Send + Sync>,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    tokio::io::AsyncReadExt::take(tokio::io::BufReader::new(read), MAX_REQUEST)
        .read_line(&mut line)
        .await?;
    let reply = efs_tunnel_contract::control::answer(&line, || status());
    write.write_all(reply.as_bytes()).await?;
    write.shutdown().await
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_negotiable_version_and_suite_has_a_stable_name() {
        assert_eq!(tls_version_name(ProtocolVersion::TLSv1_3), "TLSv1.3");
        assert_eq!(tls_version_name(ProtocolVersion::TLSv1_2), "TLSv1.2");
        assert_eq!(tls_version_name(ProtocolVersion::TLSv1_0), "0x0301");
        assert_eq!(
            cipher_suite_name(CipherSuite::TLS13_AES_256_GCM_SHA384),
            "TLS_AES_256_GCM_SHA384"
        );
        assert_eq!(
            cipher_suite_name(CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256),
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"
        );
        assert_eq!(cipher_suite_name(CipherSuite::from(0x1304)), "0x1304");
        let mut names: Vec<String> = crate::policy::provider(false)
            .cipher_suites
            .iter()
            .map(|s| cipher_suite_name(s.suite()))
            .collect();
        assert!(names.iter().all(|n| !n.starts_with("0x")), "{names:?}");
        let count = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), count, "names are distinct");
    }
}
