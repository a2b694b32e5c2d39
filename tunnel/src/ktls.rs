//! Kernel TLS: after rustls has made and verified the handshake (and, on EFS, the
//! partition bind), the record layer of an upstream connection moves into the kernel
//! (`TCP_ULP "tls"`, `TLS_TX`, `TLS_RX`), and the byte pump or multiplexing's lanes
//! read and write plaintext on the socket ([`Link`]). No record is framed, encrypted or
//! copied through rustls' buffers in user space.
//!
//! Why this shape:
//! * **Decided per connection, never at the cost of one.** [`offload`] takes the
//!   connection only when every condition holds: `kernel_tls` is `auto` (and the kernel
//!   does the connection's cipher in hardware: [`KernelCiphers`]) or `on`, the kernel has
//!   the `tls` ULP (asked once per tunnel: the first `ENOENT` turns it off for the rest of
//!   the tunnel's life, with one log line), the suite is one the kernel carries (every
//!   suite our policy allows is: AES-128-GCM, AES-256-GCM, ChaCha20-Poly1305, TLS 1.2 and
//!   1.3), and nothing of the stream is held in user space: the handshake was read
//!   record by record ([`crate::upstream::ReadAhead::corked`]), so no byte past the last
//!   handshake record left the kernel, and rustls holds no plaintext and nothing to send.
//!   Otherwise the connection stays on rustls, unchanged.
//! * **The kernel's ULP is attached before the secrets leave rustls**, so a kernel that
//!   refuses it costs nothing: the rustls stream goes on as if nothing was tried. A
//!   refusal after that (rare: the kernel lacks a cipher) closes that one connection,
//!   which the hard NFS mount makes again, and turns kernel TLS off for the tunnel.
//! * **Control records** (TLS content types other than application data) reach user
//!   space through `recvmsg`'s `TLS_GET_RECORD_TYPE` and are handled by [`Control`]:
//!   session tickets are dropped (a kernel TLS connection does not resume; new
//!   connections resume from tickets of connections rustls served, and a reconnect costs
//!   one full handshake at worst), `close_notify` is the end of the stream, a warning in
//!   TLS 1.2 and `user_canceled` are ignored, any other alert is the error rustls would
//!   give (so a refused client certificate is still counted as a refused handshake).
//!   A `KeyUpdate` cannot be followed: the kernels we run on (6.1) cannot take new
//!   receive keys, so the record after it would fail to decrypt. The connection is
//!   closed cleanly instead, before any byte is lost, and the hard mount reconnects.
//! * **Key limits.** rustls would update its sending keys before AES-GCM's
//!   confidentiality limit (2^24 records). The kernel cannot, so [`KtlsStream`] counts an
//!   upper bound of the records it has sent and ends the connection cleanly just before
//!   the limit (at small RPCs, one reconnect per some 16 million writes).
//! * No `unsafe` here but the one `sendmsg` that sends `close_notify` with a record
//!   type ([`sys`]); the socket options and `recvmsg` are `nix`'s.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use log::{info, warn};
use nix::sys::socket::setsockopt;
use nix::sys::socket::sockopt::{self, TlsCryptoInfo};
use rustls::{ConnectionTrafficSecrets, ProtocolVersion, SupportedCipherSuite};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

use crate::upstream::TlsStream;

/// `kernel_tls`: whether upstream connections (bound to an EFS partition or not) may move
/// their record layer into the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// When the kernel has the `tls` module and does the connection's cipher in
    /// hardware (see [`KernelCiphers`]).
    Auto,
    /// Whenever the kernel has the `tls` module, even with software ciphers.
    On,
    /// Always rustls.
    Off,
}

/// What the kernel's crypto API offers, as `/proc/crypto` lists it
/// (`EFS_TUNNEL_PROC_CRYPTO` names another file, for tests).
///
/// Why `auto` asks: kernel TLS saves copies and system calls, not cipher work, and a
/// kernel without its CPU's AES instructions (`aesni_intel`, arm64's `aes-ce`) encrypts
/// with the table-driven C implementation, several times slower than rustls' assembly.
/// With only that on offer, `auto` keeps the connection in rustls (`on` does not).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelCiphers {
    /// An AES-GCM AEAD of its own (`generic-gcm-aesni`, `gcm-aes-ce`, ...), not the
    /// `gcm_base(...)` that the kernel's template builds from generic parts.
    pub aes_gcm: bool,
    /// A ChaCha20 other than `chacha20-generic` (`chacha20-simd`, `chacha20-neon`).
    pub chacha20: bool,
}

impl KernelCiphers {
    pub fn parse(proc_crypto: &str) -> KernelCiphers {
        let mut found = KernelCiphers::default();
        for block in proc_crypto.split("\n\n") {
            let field = |key: &str| {
                block.lines().find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    (k.trim() == key).then(|| v.trim())
                })
            };
            match (field("name"), field("driver")) {
                (Some("gcm(aes)"), Some(d)) if !d.starts_with("gcm_base(") => found.aes_gcm = true,
                (Some("chacha20"), Some(d)) if d != "chacha20-generic" => found.chacha20 = true,
                _ => {}
            }
        }
        found
    }

    fn read() -> KernelCiphers {
        let path =
            std::env::var_os("EFS_TUNNEL_PROC_CRYPTO").unwrap_or_else(|| "/proc/crypto".into());
        std::fs::read_to_string(path)
            .map(|t| KernelCiphers::parse(&t))
            .unwrap_or_default()
    }

    /// Whether the kernel does `suite`'s cipher in hardware.
    fn accelerates(&self, suite: SupportedCipherSuite) -> bool {
        use rustls::CipherSuite as C;
        match suite.suite() {
            C::TLS13_CHACHA20_POLY1305_SHA256
            | C::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
            | C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 => self.chacha20,
            _ => self.aes_gcm,
        }
    }
}

/// The largest TLS plaintext record: each `write` becomes at most `ceil(n / MAX_RECORD)`
/// records.
const MAX_RECORD: usize = 16 * 1024;
/// Records kept in hand below the cipher's confidentiality limit.
const LIMIT_MARGIN: u64 = 1 << 16;
/// The longest handshake message a server may send after the handshake (a session
/// ticket is a few hundred bytes); a longer one is taken for garbage.
pub const MAX_POST_HANDSHAKE: usize = 64 * 1024;

/// How a refusal for want of hardware ends, in the log and the status.
const ON_ANYWAY: &str = "kernel_tls = \"on\" uses it anyway";

const UNKNOWN: u8 = 0;
const AVAILABLE: u8 = 1;
const UNAVAILABLE: u8 = 2;

/// What a tunnel knows about kernel TLS, across its connections.
#[derive(Debug)]
pub struct KtlsState {
    mode: Mode,
    kernel: AtomicU8,
    /// What the kernel does in hardware (read at start, `auto` only).
    ciphers: KernelCiphers,
    /// Why the kernel's TLS cannot be used, once known.
    unavailable: Mutex<Option<String>>,
    open: AtomicU64,
    total: AtomicU64,
    /// Connections closed because the kernel could not follow the stream (a KeyUpdate,
    /// the key limit), and their log line.
    closed: AtomicU64,
    closed_log: crate::repeat_log::RepeatLog<()>,
}

impl KtlsState {
    /// With `auto`, reads what the kernel does in hardware; if that is no cipher at all,
    /// no connection is prepared for kernel TLS (its handshake is read as usual).
    pub fn new(mode: Mode) -> KtlsState {
        let ciphers = if mode == Mode::Auto {
            KernelCiphers::read()
        } else {
            KernelCiphers::default()
        };
        let state = KtlsState {
            mode,
            kernel: AtomicU8::new(UNKNOWN),
            ciphers,
            unavailable: Mutex::new(None),
            open: AtomicU64::new(0),
            total: AtomicU64::new(0),
            closed: AtomicU64::new(0),
            closed_log: Default::default(),
        };
        if mode == Mode::Auto && ciphers == KernelCiphers::default() {
            state.give_up(format!(
                "the kernel has no hardware implementation of AES-GCM or ChaCha20 in /proc/crypto, and its software ones are slower than ours; {ON_ANYWAY}"
            ));
        }
        state
    }

    /// Whether a new connection should be prepared for [`offload`] (its handshake read
    /// record by record).
    pub fn may_offload(&self) -> bool {
        self.mode != Mode::Off && self.kernel.load(Ordering::Relaxed) != UNAVAILABLE
    }

    fn give_up(&self, why: String) {
        if self.kernel.swap(UNAVAILABLE, Ordering::Relaxed) != UNAVAILABLE {
            warn!("kernel TLS is not available ({why}): connections use TLS in user space");
            if let Ok(mut u) = self.unavailable.lock() {
                *u = Some(why);
            }
        }
    }

    /// Counts and logs (once, then every few minutes with a count) a connection to
    /// `target` closed cleanly because the kernel could not follow its stream.
    pub fn closed_cleanly(&self, target: &dyn fmt::Display, why: &KtlsError) {
        self.closed.fetch_add(1, Ordering::Relaxed);
        if let Some(repeats) = self.closed_log.occurred(()) {
            info!(
                "{target}: {why}; closed the connection cleanly, the NFS client reconnects{}",
                crate::repeat_log::repeats_suffix(repeats)
            );
        }
    }

    pub fn snapshot(&self) -> efs_tunnel_contract::KernelTlsStatus {
        efs_tunnel_contract::KernelTlsStatus {
            enabled: self.mode != Mode::Off,
            available: match self.kernel.load(Ordering::Relaxed) {
                AVAILABLE => Some(true),
                UNAVAILABLE => Some(false),
                _ => None,
            },
            unavailable_reason: self.unavailable.lock().ok().and_then(|u| u.clone()),
            connections_open: self.open.load(Ordering::Relaxed),
            connections_total: self.total.load(Ordering::Relaxed),
            connections_closed_for_rekey: self.closed.load(Ordering::Relaxed),
        }
    }
}

/// Makes sure the kernel's `tls` module is loaded, while the tunnel may still load it:
/// the kernel loads a ULP's module on first use only for a caller with `CAP_NET_ADMIN`,
/// which the tunnel gives up before it serves ([`crate::privilege`]). One throwaway
/// loopback connection with the ULP attached does it; any failure is left for the first
/// real connection to find and report. Not done where no connection will be offered to
/// the kernel ([`KtlsState::may_offload`]): `off`, or `auto` on a kernel with no
/// hardware cipher.
pub fn load_module(state: &KtlsState) {
    if !state.may_offload() {
        return;
    }
    let Ok(listener) = std::net::TcpListener::bind("127.0.0.1:0") else {
        return;
    };
    let Ok(addr) = listener.local_addr() else {
        return;
    };
    if let Ok(conn) = std::net::TcpStream::connect(addr) {
        let _ = setsockopt(&conn, sockopt::TcpUlp::default(), b"tls");
    }
}

/// An upstream connection after its handshake, as [`offload`] left it: its records in
/// rustls or in the kernel. What the byte pump and multiplexing's lanes move bytes over.
/// (One per connection: the size of the rustls stream in it costs nothing.)
#[allow(clippy::large_enum_variant)]
pub enum Link {
    Rustls(TlsStream),
    Kernel(KtlsStream),
}

impl Link {
    /// Whether its handshake resumed a session.
    pub fn resumed(&self) -> bool {
        match self {
            Link::Rustls(tls) => crate::upstream::resumed(tls),
            Link::Kernel(k) => k.resumed,
        }
    }
}

/// Moves `tls`'s record layer into the kernel if it can be done safely (see the module
/// documentation); otherwise it stays on rustls. An error: the kernel took part of the
/// connection and then refused the rest, so it cannot be used, by either.
pub fn offload(mut tls: TlsStream, state: &Arc<KtlsState>) -> io::Result<Link> {
    if !state.may_offload() || !tls.get_ref().0.at_record_boundary() {
        return Ok(Link::Rustls(uncorked(tls)));
    }
    let (_, conn) = tls.get_mut();
    let (Some(version), Some(suite)) = (conn.protocol_version(), conn.negotiated_cipher_suite())
    else {
        return Ok(Link::Rustls(uncorked(tls)));
    };
    let held = conn
        .process_new_packets()
        .map(|s| s.plaintext_bytes_to_read() > 0 || s.tls_bytes_to_write() > 0)
        .unwrap_or(true);
    if held
        || conn.is_handshaking()
        || !matches!(version, ProtocolVersion::TLSv1_2 | ProtocolVersion::TLSv1_3)
    {
        return Ok(Link::Rustls(uncorked(tls)));
    }
    if state.mode == Mode::Auto && !state.ciphers.accelerates(suite) {
        state.give_up(format!(
            "the kernel has no hardware implementation of {:?} in /proc/crypto, and its software one is slower than ours; {ON_ANYWAY}",
            suite.suite()
        ));
        return Ok(Link::Rustls(uncorked(tls)));
    }
    let resumed = matches!(conn.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
    let tx_budget = confidentiality_limit(suite).saturating_sub(LIMIT_MARGIN);
    if let Err(e) = setsockopt(tls.get_ref().0.io(), sockopt::TcpUlp::default(), b"tls") {
        // ENOENT: no `tls` module, and none could be loaded.
        state.give_up(format!("the kernel refused the tls ULP: {e}"));
        return Ok(Link::Rustls(uncorked(tls)));
    }
    let (read_ahead, conn) = tls.into_inner();
    let tcp = read_ahead.into_inner();
    let secrets = match conn.dangerous_extract_secrets() {
        Ok(s) => s,
        Err(e) => {
            state.give_up(format!("rustls would not hand over the keys: {e}"));
            return Err(io::Error::other(format!("cannot take the TLS keys: {e}")));
        }
    };
    let tls13 = version == ProtocolVersion::TLSv1_3;
    let (Some(tx), Some(rx)) = (
        crypto_info(tls13, secrets.tx.0, &secrets.tx.1),
        crypto_info(tls13, secrets.rx.0, &secrets.rx.1),
    ) else {
        state.give_up(format!("no kernel form for {suite:?}"));
        return Err(io::Error::other("kernel TLS cannot take this cipher suite"));
    };
    let installed = setsockopt(&tcp, sockopt::TcpTlsTx, &tx)
        .and_then(|()| setsockopt(&tcp, sockopt::TcpTlsRx, &rx));
    if let Err(e) = installed {
        state.give_up(format!("the kernel refused the {suite:?} keys: {e}"));
        return Err(io::Error::other(format!(
            "kernel TLS refused the keys: {e}"
        )));
    }
    // Only from UNKNOWN: a connection offloaded at the same time as another one whose
    // keys the kernel refused must not turn kernel TLS back on.
    let first =
        state
            .kernel
            .compare_exchange(UNKNOWN, AVAILABLE, Ordering::Relaxed, Ordering::Relaxed);
    if first.is_ok() {
        info!("kernel TLS in use: records are encrypted and decrypted by the kernel");
    }
    state.open.fetch_add(1, Ordering::Relaxed);
    state.total.fetch_add(1, Ordering::Relaxed);
    Ok(Link::Kernel(KtlsStream {
        tcp,
        state: state.clone(),
        control: Control::new(tls13),
        cmsg: nix::cmsg_space!(u8),
        read_closed: false,
        write_closed: false,
        tx_budget,
        resumed,
    }))
}

/// `tls` with the handshake's record-by-record reads ended, for rustls to serve.
fn uncorked(mut tls: TlsStream) -> TlsStream {
    crate::upstream::uncork(&mut tls);
    tls
}

/// The cipher's limit on records sent under one key (rustls' own figure).
fn confidentiality_limit(suite: SupportedCipherSuite) -> u64 {
    match suite {
        SupportedCipherSuite::Tls13(s) => s.common.confidentiality_limit,
        SupportedCipherSuite::Tls12(s) => s.common.confidentiality_limit,
    }
}

/// The kernel's form of one direction's keys. For AES-GCM the 12-byte IV rustls gives
/// is the kernel's 4-byte salt followed by its 8-byte IV; ChaCha20 takes all 12 as IV.
/// `None`: a cipher or key size the kernel does not take.
fn crypto_info(tls13: bool, seq: u64, secrets: &ConnectionTrafficSecrets) -> Option<TlsCryptoInfo> {
    use nix::libc;
    let info = |cipher_type| libc::tls_crypto_info {
        version: if tls13 {
            libc::TLS_1_3_VERSION
        } else {
            libc::TLS_1_2_VERSION
        },
        cipher_type,
    };
    let rec_seq = seq.to_be_bytes();
    let gcm_iv = |iv: &[u8]| -> Option<([u8; 4], [u8; 8])> {
        let (salt, iv) = iv.split_at_checked(4)?;
        Some((salt.try_into().ok()?, iv.try_into().ok()?))
    };
    Some(match secrets {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv } => {
            let (salt, iv) = gcm_iv(iv.as_ref())?;
            TlsCryptoInfo::Aes128Gcm(libc::tls12_crypto_info_aes_gcm_128 {
                info: info(libc::TLS_CIPHER_AES_GCM_128),
                iv,
                key: key.as_ref().try_into().ok()?,
                salt,
                rec_seq,
            })
        }
        ConnectionTrafficSecrets::Aes256Gcm { key, iv } => {
            let (salt, iv) = gcm_iv(iv.as_ref())?;
            TlsCryptoInfo::Aes256Gcm(libc::tls12_crypto_info_aes_gcm_256 {
                info: info(libc::TLS_CIPHER_AES_GCM_256),
                iv,
                key: key.as_ref().try_into().ok()?,
                salt,
                rec_seq,
            })
        }
        ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
            TlsCryptoInfo::Chacha20Poly1305(libc::tls12_crypto_info_chacha20_poly1305 {
                info: info(libc::TLS_CIPHER_CHACHA20_POLY1305),
                iv: iv.as_ref().try_into().ok()?,
                key: key.as_ref().try_into().ok()?,
                salt: [],
                rec_seq,
            })
        }
        // A suite rustls may add later.
        _ => return None,
    })
}

/// Why a kernel TLS connection ended early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KtlsError {
    /// The server updated its keys (TLS 1.3 KeyUpdate): the kernel cannot follow.
    KeyUpdate,
    /// We have sent as many records as the cipher allows under one key.
    KeyLimit,
    /// A handshake message that has no place after the handshake.
    UnexpectedHandshake(u8),
    /// A record of a content type that has no place after the handshake.
    UnexpectedRecord(u8),
    /// A control record that does not parse.
    Malformed(&'static str),
}

impl KtlsError {
    /// Closed by us, cleanly, before any byte was lost: the mount reconnects.
    pub fn is_clean_close(&self) -> bool {
        matches!(self, KtlsError::KeyUpdate | KtlsError::KeyLimit)
    }
}

impl fmt::Display for KtlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KtlsError::KeyUpdate => write!(
                f,
                "the mount target updated its TLS keys, which kernel TLS cannot follow on this kernel"
            ),
            KtlsError::KeyLimit => write!(
                f,
                "the connection sent as many TLS records as one key allows, and kernel TLS cannot update keys"
            ),
            KtlsError::UnexpectedHandshake(t) => {
                write!(f, "the mount target sent TLS handshake message {t} after the handshake")
            }
            KtlsError::UnexpectedRecord(t) => {
                write!(f, "the mount target sent a TLS record of content type {t}")
            }
            KtlsError::Malformed(what) => write!(f, "malformed TLS control record: {what}"),
        }
    }
}

impl std::error::Error for KtlsError {}

impl From<KtlsError> for io::Error {
    fn from(e: KtlsError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

/// What a control record meant for the stream.
#[derive(Debug, PartialEq, Eq)]
pub enum ControlEvent {
    /// Nothing for the byte stream (a session ticket, a warning): read on.
    Nothing,
    /// `close_notify`: the end of the server's stream.
    Closed,
}

/// The TLS content types ([RFC 8446 §5.1]).
const ALERT: u8 = 21;
const HANDSHAKE: u8 = 22;
/// Handshake message types that may come after the handshake.
const HELLO_REQUEST: u8 = 0;
const NEW_SESSION_TICKET: u8 = 4;
const KEY_UPDATE: u8 = 24;

/// The control records of one connection's receiving side. A record may reach us in
/// pieces (a short read buffer) and a handshake message may span records, so bytes are
/// kept until a whole message is there.
#[derive(Debug, Default)]
pub struct Control {
    tls13: bool,
    handshake: Vec<u8>,
    alert: Vec<u8>,
}

impl Control {
    pub fn new(tls13: bool) -> Control {
        Control {
            tls13,
            ..Control::default()
        }
    }

    /// Takes `bytes` of a record of `content_type` (never application data).
    pub fn feed(&mut self, content_type: u8, bytes: &[u8]) -> Result<ControlEvent, io::Error> {
        match content_type {
            ALERT => {
                self.alert.extend_from_slice(bytes);
                let mut event = ControlEvent::Nothing;
                while self.alert.len() >= 2 && event == ControlEvent::Nothing {
                    let (level, description) = (self.alert[0], self.alert[1]);
                    self.alert.drain(..2);
                    event = self.alert_received(level, description)?;
                }
                if self.alert.is_empty() {
                    self.alert = Vec::new();
                }
                Ok(event)
            }
            HANDSHAKE => {
                self.handshake.extend_from_slice(bytes);
                while self.handshake.len() >= 4 {
                    let kind = self.handshake[0];
                    let len = usize::from(self.handshake[1]) << 16
                        | usize::from(self.handshake[2]) << 8
                        | usize::from(self.handshake[3]);
                    if len > MAX_POST_HANDSHAKE {
                        return Err(KtlsError::Malformed("handshake message too long").into());
                    }
                    if self.handshake.len() < 4 + len {
                        break;
                    }
                    match kind {
                        NEW_SESSION_TICKET if self.tls13 => {}
                        // TLS 1.2: a client may ignore a renegotiation request.
                        HELLO_REQUEST if !self.tls13 => {}
                        KEY_UPDATE if self.tls13 => return Err(KtlsError::KeyUpdate.into()),
                        other => return Err(KtlsError::UnexpectedHandshake(other).into()),
                    }
                    self.handshake.drain(..4 + len);
                }
                if self.handshake.is_empty() {
                    self.handshake = Vec::new();
                }
                Ok(ControlEvent::Nothing)
            }
            other => Err(KtlsError::UnexpectedRecord(other).into()),
        }
    }

    /// Bytes kept for a message not yet whole.
    pub fn held(&self) -> usize {
        self.handshake.len() + self.alert.len()
    }

    fn alert_received(&self, level: u8, description: u8) -> Result<ControlEvent, io::Error> {
        use rustls::AlertDescription as A;
        let description = A::from(description);
        match description {
            A::CloseNotify => Ok(ControlEvent::Closed),
            A::UserCanceled => Ok(ControlEvent::Nothing),
            // TLS 1.2's warnings (level 1) are not fatal; TLS 1.3 has none but these.
            _ if level == 1 && !self.tls13 => Ok(ControlEvent::Nothing),
            // The error rustls gives, so that a refusal reads the same either way.
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                rustls::Error::AlertReceived(description),
            )),
        }
    }
}

/// An upstream connection whose records the kernel encrypts and decrypts.
pub struct KtlsStream {
    tcp: TcpStream,
    state: Arc<KtlsState>,
    control: Control,
    /// Room for the record-type control message of each `recvmsg` (allocated once).
    cmsg: Vec<u8>,
    read_closed: bool,
    /// `close_notify` has been sent.
    write_closed: bool,
    /// Records that may still be sent under the current key.
    tx_budget: u64,
    resumed: bool,
}

/// One `recvmsg` on kernel TLS socket `fd`: `(bytes, content type)`; content type 23
/// for application data.
fn recv(fd: RawFd, cmsg: &mut [u8], buf: &mut [u8]) -> io::Result<(usize, u8)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, TlsGetRecordType};
    let mut iov = [io::IoSliceMut::new(buf)];
    let msg =
        recvmsg::<()>(fd, &mut iov, Some(cmsg), MsgFlags::MSG_DONTWAIT).map_err(io::Error::from)?;
    let mut kind = 23;
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            if let ControlMessageOwned::TlsGetRecordType(t) = c {
                kind = match t {
                    TlsGetRecordType::ChangeCipherSpec => 20,
                    TlsGetRecordType::Alert => ALERT,
                    TlsGetRecordType::Handshake => HANDSHAKE,
                    TlsGetRecordType::ApplicationData => 23,
                    TlsGetRecordType::Unknown(t) => t,
                    _ => 0,
                };
            }
        }
    }
    Ok((msg.bytes, kind))
}

impl Drop for KtlsStream {
    fn drop(&mut self) {
        self.state.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl AsyncRead for KtlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.read_closed {
                return Poll::Ready(Ok(()));
            }
            ready!(this.tcp.poll_read_ready(cx))?;
            let unfilled = out.initialize_unfilled();
            let (fd, cmsg) = (this.tcp.as_raw_fd(), &mut this.cmsg);
            let got = this
                .tcp
                .try_io(Interest::READABLE, || recv(fd, cmsg, unfilled));
            match got {
                Ok((n, 23)) => {
                    out.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok((n, kind)) => {
                    let bytes = &out.initialize_unfilled()[..n];
                    if this.control.feed(kind, bytes)? == ControlEvent::Closed {
                        this.read_closed = true;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for KtlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let records = buf.len().div_ceil(MAX_RECORD) as u64;
        if records > this.tx_budget {
            return Poll::Ready(Err(KtlsError::KeyLimit.into()));
        }
        let n = ready!(Pin::new(&mut this.tcp).poll_write(cx, buf))?;
        this.tx_budget -= n.div_ceil(MAX_RECORD) as u64;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    /// `close_notify`, then the TCP half-close.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.write_closed {
            loop {
                ready!(this.tcp.poll_write_ready(cx))?;
                let fd = this.tcp.as_fd();
                match this
                    .tcp
                    .try_io(Interest::WRITABLE, || sys::send_close_notify(fd))
                {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            // Sent once: a second shutdown only half-closes.
            this.write_closed = true;
        }
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

impl crate::copy::ReleaseBuffers for KtlsStream {
    /// Nothing to give back: the kernel holds the records, and [`Control`] frees what it
    /// kept as soon as a message is whole.
    fn release_buffers(&mut self) {}
}

/// One body for each of [`Link`]'s stream methods: the same call on either stream.
macro_rules! on_link {
    ($link:expr, $s:ident => $call:expr) => {
        match $link {
            Link::Rustls($s) => $call,
            Link::Kernel($s) => $call,
        }
    };
}

impl AsyncRead for Link {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        on_link!(self.get_mut(), s => Pin::new(s).poll_read(cx, out))
    }
}

impl AsyncWrite for Link {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        on_link!(self.get_mut(), s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        on_link!(self.get_mut(), s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        on_link!(self, s => s.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        on_link!(self.get_mut(), s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        on_link!(self.get_mut(), s => Pin::new(s).poll_shutdown(cx))
    }
}

impl crate::copy::ReleaseBuffers for Link {
    fn release_buffers(&mut self) {
        on_link!(self, s => s.release_buffers())
    }
}

/// The one system call `nix` does not wrap for kernel TLS.
mod sys {
    use std::io;
    use std::os::fd::{AsRawFd, BorrowedFd};

    use nix::libc;

    /// Sends a `close_notify` alert as a record of content type 21 (`TLS_SET_RECORD_TYPE`).
    pub fn send_close_notify(fd: BorrowedFd<'_>) -> io::Result<()> {
        let mut alert = [1u8, 0u8]; // warning, close_notify
        let mut iov = libc::iovec {
            iov_base: alert.as_mut_ptr().cast(),
            iov_len: alert.len(),
        };
        // Room for one cmsghdr carrying one byte, aligned as the kernel expects.
        let mut space = [0u64; 4];
        // SAFETY: CMSG_SPACE is a pure size computation.
        let cmsg_space = unsafe { libc::CMSG_SPACE(1) } as usize;
        debug_assert!(cmsg_space <= std::mem::size_of_val(&space));
        // SAFETY: `msg` points at `iov` and `space`, which outlive the call; the control
        // buffer is zeroed, 8-aligned and at least CMSG_SPACE(1) long, so CMSG_FIRSTHDR
        // returns a header inside it and CMSG_DATA one byte inside that. sendmsg reads
        // only what the header and iovec describe.
        let sent = unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = space.as_mut_ptr().cast();
            msg.msg_controllen = cmsg_space as _;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_TLS;
            (*cmsg).cmsg_type = libc::TLS_SET_RECORD_TYPE;
            (*cmsg).cmsg_len = libc::CMSG_LEN(1) as _;
            *libc::CMSG_DATA(cmsg) = 21; // alert
            libc::sendmsg(fd.as_raw_fd(), &msg, libc::MSG_DONTWAIT)
        };
        match sent {
            2 => Ok(()),
            -1 => Err(io::Error::last_os_error()),
            _ => Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "close_notify cut short",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(e: &io::Error) -> Option<rustls::AlertDescription> {
        match e.get_ref()?.downcast_ref::<rustls::Error>()? {
            rustls::Error::AlertReceived(a) => Some(*a),
            _ => None,
        }
    }

    fn ktls(e: &io::Error) -> Option<KtlsError> {
        e.get_ref()?.downcast_ref::<KtlsError>().cloned()
    }

    #[test]
    fn only_a_cipher_the_kernel_does_in_hardware_counts() {
        // User-Mode Linux: gcm(aes) only as the template over generic parts.
        let uml =
            "name         : gcm(aes)\ndriver       : gcm_base(ctr(aes-generic),ghash-generic)\n\
                   module       : gcm\ntype         : aead\n\n\
                   name         : chacha20\ndriver       : chacha20-generic\n";
        assert_eq!(KernelCiphers::parse(uml), KernelCiphers::default());
        // x86 with aesni_intel and chacha20_x86_64.
        let x86 = "name         : gcm(aes)\ndriver       : generic-gcm-aesni\nmodule       : aesni_intel\n\n\
                   name         : chacha20\ndriver       : chacha20-simd\n";
        let k = KernelCiphers::parse(x86);
        assert!(k.aes_gcm && k.chacha20);
        assert!(k.accelerates(rustls::crypto::ring::cipher_suite::TLS13_AES_256_GCM_SHA384));
        assert!(!KernelCiphers::default()
            .accelerates(rustls::crypto::ring::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256));
        // arm64.
        assert!(KernelCiphers::parse("name : gcm(aes)\ndriver : gcm-aes-ce\n").aes_gcm);
        assert_eq!(
            KernelCiphers::parse("garbage\n\n:::"),
            KernelCiphers::default()
        );
    }

    #[test]
    fn session_tickets_are_dropped_even_split_across_records() {
        let mut c = Control::new(true);
        let ticket = [&[NEW_SESSION_TICKET, 0, 0, 5][..], b"abcde"].concat();
        let two = [&ticket[..], &ticket[..]].concat();
        // A message in pieces, then two in one record.
        assert_eq!(
            c.feed(HANDSHAKE, &ticket[..3]).unwrap(),
            ControlEvent::Nothing
        );
        assert_eq!(
            c.feed(HANDSHAKE, &ticket[3..]).unwrap(),
            ControlEvent::Nothing
        );
        assert_eq!(c.feed(HANDSHAKE, &two).unwrap(), ControlEvent::Nothing);
        assert!(c.handshake.is_empty());
    }

    #[test]
    fn a_key_update_ends_the_connection_cleanly_in_tls13() {
        let mut c = Control::new(true);
        let e = c.feed(HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, 1]).unwrap_err();
        assert_eq!(ktls(&e), Some(KtlsError::KeyUpdate));
        assert!(KtlsError::KeyUpdate.is_clean_close());
        // In TLS 1.2 there is no such message.
        let e = Control::new(false)
            .feed(HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, 1])
            .unwrap_err();
        assert_eq!(ktls(&e), Some(KtlsError::UnexpectedHandshake(KEY_UPDATE)));
    }

    #[test]
    fn alerts_read_as_rustls_reads_them() {
        use rustls::AlertDescription as A;
        let mut c = Control::new(true);
        assert_eq!(c.feed(ALERT, &[1, 0]).unwrap(), ControlEvent::Closed);
        // A refused client certificate (TLS 1.3, after the handshake).
        let e = Control::new(true).feed(ALERT, &[2, 116]).unwrap_err();
        assert_eq!(refusal(&e), Some(A::CertificateRequired));
        assert!(crate::upstream::UpstreamError::refused_after_handshake(&e).is_some());
        // Split in two reads; user_canceled is ignored.
        let mut c = Control::new(true);
        assert_eq!(c.feed(ALERT, &[1]).unwrap(), ControlEvent::Nothing);
        assert_eq!(c.feed(ALERT, &[90]).unwrap(), ControlEvent::Nothing);
        // A TLS 1.2 warning is not fatal, a TLS 1.3 one is.
        assert_eq!(
            Control::new(false).feed(ALERT, &[1, 100]).unwrap(),
            ControlEvent::Nothing
        );
        assert!(Control::new(true).feed(ALERT, &[1, 100]).is_err());
    }

    #[test]
    fn garbage_is_an_error_not_a_hang_or_a_buffer_without_bound() {
        let e = Control::new(true).feed(20, &[1]).unwrap_err();
        assert_eq!(ktls(&e), Some(KtlsError::UnexpectedRecord(20)));
        let e = Control::new(true)
            .feed(HANDSHAKE, &[NEW_SESSION_TICKET, 0xff, 0xff, 0xff])
            .unwrap_err();
        assert!(matches!(ktls(&e), Some(KtlsError::Malformed(_))));
        let e = Control::new(true)
            .feed(HANDSHAKE, &[1, 0, 0, 0])
            .unwrap_err();
        assert_eq!(ktls(&e), Some(KtlsError::UnexpectedHandshake(1)));
    }

    #[test]
    fn aes_gcm_keys_split_into_salt_and_iv_as_the_kernel_wants() {
        use rustls::crypto::cipher::{AeadKey, Iv};
        let iv = || Iv::new([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        let aes = ConnectionTrafficSecrets::Aes256Gcm {
            key: AeadKey::from([7u8; 32]),
            iv: iv(),
        };
        match crypto_info(true, 3, &aes) {
            Some(TlsCryptoInfo::Aes256Gcm(i)) => {
                assert_eq!(i.salt, [1, 2, 3, 4]);
                assert_eq!(i.iv, [5, 6, 7, 8, 9, 10, 11, 12]);
                assert_eq!(i.rec_seq, [0, 0, 0, 0, 0, 0, 0, 3]);
                assert_eq!(i.info.version, nix::libc::TLS_1_3_VERSION);
                assert_eq!(i.key, [7u8; 32]);
            }
            _ => panic!("wrong cipher"),
        }
        let chacha = ConnectionTrafficSecrets::Chacha20Poly1305 {
            key: AeadKey::from([9u8; 32]),
            iv: iv(),
        };
        match crypto_info(false, 1 << 40, &chacha) {
            Some(TlsCryptoInfo::Chacha20Poly1305(i)) => {
                assert_eq!(i.iv, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
                assert_eq!(i.rec_seq, (1u64 << 40).to_be_bytes());
                assert_eq!(i.info.version, nix::libc::TLS_1_2_VERSION);
            }
            _ => panic!("wrong cipher"),
        }
        // A 32-byte key is not an AES-128 key: refused, not cut.
        let wrong = ConnectionTrafficSecrets::Aes128Gcm {
            key: AeadKey::from([7u8; 32]),
            iv: iv(),
        };
        assert!(crypto_info(true, 0, &wrong).is_none());
    }
}
