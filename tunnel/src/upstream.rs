//! Opening the upstream side of a connection: resolve the mount target, connect TCP,
//! and complete a verified TLS handshake with the check-host name as SNI.
//!
//! Every failure is an [`UpstreamError`] that says which step failed and why; the
//! connection task closes the client connection and the tunnel logs the error once (see
//! `Stats::upstream_failed`).

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::socket::{setsockopt, sockopt};
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::io::BufReader;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// The TLS stream to the mount target. Reads from the socket go through a large buffer
/// because rustls itself asks for at most 4 KiB per read: without it, each 16 KiB record
/// costs four or five `read` syscalls.
pub type TlsStream = tokio_rustls::client::TlsStream<BufReader<TcpStream>>;

/// Socket reads on the TLS side are this large.
const TLS_READ_BUF: usize = 64 * 1024;
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a tunnel forwards to, and what it expects to find there.
#[derive(Debug, Clone)]
pub struct Target {
    /// Host name or IP address to connect to (a mount target IP, or the file system's
    /// DNS name).
    pub host: String,
    pub port: u16,
    /// The name the certificate must match, also sent as SNI.
    pub check_host: ServerName<'static>,
    /// For log lines only.
    pub fs_id: Option<String>,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(fs) = &self.fs_id {
            write!(f, "{fs} ")?;
        }
        write!(f, "at {}:{} (", self.host, self.port)?;
        if let ServerName::DnsName(name) = &self.check_host {
            write!(f, "TLS name {}", name.as_ref())?;
        } else {
            write!(f, "TLS name {:?}", self.check_host)?;
        }
        write!(f, ")")
    }
}

/// Which step of reaching the mount target failed.
#[derive(Debug)]
pub enum UpstreamError {
    Resolve(io::Error),
    NoAddress,
    Connect(SocketAddr, io::Error),
    Timeout(&'static str),
    /// The TLS handshake failed: a bad certificate, a wrong name, no common protocol
    /// version or cipher suite, or an alert from the server.
    Handshake(io::Error),
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpstreamError::Resolve(e) => write!(f, "DNS lookup failed: {e}"),
            UpstreamError::NoAddress => write!(f, "DNS lookup returned no address"),
            UpstreamError::Connect(addr, e) => write!(f, "TCP connect to {addr} failed: {e}"),
            UpstreamError::Timeout(step) => write!(f, "{step} timed out"),
            UpstreamError::Handshake(e) => {
                match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                    Some(tls) => write!(f, "TLS handshake refused: {tls}{}", hint(tls)),
                    None => write!(f, "TLS handshake failed: {e}"),
                }
            }
        }
    }
}

impl std::error::Error for UpstreamError {}

/// What an operator should make of the less obvious TLS failures.
fn hint(e: &rustls::Error) -> &'static str {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    match e {
        E::InvalidCertificate(C::UnknownIssuer) => {
            " (the certificate does not chain to a trusted CA: check the cafile option or stunnel_cafile)"
        }
        E::AlertReceived(A::HandshakeFailure | A::InsufficientSecurity) => {
            " (the server offers no cipher suite or key exchange we allow: TLS 1.2+ with AEAD ciphers only)"
        }
        E::AlertReceived(A::ProtocolVersion) | E::PeerIncompatible(_) => {
            " (the server does not speak TLS 1.2 or 1.3)"
        }
        _ => "",
    }
}

/// Connects to the mount target and completes the TLS handshake.
pub async fn connect(target: &Target, tls: Arc<ClientConfig>) -> Result<TlsStream, UpstreamError> {
    let tcp = connect_tcp(target).await?;
    let connector = TlsConnector::from(tls);
    let handshake = connector.connect(
        target.check_host.clone(),
        BufReader::with_capacity(TLS_READ_BUF, tcp),
    );
    tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| UpstreamError::Timeout("TLS handshake"))?
        .map_err(UpstreamError::Handshake)
}

async fn connect_tcp(target: &Target) -> Result<TcpStream, UpstreamError> {
    let lookup = tokio::net::lookup_host((target.host.as_str(), target.port));
    let mut addrs: Vec<SocketAddr> = tokio::time::timeout(RESOLVE_TIMEOUT, lookup)
        .await
        .map_err(|_| UpstreamError::Timeout("DNS lookup"))?
        .map_err(UpstreamError::Resolve)?
        .collect();
    // IPv4 first: on dual-stack hosts whose mount targets are IPv4-only, trying IPv6 first
    // made the incumbent's mounts time out (aws/efs-utils #356).
    addrs.sort_by_key(|a| a.is_ipv6());
    let mut last = UpstreamError::NoAddress;
    for addr in addrs {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                tune_upstream_socket(&stream);
                return Ok(stream);
            }
            Ok(Err(e)) => last = UpstreamError::Connect(addr, e),
            Err(_) => {
                last = UpstreamError::Connect(
                    addr,
                    io::Error::new(io::ErrorKind::TimedOut, "timed out"),
                )
            }
        }
    }
    Err(last)
}

/// No Nagle delay (NFS RPCs are latency-bound) and keepalive, so a mount target that
/// vanished without a FIN is noticed in about a minute and a half rather than hours.
fn tune_upstream_socket(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let _ = setsockopt(stream, sockopt::KeepAlive, &true);
    let _ = setsockopt(stream, sockopt::TcpKeepIdle, &60);
    let _ = setsockopt(stream, sockopt::TcpKeepInterval, &10);
    let _ = setsockopt(stream, sockopt::TcpKeepCount, &3);
}
