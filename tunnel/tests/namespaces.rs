//! `--netns`: a tunnel runs in the network namespace its mount was made in, so that one
//! the watchdog restarts (from the recorded command line) reaches the same network.
//! These tests make a network namespace of their own (`unshare --net`), as root.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// A process holding a new network namespace whose loopback is up.
struct NetnsHolder(std::process::Child);

impl NetnsHolder {
    fn new() -> NetnsHolder {
        let child = Command::new("unshare")
            .args(["--net", "sh", "-c", "ip link set lo up && exec sleep 60"])
            .stdin(Stdio::null())
            .spawn()
            .expect("unshare (util-linux) runs");
        let holder = NetnsHolder(child);
        let pid = holder.0.id();
        // Until it is in its own namespace with lo up (sleep has replaced sh).
        assert!(wait_until(Duration::from_secs(5), || {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep")
        }));
        holder
    }

    fn ns_path(&self) -> String {
        format!("/proc/{}/ns/net", self.0.id())
    }
}

impl Drop for NetnsHolder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn netns_of(pid: u32) -> std::path::PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap()
}

#[test]
fn a_tunnel_given_a_network_namespace_runs_in_it() {
    let holder = NetnsHolder::new();
    let ca = TestCa::new("Test CA");
    let tunnel = Tunnel::start(2049, &ca.pem, &["--netns", &holder.ns_path()]);
    let pid = tunnel.child.id();
    assert_eq!(netns_of(pid), netns_of(holder.0.id()));
    assert_ne!(netns_of(pid), netns_of(std::process::id()));
    // Its port is in that namespace, not here.
    assert!(std::net::TcpStream::connect(tunnel.addr()).is_err());
}

#[test]
fn a_network_namespace_that_cannot_be_entered_is_a_clear_error() {
    let out = Command::new(tunnel_bin())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--connect",
            "127.0.0.1:2049",
            "--check-host",
            CHECK_HOST,
            "--netns",
            "/nonexistent/netns",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--netns: cannot open /nonexistent/netns"),
        "{err}"
    );
}
