//! Partition multiplexing (`--partition-multiplexing`), end to end: the real `efs-tunnel`
//! between a stand-in for the kernel's NFS client and [`FakePartitionedEfs`], a fake EFS
//! behind real TLS (the test CA) that speaks ONC RPC program 400123 or answers it
//! `PROG_UNAVAIL` as knfsd does, caps each connection's rate, and answers every other
//! record with a reply that carries a checksum of its call.
//!
//! The fake's side of program 400123 is `efs_testkit::partition`, written from the
//! protocol description, not with the tunnel's own encoder, so that the two check each
//! other.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use efs_testkit::partition::{self, record, words, ScaleUpFigures, LAST_FRAGMENT as LAST};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Each fake connection's rate cap.
const RATE: f64 = 3.0 * 1024.0 * 1024.0;
const PARTITION: [u8; 64] = [0x5a; 64];
/// 5 connections; 1 byte/ms for 100 ms over a 100 ms window: scale-up comes quickly.
const QUICK_SCALE_UP: ScaleUpFigures = ScaleUpFigures {
    max_multiplexed_connections: 5,
    scale_up_bytes_per_ms_threshold: 1,
    scale_up_threshold_breached_duration_ms: 100,
    scale_up_lookback_window_size_ms: 100,
};

/// How the fake answers `bind_client_to_partition`.
#[derive(Clone, Copy, Debug)]
enum Speaks {
    /// READY on [`PARTITION`], with a low threshold so that scale-up comes quickly.
    Ready,
    /// `PROG_UNAVAIL`, as knfsd behind a TLS terminator.
    ProgUnavail,
}

/// A fake EFS mount target (see the module documentation).
struct FakePartitionedEfs {
    addr: std::net::SocketAddr,
    /// TLS connections accepted.
    connections: Arc<AtomicU64>,
    /// 400123 calls received.
    bind_calls: Arc<AtomicU64>,
    /// Bytes of other records received (fragment headers included).
    data_bytes: Arc<AtomicU64>,
}

/// A fake whose connections after the first close without a word once they have
/// answered this many calls.
#[derive(Clone, Copy)]
struct KillSecondariesAfter(Option<u64>);

impl FakePartitionedEfs {
    async fn start(cert: &ServerCert, speaks: Speaks) -> FakePartitionedEfs {
        FakePartitionedEfs::start_with(cert, speaks, KillSecondariesAfter(None)).await
    }

    async fn start_with(
        cert: &ServerCert,
        speaks: Speaks,
        kill: KillSecondariesAfter,
    ) -> FakePartitionedEfs {
        let (certs, key) = cert.chain_and_key();
        let config = cert
            .server_builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let fake = FakePartitionedEfs {
            addr: listener.local_addr().unwrap(),
            connections: Arc::default(),
            bind_calls: Arc::default(),
            data_bytes: Arc::default(),
        };
        let (conns, binds, data) = (
            fake.connections.clone(),
            fake.bind_calls.clone(),
            fake.data_bytes.clone(),
        );
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, conns, binds, data) =
                    (acceptor.clone(), conns.clone(), binds.clone(), data.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let nth = conns.fetch_add(1, Ordering::Relaxed);
                    let limit = kill.0.filter(|_| nth > 0);
                    let _ = serve_fake(tls, speaks, &binds, &data, limit).await;
                });
            }
        });
        fake
    }
}

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Reads one record's body (fragments joined), at most `RATE` bytes per second.
async fn read_capped<R: AsyncRead + Unpin>(
    r: &mut R,
    started: Instant,
    total: &mut u64,
) -> std::io::Result<Option<Vec<u8>>> {
    let mut body = Vec::new();
    loop {
        let mut header = [0u8; 4];
        match r.read_exact(&mut header).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && body.is_empty() => {
                return Ok(None)
            }
            Err(e) => return Err(e),
        }
        let h = u32::from_be_bytes(header);
        let mut left = (h & !LAST) as usize;
        while left > 0 {
            let mut chunk = vec![0u8; left.min(16 * 1024)];
            r.read_exact(&mut chunk).await?;
            left -= chunk.len();
            *total += chunk.len() as u64 + 4;
            body.extend_from_slice(&chunk);
            let due = Duration::from_secs_f64(*total as f64 / RATE);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        if h & LAST != 0 {
            return Ok(Some(body));
        }
    }
}

async fn serve_fake(
    tls: tokio_rustls::server::TlsStream<TcpStream>,
    speaks: Speaks,
    binds: &AtomicU64,
    data: &AtomicU64,
    answer_only: Option<u64>,
) -> std::io::Result<()> {
    let (mut r, mut w) = tokio::io::split(tls);
    let mut answered = 0u64;
    let started = Instant::now();
    let mut total = 0u64;
    while let Some(body) = read_capped(&mut r, started, &mut total).await? {
        let word = |i: usize| {
            body.get(i * 4..i * 4 + 4)
                .map_or(0, |b| u32::from_be_bytes(b.try_into().unwrap()))
        };
        let xid = word(0);
        let reply = if let Some((xid, _, _)) = partition::program_call(&body) {
            binds.fetch_add(1, Ordering::Relaxed);
            match (speaks, partition::parse_bind_call(&body)) {
                (Speaks::Ready, Some(call)) => {
                    partition::ready_reply(call.xid, &PARTITION, QUICK_SCALE_UP)
                }
                // Not the documented bind call (the tunnel's encoder and the protocol
                // description disagree), or a server without the program.
                _ => partition::prog_unavail_reply(xid),
            }
        } else {
            if answer_only.is_some_and(|n| answered >= n) {
                // Gone, with this call unanswered.
                return Ok(());
            }
            answered += 1;
            data.fetch_add(body.len() as u64 + 4, Ordering::Relaxed);
            let mut b = words(&[xid, 1, body.len() as u32]);
            b.extend_from_slice(&fnv(&body).to_be_bytes());
            b
        };
        w.write_all(&record(&reply)).await?;
        w.flush().await?;
    }
    w.shutdown().await
}

/// What the kernel stand-in measured.
#[derive(Debug)]
struct Run {
    /// Call bytes answered, correctly, per second.
    rate: f64,
    sent_bytes: u64,
}

/// Sends calls of `size` bytes with up to `window` outstanding for `duration` (after
/// `warm_up` returns true, checked every 50 ms), checks that every reply matches its
/// call, and returns the answered rate over `duration`.
async fn kernel_client(
    tunnel: std::net::SocketAddr,
    size: usize,
    window: usize,
    mut warm_up: impl FnMut() -> bool,
    duration: Duration,
) -> Run {
    let stream = TcpStream::connect(tunnel).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (mut r, mut w) = stream.into_split();
    let expected: Arc<Mutex<HashMap<u32, (u32, u64)>>> = Arc::default();
    let answered = Arc::new(AtomicU64::new(0));
    let slots = Arc::new(tokio::sync::Semaphore::new(window));
    let reader = {
        let (expected, answered, slots) = (expected.clone(), answered.clone(), slots.clone());
        tokio::spawn(async move {
            loop {
                let mut header = [0u8; 4];
                if r.read_exact(&mut header).await.is_err() {
                    return;
                }
                let h = u32::from_be_bytes(header);
                assert!(h & LAST != 0, "a reply in more than one fragment");
                let mut body = vec![0u8; (h & !LAST) as usize];
                r.read_exact(&mut body).await.unwrap();
                assert_eq!(body.len(), 20, "a reply of the wrong size");
                let word =
                    |i: usize| u32::from_be_bytes(body[i * 4..i * 4 + 4].try_into().unwrap());
                let (xid, kind, len) = (word(0), word(1), word(2));
                assert_eq!(kind, 1, "not a reply");
                let hash = u64::from_be_bytes(body[12..20].try_into().unwrap());
                let want = expected.lock().unwrap().remove(&xid);
                assert_eq!(
                    want,
                    Some((len, hash)),
                    "reply {xid} does not match its call"
                );
                answered.fetch_add(u64::from(len) + 4, Ordering::Relaxed);
                slots.add_permits(1);
            }
        })
    };
    let mut xid = 1u32;
    let mut sent_bytes = 0u64;
    let mut measuring: Option<(Instant, u64)> = None;
    let mut last_check = Instant::now();
    let started = Instant::now();
    loop {
        if measuring.is_none() && last_check.elapsed() >= Duration::from_millis(50) {
            last_check = Instant::now();
            if warm_up() {
                measuring = Some((Instant::now(), answered.load(Ordering::Relaxed)));
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "never warmed up"
            );
        }
        if let Some((at, _)) = measuring {
            if at.elapsed() >= duration {
                break;
            }
        }
        tokio::time::timeout(Duration::from_secs(10), slots.acquire())
            .await
            .expect("no reply for 10 s")
            .unwrap()
            .forget();
        let mut body = pseudo_random(size, u64::from(xid));
        body[..8].copy_from_slice(&words(&[xid, 0]));
        body[8..16].copy_from_slice(&words(&[2, 100003]));
        expected
            .lock()
            .unwrap()
            .insert(xid, (body.len() as u32, fnv(&body)));
        let rec = record(&body);
        sent_bytes += rec.len() as u64;
        w.write_all(&rec)
            .await
            .expect("the tunnel closed the connection");
        xid += 1;
    }
    let (at, before) = measuring.unwrap();
    let rate = (answered.load(Ordering::Relaxed) - before) as f64 / at.elapsed().as_secs_f64();
    // Every call is answered, none twice, none lost.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !expected.lock().unwrap().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let left = expected.lock().unwrap().len();
    assert_eq!(left, 0, "{left} calls were never answered");
    assert_eq!(answered.load(Ordering::Relaxed), sent_bytes);
    w.shutdown().await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
    Run { rate, sent_bytes }
}

fn mib(rate: f64) -> String {
    format!("{:.1} MiB/s", rate / 1024.0 / 1024.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_nfs_connection_is_spread_over_five_bound_connections_for_over_4x_the_rate() {
    let ca = TestCa::new("mux test CA");
    let efs = FakePartitionedEfs::start(&ca.issue(CHECK_HOST), Speaks::Ready).await;
    let port = efs.addr.port();

    // Baseline, and `off`: one connection, no bind call, even to a server that binds.
    let off = Tunnel::start(port, &ca.pem, &["--partition-multiplexing", "off"]);
    let single = tokio::spawn(kernel_client(
        off.addr(),
        64 * 1024,
        48,
        || true,
        Duration::from_millis(1500),
    ))
    .await
    .unwrap_or_else(|e| panic!("{e}; tunnel log:\n{}", off.log_text()));
    assert_eq!(
        efs.bind_calls.load(Ordering::Relaxed),
        0,
        "off made a bind call"
    );
    assert_eq!(efs.connections.load(Ordering::Relaxed), 1);
    let status = off.status().multiplexing.unwrap();
    assert!(
        !status.enabled && status.bound_connections == 0,
        "{status:?}"
    );
    drop(off);

    // With `--kernel-tls on` the bind replies are read record by record, for kernel TLS
    // to take the bound connections after them; where the kernel has no `tls` module
    // (this host, usually) they go on in rustls, as fast. (Bound connections on kernel
    // TLS: tests/e2e/cases/kernel_tls_mux.sh.)
    let auto = Tunnel::start(
        port,
        &ca.pem,
        &["--partition-multiplexing", "auto", "--kernel-tls", "on"],
    );
    let control = auto.control.clone();
    let bound = move || {
        efs_tunnel::control::query_status(&control, Duration::from_secs(2))
            .ok()
            .and_then(|s| s.multiplexing)
            .is_some_and(|m| m.bound_connections == 5)
    };
    let multi = tokio::spawn(kernel_client(
        auto.addr(),
        64 * 1024,
        48,
        bound,
        Duration::from_millis(1500),
    ))
    .await
    .unwrap_or_else(|e| panic!("{e}; tunnel log:\n{}", auto.log_text()));
    let status = auto.status().multiplexing.unwrap();
    assert!(status.enabled, "{status:?}");
    assert_eq!(status.server_supports, Some(true));
    assert_eq!(
        status.partition_id.as_deref(),
        Some("5a".repeat(64).as_str())
    );
    // One baseline connection, then five bound ones, each with one bind call.
    assert_eq!(efs.connections.load(Ordering::Relaxed), 6);
    assert_eq!(efs.bind_calls.load(Ordering::Relaxed), 5);
    let ratio = multi.rate / single.rate;
    eprintln!(
        "one connection {}, five {}: {ratio:.2}x ({} sent)",
        mib(single.rate),
        mib(multi.rate),
        multi.sent_bytes
    );
    assert!(
        single.rate > RATE * 0.6 && single.rate < RATE * 1.2,
        "{}",
        mib(single.rate)
    );
    assert!(
        ratio >= 4.0,
        "only {ratio:.2}x: {} against {}",
        mib(multi.rate),
        mib(single.rate)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_the_program_keeps_one_plain_connection_and_is_not_asked_again() {
    let ca = TestCa::new("mux test CA");
    let efs = FakePartitionedEfs::start(&ca.issue(CHECK_HOST), Speaks::ProgUnavail).await;
    let tunnel = Tunnel::start(
        efs.addr.port(),
        &ca.pem,
        &["--partition-multiplexing", "auto"],
    );
    let run = || {
        kernel_client(
            tunnel.addr(),
            32 * 1024,
            16,
            || true,
            Duration::from_millis(400),
        )
    };
    let first = run().await;
    assert_eq!(efs.connections.load(Ordering::Relaxed), 1);
    assert_eq!(efs.bind_calls.load(Ordering::Relaxed), 1);
    // Every byte the client sent reached the server as it was (the replies carry each
    // call's checksum), and nothing else did.
    assert_eq!(efs.data_bytes.load(Ordering::Relaxed), first.sent_bytes);
    let second = run().await;
    assert_eq!(efs.connections.load(Ordering::Relaxed), 2);
    assert_eq!(efs.bind_calls.load(Ordering::Relaxed), 1, "asked again");
    assert_eq!(
        efs.data_bytes.load(Ordering::Relaxed),
        first.sent_bytes + second.sent_bytes
    );
    let status = tunnel.status().multiplexing.unwrap();
    assert!(status.enabled, "{status:?}");
    assert_eq!(status.server_supports, Some(false));
    assert_eq!((status.partition_id, status.bound_connections), (None, 0));
    assert!(
        tunnel
            .log_text()
            .contains("does not multiplex (the server answered PROG_UNAVAIL)"),
        "{}",
        tunnel.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secondary_connection_that_dies_closes_the_nfs_connection_so_nothing_is_lost_silently() {
    let ca = TestCa::new("mux test CA");
    let efs = FakePartitionedEfs::start_with(
        &ca.issue(CHECK_HOST),
        Speaks::Ready,
        KillSecondariesAfter(Some(20)),
    )
    .await;
    let tunnel = Tunnel::start(
        efs.addr.port(),
        &ca.pem,
        &["--partition-multiplexing", "auto"],
    );
    let stream = TcpStream::connect(tunnel.addr()).await.unwrap();
    let (mut r, mut w) = stream.into_split();
    let writer = tokio::spawn(async move {
        for xid in 1u32.. {
            let mut body = vec![0u8; 16 * 1024];
            body[..16].copy_from_slice(&words(&[xid, 0, 2, 100003]));
            if w.write_all(&record(&body)).await.is_err() {
                return xid;
            }
        }
        0
    });
    // The kernel's side sees its connection end (EOF or reset), not a hang.
    let started = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(15), async {
        let mut sink = vec![0u8; 64 * 1024];
        while matches!(r.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
    assert!(
        closed.is_ok(),
        "the NFS connection stayed open; log:\n{}",
        tunnel.log_text()
    );
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
    assert!(
        efs.connections.load(Ordering::Relaxed) >= 2,
        "never scaled up"
    );
    let log = tunnel.log_text();
    assert!(
        log.contains("multiplexed connection")
            && log.contains("closed the NFS client's connection"),
        "{log}"
    );
    eprintln!("closed {:?} after the start", started.elapsed());
    // Every bound connection of that NFS connection is closed with it.
    let gone = wait_until(Duration::from_secs(5), || {
        tunnel
            .status()
            .multiplexing
            .is_some_and(|m| m.bound_connections == 0)
    });
    assert!(gone, "{:?}", tunnel.status().multiplexing);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_that_is_not_a_reply_costs_one_plain_reconnect_and_no_byte() {
    // An echo server sends the bind call back: a call, not a reply, so the stream is out
    // of step and the tunnel makes one plain connection instead.
    let ca = TestCa::new("mux test CA");
    let server = TlsServer::start(&ca.issue(CHECK_HOST), Behaviour::Echo).await;
    let tunnel = Tunnel::start(
        server.addr.port(),
        &ca.pem,
        &["--partition-multiplexing", "auto"],
    );
    let addr = tunnel.addr();
    let round_trip = |msg: &'static [u8]| async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(msg).await.unwrap();
        s.shutdown().await.unwrap();
        let mut back = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut back))
            .await
            .expect("an answer")
            .unwrap();
        back
    };
    assert_eq!(round_trip(b"not even RPC").await, b"not even RPC");
    assert_eq!(
        server.handshakes.load(Ordering::Relaxed),
        2,
        "one reconnect"
    );
    // The bind call (76 bytes) and the data, nothing else.
    assert_eq!(server.received.load(Ordering::Relaxed), 76 + 12);
    assert_eq!(round_trip(b"again").await, b"again");
    assert_eq!(
        server.handshakes.load(Ordering::Relaxed),
        3,
        "no bind call again"
    );
    assert_eq!(server.received.load(Ordering::Relaxed), 76 + 12 + 5);
    let mux = tunnel.status().multiplexing.unwrap();
    assert_eq!(mux.server_supports, Some(false));
}
