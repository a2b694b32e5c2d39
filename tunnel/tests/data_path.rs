//! The tunnel moves NFS traffic intact, concurrently, with half-close and clean-up.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream as StdTcpStream;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn carries_256_mib_each_way_bit_for_bit() {
    let ca = TestCa::new("Test CA");
    let server = TlsServer::start(&ca.issue(WILDCARD), Behaviour::Echo).await;
    let tunnel = Tunnel::start(server.addr.port(), &ca.pem, &[]);

    const LEN: usize = 256 << 20;
    let data = Arc::new(pseudo_random(LEN, 42));
    let want = sha256(&data);
    let (mut r, mut w) = TcpStream::connect(tunnel.addr())
        .await
        .unwrap()
        .into_split();
    let to_send = data.clone();
    let writer = tokio::spawn(async move {
        for chunk in to_send.chunks(1 << 20) {
            w.write_all(chunk).await.unwrap();
        }
        w.shutdown().await.unwrap();
    });
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0usize;
    loop {
        let n = r.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
        got += n;
    }
    writer.await.unwrap();
    assert_eq!(got, LEN, "bytes back through the tunnel");
    assert_eq!(
        ctx.finish().as_ref(),
        &want[..],
        "sha256 of the echoed stream"
    );
    assert_eq!(
        server.received.load(std::sync::atomic::Ordering::Relaxed),
        LEN as u64
    );

    let status = tunnel.status();
    assert_eq!(status.bytes_to_server, LEN as u64);
    assert_eq!(status.bytes_from_server, LEN as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serves_200_concurrent_connections_each_correctly() {
    let ca = TestCa::new("Test CA");
    let server = TlsServer::start(&ca.issue(WILDCARD), Behaviour::Echo).await;
    let tunnel = Tunnel::start(server.addr.port(), &ca.pem, &[]);
    let addr = tunnel.addr();

    let mut tasks = Vec::new();
    for i in 0..200u64 {
        tasks.push(tokio::spawn(async move {
            let data = pseudo_random(64 * 1024 + i as usize, i);
            let mut s = TcpStream::connect(addr).await.unwrap();
            let (mut r, mut w) = s.split();
            let send = async {
                w.write_all(&data).await.unwrap();
                w.shutdown().await.unwrap();
            };
            let mut back = Vec::new();
            let recv = r.read_to_end(&mut back);
            let (_, n) = tokio::join!(send, recv);
            n.unwrap();
            back == data
        }));
    }
    let mut ok = 0;
    for t in tasks {
        if t.await.unwrap() {
            ok += 1;
        }
    }
    assert_eq!(ok, 200, "connections whose data came back intact");
    let status = tunnel.status();
    assert_eq!(status.connections_total, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forwards_a_client_half_close_and_keeps_the_reply_path_open() {
    let ca = TestCa::new("Test CA");
    let server = TlsServer::start(&ca.issue(WILDCARD), Behaviour::Echo).await;
    let tunnel = Tunnel::start(server.addr.port(), &ca.pem, &[]);

    let mut s = TcpStream::connect(tunnel.addr()).await.unwrap();
    s.write_all(b"ping").await.unwrap();
    // The echo server only finishes when it sees EOF, so this reply proves the half-close
    // crossed the tunnel, and that the other direction stayed open.
    s.shutdown().await.unwrap();
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, b"ping");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forwards_a_server_half_close_and_keeps_the_request_path_open() {
    let ca = TestCa::new("Test CA");
    let mut server = TlsServer::start(&ca.issue(WILDCARD), Behaviour::GreetThenHalfClose).await;
    let tunnel = Tunnel::start(server.addr.port(), &ca.pem, &[]);

    let mut s = TcpStream::connect(tunnel.addr()).await.unwrap();
    s.write_all(b"x").await.unwrap();
    let mut greeting = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut greeting))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(greeting, b"hello", "the server's data, then EOF");
    s.write_all(&[7u8; 999]).await.unwrap();
    s.shutdown().await.unwrap();
    let received = tokio::time::timeout(Duration::from_secs(10), server.ended.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        received, 1000,
        "bytes the server got after its own half-close"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_vanished_client_does_not_leak_its_upstream_connection() {
    let ca = TestCa::new("Test CA");
    let mut server = TlsServer::start(&ca.issue(WILDCARD), Behaviour::Sink).await;
    let tunnel = Tunnel::start(server.addr.port(), &ca.pem, &[]);

    let mut s = StdTcpStream::connect(tunnel.addr()).unwrap();
    s.write_all(&pseudo_random(1 << 20, 9)).unwrap();
    // Vanish only once the upstream connection exists: a client gone before the tunnel
    // looked up its owner is refused without any upstream (seen in CI as `peer_refused: 1`),
    // which is right, but is not what this test is about.
    let upstream_open = wait_until(Duration::from_secs(10), || {
        server.received.load(std::sync::atomic::Ordering::Relaxed) > 0
    });
    assert!(
        upstream_open,
        "no byte reached the server: {:?}",
        tunnel.status()
    );
    // Vanish: an abortive close (RST), as a killed client's kernel would send.
    socket_linger_zero(&s);
    drop(s);
    let ended = tokio::time::timeout(Duration::from_secs(5), server.ended.recv()).await;
    assert!(
        ended.is_ok(),
        "the upstream TLS connection was not closed: {:?}",
        tunnel.status()
    );
    let closed = wait_until(Duration::from_secs(5), || {
        tunnel.status().connections_open == 0
    });
    assert!(closed, "the tunnel still counts the connection as open");
}

fn socket_linger_zero(s: &StdTcpStream) {
    nix::sys::socket::setsockopt(
        s,
        nix::sys::socket::sockopt::Linger,
        &nix::libc::linger {
            l_onoff: 1,
            l_linger: 0,
        },
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reconnections_resume_the_tls_session() {
    let ca = TestCa::new("Test CA");
    let server = TlsServer::start(&ca.issue(WILDCARD), Behaviour::Echo).await;
    let tunnel = Tunnel::start(server.addr.port(), &ca.pem, &[]);
    for _ in 0..3 {
        let mut s = StdTcpStream::connect(tunnel.addr()).unwrap();
        s.write_all(b"rpc").unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(read_all(&mut s, Duration::from_secs(10)).unwrap(), b"rpc");
    }
    let status = tunnel.status();
    assert_eq!(status.handshakes_full, 1, "{status:?}");
    assert_eq!(status.handshakes_resumed, 2, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_reports_what_an_operator_asks() {
    let ca = TestCa::new("Test CA");
    let server = TlsServer::start(&ca.issue(WILDCARD), Behaviour::Echo).await;
    let tunnel = Tunnel::start(server.addr.port(), &ca.pem, &[]);
    let mut s = StdTcpStream::connect(tunnel.addr()).unwrap();
    s.write_all(&[1u8; 1000]).unwrap();
    let mut back = [0u8; 1000];
    s.read_exact(&mut back).unwrap();

    let st = tunnel.status();
    assert_eq!(st.pid, tunnel.child.id());
    assert_eq!(st.listen_port, tunnel.port);
    assert_eq!(st.upstream_host, "127.0.0.1");
    assert_eq!(st.upstream_port, server.addr.port());
    assert_eq!(st.check_host, CHECK_HOST);
    assert_eq!(st.fs_id.as_deref(), Some(FS_ID));
    assert!(st.hostname_check);
    assert_eq!(st.connections_open, 1);
    assert_eq!(st.connections_total, 1);
    assert_eq!(st.bytes_to_server, 1000);
    assert_eq!(st.bytes_from_server, 1000);
    let tls = st.tls.expect("a handshake happened");
    assert_eq!(tls.version, "TLSv1.3");
    assert_eq!(tls.cipher, "TLS_AES_256_GCM_SHA384");
    assert!(tls.peer_subject.unwrap().contains(WILDCARD));
    let days_left = (tls.peer_not_after_unix.unwrap() - efs_tunnel::stats::unix_now()) / 86_400;
    assert!(
        days_left > 300,
        "rcgen's default validity runs to 4096; got {days_left} days"
    );
    assert!(st.last_error.is_none());

    // The socket is private to its owner.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&tunnel.control)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_tunnel_on_the_same_inherited_socket_loses_no_connection_attempt() {
    let ca = TestCa::new("Test CA");
    let server = TlsServer::start(&ca.issue(WILDCARD), Behaviour::Echo).await;
    let dir = TempDir::new("listen-fd");
    // The test plays the watchdog: it owns the listening socket and hands it down.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut first = spawn_on_fd(&listener, server.addr.port(), &dir, &ca.pem, "first.log");
    let mut s = StdTcpStream::connect(addr).unwrap();
    s.write_all(b"one").unwrap();
    let mut b = [0u8; 3];
    s.read_exact(&mut b).unwrap();

    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    // While no tunnel runs, a new connection is queued by the kernel, not refused.
    let mut during =
        StdTcpStream::connect(addr).expect("connection refused while the tunnel was down");
    during.write_all(b"two").unwrap();
    during.shutdown(std::net::Shutdown::Write).unwrap();

    let _second = spawn_on_fd(&listener, server.addr.port(), &dir, &ca.pem, "second.log");
    assert_eq!(
        read_all(&mut during, Duration::from_secs(10)).unwrap(),
        b"two"
    );
}

/// Resident memory of a process, KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_bulk_traffic_an_idle_tunnel_gives_its_memory_back() {
    // A mount that copied big files and then sits idle keeps its connections open.
    let ca = TestCa::new("Test CA");
    let server = TlsServer::start(&ca.issue(WILDCARD), Behaviour::Echo).await;
    let tunnel = Tunnel::start(server.addr.port(), &ca.pem, &[]);
    let pid = tunnel.child.id();
    // The baseline is taken after one small exchange, so that the code of a handshake
    // and of the data path is already resident and only buffers make the difference.
    let mut warm = TcpStream::connect(tunnel.addr()).await.unwrap();
    warm.write_all(b"warm").await.unwrap();
    warm.read_exact(&mut [0u8; 4]).await.unwrap();
    drop(warm);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = rss_kib(pid);

    let mut conns = Vec::new();
    for i in 0..4u64 {
        let mut s = TcpStream::connect(tunnel.addr()).await.unwrap();
        let data = pseudo_random(8 << 20, i);
        let mut back = vec![0u8; data.len()];
        let (mut r, mut w) = s.split();
        let (sent, got) = tokio::join!(w.write_all(&data), r.read_exact(&mut back));
        sent.unwrap();
        got.unwrap();
        assert!(back == data, "connection {i} echoed intact");
        conns.push(s);
    }
    let after_bulk = rss_kib(pid);
    assert!(
        after_bulk > before + 2048,
        "bulk traffic should have grown the buffers: {before} -> {after_bulk} KiB"
    );

    // Idle for one to two release periods: most of that memory goes back.
    let limit = efs_tunnel::copy::IDLE_RELEASE * 2 + Duration::from_secs(3);
    let mut now = after_bulk;
    let released = wait_until(limit, || {
        now = rss_kib(pid);
        now < before + (after_bulk - before) / 3
    });
    assert!(
        released,
        "RSS {before} KiB at start, {after_bulk} after bulk, still {now} after {limit:?} idle"
    );

    // The connections themselves are untouched.
    for s in &mut conns {
        s.write_all(b"still here").await.unwrap();
        let mut back = [0u8; 10];
        s.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"still here");
    }
}

/// `--kernel-tls on`: where the kernel has the `tls` module the connection's records
/// move into it; where it has not (this test's host, usually), the tunnel says so once
/// and the same connection goes on in user space. (`on`, not `auto`, so that the
/// outcome depends on the module only, not also on the host's /proc/crypto.) Either way every byte arrives. (Real
/// kernel TLS, with a KeyUpdate and a restart, is tested in the e2e guest, whose kernel
/// has the module: tests/e2e/cases/kernel_tls.sh.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kernel_tls_carries_every_byte_and_says_where_the_records_went() {
    let ca = TestCa::new("Test CA");
    let server = TlsServer::start(&ca.issue(WILDCARD), Behaviour::Echo).await;
    let tunnel = Tunnel::start(server.addr.port(), &ca.pem, &["--kernel-tls", "on"]);
    const LEN: usize = 8 << 20;
    for round in 0..2u64 {
        let data = pseudo_random(LEN, round);
        let mut s = TcpStream::connect(tunnel.addr()).await.unwrap();
        let (mut r, mut w) = s.split();
        let send = async {
            w.write_all(&data).await.unwrap();
            w.shutdown().await.unwrap();
        };
        let mut back = Vec::new();
        let (_, n) = tokio::join!(send, r.read_to_end(&mut back));
        n.unwrap();
        assert!(back == data, "round {round}: the echo differs");
    }
    let status = tunnel.status();
    let k = status
        .kernel_tls
        .expect("a kernel_tls section in the status");
    assert!(k.enabled);
    let has_module = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_ulp")
        .is_ok_and(|ulps| ulps.split_whitespace().any(|u| u == "tls"));
    if has_module {
        assert_eq!(k.available, Some(true), "{k:?}");
        assert_eq!(k.connections_total, 2, "{k:?}");
    } else {
        assert_eq!(k.available, Some(false), "{k:?}");
        assert_eq!(k.connections_total, 0, "{k:?}");
        let reason = k.unavailable_reason.unwrap_or_default();
        assert!(reason.contains("tls ULP"), "{reason}");
        let log = tunnel.log_text();
        assert_eq!(
            log.matches("kernel TLS is not available").count(),
            1,
            "said once, not per connection:\n{log}"
        );
    }
    assert_eq!(status.bytes_to_server, 2 * LEN as u64);
}
