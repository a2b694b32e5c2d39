//! Starting a mount's tunnel: choose and hold a local port, start `efs-tunnel` on it, and
//! wait for its first TLS handshake with the mount target.
//!
//! The port is chosen by binding it: the bound socket itself is the lock, so parallel
//! mounts cannot pick the same port (the incumbent needed lock files and still raced,
//! aws/efs-utils #125). The tunnel inherits the listening socket (`--listen-fd`) and a
//! readiness pipe (`--ready-fd`), and answers on the pipe once it has completed one
//! handshake or knows why it cannot; so a wrong certificate or an unreachable target fails
//! the mount within seconds, with the reason.

use std::fmt;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use efs_config::state;

/// How long a mount waits for the tunnel's first handshake.
pub const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// What the tunnel is told, apart from the descriptors it inherits.
#[derive(Debug, Clone)]
pub struct TunnelSpec {
    pub binary: PathBuf,
    /// `host:2049`
    pub connect: String,
    pub check_host: String,
    pub fs_id: String,
    pub cafile: Option<PathBuf>,
    pub fips: bool,
    pub hostname_check: bool,
    pub control: PathBuf,
    pub log_file: PathBuf,
    pub log_max_bytes: u64,
    pub log_file_count: u32,
    pub log_level: String,
}

impl TunnelSpec {
    /// The command line recorded in the state file; starters add `--listen-fd N`.
    pub fn command(&self) -> Vec<String> {
        let mut c = vec![
            self.binary.to_string_lossy().into_owned(),
            "--detach".into(),
            "--connect".into(),
            self.connect.clone(),
            "--check-host".into(),
            self.check_host.clone(),
            "--fs-id".into(),
            self.fs_id.clone(),
            "--control".into(),
            self.control.to_string_lossy().into_owned(),
            "--log-file".into(),
            self.log_file.to_string_lossy().into_owned(),
            "--log-max-bytes".into(),
            self.log_max_bytes.to_string(),
            "--log-file-count".into(),
            self.log_file_count.to_string(),
            "--log-level".into(),
            self.log_level.clone(),
        ];
        if let Some(ca) = &self.cafile {
            c.push("--cafile".into());
            c.push(ca.to_string_lossy().into_owned());
        }
        if self.fips {
            c.push("--fips".into());
        }
        if !self.hostname_check {
            c.push("--insecure-no-hostname-check".into());
        }
        c
    }
}

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
    TimedOut(String),
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
            LaunchError::TimedOut(target) => write!(
                f,
                "TLS tunnel failed: no TLS handshake with {target} within {} s; check that the mount target is reachable on port 2049 (security groups, routes)",
                READY_TIMEOUT.as_secs()
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

/// A random number from the standard library's per-process hash keys (port choice,
/// retry jitter); nothing here needs more.
pub(crate) fn random_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos() ^ u128::from(std::process::id()));
    h.finish() as u32
}

/// A started tunnel; [`RunningTunnel::stop`] undoes it.
#[derive(Debug)]
pub struct RunningTunnel {
    child: Child,
    pub port: u16,
    control: PathBuf,
}

impl RunningTunnel {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGTERM, up to 3 s to exit, then SIGKILL; removes the control socket.
    pub fn stop(mut self) {
        let pid = Pid::from_raw(self.pid());
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.control);
    }
}

/// Starts the tunnel on `listener` and waits for its first handshake.
pub fn start(spec: &TunnelSpec, listener: TcpListener) -> Result<RunningTunnel, LaunchError> {
    let port = listener
        .local_addr()
        .map_err(|e| LaunchError::Pipe(e.to_string()))?
        .port();
    let (read_end, write_end) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| LaunchError::Pipe(e.to_string()))?;
    // Only these two descriptors are inherited; everything else stays close-on-exec.
    let inherit = |fd: &dyn AsFd| fcntl(fd.as_fd(), FcntlArg::F_SETFD(FdFlag::empty()));
    inherit(&listener).map_err(|e| LaunchError::Pipe(e.to_string()))?;
    inherit(&write_end).map_err(|e| LaunchError::Pipe(e.to_string()))?;

    let mut argv = spec.command();
    let binary = PathBuf::from(argv.remove(0));
    argv.extend([
        "--listen-fd".into(),
        listener.as_raw_fd().to_string(),
        "--ready-fd".into(),
        write_end.as_raw_fd().to_string(),
    ]);
    let child = Command::new(&binary)
        .args(&argv)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| LaunchError::Spawn(binary.clone(), e))?;
    // The tunnel holds them now.
    drop(listener);
    drop(write_end);
    let tunnel = RunningTunnel {
        child,
        port,
        control: spec.control.clone(),
    };
    match wait_ready(read_end) {
        Ready::Ok => Ok(tunnel),
        other => {
            tunnel.stop();
            Err(match other {
                Ready::Error(why) => LaunchError::Refused(why),
                Ready::TimedOut => {
                    LaunchError::TimedOut(format!("{} ({})", spec.connect, spec.check_host))
                }
                Ready::Ok | Ready::Closed => {
                    LaunchError::DiedEarly(spec.log_file.display().to_string())
                }
            })
        }
    }
}

enum Ready {
    Ok,
    Error(String),
    TimedOut,
    Closed,
}

fn wait_ready(read_end: OwnedFd) -> Ready {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(std::fs::File::from(read_end)).read_line(&mut line);
        let _ = tx.send(line);
    });
    match rx.recv_timeout(READY_TIMEOUT) {
        Ok(line) if line.starts_with("ready") => Ready::Ok,
        Ok(line) if line.starts_with("error ") => {
            Ready::Error(line["error ".len()..].trim().to_string())
        }
        Ok(_) => Ready::Closed,
        Err(_) => Ready::TimedOut,
    }
}
