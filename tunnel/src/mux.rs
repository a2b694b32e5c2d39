//! Partition multiplexing (EFS only): one kernel connection carried over up to
//! `max_multiplexed_connections` TLS connections bound to the same server partition,
//! as amazon-efs-utils' efs-proxy does (EFS documents up to 1,500 MiB/s per client this
//! way, against 500 MiB/s on one connection).
//!
//! Why this shape:
//! * [`first_connection`] makes the one `bind_client_to_partition` call
//!   ([`crate::partition`]) on a kernel connection's first upstream connection, before any
//!   kernel byte is forwarded. Any RPC error (knfsd's `PROG_UNAVAIL`), garbage, a closed
//!   connection or [`BIND_TIMEOUT`] leaves the connection plain, exactly as without
//!   multiplexing (after one plain reconnect if the call left the stream out of step),
//!   and the tunnel remembers that the server does not speak the program, so later
//!   connections make no call.
//! * A bound connection is served by [`serve`], record by record: the kernel's records go
//!   whole to the least loaded ready connection, the servers' records whole to the
//!   kernel, in whatever order they complete (NFS matches replies to calls by XID). The
//!   kernel's replies to server callbacks go back on the connection the callback came
//!   from. While it has one connection, it moves bytes like the plain path (a record
//!   pump instead of a byte pump).
//! * When throughput stays at or above the server's threshold for its window, more
//!   connections are opened, each bound with the same client id and incarnation, and
//!   kept only if READY on the same partition; others are closed, and the search is
//!   retried with backoff (1, 2, 4 s), then given up for [`SCALE_UP_BACKOFF`].
//! * A connection that fails ends the kernel connection: calls in flight on it are not
//!   lost silently, the hard NFS mount reconnects and retransmits them (NFSv4.1's
//!   session reply cache makes that safe). The same holds for a connection that falls
//!   silent with calls outstanding (`--dead-upstream-sec`).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use log::{debug, info};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::partition::{
    self, Bind, BindError, BindReply, ClientId, PartitionId, RecordReader, ScaleUp, CALL,
    MAX_BIND_REPLY, MAX_RECORD, REPLY,
};
use crate::stats::Stats;
use crate::upstream::{TlsStream, UpstreamError};

/// How long the server gets to answer a bind call.
pub const BIND_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a scale-up that fell short waits before it is tried again (efs-proxy's
/// `DEFAULT_SCALE_UP_BACKOFF`).
pub const SCALE_UP_BACKOFF: Duration = Duration::from_secs(300);
/// Rounds of a scale-up search, and the pause after each round that fell short.
const SEARCH_ROUNDS: u32 = 3;
const SEARCH_PAUSE: Duration = Duration::from_secs(1);
/// Records queued towards one upstream connection before the kernel side waits.
const LANE_QUEUE: usize = 4;
/// Records queued towards the kernel.
const KERNEL_QUEUE: usize = 16;
/// Server callbacks remembered for routing the kernel's replies back.
const MAX_CALLBACKS: usize = 1024;

/// `partition_multiplexing`: whether a tunnel tries to bind at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Bind the first connection; multiplex if the server answers READY.
    Auto,
    /// No 400123 call at all: one connection per kernel connection.
    Off,
}

/// What the tunnel knows about multiplexing, across its kernel connections.
#[derive(Debug)]
pub struct MuxState {
    pub mode: Mode,
    id: [u8; 16],
    incarnation: AtomicU64,
    /// [`UNKNOWN`], [`SPEAKS`] or [`DOES_NOT`].
    server: AtomicU8,
    partition: Mutex<Option<PartitionId>>,
    /// Bound upstream connections open now.
    bound: AtomicU64,
}

const UNKNOWN: u8 = 0;
const SPEAKS: u8 = 1;
const DOES_NOT: u8 = 2;

/// What the status shows of multiplexing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MuxSnapshot {
    pub on: bool,
    pub server_speaks: Option<bool>,
    pub partition_id: Option<String>,
    pub bound_connections: u64,
}

impl From<MuxSnapshot> for efs_tunnel_contract::MultiplexStatus {
    fn from(s: MuxSnapshot) -> Self {
        efs_tunnel_contract::MultiplexStatus {
            enabled: s.on,
            server_supports: s.server_speaks,
            partition_id: s.partition_id,
            bound_connections: s.bound_connections,
        }
    }
}

impl MuxState {
    pub fn new(mode: Mode) -> MuxState {
        let mut id = [0u8; 16];
        if rustls::crypto::ring::default_provider()
            .secure_random
            .fill(&mut id)
            .is_err()
        {
            // Uniqueness, not secrecy, is what the server needs of the id.
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            id[..8].copy_from_slice(&(nanos as u64).to_be_bytes());
            id[8..12].copy_from_slice(&std::process::id().to_be_bytes());
        }
        MuxState {
            mode,
            id,
            incarnation: AtomicU64::new(0),
            server: AtomicU8::new(UNKNOWN),
            partition: Mutex::new(None),
            bound: AtomicU64::new(0),
        }
    }

    /// Whether a new kernel connection's first upstream connection will be bound.
    pub fn should_bind(&self) -> bool {
        self.mode == Mode::Auto && self.server.load(Ordering::Relaxed) != DOES_NOT
    }

    /// A fresh incarnation: one per kernel connection.
    fn next_client(&self) -> ClientId {
        ClientId {
            id: self.id,
            incarnation: self.incarnation.fetch_add(1, Ordering::Relaxed) + 1,
        }
    }

    pub fn snapshot(&self) -> MuxSnapshot {
        let partition = self.partition.lock().map(|p| *p).unwrap_or(None);
        MuxSnapshot {
            on: self.mode == Mode::Auto,
            server_speaks: match self.server.load(Ordering::Relaxed) {
                SPEAKS => Some(true),
                DOES_NOT => Some(false),
                _ => None,
            },
            partition_id: partition.map(|p| p.to_string()),
            bound_connections: self.bound.load(Ordering::Relaxed),
        }
    }
}

/// What a multiplexed connection needs from its tunnel.
pub trait Host: Send + Sync + 'static {
    fn stats(&self) -> &Stats;
    fn mux(&self) -> &MuxState;
    /// A new verified TLS connection to the mount target, with the current TLS
    /// configuration.
    fn dial(&self) -> impl Future<Output = Result<TlsStream, UpstreamError>> + Send;
    fn dead_upstream(&self) -> Option<Duration>;
    /// Accounts for a connection the mount target refused after the handshake (TLS 1.3:
    /// the client certificate is judged then, and the refusal is the answer to the
    /// first read).
    fn refused(&self, tls: &TlsStream, why: UpstreamError);
}

/// Why a bind call gave no answer to use.
#[derive(Debug)]
pub enum BindFailure {
    /// An answer that is not a bind reply (see [`BindError`]).
    Rpc(BindError),
    /// The connection failed or closed.
    Io(io::Error),
    /// No answer within [`BIND_TIMEOUT`].
    Timeout,
}

impl fmt::Display for BindFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BindFailure::Rpc(e) => write!(f, "{e}"),
            BindFailure::Io(e) => write!(f, "the connection failed: {e}"),
            BindFailure::Timeout => write!(f, "no answer within {BIND_TIMEOUT:?}"),
        }
    }
}

/// One bind call on `stream`: the reply, and any bytes read past it.
pub async fn bind<S>(stream: &mut S, client: &ClientId) -> Result<(BindReply, Vec<u8>), BindFailure>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let xid = client.incarnation as u32
        ^ u32::from_be_bytes([client.id[0], client.id[1], client.id[2], client.id[3]]);
    let exchange = async {
        stream.write_all(&partition::bind_call(xid, client)).await?;
        stream.flush().await?;
        let mut reader = RecordReader::new(&mut *stream, MAX_BIND_REPLY);
        let record = reader.next().await?;
        let (_, rest) = reader.into_parts();
        Ok::<_, io::Error>((record, rest))
    };
    let (record, rest) = match tokio::time::timeout(BIND_TIMEOUT, exchange).await {
        Err(_) => return Err(BindFailure::Timeout),
        Ok(Err(e)) => return Err(BindFailure::Io(e)),
        Ok(Ok((None, _))) => {
            return Err(BindFailure::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed by the server",
            )))
        }
        Ok(Ok((Some(record), rest))) => (record, rest),
    };
    let reply = partition::parse_bind_reply(&partition::record_body(&record), xid)
        .map_err(BindFailure::Rpc)?;
    Ok((reply, rest))
}

/// What a kernel connection's first upstream connection became. (Returned once per
/// connection and taken apart at once: the size of the stream in it costs nothing.)
#[allow(clippy::large_enum_variant)]
pub enum First {
    /// Serve it as today: one connection, the byte pump.
    Plain(TlsStream),
    /// Bound to a partition: serve it with [`serve`].
    Bound(Box<BoundConnection>),
    /// The connection was lost and could not be made again.
    Lost(UpstreamError),
    /// The mount target refused the client (accounted for by [`Host::refused`]).
    Refused,
}

pub struct BoundConnection {
    client: ClientId,
    tls: TlsStream,
    buffered: Vec<u8>,
    partition: PartitionId,
    scale_up: ScaleUp,
}

/// Binds `tls` if the tunnel multiplexes and the server may speak the program.
pub async fn first_connection<H: Host>(host: &H, mut tls: TlsStream) -> First {
    let state = host.mux();
    if !state.should_bind() {
        return First::Plain(tls);
    }
    let client = state.next_client();
    let in_step = match bind(&mut tls, &client).await {
        Ok((reply, buffered)) => {
            state.server.store(SPEAKS, Ordering::Relaxed);
            match reply.bind {
                Bind::Ready(partition) => {
                    if let Ok(mut p) = state.partition.lock() {
                        *p = Some(partition);
                    }
                    debug!(
                        "bound to partition {partition} (incarnation {})",
                        client.incarnation
                    );
                    return First::Bound(Box::new(BoundConnection {
                        client,
                        tls,
                        buffered,
                        partition,
                        scale_up: reply.scale_up,
                    }));
                }
                other => {
                    info!("the mount target answered the partition bind with {other:?}: one connection");
                    buffered.is_empty()
                }
            }
        }
        Err(BindFailure::Io(e)) if UpstreamError::refused_after_handshake(&e).is_some() => {
            // Not an answer about the program: the client certificate was refused.
            if let Some(why) = UpstreamError::refused_after_handshake(&e) {
                host.refused(&tls, why);
            }
            return First::Refused;
        }
        Err(e) => {
            if state.server.swap(DOES_NOT, Ordering::Relaxed) != DOES_NOT {
                info!(
                    "the mount target does not multiplex ({e}): one connection per NFS connection, \
                     no partition bind on later connections"
                );
            }
            matches!(e, BindFailure::Rpc(BindError::Refused(_)))
        }
    };
    if in_step {
        return First::Plain(tls);
    }
    // The call left the stream out of step (or closed it): one plain connection instead.
    drop(tls);
    match host.dial().await {
        Ok(tls) => First::Plain(tls),
        Err(e) => First::Lost(e),
    }
}

/// Why a multiplexed kernel connection ended early.
#[derive(Debug)]
pub enum MuxError {
    /// The kernel's socket failed, or sent a record over [`MAX_RECORD`].
    Kernel(io::Error),
    /// Upstream connection `n` (0: the first) failed, closed, or sent a bad record.
    Upstream(usize, io::Error),
    /// Upstream connection `n` sent nothing for this long with calls outstanding.
    Silent(usize, Duration),
    /// A task of the connection panicked (a bug).
    Task,
}

impl fmt::Display for MuxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MuxError::Kernel(e) => write!(f, "the NFS client's connection failed: {e}"),
            MuxError::Upstream(n, e) => write!(f, "multiplexed connection {n} failed: {e}"),
            MuxError::Silent(n, t) => write!(
                f,
                "multiplexed connection {n} sent nothing for {} s with calls outstanding",
                t.as_secs()
            ),
            MuxError::Task => f.write_str("a multiplexing task failed"),
        }
    }
}

impl std::error::Error for MuxError {}

/// One upstream connection as the kernel side sees it.
#[derive(Clone)]
struct Lane {
    tx: mpsc::Sender<Vec<u8>>,
    load: Arc<LaneLoad>,
}

#[derive(Default)]
struct LaneLoad {
    /// Bytes handed to the lane's writer, not yet written.
    queued: AtomicUsize,
    /// Calls sent, not yet answered.
    outstanding: AtomicU64,
    /// Milliseconds since the connection began: the last reply, or the call that made
    /// something outstanding.
    since_ms: AtomicU64,
}

/// What the kernel side, the lanes and the monitor share.
struct Conn<H> {
    host: Arc<H>,
    started: Instant,
    kernel_done: AtomicBool,
    /// Bytes both ways, for the scale-up decision.
    moved: AtomicU64,
    /// Server callbacks: XID to the lane that carried it.
    callbacks: Mutex<HashMap<u32, usize>>,
}

impl<H> Conn<H> {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

enum Found {
    Connection(Box<(TlsStream, Vec<u8>)>),
    /// The search ended; `complete` when it found every connection it looked for.
    Done {
        complete: bool,
    },
}

/// Keeps the bound-connections count right however a lane ends.
struct BoundGuard<H: Host>(Arc<H>);

impl<H: Host> Drop for BoundGuard<H> {
    fn drop(&mut self) {
        self.0.mux().bound.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves the kernel connection `client` over `bound` and the connections scale-up
/// adds, until both sides are done or one fails.
pub async fn serve<H: Host>(
    host: Arc<H>,
    client: TcpStream,
    bound: BoundConnection,
) -> Result<(), MuxError> {
    let BoundConnection {
        client: client_id,
        tls,
        buffered,
        partition,
        scale_up,
    } = bound;
    let conn = Arc::new(Conn {
        host: host.clone(),
        started: Instant::now(),
        kernel_done: AtomicBool::new(false),
        moved: AtomicU64::new(0),
        callbacks: Mutex::new(HashMap::new()),
    });
    let (kernel_read, kernel_write) = client.into_split();
    let (to_kernel, from_lanes) = mpsc::channel::<Vec<u8>>(KERNEL_QUEUE);
    let (new_lanes_tx, new_lanes) = mpsc::unbounded_channel::<Lane>();
    let mut tasks: JoinSet<Result<(), MuxError>> = JoinSet::new();
    tasks.spawn(kernel_writer(conn.clone(), kernel_write, from_lanes));
    let mut lanes = Lanes {
        loads: Vec::new(),
        new_lanes: new_lanes_tx,
        to_kernel: Some(to_kernel),
    };
    lanes.add(&mut tasks, &conn, tls, buffered);
    tasks.spawn(kernel_reader(conn.clone(), kernel_read, new_lanes));

    let (found_tx, mut found) = mpsc::unbounded_channel::<Found>();
    let mut searching: Option<tokio::task::JoinHandle<()>> = None;
    let mut next_search = Instant::now();
    let tick = scale_up.lookback.min(Duration::from_secs(1));
    let mut ticker = tokio::time::interval_at(Instant::now() + tick, tick);
    let mut last = (Instant::now(), 0u64);
    let mut breached = Duration::ZERO;

    let ended = loop {
        tokio::select! {
            joined = tasks.join_next() => match joined {
                None => break Ok(()),
                Some(Ok(Ok(()))) => {
                    if conn.kernel_done.load(Ordering::Relaxed) {
                        // No lane is added after the kernel side ended, so that the
                        // kernel writer ends once the lanes have.
                        lanes.to_kernel = None;
                    }
                }
                Some(Ok(Err(e))) => break Err(e),
                Some(Err(_)) => break Err(MuxError::Task),
            },
            event = found.recv() => match event {
                Some(Found::Connection(c)) => {
                    let (tls, buffered) = *c;
                    if lanes.loads.len() < scale_up.max_connections as usize {
                        lanes.add(&mut tasks, &conn, tls, buffered);
                        info!(
                            "{} connections bound to partition {partition}",
                            lanes.loads.len()
                        );
                    }
                }
                Some(Found::Done { complete }) => {
                    searching = None;
                    if !complete {
                        next_search = Instant::now() + SCALE_UP_BACKOFF;
                    }
                }
                None => {}
            },
            _ = ticker.tick() => {
                if let Some(silent) = lanes.silent(&conn, host.dead_upstream()) {
                    break Err(silent);
                }
                let moved = conn.moved.load(Ordering::Relaxed);
                let elapsed = last.0.elapsed();
                let rate = u128::from(moved - last.1) * 1000 / elapsed.as_millis().max(1);
                last = (Instant::now(), moved);
                if rate >= u128::from(scale_up.threshold_bytes_per_sec) {
                    breached += elapsed;
                } else {
                    breached = Duration::ZERO;
                }
                let want = (scale_up.max_connections as usize).saturating_sub(lanes.loads.len());
                if breached >= scale_up.breached
                    && want > 0
                    && searching.is_none()
                    && lanes.to_kernel.is_some()
                    && Instant::now() >= next_search
                {
                    debug!("{rate} B/s: looking for {want} more connections to partition {partition}");
                    searching = Some(tokio::spawn(search(
                        host.clone(),
                        client_id,
                        partition,
                        want,
                        found_tx.clone(),
                    )));
                }
            }
        }
    };
    if let Some(s) = searching {
        s.abort();
    }
    tasks.abort_all();
    ended
}

/// The upstream connections of one kernel connection.
struct Lanes {
    loads: Vec<Arc<LaneLoad>>,
    new_lanes: mpsc::UnboundedSender<Lane>,
    /// For new lanes' readers; `None` once the kernel side has ended.
    to_kernel: Option<mpsc::Sender<Vec<u8>>>,
}

impl Lanes {
    /// Starts a lane's writer and reader on `tls` and hands it to the kernel side.
    fn add<H: Host>(
        &mut self,
        tasks: &mut JoinSet<Result<(), MuxError>>,
        conn: &Arc<Conn<H>>,
        tls: TlsStream,
        buffered: Vec<u8>,
    ) {
        let Some(to_kernel) = &self.to_kernel else {
            return;
        };
        let n = self.loads.len();
        let (tx, rx) = mpsc::channel(LANE_QUEUE);
        let load = Arc::new(LaneLoad {
            since_ms: AtomicU64::new(conn.now_ms()),
            ..LaneLoad::default()
        });
        conn.host.mux().bound.fetch_add(1, Ordering::Relaxed);
        let guard = Arc::new(BoundGuard(conn.host.clone()));
        let (r, w) = tokio::io::split(tls);
        tasks.spawn(lane_writer(
            n,
            w,
            rx,
            load.clone(),
            conn.clone(),
            guard.clone(),
        ));
        tasks.spawn(lane_reader(
            n,
            RecordReader::with_buffered(r, buffered, MAX_RECORD),
            to_kernel.clone(),
            load.clone(),
            conn.clone(),
            guard,
        ));
        self.loads.push(load.clone());
        let _ = self.new_lanes.send(Lane { tx, load });
    }

    /// The first lane that has had calls outstanding and nothing from the server for
    /// longer than `limit`.
    fn silent<H>(&self, conn: &Conn<H>, limit: Option<Duration>) -> Option<MuxError> {
        let limit = limit?;
        let now = conn.now_ms();
        self.loads.iter().enumerate().find_map(|(n, lane)| {
            let since = lane.since_ms.load(Ordering::Relaxed);
            let waited = Duration::from_millis(now.saturating_sub(since));
            (lane.outstanding.load(Ordering::Relaxed) > 0 && waited > limit)
                .then_some(MuxError::Silent(n, waited))
        })
    }
}

/// Looks for `want` more connections READY on `partition`.
async fn search<H: Host>(
    host: Arc<H>,
    client: ClientId,
    partition: PartitionId,
    mut want: usize,
    found: mpsc::UnboundedSender<Found>,
) {
    for round in 0..SEARCH_ROUNDS {
        let mut attempts = JoinSet::new();
        for _ in 0..want {
            let host = host.clone();
            attempts.spawn(async move {
                let mut tls = host.dial().await.map_err(|e| e.to_string())?;
                let reply = bind(&mut tls, &client).await.map_err(|e| e.to_string())?;
                Ok::<_, String>((tls, reply))
            });
        }
        let mut stop = false;
        while let Some(joined) = attempts.join_next().await {
            match joined {
                Ok(Ok((tls, (reply, buffered)))) => match reply.bind {
                    Bind::Ready(p) if p == partition => {
                        want -= 1;
                        let _ = found.send(Found::Connection(Box::new((tls, buffered))));
                    }
                    Bind::RetryLater(_) | Bind::Error(_) => {
                        debug!("scale-up: the mount target answered {:?}", reply.bind);
                        stop = true;
                    }
                    other => debug!("scale-up: closed a connection answered {other:?}"),
                },
                Ok(Err(e)) => debug!("scale-up: {e}"),
                Err(_) => {}
            }
        }
        if want == 0 || stop {
            break;
        }
        tokio::time::sleep(SEARCH_PAUSE * 2u32.pow(round)).await;
    }
    let _ = found.send(Found::Done {
        complete: want == 0,
    });
}

/// The kernel's records, each whole to one lane.
async fn kernel_reader<H: Host>(
    conn: Arc<Conn<H>>,
    read: tokio::net::tcp::OwnedReadHalf,
    mut new_lanes: mpsc::UnboundedReceiver<Lane>,
) -> Result<(), MuxError> {
    let mut records = RecordReader::new(read, MAX_RECORD);
    let mut lanes: Vec<Lane> = Vec::new();
    let mut turn = 0usize;
    loop {
        let record = match records.next().await {
            Ok(Some(r)) => r,
            Ok(None) => break,
            Err(e) => return Err(MuxError::Kernel(e)),
        };
        while let Ok(lane) = new_lanes.try_recv() {
            lanes.push(lane);
        }
        if lanes.is_empty() {
            // The first lane is handed over before this task starts.
            match new_lanes.recv().await {
                Some(lane) => lanes.push(lane),
                None => return Err(MuxError::Task),
            }
        }
        let head = partition::record_head(&record);
        let n = match head {
            // The kernel's reply to a server callback goes where the callback came from.
            Some((xid, REPLY)) => conn
                .callbacks
                .lock()
                .ok()
                .and_then(|mut m| m.remove(&xid))
                .unwrap_or(0)
                .min(lanes.len() - 1),
            _ => {
                turn = (turn + 1) % lanes.len();
                (0..lanes.len())
                    .map(|k| (turn + k) % lanes.len())
                    .min_by_key(|&i| lanes[i].load.queued.load(Ordering::Relaxed))
                    .unwrap_or(0)
            }
        };
        let lane = &lanes[n];
        if matches!(head, Some((_, CALL)))
            && lane.load.outstanding.fetch_add(1, Ordering::Relaxed) == 0
        {
            lane.load.since_ms.store(conn.now_ms(), Ordering::Relaxed);
        }
        lane.load.queued.fetch_add(record.len(), Ordering::Relaxed);
        if lane.tx.send(record).await.is_err() {
            // The lane's writer ended, and said why.
            return Ok(());
        }
    }
    conn.kernel_done.store(true, Ordering::Relaxed);
    Ok(())
}

/// Writes lane `n`'s records to its connection; at the kernel's end, close_notify.
async fn lane_writer<H: Host, W: AsyncWrite + Unpin>(
    n: usize,
    mut w: W,
    mut rx: mpsc::Receiver<Vec<u8>>,
    load: Arc<LaneLoad>,
    conn: Arc<Conn<H>>,
    _bound: Arc<BoundGuard<H>>,
) -> Result<(), MuxError> {
    let fail = |e| MuxError::Upstream(n, e);
    while let Some(record) = rx.recv().await {
        w.write_all(&record).await.map_err(fail)?;
        let len = record.len();
        load.queued.fetch_sub(len, Ordering::Relaxed);
        conn.moved.fetch_add(len as u64, Ordering::Relaxed);
        conn.host
            .stats()
            .bytes_to_server
            .fetch_add(len as u64, Ordering::Relaxed);
        if rx.is_empty() {
            w.flush().await.map_err(fail)?;
        }
    }
    w.flush().await.map_err(fail)?;
    w.shutdown().await.map_err(fail)?;
    Ok(())
}

/// Lane `n`'s records from the server, each whole to the kernel.
async fn lane_reader<H: Host, R: AsyncRead + Unpin>(
    n: usize,
    mut records: RecordReader<R>,
    to_kernel: mpsc::Sender<Vec<u8>>,
    load: Arc<LaneLoad>,
    conn: Arc<Conn<H>>,
    _bound: Arc<BoundGuard<H>>,
) -> Result<(), MuxError> {
    loop {
        let record = match records.next().await {
            Ok(Some(r)) => r,
            Ok(None) if conn.kernel_done.load(Ordering::Relaxed) => return Ok(()),
            Ok(None) => {
                return Err(MuxError::Upstream(
                    n,
                    io::Error::new(io::ErrorKind::UnexpectedEof, "closed by the mount target"),
                ))
            }
            Err(e) => return Err(MuxError::Upstream(n, e)),
        };
        match partition::record_head(&record) {
            Some((_, REPLY)) => {
                let _ = load
                    .outstanding
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
            }
            Some((xid, CALL)) => {
                if let Ok(mut m) = conn.callbacks.lock() {
                    if m.len() >= MAX_CALLBACKS {
                        m.clear();
                    }
                    m.insert(xid, n);
                }
            }
            _ => {}
        }
        load.since_ms.store(conn.now_ms(), Ordering::Relaxed);
        if to_kernel.send(record).await.is_err() {
            return Ok(());
        }
    }
}

/// Writes every lane's records to the kernel; half-closes once every lane has ended.
async fn kernel_writer<H: Host>(
    conn: Arc<Conn<H>>,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    mut rx: mpsc::Receiver<Vec<u8>>,
) -> Result<(), MuxError> {
    while let Some(record) = rx.recv().await {
        w.write_all(&record).await.map_err(MuxError::Kernel)?;
        let len = record.len() as u64;
        conn.moved.fetch_add(len, Ordering::Relaxed);
        conn.host
            .stats()
            .bytes_from_server
            .fetch_add(len, Ordering::Relaxed);
    }
    w.shutdown().await.map_err(MuxError::Kernel)?;
    Ok(())
}
