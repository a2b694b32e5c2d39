//! An in-place upgrade from amazon-efs-utils, on the host: a mount it made (its state file
//! and stunnel config in its own format, and its tunnel, played by a stand-in named
//! `stunnel` that listens on the mount's port) is taken over by the real watchdog. The
//! real stunnel and the kernel's NFS client are in the e2e guest's "upgrade" case.

use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use efs_config::state::{self, MountState};
use efs_testkit::root::*;
use efs_testkit::*;

mod common;
use common::*;

/// The check for amazon-efs-utils' watchdog looks at every process: one test at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The stand-in for stunnel (a mock, named as such): listens on the port of its config's
/// `accept` line, answers each connection with "incumbent\n" and holds it open, exits
/// on SIGTERM.
const STUNNEL_STAND_IN: &str = r#"#!/usr/bin/python3
import re, signal, socket, sys, threading
port = int(re.search(r"accept = 127\.0\.0\.1:(\d+)", open(sys.argv[1]).read()).group(1))
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", port))
s.listen(16)
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
held = []
while True:
    c, _ = s.accept()
    c.sendall(b"incumbent\n")
    held.append(c)
"#;

/// The incumbent's tunnel program: the stand-in runs under its name.
#[derive(Clone, Copy)]
enum Their {
    Stunnel,
    EfsProxy,
}

impl Their {
    fn name(self) -> &'static str {
        match self {
            Their::Stunnel => "stunnel",
            Their::EfsProxy => "efs-proxy",
        }
    }

    /// The state file's `cmd`, as amazon-efs-utils records it.
    fn cmd(self, config: &Path) -> serde_json::Value {
        match self {
            Their::Stunnel => serde_json::json!(["/usr/bin/stunnel5", config]),
            Their::EfsProxy => {
                serde_json::json!(["/usr/bin/efs-proxy", config, "--tls", "--no-direct-s3-read"])
            }
        }
    }
}

/// A mount made by amazon-efs-utils: its files in the state directory, its tunnel.
struct IncumbentMount {
    mountpoint: String,
    port: u16,
    name: String,
    state_path: PathBuf,
    config_path: PathBuf,
    workspace: PathBuf,
    tunnel: KillOnDrop,
}

impl IncumbentMount {
    /// `cafile`: what its stunnel config trusts; `mount_age`: seconds since it was made.
    fn make(scene: &Scene, mp_name: &str, cafile: &Path, mount_age: f64) -> IncumbentMount {
        IncumbentMount::make_with(scene, mp_name, cafile, mount_age, Their::Stunnel)
    }

    fn make_with(
        scene: &Scene,
        mp_name: &str,
        cafile: &Path,
        mount_age: f64,
        program: Their,
    ) -> IncumbentMount {
        let root = &scene.root;
        let dir = root.state_dir();
        state::ensure_state_dir(&dir, 0o750).unwrap();
        let mountpoint = root.mountpoint(mp_name);
        let port = free_port();
        let name = state::state_file_name("fs-12345678", Path::new(&mountpoint), port);
        let workspace = dir.join(format!("{name}+"));
        std::fs::create_dir_all(workspace.join("database")).unwrap();
        std::fs::write(workspace.join("certificate.pem"), "not used\n").unwrap();
        std::fs::write(workspace.join("database/index.txt"), "").unwrap();
        let config_path = dir.join(format!("stunnel-config.{name}"));
        let w = workspace.display();
        std::fs::write(
            &config_path,
            format!(
                "fips = no\nforeground = yes\nsocket = l:SO_REUSEADDR=yes\npid = {w}/stunnel.pid\n[efs]\nclient = yes\n\
                 accept = 127.0.0.1:{port}\nconnect = {ip}:2049\nsslVersion = TLSv1.2\nverify = 2\nCAfile = {ca}\n\
                 cert = {w}/certificate.pem\nkey = /etc/amazon/efs/privateKey.pem\n\
                 checkHost = fs-12345678.efs.us-east-1.amazonaws.com\nfs_id = fs-12345678\n",
                ip = scene.ip,
                ca = cafile.display(),
            ),
        )
        .unwrap();
        let stand_in = root.dir.path("bin").join(program.name());
        efs_testkit::write_executable(&stand_in, STUNNEL_STAND_IN, 0o755);
        let tunnel = KillOnDrop(
            Command::new(&stand_in)
                .arg(&config_path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stdio_file(&root.dir, &format!("stunnel-{port}.stderr")))
                .spawn()
                .unwrap(),
        );
        assert!(
            wait_until(Duration::from_secs(10), || TcpStream::connect((
                "127.0.0.1",
                port
            ))
            .is_ok()),
            "the stunnel stand-in does not listen on {port}"
        );
        let state_path = dir.join(&name);
        let state = serde_json::json!({
            "pid": tunnel.id(),
            "cmd": program.cmd(&config_path),
            "files": [config_path],
            "mount_time": state::unix_time() - mount_age,
            "mountpoint": mountpoint,
            "service_type": "elasticfilesystem",
            "commonName": "ip-10-0-0-1.ec2.internal",
            "region": "us-east-1",
            "certificateCreationTime": "261202120000Z",
            "certificate": workspace.join("certificate.pem"),
            "privateKey": "/etc/amazon/efs/privateKey.pem",
            "fsId": "fs-12345678",
            "mountStateDir": format!("{name}+"),
            "unmount_count": 0,
        });
        std::fs::write(&state_path, serde_json::to_vec(&state).unwrap()).unwrap();
        IncumbentMount {
            mountpoint,
            port,
            name,
            state_path,
            config_path,
            workspace,
            tunnel,
        }
    }

    fn tunnel_exited(&mut self) -> bool {
        self.tunnel.0.try_wait().ok().flatten().is_some()
    }

    /// Our state in its place, once the watchdog has written it.
    fn ours(&self) -> Option<MountState> {
        MountState::read(&self.state_path).ok()
    }

    /// Our state, once the watchdog has taken the mount over (it must within 20 s).
    fn taken_over(&self, root: &Root) -> MountState {
        assert!(
            wait_until(Duration::from_secs(20), || self.ours().is_some()),
            "not taken over: {}",
            watchdog_log(root)
        );
        self.ours().unwrap()
    }
}

/// What a client connected to the port reads first: "incumbent\n" from the stand-in.
fn greeting(port: u16) -> Vec<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = [0u8; 10];
    s.read_exact(&mut b).map(|_| b.to_vec()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_live_mount_of_amazon_efs_utils_is_taken_over_on_its_own_port() {
    let _one = ONE_AT_A_TIME.lock().await;
    let scene = Scene::new().await;
    let root = &scene.root;
    let mut inc = IncumbentMount::make(&scene, "legacy", &root.dir.path("ca.pem"), 120.0);
    assert_eq!(greeting(inc.port), b"incumbent\n");
    // The kernel's NFS client, connected through the incumbent's tunnel.
    let mut nfs_client = TcpStream::connect(("127.0.0.1", inc.port)).unwrap();
    set_mounts(root, &[(&inc.mountpoint, inc.port)]);

    let _wd = start_watchdog(root);
    let ours = inc.taken_over(root);
    // Ours: our tunnel, for the same file system on the same port, with our schema.
    assert_eq!(ours.port, inc.port);
    assert_eq!(ours.fs_id, "fs-12345678");
    assert_eq!(ours.mountpoint, inc.mountpoint);
    assert_eq!(ours.check_host, "fs-12345678.efs.us-east-1.amazonaws.com");
    assert_eq!(ours.connect, format!("{}:2049", scene.ip));
    assert_eq!(Path::new(&ours.cmd[0]), tunnel_bin());
    assert!(
        ours.client_cert.is_none(),
        "not an iam or access point mount"
    );
    assert!(alive(ours.pid));
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{}/comm", ours.pid))
            .unwrap()
            .trim(),
        "efs-tunnel"
    );
    // The incumbent's tunnel is gone, and so is its connection: the NFS client
    // reconnects, and is served by our tunnel (the test's mount target echoes).
    assert!(wait_until(Duration::from_secs(10), || inc.tunnel_exited()));
    nfs_client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut b = [0u8; 10];
    let _ = nfs_client.read_exact(&mut b); // its greeting
    assert_eq!(nfs_client.read(&mut b).unwrap_or(0), 0, "still connected");
    assert_eq!(
        round_trip(inc.port, b"after the upgrade").unwrap(),
        b"after the upgrade"
    );
    // Its files are gone; the state file is ours, root's and not world-readable.
    assert!(!inc.config_path.exists());
    assert!(!inc.workspace.exists(), "its OpenSSL workspace is left");
    let log = watchdog_log(root);
    assert!(
        log.contains(&format!(
            "took over the mount of fs-12345678 at {} (port {}) from amazon-efs-utils' stunnel",
            inc.mountpoint, inc.port
        )),
        "{log}"
    );

    // The watchdog keeps it as its own: a killed tunnel is restarted on the port...
    let pid = ours.pid;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(wait_until(Duration::from_secs(5), || inc
        .ours()
        .is_some_and(|s| s.pid != pid && alive(s.pid))));
    assert_eq!(round_trip(inc.port, b"restarted").unwrap(), b"restarted");
    // ... and after umount, it and its state are removed.
    set_mounts(root, &[]);
    let last = inc.ours().unwrap().pid;
    assert!(
        wait_until(Duration::from_secs(10), || !inc.state_path.exists()
            && !alive(last)),
        "{}",
        watchdog_log(root)
    );
    let left: Vec<_> = std::fs::read_dir(root.state_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().contains(&inc.name))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mount_our_tunnel_cannot_serve_is_left_to_amazon_efs_utils() {
    let _one = ONE_AT_A_TIME.lock().await;
    let scene = Scene::new().await;
    let root = &scene.root;
    // Its config trusts a CA that did not sign the mount target's certificate: our
    // tunnel's first handshake fails.
    let other = TestCa::new("Some other CA");
    let other_pem = root.dir.path("other-ca.pem");
    std::fs::write(&other_pem, &other.pem).unwrap();
    let mut inc = IncumbentMount::make(&scene, "legacy", &other_pem, 120.0);
    let before = std::fs::read(&inc.state_path).unwrap();
    set_mounts(root, &[(&inc.mountpoint, inc.port)]);

    let _wd = start_watchdog(root);
    assert!(
        wait_until(Duration::from_secs(20), || watchdog_log(root)
            .contains("not taken over from amazon-efs-utils")),
        "{}",
        watchdog_log(root)
    );
    let log = watchdog_log(root);
    assert!(
        log.contains("amazon-efs-utils' tunnel is left serving"),
        "{log}"
    );
    // Untouched: its tunnel serves, its files are there, no tunnel of ours is left.
    assert!(!inc.tunnel_exited());
    assert_eq!(greeting(inc.port), b"incumbent\n");
    assert_eq!(std::fs::read(&inc.state_path).unwrap(), before);
    assert!(inc.config_path.exists() && inc.workspace.exists());
    assert!(
        !Command::new("pgrep")
            .args([
                "-f",
                &format!(
                    "control {}",
                    state::control_socket_path(&root.state_dir(), inc.port).display()
                )
            ])
            .status()
            .unwrap()
            .success(),
        "a tunnel of ours is left running"
    );
    // Logged once, not at every sweep.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        watchdog_log(root)
            .matches("not taken over from amazon-efs-utils")
            .count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nothing_is_taken_over_while_amazon_efs_utils_watchdog_runs_and_a_gone_mount_is_cleaned_up()
{
    let _one = ONE_AT_A_TIME.lock().await;
    let scene = Scene::new().await;
    let root = &scene.root;
    // Its mount is gone (not in the mount table) and was made long ago.
    let mut inc = IncumbentMount::make(&scene, "gone", &root.dir.path("ca.pem"), 120.0);
    set_mounts(root, &[]);
    // A stand-in for amazon-efs-utils' watchdog (a Python process of that name).
    let stand_in = root.dir.path("bin").join("amazon-efs-mount-watchdog");
    efs_testkit::write_executable(
        &stand_in,
        "#!/usr/bin/python3\nimport time\ntime.sleep(600)\n",
        0o755,
    );
    let mut theirs = KillOnDrop(Command::new(&stand_in).spawn().unwrap());
    assert!(wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(format!("/proc/{}/comm", theirs.id()))
            .is_ok_and(|c| c.trim() == "amazon-efs-moun")
    }));

    let _wd = start_watchdog(root);
    assert!(
        wait_until(Duration::from_secs(10), || watchdog_log(root).contains(
            &format!(
                "amazon-efs-utils' watchdog (pid {}) still runs",
                theirs.id()
            )
        )),
        "{}",
        watchdog_log(root)
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(!inc.tunnel_exited() && inc.state_path.exists());

    // Once it is stopped, the next sweep cleans the gone mount up as it would have.
    theirs.0.kill().unwrap();
    theirs.0.wait().unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || inc.tunnel_exited()
            && !inc.state_path.exists()),
        "{}",
        watchdog_log(root)
    );
    assert!(!inc.config_path.exists() && !inc.workspace.exists());
    let log = watchdog_log(root);
    assert_eq!(log.matches("still runs").count(), 1, "{log}");
    assert!(log.contains("amazon-efs-utils' mount is gone"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mount_through_efs_proxy_is_taken_over_the_same_way() {
    let _one = ONE_AT_A_TIME.lock().await;
    let scene = Scene::new().await;
    let root = &scene.root;
    let mut inc = IncumbentMount::make_with(
        &scene,
        "proxied",
        &root.dir.path("ca.pem"),
        120.0,
        Their::EfsProxy,
    );
    assert_eq!(greeting(inc.port), b"incumbent\n");
    set_mounts(root, &[(&inc.mountpoint, inc.port)]);
    let _wd = start_watchdog(root);
    inc.taken_over(root);
    assert!(wait_until(Duration::from_secs(10), || inc.tunnel_exited()));
    assert_eq!(round_trip(inc.port, b"via ours").unwrap(), b"via ours");
    assert!(!inc.config_path.exists() && !inc.workspace.exists());
    assert!(watchdog_log(root).contains("from amazon-efs-utils' efs-proxy"));
}
