//! Starting a mount's tunnel: choose and hold a local port, start `efs-tunnel` on it, and
//! wait for its first TLS handshake with the mount target.
//!
//! The port is chosen by binding it: the bound socket itself is the lock, so parallel
//! mounts cannot pick the same port (the incumbent needed lock files and still raced,
//! aws/efs-utils #125). The tunnel inherits the listening socket (`--listen-fd`) and a
//! readiness pipe (`--ready-fd`), and answers on the pipe once it has completed one
//! handshake or knows why it cannot; so a wrong certificate or an unreachable target fails
//! the mount within seconds, with the reason.
//!
//! The tunnel's command line, the hand-over of its descriptors, the ready-pipe lines and
//! how it is stopped are `efs_tunnel_contract`'s; this module is what `mount.efs` makes
//! of them.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use efs_config::state;
use efs_tunnel_contract::{NotReady, Readiness, SpawnError, TunnelCommand};

/// How long a mount waits for the tunnel's first handshake, beyond the time the tunnel
/// is told to keep retrying an unreachable target (`--probe-retry-sec`).
pub const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a tunnel could not be started.
#[derive(Debug)]
pub enum LaunchError {
    PortUnavailable(u16),
    NoFreePort {
        lower: u16,
        upper: u16,
    },
    Spawn(PathBuf, std::io::Error),
    Pipe(String),
    /// The tunnel reported that it cannot reach or verify the mount target.
    Refused(String),
    TimedOut(String, Duration),
    DiedEarly(String),
}

impl fmt::Display for LaunchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LaunchError::PortUnavailable(p) => {
                write!(f, "Specified port [{p}] is unavailable. Try selecting a different port.")
            }
            LaunchError::NoFreePort { lower, upper } => write!(
                f,
                "Failed to locate an available port in the range [{lower}, {upper}], try specifying a different port range in the efs-utils configuration file"
            ),
            LaunchError::Spawn(bin, e) => write!(
                f,
                "Failed to start the TLS tunnel {}: {e}. It is installed with efs-utils; reinstall the package, or set [paths] tunnel",
                bin.display()
            ),
            LaunchError::Pipe(e) => write!(f, "Failed to set up the TLS tunnel: {e}"),
            LaunchError::Refused(why) => write!(f, "TLS tunnel failed: {why}"),
            LaunchError::TimedOut(target, waited) => write!(
                f,
                "TLS tunnel failed: no TLS handshake with {target} within {} s; check that the mount target is reachable on port 2049 (security groups, routes)",
                waited.as_secs()
            ),
            LaunchError::DiedEarly(log) => {
                write!(f, "TLS tunnel exited before it was ready; see {log} for the reason")
            }
        }
    }
}

impl std::error::Error for LaunchError {}

/// Binds 127.0.0.1 on `tlsport`, or on a free port of `range` (starting at a random
/// offset to spread parallel mounts), skipping ports a state file still records.
pub fn bind_port(
    range: std::ops::Range<u16>,
    tlsport: Option<u16>,
    state_dir: &Path,
) -> Result<TcpListener, LaunchError> {
    let bind = |port: u16| TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port));
    if let Some(port) = tlsport {
        return bind(port).map_err(|_| LaunchError::PortUnavailable(port));
    }
    let len = u32::from(range.end - range.start);
    let offset = random_u32() % len.max(1);
    for i in 0..len {
        let port = range.start + ((offset + i) % len) as u16;
        if state::port_in_use_by_state(state_dir, port) {
            continue;
        }
        if let Ok(listener) = bind(port) {
            return Ok(listener);
        }
    }
    Err(LaunchError::NoFreePort {
        lower: range.start,
        upper: range.end,
    })
}

/// A random number for choices that must differ between parallel mounts (the port to
/// try first, retry jitter), from the kernel's random source (`getrandom(2)`). Only if
/// that fails, from the standard library's per-process random hash keys, mixed with
/// the time and pid, which is still different per process.
pub(crate) fn random_u32() -> u32 {
    let mut bytes = [0u8; 4];
    if getrandom::getrandom(&mut bytes).is_ok() {
        return u32::from_ne_bytes(bytes);
    }
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    h.write_u128(now);
    h.write_u32(std::process::id());
    h.finish() as u32
}

/// A started tunnel; [`RunningTunnel::stop`] undoes it.
#[derive(Debug)]
pub struct RunningTunnel {
    child: Child,
    pub port: u16,
    control: Option<PathBuf>,
}

impl RunningTunnel {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGTERM, up to the contract's grace to exit, then SIGKILL; removes the control
    /// socket.
    pub fn stop(mut self) {
        let _ = efs_tunnel_contract::stop(&mut self.child);
        if let Some(c) = &self.control {
            let _ = std::fs::remove_file(c);
        }
    }
}

/// Starts the tunnel on `listener` and waits for its first handshake.
pub fn start(spec: &TunnelCommand, listener: TcpListener) -> Result<RunningTunnel, LaunchError> {
    let port = listener
        .local_addr()
        .map_err(|e| LaunchError::Pipe(e.to_string()))?
        .port();
    let (child, ready) =
        efs_tunnel_contract::spawn_with_ready_pipe(&spec.to_args(), listener.as_fd()).map_err(
            |e| match e {
                SpawnError::Exec(binary, e) => LaunchError::Spawn(binary, e),
                other => LaunchError::Pipe(other.to_string()),
            },
        )?;
    // The tunnel holds the port now.
    drop(listener);
    let tunnel = RunningTunnel {
        child,
        port,
        control: spec.control.clone(),
    };
    let waited = READY_TIMEOUT + Duration::from_secs(spec.probe_retry_sec);
    let outcome = ready.wait(waited);
    if let Ok(Readiness::Ready { .. }) = outcome {
        return Ok(tunnel);
    }
    tunnel.stop();
    Err(match outcome {
        Ok(Readiness::Failed(why)) => LaunchError::Refused(why),
        Err(NotReady::TimedOut) => {
            LaunchError::TimedOut(format!("{} ({})", spec.connect, spec.check_host), waited)
        }
        Ok(Readiness::Ready { .. })
        | Err(NotReady::Closed | NotReady::Garbled(_) | NotReady::Io(_)) => LaunchError::DiedEarly(
            spec.log_file
                .as_ref()
                .map_or_else(|| "its stderr".into(), |p| p.display().to_string()),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_numbers_differ() {
        let draws: std::collections::BTreeSet<u32> = (0..64).map(|_| random_u32()).collect();
        assert!(draws.len() > 60, "{draws:?}");
    }
}
