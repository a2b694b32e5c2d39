//! `efs-utils status` on real tunnels in a temporary root.

use std::process::Command;

mod common;

use common::succeeded;
use efs_testkit::root::*;
use efs_testkit::*;

fn status(root: &Root, json: bool) -> String {
    let mut cmd = Command::new(workspace_bin("efs-utils"));
    cmd.arg("status").env("EFS_UTILS_CONFIG", &root.config);
    if json {
        cmd.arg("--json");
    }
    let out = succeeded(cmd.output().unwrap());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn mount(root: &Root, name: &str, ip: &str) -> (String, u16) {
    let mp = root.mountpoint(name);
    root.mount(&["fs-12345678", &mp, "-o", &format!("tls,mounttargetip={ip}")])
        .assert_ok();
    let port = port_of(&root.nfs_calls().last().unwrap()[3]);
    (mp, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shows_healthy_dead_and_unmounted_tunnels() {
    let root = Root::new("");
    let addr = target_addr();
    let _server = TlsServer::start_on(addr, &root.ca.issue(WILDCARD), Behaviour::Echo).await;
    let ip = addr.ip().to_string();
    let (healthy, hp) = mount(&root, "healthy", &ip);
    let (dead, dp) = mount(&root, "dead", &ip);
    let (gone, gp) = mount(&root, "gone", &ip);
    std::fs::write(
        root.dir.path("mountinfo"),
        format!(
            "40 22 0:50 / {healthy} rw - nfs4 127.0.0.1:/ rw,vers=4.1,port={hp},addr=127.0.0.1\n\
             41 22 0:51 / {dead} rw - nfs4 127.0.0.1:/ rw,vers=4.1,port={dp},addr=127.0.0.1\n\
             42 22 0:52 / /mnt/plain rw - nfs4 fs-12345678.efs.us-east-1.amazonaws.com:/ rw,vers=4.1,addr=10.0.0.5\n"
        ),
    )
    .unwrap();
    let state_of = |mp: &str, port: u16| {
        root.state_dir().join(efs_config::state::state_file_name(
            FS_ID,
            std::path::Path::new(mp),
            port,
        ))
    };
    let dead_pid = efs_config::state::MountState::read(&state_of(&dead, dp))
        .unwrap()
        .pid;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(dead_pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let mut st = efs_config::state::MountState::read(&state_of(&gone, gp)).unwrap();
    st.unmount_time = Some(1.0);
    st.write(
        &root.state_dir(),
        &state_of(&gone, gp).file_name().unwrap().to_string_lossy(),
    )
    .unwrap();
    wait_until(std::time::Duration::from_secs(5), || {
        !std::path::Path::new(&format!("/proc/{dead_pid}/status")).exists()
            || std::fs::read_to_string(format!("/proc/{dead_pid}/status"))
                .unwrap_or_default()
                .contains("zombie")
    });

    let text = status(&root, false);
    assert!(text.contains("watchdog: NOT RUNNING"), "{text}");
    assert!(
        text.contains(&format!("fs-12345678 on {healthy}: healthy")),
        "{text}"
    );
    assert!(
        text.contains(&format!("127.0.0.1:{hp}, pid")) && text.contains("restarted 0 time(s)"),
        "{text}"
    );
    assert!(
        text.contains("tls         TLSv1.3 TLS_AES_256_GCM_SHA384"),
        "{text}"
    );
    assert!(
        text.contains("certificate CN=*.efs.us-east-1.amazonaws.com"),
        "{text}"
    );
    assert!(
        text.contains(&format!("fs-12345678 on {dead}: not running")),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "fs-12345678 on {gone}: unmounted, waiting for teardown"
        )),
        "{text}"
    );
    assert!(
        text.contains("fs-12345678 on /mnt/plain: plain NFS, not encrypted"),
        "{text}"
    );

    let json: serde_json::Value = serde_json::from_str(&status(&root, true)).unwrap();
    let mounts = json["mounts"].as_array().unwrap();
    assert_eq!(mounts.len(), 4);
    let h = mounts
        .iter()
        .find(|m| m["mountpoint"] == healthy.as_str())
        .unwrap();
    assert_eq!(h["state"], "healthy");
    assert_eq!(h["port"], hp);
    assert_eq!(h["tunnel"]["tls"]["version"], "TLSv1.3");
    assert!(json["watchdog_pid"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stuck_tunnels_show_as_not_answering_after_one_timeout_not_one_each() {
    let root = Root::new("");
    let addr = target_addr();
    let _server = TlsServer::start_on(addr, &root.ca.issue(WILDCARD), Behaviour::Echo).await;
    let mut stopped = Vec::new();
    for name in ["stuck-a", "stuck-b", "stuck-c"] {
        let (mp, port) = mount(&root, name, &addr.ip().to_string());
        let pid = efs_config::state::MountState::read(&root.state_dir().join(
            efs_config::state::state_file_name(FS_ID, std::path::Path::new(&mp), port),
        ))
        .unwrap()
        .pid;
        let pid = nix::unistd::Pid::from_raw(pid);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
        stopped.push((mp, pid));
    }
    let t0 = std::time::Instant::now();
    let text = status(&root, false);
    let took = t0.elapsed();
    for (_, pid) in &stopped {
        nix::sys::signal::kill(*pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    }
    // Each tunnel gets one second to answer, all at the same time: asked one after
    // another, three stuck tunnels would take three seconds.
    assert!(
        took < std::time::Duration::from_millis(2500),
        "took {took:?}"
    );
    for (mp, _) in &stopped {
        assert!(text.contains(&format!("on {mp}: not answering")), "{text}");
    }
}

/// A stand-in for a tunnel's control socket (a fake, named as such: the real tunnel
/// reports its client certificate only once the iam-tunnel branch is merged): answers
/// every request with `status`.
fn fake_control_socket(path: &std::path::Path, status: &efs_tunnel_contract::Status) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
    let line = serde_json::to_string(status).unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut request = String::new();
            let _ = BufReader::new(&stream).read_line(&mut request);
            let _ = writeln!(&stream, "{line}");
        }
    });
}

/// A state file for a mount with a client certificate, its tunnel behind a fake control
/// socket that presents `presented`.
fn cert_mount(
    root: &Root,
    name: &str,
    port: u16,
    record: efs_config::state::ClientCertRecord,
    presented: efs_tunnel_contract::ClientCertStatus,
) -> String {
    let mountpoint = format!("/mnt/{name}");
    let control = efs_config::state::control_socket_path(&root.state_dir(), port);
    let st = efs_config::state::MountState {
        // This test: alive, so an unanswered socket would read "not answering".
        pid: std::process::id() as i32,
        cmd: vec![tunnel_bin().display().to_string()],
        files: Vec::new(),
        mount_time: 1_800_000_000.0,
        mountpoint: mountpoint.clone(),
        service_type: efs_config::state::SERVICE_TYPE_EFS.into(),
        fs_id: FS_ID.into(),
        port,
        dns_name: DNS_NAME.into(),
        check_host: DNS_NAME.into(),
        connect: format!("{DNS_NAME}:2049"),
        control_socket: control.clone(),
        restarts: 0,
        unmount_time: None,
        served_by: None,
        also_serves: Vec::new(),
        client_cert: Some(record),
        extra: Default::default(),
    };
    let file = efs_config::state::state_file_name(FS_ID, std::path::Path::new(&mountpoint), port);
    st.write(&root.state_dir(), &file).unwrap();
    fake_control_socket(
        &control,
        &efs_tunnel_contract::Status {
            listen_port: port,
            client_cert: Some(presented),
            ..Default::default()
        },
    );
    mountpoint
}

#[test]
fn shows_client_certificates_and_warns_when_the_tunnel_presents_another() {
    let root = Root::new("");
    efs_config::state::ensure_state_dir(&root.state_dir(), 0o750).unwrap();
    let now = efs_config::state::unix_time();
    let record = |ap: Option<&str>, source: Option<&str>, error: Option<&str>| {
        efs_config::state::ClientCertRecord {
            certificate: root.state_dir().join("x+").join("certificate.pem"),
            private_key: "/etc/amazon/efs/privateKey.pem".into(),
            common_name: "test-host".into(),
            region: "us-east-1".into(),
            access_point: ap.map(str::to_string),
            iam_source: source.map(str::to_string),
            issued: now - 600.0,
            not_after: now + 3.0 * 3600.0 - 570.0,
            credentials_expire: None,
            renewed: Some(now - 600.0),
            renewal_error: error.map(str::to_string),
        }
    };
    let current =
        |reload_error: Option<&str>, not_after: f64| efs_tunnel_contract::ClientCertStatus {
            not_after_unix: not_after as i64,
            loaded_unix: now as i64 - 60,
            reloads: 1,
            reload_error: reload_error.map(str::to_string),
        };
    // Renewed, loaded: all well.
    let good_rec = record(Some("fsap-0123456789abcdef0"), Some("metadata:"), None);
    let good_after = good_rec.not_after;
    let good = cert_mount(&root, "good", 20991, good_rec, current(None, good_after));
    // Renewed, but the tunnel still presents the one before, and could not load the new.
    let stale = cert_mount(
        &root,
        "stale",
        20992,
        record(None, Some("credentials:default"), Some("AWS profile [default] not found in /root/.aws/credentials or /root/.aws/config: add it")),
        current(Some("cannot read /x+/certificate.pem: No such file"), now + 1230.0),
    );
    std::fs::write(
        root.dir.path("mountinfo"),
        format!(
            "40 22 0:50 / {good} rw - nfs4 127.0.0.1:/ rw,vers=4.1,port=20991,addr=127.0.0.1\n\
             41 22 0:51 / {stale} rw - nfs4 127.0.0.1:/ rw,vers=4.1,port=20992,addr=127.0.0.1\n"
        ),
    )
    .unwrap();

    let text = status(&root, false);
    let section = |mp: &str| {
        let start = text
            .find(&format!("on {mp}:"))
            .unwrap_or_else(|| panic!("{text}"));
        let rest = &text[start..];
        rest[..rest[1..].find("\nfs-").map_or(rest.len(), |i| i + 1)].to_string()
    };
    let g = section(&good);
    assert!(g.contains(": healthy"), "{g}");
    assert!(g.contains("  access point fsap-0123456789abcdef0\n"), "{g}");
    assert!(
        g.contains("  iam         on, credentials from metadata:\n"),
        "{g}"
    );
    assert!(
        g.contains("  client cert expires in 2 h 50 min, issued 10 min ago, renewed 10 min ago\n"),
        "{g}"
    );
    assert!(!g.contains("warning"), "{g}");
    let s = section(&stale);
    assert!(!s.contains("access point"), "{s}");
    assert!(
        s.contains("  iam         on, credentials from credentials:default\n"),
        "{s}"
    );
    assert!(
        s.contains("  renewal     FAILING: AWS profile [default] not found"),
        "{s}"
    );
    assert!(
        s.contains("  warning     the tunnel still presents an older certificate (expires in 20 min) than the renewed file"),
        "{s}"
    );
    assert!(
        s.contains("  warning     the tunnel could not load the renewed certificate and presents the previous one: cannot read /x+/certificate.pem"),
        "{s}"
    );

    let json: serde_json::Value = serde_json::from_str(&status(&root, true)).unwrap();
    let mounts = json["mounts"].as_array().unwrap();
    let of =
        |mp: &str| mounts.iter().find(|m| m["mountpoint"] == mp).unwrap()["client_cert"].clone();
    let g = of(&good);
    assert_eq!(g["access_point"], "fsap-0123456789abcdef0");
    assert_eq!(g["iam"], true);
    assert_eq!(g["credential_source"], "metadata:");
    assert_eq!(g["not_after_unix"], good_after as i64);
    assert_eq!(g["presented"]["not_after_unix"], good_after as i64);
    assert_eq!(g["warnings"].as_array().unwrap().len(), 0);
    let s = of(&stale);
    assert!(s["renewal_error"].as_str().unwrap().contains("not found"));
    assert!(s["presented"]["reload_error"]
        .as_str()
        .unwrap()
        .contains("No such file"));
    assert_eq!(s["warnings"].as_array().unwrap().len(), 2, "{s}");
    assert!(s["access_point"].is_null());
}

/// A mountinfo line of a mount through a local tunnel, as Linux 6.1 writes it (the e2e
/// guest's, `config/src/mounts.rs` tests): superblock `0:minor`, the `port=` it asked for.
fn mountinfo_line(id: u32, minor: u32, mountpoint: &str, export: &str, port: u16) -> String {
    format!(
        "{id} 16 0:{minor} / {mountpoint} rw,relatime - nfs4 127.0.0.1:{export} rw,vers=4.1,\
         rsize=1048576,wsize=1048576,namlen=255,hard,noresvport,proto=tcp,port={port},timeo=600,\
         retrans=2,sec=sys,clientaddr=127.0.0.1,local_lock=none,addr=127.0.0.1\n"
    )
}

/// Writes the NFS client's tables byte for byte as the kernel prints them
/// (fs/nfs/client.c): `servers`, one NFS client (one connection) on `client_port` used
/// by every superblock; `volumes`, those superblocks, each sent over that client.
fn write_nfsfs(root: &Root, client_port: u16, minors: &[u32]) {
    let dir = root.dir.path("nfsfs");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("servers"),
        format!(
            "NV SERVER   PORT USE HOSTNAME\nv4 7f000001 {client_port:4x} {:3} 127.0.0.1\n",
            minors.len()
        ),
    )
    .unwrap();
    let mut volumes =
        "NV SERVER   PORT DEV          FSID                              FSC\n".to_string();
    for minor in minors {
        volumes.push_str(&format!(
            "v4 7f000001 {client_port:4x} {:<12} {:<33} no \n",
            format!("0:{minor}"),
            "0:0"
        ));
    }
    std::fs::write(dir.join("volumes"), volumes).unwrap();
}

fn state_path(root: &Root, mountpoint: &str, port: u16) -> std::path::PathBuf {
    root.state_dir().join(efs_config::state::state_file_name(
        FS_ID,
        std::path::Path::new(mountpoint),
        port,
    ))
}

/// The lines of `text` from `on MOUNTPOINT:` to the next mount's.
fn section_of(text: &str, mountpoint: &str) -> String {
    let start = text
        .find(&format!("on {mountpoint}:"))
        .unwrap_or_else(|| panic!("no {mountpoint} in\n{text}"));
    let rest = &text[start..];
    rest[..rest[1..].find("\nfs-").map_or(rest.len(), |i| i + 1)].to_string()
}

/// Issue #10: two mounts of one file system, each mounted with a tunnel of its own. The
/// kernel (NFSv4.1 trunking) sends the second over the first one's connection, which
/// only its tables say: the second's state does not know (no `served_by`: mounted by a
/// mount.efs from before riding, or one that could not read the tables) and its
/// mountinfo line names its own port. Status must show the tunnel the traffic really
/// goes through, found by the superblock's device number in `volumes`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mount_the_kernel_sends_over_another_tunnel_is_shown_with_that_tunnel() {
    let root = Root::new("");
    let addr = target_addr();
    let _server = TlsServer::start_on(addr, &root.ca.issue(WILDCARD), Behaviour::Echo).await;
    let ip = addr.ip().to_string();
    let (first, p1) = mount(&root, "first", &ip);
    let (second, p2) = mount(&root, "second", &ip);
    assert_ne!(p1, p2);
    let first_pid = efs_config::state::MountState::read(&state_path(&root, &first, p1))
        .unwrap()
        .pid;
    let second_state =
        efs_config::state::MountState::read(&state_path(&root, &second, p2)).unwrap();
    assert_eq!(
        second_state.served_by, None,
        "the join must come from the kernel's tables"
    );
    std::fs::write(
        root.dir.path("mountinfo"),
        mountinfo_line(29, 25, &first, "/", p1) + &mountinfo_line(30, 26, &second, "/b", p2),
    )
    .unwrap();
    write_nfsfs(&root, p1, &[25, 26]);

    let text = status(&root, false);
    let s = section_of(&text, &second);
    assert!(s.contains(": healthy\n"), "{s}");
    assert!(
        s.contains(&format!(
            "  tunnel      127.0.0.1:{p1}, pid {first_pid}, restarted 0 time(s)\n"
        )),
        "{s}"
    );
    assert!(
        s.contains(&format!(
            "  shared      the kernel sends this mount over the connection of the tunnel on port {p1}, not through its own port {p2}\n"
        )),
        "{s}"
    );
    let f = section_of(&text, &first);
    assert!(
        f.contains(&format!("  tunnel      127.0.0.1:{p1}, pid {first_pid},")),
        "{f}"
    );
    assert!(!f.contains("shared"), "{f}");

    let json: serde_json::Value = serde_json::from_str(&status(&root, true)).unwrap();
    let row = json["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountpoint"] == second.as_str())
        .unwrap()
        .clone();
    assert_eq!(row["port"], p2, "{row}");
    assert_eq!(row["kernel_port"], p1, "{row}");
    assert_eq!(row["pid"], first_pid, "{row}");
    assert_eq!(row["state"], "healthy", "{row}");
    assert!(row["served_by"].is_null(), "{row}");
}

/// Issue #10's failure as an operator would meet it: the first mount's tunnel was torn
/// down (killed, its state removed) while the kernel still sends the second mount over
/// its connection. The second's own tunnel runs and answers, but carries nothing: the
/// mount is broken, and status must say so, not "healthy".
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mount_whose_kernel_transport_no_tunnel_serves_is_broken() {
    let root = Root::new("");
    let addr = target_addr();
    let _server = TlsServer::start_on(addr, &root.ca.issue(WILDCARD), Behaviour::Echo).await;
    let ip = addr.ip().to_string();
    let (first, p1) = mount(&root, "first", &ip);
    let (second, p2) = mount(&root, "second", &ip);
    let first_state = state_path(&root, &first, p1);
    let st = efs_config::state::MountState::read(&first_state).unwrap();
    let pid = nix::unistd::Pid::from_raw(st.pid);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    std::fs::remove_file(&first_state).unwrap();
    let _ = std::fs::remove_file(&st.control_socket);
    // The first mount is gone from the mount table; its superblock's client stays while
    // the second uses it.
    std::fs::write(
        root.dir.path("mountinfo"),
        mountinfo_line(30, 26, &second, "/b", p2),
    )
    .unwrap();
    write_nfsfs(&root, p1, &[26]);

    let text = status(&root, false);
    let s = section_of(&text, &second);
    assert!(
        s.contains(": BROKEN: no tunnel serves the port the kernel sends it to\n"),
        "{s}"
    );
    assert!(!s.contains("healthy"), "{s}");
    assert!(
        s.contains(&format!("  tunnel      127.0.0.1:{p1}, none running\n")),
        "{s}"
    );
    assert!(
        s.contains(&format!("on port {p1}, not through its own port {p2}\n")),
        "{s}"
    );

    let json: serde_json::Value = serde_json::from_str(&status(&root, true)).unwrap();
    let mounts = json["mounts"].as_array().unwrap();
    assert_eq!(mounts.len(), 1, "{json}");
    assert_eq!(mounts[0]["state"], "broken");
    assert_eq!(mounts[0]["kernel_port"], p1);
    assert!(mounts[0]["pid"].is_null());
}
