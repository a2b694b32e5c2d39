//! The tunnel process: accept NFS client connections on the local listener and give each
//! its own verified TLS connection to the mount target. [`run`] is the whole life of a
//! tunnel, top to bottom; `serve_connection` the life of one connection: the peer check,
//! the upstream connection, the copy, and why it ended.
//!
//! A kernel connection's first upstream connection may be bound to an EFS partition and
//! then served by [`crate::mux`] instead of the byte pump (`--partition-multiplexing`);
//! bound or not, it may have its record layer moved into the kernel ([`crate::ktls`],
//! `--kernel-tls`) before it is served.
//!
//! The TLS configuration new connections use (trust anchors, the client certificate)
//! is [`crate::tls_config`]'s, rebuilt on SIGHUP; open connections keep theirs.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use log::{debug, info, warn};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::client_cert::{ClientCertError, ClientCertFiles};
use crate::control::{ControlSocket, Status};
use crate::copy::CopyError;
use crate::ktls::{self, KtlsError, KtlsState, Link};
use crate::mux::{self, MuxError, MuxState};
use crate::peer::{self, Endpoints, Refusal};
use crate::policy::{HostnameCheck, PolicyError, TlsPolicy};
use crate::repeat_log::{repeats_suffix, RepeatLog};
use crate::shutdown::{Request, Shutdown, ShutdownTrigger, Signals};
use crate::stats::Stats;
use crate::tls_config::{LoadError, TlsConfig};
use crate::upstream::{self, HandshakeReads, Target, UpstreamError};
use crate::{copy, fds};
use efs_tunnel_contract::Readiness;

/// How long connections get to close cleanly after SIGTERM: whoever stops a tunnel
/// (`mount.efs`, the watchdog) sends SIGKILL [`efs_tunnel_contract::TERM_GRACE`] after
/// SIGTERM, so the drain ends [`EXIT_MARGIN`] before that, and the tunnel logs what it
/// could not close and exits by itself instead of dying mid-drain. One number to change:
/// a longer grace gives a longer drain.
const DRAIN_DEADLINE: Duration = efs_tunnel_contract::TERM_GRACE.saturating_sub(EXIT_MARGIN);
/// What the tunnel needs between the end of the drain and its exit (the last log lines,
/// dropping the runtime), with room for a loaded host.
const EXIT_MARGIN: Duration = Duration::from_millis(500);
const CLOSE_NOTIFY_DEADLINE: Duration = Duration::from_secs(1);
// A connection told to stop sends close_notify for up to CLOSE_NOTIFY_DEADLINE: the
// drain must leave it that long.
const _: () = assert!(DRAIN_DEADLINE.as_millis() > CLOSE_NOTIFY_DEADLINE.as_millis());

/// Everything a tunnel needs to know, built by the `efs-tunnel` command line.
#[derive(Debug)]
pub struct TunnelConfig {
    pub target: Target,
    pub policy: TlsPolicy,
    /// The client certificate to present (EFS authorizes by it), re-read on SIGHUP.
    pub client_cert: Option<ClientCertFiles>,
    /// Where to answer status requests (mode 0600).
    pub control_socket: Option<PathBuf>,
    /// If set, complete one TLS handshake with the mount target before serving, and
    /// report the outcome on this descriptor as one line: `ready port=N` or
    /// `error <reason>` (then exit non-zero). `mount.efs` waits on it, so a bad
    /// certificate or an unreachable target fails the mount at once, with the reason.
    pub ready: Option<fds::ReadyPipe>,
    /// Serve connections from any local user, not only root's (the kernel NFS client's).
    /// Off by default: through the tunnel, anyone would speak NFS with the mount's
    /// credentials (see [`crate::peer`]).
    pub allow_any_peer: bool,
    /// Close a connection whose mount target stays silent this long while RPC calls are
    /// outstanding (also the upstream socket's `TCP_USER_TIMEOUT`); `None`: never.
    pub dead_upstream: Option<Duration>,
    /// With `ready`: how long to keep retrying a mount target that cannot be reached
    /// yet (at boot, while routes and security groups settle); zero: one attempt.
    pub probe_retry: Duration,
    /// Whether connections are bound to an EFS partition and multiplexed under load.
    pub multiplexing: mux::Mode,
    /// Whether connections may move their record layer into the kernel, and what the
    /// kernel offers for it.
    pub kernel_tls: KtlsState,
}

/// Why a tunnel could not start (once serving, a tunnel only stops on a signal).
#[derive(Debug)]
pub enum TunnelError {
    Policy(PolicyError),
    ClientCert(ClientCertError),
    Listener(std::io::Error),
    Control(PathBuf, std::io::Error),
    Signals(std::io::Error),
    Probe(String, UpstreamError),
}

impl fmt::Display for TunnelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TunnelError::Policy(e) => write!(f, "{e}"),
            TunnelError::ClientCert(e) => write!(f, "{e}"),
            TunnelError::Listener(e) => write!(f, "cannot use the listening socket: {e}"),
            TunnelError::Control(p, e) => {
                write!(f, "cannot create control socket {}: {e}", p.display())
            }
            TunnelError::Signals(e) => write!(f, "cannot install signal handlers: {e}"),
            TunnelError::Probe(target, e) => write!(f, "cannot reach {target}: {e}"),
        }
    }
}

impl std::error::Error for TunnelError {}

impl From<LoadError> for TunnelError {
    fn from(e: LoadError) -> Self {
        match e {
            LoadError::Policy(e) => TunnelError::Policy(e),
            LoadError::ClientCert(e) => TunnelError::ClientCert(e),
        }
    }
}

/// What every connection task shares.
struct Shared {
    target: Target,
    tls: TlsConfig,
    stats: Stats,
    listen_port: u16,
    allow_any_peer: bool,
    dead_upstream: Option<Duration>,
    /// Refused peers, by uid (none: no owner could be found), for the log.
    refused: RepeatLog<Option<u32>>,
    /// Mount targets that went silent, for the log.
    silent: RepeatLog<()>,
    mux: MuxState,
    ktls: Arc<KtlsState>,
}

impl mux::Host for Shared {
    fn stats(&self) -> &Stats {
        &self.stats
    }

    fn mux(&self) -> &MuxState {
        &self.mux
    }

    async fn dial(&self) -> Result<upstream::TlsStream, UpstreamError> {
        self.dial_upstream().await
    }

    fn offload(&self, tls: upstream::TlsStream) -> std::io::Result<Link> {
        ktls::offload(tls, &self.ktls)
    }

    fn dead_upstream(&self) -> Option<Duration> {
        self.dead_upstream
    }

    fn refused(&self, tls: &upstream::TlsStream, why: UpstreamError) {
        self.handshake_refused(upstream::resumed(tls), why);
    }
}

impl Shared {
    /// Connects upstream and records the handshake. Its reads go record by record if
    /// the connection may go to kernel TLS, bound or not: the partition bind's reply is
    /// read that way too, so the connection is still at a record boundary after it, and
    /// [`ktls::offload`] (which ends the record-by-record reads if it stays on rustls)
    /// can take it then.
    async fn dial_upstream(&self) -> Result<upstream::TlsStream, UpstreamError> {
        let reads = if self.ktls.may_offload() {
            HandshakeReads::RecordByRecord
        } else {
            HandshakeReads::Buffered
        };
        let tls =
            upstream::connect(&self.target, self.tls.current(), self.dead_upstream, reads).await;
        if let Ok(tls) = &tls {
            record_handshake(self, tls);
        }
        tls
    }

    /// The mount target refused the handshake (in TLS 1.3, after our side of it):
    /// counted and logged as a failed handshake.
    fn handshake_refused(&self, resumed: bool, why: UpstreamError) {
        self.stats.handshake_refused(
            resumed,
            format!(
                "cannot reach {}: {why}; closed the NFS client's connection",
                self.target
            ),
        );
    }

    fn status(&self) -> Status {
        let policy = self.tls.policy();
        Status {
            listen_port: self.listen_port,
            upstream_host: self.target.host.clone(),
            upstream_port: self.target.port,
            check_host: self.target.check_host.to_str().into_owned(),
            fs_id: self.target.fs_id.clone(),
            hostname_check: policy.hostname == HostnameCheck::Required,
            fips: policy.fips,
            client_cert: self.tls.client_cert_status(),
            multiplexing: Some(self.mux.snapshot().into()),
            kernel_tls: Some(self.ktls.snapshot()),
            ..self.stats.snapshot()
        }
    }

    /// Counts a refused peer and says so: once per uid, then every few minutes with a
    /// count, so that a user knocking in a loop cannot flood the log.
    fn refuse(&self, endpoints: Endpoints, why: &Refusal) {
        self.stats.peer_refused.fetch_add(1, Ordering::Relaxed);
        if let Some(repeats) = self.refused.occurred(why.log_key()) {
            warn!(
                "refused a local connection from {} to the tunnel for {}: {why}; only root \
                 (the kernel's NFS client) may use it (tunnel_peer_check_enabled = false in \
                 efs-utils.toml, --allow-any-peer here, turns this check off){}",
                endpoints.client,
                self.target,
                repeats_suffix(repeats)
            );
        }
    }

    /// Says, once and then every few minutes with a count, that a connection to the mount
    /// target was given up for silence.
    fn upstream_silent(&self, what: &dyn fmt::Display) {
        if let Some(repeats) = self.silent.occurred(()) {
            warn!(
                "{} stopped answering: {what}; closed the NFS client's connection so that it \
                 reconnects through a new one{}",
                self.target,
                repeats_suffix(repeats)
            );
        }
    }
}

/// Runs a tunnel on `listener` until SIGTERM or SIGINT.
pub async fn run(config: TunnelConfig, listener: std::net::TcpListener) -> Result<(), TunnelError> {
    // Signals first, so that a SIGTERM from a mount helper cleaning up is always graceful.
    let mut signals = Signals::install().map_err(TunnelError::Signals)?;

    let mut ready = config.ready;
    let tls = match TlsConfig::load(config.policy, config.client_cert) {
        Ok(tls) => tls,
        Err(e) => {
            // The parent waiting on the ready pipe learns why, not only that we died.
            let e = TunnelError::from(e);
            if let Some(ready) = ready.as_mut() {
                ready.report(&Readiness::Failed(e.to_string()));
            }
            return Err(e);
        }
    };
    if tls.policy().hostname == HostnameCheck::DisabledByConfig {
        warn!(
            "certificate hostname checking is DISABLED by configuration (stunnel_check_cert_hostname = false): \
             any certificate from a trusted CA is accepted for {}",
            config.target
        );
    }
    listener
        .set_nonblocking(true)
        .map_err(TunnelError::Listener)?;
    let listener = TcpListener::from_std(listener).map_err(TunnelError::Listener)?;
    let listen_addr = listener.local_addr().map_err(TunnelError::Listener)?;
    let shared = Arc::new(Shared {
        target: config.target,
        tls,
        stats: Stats::default(),
        listen_port: listen_addr.port(),
        allow_any_peer: config.allow_any_peer,
        dead_upstream: config.dead_upstream,
        refused: RepeatLog::default(),
        silent: RepeatLog::default(),
        mux: MuxState::new(config.multiplexing),
        ktls: Arc::new(config.kernel_tls),
    });
    let trigger = ShutdownTrigger::default();

    if let Some(path) = &config.control_socket {
        let control =
            ControlSocket::bind(path).map_err(|e| TunnelError::Control(path.clone(), e))?;
        let for_status = shared.clone();
        tokio::spawn(control.serve(Arc::new(move || for_status.status()), trigger.subscribe()));
    }

    if let Some(ready) = ready {
        probe(&shared, ready, config.probe_retry).await?;
    }
    info!(
        "listening on {listen_addr}, forwarding to {} (pid {})",
        shared.target,
        std::process::id()
    );
    if shared.allow_any_peer {
        warn!("--allow-any-peer: any local user may send NFS requests through this tunnel");
    }

    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, client_addr)) => {
                    tokio::spawn(serve_connection(client, client_addr, shared.clone(), trigger.subscribe()));
                }
                Err(e) => {
                    // Out of descriptors or memory: back off instead of spinning.
                    warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            request = signals.recv() => match request {
                Request::Reload => shared.tls.reload(),
                Request::Stop => break,
            },
        }
    }

    drop(listener);
    let open = shared.stats.snapshot().connections_open;
    info!("stopping: closing {open} connection(s)");
    if !trigger.drain(DRAIN_DEADLINE).await {
        warn!("some connections did not close within {DRAIN_DEADLINE:?}; exiting anyway");
    }
    Ok(())
}

/// One handshake with the mount target before serving; the outcome goes to the ready
/// pipe. A target that cannot be reached yet is tried again, after 0.25, 0.5, 1, 2, 2
/// ... s (a target that comes back is in use within 2 s), the last time when `probe_retry` has passed; a TLS refusal ends it at once.
async fn probe(
    shared: &Shared,
    mut ready: fds::ReadyPipe,
    probe_retry: Duration,
) -> Result<(), TunnelError> {
    let give_up = tokio::time::Instant::now() + probe_retry;
    let mut delay = Duration::from_millis(250);
    let mut attempts = 1u32;
    loop {
        match probe_once(shared).await {
            Ok(()) => {
                if attempts > 1 {
                    info!("{} answered after {attempts} attempts", shared.target);
                }
                ready.report(&Readiness::Ready {
                    port: shared.listen_port,
                });
                return Ok(());
            }
            Err(e) if e.is_transient() && tokio::time::Instant::now() < give_up => {
                if attempts == 1 {
                    info!(
                        "cannot reach {} yet ({e}); trying again for up to {} s",
                        shared.target,
                        probe_retry.as_secs()
                    );
                }
                // The last attempt is made when the window closes, not before.
                tokio::time::sleep(delay.min(give_up - tokio::time::Instant::now())).await;
                delay = (delay * 2).min(Duration::from_secs(2));
                attempts += 1;
            }
            Err(e) => {
                let err = TunnelError::Probe(shared.target.to_string(), e);
                let why = if attempts > 1 {
                    format!(
                        "{err} (after {attempts} attempts in {} s)",
                        probe_retry.as_secs()
                    )
                } else {
                    err.to_string()
                };
                ready.report(&Readiness::Failed(why));
                return Err(err);
            }
        }
    }
}

/// One probe: a handshake, then close_notify and the mount target's answer to it. In
/// TLS 1.3 the server judges the client certificate (or its absence) after the client's
/// side of the handshake has ended, so a refusal arrives as an alert after `connect`
/// returned: reading until the server's close (or [`CLOSE_NOTIFY_DEADLINE`]) tells an
/// authorized client from a refused one. In TLS 1.2 the handshake itself says so.
async fn probe_once(shared: &Shared) -> Result<(), UpstreamError> {
    let mut tls = upstream::connect(
        &shared.target,
        shared.tls.current(),
        shared.dead_upstream,
        HandshakeReads::Buffered,
    )
    .await?;
    let tls13 = tls.get_ref().1.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3);
    let verdict = tokio::time::timeout(CLOSE_NOTIFY_DEADLINE, async {
        tls.shutdown().await?;
        if tls13 {
            let mut sink = [0u8; 512];
            while tls.read(&mut sink).await? > 0 {}
        }
        Ok::<(), std::io::Error>(())
    })
    .await;
    // A silent server, or one that closes without close_notify, has accepted us.
    if let Ok(Err(e)) = verdict {
        if let Some(refused) = UpstreamError::refused_after_handshake(&e) {
            return Err(refused);
        }
    }
    record_handshake(shared, &tls);
    Ok(())
}

fn record_handshake(shared: &Shared, tls: &upstream::TlsStream) {
    let (_, conn) = tls.get_ref();
    let version = conn
        .protocol_version()
        .map(crate::control::tls_version_name)
        .unwrap_or_default();
    let cipher = conn
        .negotiated_cipher_suite()
        .map(|s| crate::control::cipher_suite_name(s.suite()))
        .unwrap_or_default();
    let resumed = matches!(conn.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
    let peer = conn
        .peer_certificates()
        .and_then(|certs| certs.first())
        .map(|c| c.as_ref());
    shared.stats.handshake_ok(resumed, version, cipher, peer);
}

/// One NFS client connection, from accept to close.
async fn serve_connection(
    client: TcpStream,
    client_addr: SocketAddr,
    shared: Arc<Shared>,
    mut shutdown: Shutdown,
) {
    // Before anything else (no byte read, no upstream connection): is it root's?
    if !shared.allow_any_peer {
        let endpoints = match client.local_addr() {
            Ok(server) => Endpoints {
                client: client_addr,
                server,
            },
            Err(_) => return,
        };
        if let Err(why) = peer::check(endpoints) {
            shared.refuse(endpoints, &why);
            return;
        }
    }
    let _open = shared.stats.connection_opened();
    let _ = client.set_nodelay(true);

    // Open the upstream connection only once the client has sent something: a port probe
    // that connects and closes costs no TLS handshake with the mount target.
    let mut first = [0u8; 1];
    tokio::select! {
        peeked = client.peek(&mut first) => match peeked {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        },
        _ = shutdown.recv() => return,
    }

    let connected = tokio::select! {
        r = shared.dial_upstream() => r,
        _ = shutdown.recv() => return,
    };
    let connected = match connected {
        Ok(tls) => {
            // EFS: one partition bind before the kernel's first byte goes through.
            tokio::select! {
                first = mux::first_connection(&*shared, tls) => match first {
                    mux::First::Plain(tls) => Ok(tls),
                    mux::First::Bound(bound) => {
                        tokio::select! {
                            r = mux::serve(shared.clone(), client, *bound) => mux_ended(&shared, r),
                            _ = shutdown.recv() => {}
                        }
                        return;
                    }
                    mux::First::Lost(e) => Err(e),
                    mux::First::Refused => return,
                    mux::First::Unusable(e) => return unusable(&shared, &e),
                },
                _ = shutdown.recv() => return,
            }
        }
        Err(e) => Err(e),
    };
    let tls = match connected {
        Ok(tls) => tls,
        Err(e) => {
            shared.stats.upstream_error(
                crate::stats::FailedStep::of(&e),
                format!(
                    "cannot reach {}: {e}; closed the NFS client's connection",
                    shared.target
                ),
            );
            return;
        }
    };

    match ktls::offload(tls, &shared.ktls) {
        Ok(link) => pump(&shared, client, link, shutdown).await,
        Err(e) => unusable(&shared, &e),
    }
}

/// Says that kernel TLS took part of a connection and refused the rest ([`ktls::offload`]).
fn unusable(shared: &Shared, e: &std::io::Error) {
    warn!(
        "{}: {e}; closed the NFS client's connection (the next one uses TLS in user space)",
        shared.target
    );
}

/// The byte pump between the NFS client and the mount target, until either ends or
/// the tunnel stops.
async fn pump(shared: &Shared, mut client: TcpStream, mut tls: Link, mut shutdown: Shutdown) {
    let stats = &shared.stats;
    tokio::select! {
        r = copy::bidirectional(&mut client, &mut tls, &stats.bytes_to_server, &stats.bytes_from_server, shared.dead_upstream) => {
            copy_ended(shared, &mut tls, r).await;
        }
        _ = shutdown.recv() => {
            let _ = tokio::time::timeout(CLOSE_NOTIFY_DEADLINE, tls.shutdown()).await;
        }
    }
}

/// Says why a multiplexed connection ended, where that is worth saying. Its NFS client
/// connection is closed either way: the hard mount reconnects and retransmits what was
/// in flight.
fn mux_ended(shared: &Shared, ended: Result<(), MuxError>) {
    match ended {
        Ok(()) => {}
        Err(MuxError::Silent(n, waited)) => shared.upstream_silent(&format_args!(
            "multiplexed connection {n} sent nothing for {} s with calls outstanding",
            waited.as_secs()
        )),
        Err(MuxError::Upstream(n, e)) => match ktls_clean_close(&e) {
            Some(k) => shared.ktls.closed_cleanly(&shared.target, k),
            None => shared.stats.upstream_error(
                crate::stats::FailedStep::Connect,
                format!(
                    "{}: {}; closed the NFS client's connection",
                    shared.target,
                    MuxError::Upstream(n, e)
                ),
            ),
        },
        Err(e) => debug!("multiplexed connection closed: {e}"),
    }
}

/// Says why a connection's copy ended, where that is worth saying.
async fn copy_ended(shared: &Shared, tls: &mut Link, ended: Result<(), CopyError>) {
    let e = match ended {
        Ok(()) => return,
        Err(CopyError::Silent(s)) => return shared.upstream_silent(&s),
        Err(CopyError::Io(e)) => e,
    };
    if let Some(k) = ktls_clean_close(&e) {
        // Our sending keys still hold: say goodbye properly.
        let _ = tokio::time::timeout(CLOSE_NOTIFY_DEADLINE, tls.shutdown()).await;
        shared.ktls.closed_cleanly(&shared.target, k);
        return;
    }
    let refused = match UpstreamError::refused_after_handshake(&e) {
        Some(refused) => Some(refused),
        None => unread_refusal(tls, &e).await,
    };
    if let Some(refused) = refused {
        // TLS 1.3: the mount target's verdict on our client certificate comes after our
        // side of the handshake; a refusal is a failed handshake, not a copy error.
        shared.handshake_refused(tls.resumed(), refused);
    } else if e.kind() == std::io::ErrorKind::TimedOut {
        // Only the upstream socket has a user timeout and keepalive.
        shared.upstream_silent(&format_args!("the connection timed out ({e})"));
    } else {
        debug!("connection closed: {e}");
    }
}

/// The kernel TLS stream's reason, when it ended a connection cleanly because the kernel
/// could not follow it (a KeyUpdate, the key limit): not an error of the mount target's.
fn ktls_clean_close(e: &std::io::Error) -> Option<&KtlsError> {
    e.get_ref()
        .and_then(|i| i.downcast_ref::<KtlsError>())
        .filter(|k| k.is_clean_close())
}

/// When a write to the mount target failed because it had closed the connection, the
/// alert it sent before closing may still be unread: in TLS 1.3 a refused client
/// certificate is answered right after the handshake, and the client's first request
/// then meets a closed socket. One short read finds it.
async fn unread_refusal(tls: &mut Link, e: &std::io::Error) -> Option<UpstreamError> {
    use std::io::ErrorKind::{BrokenPipe, ConnectionReset};
    if !matches!(e.kind(), BrokenPipe | ConnectionReset) {
        return None;
    }
    let mut sink = [0u8; 512];
    match tokio::time::timeout(Duration::from_millis(100), tls.read(&mut sink)).await {
        Ok(Err(e)) => UpstreamError::refused_after_handshake(&e),
        _ => None,
    }
}
