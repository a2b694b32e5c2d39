//! The tunnel's own test harness: the real `efs-tunnel` binary in a temporary directory.
//! Generic parts (CA, TLS servers, temp dirs) come from `efs-testkit`.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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
        let dir = TempDir::new("tunnel");
        let (log, control, cafile) = (
            dir.path("tunnel.log"),
            dir.path("control.sock"),
            dir.path("ca.pem"),
        );
        std::fs::write(&cafile, ca_pem).unwrap();
        let child = Command::new(tunnel_bin())
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
