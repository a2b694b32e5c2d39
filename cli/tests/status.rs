//! `efs-utils status` on real tunnels in a temporary root.

use std::process::Command;

use efs_testkit::root::*;
use efs_testkit::*;

fn status(root: &Root, json: bool) -> String {
    let mut cmd = Command::new(workspace_bin("efs-utils"));
    cmd.arg("status").env("EFS_UTILS_CONFIG", &root.config);
    if json {
        cmd.arg("--json");
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
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
