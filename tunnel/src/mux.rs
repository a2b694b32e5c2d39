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
//! * A bound connection is served by [`serve`]. While it has one upstream connection (the
//!   normal case, below the scale-up threshold) that is `copy.rs`'s byte pump, in place,
//!   with its buffers, half-closes, idle release, counters and dead-upstream watch: both
//!   streams are wrapped in a tap that follows the record marking in what is read
//!   ([`RpcScanner`], header bytes only, no copy). When scale-up has more connections
//!   ready, the kernel side stops reading at its next record boundary; once all it sent
//!   is written upstream, the server side stops at its next one (reading on until then,
//!   so a server waiting for its replies to be taken is never stuck); with nothing read
//!   left unwritten either way, the pump is dropped and the same streams go on record
//!   by record.
//! * Record dispatch: the kernel's records go whole to the least loaded ready
//!   connection, the servers' records whole to the kernel, in whatever order they
//!   complete (NFS matches replies to calls by XID), so the kernel stream is only ever
//!   interleaved at record boundaries. The kernel's replies to server callbacks go back
//!   on the connection the callback came from (the first, for a callback that came
//!   before the switch).
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
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use log::{debug, info};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::copy::{self, CopyError, ReleaseBuffers};
use crate::ktls::Link;
use crate::partition::{
    self, Bind, BindError, BindReply, ClientId, PartitionId, RecordReader, ScaleUp, CALL,
    MAX_BIND_REPLY, MAX_RECORD, REPLY,
};
use crate::stats::Stats;
use crate::upstream::{TlsStream, UpstreamError};
use crate::watch::RpcScanner;

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
    fn should_bind(&self) -> bool {
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
    /// A bound connection's records to the kernel's TLS if it may take them
    /// ([`crate::ktls::offload`]); an error: the connection is unusable.
    fn offload(&self, tls: TlsStream) -> io::Result<Link>;
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
    let reply = match partition::parse_bind_reply(&partition::record_body(&record), xid) {
        Ok(reply) => reply,
        // An RPC error leaves the stream in step only if nothing came after it.
        Err(e) if rest.is_empty() => return Err(BindFailure::Rpc(e)),
        Err(e) => {
            return Err(BindFailure::Io(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{e}, and bytes after it"),
            )))
        }
    };
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
    /// Bound, but the kernel took part of its TLS and refused the rest ([`Host::offload`]).
    Unusable(io::Error),
}

pub struct BoundConnection {
    client: ClientId,
    tls: Link,
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
                    // The bind's reply was read record by record if kernel TLS may take
                    // the connection: it can, now.
                    let tls = match host.offload(tls) {
                        Ok(link) => link,
                        Err(e) => return First::Unusable(e),
                    };
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
    Connection(Box<(Link, Vec<u8>)>),
    /// The search ended; `complete` when it found every connection it looked for.
    Done {
        complete: bool,
    },
}

/// Keeps the bound-connections count right however a lane ends.
struct BoundGuard<H: Host>(Arc<H>);

impl<H: Host> BoundGuard<H> {
    /// Counts one more bound connection, until the guard is dropped.
    fn new(host: Arc<H>) -> BoundGuard<H> {
        host.mux().bound.fetch_add(1, Ordering::Relaxed);
        BoundGuard(host)
    }
}

impl<H: Host> Drop for BoundGuard<H> {
    fn drop(&mut self) {
        self.0.mux().bound.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The scale-up decision, over both phases of a kernel connection.
struct Monitor {
    scale_up: ScaleUp,
    searching: Option<tokio::task::JoinHandle<()>>,
    /// What searches found; made by the first search (a connection that never scales
    /// up holds no channel).
    found: Option<(mpsc::UnboundedSender<Found>, mpsc::UnboundedReceiver<Found>)>,
    next_search: Instant,
    /// The last tick, and the bytes moved by then.
    last: (Instant, u64),
    breached: Duration,
}

impl Monitor {
    fn new(scale_up: ScaleUp) -> Monitor {
        Monitor {
            scale_up,
            searching: None,
            found: None,
            next_search: Instant::now(),
            last: (Instant::now(), 0),
            breached: Duration::ZERO,
        }
    }

    /// At a tick, with `moved` bytes both ways so far over `lanes` connections: how many
    /// more connections to look for now, if any. `open`: the kernel side has not ended.
    fn tick(&mut self, moved: u64, lanes: usize, open: bool) -> Option<usize> {
        let elapsed = self.last.0.elapsed();
        let rate =
            u128::from(moved.saturating_sub(self.last.1)) * 1000 / elapsed.as_millis().max(1);
        self.last = (Instant::now(), moved);
        if rate >= u128::from(self.scale_up.threshold_bytes_per_sec) {
            self.breached += elapsed;
        } else {
            self.breached = Duration::ZERO;
        }
        let want = (self.scale_up.max_connections as usize).saturating_sub(lanes);
        let go = self.breached >= self.scale_up.breached
            && want > 0
            && self.searching.is_none()
            && open
            && Instant::now() >= self.next_search;
        if go {
            debug!("{rate} B/s: looking for {want} more connections");
        }
        go.then_some(want)
    }

    /// Starts looking for `want` more connections to `partition`.
    fn search<H: Host>(
        &mut self,
        host: &Arc<H>,
        client: ClientId,
        partition: PartitionId,
        want: usize,
    ) {
        let (tx, _) = self.found.get_or_insert_with(mpsc::unbounded_channel);
        let found = tx.clone();
        self.searching = Some(tokio::spawn(search(
            host.clone(),
            client,
            partition,
            want,
            found,
        )));
    }

    /// The next thing a search found; never, before the first search.
    async fn found(&mut self) -> Option<Found> {
        match &mut self.found {
            Some((_, rx)) => rx.recv().await,
            None => std::future::pending().await,
        }
    }

    fn search_done(&mut self, complete: bool) {
        self.searching = None;
        if !complete {
            self.next_search = Instant::now() + SCALE_UP_BACKOFF;
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        if let Some(s) = self.searching.take() {
            s.abort();
        }
    }
}

/// One side of a lone bound connection's byte pump, as seen by the switch to records.
#[derive(Debug)]
struct Tap {
    /// Bytes read from this side.
    read: AtomicU64,
    /// Bytes written to this side.
    written: AtomicU64,
    /// What was read so far ends between two records.
    between: AtomicBool,
    /// This side sent its end of stream.
    eof: AtomicBool,
    /// A read or write on this side failed.
    failed: AtomicBool,
}

impl Default for Tap {
    fn default() -> Self {
        Tap {
            read: AtomicU64::new(0),
            written: AtomicU64::new(0),
            between: AtomicBool::new(true),
            eof: AtomicBool::new(false),
            failed: AtomicBool::new(false),
        }
    }
}

/// Both sides of a lone bound connection's byte pump, and the request to hand it over
/// to record dispatch. (Atomics only so that the connection's future is `Send`: one task
/// touches them.)
#[derive(Debug, Default)]
struct Taps {
    kernel: Tap,
    server: Tap,
    /// More connections are ready: stop both directions at a record boundary.
    switch: AtomicBool,
}

impl Taps {
    fn moved(&self) -> u64 {
        self.kernel.read.load(Ordering::Relaxed) + self.server.read.load(Ordering::Relaxed)
    }

    /// Neither side has ended: more connections can still take part.
    fn open(&self) -> bool {
        !self.kernel.eof.load(Ordering::Relaxed) && !self.server.eof.load(Ordering::Relaxed)
    }

    /// The kernel side is stopped between two records, and all it sent reached the
    /// upstream connection.
    fn kernel_stopped(&self) -> bool {
        self.switch.load(Ordering::Relaxed)
            && self.open()
            && self.kernel.between.load(Ordering::Relaxed)
            && self.kernel.read.load(Ordering::Relaxed)
                == self.server.written.load(Ordering::Relaxed)
    }

    /// Both directions stand between two records with nothing read left to write.
    fn ready_to_switch(&self) -> bool {
        self.kernel_stopped()
            && self.server.between.load(Ordering::Relaxed)
            && self.server.read.load(Ordering::Relaxed)
                == self.kernel.written.load(Ordering::Relaxed)
    }

    /// The lone connection's copy error, as the multiplexer says it.
    fn blame(&self, e: CopyError) -> MuxError {
        match e {
            CopyError::Silent(s) => MuxError::Silent(0, s.waited),
            CopyError::Io(e) if self.kernel.failed.load(Ordering::Relaxed) => MuxError::Kernel(e),
            CopyError::Io(e) => MuxError::Upstream(0, e),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Kernel,
    Server,
}

/// A stream of the byte pump, with an [`RpcScanner`] over what is read from it: it
/// counts, finds record boundaries in place, and once a switch is asked for, reads no
/// byte past the end of the current record. The kernel side stops at its first record
/// boundary; the server side keeps reading (so that a server waiting for its replies to
/// be taken is never stuck) until the kernel side has stopped and all of it was written
/// upstream, then stops at its own next boundary.
struct Tapped<'t, S> {
    inner: S,
    side: Side,
    taps: &'t Taps,
    cursor: RpcScanner,
    /// Bytes read from `inner` before the pump began (past the bind reply), read first.
    prefix: Vec<u8>,
    prefix_at: usize,
}

impl<'t, S> Tapped<'t, S> {
    fn new(inner: S, side: Side, taps: &'t Taps, prefix: Vec<u8>) -> Self {
        Tapped {
            inner,
            side,
            taps,
            cursor: RpcScanner::default(),
            prefix,
            prefix_at: 0,
        }
    }

    fn tap(&self) -> &'t Tap {
        match self.side {
            Side::Kernel => &self.taps.kernel,
            Side::Server => &self.taps.server,
        }
    }

    fn stopping(&self) -> bool {
        match self.side {
            Side::Kernel => self.taps.switch.load(Ordering::Relaxed) && self.taps.open(),
            Side::Server => self.taps.kernel_stopped(),
        }
    }

    /// The stream and the bytes read ahead of it that were not read from this wrapper.
    fn into_parts(mut self) -> (S, Vec<u8>) {
        self.prefix.drain(..self.prefix_at);
        (self.inner, self.prefix)
    }

    /// `r`, with a failure noted for [`Taps::blame`].
    fn noted<T>(&self, r: io::Result<T>) -> io::Result<T> {
        if r.is_err() {
            self.tap().failed.store(true, Ordering::Relaxed);
        }
        r
    }

    /// An end or a failure can lift the other side's stop: poll again.
    fn ended(&self, cx: &mut Context<'_>) {
        if self.taps.switch.load(Ordering::Relaxed) {
            cx.waker().wake_by_ref();
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tapped<'_, S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let room = if this.stopping() {
            match this.cursor.left_in_record() {
                // Stopped at a boundary; the pump's owner sees it after this poll.
                0 => return Poll::Pending,
                n => n,
            }
        } else {
            usize::MAX
        };
        let want = buf.remaining().min(room);
        if want == 0 {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let dst = buf.initialize_unfilled_to(want);
        let n = if this.prefix_at < this.prefix.len() {
            let n = want.min(this.prefix.len() - this.prefix_at);
            dst[..n].copy_from_slice(&this.prefix[this.prefix_at..this.prefix_at + n]);
            this.prefix_at += n;
            if this.prefix_at == this.prefix.len() {
                this.prefix = Vec::new();
                this.prefix_at = 0;
            }
            n
        } else {
            let mut rb = ReadBuf::new(dst);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => {
                    let failed = this.noted(Err(e));
                    this.ended(cx);
                    return Poll::Ready(failed);
                }
                Poll::Ready(Ok(())) => rb.filled().len(),
            }
        };
        let tap = this.tap();
        if n == 0 {
            tap.eof.store(true, Ordering::Relaxed);
            this.ended(cx);
        } else {
            this.cursor.feed(&dst[..n]);
            tap.read.fetch_add(n as u64, Ordering::Relaxed);
            tap.between
                .store(this.cursor.between_records(), Ordering::Relaxed);
        }
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tapped<'_, S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = ready!(Pin::new(&mut this.inner).poll_write(cx, data));
        if let Ok(n) = &r {
            this.tap().written.fetch_add(*n as u64, Ordering::Relaxed);
        }
        Poll::Ready(this.noted(r))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = ready!(Pin::new(&mut this.inner).poll_flush(cx));
        Poll::Ready(this.noted(r))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = ready!(Pin::new(&mut this.inner).poll_shutdown(cx));
        Poll::Ready(this.noted(r))
    }
}

impl<S: ReleaseBuffers> ReleaseBuffers for Tapped<'_, S> {
    fn release_buffers(&mut self) {
        self.inner.release_buffers();
    }
}

/// A lone bound connection: `copy.rs`'s byte pump, in place, until the taps stand
/// between records both ways after a switch was asked for (`None`: hand over to record
/// dispatch, nothing read is left unwritten), or until the copy ends.
async fn single_lane<K, U>(
    kernel: &mut Tapped<'_, K>,
    upstream: &mut Tapped<'_, U>,
    taps: &Taps,
    to_server: &AtomicU64,
    from_server: &AtomicU64,
    dead_upstream: Option<Duration>,
) -> Option<Result<(), CopyError>>
where
    K: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + ReleaseBuffers + Unpin,
{
    let mut copy = std::pin::pin!(copy::bidirectional(
        kernel,
        upstream,
        to_server,
        from_server,
        dead_upstream
    ));
    poll_fn(|cx| {
        if let Poll::Ready(r) = copy.as_mut().poll(cx) {
            return Poll::Ready(Some(r));
        }
        if taps.ready_to_switch() {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    })
    .await
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
    let first_guard = Arc::new(BoundGuard::new(host.clone()));
    let mut monitor = Monitor::new(scale_up);
    let tick = scale_up.lookback.min(Duration::from_secs(1));
    let mut ticker = tokio::time::interval_at(Instant::now() + tick, tick);
    let max = scale_up.max_connections as usize;

    // One connection: the byte pump, in place, watching for record boundaries.
    let taps = Taps::default();
    let mut kernel = Tapped::new(client, Side::Kernel, &taps, Vec::new());
    let mut upstream = Tapped::new(tls, Side::Server, &taps, buffered);
    let mut ready: Vec<(Link, Vec<u8>)> = Vec::new();
    let stats = host.stats();
    let single = {
        let mut pump = std::pin::pin!(single_lane(
            &mut kernel,
            &mut upstream,
            &taps,
            &stats.bytes_to_server,
            &stats.bytes_from_server,
            host.dead_upstream(),
        ));
        loop {
            tokio::select! {
                ended = &mut pump => break ended,
                event = monitor.found() => match event {
                    Some(Found::Connection(c)) if taps.open() && 1 + ready.len() < max => {
                        ready.push(*c);
                        taps.switch.store(true, Ordering::Relaxed);
                    }
                    Some(Found::Done { complete }) => monitor.search_done(complete),
                    // Not needed after all (or too late): closed.
                    Some(Found::Connection(_)) | None => {}
                },
                _ = ticker.tick() => {
                    if let Some(want) = monitor.tick(taps.moved(), 1 + ready.len(), taps.open()) {
                        monitor.search(&host, client_id, partition, want);
                    }
                }
            }
        }
    };
    match single {
        Some(Ok(())) => return Ok(()),
        Some(Err(e)) => return Err(taps.blame(e)),
        None => {}
    }

    // More connections: record dispatch, from a record boundary both ways.
    let outstanding = kernel.cursor.calls.saturating_sub(upstream.cursor.replies);
    let (client, _) = kernel.into_parts();
    let (tls, buffered) = upstream.into_parts();
    let conn = Arc::new(Conn {
        host: host.clone(),
        started: Instant::now(),
        kernel_done: AtomicBool::new(false),
        moved: AtomicU64::new(taps.moved()),
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
    lanes.add(&mut tasks, &conn, tls, buffered, first_guard, outstanding);
    tasks.spawn(kernel_reader(conn.clone(), kernel_read, new_lanes));
    for (tls, buffered) in ready {
        let guard = Arc::new(BoundGuard::new(host.clone()));
        lanes.add(&mut tasks, &conn, tls, buffered, guard, 0);
    }
    info!(
        "{} connections bound to partition {partition}",
        lanes.loads.len()
    );

    loop {
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
            event = monitor.found() => match event {
                Some(Found::Connection(c)) => {
                    let (tls, buffered) = *c;
                    if lanes.loads.len() < max {
                        let guard = Arc::new(BoundGuard::new(host.clone()));
                        lanes.add(&mut tasks, &conn, tls, buffered, guard, 0);
                        info!(
                            "{} connections bound to partition {partition}",
                            lanes.loads.len()
                        );
                    }
                }
                Some(Found::Done { complete }) => monitor.search_done(complete),
                None => {}
            },
            _ = ticker.tick() => {
                if let Some(silent) = lanes.silent(&conn, host.dead_upstream()) {
                    break Err(silent);
                }
                let moved = conn.moved.load(Ordering::Relaxed);
                let open = lanes.to_kernel.is_some();
                if let Some(want) = monitor.tick(moved, lanes.loads.len(), open) {
                    monitor.search(&host, client_id, partition, want);
                }
            }
        }
    }
    // Dropping `tasks` aborts the lanes; dropping `monitor`, a search.
}

/// The upstream connections of one kernel connection.
struct Lanes {
    loads: Vec<Arc<LaneLoad>>,
    new_lanes: mpsc::UnboundedSender<Lane>,
    /// For new lanes' readers; `None` once the kernel side has ended.
    to_kernel: Option<mpsc::Sender<Vec<u8>>>,
}

impl Lanes {
    /// Starts a lane's writer and reader on `tls` (with `outstanding` calls sent and not
    /// yet answered on it) and hands it to the kernel side.
    fn add<H: Host>(
        &mut self,
        tasks: &mut JoinSet<Result<(), MuxError>>,
        conn: &Arc<Conn<H>>,
        tls: Link,
        buffered: Vec<u8>,
        guard: Arc<BoundGuard<H>>,
        outstanding: u64,
    ) {
        let Some(to_kernel) = &self.to_kernel else {
            return;
        };
        let n = self.loads.len();
        let (tx, rx) = mpsc::channel(LANE_QUEUE);
        let load = Arc::new(LaneLoad {
            since_ms: AtomicU64::new(conn.now_ms()),
            outstanding: AtomicU64::new(outstanding),
            ..LaneLoad::default()
        });
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
                    Bind::Ready(p) if p == partition => match host.offload(tls) {
                        Ok(link) => {
                            want -= 1;
                            let _ = found.send(Found::Connection(Box::new((link, buffered))));
                        }
                        Err(e) => debug!("scale-up: {e}"),
                    },
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
    // The byte pump that served the first connection alone may have left bytes in the
    // TLS stream's buffer.
    w.flush().await.map_err(fail)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watch::record;
    use std::task::Waker;
    use tokio::io::DuplexStream;

    fn cx() -> Context<'static> {
        Context::from_waker(Waker::noop())
    }

    /// Polls the pump a few times (each poll moves what is ready): its end, if it ended.
    fn run<F: Future>(mut f: Pin<&mut F>) -> Option<F::Output> {
        (0..8).find_map(|_| match f.as_mut().poll(&mut cx()) {
            Poll::Ready(r) => Some(r),
            Poll::Pending => None,
        })
    }

    /// The lone connection's byte pump between the two tapped ends, with no
    /// dead-upstream watch.
    fn lone_pump<'a, 't: 'a>(
        kernel: &'a mut Tapped<'t, DuplexStream>,
        upstream: &'a mut Tapped<'t, DuplexStream>,
        taps: &'a Taps,
        up: &'a AtomicU64,
        down: &'a AtomicU64,
    ) -> impl Future<Output = Option<Result<(), CopyError>>> + use<'a, 't> {
        single_lane(kernel, upstream, taps, up, down, None)
    }

    /// Everything readable from `s` now.
    fn available(s: &mut DuplexStream) -> Vec<u8> {
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let mut rb = ReadBuf::new(&mut chunk);
            match Pin::new(&mut *s).poll_read(&mut cx(), &mut rb) {
                Poll::Ready(Ok(())) if !rb.filled().is_empty() => {
                    got.extend_from_slice(rb.filled())
                }
                _ => return got,
            }
        }
    }

    fn write(s: &mut DuplexStream, data: &[u8]) {
        match Pin::new(s).poll_write(&mut cx(), data) {
            Poll::Ready(Ok(n)) => assert_eq!(n, data.len()),
            other => panic!("the test's stream took {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_scale_up_in_the_middle_of_records_switches_at_their_ends_with_every_byte_in_order() {
        let (mut nfs, kernel_end) = tokio::io::duplex(1 << 20);
        let (upstream_end, mut server) = tokio::io::duplex(1 << 20);
        let (call1, call2) = (record(1, CALL, 1000), record(2, CALL, 50));
        let (reply1, reply2) = (record(1, REPLY, 300), record(2, REPLY, 10));
        let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
        let taps = Taps::default();
        let mut kernel = Tapped::new(kernel_end, Side::Kernel, &taps, Vec::new());
        // The first bytes of the server's reply came with the bind reply.
        let mut upstream = Tapped::new(upstream_end, Side::Server, &taps, reply1[..3].to_vec());
        {
            let mut pump = std::pin::pin!(lone_pump(&mut kernel, &mut upstream, &taps, &up, &down));
            // One connection: bytes go through as they come, records cut anywhere.
            write(&mut nfs, &call1[..100]);
            write(&mut server, &reply1[3..20]);
            assert!(run(pump.as_mut()).is_none());
            assert_eq!(available(&mut server), call1[..100]);
            assert_eq!(available(&mut nfs), reply1[..20]);

            // Scale-up: more connections are ready while both records are cut.
            taps.switch.store(true, Ordering::Relaxed);
            assert!(run(pump.as_mut()).is_none());
            // The rest of the kernel's record comes with the next one in one write, the
            // rest of the server's with the start of its next one.
            write(&mut nfs, &[&call1[100..], &call2[..]].concat());
            assert!(
                run(pump.as_mut()).is_none(),
                "switched before the reply ended"
            );
            write(&mut server, &[&reply1[20..], &reply2[..5]].concat());
            assert!(matches!(run(pump.as_mut()), Some(None)), "no switch");
        }
        // The byte pump stopped exactly at the end of each record ...
        assert_eq!(available(&mut server), call1[100..]);
        assert_eq!(available(&mut nfs), reply1[20..]);
        assert_eq!(up.load(Ordering::Relaxed), call1.len() as u64);
        assert_eq!(down.load(Ordering::Relaxed), reply1.len() as u64);
        assert_eq!((kernel.cursor.calls, upstream.cursor.replies), (1, 1));
        // ... and record dispatch starts at the next ones, each whole.
        let (kernel_end, rest) = kernel.into_parts();
        assert!(rest.is_empty());
        let mut calls = RecordReader::with_buffered(kernel_end, rest, MAX_RECORD);
        assert_eq!(calls.next().await.unwrap().unwrap(), call2);
        let (upstream_end, rest) = upstream.into_parts();
        let mut replies = RecordReader::with_buffered(upstream_end, rest, MAX_RECORD);
        write(&mut server, &reply2[5..]);
        assert_eq!(replies.next().await.unwrap().unwrap(), reply2);
    }

    #[tokio::test]
    async fn an_idle_connection_switches_at_once_and_an_ended_one_never() {
        let (mut nfs, kernel_end) = tokio::io::duplex(1 << 16);
        let (upstream_end, mut server) = tokio::io::duplex(1 << 16);
        let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
        let taps = Taps::default();
        let mut kernel = Tapped::new(kernel_end, Side::Kernel, &taps, Vec::new());
        let mut upstream = Tapped::new(upstream_end, Side::Server, &taps, Vec::new());
        let mut pump = std::pin::pin!(lone_pump(&mut kernel, &mut upstream, &taps, &up, &down));
        let call = record(7, CALL, 20);
        write(&mut nfs, &call);
        write(&mut server, &record(7, REPLY, 4));
        assert!(run(pump.as_mut()).is_none());
        assert_eq!(available(&mut server), call);
        taps.switch.store(true, Ordering::Relaxed);
        assert!(matches!(run(pump.as_mut()), Some(None)));

        // The server ends in the middle of a record while a switch waits: the pump
        // keeps going and ends like the plain one, both sides closed.
        let (mut nfs, kernel_end) = tokio::io::duplex(1 << 16);
        let (upstream_end, mut server) = tokio::io::duplex(1 << 16);
        let taps = Taps::default();
        let mut kernel = Tapped::new(kernel_end, Side::Kernel, &taps, Vec::new());
        let mut upstream = Tapped::new(upstream_end, Side::Server, &taps, Vec::new());
        let mut pump = std::pin::pin!(lone_pump(&mut kernel, &mut upstream, &taps, &up, &down));
        write(&mut server, &record(9, CALL, 40)[..10]);
        assert!(run(pump.as_mut()).is_none());
        taps.switch.store(true, Ordering::Relaxed);
        assert!(run(pump.as_mut()).is_none());
        drop(server);
        assert!(run(pump.as_mut()).is_none());
        assert_eq!(available(&mut nfs).len(), 10);
        // The kernel's end comes through although a switch was asked for.
        assert!(Pin::new(&mut nfs).poll_shutdown(&mut cx()).is_ready());
        assert!(matches!(run(pump.as_mut()), Some(Some(Ok(())))));
        assert!(!taps.ready_to_switch());
    }

    /// A fake knfsd's answer to the bind call: `PROG_UNAVAIL` for its xid, then `after`.
    async fn answer_prog_unavail(server: DuplexStream, after: &'static [u8]) {
        let mut calls = RecordReader::new(server, MAX_RECORD);
        let call = calls.next().await.unwrap().unwrap();
        let (mut server, _) = calls.into_parts();
        // Accepted (0), AUTH_NONE verifier (0, 0), PROG_UNAVAIL (1).
        let mut reply = (0x8000_0000u32 | 24).to_be_bytes().to_vec();
        reply.extend_from_slice(&call[4..8]);
        for w in [REPLY, 0, 0, 0, 1] {
            reply.extend_from_slice(&w.to_be_bytes());
        }
        reply.extend_from_slice(after);
        server.write_all(&reply).await.unwrap();
    }

    #[tokio::test]
    async fn an_rpc_error_leaves_the_stream_in_step_only_with_nothing_after_it() {
        let client = ClientId {
            id: [7; 16],
            incarnation: 1,
        };
        let (mut ours, server) = tokio::io::duplex(1 << 16);
        tokio::spawn(answer_prog_unavail(server, b""));
        let clean = bind(&mut ours, &client).await.unwrap_err();
        assert!(
            matches!(clean, BindFailure::Rpc(BindError::Refused(_))),
            "{clean}"
        );
        let (mut ours, server) = tokio::io::duplex(1 << 16);
        tokio::spawn(answer_prog_unavail(server, b"more"));
        let after = bind(&mut ours, &client).await.unwrap_err();
        assert!(matches!(after, BindFailure::Io(_)), "{after}");
        assert!(after.to_string().contains("bytes after it"), "{after}");
    }
}
