//! The tunnel process: accept NFS client connections on the local listener and give each
//! its own verified TLS connection to the mount target. [`run`] is the whole life of a
//! tunnel, top to bottom; `serve_connection` the life of one connection: the peer check,
//! the upstream connection, the copy, and why it ended.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use log::{debug, info, warn};
use rustls::ClientConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, SignalKind};

use crate::control::{ControlSocket, Status};
use crate::copy::CopyError;
use crate::peer::{self, Endpoints, Refusal};
use crate::policy::{self, HostnameCheck, PolicyError, TlsPolicy};
use crate::repeat_log::{repeats_suffix, RepeatLog};
use crate::shutdown::{Shutdown, ShutdownTrigger};
use crate::stats::Stats;
use crate::upstream::{self, Target, UpstreamError};
use crate::{copy, fds};
use efs_tunnel_contract::Readiness;

/// How long connections get to close cleanly after SIGTERM.
const DRAIN_DEADLINE: Duration = Duration::from_secs(3);
const CLOSE_NOTIFY_DEADLINE: Duration = Duration::from_secs(1);

/// Everything a tunnel needs to know, built by the `efs-tunnel` command line.
#[derive(Debug)]
pub struct TunnelConfig {
    pub target: Target,
    pub policy: TlsPolicy,
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
}

/// Why a tunnel could not start (once serving, a tunnel only stops on a signal).
#[derive(Debug)]
pub enum TunnelError {
    Policy(PolicyError),
    Listener(std::io::Error),
    Control(PathBuf, std::io::Error),
    Signals(std::io::Error),
    Probe(String, UpstreamError),
}

impl fmt::Display for TunnelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TunnelError::Policy(e) => write!(f, "{e}"),
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

/// What every connection task shares.
struct Shared {
    target: Target,
    policy: TlsPolicy,
    tls: RwLock<Arc<ClientConfig>>,
    stats: Stats,
    listen_port: u16,
    allow_any_peer: bool,
    dead_upstream: Option<Duration>,
    /// Refused peers, by uid (none: no owner could be found), for the log.
    refused: RepeatLog<Option<u32>>,
    /// Mount targets that went silent, for the log.
    silent: RepeatLog<()>,
}

impl Shared {
    fn tls(&self) -> Arc<ClientConfig> {
        match self.tls.read() {
            Ok(cfg) => cfg.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// SIGHUP: re-read the CA file for new connections. A bad file keeps the old one.
    fn reload(&self) {
        match policy::client_config(&self.policy) {
            Ok(cfg) => {
                match self.tls.write() {
                    Ok(mut slot) => *slot = Arc::new(cfg),
                    Err(poisoned) => *poisoned.into_inner() = Arc::new(cfg),
                }
                info!("SIGHUP: reloaded trust anchors; new connections use them");
            }
            Err(e) => warn!("SIGHUP: keeping the previous trust anchors: {e}"),
        }
    }

    fn status(&self) -> Status {
        Status {
            listen_port: self.listen_port,
            upstream_host: self.target.host.clone(),
            upstream_port: self.target.port,
            check_host: self.target.check_host.to_str().into_owned(),
            fs_id: self.target.fs_id.clone(),
            hostname_check: self.policy.hostname == HostnameCheck::Required,
            fips: self.policy.fips,
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
    let mut sigterm = signal(SignalKind::terminate()).map_err(TunnelError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(TunnelError::Signals)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(TunnelError::Signals)?;

    let tls = policy::client_config(&config.policy).map_err(TunnelError::Policy)?;
    if config.policy.hostname == HostnameCheck::DisabledByConfig {
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
        policy: config.policy,
        tls: RwLock::new(Arc::new(tls)),
        stats: Stats::default(),
        listen_port: listen_addr.port(),
        allow_any_peer: config.allow_any_peer,
        dead_upstream: config.dead_upstream,
        refused: RepeatLog::default(),
        silent: RepeatLog::default(),
    });
    let trigger = ShutdownTrigger::default();

    if let Some(path) = &config.control_socket {
        let control =
            ControlSocket::bind(path).map_err(|e| TunnelError::Control(path.clone(), e))?;
        let for_status = shared.clone();
        tokio::spawn(control.serve(Arc::new(move || for_status.status()), trigger.subscribe()));
    }

    if let Some(ready) = config.ready {
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
            _ = sighup.recv() => shared.reload(),
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
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
        match upstream::connect(&shared.target, shared.tls(), shared.dead_upstream).await {
            Ok(mut tls) => {
                record_handshake(shared, &tls);
                let _ = tokio::time::timeout(
                    CLOSE_NOTIFY_DEADLINE,
                    tokio::io::AsyncWriteExt::shutdown(&mut tls),
                )
                .await;
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
    mut client: TcpStream,
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
        r = upstream::connect(&shared.target, shared.tls(), shared.dead_upstream) => r,
        _ = shutdown.recv() => return,
    };
    let mut tls = match connected {
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
    record_handshake(&shared, &tls);

    let stats = &shared.stats;
    tokio::select! {
        r = copy::bidirectional(&mut client, &mut tls, &stats.bytes_to_server, &stats.bytes_from_server, shared.dead_upstream) => match r {
            Ok(()) => {}
            Err(CopyError::Silent(s)) => shared.upstream_silent(&s),
            // Only the upstream socket has a user timeout and keepalive.
            Err(CopyError::Io(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
                shared.upstream_silent(&format_args!("the connection timed out ({e})"));
            }
            Err(e) => debug!("connection closed: {e}"),
        },
        _ = shutdown.recv() => {
            let _ = tokio::time::timeout(CLOSE_NOTIFY_DEADLINE, tokio::io::AsyncWriteExt::shutdown(&mut tls)).await;
        }
    }
}
