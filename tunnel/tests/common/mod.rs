//! The tunnel's own test harness: the real `efs-tunnel` binary in a temporary directory.
//! Generic parts (CA, TLS servers, temp dirs) come from `efs-testkit`.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub use efs_testkit::*;

/// The real `efs-tunnel` process, logging to a file in its own temporary directory.
pub struct Tunnel {
    pub child: Child,
    pub port: u16,
    pub dir: TempDir,
    pub log: PathBuf,
    pub control: PathBuf,
    pub cafile: PathBuf,
}

pub fn tunnel_bin() -> &'static str {
    env!("CARGO_BIN_EXE_efs-tunnel")
}

impl Tunnel {
    /// Starts a tunnel to `upstream` that trusts `ca_pem`, and waits until it listens.
    pub fn start(upstream_port: u16, ca_pem: &str, extra: &[&str]) -> Tunnel {
        Tunnel::start_as(None, upstream_port, ca_pem, extra)
    }

    /// Like [`Tunnel::start`], as user `uid` (and group `uid`) if given: its directory
    /// is then that user's.
    pub fn start_as(uid: Option<u32>, upstream_port: u16, ca_pem: &str, extra: &[&str]) -> Tunnel {
        let dir = TempDir::new("tunnel");
        let (log, control, cafile) = (
            dir.path("tunnel.log"),
            dir.path("control.sock"),
            dir.path("ca.pem"),
        );
        std::fs::write(&cafile, ca_pem).unwrap();
        let mut command = Command::new(tunnel_bin());
        if let Some(uid) = uid {
            let id = Some(nix::unistd::Uid::from_raw(uid));
            nix::unistd::chown(&dir.0, id, Some(nix::unistd::Gid::from_raw(uid))).unwrap();
            command.uid(uid).gid(uid);
        }
        let child = command
            .args(["--listen", "127.0.0.1:0", "--connect"])
            .arg(format!("127.0.0.1:{upstream_port}"))
            .args([
                "--check-host",
                CHECK_HOST,
                "--fs-id",
                FS_ID,
                "--log-level",
                "debug",
            ])
            .arg("--cafile")
            .arg(&cafile)
            .arg("--control")
            .arg(&control)
            .arg("--log-file")
            .arg(&log)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stdio_file(&dir, "stderr"))
            .spawn()
            .unwrap();
        let mut port = 0;
        let listening = wait_until(Duration::from_secs(10), || {
            port = std::fs::read_to_string(&log)
                .ok()
                .and_then(|text| {
                    let rest = text.split("listening on 127.0.0.1:").nth(1)?;
                    rest.split(',').next()?.parse().ok()
                })
                .unwrap_or(0);
            port != 0
        });
        assert!(
            listening,
            "tunnel did not start; log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        Tunnel {
            child,
            port,
            dir,
            log,
            control,
            cafile,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }

    pub fn status(&self) -> efs_tunnel::control::Status {
        efs_tunnel::control::query_status(&self.control, Duration::from_secs(2)).unwrap()
    }

    /// Waits for the process to exit, up to `limit`; returns its status.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the tunnel to `upstream`, trusting `ca_pem`, with `--ready-fd` and `extra`;
/// returns (the line it reported on the ready pipe, the process).
pub fn start_with_ready_pipe(
    upstream: SocketAddr,
    dir: &TempDir,
    ca_pem: &str,
    extra: &[String],
) -> (String, KillOnDrop) {
    use std::os::fd::AsRawFd;
    let cafile = dir.path("ca.pem");
    std::fs::write(&cafile, ca_pem).unwrap();
    let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    nix::fcntl::fcntl(
        &write_end,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .unwrap();
    let child = Command::new(tunnel_bin())
        .args(["--listen", "127.0.0.1:0", "--connect"])
        .arg(upstream.to_string())
        .args(["--check-host", CHECK_HOST, "--fs-id", FS_ID, "--ready-fd"])
        .arg(write_end.as_raw_fd().to_string())
        .arg("--cafile")
        .arg(&cafile)
        .arg("--log-file")
        .arg(dir.path("tunnel.log"))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stdio_file(dir, "stderr"))
        .spawn()
        .unwrap();
    let child = KillOnDrop(child);
    drop(write_end);
    (read_line_from(std::fs::File::from(read_end)), child)
}

/// Starts a tunnel on a listening socket the test owns (`--listen-fd`), as `mount.efs`
/// and the watchdog do. The socket stays open in the test process too.
pub fn spawn_on_fd(
    listener: &std::net::TcpListener,
    upstream_port: u16,
    dir: &TempDir,
    ca_pem: &str,
    log_name: &str,
) -> KillOnDrop {
    use std::os::fd::AsRawFd;
    let cafile = dir.path("ca.pem");
    std::fs::write(&cafile, ca_pem).unwrap();
    let fd = listener.as_raw_fd();
    nix::fcntl::fcntl(
        listener,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .unwrap();
    let log = dir.path(log_name);
    let child = Command::new(tunnel_bin())
        .arg("--listen-fd")
        .arg(fd.to_string())
        .arg("--connect")
        .arg(format!("127.0.0.1:{upstream_port}"))
        .args(["--check-host", CHECK_HOST, "--fs-id", FS_ID])
        .arg("--cafile")
        .arg(&cafile)
        .arg("--log-file")
        .arg(&log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stdio_file(dir, &format!("{log_name}.stderr")))
        .spawn()
        .unwrap();
    let child = KillOnDrop(child);
    let up = wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("listening on")
    });
    assert!(
        up,
        "tunnel on fd {fd} did not start: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    child
}

/// A line of /proc/PID/status (or /proc/PID/task/TID/status), e.g. `CapEff`.
pub fn proc_status_field(status_path: &std::path::Path, name: &str) -> String {
    let status = std::fs::read_to_string(status_path).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {name} in {}", status_path.display()))
        .trim()
        .to_string()
}

/// What a client running as another user got: the bytes it received until the tunnel
/// closed the connection, and how long that took.
pub struct ForeignClient {
    pub received: usize,
    pub took: Duration,
}

/// Runs a bash `script` (with `arg` as `$1`) as user and group `uid`, for at most 20 s;
/// its exit code and standard output.
pub fn bash_as(uid: u32, script: &str, arg: &str) -> (Option<i32>, String) {
    let out = Command::new("timeout")
        .args(["20", "bash", "-c", script, "bash", arg])
        .uid(uid)
        .gid(uid)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .expect("timeout and bash are needed for these tests");
    assert_ne!(
        out.status.code(),
        Some(124),
        "the script was still running after 20 s"
    );
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// bash's way to open a connection to `addr` on descriptor 3 (exit 3 if it fails).
pub fn bash_connect(addr: SocketAddr) -> String {
    format!("exec 3<>/dev/tcp/{}/{} || exit 3", addr.ip(), addr.port())
}

/// Connects to `addr` from a process of user and group `uid`, sends `request` (ASCII)
/// and counts what comes back, up to as many bytes as it sent, until the connection
/// closes.
pub fn client_as(uid: u32, addr: SocketAddr, request: &str) -> ForeignClient {
    let script = format!(
        "{}; printf '%s' \"$1\" >&3; head -c ${{#1}} <&3 | wc -c",
        bash_connect(addr)
    );
    let started = Instant::now();
    let (code, out) = bash_as(uid, &script, request);
    let took = started.elapsed();
    assert_ne!(code, Some(3), "could not connect to {addr}");
    let received = out.trim().parse().unwrap_or(0);
    ForeignClient { received, took }
}

/// A plain TCP relay in front of a server, that counts the connections it accepts and
/// can be frozen: it then stops moving bytes either way but keeps every connection
/// open, as a mount target that has silently gone away (or a path that blackholes).
pub struct Relay {
    pub port: u16,
    pub accepted: Arc<AtomicU64>,
    frozen: Arc<AtomicBool>,
}

impl Relay {
    pub async fn start(to: SocketAddr) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicU64::new(0));
        let frozen = Arc::new(AtomicBool::new(false));
        let (count, freeze) = (accepted.clone(), frozen.clone());
        tokio::spawn(async move {
            while let Ok((near, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::Relaxed);
                let Ok(far) = tokio::net::TcpStream::connect(to).await else {
                    continue;
                };
                let (nr, nw) = near.into_split();
                let (fr, fw) = far.into_split();
                tokio::spawn(pump(nr, fw, freeze.clone()));
                tokio::spawn(pump(fr, nw, freeze.clone()));
            }
        });
        Relay {
            port,
            accepted,
            frozen,
        }
    }

    pub fn freeze(&self) {
        self.frozen.store(true, Ordering::Relaxed);
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if frozen.load(Ordering::Relaxed) {
            // Swallow it and hold both sockets open, answering nothing.
            std::future::pending::<()>().await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
