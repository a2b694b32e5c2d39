//! The tunnel refuses every mount target it cannot verify, forwards nothing to it, says
//! why in one log line, and keeps serving.

mod common;

use std::io::Write;
use std::net::TcpStream as StdTcpStream;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;

/// Connects a client through the tunnel and checks it was refused: the client gets
/// nothing back, the tunnel logs the reason, and the tunnel is still running.
fn assert_refused(tunnel: &mut Tunnel, reason: &str) -> String {
    let mut s = StdTcpStream::connect(tunnel.addr()).unwrap();
    s.write_all(b"NFS request that must never reach this server")
        .unwrap();
    let got = read_all(&mut s, Duration::from_secs(15)).unwrap_or_default();
    assert!(
        got.is_empty(),
        "the client received {} bytes from an unverified server",
        got.len()
    );
    let mut line = None;
    wait_until(Duration::from_secs(5), || {
        line = first_line_with(&tunnel.log_text(), "cannot reach").map(str::to_owned);
        line.is_some()
    });
    let line = line.unwrap_or_else(|| panic!("no refusal logged:\n{}", tunnel.log_text()));
    assert!(
        line.contains(reason),
        "log line should say {reason:?}: {line}"
    );
    for context in [FS_ID, "127.0.0.1:", CHECK_HOST] {
        assert!(
            line.contains(context),
            "log line should name {context}: {line}"
        );
    }
    assert!(
        tunnel.child.try_wait().unwrap().is_none(),
        "the tunnel exited"
    );
    eprintln!("refusal logged: {line}");
    line
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_certificate_for_another_name() {
    let ca = TestCa::new("Test CA");
    let server =
        TlsServer::start(&ca.issue("*.efs.eu-west-1.amazonaws.com"), Behaviour::Echo).await;
    let mut tunnel = Tunnel::start(server.addr.port(), &ca.pem, &[]);
    assert_refused(&mut tunnel, "not valid for name");
    assert_eq!(server.received.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_certificate_from_an_unknown_ca() {
    let trusted = TestCa::new("Trusted CA");
    let other = TestCa::new("Some other CA");
    let server = TlsServer::start(&other.issue(WILDCARD), Behaviour::Echo).await;
    let mut tunnel = Tunnel::start(server.addr.port(), &trusted.pem, &[]);
    assert_refused(&mut tunnel, "UnknownIssuer");
    assert_eq!(server.received.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_an_expired_certificate() {
    let ca = TestCa::new("Test CA");
    let server = TlsServer::start(&ca.issue_expired(WILDCARD), Behaviour::Echo).await;
    let mut tunnel = Tunnel::start(server.addr.port(), &ca.pem, &[]);
    assert_refused(&mut tunnel, "expired");
    assert_eq!(server.received.load(Ordering::Relaxed), 0);
}

#[test]
fn refuses_a_server_that_offers_only_tls_1_1() {
    let ca = TestCa::new("Test CA");
    let dir = TempDir::new("tls11");
    let server = OpensslServer::start(
        &dir,
        &ca.issue(WILDCARD),
        &["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"],
    );
    let mut tunnel = Tunnel::start(server.port, &ca.pem, &[]);
    let line = assert_refused(&mut tunnel, "TLS handshake");
    assert!(
        line.to_lowercase().contains("version"),
        "should name the protocol version problem: {line}"
    );
}

#[test]
fn refuses_a_server_that_offers_only_a_non_aead_suite() {
    let ca = TestCa::new("Test CA");
    let dir = TempDir::new("cbc");
    let server = OpensslServer::start(
        &dir,
        &ca.issue(WILDCARD),
        &[
            "-tls1_2",
            "-cipher",
            "ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES256-SHA",
        ],
    );
    let mut tunnel = Tunnel::start(server.port, &ca.pem, &[]);
    let line = assert_refused(&mut tunnel, "TLS handshake");
    assert!(
        line.contains("HandshakeFailure"),
        "should say no suite was agreed: {line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeating_failure_is_logged_once_not_in_a_loop() {
    let ca = TestCa::new("Test CA");
    let server =
        TlsServer::start(&ca.issue("*.efs.eu-west-1.amazonaws.com"), Behaviour::Echo).await;
    let mut tunnel = Tunnel::start(server.addr.port(), &ca.pem, &[]);
    for _ in 0..5 {
        assert_refused(&mut tunnel, "not valid for name");
    }
    let log = tunnel.log_text();
    assert_eq!(count_lines(&log, "cannot reach"), 1, "log:\n{log}");
    let st = tunnel.status();
    assert_eq!(st.handshakes_failed, 5);
    assert!(st
        .last_error
        .unwrap()
        .message
        .contains("not valid for name"));
}

#[test]
fn an_unreachable_target_is_a_clear_refusal() {
    let ca = TestCa::new("Test CA");
    let closed_port = free_port();
    let mut tunnel = Tunnel::start(closed_port, &ca.pem, &[]);
    assert_refused(&mut tunnel, "Connection refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hostname_opt_out_skips_only_the_name_check_and_warns() {
    let ca = TestCa::new("Test CA");
    let other_name =
        TlsServer::start(&ca.issue("*.efs.eu-west-1.amazonaws.com"), Behaviour::Echo).await;
    let tunnel = Tunnel::start(
        other_name.addr.port(),
        &ca.pem,
        &["--insecure-no-hostname-check"],
    );
    assert!(
        tunnel.log_text().contains("hostname checking is DISABLED"),
        "{}",
        tunnel.log_text()
    );
    let mut s = StdTcpStream::connect(tunnel.addr()).unwrap();
    s.write_all(b"ok").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(read_all(&mut s, Duration::from_secs(10)).unwrap(), b"ok");
    assert!(!tunnel.status().hostname_check);

    // The chain is still verified.
    let stranger = TestCa::new("Stranger CA");
    let untrusted = TlsServer::start(&stranger.issue(WILDCARD), Behaviour::Echo).await;
    let mut tunnel = Tunnel::start(
        untrusted.addr.port(),
        &ca.pem,
        &["--insecure-no-hostname-check"],
    );
    assert_refused(&mut tunnel, "UnknownIssuer");
}
