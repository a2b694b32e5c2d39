//! Issue #14: only root (the kernel's NFS client) may use a tunnel; a mount target that
//! silently stops answering is dropped so that the NFS client reconnects; and a running
//! tunnel holds no privilege. These tests run as root, as the tunnel does.

mod common;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The unprivileged user the tests connect as (nobody).
const NOBODY: u32 = 65534;

fn assert_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests run as root (they start processes as another user)"
    );
}

/// An echo mount target behind a [`Relay`] (which counts the connections that reach it),
/// and a tunnel to it with `extra` arguments.
async fn echo_behind_relay(extra: &[&str]) -> (TlsServer, Relay, Tunnel) {
    let ca = TestCa::new("Test CA");
    let server = TlsServer::start(&ca.issue(WILDCARD), Behaviour::Echo).await;
    let relay = Relay::start(server.addr).await;
    let tunnel = Tunnel::start(relay.port, &ca.pem, extra);
    (server, relay, tunnel)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_from_another_user_is_closed_before_anything_reaches_the_mount_target() {
    assert_root();
    let (server, relay, tunnel) = echo_behind_relay(&[]).await;
    let addr = tunnel.addr();

    for _ in 0..3 {
        let got = tokio::task::spawn_blocking(move || {
            client_as(NOBODY, addr, "NFS call with AUTH_SYS uid 0")
        })
        .await
        .unwrap();
        assert_eq!(got.received, 0, "the other user's request was answered");
        assert!(
            got.took < Duration::from_secs(5),
            "closed after {:?}",
            got.took
        );
    }
    assert_eq!(
        relay.accepted.load(Ordering::Relaxed),
        0,
        "a connection was opened to the mount target for another user"
    );
    assert_eq!(server.handshakes.load(Ordering::Relaxed), 0);
    assert_eq!(tunnel.status().peer_refused, 3, "counted in the status");
    let log = tunnel.log_text();
    assert_eq!(
        count_lines(&log, "refused a local connection"),
        1,
        "once per uid:\n{log}"
    );
    let line = first_line_with(&log, "refused a local connection").unwrap_or_default();
    for says in ["uid 65534", FS_ID, "--allow-any-peer"] {
        assert!(
            line.contains(says),
            "the refusal should say {says:?}: {line}"
        );
    }

    // Root's connection (as the kernel's client would be) is served as before.
    assert_forwards(&tunnel).await;
    assert_eq!(relay.accepted.load(Ordering::Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_another_user_sent_and_closed_before_the_accept_is_not_forwarded() {
    assert_root();
    let (_server, relay, tunnel) = echo_behind_relay(&[]).await;
    // While the tunnel is stopped the kernel completes the connection, queues the
    // request, and turns the closed socket into an orphan, which the kernel lists as
    // uid 0: it must not pass for root's.
    tunnel.signal(nix::sys::signal::Signal::SIGSTOP);
    let script = format!(
        "{}; printf '%s' \"$1\" >&3; exec 3>&-",
        bash_connect(tunnel.addr())
    );
    let (code, _) = bash_as(NOBODY, &script, "NFS call, then close at once");
    tokio::time::sleep(Duration::from_millis(300)).await;
    tunnel.signal(nix::sys::signal::Signal::SIGCONT);
    assert_eq!(code, Some(0), "the request could not be sent");

    wait_until(Duration::from_secs(5), || {
        tunnel.log_text().contains("refused") || relay.accepted.load(Ordering::Relaxed) > 0
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        relay.accepted.load(Ordering::Relaxed),
        0,
        "the orphaned request was forwarded to the mount target"
    );
    let log = tunnel.log_text();
    assert!(log.contains("already closed by its owner"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_any_peer_serves_other_users_and_says_so_at_start() {
    assert_root();
    let ca = TestCa::new("Test CA");
    let server = TlsServer::start(&ca.issue(WILDCARD), Behaviour::Echo).await;
    let tunnel = Tunnel::start(server.addr.port(), &ca.pem, &["--allow-any-peer"]);
    let addr = tunnel.addr();
    let request = "a request from nobody";
    let got = tokio::task::spawn_blocking(move || client_as(NOBODY, addr, request))
        .await
        .unwrap();
    assert_eq!(got.received, request.len());
    let log = tunnel.log_text();
    assert!(
        log.contains("any local user may send NFS requests"),
        "{log}"
    );
    assert_eq!(count_lines(&log, "refused"), 0, "{log}");
}

/// Sends one RPC call through the echo server and waits for its answer. The echo server
/// sends back what it gets, so the client sends the call followed by a reply record:
/// the call comes back as a call to the client (which the tunnel leaves alone, as it
/// would an NFSv4.1 callback), and the reply as the answer to the call.
async fn rpc_round_trip(s: &mut TcpStream, xid: u32) -> std::io::Result<()> {
    let mut both = rpc_record(xid, 0);
    both.extend(rpc_record(xid, 1));
    s.write_all(&both).await?;
    let mut back = vec![0u8; both.len()];
    s.read_exact(&mut back).await?;
    assert_eq!(back, both);
    Ok(())
}

/// An ONC RPC record (RFC 5531 record marking) of 32 bytes: xid, message type, padding.
fn rpc_record(xid: u32, msg_type: u32) -> Vec<u8> {
    let mut r = (0x8000_0000u32 | 28).to_be_bytes().to_vec();
    r.extend(xid.to_be_bytes());
    r.extend(msg_type.to_be_bytes());
    r.extend([0u8; 20]);
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mount_target_that_goes_silent_with_a_call_outstanding_is_dropped_within_the_limit() {
    let (_server, relay, tunnel) = echo_behind_relay(&["--dead-upstream-sec", "2"]).await;
    let mut s = TcpStream::connect(tunnel.addr()).await.unwrap();
    rpc_round_trip(&mut s, 1).await.unwrap();

    relay.freeze();
    s.write_all(&rpc_record(2, 0)).await.unwrap();
    let asked = Instant::now();
    let mut buf = [0u8; 64];
    let end = tokio::time::timeout(Duration::from_secs(15), s.read(&mut buf))
        .await
        .expect("the client's connection was still open 15 s after the mount target fell silent");
    let waited = asked.elapsed();
    assert!(
        matches!(end, Ok(0) | Err(_)),
        "expected the connection closed, got {end:?}"
    );
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_secs(6),
        "closed after {waited:?}, the limit being 2 s"
    );
    let log = tunnel.log_text();
    assert_eq!(count_lines(&log, "stopped answering"), 1, "{log}");
    let line = first_line_with(&log, "stopped answering").unwrap_or_default();
    assert!(
        line.contains(FS_ID) && line.contains("outstanding"),
        "{line}"
    );

    // The NFS client reconnects through a new upstream connection.
    let mut again = TcpStream::connect(tunnel.addr()).await.unwrap();
    again.write_all(b"x").await.unwrap();
    assert!(wait_until(Duration::from_secs(5), || relay
        .accepted
        .load(Ordering::Relaxed)
        == 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_with_nothing_outstanding_stays_open_past_the_limit() {
    let ca = TestCa::new("Test CA");
    let server = TlsServer::start(&ca.issue(WILDCARD), Behaviour::Echo).await;
    let tunnel = Tunnel::start(server.addr.port(), &ca.pem, &["--dead-upstream-sec", "2"]);
    let mut s = TcpStream::connect(tunnel.addr()).await.unwrap();
    rpc_round_trip(&mut s, 1).await.unwrap();

    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(tunnel.status().connections_open, 1);
    rpc_round_trip(&mut s, 2)
        .await
        .expect("the idle connection was closed");
    assert_eq!(
        server.handshakes.load(Ordering::Relaxed),
        1,
        "one upstream connection"
    );
    let log = tunnel.log_text();
    assert_eq!(count_lines(&log, "stopped answering"), 0, "{log}");
}

/// /proc/PID/status of the process and of each of its threads (capabilities are per
/// thread).
fn status_files(pid: u32) -> Vec<PathBuf> {
    let mut files = vec![PathBuf::from(format!("/proc/{pid}/status"))];
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        files.push(task.unwrap().path().join("status"));
    }
    files
}

async fn assert_forwards(tunnel: &Tunnel) {
    let mut s = TcpStream::connect(tunnel.addr()).await.unwrap();
    s.write_all(b"still works").await.unwrap();
    let mut back = [0u8; 11];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut back))
        .await
        .expect("no answer through the tunnel")
        .unwrap();
    assert_eq!(&back, b"still works");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_started_as_root_holds_no_capability_and_cannot_gain_one() {
    assert_root();
    let ca = TestCa::new("Test CA");
    let server = TlsServer::start(&ca.issue(WILDCARD), Behaviour::Echo).await;
    let tunnel = Tunnel::start(server.addr.port(), &ca.pem, &[]);
    // Serve a connection first, so that the runtime's threads all exist.
    assert_forwards(&tunnel).await;
    let files = status_files(tunnel.child.id());
    assert!(
        files.len() > 2,
        "the tunnel should have runtime threads: {files:?}"
    );
    for file in &files {
        for set in ["CapEff", "CapPrm", "CapInh", "CapAmb", "CapBnd"] {
            assert_eq!(
                proc_status_field(file, set),
                "0000000000000000",
                "{set} of {}",
                file.display()
            );
        }
        assert_eq!(
            proc_status_field(file, "NoNewPrivs"),
            "1",
            "{}",
            file.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_started_without_root_starts_and_holds_nothing_either() {
    assert_root();
    let ca = TestCa::new("Test CA");
    let server = TlsServer::start(&ca.issue(WILDCARD), Behaviour::Echo).await;
    let tunnel = Tunnel::start_as(Some(NOBODY), server.addr.port(), &ca.pem, &[]);
    assert_forwards(&tunnel).await;
    let status = PathBuf::from(format!("/proc/{}/status", tunnel.child.id()));
    assert_eq!(
        proc_status_field(&status, "Uid").split_whitespace().next(),
        Some("65534")
    );
    assert_eq!(proc_status_field(&status, "CapEff"), "0000000000000000");
    assert_eq!(proc_status_field(&status, "NoNewPrivs"), "1");
}
