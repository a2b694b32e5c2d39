//! The real watchdog, with real tunnels started by the real `mount.efs`, a real TLS server,
//! and a mount table in a file the test edits (the kernel's is exercised in the e2e guest).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use efs_testkit::root::*;
use efs_testkit::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

mod common;
use common::*;
use efs_testkit::netns::{netns_of, Netns};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_tunnel_is_restarted_on_the_same_socket_and_the_client_carries_on() {
    let scene = Scene::new().await;
    let root = &scene.root;
    let m = scene.mount("efs");
    set_mounts(root, &[(&m.mountpoint, m.port)]);
    let _wd = start_watchdog(root);

    // A client streams RPC-sized messages through the tunnel...
    let first_pid = m.pid();
    let mut s = TcpStream::connect(("127.0.0.1", m.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let msg = pseudo_random(64 * 1024, 1);
    let mut back = vec![0u8; msg.len()];
    s.write_all(&msg).unwrap();
    s.read_exact(&mut back).unwrap();

    // ... the tunnel is killed ...
    let t0 = Instant::now();
    kill(Pid::from_raw(first_pid), Signal::SIGKILL).unwrap();
    // ... its connection breaks, as a TCP connection through a dead process does ...
    let broken = s.write_all(&msg).and_then(|_| s.read_exact(&mut back));
    assert!(broken.is_err(), "the old connection should break");
    // ... and the client's very next connect is accepted, not refused, and carries on.
    let reply = round_trip(m.port, &msg).expect("reconnect after the kill");
    assert_eq!(reply, msg);
    let restarted = wait_until(Duration::from_secs(5), || {
        m.pid() != first_pid && alive(m.pid())
    });
    assert!(restarted, "state still names pid {}", m.pid());
    assert_eq!(
        m.state().restarts,
        1,
        "the restart is counted in the state file"
    );
    eprintln!("restart observed {:?} after the kill", t0.elapsed());
    let log = watchdog_log(root);
    assert!(
        log.contains("was killed by signal SIGKILL") || log.contains("exited"),
        "{log}"
    );
    assert!(log.contains("started the tunnel of fs-12345678"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_unmount_the_tunnel_and_its_state_are_removed_after_the_grace_period() {
    let scene = Scene::new().await;
    let root = &scene.root;
    let m = scene.mount("efs");
    set_mounts(root, &[(&m.mountpoint, m.port)]);
    let _wd = start_watchdog(root);
    let pid = m.pid();
    let control = m.state().control_socket;

    set_mounts(root, &[]);
    let gone = wait_until(Duration::from_secs(10), || {
        !alive(pid) && !m.state_path.exists()
    });
    assert!(
        gone,
        "tunnel alive: {}, state: {}\n{}",
        alive(pid),
        m.state_path.exists(),
        watchdog_log(root)
    );
    assert!(!control.exists(), "control socket left behind");
    // Freed: bindable again. (Other tests' mount.efs scan the same port range and may
    // take a freed port for a moment; a leaked tunnel would hold it for good.)
    let free = wait_until(Duration::from_secs(2), || {
        std::net::TcpListener::bind(("127.0.0.1", m.port)).is_ok()
    });
    assert!(free, "port {} still held", m.port);
    assert!(root.state_files().is_empty(), "{:?}", root.state_files());
    assert!(watchdog_log(root).contains("Unmount grace period expired"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tunnel_another_mount_still_uses_is_never_torn_down() {
    let scene = Scene::new().await;
    let root = &scene.root;
    let a = scene.mount("a");
    let b = scene.mount("b");
    // As the kernel does for a second mount of the same server: both lines name a's port.
    set_mounts(root, &[(&a.mountpoint, a.port), (&b.mountpoint, a.port)]);
    let _wd = start_watchdog(root);

    set_mounts(root, &[(&b.mountpoint, a.port)]);
    std::thread::sleep(Duration::from_secs(4)); // grace is 1 s
    assert!(alive(a.pid()), "the tunnel /mnt/b still uses was torn down");
    assert!(a.state_path.exists());
    assert_eq!(round_trip(a.port, b"still here").unwrap(), b"still here");

    // When the last mount goes, it goes.
    set_mounts(root, &[]);
    let pid = a.pid();
    assert!(wait_until(Duration::from_secs(10), || !alive(pid)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tunnel_that_ignores_sigterm_is_killed() {
    let scene = Scene::new().await;
    let root = &scene.root;
    let m = scene.mount("stuck");
    set_mounts(root, &[(&m.mountpoint, m.port)]);
    let _wd = start_watchdog(root);
    let pid = m.pid();
    // A stopped process cannot act on SIGTERM.
    kill(Pid::from_raw(pid), Signal::SIGSTOP).unwrap();
    set_mounts(root, &[]);
    let gone = wait_until(Duration::from_secs(15), || {
        !alive(pid) && !m.state_path.exists()
    });
    assert!(gone, "still alive: {}", alive(pid));
    assert!(watchdog_log(root).contains("ignored SIGTERM; sending SIGKILL"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn corrupt_and_foreign_state_files_are_skipped_not_fatal() {
    let scene = Scene::new().await;
    let root = &scene.root;
    efs_config::state::ensure_state_dir(&root.state_dir(), 0o750).unwrap();
    std::fs::write(root.state_dir().join("fs-bad.mnt.x.20001"), "{ not json").unwrap();
    std::fs::write(
        root.state_dir().join("fs-foreign.mnt.y.20002"),
        r#"{"pid": 17200, "cmd": ["/usr/bin/stunnel5", "/var/run/efs/stunnel-config.fs-foreign"], "files": []}"#,
    )
    .unwrap();
    let m = scene.mount("good");
    set_mounts(root, &[(&m.mountpoint, m.port)]);
    let _wd = start_watchdog(root);
    let log = watchdog_log(root);
    assert!(
        log.contains("skipping state file") && log.contains("fs-bad.mnt.x.20001"),
        "{log}"
    );
    assert!(log.contains("fs-foreign.mnt.y.20002"), "{log}");

    let pid = m.pid();
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    assert!(wait_until(Duration::from_secs(5), || m.pid() != pid && alive(m.pid())));
    assert_eq!(round_trip(m.port, b"ok").unwrap(), b"ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_watchdog_adopts_running_tunnels_and_revives_dead_ones() {
    let scene = Scene::new().await;
    let root = &scene.root;
    let a = scene.mount("a");
    let b = scene.mount("b");
    set_mounts(root, &[(&a.mountpoint, a.port), (&b.mountpoint, b.port)]);

    let mut wd = start_watchdog(root);
    let (pa, pb) = (a.pid(), b.pid());
    kill(Pid::from_raw(wd.id() as i32), Signal::SIGTERM).unwrap();
    let status = wd.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        alive(pa) && alive(pb),
        "tunnels must survive the watchdog's exit"
    );

    // While no watchdog runs, b's tunnel dies (its port closes with it).
    kill(Pid::from_raw(pb), Signal::SIGKILL).unwrap();
    assert!(wait_until(Duration::from_secs(5), || !alive(pb)));

    let _wd = start_watchdog(root);
    assert_eq!(a.pid(), pa, "a running tunnel is adopted, not replaced");
    assert!(wait_until(Duration::from_secs(5), || b.pid() != pb && alive(b.pid())));
    assert_eq!(round_trip(b.port, b"revived").unwrap(), b"revived");

    // The adopted tunnel is watched too.
    kill(Pid::from_raw(pa), Signal::SIGKILL).unwrap();
    assert!(wait_until(Duration::from_secs(5), || a.pid() != pa && alive(a.pid())));
    assert_eq!(round_trip(a.port, b"adopted").unwrap(), b"adopted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_mounts_at_once_all_restarted_after_a_mass_kill() {
    let root = std::sync::Arc::new(Root::with_sections("", WATCHDOG_CONFIG));
    let addr = target_addr();
    let _server = TlsServer::start_on(addr, &root.ca.issue(WILDCARD), Behaviour::Echo).await;
    let ip = addr.ip().to_string();
    let handles: Vec<_> = (0..50)
        .map(|i| {
            let (root, ip) = (root.clone(), ip.clone());
            std::thread::spawn(move || {
                let mp = root.mountpoint(&format!("m{i}"));
                root.mount(&["fs-12345678", &mp, "-o", &format!("tls,mounttargetip={ip}")])
                    .assert_ok();
                mp
            })
        })
        .collect();
    let mps: Vec<String> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let mounted: Vec<Mounted> = root
        .nfs_calls()
        .iter()
        .map(|c| Mounted {
            mountpoint: c[1].clone(),
            port: port_of(&c[3]),
            state_path: root.state_dir().join(efs_config::state::state_file_name(
                FS_ID,
                std::path::Path::new(&c[1]),
                port_of(&c[3]),
            )),
        })
        .collect();
    assert_eq!(mounted.len(), 50);
    assert_eq!(mps.len(), 50);
    let table: Vec<(&str, u16)> = mounted
        .iter()
        .map(|m| (m.mountpoint.as_str(), m.port))
        .collect();
    set_mounts(&root, &table);
    let _wd = start_watchdog(&root);
    assert!(
        watchdog_log(&root).contains("watching 50 tunnel(s)"),
        "{}",
        watchdog_log(&root)
    );

    let old: Vec<i32> = mounted.iter().map(Mounted::pid).collect();
    for pid in &old {
        kill(Pid::from_raw(*pid), Signal::SIGKILL).unwrap();
    }
    let all_back = wait_until(Duration::from_secs(20), || {
        mounted
            .iter()
            .zip(&old)
            .all(|(m, old)| m.pid() != *old && alive(m.pid()))
    });
    assert!(all_back, "not every tunnel was restarted");
    for m in &mounted {
        assert_eq!(round_trip(m.port, b"x").unwrap(), b"x", "port {}", m.port);
    }
}

#[test]
fn disabled_by_configuration_it_exits_0_and_says_so() {
    let root = Root::with_sections("", "[mount-watchdog]\nenabled = false\n");
    let out = Command::new(watchdog_bin())
        .env("EFS_UTILS_CONFIG", &root.config)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(watchdog_log(&root).contains("is not enabled"));
}

#[test]
fn it_tells_systemd_when_it_is_ready() {
    let root = Root::with_sections("", WATCHDOG_CONFIG);
    let sock_path = root.dir.path("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let child = Command::new(watchdog_bin())
        .env("EFS_UTILS_CONFIG", &root.config)
        .env("NOTIFY_SOCKET", &sock_path)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut wd = KillOnDrop(child);
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).expect("no sd_notify message");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.contains("READY=1"), "{msg}");
    kill(Pid::from_raw(wd.id() as i32), Signal::SIGTERM).unwrap();
    let status = wd.wait().unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_mount_leaves_no_tunnel_even_after_the_watchdog_adopted_it() {
    let scene = Scene::new().await;
    let root = &scene.root;
    let _wd = start_watchdog(root);
    // mount.nfs4 takes 2 s and then fails: the watchdog adopts the tunnel meanwhile.
    std::fs::write(root.dir.path("mount-nfs.delay"), "2").unwrap();
    root.script_nfs(&["32 mount.nfs4: access denied by server"]);
    let mp = root.mountpoint("fails");
    let run = root.mount(&[
        "fs-12345678",
        &mp,
        "-o",
        &format!("tls,mounttargetip={}", scene.ip),
    ]);
    assert_eq!(run.code(), Some(32));
    assert!(
        watchdog_log(root).contains("adopted the tunnel"),
        "{}",
        watchdog_log(root)
    );
    std::thread::sleep(Duration::from_secs(2));
    let left: Vec<String> = root
        .tunnel_pids()
        .iter()
        .map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            format!(
                "{p} (parent {})",
                stat.rsplit(") ")
                    .next()
                    .unwrap_or("")
                    .split(' ')
                    .nth(1)
                    .unwrap_or("?")
            )
        })
        .collect();
    assert!(
        left.is_empty(),
        "a tunnel outlived its failed mount: {left:?}\n{}",
        watchdog_log(root)
    );
    assert!(root.state_files().is_empty(), "{:?}", root.state_files());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_removed_state_file_stops_an_unused_tunnel_but_never_a_used_one() {
    let scene = Scene::new().await;
    let root = &scene.root;
    let used = scene.mount("used");
    let unused = scene.mount("unused");
    set_mounts(root, &[(&used.mountpoint, used.port)]);
    let _wd = start_watchdog(root);
    let (pu, pn) = (used.pid(), unused.pid());
    std::fs::remove_file(&used.state_path).unwrap();
    std::fs::remove_file(&unused.state_path).unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || !alive(pn)),
        "the orphan kept running"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(alive(pu), "a tunnel a mount uses was stopped");
    assert!(
        watchdog_log(root).contains("leaving its tunnel"),
        "{}",
        watchdog_log(root)
    );
}

/// Writes what the kernel shows for NFSv4.1 trunking: one mountinfo line per (mountpoint,
/// its own port), and in `nfsfs/volumes` each mount's superblock on the client of the
/// port it really uses; `nfsfs/servers` lists those clients.
fn set_kernel(root: &Root, mounts: &[(&str, u16, u16)]) {
    let mut volumes =
        String::from("NV SERVER   PORT DEV          FSID                              FSC\n");
    let mut clients = std::collections::BTreeMap::new();
    for (i, (_, _, via)) in mounts.iter().enumerate() {
        volumes.push_str(&format!("v4 7f000001 {via:4x} 0:{:<10} 0:0 no\n", 50 + i));
        *clients.entry(*via).or_insert(0) += 1;
    }
    let mut servers = String::from("NV SERVER   PORT USE HOSTNAME\n");
    for (via, uses) in clients {
        servers.push_str(&format!("v4 7f000001 {via:4x} {uses:3} 127.0.0.1\n"));
    }
    let nfsfs = root.dir.path("nfsfs");
    std::fs::create_dir_all(&nfsfs).unwrap();
    std::fs::write(nfsfs.join("volumes"), volumes).unwrap();
    std::fs::write(nfsfs.join("servers"), servers).unwrap();
    let own: Vec<(&str, u16)> = mounts.iter().map(|(mp, port, _)| (*mp, *port)).collect();
    set_mounts(root, &own);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tunnel_the_kernel_sends_other_mounts_through_outlives_its_own_mount() {
    let scene = Scene::new().await;
    let root = &scene.root;
    let (r, a, b) = (scene.mount("root"), scene.mount("a"), scene.mount("b"));
    // Three mounts, three tunnels, three port= values; one transport: the first tunnel.
    set_kernel(
        root,
        &[
            (&r.mountpoint, r.port, r.port),
            (&a.mountpoint, a.port, r.port),
            (&b.mountpoint, b.port, r.port),
        ],
    );
    let _wd = start_watchdog(root);

    // umount of the first: no mountinfo line names its port, but the kernel's client of
    // /mnt/a and /mnt/b goes to it.
    set_kernel(
        root,
        &[
            (&a.mountpoint, a.port, r.port),
            (&b.mountpoint, b.port, r.port),
        ],
    );
    std::thread::sleep(Duration::from_secs(4)); // grace is 1 s
    let pid = r.pid();
    assert!(
        alive(pid),
        "the tunnel /mnt/a and /mnt/b use was torn down\n{}",
        watchdog_log(root)
    );
    assert_eq!(
        round_trip(r.port, b"still carried").unwrap(),
        b"still carried"
    );

    // It dies: it is restarted on its port, though no mountinfo line names that port.
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    assert!(wait_until(Duration::from_secs(5), || r.pid() != pid && alive(r.pid())));
    assert_eq!(round_trip(r.port, b"back").unwrap(), b"back");

    // umount of the middle one, then of the last: the shared tunnel goes with the last.
    set_kernel(root, &[(&b.mountpoint, b.port, r.port)]);
    std::thread::sleep(Duration::from_secs(3));
    assert!(alive(r.pid()));
    assert!(
        !a.state_path.exists(),
        "the state of the unmounted /mnt/a stayed"
    );
    set_kernel(root, &[]);
    let (pr, pb) = (r.pid(), b.pid());
    assert!(
        wait_until(Duration::from_secs(10), || !alive(pr) && !alive(pb)),
        "{}",
        watchdog_log(root)
    );
    assert!(
        wait_until(Duration::from_secs(5), || root.state_files().is_empty()),
        "{:?}",
        root.state_files()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mount_riding_on_another_tunnel_keeps_it_alive_and_has_no_tunnel_of_its_own() {
    let scene = Scene::new().await;
    let root = &scene.root;
    let first = scene.mount("first");
    set_kernel(root, &[(&first.mountpoint, first.port, first.port)]);
    let _wd = start_watchdog(root);
    let pid = first.pid();

    // mount.efs, with the watchdog running, finds the kernel put the new mount on the
    // first tunnel: the new tunnel stops, and the watchdog does not restart it.
    std::fs::write(root.dir.path("kernel.trunk-to"), first.port.to_string()).unwrap();
    let rider = scene.mount("rider");
    let rs = rider.state();
    assert_eq!(rs.served_by, Some(first.port));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(root.tunnel_pids(), vec![pid], "{}", watchdog_log(root));
    assert!(
        wait_until(Duration::from_secs(5), || first.state().also_serves
            == vec![rider.mountpoint.clone()]),
        "{:?}",
        first.state()
    );

    // The first mount goes; the rider keeps its tunnel alive, even where the kernel's
    // client tables cannot be read.
    set_kernel(root, &[(&rider.mountpoint, rider.port, first.port)]);
    std::fs::remove_dir_all(root.dir.path("nfsfs")).unwrap();
    std::thread::sleep(Duration::from_secs(4));
    assert!(alive(pid), "{}", watchdog_log(root));
    assert!(rider.state_path.exists());
    assert_eq!(round_trip(first.port, b"carried").unwrap(), b"carried");

    // The rider goes: its state, then the tunnel it rode on.
    set_kernel(root, &[]);
    assert!(
        wait_until(Duration::from_secs(10), || !alive(pid)
            && root.state_files().is_empty()),
        "{:?}\n{}",
        root.state_files(),
        watchdog_log(root)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sighup_rereads_the_grace_period_and_the_log_level() {
    let scene = Scene::new().await;
    let root = &scene.root;
    let m = scene.mount("efs");
    set_mounts(root, &[(&m.mountpoint, m.port)]);
    let wd = start_watchdog(root);
    let text = std::fs::read_to_string(&root.config).unwrap();
    let text = text
        .replace(
            "unmount_grace_period_sec = 1",
            "unmount_grace_period_sec = 30",
        )
        .replace("logging_level = \"debug\"", "logging_level = \"warning\"");
    std::fs::write(&root.config, text).unwrap();
    kill(Pid::from_raw(wd.id() as i32), Signal::SIGHUP).unwrap();
    assert!(wait_until(Duration::from_secs(5), || watchdog_log(root)
        .contains("SIGHUP: configuration re-read")));
    set_mounts(root, &[]);
    std::thread::sleep(Duration::from_secs(4)); // the old grace was 1 s
    assert!(alive(m.pid()), "torn down with the old grace period");
    // At level warning, the info line about the unmount is not written.
    assert!(
        !watchdog_log(root).contains("No mount found for"),
        "{}",
        watchdog_log(root)
    );
}
/// Runs a watchdog to its end (a second one ends at once) and says how long it took.
fn run_watchdog(root: &Root) -> (std::process::Output, Duration) {
    let t0 = Instant::now();
    let out = Command::new(watchdog_bin())
        .env("EFS_UTILS_CONFIG", &root.config)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (out, t0.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_watchdog_exits_at_once_and_the_first_keeps_working() {
    let scene = Scene::new().await;
    let root = &scene.root;
    let m = scene.mount("efs");
    set_mounts(root, &[(&m.mountpoint, m.port)]);
    let first = start_watchdog(root);
    let pid = m.pid();
    let state_before = std::fs::read(&m.state_path).unwrap();
    let log_before = watchdog_log(root);

    let (out, took) = run_watchdog(root);
    assert_eq!(out.status.code(), Some(8), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(
        err.contains(&format!(
            "another amazon-efs-mount-watchdog (pid {}) already watches the tunnels of {}",
            first.id(),
            root.state_dir().display()
        )),
        "{err}"
    );
    assert!(took < Duration::from_secs(2), "took {took:?}");

    // Restarted in a tight loop, as the EFS CSI driver does: each one exits, and none
    // touches the tunnel, its state or the log.
    let t0 = Instant::now();
    for _ in 0..30 {
        assert_eq!(run_watchdog(root).0.status.code(), Some(8));
    }
    assert!(t0.elapsed() < Duration::from_secs(15), "{:?}", t0.elapsed());
    assert_eq!(std::fs::read(&m.state_path).unwrap(), state_before);
    assert_eq!(watchdog_log(root), log_before);
    assert!(alive(pid));
    assert_eq!(root.tunnel_pids(), vec![pid]);

    // The first one still does its work.
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    assert!(wait_until(Duration::from_secs(5), || m.pid() != pid && alive(m.pid())));
    assert_eq!(
        round_trip(m.port, b"still watched").unwrap(),
        b"still watched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_watchdogs_lock_is_free_even_while_the_tunnels_it_started_live_on() {
    let scene = Scene::new().await;
    let root = &scene.root;
    let m = scene.mount("efs");
    set_mounts(root, &[(&m.mountpoint, m.port)]);
    let mut first = start_watchdog(root);
    // The watchdog restarts the tunnel: the new tunnel is its own child.
    let pid = m.pid();
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    assert!(wait_until(Duration::from_secs(5), || m.pid() != pid && alive(m.pid())));
    let child_tunnel = m.pid();

    kill(Pid::from_raw(first.id() as i32), Signal::SIGKILL).unwrap();
    let _ = first.wait();
    assert!(alive(child_tunnel), "tunnels outlive the watchdog");

    // A new watchdog takes over at once (the tunnel did not inherit the lock) and adopts
    // the tunnel.
    let second = start_watchdog(root);
    assert_eq!(m.pid(), child_tunnel, "adopted, not replaced");
    let (out, _) = run_watchdog(root);
    assert_eq!(out.status.code(), Some(8));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("(pid {})", second.id())),
        "{out:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn state_files_root_did_not_write_alone_are_never_acted_on() {
    use std::os::unix::fs::PermissionsExt;
    let scene = Scene::new().await;
    let root = &scene.root;
    let m = scene.mount("good");
    set_mounts(root, &[(&m.mountpoint, m.port)]);
    let template = std::fs::read_to_string(&m.state_path).unwrap();
    let marker = root.dir.path("ran");
    let victim = root.dir.path("victim");
    // A command and files of an attacker's choosing, in state files the watchdog must
    // not believe: owned by nobody; world-writable; root's, but not running the tunnel.
    let evil = |name: &str, cmd: &[&str]| {
        let mut st: serde_json::Value = serde_json::from_str(&template).unwrap();
        st["pid"] = 0.into();
        st["cmd"] = serde_json::json!(cmd);
        st["files"] = serde_json::json!([victim]);
        let p = root.state_dir().join(name);
        std::fs::write(&p, st.to_string()).unwrap();
        p
    };
    std::fs::write(&victim, "keep me").unwrap();
    let sh = ["/bin/sh", "-c", &format!("touch {}", marker.display())];
    let by_nobody = evil("fs-12345678.mnt.nobody.20001", &sh);
    std::os::unix::fs::chown(&by_nobody, Some(65534), Some(65534)).unwrap();
    let writable = evil("fs-12345678.mnt.writable.20002", &sh);
    std::fs::set_permissions(&writable, std::fs::Permissions::from_mode(0o666)).unwrap();
    let not_tunnel = evil("fs-12345678.mnt.shell.20003", &sh);
    std::fs::set_permissions(&not_tunnel, std::fs::Permissions::from_mode(0o640)).unwrap();

    let _wd = start_watchdog(root);
    std::thread::sleep(Duration::from_secs(3)); // past the 1 s grace of their mounts
    assert!(!marker.exists(), "a state file's command was run");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");
    let log = watchdog_log(root);
    for (p, why) in [
        (&by_nobody, "is owned by uid 65534, not by root"),
        (&writable, "is writable by group or others (mode 666)"),
        (&not_tunnel, "is not the tunnel binary"),
    ] {
        assert_eq!(
            count_lines(&log, &format!("skipping state file {}", p.display())),
            1,
            "one line for {}:\n{log}",
            p.display()
        );
        assert!(log.contains(why), "{why}:\n{log}");
    }
    // The good one is adopted and watched as always.
    assert!(
        log.contains(&format!(
            "adopted the tunnel of {FS_ID} at {}",
            m.mountpoint
        )),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_temporary_state_file_left_by_a_killed_mount_is_removed_and_nothing_else() {
    let scene = Scene::new().await;
    let root = &scene.root;
    let m = scene.mount("good");
    set_mounts(root, &[(&m.mountpoint, m.port)]);
    // What a mount.efs killed between writing and renaming its state leaves (driver
    // issue #1940): a hidden temporary named after the dead writer's pid.
    let mut dead = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    let stale = root
        .state_dir()
        .join(format!(".fs-12345678.mnt.half.20999.tmp{dead_pid}"));
    std::fs::write(&stale, "{\"pid\": 1, \"cmd\": [\"/bin/sh\"").unwrap();
    let _wd = start_watchdog(root);
    assert!(
        wait_until(Duration::from_secs(5), || !stale.exists()),
        "{}",
        watchdog_log(root)
    );
    assert!(watchdog_log(root).contains("left by a writer that died"));
    assert!(m.state_path.exists());
    assert!(alive(m.pid()));
}

/// Puts a state file into the state directory whole (written beside it, renamed in: the
/// watchdog never sees it half-written): `template` (a state file's text) as `edit`
/// changes it.
fn plant(
    root: &Root,
    name: &str,
    template: &str,
    edit: impl FnOnce(&mut serde_json::Value),
) -> std::path::PathBuf {
    let mut st: serde_json::Value = serde_json::from_str(template).unwrap();
    edit(&mut st);
    let tmp = root.dir.path("planted.tmp");
    std::fs::write(&tmp, st.to_string()).unwrap();
    let p = root.state_dir().join(name);
    std::fs::rename(&tmp, &p).unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tunnel_of_a_netns_mount_is_restarted_in_that_network_namespace() {
    let ns = match Netns::new() {
        Ok(ns) => ns,
        Err(why) => {
            eprintln!("skipping: {why}");
            return;
        }
    };
    let root = Root::with_sections("", WATCHDOG_CONFIG);
    // The mount target lives in the namespace, as a netns mount's does.
    let addr = target_addr();
    let _server = ns.serve_tls(addr, root.ca.issue(WILDCARD));
    let m = mount_with(
        &root,
        "in-ns",
        &addr.ip().to_string(),
        &format!(",netns={}", ns.path()),
    );
    let cmd = m.state().cmd;
    assert!(
        cmd.windows(2)
            .any(|w| w[0] == "--netns" && w[1] == ns.path()),
        "{cmd:?}"
    );
    set_mounts(&root, &[(&m.mountpoint, m.port)]);
    let mut wd = start_watchdog(&root);
    let first = m.pid();
    assert_eq!(netns_of(first), ns.id());
    assert_ne!(netns_of(std::process::id() as i32), ns.id());
    let port = m.port;
    let through_the_tunnel =
        |ns: &Netns, what: &'static [u8]| ns.run(move || round_trip(port, what).ok());

    // Killed: restarted on the socket the watchdog holds, and in the namespace.
    kill(Pid::from_raw(first), Signal::SIGKILL).unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || m.pid() != first
            && alive(m.pid())),
        "{}",
        watchdog_log(&root)
    );
    let second = m.pid();
    assert_eq!(netns_of(second), ns.id(), "{}", watchdog_log(&root));
    assert_eq!(
        through_the_tunnel(&ns, b"restarted"),
        Some(b"restarted".to_vec())
    );

    // Dead while no watchdog ran, so nobody holds its socket: the next watchdog binds
    // the port again, in the namespace, where the mount's NFS client connects.
    kill(Pid::from_raw(wd.id() as i32), Signal::SIGTERM).unwrap();
    let _ = wd.wait();
    kill(Pid::from_raw(second), Signal::SIGKILL).unwrap();
    assert!(wait_until(Duration::from_secs(5), || !alive(second)));
    let _wd = start_watchdog(&root);
    assert!(
        wait_until(Duration::from_secs(5), || m.pid() != second
            && alive(m.pid())),
        "{}",
        watchdog_log(&root)
    );
    assert_eq!(netns_of(m.pid()), ns.id(), "{}", watchdog_log(&root));
    assert_eq!(
        through_the_tunnel(&ns, b"bound again"),
        Some(b"bound again".to_vec()),
        "{}",
        watchdog_log(&root)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_state_directory_its_group_may_write_is_not_believed() {
    use std::os::unix::fs::PermissionsExt;
    let scene = Scene::new().await;
    let root = &scene.root;
    let m = scene.mount("good");
    set_mounts(root, &[(&m.mountpoint, m.port)]);
    let template = std::fs::read_to_string(&m.state_path).unwrap();
    let _wd = start_watchdog(root);
    // The watchdog makes the directory's mode what the configuration says when it starts
    // (0750), so the change comes after.
    assert_eq!(file_mode(&root.state_dir()), 0o750);
    std::fs::set_permissions(root.state_dir(), std::fs::Permissions::from_mode(0o770)).unwrap();

    let marker = root.dir.path("ran");
    let victim = root.dir.path("victim");
    std::fs::write(&victim, "keep me").unwrap();
    // Root's own files, as root writes them: only the directory is wrong. One would run
    // a command; the other names the tunnel binary, no running tunnel and an old mount
    // no table shows, so a teardown (deleting its `files`) would follow the grace period.
    let runs = plant(root, "fs-12345678.mnt.runs.20001", &template, |st| {
        st["pid"] = 0.into();
        st["cmd"] = serde_json::json!(["/bin/sh", "-c", format!("touch {}", marker.display())]);
    });
    let deletes = plant(root, "fs-12345678.mnt.deletes.20002", &template, |st| {
        st["pid"] = 0.into();
        st["port"] = 20002.into();
        st["mount_time"] = 1_600_000_000.0.into();
        st["files"] = serde_json::json!([victim]);
    });
    std::thread::sleep(Duration::from_secs(3)); // sweeps, and past the 1 s grace
    assert!(!marker.exists(), "a state file's command was run");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");
    let log = watchdog_log(root);
    let why = format!(
        "{} is writable by group or others (mode 770)",
        root.state_dir().display()
    );
    for p in [&runs, &deletes] {
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(&format!("skipping state file {}", p.display())))
            .collect();
        assert_eq!(lines.len(), 1, "one line for {}:\n{log}", p.display());
        assert!(lines[0].contains(&why), "{why}:\n{log}");
    }

    // The mount the watchdog already trusted is still looked after: restarted with the
    // command it read when the directory was root's alone, and said once.
    let pid = m.pid();
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    assert!(wait_until(Duration::from_secs(5), || m.pid() != pid && alive(m.pid())));
    assert_eq!(round_trip(m.port, b"still").unwrap(), b"still");
    let log = watchdog_log(root);
    assert_eq!(
        count_lines(&log, "is kept as its state was when last trusted"),
        1,
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rewritten_or_symlinked_state_file_must_pass_the_same_trust_check() {
    use std::os::unix::fs::PermissionsExt;
    let scene = Scene::new().await;
    let root = &scene.root;
    let m = scene.mount("good");
    set_mounts(root, &[(&m.mountpoint, m.port)]);
    let template = std::fs::read_to_string(&m.state_path).unwrap();
    let _wd = start_watchdog(root);
    let pid = m.pid();
    let victim = root.dir.path("victim");
    std::fs::write(&victim, "keep me").unwrap();

    // The state file is replaced (a new inode, as a rewrite is) by one anyone may write,
    // saying the mount now rides on another tunnel and naming the victim: believed, its
    // tunnel would stop and the teardown delete the victim.
    let mut st: serde_json::Value = serde_json::from_str(&template).unwrap();
    st["served_by"] = 20999.into();
    st["pid"] = 0.into();
    st["files"] = serde_json::json!([victim]);
    let tmp = root.dir.path("rewrite.tmp");
    std::fs::write(&tmp, st.to_string()).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o666)).unwrap();
    std::fs::rename(&tmp, &m.state_path).unwrap();

    // A symlink under a state file's name, to a file that would pass every check: the
    // tunnel binary, no running tunnel, an old mount no table shows.
    let target = root.dir.path("elsewhere");
    let mut other: serde_json::Value = serde_json::from_str(&template).unwrap();
    other["pid"] = 0.into();
    other["port"] = 20003.into();
    other["mount_time"] = 1_600_000_000.0.into();
    other["files"] = serde_json::json!([victim]);
    std::fs::write(&target, other.to_string()).unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o640)).unwrap();
    let link = root.state_dir().join("fs-12345678.mnt.link.20003");
    std::os::unix::fs::symlink(&target, &link).unwrap();

    std::thread::sleep(Duration::from_secs(3)); // sweeps, and past the 1 s grace
    let log = watchdog_log(root);
    assert_eq!(m.pid(), 0, "the rewrite is on disk");
    assert!(
        alive(pid),
        "the tunnel was stopped on an untrusted rewrite:\n{log}"
    );
    assert_eq!(round_trip(m.port, b"carried").unwrap(), b"carried");
    assert_eq!(
        count_lines(
            &log,
            &format!("skipping state file {}", m.state_path.display())
        ),
        1,
        "{log}"
    );
    assert!(log.contains("(mode 666)"), "{log}");
    assert_eq!(
        count_lines(
            &log,
            &format!(
                "skipping state file {}: {} is a symbolic link, not a regular file; nothing in it is run or removed",
                link.display(),
                link.display()
            )
        ),
        1,
        "{log}"
    );
    assert_eq!(root.tunnel_pids(), vec![pid], "{log}");

    // Unmounted: the teardown deletes what the trusted state named, not the victim.
    set_mounts(root, &[]);
    assert!(
        wait_until(Duration::from_secs(10), || !alive(pid)
            && !m.state_path.exists()),
        "{}",
        watchdog_log(root)
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");
    assert!(link.exists(), "the symlink is left alone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn state_files_with_numbers_they_cannot_mean_are_skipped_and_the_watchdog_carries_on() {
    let scene = Scene::new().await;
    let root = &scene.root;
    let m = scene.mount("good");
    set_mounts(root, &[(&m.mountpoint, m.port)]);
    let template = std::fs::read_to_string(&m.state_path).unwrap();
    // One there when the watchdog starts (a time of -1e20 s once made it panic), one
    // that appears while it runs.
    let early = plant(root, "fs-12345678.mnt.early.20001", &template, |st| {
        st["pid"] = 0.into();
        st["port"] = 20001.into();
        st["mount_time"] = serde_json::json!(-1e20);
    });
    let mut wd = start_watchdog(root);
    let late = plant(root, "fs-12345678.mnt.late.20002", &template, |st| {
        st["pid"] = 0.into();
        st["port"] = 20002.into();
        st["unmount_time"] = serde_json::json!(1e300);
    });
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        matches!(wd.try_wait(), Ok(None)),
        "the watchdog exited:\n{}",
        watchdog_log(root)
    );
    let log = watchdog_log(root);
    for (p, field) in [(&early, "mount_time"), (&late, "unmount_time")] {
        let line = format!(
            "skipping state file {} is not a valid mount state: {field} ",
            p.display()
        );
        assert_eq!(count_lines(&log, &line), 1, "{line}:\n{log}");
    }
    assert!(!log.contains("panicked"), "{log}");
    // The healthy mount is still looked after.
    let pid = m.pid();
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    assert!(wait_until(Duration::from_secs(5), || m.pid() != pid && alive(m.pid())));
    assert_eq!(round_trip(m.port, b"ok").unwrap(), b"ok");
    assert!(matches!(wd.try_wait(), Ok(None)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sighup_keeps_the_paths_the_watchdog_started_with_and_says_which_changed() {
    let scene = Scene::new().await;
    let root = &scene.root;
    let m = scene.mount("efs");
    set_mounts(root, &[(&m.mountpoint, m.port)]);
    let wd = start_watchdog(root);
    let moved = root.dir.path("run2");
    std::fs::create_dir_all(&moved).unwrap();
    let text = std::fs::read_to_string(&root.config).unwrap();
    let text = text
        .replace(
            &format!("state_dir = \"{}\"", root.state_dir().display()),
            &format!("state_dir = \"{}\"", moved.display()),
        )
        .replace(
            &format!("mountinfo = \"{}\"", root.dir.path("mountinfo").display()),
            &format!("mountinfo = \"{}\"", root.dir.path("mountinfo2").display()),
        );
    assert!(
        text.contains("run2") && text.contains("mountinfo2"),
        "{text}"
    );
    std::fs::write(&root.config, text).unwrap();
    kill(Pid::from_raw(wd.id() as i32), Signal::SIGHUP).unwrap();
    assert!(wait_until(Duration::from_secs(5), || watchdog_log(root)
        .contains("SIGHUP: configuration re-read")));
    let log = watchdog_log(root);
    let warned: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("takes effect at restart"))
        .collect();
    assert_eq!(warned.len(), 1, "{log}");
    assert!(
        warned[0].contains("paths.state_dir") && warned[0].contains("paths.mountinfo"),
        "{log}"
    );
    assert!(!warned[0].contains("paths.log_dir"), "{log}");

    // Still the old state directory: the tunnel is not forgotten, a kill restarts it.
    std::thread::sleep(Duration::from_secs(2)); // sweeps of the (old) directory
    let pid = m.pid();
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || m.pid() != pid && alive(m.pid())),
        "{}",
        watchdog_log(root)
    );
    // Still the old mount table: an unmount there tears the tunnel down.
    let pid = m.pid();
    set_mounts(root, &[]);
    assert!(
        wait_until(Duration::from_secs(10), || !alive(pid)
            && !m.state_path.exists()),
        "{}",
        watchdog_log(root)
    );
}
