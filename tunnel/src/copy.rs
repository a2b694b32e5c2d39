//! Moving bytes both ways between the NFS client's socket and the TLS stream.
//!
//! Like `tokio::io::copy_bidirectional`, but tuned for this tunnel's cost model, where
//! syscalls and copies, not crypto, are what a forwarder spends its CPU on:
//! * each direction has one bounded buffer: backpressure comes for free and nothing is
//!   ever buffered without bound. It starts at [`BUF_START`] and grows to [`BUF_MAX`] only
//!   when a greedy fill finds it too small, so RPC-sized traffic and idle connections stay
//!   small while bulk streams get big writes;
//! * reads from the TLS stream are greedy: rustls hands over one record per read, so
//!   more reads are tried until the buffer is full or nothing is ready, and the client
//!   gets one `write` for many records instead of one per record. Reads from the
//!   client's plain socket are not: a read that does not fill the buffer got everything
//!   the kernel had, so the data goes out at once instead of after a read that would
//!   only say "nothing more" (a syscall saved per RPC, and before the write, not after);
//! * before waiting for more input, the writer is flushed, so no byte is left sitting in
//!   rustls' outgoing buffer while the other side waits for it;
//! * end of stream in one direction is forwarded as a half-close (TCP `FIN`, or TLS
//!   `close_notify` then `FIN`) while the other direction keeps flowing;
//! * a small buffer is freed whenever its direction falls quiet with nothing left to
//!   write, so an idle connection costs no copy buffers (32 KiB less per connection; an
//!   allocation per RPC is the price, far below a syscall's). Bulk buffers are kept while
//!   traffic flows (reallocating them at every pause would cost more than copying), and
//!   given back, together with the TLS side's read-ahead, once the connection has moved
//!   nothing for [`IDLE_RELEASE`]: a mount that copied a big file and then idles does not
//!   keep most of a MiB per connection;
//! * every completed write is added to a shared counter for the status report;
//! * with a dead-upstream limit, each read is also fed to an RPC record scanner and the
//!   connection ends with [`CopyError::Silent`] when the mount target stays silent past
//!   the limit with calls outstanding (see [`crate::watch`]; no syscall is added: the
//!   scanner reads record headers from the buffer, and the clock is read once per poll
//!   that brought bytes from the mount target).

use std::fmt;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::watch::{RpcScanner, Silent, Watch};

/// First buffer size of a direction, allocated on its first byte.
pub const BUF_START: usize = 16 * 1024;
/// Largest buffer of a direction: 16 full TLS records per write.
pub const BUF_MAX: usize = 256 * 1024;
/// How long a connection must move nothing before its bulk buffers are given back. The
/// check runs once per period (not at every pause of a busy stream), so the buffers go
/// back between one and two periods after the last byte.
pub const IDLE_RELEASE: Duration = Duration::from_secs(5);

/// A stream that keeps buffers of its own which can be dropped while it is idle.
pub trait ReleaseBuffers {
    /// Frees buffers that hold no data. Called only when the connection is idle.
    fn release_buffers(&mut self);
}

/// How a copy ended early.
#[derive(Debug)]
pub enum CopyError {
    /// A read or write on either side failed.
    Io(io::Error),
    /// The mount target stopped answering while calls were outstanding.
    Silent(Silent),
}

impl From<io::Error> for CopyError {
    fn from(e: io::Error) -> Self {
        CopyError::Io(e)
    }
}

impl fmt::Display for CopyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CopyError::Io(e) => write!(f, "{e}"),
            CopyError::Silent(s) => write!(f, "{s}"),
        }
    }
}

impl std::error::Error for CopyError {}

/// One direction of the copy.
struct Direction<'c> {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    read_eof: bool,
    done: bool,
    /// Keep reading after a short read (see the module documentation).
    greedy: bool,
    counter: &'c AtomicU64,
    /// Counts the RPC records read, when the connection is watched.
    scan: Option<RpcScanner>,
}

impl<'c> Direction<'c> {
    fn new(counter: &'c AtomicU64, greedy: bool, watched: bool) -> Self {
        Direction {
            buf: Vec::new(),
            start: 0,
            end: 0,
            read_eof: false,
            done: false,
            greedy,
            counter,
            scan: watched.then(RpcScanner::default),
        }
    }

    /// True when nothing read is waiting to be written.
    fn is_drained(&self) -> bool {
        self.start == self.end
    }

    fn holds_buffer(&self) -> bool {
        self.buf.capacity() > 0
    }

    fn release(&mut self) {
        if self.is_drained() {
            self.buf = Vec::new();
            self.start = 0;
            self.end = 0;
        }
    }

    /// Moves bytes from `r` to `w` until `r` ends (then half-closes `w`) or nothing can
    /// progress. Returns `Ready(Ok(()))` once this direction is finished.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut r: Pin<&mut R>,
        mut w: Pin<&mut W>,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            // Fill greedily.
            let mut read_pending = false;
            while !self.read_eof {
                if self.end == self.buf.len() {
                    if self.buf.len() >= BUF_MAX {
                        break;
                    }
                    // Full and the source may have more: a bulk stream. Grow (x4).
                    let size = (self.buf.len() * 4).clamp(BUF_START, BUF_MAX);
                    self.buf.resize(size, 0);
                }
                let mut rb = ReadBuf::new(&mut self.buf[self.end..]);
                match r.as_mut().poll_read(cx, &mut rb) {
                    Poll::Ready(Ok(())) => match rb.filled().len() {
                        0 => self.read_eof = true,
                        n => {
                            if let Some(scan) = &mut self.scan {
                                scan.feed(&self.buf[self.end..self.end + n]);
                            }
                            self.end += n;
                            if !self.greedy && self.end < self.buf.len() {
                                break;
                            }
                        }
                    },
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        read_pending = true;
                        break;
                    }
                }
            }

            // Drain what we have.
            if self.start < self.end {
                match w.as_mut().poll_write(cx, &self.buf[self.start..self.end]) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::WriteZero,
                            "peer accepts no more data",
                        )))
                    }
                    Poll::Ready(Ok(n)) => {
                        self.start += n;
                        self.counter.fetch_add(n as u64, Ordering::Relaxed);
                        if self.start == self.end {
                            self.start = 0;
                            self.end = 0;
                        }
                        continue;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                }
            }

            // Nothing buffered: either the source ended, or it has nothing for now.
            if self.read_eof {
                ready!(w.as_mut().poll_flush(cx))?;
                ready!(w.as_mut().poll_shutdown(cx))?;
                self.done = true;
                self.buf = Vec::new();
                return Poll::Ready(Ok(()));
            }
            if read_pending {
                ready!(w.as_mut().poll_flush(cx))?;
                // Everything is written and the source is quiet. A small buffer is given
                // back, so that the many connections that only carry an occasional RPC
                // hold no copy buffers while they wait; a bulk stream keeps its big one.
                if self.buf.len() <= BUF_START {
                    self.release();
                }
                return Poll::Pending;
            }
        }
    }
}

/// Copies `a` (the client's plain socket) to `b` (the TLS stream) and back until both
/// directions have ended, counting the bytes written to `b` in `a_to_b` and to `a` in
/// `b_to_a`. The first error ends both. With `dead_upstream`, `b` must answer the RPC
/// calls from `a` within that time (see [`crate::watch`]).
pub async fn bidirectional<A, B>(
    a: &mut A,
    b: &mut B,
    a_to_b: &AtomicU64,
    b_to_a: &AtomicU64,
    dead_upstream: Option<Duration>,
) -> Result<(), CopyError>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + ReleaseBuffers + Unpin + ?Sized,
{
    let watched = dead_upstream.is_some();
    let mut up = Direction::new(a_to_b, false, watched);
    let mut down = Direction::new(b_to_a, true, watched);
    let mut watch = dead_upstream.map(Watch::new);
    let moved = || a_to_b.load(Ordering::Relaxed) + b_to_a.load(Ordering::Relaxed);
    // Armed (with the byte count at arming) while the connection holds buffers and may
    // be idle; not polled, and so not registered with the timer, while disarmed.
    let idle = tokio::time::sleep(IDLE_RELEASE);
    tokio::pin!(idle);
    let mut armed_at: Option<u64> = None;
    poll_fn(|cx| {
        let up_done = up
            .poll_copy(cx, Pin::new(&mut *a), Pin::new(&mut *b))?
            .is_ready();
        let down_done = down
            .poll_copy(cx, Pin::new(&mut *b), Pin::new(&mut *a))?
            .is_ready();
        if up_done && down_done {
            return Poll::Ready(Ok(()));
        }
        if let (Some(w), Some(calls), Some(replies)) = (&mut watch, &up.scan, &down.scan) {
            if let Poll::Ready(silent) = w.poll(cx, calls, replies, !down.is_drained()) {
                return Poll::Ready(Err(CopyError::Silent(silent)));
            }
        }
        let quiet = up.is_drained() && down.is_drained();
        if armed_at.is_none() && quiet && (up.holds_buffer() || down.holds_buffer()) {
            idle.as_mut().reset(Instant::now() + IDLE_RELEASE);
            armed_at = Some(moved());
        }
        while let Some(mark) = armed_at {
            if idle.as_mut().poll(cx).is_pending() {
                break;
            }
            if quiet && moved() == mark {
                up.release();
                down.release();
                b.release_buffers();
                crate::memory::return_free_memory();
                armed_at = None;
            } else {
                // Traffic since arming: look again one period from now.
                idle.as_mut().reset(Instant::now() + IDLE_RELEASE);
                armed_at = Some(moved());
            }
        }
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    impl ReleaseBuffers for tokio::io::DuplexStream {
        fn release_buffers(&mut self) {}
    }

    #[tokio::test]
    async fn copies_both_ways_and_forwards_half_close() {
        let (mut client, mut a) = tokio::io::duplex(64 * 1024);
        let (mut b, mut server) = tokio::io::duplex(64 * 1024);
        let up = AtomicU64::new(0);
        let down = AtomicU64::new(0);
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let sent = data.clone();
        let copier = async { bidirectional(&mut a, &mut b, &up, &down, None).await };
        let client_side = async move {
            client.write_all(&sent).await.unwrap();
            client.shutdown().await.unwrap();
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.unwrap();
            back
        };
        let server_side = async move {
            let mut got = Vec::new();
            // The client's half-close reaches the server as EOF ...
            server.read_to_end(&mut got).await.unwrap();
            // ... while the server can still answer.
            server.write_all(b"thanks").await.unwrap();
            server.shutdown().await.unwrap();
            got
        };
        let (r, back, got) = tokio::join!(copier, client_side, server_side);
        r.unwrap();
        assert_eq!(got, data);
        assert_eq!(back, b"thanks");
        assert_eq!(up.load(Ordering::Relaxed), data.len() as u64);
        assert_eq!(down.load(Ordering::Relaxed), 6);
    }

    #[tokio::test]
    async fn a_quiet_direction_holds_no_buffer_and_a_bulk_one_keeps_its_own() {
        let (mut client, mut a) = tokio::io::duplex(1 << 20);
        let (mut b, mut server) = tokio::io::duplex(1 << 20);
        let counter = AtomicU64::new(0);
        let mut dir = Direction::new(&counter, true, false);
        let step = |dir: &mut Direction<'_>,
                    a: &mut tokio::io::DuplexStream,
                    b: &mut tokio::io::DuplexStream| {
            let waker = std::task::Waker::noop();
            let mut cx = Context::from_waker(waker);
            dir.poll_copy(&mut cx, Pin::new(a), Pin::new(b))
                .is_pending()
        };

        // One RPC-sized message: forwarded, then the buffer is given back.
        client.write_all(&[7u8; 200]).await.unwrap();
        assert!(step(&mut dir, &mut a, &mut b));
        let mut got = [0u8; 200];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(got, [7u8; 200]);
        assert_eq!(dir.buf.capacity(), 0);

        // A bulk burst grows the buffer past its first size, and it stays.
        client.write_all(&vec![9u8; 600_000]).await.unwrap();
        assert!(step(&mut dir, &mut a, &mut b));
        assert_eq!(dir.buf.len(), BUF_MAX);
        assert_eq!(counter.load(Ordering::Relaxed), 200 + 600_000);
    }

    #[tokio::test(start_paused = true)]
    async fn a_mount_target_that_stops_answering_ends_the_copy_and_an_idle_one_does_not() {
        use crate::watch::record;
        let (mut client, mut a) = tokio::io::duplex(64 * 1024);
        let (mut b, mut server) = tokio::io::duplex(64 * 1024);
        let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
        let limit = Duration::from_secs(30);
        let copier = bidirectional(&mut a, &mut b, &up, &down, Some(limit));
        let peers = async {
            // Answered, then idle for far longer than the limit: nothing happens.
            client.write_all(&record(1, 0, 100)).await.unwrap();
            let mut call = vec![0u8; 112];
            server.read_exact(&mut call).await.unwrap();
            server.write_all(&record(1, 1, 20)).await.unwrap();
            let mut reply = vec![0u8; 32];
            client.read_exact(&mut reply).await.unwrap();
            tokio::time::sleep(limit * 10).await;
            // A call the server reads and never answers.
            client.write_all(&record(2, 0, 100)).await.unwrap();
            server.read_exact(&mut call).await.unwrap();
            std::future::pending::<()>().await
        };
        let started = Instant::now();
        let ended = tokio::select! {
            r = copier => r,
            () = peers => unreachable!(),
        };
        match ended {
            Err(CopyError::Silent(s)) => {
                assert_eq!(s.outstanding, 1);
                let second = Duration::from_secs(1);
                assert!(s.waited >= limit && s.waited < limit + second, "{s:?}");
                let total = started.elapsed();
                assert!(
                    total >= limit * 11 && total < limit * 11 + second,
                    "{total:?}"
                );
            }
            other => panic!("expected the silence to end the copy, got {other:?}"),
        }
    }
}
