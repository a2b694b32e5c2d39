//! Opening the upstream side of a connection: resolve the mount target, connect TCP,
//! and complete a verified TLS handshake with the check-host name as SNI.
//!
//! Every failure is an [`UpstreamError`] that says which step failed and why; the
//! connection task closes the client connection and the tunnel logs the error once (see
//! `Stats::upstream_error`).

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::socket::{setsockopt, sockopt};
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// The TLS stream to the mount target.
pub type TlsStream = tokio_rustls::client::TlsStream<ReadAhead<TcpStream>>;
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
            write!(f, "{fs} at ")?;
        }
        write!(f, "{}:{} (", self.host, self.port)?;
        if let ServerName::DnsName(name) = &self.check_host {
            write!(f, "TLS name {}", name.as_ref())?;
        } else {
            write!(f, "TLS name {:?}", self.check_host)?;
        }
        write!(f, ")")
    }
}

/// A step of reaching the mount target that has a deadline of its own (a TCP connect
/// that times out is a [`UpstreamError::Connect`] to that address, with the next address
/// still to try).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimedStep {
    /// Resolving the mount target's name (`RESOLVE_TIMEOUT`).
    Resolve,
    /// The TLS handshake (`HANDSHAKE_TIMEOUT`).
    Handshake,
}

impl fmt::Display for TimedStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TimedStep::Resolve => "DNS lookup",
            TimedStep::Handshake => "TLS handshake",
        })
    }
}

/// Which step of reaching the mount target failed.
#[derive(Debug)]
pub enum UpstreamError {
    Resolve(io::Error),
    NoAddress,
    Connect(SocketAddr, io::Error),
    /// A step did not finish within its deadline.
    Timeout(TimedStep),
    /// The TLS handshake failed: a bad certificate, a wrong name, no common protocol
    /// version or cipher suite, or an alert from the server.
    Handshake(io::Error),
    /// TLS 1.3: the handshake completed on our side, then the server refused our client
    /// certificate (or its absence) with this alert.
    RefusedAfterHandshake(rustls::Error),
}

impl UpstreamError {
    /// The mount target's refusal of the client (an authentication alert), if that is
    /// what ended a TLS stream. In TLS 1.3 it arrives after the client's side of the
    /// handshake, on the first read.
    pub fn refused_after_handshake(e: &io::Error) -> Option<UpstreamError> {
        use rustls::AlertDescription as A;
        let tls = e.get_ref()?.downcast_ref::<rustls::Error>()?;
        match tls {
            rustls::Error::AlertReceived(
                A::CertificateRequired
                | A::HandshakeFailure
                | A::BadCertificate
                | A::UnsupportedCertificate
                | A::CertificateRevoked
                | A::CertificateExpired
                | A::CertificateUnknown
                | A::UnknownCA
                | A::AccessDenied,
            ) => Some(UpstreamError::RefusedAfterHandshake(tls.clone())),
            _ => None,
        }
    }

    /// A failure that may pass by itself: the name does not resolve yet, nothing answers
    /// or accepts on the port, a step timed out, or the connection broke during the
    /// handshake (a terminator restarting). A refusal by TLS itself (certificate, name,
    /// protocol version, cipher suite, an alert) is not: trying again cannot change it.
    pub fn is_transient(&self) -> bool {
        match self {
            UpstreamError::Resolve(_)
            | UpstreamError::NoAddress
            | UpstreamError::Connect(..)
            | UpstreamError::Timeout(_) => true,
            UpstreamError::RefusedAfterHandshake(_) => false,
            UpstreamError::Handshake(e) => e
                .get_ref()
                .and_then(|i| i.downcast_ref::<rustls::Error>())
                .is_none(),
        }
    }
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
            UpstreamError::RefusedAfterHandshake(tls) => {
                let hint = match tls {
                    rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired) => {
                        " (the mount target requires a client certificate: mount with -o iam or -o accesspoint)"
                    }
                    _ => " (the mount target refused the client certificate: check the IAM identity's permissions, the file system policy and the access point)",
                };
                write!(f, "TLS handshake refused: {tls}{hint}")
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
            " (the server offers no cipher suite or key exchange we allow: TLS 1.2+ with AEAD ciphers only; or, with a client certificate, it refused that)"
        }
        E::AlertReceived(A::ProtocolVersion) | E::PeerIncompatible(_) => {
            " (the server does not speak TLS 1.2 or 1.3)"
        }
        _ => "",
    }
}

/// How the handshake reads the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeReads {
    /// With read-ahead, as the data path does.
    Buffered,
    /// One TLS record per read, so that nothing past the handshake leaves the kernel and
    /// the connection can be given to kernel TLS after it ([`crate::ktls`]). Two reads
    /// per handshake record (a handful per connection); [`crate::ktls::offload`] or
    /// [`uncork`] ends it.
    RecordByRecord,
}

/// Connects to the mount target and completes the TLS handshake. With `user_timeout`,
/// the kernel closes the connection when sent data stays unacknowledged that long.
pub async fn connect(
    target: &Target,
    tls: Arc<ClientConfig>,
    user_timeout: Option<Duration>,
    reads: HandshakeReads,
) -> Result<TlsStream, UpstreamError> {
    let tcp = connect_tcp(target, user_timeout).await?;
    let connector = TlsConnector::from(tls);
    let io = match reads {
        HandshakeReads::Buffered => ReadAhead::new(tcp),
        HandshakeReads::RecordByRecord => ReadAhead::corked(tcp),
    };
    let handshake = connector.connect(target.check_host.clone(), io);
    let mut tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| UpstreamError::Timeout(TimedStep::Handshake))?
        .map_err(UpstreamError::Handshake)?;
    // rustls holds at most 64 KiB of outgoing records by default, which would cap each
    // `writev` to the mount target at four records; let a whole copy buffer through.
    tls.get_mut().1.set_buffer_limit(Some(crate::copy::BUF_MAX));
    Ok(tls)
}

async fn connect_tcp(
    target: &Target,
    user_timeout: Option<Duration>,
) -> Result<TcpStream, UpstreamError> {
    let lookup = tokio::net::lookup_host((target.host.as_str(), target.port));
    let mut addrs: Vec<SocketAddr> = tokio::time::timeout(RESOLVE_TIMEOUT, lookup)
        .await
        .map_err(|_| UpstreamError::Timeout(TimedStep::Resolve))?
        .map_err(UpstreamError::Resolve)?
        .collect();
    // IPv4 first: on dual-stack hosts whose mount targets are IPv4-only, trying IPv6 first
    // made the incumbent's mounts time out (aws/efs-utils #356).
    addrs.sort_by_key(|a| a.is_ipv6());
    let mut last = UpstreamError::NoAddress;
    for addr in addrs {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                tune_upstream_socket(&stream, user_timeout);
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
/// `TCP_USER_TIMEOUT` bounds how long sent data may stay unacknowledged (a mount target
/// that is gone while requests are in flight); with it, the first unanswered keepalive
/// probe past that time also ends the connection.
fn tune_upstream_socket(stream: &TcpStream, user_timeout: Option<Duration>) {
    let _ = stream.set_nodelay(true);
    let _ = setsockopt(stream, sockopt::KeepAlive, &true);
    let _ = setsockopt(stream, sockopt::TcpKeepIdle, &60);
    let _ = setsockopt(stream, sockopt::TcpKeepInterval, &10);
    let _ = setsockopt(stream, sockopt::TcpKeepCount, &3);
    if let Some(t) = user_timeout {
        let ms = u32::try_from(t.as_millis()).unwrap_or(u32::MAX);
        let _ = setsockopt(stream, sockopt::TcpUserTimeout, &ms);
    }
}

/// Socket reads under rustls go through this buffer, because rustls asks for at most
/// 4 KiB per read: unbuffered, each 16 KiB record would cost four or five `read`
/// syscalls. It starts at [`READ_AHEAD_START`] and grows to [`READ_AHEAD_MAX`] when a
/// read fills it (a bulk stream), so RPC-sized traffic and idle connections stay small.
/// Writes pass straight through.
#[derive(Debug)]
pub struct ReadAhead<IO> {
    io: IO,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// While corked: where the reads stand in the stream's TLS records.
    records: Option<RecordCursor>,
}

/// Where a stream of TLS records stands: how much of the 5-byte header of the next
/// record has been read, or how much of the current record's body is left.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct RecordCursor {
    header: [u8; 5],
    header_read: usize,
    body_left: usize,
}

impl RecordCursor {
    /// The most the next read may take without crossing a record's end.
    fn next_read(&self) -> usize {
        if self.header_read < 5 {
            5 - self.header_read
        } else {
            self.body_left
        }
    }

    /// Moves past `bytes`, which are at most [`RecordCursor::next_read`] long.
    fn advance(&mut self, bytes: &[u8]) {
        if self.header_read < 5 {
            let n = bytes.len().min(5 - self.header_read);
            self.header[self.header_read..self.header_read + n].copy_from_slice(&bytes[..n]);
            self.header_read += n;
            if self.header_read == 5 {
                self.body_left = usize::from(u16::from_be_bytes([self.header[3], self.header[4]]));
            }
        } else {
            self.body_left -= bytes.len().min(self.body_left);
        }
        if self.header_read == 5 && self.body_left == 0 {
            *self = RecordCursor::default();
        }
    }

    fn at_boundary(&self) -> bool {
        self.header_read == 0
    }
}

const READ_AHEAD_START: usize = 8 * 1024;
const READ_AHEAD_MAX: usize = 256 * 1024;

impl<IO> ReadAhead<IO> {
    pub fn new(io: IO) -> Self {
        ReadAhead {
            io,
            buf: Vec::new(),
            start: 0,
            end: 0,
            records: None,
        }
    }

    /// Reads one TLS record at a time, never past a record's end (see
    /// [`HandshakeReads::RecordByRecord`]).
    pub fn corked(io: IO) -> Self {
        ReadAhead {
            records: Some(RecordCursor::default()),
            ..ReadAhead::new(io)
        }
    }

    /// Back to reading all the kernel has.
    pub fn uncork(&mut self) {
        self.records = None;
    }

    /// True when every byte read so far was read record by record, up to the end of a
    /// record, and handed on: what is left of the stream is all in the kernel.
    pub fn at_record_boundary(&self) -> bool {
        self.start == self.end && self.records.is_some_and(|r| r.at_boundary())
    }

    pub fn io(&self) -> &IO {
        &self.io
    }

    pub fn into_inner(self) -> IO {
        self.io
    }

    /// Frees the buffer if it holds nothing unread.
    fn release(&mut self) {
        if self.start == self.end {
            self.buf = Vec::new();
            self.start = 0;
            self.end = 0;
        }
    }
}

/// Ends [`HandshakeReads::RecordByRecord`] for a connection that stays on rustls.
pub fn uncork(tls: &mut TlsStream) {
    tls.get_mut().0.uncork();
}

/// Whether the connection's handshake resumed a session.
pub fn resumed(tls: &TlsStream) -> bool {
    matches!(
        tls.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    )
}

impl crate::copy::ReleaseBuffers for TlsStream {
    fn release_buffers(&mut self) {
        self.get_mut().0.release();
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for ReadAhead<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.start == this.end {
            if this.buf.is_empty() {
                this.buf = vec![0; READ_AHEAD_START];
            }
            let room = match this.records {
                Some(r) => r.next_read().clamp(1, this.buf.len()),
                None => this.buf.len(),
            };
            let mut rb = ReadBuf::new(&mut this.buf[..room]);
            if Pin::new(&mut this.io).poll_read(cx, &mut rb)?.is_pending() {
                // Nothing buffered and nothing to read: an idle connection holds no
                // read-ahead buffer unless a bulk stream grew it.
                if this.buf.len() <= READ_AHEAD_START {
                    this.release();
                }
                return Poll::Pending;
            }
            let n = rb.filled().len();
            if let Some(r) = &mut this.records {
                r.advance(&this.buf[..n]);
            } else if n == this.buf.len() && n < READ_AHEAD_MAX {
                this.buf.resize(n * 2, 0);
            }
            this.start = 0;
            this.end = n;
            if n == 0 {
                return Poll::Ready(Ok(()));
            }
        }
        let n = out.remaining().min(this.end - this.start);
        out.put_slice(&this.buf[this.start..this.start + n]);
        this.start += n;
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for ReadAhead<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn a_target_reads_well_in_a_log_line_with_and_without_its_fs_id() {
        let mut t = Target {
            host: "10.0.1.5".into(),
            port: 2049,
            check_host: ServerName::try_from("fs-1.efs.us-east-1.amazonaws.com").unwrap(),
            fs_id: Some("fs-1".into()),
        };
        assert_eq!(
            t.to_string(),
            "fs-1 at 10.0.1.5:2049 (TLS name fs-1.efs.us-east-1.amazonaws.com)"
        );
        t.fs_id = None;
        assert_eq!(
            t.to_string(),
            "10.0.1.5:2049 (TLS name fs-1.efs.us-east-1.amazonaws.com)"
        );
    }

    #[test]
    fn only_an_authentication_alert_is_a_refusal_after_the_handshake() {
        use rustls::AlertDescription as A;
        let alert = |a| io::Error::new(io::ErrorKind::InvalidData, rustls::Error::AlertReceived(a));
        let refused = UpstreamError::refused_after_handshake(&alert(A::CertificateRequired))
            .expect("a refusal");
        assert!(!refused.is_transient());
        assert_eq!(
            crate::stats::FailedStep::of(&refused),
            crate::stats::FailedStep::Handshake
        );
        assert!(
            refused
                .to_string()
                .contains("requires a client certificate"),
            "{refused}"
        );
        let denied = UpstreamError::refused_after_handshake(&alert(A::HandshakeFailure)).unwrap();
        assert!(
            denied
                .to_string()
                .contains("refused the client certificate"),
            "{denied}"
        );
        assert!(UpstreamError::refused_after_handshake(&alert(A::DecodeError)).is_none());
        assert!(UpstreamError::refused_after_handshake(&io::Error::from(
            io::ErrorKind::BrokenPipe
        ))
        .is_none());
    }

    #[test]
    fn a_timeout_says_which_step_and_counts_where_it_happened() {
        use crate::stats::FailedStep;
        let dns = UpstreamError::Timeout(TimedStep::Resolve);
        let tls = UpstreamError::Timeout(TimedStep::Handshake);
        assert_eq!(dns.to_string(), "DNS lookup timed out");
        assert_eq!(tls.to_string(), "TLS handshake timed out");
        assert!(dns.is_transient() && tls.is_transient());
        assert_eq!(FailedStep::of(&dns), FailedStep::Connect);
        assert_eq!(FailedStep::of(&tls), FailedStep::Handshake);
    }

    #[tokio::test]
    async fn corked_reads_never_cross_a_record_end() {
        let (mut far, near) = tokio::io::duplex(1 << 20);
        let record = |len: u16| {
            let mut r = vec![23, 3, 3];
            r.extend_from_slice(&len.to_be_bytes());
            r.extend(std::iter::repeat_n(0xAB, usize::from(len)));
            r
        };
        // Three records in one write, the last one longer than the read buffer, and an
        // empty one; then a stray byte of the next record.
        let stream = [record(300), record(0), record(20_000), vec![23]].concat();
        far.write_all(&stream).await.unwrap();
        let mut ra = ReadAhead::corked(near);
        let mut got = Vec::new();
        let mut small = [0u8; 4096];
        let ends = [305, 310, 310 + 20_005];
        for end in ends {
            while got.len() < end {
                let n = ra.read(&mut small).await.unwrap();
                got.extend_from_slice(&small[..n]);
                assert!(got.len() <= end, "a read crossed the end of a record");
            }
            assert!(ra.at_record_boundary());
        }
        assert_eq!(got, stream[..stream.len() - 1]);
        // Once uncorked, it reads all there is.
        ra.uncork();
        assert_eq!(ra.read(&mut small).await.unwrap(), 1);
        assert!(!ra.at_record_boundary());
    }

    #[tokio::test]
    async fn read_ahead_passes_every_byte_and_grows_for_bulk() {
        let (mut far, near) = tokio::io::duplex(1 << 20);
        let data: Vec<u8> = (0..500_000u32).map(|i| (i % 251) as u8).collect();
        far.write_all(&data).await.unwrap();
        far.shutdown().await.unwrap();
        let mut ra = ReadAhead::new(near);
        let mut got = Vec::new();
        let mut small = [0u8; 4096]; // rustls' read size
        loop {
            let n = ra.read(&mut small).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&small[..n]);
        }
        assert_eq!(got, data);
        assert_eq!(ra.buf.len(), READ_AHEAD_MAX);
    }

    #[tokio::test]
    async fn read_ahead_stays_small_for_small_messages() {
        let (mut far, near) = tokio::io::duplex(1 << 20);
        let mut ra = ReadAhead::new(near);
        let mut small = [0u8; 4096];
        for _ in 0..100 {
            far.write_all(&[1u8; 300]).await.unwrap();
            let n = ra.read(&mut small).await.unwrap();
            assert_eq!(n, 300);
        }
        assert_eq!(ra.buf.len(), READ_AHEAD_START);
    }

    #[tokio::test]
    async fn read_ahead_gives_its_buffer_back_when_the_connection_falls_quiet() {
        let (mut far, near) = tokio::io::duplex(1 << 20);
        let mut ra = ReadAhead::new(near);
        let mut small = [0u8; 4096];
        far.write_all(&[1u8; 300]).await.unwrap();
        assert_eq!(ra.read(&mut small).await.unwrap(), 300);
        assert!(!ra.buf.is_empty());
        // Nothing more arrives: the read waits, and the buffer is gone meanwhile.
        let waited = tokio::time::timeout(Duration::from_millis(20), ra.read(&mut small)).await;
        assert!(waited.is_err(), "the read should still be waiting");
        assert_eq!(ra.buf.capacity(), 0);
        // The next message is read as before.
        far.write_all(&[2u8; 100]).await.unwrap();
        assert_eq!(ra.read(&mut small).await.unwrap(), 100);
        assert_eq!(&small[..100], &[2u8; 100][..]);
    }
}
