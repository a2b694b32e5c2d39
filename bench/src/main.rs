//! `efs-bench`: the backend and the load generator behind `bench/run.sh`.
//!
//! * `efs-bench backend --listen ADDR` plays the NFS server: it reads RPC-shaped requests
//!   (an 8-byte header: request body length, reply length, both big-endian u32) and
//!   answers each with a reply of the asked length.
//! * `efs-bench compare ...` drives two tunnels in front of the same backend, interleaved
//!   in one run, and prints a table of figures and ours/theirs ratios: bulk throughput and
//!   tunnel CPU-seconds per GiB each way, small round-trip latency, connection setup time,
//!   and resident memory idle and with 1000 connections.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve RPC-shaped requests.
    Backend {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// One bulk run through one address (for profiling a tunnel by hand).
    Bulk {
        #[arg(long)]
        connect: SocketAddr,
        /// Pid of the tunnel whose CPU to report.
        #[arg(long)]
        pid: i32,
        #[arg(long, default_value_t = 1024)]
        mib: u64,
        /// Receive (server to client) instead of send.
        #[arg(long)]
        down: bool,
    },
    /// Small round trips one at a time through one address (for profiling a tunnel's
    /// per-RPC cost by hand).
    Rpcs {
        #[arg(long)]
        connect: SocketAddr,
        /// Pid of the tunnel whose CPU to report.
        #[arg(long)]
        pid: i32,
        #[arg(long, default_value_t = 20_000)]
        count: usize,
    },
    /// Measure two tunnels, interleaved.
    Compare {
        /// Our tunnel: listen address and pid.
        #[arg(long)]
        ours: SocketAddr,
        #[arg(long)]
        ours_pid: i32,
        /// The incumbent's tunnel (stunnel): listen address and pid.
        #[arg(long)]
        theirs: SocketAddr,
        #[arg(long)]
        theirs_pid: i32,
        /// What the second tunnel is, for the table (another build of ours for an A/B).
        #[arg(long, default_value = "stunnel")]
        theirs_name: String,
        /// MiB moved per bulk run and direction.
        #[arg(long, default_value_t = 1024)]
        bulk_mib: u64,
        /// Interleaved rounds; the median is reported.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Connections held open for the memory figure.
        #[arg(long, default_value_t = 1000)]
        hold: usize,
    },
}

const MIB: u64 = 1 << 20;

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Backend { listen } => backend(listen).await,
        Cmd::Bulk {
            connect,
            pid,
            mib,
            down,
        } => {
            let t = Tunnel {
                name: "one",
                addr: connect,
                pid,
            };
            let (mibs, cpu) = bulk(t, mib, !down).await;
            println!("{mibs:.1} MiB/s, {cpu:.3} CPU-s/GiB");
        }
        Cmd::Rpcs {
            connect,
            pid,
            count,
        } => {
            let t = Tunnel {
                name: "one",
                addr: connect,
                pid,
            };
            let (mut l, cpu) = small_rpcs(t, count).await;
            println!(
                "p50 {:.1} us, {cpu:.1} CPU-ms per 1000 RPCs",
                percentile(&mut l, 0.5)
            );
        }
        Cmd::Compare {
            ours,
            ours_pid,
            theirs,
            theirs_pid,
            theirs_name,
            bulk_mib,
            rounds,
            hold,
        } => {
            let tunnels = [
                Tunnel {
                    name: "ours",
                    addr: ours,
                    pid: ours_pid,
                },
                Tunnel {
                    name: Box::leak(theirs_name.into_boxed_str()),
                    addr: theirs,
                    pid: theirs_pid,
                },
            ];
            compare(&tunnels, bulk_mib, rounds, hold).await;
        }
    }
}

/// The last-fragment bit of an ONC RPC record header (RFC 5531 section 11).
const LAST_FRAGMENT: u32 = 0x8000_0000;
/// EFS's partition program (see `tunnel/src/partition.rs`), which the backend answers as
/// EFS would, so that a tunnel with `--partition-multiplexing auto` binds its connection.
const PARTITION_PROGRAM: u32 = 400123;

/// Serves RPC-shaped requests: each is one ONC RPC record, `[xid, 0 (call), body length,
/// reply length, body]`, answered by one record of exactly `reply length` bytes in all,
/// `[xid, 1 (reply), filler]`. A bind call to the partition program is answered READY on
/// one partition, with a scale-up threshold no run reaches: a multiplexing tunnel moves
/// every byte through its record pump on one connection, the figure to hold against the
/// plain byte pump.
async fn backend(listen: SocketAddr) {
    let listener = TcpListener::bind(listen).await.expect("bind backend");
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            continue;
        };
        let _ = s.set_nodelay(true);
        tokio::spawn(async move {
            let mut body = vec![0u8; 2 * MIB as usize + 64];
            let reply = vec![0x5au8; 2 * MIB as usize];
            loop {
                let mut mark = [0u8; 4];
                if s.read_exact(&mut mark).await.is_err() {
                    return;
                }
                let len = (u32::from_be_bytes(mark) & !LAST_FRAGMENT) as usize;
                if len < 16 || len > body.len() || s.read_exact(&mut body[..len]).await.is_err() {
                    return;
                }
                let word = |i: usize| {
                    u32::from_be_bytes([
                        body[i * 4],
                        body[i * 4 + 1],
                        body[i * 4 + 2],
                        body[i * 4 + 3],
                    ])
                };
                let xid = word(0);
                let answer = if word(1) == 0 && word(3) == PARTITION_PROGRAM {
                    // Accepted, SUCCESS, READY; the partition; at most 1 connection and
                    // a threshold of i32::MAX bytes per ms.
                    let mut b: Vec<u8> = [xid, 1, 0, 0, 0, 0, 3]
                        .iter()
                        .flat_map(|w| w.to_be_bytes())
                        .collect();
                    b.extend_from_slice(&[0x42; 64]);
                    for w in [1u32, i32::MAX as u32, 1000, 1000] {
                        b.extend_from_slice(&w.to_be_bytes());
                    }
                    let mut r = (LAST_FRAGMENT | b.len() as u32).to_be_bytes().to_vec();
                    r.extend_from_slice(&b);
                    r
                } else {
                    let rep = word(3) as usize;
                    if rep < 12 || rep > reply.len() {
                        return;
                    }
                    let mut r = Vec::with_capacity(12);
                    r.extend_from_slice(&(LAST_FRAGMENT | (rep - 4) as u32).to_be_bytes());
                    r.extend_from_slice(&xid.to_be_bytes());
                    r.extend_from_slice(&1u32.to_be_bytes());
                    if s.write_all(&r).await.is_err()
                        || s.write_all(&reply[..rep - 12]).await.is_err()
                    {
                        return;
                    }
                    continue;
                };
                if s.write_all(&answer).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// One call of `body` bytes asking for a reply of `reply` bytes (at least 12), as one
/// ONC RPC record (see [`backend`]).
fn request(body: usize, reply: usize) -> Vec<u8> {
    let len = 16 + body;
    let mut r = Vec::with_capacity(4 + len);
    r.extend_from_slice(&(LAST_FRAGMENT | len as u32).to_be_bytes());
    for w in [1u32, 0, body as u32, reply as u32] {
        r.extend_from_slice(&w.to_be_bytes());
    }
    r.resize(4 + len, 0xa5);
    r
}

#[derive(Clone, Copy)]
struct Tunnel {
    name: &'static str,
    addr: SocketAddr,
    pid: i32,
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // After the command name: state is field 3, utime 14 and stime 15 (1-based, man 5 proc).
    let ticks = |i: usize| {
        f.get(i - 3)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    (ticks(14) + ticks(15)) / hz
}

fn rss_kib(pid: i32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0)
}

/// Pipelined RPCs on one connection: `count` requests, at most `inflight` outstanding.
async fn pipelined(addr: SocketAddr, count: usize, body: usize, reply: usize, inflight: usize) {
    let s = TcpStream::connect(addr).await.expect("connect");
    s.set_nodelay(true).unwrap();
    let (mut r, mut w) = s.into_split();
    let sem = Arc::new(Semaphore::new(inflight));
    let req = request(body, reply);
    let sem_w = sem.clone();
    let writer = tokio::spawn(async move {
        for _ in 0..count {
            sem_w.acquire().await.unwrap().forget();
            w.write_all(&req).await.expect("write");
        }
        w
    });
    let mut buf = vec![0u8; reply];
    for _ in 0..count {
        r.read_exact(&mut buf).await.expect("read reply");
        sem.add_permits(1);
    }
    drop(writer.await);
}

/// (MiB/s, tunnel CPU-seconds per GiB) for one bulk run.
async fn bulk(t: Tunnel, mib: u64, up: bool) -> (f64, f64) {
    let count = mib as usize;
    let (body, reply) = if up {
        (MIB as usize, 128)
    } else {
        (192, MIB as usize)
    };
    let cpu0 = cpu_seconds(t.pid);
    let t0 = Instant::now();
    pipelined(t.addr, count, body, reply, 4).await;
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds(t.pid) - cpu0;
    (mib as f64 / secs, cpu / (mib as f64 / 1024.0))
}

/// Round-trip latencies (200 B request, 4 KiB reply) over `conns` connections, microseconds.
async fn latency(t: Tunnel, conns: usize, per_conn: usize) -> Vec<f64> {
    let mut tasks = Vec::new();
    for _ in 0..conns {
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(t.addr).await.expect("connect");
            s.set_nodelay(true).unwrap();
            let req = request(192, 4096);
            let mut buf = vec![0u8; 4096];
            // Warm up: the first RPC includes the TLS handshake.
            s.write_all(&req).await.unwrap();
            s.read_exact(&mut buf).await.unwrap();
            let mut out = Vec::with_capacity(per_conn);
            for _ in 0..per_conn {
                let t0 = Instant::now();
                s.write_all(&req).await.unwrap();
                s.read_exact(&mut buf).await.unwrap();
                out.push(t0.elapsed().as_secs_f64() * 1e6);
            }
            out
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all
}

/// Round trips one at a time over one connection: their latencies, microseconds, and the
/// tunnel's CPU-milliseconds per 1000 of them (what an NFS workload of small files costs).
async fn small_rpcs(t: Tunnel, count: usize) -> (Vec<f64>, f64) {
    let cpu0 = cpu_seconds(t.pid);
    let l = latency(t, 1, count).await;
    let cpu = cpu_seconds(t.pid) - cpu0;
    (l, cpu * 1e6 / count as f64)
}

/// Connect, first RPC, close: milliseconds each.
async fn setup(t: Tunnel, count: usize) -> Vec<f64> {
    let req = request(192, 4096);
    let mut buf = vec![0u8; 4096];
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let t0 = Instant::now();
        let mut s = TcpStream::connect(t.addr).await.expect("connect");
        s.set_nodelay(true).unwrap();
        s.write_all(&req).await.unwrap();
        s.read_exact(&mut buf).await.unwrap();
        out.push(t0.elapsed().as_secs_f64() * 1e3);
        drop(s);
    }
    out
}

/// RSS of the tunnel with `n` connections open, each having done one small RPC.
async fn held(t: Tunnel, n: usize) -> f64 {
    let mut conns = Vec::with_capacity(n);
    let req = request(192, 4096);
    let mut buf = vec![0u8; 4096];
    for _ in 0..n {
        let mut s = TcpStream::connect(t.addr)
            .await
            .expect("connect (raise ulimit -n?)");
        s.write_all(&req).await.unwrap();
        s.read_exact(&mut buf).await.unwrap();
        conns.push(s);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss = rss_kib(t.pid);
    drop(conns);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    rss
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn median(mut v: Vec<f64>) -> f64 {
    percentile(&mut v, 0.5)
}

/// Metric name -> tunnel name -> samples.
type Samples = BTreeMap<&'static str, BTreeMap<&'static str, Vec<f64>>>;

async fn compare(tunnels: &[Tunnel; 2], bulk_mib: u64, rounds: usize, hold: usize) {
    let mut s: Samples = BTreeMap::new();
    let mut add = |m: &'static str, t: &'static str, v: f64| {
        s.entry(m).or_default().entry(t).or_default().push(v)
    };

    for t in tunnels {
        add("rss_idle_mib", t.name, rss_kib(t.pid) / 1024.0);
    }
    for round in 0..rounds {
        // Alternate who goes first, so that neither always meets a warmer machine.
        let order: Vec<Tunnel> = if round % 2 == 0 {
            tunnels.to_vec()
        } else {
            tunnels.iter().rev().copied().collect()
        };
        for t in &order {
            let (mibs, cpu) = bulk(*t, bulk_mib, true).await;
            add("bulk_up_mibs", t.name, mibs);
            add("cpu_up_s_per_gib", t.name, cpu);
            let (mibs, cpu) = bulk(*t, bulk_mib, false).await;
            add("bulk_down_mibs", t.name, mibs);
            add("cpu_down_s_per_gib", t.name, cpu);
            let (mut l1, rpc_cpu) = small_rpcs(*t, 10_000).await;
            add("cpu_per_1000_rpcs_ms", t.name, rpc_cpu);
            add("rtt1_p50_us", t.name, percentile(&mut l1, 0.5));
            add("rtt1_p99_us", t.name, percentile(&mut l1, 0.99));
            let mut l16 = latency(*t, 16, 500).await;
            add("rtt16_p50_us", t.name, percentile(&mut l16, 0.5));
            add("rtt16_p99_us", t.name, percentile(&mut l16, 0.99));
            let mut st = setup(*t, 100).await;
            add("setup_p50_ms", t.name, percentile(&mut st, 0.5));
        }
        eprintln!("round {}/{rounds} done", round + 1);
    }
    for t in tunnels {
        let idle = rss_kib(t.pid);
        let with = held(*t, hold).await;
        add("rss_per_conn_kib", t.name, (with - idle) / hold as f64);
    }

    let rows: [(&str, &str, &str); 12] = [
        ("cpu_up_s_per_gib", "tunnel CPU s/GiB, sending", "<= 0.40x"),
        (
            "cpu_down_s_per_gib",
            "tunnel CPU s/GiB, receiving",
            "<= 0.45x",
        ),
        ("bulk_up_mibs", "bulk MiB/s, sending", ">= 1.3x"),
        ("bulk_down_mibs", "bulk MiB/s, receiving", ">= 1.3x"),
        (
            "cpu_per_1000_rpcs_ms",
            "tunnel CPU ms/1000 RPCs, 1 conn",
            "<= 1.0x",
        ),
        ("rtt1_p50_us", "round trip p50 us, 1 conn", "<= 1.0x"),
        ("rtt1_p99_us", "round trip p99 us, 1 conn", "<= 1.0x"),
        ("rtt16_p50_us", "round trip p50 us, 16 conns", "<= 1.0x"),
        ("rtt16_p99_us", "round trip p99 us, 16 conns", "<= 1.0x"),
        ("setup_p50_ms", "connect+handshake+RPC p50 ms", "<= 0.7x"),
        ("rss_idle_mib", "RSS idle MiB", "ours <= 4"),
        (
            "rss_per_conn_kib",
            "RSS per open conn KiB @hold",
            "ours <= 32",
        ),
    ];
    println!(
        "{:<34} {:>12} {:>12} {:>8}  target",
        "metric (median of rounds)", "ours", tunnels[1].name, "ratio"
    );
    for (key, label, target) in rows {
        let Some(m) = s.get(key) else { continue };
        let ours = m.get("ours").cloned().map(median).unwrap_or(f64::NAN);
        let theirs = m
            .get(tunnels[1].name)
            .cloned()
            .map(median)
            .unwrap_or(f64::NAN);
        println!(
            "{label:<34} {ours:>12.3} {theirs:>12.3} {:>7.2}x  {target}",
            ours / theirs
        );
    }
}
