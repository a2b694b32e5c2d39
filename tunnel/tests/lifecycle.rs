//! Signals and start-up: SIGTERM stops cleanly and fast, SIGHUP reloads the CA file,
//! the readiness pipe reports the first handshake.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream as StdTcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_connections_and_exits_0_within_5_seconds() {
    let ca = TestCa::new("Test CA");
    let server = TlsServer::start(&ca.issue(WILDCARD), Behaviour::Echo).await;
    let mut tunnel = Tunnel::start(server.addr.port(), &ca.pem, &[]);
    let mut s = StdTcpStream::connect(tunnel.addr()).unwrap();
    s.write_all(b"hi").unwrap();
    let mut b = [0u8; 2];
    s.read_exact(&mut b).unwrap();

    let t0 = Instant::now();
    tunnel.signal(Signal::SIGTERM);
    let status = tunnel
        .wait_exit(Duration::from_secs(5))
        .expect("still running 5 s after SIGTERM");
    assert!(status.success(), "exit status {status:?}");
    assert!(t0.elapsed() < Duration::from_secs(5));
    // The open connection was closed, not left hanging.
    assert!(read_all(&mut s, Duration::from_secs(2)).is_ok());
    assert!(!exists(&tunnel.control), "control socket left behind");
    assert!(
        StdTcpStream::connect(tunnel.addr()).is_err(),
        "still accepting after SIGTERM"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_ca_file_for_new_connections() {
    let right = TestCa::new("Right CA");
    let wrong = TestCa::new("Wrong CA");
    let server = TlsServer::start(&right.issue(WILDCARD), Behaviour::Echo).await;
    let tunnel = Tunnel::start(server.addr.port(), &wrong.pem, &[]);

    let mut s = StdTcpStream::connect(tunnel.addr()).unwrap();
    s.write_all(b"x").unwrap();
    assert!(read_all(&mut s, Duration::from_secs(10))
        .unwrap_or_default()
        .is_empty());

    std::fs::write(&tunnel.cafile, &right.pem).unwrap();
    tunnel.signal(Signal::SIGHUP);
    assert!(wait_until(Duration::from_secs(5), || tunnel
        .log_text()
        .contains("reloaded trust anchors")));

    let mut s = StdTcpStream::connect(tunnel.addr()).unwrap();
    s.write_all(b"after reload").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(
        read_all(&mut s, Duration::from_secs(10)).unwrap(),
        b"after reload"
    );
}

/// Runs the tunnel with `--ready-fd` and returns (the line it reported, the process).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_pipe_reports_a_completed_handshake() {
    let ca = TestCa::new("Test CA");
    let server = TlsServer::start(&ca.issue(WILDCARD), Behaviour::Echo).await;
    let dir = TempDir::new("ready-ok");
    let (line, mut child) = start_with_ready_pipe(server.addr, &dir, &ca.pem, &[]);
    assert!(line.starts_with("ready port="), "{line:?}");
    // The server finishes its side of the handshake a moment after the client does.
    let handshakes = || server.handshakes.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        wait_until(Duration::from_secs(5), || handshakes() == 1),
        "server saw {} handshakes",
        handshakes()
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "a ready tunnel keeps running"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_pipe_reports_why_the_target_was_refused_and_the_tunnel_exits() {
    let ca = TestCa::new("Test CA");
    let server =
        TlsServer::start(&ca.issue("*.efs.eu-west-1.amazonaws.com"), Behaviour::Echo).await;
    let dir = TempDir::new("ready-bad");
    let t0 = Instant::now();
    let (line, mut child) = start_with_ready_pipe(server.addr, &dir, &ca.pem, &[]);
    assert!(line.starts_with("error "), "{line:?}");
    assert!(
        line.contains("not valid for name") && line.contains(FS_ID),
        "{line:?}"
    );
    assert_eq!(line.trim_end().lines().count(), 1);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(1));
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t0.elapsed()
    );
}

#[test]
fn bad_command_lines_fail_with_a_clear_message() {
    let dir = TempDir::new("usage");
    let run = |args: &[&str]| {
        let out = Command::new(tunnel_bin()).args(args).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let base = ["--listen", "127.0.0.1:0", "--check-host", CHECK_HOST];
    let (code, err) = run(&[&base[..], &["--connect", "nohost"]].concat());
    assert_eq!(code, Some(1));
    assert!(err.contains("is not HOST:PORT"), "{err}");

    let missing = dir.path("missing.pem");
    let (code, err) = run(&[
        &base[..],
        &[
            "--connect",
            "127.0.0.1:2049",
            "--cafile",
            missing.to_str().unwrap(),
        ],
    ]
    .concat());
    assert_eq!(code, Some(1));
    assert!(
        err.contains("cannot read CA file") && err.contains("missing.pem"),
        "{err}"
    );

    let (code, err) = run(&[
        "--listen-fd",
        "57",
        "--connect",
        "127.0.0.1:2049",
        "--check-host",
        CHECK_HOST,
    ]);
    assert_eq!(code, Some(1));
    assert!(err.contains("descriptor 57 is not open"), "{err}");

    let (code, err) = run(&[
        "--listen-fd",
        "1",
        "--connect",
        "127.0.0.1:2049",
        "--check-host",
        CHECK_HOST,
    ]);
    assert_eq!(code, Some(1));
    assert!(err.contains("stdin/stdout/stderr"), "{err}");

    let (code, _) = run(&["--connect", "127.0.0.1:2049"]);
    assert_eq!(code, Some(2), "clap usage error");
}

#[test]
fn version_says_what_fips_means_in_this_build() {
    let out = Command::new(tunnel_bin())
        .arg("--version")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.contains("FIPS"), "{text}");
    if cfg!(feature = "fips") {
        assert!(text.contains("validated AWS-LC module"), "{text}");
    } else {
        assert!(text.contains("only restricts algorithms"), "{text}");
    }
}
