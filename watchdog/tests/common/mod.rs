//! What the watchdog's integration tests share: a temporary root with the watchdog's
//! test config, mounts made by the real mount.efs, the mount table the watchdog reads,
//! and starting the real watchdog.
#![allow(dead_code)] // each test crate uses its own part

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use efs_config::state::MountState;
use efs_testkit::root::*;
use efs_testkit::*;
use nix::sys::signal::kill;
use nix::unistd::Pid;

pub const WATCHDOG_CONFIG: &str =
    "[mount-watchdog]\nunmount_grace_period_sec = 1\npoll_interval_sec = 1\n";

pub struct Mounted {
    pub mountpoint: String,
    pub port: u16,
    pub state_path: PathBuf,
}

impl Mounted {
    pub fn state(&self) -> MountState {
        MountState::read(&self.state_path).unwrap()
    }
    pub fn pid(&self) -> i32 {
        self.state().pid
    }
}

/// Mounts with the real mount.efs (mount.nfs4 is a stand-in) and returns what it recorded.
pub fn mount(root: &Root, name: &str, ip: &str) -> Mounted {
    mount_with(root, name, ip, "")
}

/// Like [`mount`], with more options (`,netns=...`).
pub fn mount_with(root: &Root, name: &str, ip: &str, extra: &str) -> Mounted {
    let mp = root.mountpoint(name);
    root.mount(&[
        "fs-12345678",
        &mp,
        "-o",
        &format!("tls,mounttargetip={ip}{extra}"),
    ])
    .assert_ok();
    let (port, state_path) = root.state_of_mount(&mp);
    Mounted {
        mountpoint: mp,
        port,
        state_path,
    }
}

/// A temporary root with the watchdog's test config and a TLS "mount target" on its own
/// loopback address.
pub struct Scene {
    pub root: Root,
    pub ip: String,
    pub _server: TlsServer,
}

impl Scene {
    pub async fn new() -> Scene {
        Scene::on(Root::with_sections("", WATCHDOG_CONFIG)).await
    }

    /// The scene in a root of the caller's making.
    pub async fn on(root: Root) -> Scene {
        let addr = target_addr();
        let server = TlsServer::start_on(addr, &root.ca.issue(WILDCARD), Behaviour::Echo).await;
        Scene {
            root,
            ip: addr.ip().to_string(),
            _server: server,
        }
    }

    pub fn mount(&self, name: &str) -> Mounted {
        mount(&self.root, name, &self.ip)
    }
}

/// Writes the mount table the watchdog reads: one NFS line per (mountpoint, port).
pub fn set_mounts(root: &Root, mounts: &[(&str, u16)]) {
    let mut text = String::from("22 1 0:21 / / rw,relatime - ext4 /dev/root rw\n");
    for (i, (mp, port)) in mounts.iter().enumerate() {
        text.push_str(&format!(
            "{} 22 0:{} / {} rw,relatime - nfs4 127.0.0.1:/ rw,vers=4.1,rsize=1048576,wsize=1048576,hard,noresvport,proto=tcp,port={port},timeo=600,retrans=2,addr=127.0.0.1\n",
            40 + i,
            50 + i,
            mp.replace(' ', "\\040")
        ));
    }
    let tmp = root.dir.path("mountinfo.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(tmp, root.dir.path("mountinfo")).unwrap();
}

pub fn watchdog_log(root: &Root) -> String {
    std::fs::read_to_string(root.dir.path("log").join("mount-watchdog.log")).unwrap_or_default()
}

/// Starts the real watchdog and waits until it has adopted what is there.
pub fn start_watchdog(root: &Root) -> KillOnDrop {
    start_watchdog_cmd(root, Command::new(watchdog_bin()))
}

/// Starts the real watchdog with only `env` (and `PATH`) in its environment.
pub fn start_watchdog_env(root: &Root, env: &[(&str, &std::path::Path)]) -> KillOnDrop {
    let mut cmd = Command::new(watchdog_bin());
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    start_watchdog_cmd(root, cmd)
}

fn start_watchdog_cmd(root: &Root, mut cmd: Command) -> KillOnDrop {
    let before = watchdog_log(root).matches("watching ").count();
    let child = cmd
        .env("EFS_UTILS_CONFIG", &root.config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stdio_file(&root.dir, "watchdog.stderr"))
        .spawn()
        .unwrap();
    let child = KillOnDrop(child);
    assert!(
        wait_until(Duration::from_secs(10), || watchdog_log(root)
            .matches("watching ")
            .count()
            > before),
        "watchdog did not start: {}",
        watchdog_log(root)
    );
    child
}

pub fn alive(pid: i32) -> bool {
    kill(Pid::from_raw(pid), None).is_ok()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
}

/// One echo round trip through the tunnel on `port`.
pub fn round_trip(port: u16, payload: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(payload)?;
    let mut back = vec![0u8; payload.len()];
    s.read_exact(&mut back)?;
    Ok(back)
}
