//! `mount.efs` as util-linux runs it: what it passes to mount.nfs4, what it records, what
//! it logs, and that a failure leaves nothing behind.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;

async fn server(root: &Root, name: &str) -> (TlsServer, String) {
    let addr = target_addr();
    let s = TlsServer::start_on(addr, &root.ca.issue(name), Behaviour::Echo).await;
    (s, addr.ip().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tls_mount_goes_through_a_verified_tunnel_and_is_recorded() {
    let root = Root::new("");
    let (_server, ip) = server(&root, WILDCARD).await;
    let mp = root.mountpoint("efs");
    let run = root.mount(&[
        "fs-12345678:/",
        &mp,
        "-o",
        &format!("rw,tls,mounttargetip={ip}"),
    ]);
    run.assert_ok();

    // mount.nfs4 got the tunnel, the path, and the defaults after the user's options.
    let calls = root.nfs_calls();
    assert_eq!(calls.len(), 1);
    let argv = &calls[0];
    assert_eq!(argv[0], "127.0.0.1:/");
    assert_eq!(argv[1], mp);
    assert_eq!(argv[2], "-o");
    let port = port_of(&argv[3]);
    assert_eq!(
        argv[3],
        format!("rw,nfsvers=4.1,rsize=1048576,wsize=1048576,hard,timeo=600,retrans=2,noresvport,port={port}")
    );
    assert!((20049..21049).contains(&port));

    // The tunnel is up on that port and forwards to the mount target over TLS.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"NULL RPC").unwrap();
    let mut back = [0u8; 8];
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"NULL RPC");

    // One state file, named as the incumbent names it, private, with what the watchdog needs.
    let name = format!(
        "{FS_ID}.{}.{port}",
        mp.trim_start_matches('/').replace('/', ".")
    );
    let state_path = root.state_dir().join(&name);
    assert!(state_path.exists(), "state files: {:?}", root.state_files());
    assert_eq!(file_mode(&state_path), 0o640);
    assert_eq!(file_mode(&root.state_dir()), 0o750);
    let st = efs_config::state::MountState::read(&state_path).unwrap();
    assert_eq!(st.fs_id, FS_ID);
    assert_eq!(st.port, port);
    assert_eq!(st.mountpoint, mp);
    assert_eq!(st.dns_name, DNS_NAME);
    assert_eq!(st.check_host, DNS_NAME);
    assert_eq!(st.connect, format!("{ip}:2049"));
    assert_eq!(root.tunnel_pids(), vec![st.pid]);
    assert!(st.cmd.iter().any(|a| a == "--check-host"));
    assert!(!st
        .cmd
        .iter()
        .any(|a| a == "--listen-fd" || a == "--ready-fd"));

    // The tunnel's own account agrees.
    let status =
        efs_tunnel::control::query_status(&st.control_socket, Duration::from_secs(2)).unwrap();
    assert_eq!(status.pid as i32, st.pid);
    assert_eq!(status.listen_port, port);
    assert!(status.tls.is_some() && status.hostname_check);
    assert_eq!(file_mode(&st.control_socket), 0o600);

    assert!(
        root.log()
            .contains(&format!("Successfully mounted {DNS_NAME} at {mp}")),
        "{}",
        root.log()
    );
    assert!(root
        .systemctl_calls()
        .contains("start --no-block amazon-efs-mount-watchdog"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn user_and_fstab_options_pass_through_and_win() {
    let root = Root::new("");
    let (_server, ip) = server(&root, WILDCARD).await;
    let mp = root.mountpoint("a");
    let opts = format!(
        "rw,noresvport,tls,mounttargetip={ip},soft,vers=4.0,rsize=65536,noac,nofail,x-systemd.automount,_netdev"
    );
    root.mount(&["fs-12345678:/sub/dir", &mp, "-o", &opts])
        .assert_ok();
    let argv = &root.nfs_calls()[0];
    assert_eq!(argv[0], "127.0.0.1:/sub/dir");
    let port = port_of(&argv[3]);
    assert_eq!(
        argv[3],
        format!(
            "rw,noresvport,soft,vers=4.0,rsize=65536,noac,nofail,x-systemd.automount,_netdev,wsize=1048576,timeo=600,retrans=2,port={port}"
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tlsport_pins_the_port_and_a_busy_one_is_a_clear_error() {
    let root = Root::new("");
    let (_server, ip) = server(&root, WILDCARD).await;
    let port = free_port();
    let mp = root.mountpoint("pinned");
    root.mount(&[
        "fs-12345678",
        &mp,
        "-o",
        &format!("tls,tlsport={port},mounttargetip={ip}"),
    ])
    .assert_ok();
    assert_eq!(port_of(&root.nfs_calls()[0][3]), port);

    let other = Root::new("");
    let mp2 = other.mountpoint("again");
    let run = other.mount(&[
        "fs-12345678",
        &mp2,
        "-o",
        &format!("tls,tlsport={port},mounttargetip={ip}"),
    ]);
    assert_eq!(run.code(), Some(32));
    assert_eq!(
        run.stderr().trim(),
        format!("Specified port [{port}] is unavailable. Try selecting a different port.")
    );
    other.assert_nothing_left();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wrong_certificate_fails_fast_with_the_reason_and_leaves_nothing() {
    let root = Root::new("");
    let (server, ip) = server(&root, "*.efs.eu-west-1.amazonaws.com").await;
    let mp = root.mountpoint("bad");
    let run = root.mount(&[
        "fs-12345678:/",
        &mp,
        "-o",
        &format!("tls,mounttargetip={ip}"),
    ]);
    assert_eq!(run.code(), Some(32));
    // A refused certificate is not tried again: retrying cannot change it.
    assert!(run.took < Duration::from_secs(3), "took {:?}", run.took);
    let err = run.stderr();
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("not valid for name") && err.contains(DNS_NAME),
        "{err}"
    );
    assert!(root.nfs_calls().is_empty(), "mount.nfs4 must not run");
    assert_eq!(
        server.received.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    root.assert_nothing_left();
    assert!(root.log().contains("not valid for name"));
}

#[test]
fn an_unreachable_mount_target_is_tried_for_the_retry_window_then_fails_with_the_reason() {
    // The window is retry_nfs_mount_command_timeout_sec (5 in the test config) x count.
    let root = Root::new("retry_nfs_mount_command_count = 1");
    let ip = target_addr().ip().to_string(); // nothing listens there
    let mp = root.mountpoint("down");
    let run = root.mount(&["fs-12345678", &mp, "-o", &format!("tls,mounttargetip={ip}")]);
    assert_eq!(run.code(), Some(32));
    assert!(
        run.took >= Duration::from_millis(4500) && run.took < Duration::from_secs(12),
        "took {:?}",
        run.took
    );
    let err = run.stderr();
    assert!(
        err.contains("Connection refused") && err.contains("attempts in 5 s"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(root.nfs_calls().is_empty(), "mount.nfs4 must not run");
    root.assert_nothing_left();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mount_target_that_comes_up_during_the_retry_window_is_mounted() {
    let root = Root::new("");
    let addr = target_addr();
    let cert = root.ca.issue(WILDCARD);
    // The mount target answers only 2 s after the mount started (at boot, routes and
    // security groups settle).
    let late = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        TlsServer::start_on(addr, &cert, Behaviour::Echo).await
    });
    let mp = root.mountpoint("late");
    let run = {
        let (root, mp, ip) = (&root, mp.clone(), addr.ip().to_string());
        tokio::task::block_in_place(|| {
            root.mount(&["fs-12345678", &mp, "-o", &format!("tls,mounttargetip={ip}")])
        })
    };
    let _server = late.await.unwrap();
    run.assert_ok();
    assert!(run.took >= Duration::from_secs(2), "took {:?}", run.took);
    assert_eq!(root.nfs_calls().len(), 1);
    assert!(root
        .state_files()
        .iter()
        .any(|f| f.starts_with("fs-12345678")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_parallel_mounts_all_succeed_on_distinct_ports() {
    let root = std::sync::Arc::new(Root::new(""));
    let (_server, ip) = server(&root, WILDCARD).await;
    let mut handles = Vec::new();
    for i in 0..30 {
        let root = root.clone();
        let ip = ip.clone();
        handles.push(std::thread::spawn(move || {
            let mp = root.mountpoint(&format!("p{i}"));
            root.mount(&["fs-12345678", &mp, "-o", &format!("tls,mounttargetip={ip}")])
        }));
    }
    for h in handles {
        h.join().unwrap().assert_ok();
    }
    let mut ports: Vec<u16> = root.nfs_calls().iter().map(|c| port_of(&c[3])).collect();
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), 30, "distinct ports");
    assert_eq!(
        root.state_files()
            .iter()
            .filter(|n| n.starts_with("fs-"))
            .count(),
        30
    );
    assert_eq!(root.tunnel_pids().len(), 30);
}

#[test]
fn invalid_options_are_refused_with_the_incumbents_words() {
    let root = Root::new("");
    let mp = root.mountpoint("x");
    let cases = [
        (
            "tls,port=2049",
            "The \"port\" and \"tls\" options are mutually exclusive",
        ),
        ("tls,tlsport=abc", "tlsport option [abc] is not an integer"),
        (
            "accesspoint=fsap-0123456789abcdef0",
            "The \"tls\" option is required when mounting via \"accesspoint\"",
        ),
        (
            "tls,capath=/etc/ssl",
            "Unsupported mount options detected: \"capath\"",
        ),
        ("tls,ocsp", "The \"ocsp\" option is not supported yet"),
        (
            "region=Not_A_Region",
            "Invalid \"region\" mount option specified: 'Not_A_Region'",
        ),
        (
            "tls,cafile=/nonexistent/ca.pem",
            "Failed to find certificate authority file for verification",
        ),
    ];
    for (opts, want) in cases {
        let run = root.mount(&["fs-12345678", &mp, "-o", opts]);
        assert_eq!(run.code(), Some(1), "-o {opts}: {}", run.stderr());
        assert!(run.stderr().contains(want), "-o {opts}: {}", run.stderr());
        assert_eq!(
            run.stderr().trim().lines().count(),
            1,
            "-o {opts}: {}",
            run.stderr()
        );
    }
    assert!(root.nfs_calls().is_empty());
    root.assert_nothing_left();
}

#[test]
fn bad_devices_and_command_lines() {
    let root = Root::new("");
    let mp = root.mountpoint("x");
    let run = root.mount(&["10.0.0.1:/", &mp, "-o", "tls"]);
    assert_eq!(run.code(), Some(1));
    assert!(
        run.stderr().contains("did not resolve to a valid DNS name"),
        "{}",
        run.stderr()
    );
    let run = root.mount(&["fs-12345678"]);
    assert_eq!(run.code(), Some(1));
    assert!(run.stderr().contains("Usage: mount.efs"));
    let run = root.mount(&["fs-12345678", &mp, "--help"]);
    run.assert_ok();
    assert!(run.stdout().contains("Usage: mount.efs"));
    let run = root.mount(&["--version"]);
    run.assert_ok();
    assert!(run.stdout().starts_with("mount.efs Version: "));
}

#[test]
fn a_plain_mount_goes_straight_to_the_file_system_with_no_tunnel() {
    let root = Root::new("");
    let mp = root.mountpoint("plain");
    root.mount(&["fs-12345678:/", &mp, "-o", "rw,_netdev"])
        .assert_ok();
    let argv = &root.nfs_calls()[0];
    assert_eq!(argv[0], format!("{DNS_NAME}:/"));
    assert_eq!(
        argv[3],
        "rw,_netdev,nfsvers=4.1,rsize=1048576,wsize=1048576,hard,timeo=600,retrans=2,noresvport"
    );
    assert!(root.state_files().is_empty());
    assert!(root.tunnel_pids().is_empty());
    assert!(
        root.systemctl_calls().is_empty(),
        "no watchdog for plain mounts"
    );

    root.mount(&["fs-12345678:/", &mp, "-o", "mounttargetip=fd00::5"])
        .assert_ok();
    assert_eq!(root.nfs_calls()[1][0], "[fd00::5]:/");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fake_mode_checks_everything_then_cleans_up() {
    let root = Root::new("");
    let (server, ip) = server(&root, WILDCARD).await;
    let mp = root.mountpoint("fake");
    let run = root.mount(&[
        "fs-12345678",
        &mp,
        "-f",
        "-v",
        "-o",
        &format!("tls,mounttargetip={ip}"),
    ]);
    run.assert_ok();
    assert!(
        run.stdout().contains("127.0.0.1:/") && run.stdout().contains("port="),
        "{}",
        run.stdout()
    );
    assert!(root.nfs_calls().is_empty());
    assert_eq!(
        server.handshakes.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "the tunnel was really tried"
    );
    root.assert_nothing_left();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mount_nfs4_failure_passes_its_code_through_and_cleans_up() {
    let root = Root::new("");
    let (_server, ip) = server(&root, WILDCARD).await;
    root.script_nfs(&["32 mount.nfs4: access denied by server while mounting 127.0.0.1:/"]);
    let mp = root.mountpoint("denied");
    let run = root.mount(&["fs-12345678", &mp, "-o", &format!("tls,mounttargetip={ip}")]);
    assert_eq!(run.code(), Some(32));
    assert!(
        run.stderr().contains("access denied by server"),
        "{}",
        run.stderr()
    );
    assert_eq!(root.nfs_calls().len(), 1, "not retried");
    root.assert_nothing_left();

    root.script_nfs(&["17 mount.nfs4: something else"]);
    let run = root.mount(&["fs-12345678", &mp, "-o", &format!("tls,mounttargetip={ip}")]);
    assert_eq!(run.code(), Some(17), "mount.nfs4's own code");
    root.assert_nothing_left();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reset_by_peer_is_retried() {
    let root = Root::new("");
    let (_server, ip) = server(&root, WILDCARD).await;
    root.script_nfs(&["32 mount.nfs4: Connection reset by peer"]);
    let mp = root.mountpoint("retry");
    let run = root.mount(&["fs-12345678", &mp, "-o", &format!("tls,mounttargetip={ip}")]);
    run.assert_ok();
    assert_eq!(root.nfs_calls().len(), 2);
    assert!(
        run.stderr().contains("Mount attempt 1/3 failed due to"),
        "{}",
        run.stderr()
    );
    assert_eq!(
        root.state_files()
            .iter()
            .filter(|n| n.starts_with("fs-"))
            .count(),
        1
    );
}

#[test]
fn the_region_comes_from_instance_metadata_when_nothing_else_names_it() {
    let imds = fake_imds("eu-central-1");
    let root = Root::new(&format!("instance_metadata_url = \"http://{imds}\""));
    let mp = root.mountpoint("imds");
    root.mount_env(&["fs-12345678", &mp], &[]).assert_ok();
    assert_eq!(
        root.nfs_calls()[0][0],
        "fs-12345678.efs.eu-central-1.amazonaws.com:/"
    );

    // The option and the environment come first.
    root.mount_env(
        &["fs-12345678", &mp],
        &[("AWS_DEFAULT_REGION", "ap-south-1")],
    )
    .assert_ok();
    assert_eq!(
        root.nfs_calls()[1][0],
        "fs-12345678.efs.ap-south-1.amazonaws.com:/"
    );
    root.mount_env(
        &["fs-12345678", &mp, "-o", "region=cn-north-1"],
        &[("AWS_REGION", "ap-south-1")],
    )
    .assert_ok();
    assert_eq!(
        root.nfs_calls()[2][0],
        "fs-12345678.efs.cn-north-1.amazonaws.com.cn:/"
    );
}

#[test]
fn no_region_anywhere_is_a_clear_error() {
    // Metadata at an address where nothing listens: refused at once.
    let root = Root::new(&format!(
        "instance_metadata_url = \"http://127.0.0.1:{}\"",
        free_port()
    ));
    let mp = root.mountpoint("noregion");
    let run = root.mount_env(&["fs-12345678", &mp], &[]);
    assert_eq!(run.code(), Some(1));
    assert!(
        run.stderr().contains("Error retrieving region"),
        "{}",
        run.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mountpoints_with_spaces_and_hidden_directories_are_named_like_the_incumbent() {
    let root = Root::new("");
    let (_server, ip) = server(&root, WILDCARD).await;
    let mp = root.mountpoint("my efs");
    root.mount(&["fs-12345678", &mp, "-o", &format!("tls,mounttargetip={ip}")])
        .assert_ok();
    let port = port_of(&root.nfs_calls()[0][3]);
    let want = format!(
        "{FS_ID}.{}.{port}",
        mp.trim_start_matches('/').replace('/', ".")
    );
    assert!(want.contains("my efs"));
    assert!(
        root.state_files().contains(&want),
        "{:?}",
        root.state_files()
    );
}

#[test]
fn only_root_may_mount_but_anyone_may_ask_for_help() {
    let root = Root::new("");
    let mp = root.mountpoint("x");
    let as_nobody = |args: &[&str]| {
        std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(mount_efs_bin())
            .args(args)
            .env("EFS_UTILS_CONFIG", &root.config)
            .output()
            .unwrap()
    };
    let out = as_nobody(&["fs-12345678", &mp, "-o", "tls"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "only root can run this command"
    );
    assert!(as_nobody(&["--version"]).status.success());
    assert!(as_nobody(&["--help"]).status.success());
}

#[test]
fn a_missing_tunnel_binary_is_a_clear_error_and_leaves_nothing() {
    let root = Root::new("");
    let text = std::fs::read_to_string(&root.config).unwrap();
    std::fs::write(
        &root.config,
        text.replace(
            &tunnel_bin().display().to_string(),
            "/nonexistent/efs-tunnel",
        ),
    )
    .unwrap();
    let mp = root.mountpoint("x");
    let run = root.mount(&["fs-12345678", &mp, "-o", "tls,mounttargetip=127.0.0.9"]);
    assert_eq!(run.code(), Some(32));
    assert!(
        run.stderr().contains("/nonexistent/efs-tunnel") && run.stderr().contains("reinstall"),
        "{}",
        run.stderr()
    );
    root.assert_nothing_left();
}

#[test]
fn optimize_readahead_sets_15_times_rsize_on_the_mounts_backing_device() {
    use std::os::unix::fs::MetadataExt;
    let root = Root::new("optimize_readahead = true");
    let mp = root.mountpoint("ra");
    // The stand-in mount.nfs4 mounts nothing, so the "mount" is the directory's own
    // device; its bdi folder stands in for /sys/class/bdi/MAJ:MIN.
    let dev = std::fs::metadata(&mp).unwrap().dev();
    let bdi = root.dir.path("bdi").join(format!(
        "{}:{}",
        nix::sys::stat::major(dev),
        nix::sys::stat::minor(dev)
    ));
    std::fs::create_dir_all(&bdi).unwrap();
    root.mount(&["fs-12345678", &mp, "-o", "rsize=65536"])
        .assert_ok();
    assert_eq!(
        std::fs::read_to_string(bdi.join("read_ahead_kb")).unwrap(),
        "960\n"
    );
    root.mount(&["fs-12345678", &mp]).assert_ok();
    assert_eq!(
        std::fs::read_to_string(bdi.join("read_ahead_kb")).unwrap(),
        "15360\n"
    );
}

/// Mounts `name` through the tunnel and returns (mountpoint, port, state).
fn tls_mount(root: &Root, name: &str, ip: &str, extra: &str) -> (String, u16, MountState) {
    let mp = root.mountpoint(name);
    root.mount(&[
        "fs-12345678",
        &mp,
        "-o",
        &format!("tls,mounttargetip={ip}{extra}"),
    ])
    .assert_ok();
    let (port, path) = root.state_of_mount(&mp);
    (mp, port, MountState::read(&path).unwrap())
}

use efs_config::state::MountState;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mount_the_kernel_puts_on_another_mounts_connection_rides_on_its_tunnel() {
    let root = Root::new("");
    let (_server, ip) = server(&root, WILDCARD).await;
    let (first, first_port, first_state) = tls_mount(&root, "first", &ip, "");
    // From now on the stand-in kernel sends every new mount through the first tunnel, as
    // Linux does for a second mount of one server.
    std::fs::write(root.dir.path("kernel.trunk-to"), first_port.to_string()).unwrap();
    let (second, second_port, st) = tls_mount(&root, "second", &ip, ",rsize=65536");
    assert_ne!(second_port, first_port);

    // The second mount's own tunnel, which the kernel would never use, is gone; its
    // state says which tunnel carries it.
    assert_eq!(st.served_by, Some(first_port), "{st:?}");
    assert_eq!(st.pid, 0);
    assert_eq!(root.tunnel_pids(), vec![first_state.pid]);
    assert!(!st.control_socket.exists());
    let log = root.log();
    assert!(
        log.contains(&format!(
            "sends {second} over its existing connection through the tunnel of {first} (port {first_port})"
        )),
        "{log}"
    );
    assert!(log.contains(&format!("Successfully mounted {DNS_NAME} at {second}")));
    // And the tunnel it rides on still works.
    let mut s = TcpStream::connect(("127.0.0.1", first_port)).unwrap();
    s.write_all(b"ping").unwrap();
    let mut back = [0u8; 4];
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"ping");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mount_that_would_ride_on_a_connection_with_other_tls_settings_is_refused() {
    let root = Root::new("");
    let (_server, ip) = server(&root, WILDCARD).await;
    let (first, first_port, first_state) = tls_mount(&root, "first", &ip, "");
    std::fs::write(root.dir.path("kernel.trunk-to"), first_port.to_string()).unwrap();
    // The same CA under another name: another cafile setting all the same.
    let other_ca = root.dir.path("other-ca.pem");
    std::fs::copy(root.dir.path("ca.pem"), &other_ca).unwrap();
    let mp = root.mountpoint("other");
    let before = root.state_files();
    let run = root.mount(&[
        "fs-12345678",
        &mp,
        "-o",
        &format!("tls,mounttargetip={ip},cafile={}", other_ca.display()),
    ]);
    assert_eq!(run.code(), Some(32), "{}", run.stderr());
    let err = run.stderr();
    assert!(
        err.contains(&format!(
            "fs-12345678 is already mounted at {first} with other TLS settings"
        )) && err.contains(&format!(
            "CA file (cafile, stunnel_cafile): {} here",
            other_ca.display()
        )) && err.contains("Mount with the same TLS options"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // Nothing of the refused mount is left; the first one is untouched.
    assert_eq!(root.state_files(), before);
    assert_eq!(root.tunnel_pids(), vec![first_state.pid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mount_put_on_a_connection_no_tunnel_of_ours_describes_is_refused() {
    let root = Root::new("");
    let (_server, ip) = server(&root, WILDCARD).await;
    std::fs::write(root.dir.path("kernel.trunk-to"), "20001").unwrap();
    let mp = root.mountpoint("x");
    let run = root.mount(&["fs-12345678", &mp, "-o", &format!("tls,mounttargetip={ip}")]);
    assert_eq!(run.code(), Some(32));
    assert!(
        run.stderr()
            .contains("through 127.0.0.1:20001, which is not a tunnel of this efs-utils"),
        "{}",
        run.stderr()
    );
    root.assert_nothing_left();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_tunnels_peer_check_and_dead_upstream_limit_come_from_the_config() {
    let root = Root::new("");
    let (_server, ip) = server(&root, WILDCARD).await;
    let (_, _, st) = tls_mount(&root, "defaults", &ip, "");
    assert!(
        !st.cmd.iter().any(|a| a == "--allow-any-peer"),
        "{:?}",
        st.cmd
    );
    assert!(
        !st.cmd.iter().any(|a| a == "--dead-upstream-sec"),
        "30 s is the tunnel's default"
    );

    let root = Root::new("tunnel_peer_check_enabled = false\ntunnel_dead_upstream_timeout_sec = 5");
    let (_server, ip) = server(&root, WILDCARD).await;
    let (_, _, st) = tls_mount(&root, "relaxed", &ip, "");
    assert!(
        st.cmd.iter().any(|a| a == "--allow-any-peer"),
        "{:?}",
        st.cmd
    );
    let at = st
        .cmd
        .iter()
        .position(|a| a == "--dead-upstream-sec")
        .unwrap();
    assert_eq!(st.cmd[at + 1], "5");
}
/// Writes the mount table mount.efs reads, as the kernel would after these NFS mounts:
/// (mountpoint, source, superblock options).
fn set_mount_table(root: &Root, mounts: &[(&str, &str, &str)]) {
    let mut text = String::from("22 1 0:21 / / rw,relatime - ext4 /dev/root rw\n");
    for (i, (mp, source, opts)) in mounts.iter().enumerate() {
        text.push_str(&format!(
            "{} 22 0:{} / {} rw,relatime - nfs4 {source} {opts}\n",
            40 + i,
            60 + i,
            mp.replace(' ', "\\040")
        ));
    }
    std::fs::write(root.dir.path("mountinfo"), text).unwrap();
}

/// From now on the stand-in mount.nfs4 also plays the kernel's mount table: each mount it
/// makes goes on top, with the port it was given.
fn kernel_adds_mounts(root: &Root) {
    let d = root.dir.0.display();
    let text = std::fs::read_to_string(&root.config).unwrap();
    let orig = root.dir.path("bin").join("mount.nfs4-stand-in");
    let wrapper = root.dir.path("bin").join("mount.nfs4-kernel");
    efs_testkit::write_executable(
        &wrapper,
        &format!(
            "#!/bin/sh\nport=$(printf '%s\\n' \"$4\" | tr , '\\n' | sed -n 's/^port=//p')\n\
             echo \"99 22 0:99 / $2 rw - nfs4 $1 rw,vers=4.1,port=$port,addr=127.0.0.1\" >> {d}/mountinfo\n\
             exec {} \"$@\"\n",
            orig.display()
        ),
        0o755,
    );
    let from = format!("mount_nfs = \"{}\"", orig.display());
    assert!(text.contains(&from));
    let to = format!("mount_nfs = \"{}\"", wrapper.display());
    std::fs::write(&root.config, text.replace(&from, &to)).unwrap();
}

fn tunnel_opts(port: u16) -> String {
    format!("rw,vers=4.1,rsize=1048576,wsize=1048576,hard,noresvport,proto=tcp,port={port},timeo=600,retrans=2,addr=127.0.0.1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mount_a_run_twice_leaves_the_first_mount_alone_and_starts_nothing() {
    let root = Root::new("");
    let (_server, ip) = server(&root, WILDCARD).await;
    let (mp, port, st) = tls_mount(&root, "efs", &ip, "");
    set_mount_table(&root, &[(&mp, "127.0.0.1:/", &tunnel_opts(port))]);
    let states = root.state_files();

    // The fstab line again, as `mount -a` passes it (with a trailing slash this time).
    let run = root.mount(&[
        "fs-12345678:/",
        &format!("{mp}/"),
        "-o",
        &format!("_netdev,tls,mounttargetip={ip}"),
    ]);
    run.assert_ok();
    assert_eq!(
        run.stdout().trim(),
        format!("{mp}/ is already mounted, please run 'mount' command to verify")
    );
    assert_eq!(run.stderr(), "");
    assert_eq!(root.nfs_calls().len(), 1, "no second NFS mount");
    assert_eq!(root.tunnel_pids(), vec![st.pid], "no second tunnel");
    assert_eq!(root.state_files(), states);
    assert_eq!(
        count_lines(
            &root.log(),
            "is already mounted, please run 'mount' command to verify"
        ),
        1,
        "{}",
        root.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn other_mounts_at_the_mountpoint_are_mounted_over_as_before() {
    let root = Root::new("");
    let (_server, ip) = server(&root, WILDCARD).await;
    let tls = format!("tls,mounttargetip={ip}");
    kernel_adds_mounts(&root);
    // fs-87654321 is mounted at the mountpoint through one of our tunnels.
    let mp = root.mountpoint("shared");
    root.mount(&["fs-87654321", &mp, "-o", &tls]).assert_ok();
    let port = port_of(&root.nfs_calls()[0][3]);
    let ours = tunnel_opts(port);
    let plain = "rw,vers=4.1,addr=10.0.0.5".to_string();
    let unknown = tunnel_opts(20001);
    let cases = [
        ("another file system", "127.0.0.1:/", &ours, "fs-12345678:/"),
        ("plain NFS", "10.0.0.5:/", &plain, "fs-12345678:/"),
        (
            "a port no state file describes",
            "127.0.0.1:/",
            &unknown,
            "fs-12345678:/",
        ),
        (
            "another path of the file system",
            "127.0.0.1:/sub",
            &ours,
            "fs-87654321:/",
        ),
    ];
    for (what, source, opts, device) in cases {
        set_mount_table(&root, &[(&mp, source, opts)]);
        let calls = root.nfs_calls().len();
        let run = root.mount(&[device, &mp, "-o", &tls]);
        run.assert_ok();
        assert!(
            !run.stdout().contains("already mounted"),
            "{what}: {}",
            run.stdout()
        );
        assert_eq!(root.nfs_calls().len(), calls + 1, "{what}: mounted over");
    }

    // Whereas the same file system and path on top is left alone, even when another
    // mount lies below it.
    set_mount_table(
        &root,
        &[(&mp, "10.0.0.5:/", &plain), (&mp, "127.0.0.1:/", &ours)],
    );
    let calls = root.nfs_calls().len();
    let run = root.mount(&["fs-87654321:/", &mp, "-o", &tls]);
    run.assert_ok();
    assert!(
        run.stdout().contains("is already mounted"),
        "{}",
        run.stdout()
    );
    assert_eq!(root.nfs_calls().len(), calls);
}

/// Starts the real watchdog, not through systemd (as the EFS CSI driver starts it), and
/// waits until it runs.
fn start_watchdog(root: &Root) -> KillOnDrop {
    let wd = KillOnDrop(
        std::process::Command::new(watchdog_bin())
            .env("EFS_UTILS_CONFIG", &root.config)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(stdio_file(&root.dir, "watchdog.stderr"))
            .spawn()
            .unwrap(),
    );
    let log = || {
        std::fs::read_to_string(root.dir.path("log").join("mount-watchdog.log")).unwrap_or_default()
    };
    assert!(
        wait_until(Duration::from_secs(10), || log().contains("watching ")),
        "{}",
        log()
    );
    wd
}

const NO_WATCHDOG: &str = "amazon-efs-mount-watchdog is not running, and without systemd";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_systemd_a_mount_calls_no_systemctl_and_prints_nothing_about_the_watchdog() {
    let root = Root::new("");
    std::fs::remove_dir(root.dir.path("systemd")).unwrap(); // no /run/systemd/system
    let (_server, ip) = server(&root, WILDCARD).await;
    let tls = format!("tls,mounttargetip={ip}");
    let run = root.mount(&["fs-12345678", &root.mountpoint("a"), "-o", &tls]);
    run.assert_ok();
    assert_eq!(run.stderr(), "", "nothing on the terminal");
    assert_eq!(root.systemctl_calls(), "");
    // One line in mount.log says no watchdog runs, and how to run one.
    let log = root.log();
    assert_eq!(count_lines(&log, NO_WATCHDOG), 1, "{log}");
    assert!(
        first_line_with(&log, NO_WATCHDOG)
            .unwrap()
            .contains("Run amazon-efs-mount-watchdog as root in the background"),
        "{log}"
    );

    // With a watchdog running (as the EFS CSI driver runs it), not even that line.
    let wd = start_watchdog(&root);
    let run = root.mount(&["fs-12345678", &root.mountpoint("b"), "-o", &tls]);
    run.assert_ok();
    assert_eq!(run.stderr(), "");
    assert_eq!(root.systemctl_calls(), "");
    assert_eq!(count_lines(&root.log(), NO_WATCHDOG), 1, "{}", root.log());
    drop(wd);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_systemd_a_running_watchdog_is_not_started_again() {
    let root = Root::new("");
    let (_server, ip) = server(&root, WILDCARD).await;
    // A watchdog systemd does not know about (started by hand): systemctl would start a
    // second one.
    let _wd = start_watchdog(&root);
    root.mount(&[
        "fs-12345678",
        &root.mountpoint("a"),
        "-o",
        &format!("tls,mounttargetip={ip}"),
    ])
    .assert_ok();
    assert_eq!(
        root.systemctl_calls(),
        "",
        "no systemctl while a watchdog runs"
    );
}

#[test]
fn a_mountpoint_that_is_not_utf8_is_a_clear_error_not_a_panic() {
    use std::os::unix::ffi::OsStrExt;
    let root = Root::new("");
    let latin1 = std::ffi::OsStr::from_bytes(b"/mnt/caf\xe9");
    let out = std::process::Command::new(mount_efs_bin())
        .arg("fs-12345678:/")
        .arg(latin1)
        .args(["-o", "tls"])
        .env("EFS_UTILS_CONFIG", &root.config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("is not valid UTF-8") && !err.contains("panicked"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    root.assert_nothing_left();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dash_n_is_a_mount_namespace_where_only_the_mount_itself_happens() {
    let root = Root::new("");
    let (_server, ip) = server(&root, WILDCARD).await;
    // A mount namespace of the test's own, held by a sleeping process.
    let mut holder = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sleep", "60"])
        .spawn()
        .unwrap();
    let pid = holder.id();
    assert!(wait_until(Duration::from_secs(5), || {
        std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok()
            != std::fs::read_link("/proc/self/ns/mnt").ok()
    }));
    let target_ns = std::fs::read_link(format!("/proc/{pid}/ns/mnt")).unwrap();
    let mp = root.mountpoint("in-ns");
    let run = root.mount(&[
        "fs-12345678",
        &mp,
        "-N",
        &format!("/proc/{pid}/ns/mnt"),
        "-o",
        &format!("tls,mounttargetip={ip}"),
    ]);
    let _ = holder.kill();
    let _ = holder.wait();
    run.assert_ok();
    // mount.nfs4 ran in the target mount namespace ...
    let ns = std::fs::read_to_string(root.dir.path("mount-nfs.ns")).unwrap();
    assert_eq!(
        ns.trim(),
        target_ns.to_string_lossy(),
        "mount.nfs4's namespace"
    );
    // ... and the state and the tunnel stayed where the watchdog sees them.
    assert_eq!(
        root.state_files()
            .iter()
            .filter(|f| f.starts_with("fs-"))
            .count(),
        1
    );
    assert_eq!(root.tunnel_pids().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_netns_mount_runs_its_tunnel_there_and_records_the_namespace_for_restarts() {
    let ns = match efs_testkit::netns::Netns::new() {
        Ok(ns) => ns,
        Err(why) => {
            eprintln!("skipping: {why}");
            return;
        }
    };
    let netns_of = |p: &str| std::fs::read_link(p).unwrap();
    // The mount target lives in the namespace: a thread there serves it.
    let root = Root::new("");
    let addr = target_addr();
    let _server = ns.serve_tls(addr, root.ca.issue(WILDCARD));
    let path = ns.path();

    let (_, port, st) = tls_mount(
        &root,
        "in-ns",
        &addr.ip().to_string(),
        &format!(",netns={path}"),
    );
    // The recorded command line enters the namespace, so a restart from it runs there.
    assert!(
        st.cmd.windows(2).any(|w| w[0] == "--netns" && w[1] == path),
        "{:?}",
        st.cmd
    );
    assert_eq!(
        netns_of(&format!("/proc/{}/ns/net", st.pid)),
        netns_of(&path),
        "the tunnel's network namespace"
    );
    assert_ne!(netns_of(&path), netns_of("/proc/self/ns/net"));
    assert!(port > 0);
}
