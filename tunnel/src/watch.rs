//! Noticing a mount target that has silently stopped answering.
//!
//! A TCP connection whose far end vanished (a mount target that failed over, a path that
//! blackholes) can stay open for as long as the kernel's retransmissions last, and a hard
//! mount waits on it for good: the kernel NFS client only reconnects once the connection
//! closes. The tunnel watches each connection at the RPC level: while the client has
//! calls outstanding, the mount target must send something back within the limit, or the
//! tunnel closes both sides, and the NFS client reconnects through a fresh upstream
//! connection.
//!
//! "Outstanding" is counted from ONC RPC record marking (RFC 5531 section 11): each
//! record starts with a 4-byte fragment header (last-fragment bit, 31-bit length), and a
//! record's body starts with the xid and the message type (0 call, 1 reply). Calls from
//! the client and replies from the mount target are counted; calls from the mount target
//! (NFSv4.1 callbacks on the back channel) and the client's replies to them are not, so a
//! callback never makes an idle connection look as if it waited for an answer. An idle
//! connection (nothing outstanding) is never closed for being idle.
//!
//! Cost: the scanner looks at record headers only and skips bodies by their length, and
//! the watch neither reads the clock nor touches its timer per read or per RPC: while
//! calls are outstanding its timer fires sixteen times per limit (see [`Watch`]). That
//! matters where a clock read is a system call (User-Mode Linux, whose vDSO makes one;
//! Xen guests whose clock source has no vDSO support), measured in `docs/performance.md`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// Counts the RPC calls and replies in one direction of a byte stream, fed in pieces of
/// any size, and tells whether what was fed ends between two records and how many more
/// bytes belong to the current one (so a byte pump can stop exactly at a record
/// boundary: `mux.rs`). It never copies a record. Never panics, whatever the bytes.
#[derive(Debug, Default, Clone)]
pub struct RpcScanner {
    /// Fragment header bytes gathered so far (while `frag_left` is 0).
    mark: [u8; 4],
    mark_len: u8,
    /// Body bytes of the current fragment not yet seen.
    frag_left: u32,
    /// The current fragment is the record's last.
    last_frag: bool,
    /// Some byte of a record has been fed and its last fragment has not ended.
    in_record: bool,
    /// The record's first 8 body bytes (xid, message type), gathered across fragments.
    head: [u8; 8],
    head_len: u8,
    pub calls: u64,
    pub replies: u64,
    /// Every byte fed.
    pub bytes: u64,
}

const CALL: u32 = 0;
const REPLY: u32 = 1;

impl RpcScanner {
    pub fn feed(&mut self, mut data: &[u8]) {
        self.bytes += data.len() as u64;
        while !data.is_empty() {
            self.in_record = true;
            if self.frag_left == 0 && self.mark_len < 4 {
                let take = data.len().min(4 - self.mark_len as usize);
                let at = self.mark_len as usize;
                self.mark[at..at + take].copy_from_slice(&data[..take]);
                self.mark_len += take as u8;
                data = &data[take..];
                if self.mark_len < 4 {
                    return;
                }
                let mark = u32::from_be_bytes(self.mark);
                self.last_frag = mark & 0x8000_0000 != 0;
                self.frag_left = mark & 0x7fff_ffff;
                if self.frag_left == 0 {
                    self.fragment_done();
                }
                continue;
            }
            let take = data.len().min(self.frag_left as usize);
            if self.head_len < 8 {
                let n = take.min(8 - self.head_len as usize);
                let at = self.head_len as usize;
                self.head[at..at + n].copy_from_slice(&data[..n]);
                self.head_len += n as u8;
                if self.head_len == 8 {
                    match u32::from_be_bytes([
                        self.head[4],
                        self.head[5],
                        self.head[6],
                        self.head[7],
                    ]) {
                        CALL => self.calls += 1,
                        REPLY => self.replies += 1,
                        _ => {}
                    }
                }
            }
            self.frag_left -= take as u32;
            data = &data[take..];
            if self.frag_left == 0 {
                self.fragment_done();
            }
        }
    }

    fn fragment_done(&mut self) {
        self.mark_len = 0;
        if self.last_frag {
            self.head_len = 0;
            self.in_record = false;
        }
    }

    /// True when the bytes fed so far end between two records (or none was fed).
    pub fn between_records(&self) -> bool {
        !self.in_record
    }

    /// How many of the next bytes certainly belong to the current record: the rest of
    /// its fragment, or of a fragment header; 0 between records.
    pub fn left_in_record(&self) -> usize {
        if !self.in_record {
            0
        } else if self.frag_left > 0 {
            self.frag_left as usize
        } else {
            4 - usize::from(self.mark_len)
        }
    }
}

/// The mount target kept quiet past the limit while calls were outstanding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Silent {
    pub waited: Duration,
    pub outstanding: u64,
}

impl fmt::Display for Silent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no answer for {} s with {} RPC call(s) outstanding",
            self.waited.as_secs(),
            self.outstanding
        )
    }
}

/// How many checks the limit is cut into: a silence is noticed between the limit less
/// one slice (a sixteenth of it) and the limit after the mount target's last byte, so
/// always before `TCP_USER_TIMEOUT` (the same limit, counted from later) would end it.
const SLICES: u32 = 16;

/// The per-connection watch: fed the two scanners after every poll of the copy.
///
/// It keeps no timestamp per RPC: while calls are outstanding its timer fires once per
/// slice of the limit, and each firing asks only whether anything came from the mount
/// target since the previous one. The clock is read when the timer is armed or fires,
/// never per read or per RPC.
#[derive(Debug)]
pub struct Watch {
    limit: Duration,
    slice: Duration,
    calls_seen: u64,
    replies_seen: u64,
    bytes_heard: u64,
    outstanding: u64,
    /// Bytes came from the mount target (or waited for the client) since the last check.
    heard: bool,
    /// The last check, or the arming.
    last_check: Instant,
    /// Nothing has been heard since this moment: the arming (a call after a quiet
    /// spell), or the check before the one that last heard something.
    quiet_since: Instant,
    timer: Pin<Box<Sleep>>,
    armed: bool,
}

impl Watch {
    pub fn new(limit: Duration) -> Watch {
        // Far beyond any sensible limit, and clear of `Instant` overflow.
        let limit = limit.min(Duration::from_secs(365 * 86_400));
        let slice = limit / SLICES;
        let now = Instant::now();
        Watch {
            limit,
            slice,
            calls_seen: 0,
            replies_seen: 0,
            bytes_heard: 0,
            outstanding: 0,
            heard: false,
            last_check: now,
            quiet_since: now,
            timer: Box::pin(tokio::time::sleep(slice)),
            armed: false,
        }
    }

    /// `up` scans what the client sent, `down` what the mount target sent; `backlog`
    /// says that bytes from the mount target are waiting for the client to take them (a
    /// slow client, not a silent server). Ready when the mount target has been silent
    /// for the limit (less at most one slice) with calls outstanding.
    pub fn poll(
        &mut self,
        cx: &mut Context<'_>,
        up: &RpcScanner,
        down: &RpcScanner,
        backlog: bool,
    ) -> Poll<Silent> {
        let new_calls = up.calls.wrapping_sub(self.calls_seen);
        let new_replies = down.replies.wrapping_sub(self.replies_seen);
        if down.bytes != self.bytes_heard || backlog {
            self.heard = true;
        }
        self.calls_seen = up.calls;
        self.replies_seen = down.replies;
        self.bytes_heard = down.bytes;
        self.outstanding = self
            .outstanding
            .saturating_add(new_calls)
            .saturating_sub(new_replies);
        if self.outstanding > 0 && !self.armed {
            // A call after a quiet spell: the wait starts now.
            let now = Instant::now();
            self.quiet_since = now;
            self.last_check = now;
            self.heard = false;
            self.timer.as_mut().reset(now + self.slice);
            self.armed = true;
        }
        while self.armed {
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let now = Instant::now();
            if self.outstanding == 0 {
                // Nothing awaited: an idle connection is never closed for being idle.
                self.armed = false;
                break;
            }
            if std::mem::take(&mut self.heard) {
                // Heard since the last check: the silence began after it.
                self.quiet_since = self.last_check;
            } else if now >= self.quiet_since + self.limit {
                return Poll::Ready(Silent {
                    waited: now - self.quiet_since,
                    outstanding: self.outstanding,
                });
            }
            self.last_check = now;
            // On the slices' grid, so that checks do not drift by their wake-up delays.
            let next = self.timer.deadline() + self.slice;
            self.timer
                .as_mut()
                .reset(if next > now { next } else { now + self.slice });
        }
        Poll::Pending
    }
}

/// One RPC record in one fragment: xid, message type (0 call, 1 reply), then `body_len`
/// more bytes.
#[cfg(test)]
pub(crate) fn record(xid: u32, msg_type: u32, body_len: usize) -> Vec<u8> {
    let len = 8 + body_len;
    let mut r = ((len as u32) | 0x8000_0000).to_be_bytes().to_vec();
    r.extend_from_slice(&xid.to_be_bytes());
    r.extend_from_slice(&msg_type.to_be_bytes());
    r.extend(std::iter::repeat_n(0xab, body_len));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An NFSv4 NULL call as the kernel's client sends it (AUTH_NONE): RFC 5531 framing.
    fn nfs_null_call(xid: u32) -> Vec<u8> {
        let words: [u32; 10] = [xid, CALL, 2, 100003, 4, 0, 0, 0, 0, 0];
        let mut r = (0x8000_0000u32 | 40).to_be_bytes().to_vec();
        for w in words {
            r.extend_from_slice(&w.to_be_bytes());
        }
        r
    }

    #[test]
    fn counts_calls_and_replies_whatever_the_piece_sizes() {
        let mut stream = nfs_null_call(1);
        stream.extend(record(2, CALL, 1_000_000));
        stream.extend(record(1, REPLY, 20));
        stream.extend(record(3, 7, 3)); // neither
        for piece in [1, 2, 3, 5, 7, 4096, stream.len()] {
            let mut s = RpcScanner::default();
            for chunk in stream.chunks(piece) {
                s.feed(chunk);
            }
            assert_eq!((s.calls, s.replies), (2, 1), "in pieces of {piece}");
            assert_eq!(s.bytes, stream.len() as u64);
        }
    }

    #[test]
    fn a_record_in_several_fragments_counts_once_even_with_a_split_header() {
        // Fragment 1 holds 3 body bytes (part of the xid), fragment 2 the rest; then an
        // empty last fragment ends a second record that had only a 6-byte fragment.
        let mut stream = 3u32.to_be_bytes().to_vec();
        stream.extend_from_slice(&[0, 0, 0]);
        stream.extend((0x8000_0000u32 | 9).to_be_bytes());
        stream.extend_from_slice(&[9]); // end of the xid
        stream.extend(REPLY.to_be_bytes());
        stream.extend_from_slice(&[1, 2, 3, 4]);
        stream.extend(6u32.to_be_bytes());
        stream.extend_from_slice(&[0, 0, 0, 5, 0, 0]);
        stream.extend(0x8000_0000u32.to_be_bytes());
        stream.extend(nfs_null_call(6));
        let mut s = RpcScanner::default();
        s.feed(&stream);
        assert_eq!((s.calls, s.replies), (1, 1));
    }

    #[test]
    fn never_panics_on_arbitrary_bytes() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for round in 0..2000 {
            let mut s = RpcScanner::default();
            let len = round % 300;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    // Small lengths often, so that many headers are parsed.
                    if x % 3 == 0 {
                        0
                    } else {
                        x as u8
                    }
                })
                .collect();
            for chunk in bytes.chunks(1 + round % 7) {
                s.feed(chunk);
            }
            assert_eq!(s.bytes, len as u64);
        }
    }

    fn poll_watch(
        w: &mut Watch,
        up: &RpcScanner,
        down: &RpcScanner,
        backlog: bool,
    ) -> Poll<Silent> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        w.poll(&mut cx, up, down, backlog)
    }

    /// Polls the watch every 50 ms of paused time for `span`, as the copy does when the
    /// watch's timer wakes it; the first silence, and how far into `span` it came.
    async fn run_for(
        w: &mut Watch,
        up: &RpcScanner,
        down: &RpcScanner,
        backlog: bool,
        span: Duration,
    ) -> Option<(Silent, Duration)> {
        let step = Duration::from_millis(50);
        let start = Instant::now();
        while start.elapsed() < span {
            if let Poll::Ready(s) = poll_watch(w, up, down, backlog) {
                return Some((s, start.elapsed()));
            }
            tokio::time::advance(step).await;
        }
        None
    }

    #[tokio::test(start_paused = true)]
    async fn silent_with_a_call_outstanding_fires_after_the_limit_and_only_then() {
        let limit = Duration::from_secs(30);
        let slice = limit / SLICES;
        let step = Duration::from_millis(50);
        let mut w = Watch::new(limit);
        let (mut up, down) = (RpcScanner::default(), RpcScanner::default());
        // A call, unanswered: noticed one limit after it was made.
        up.feed(&record(1, CALL, 100));
        let Some((silent, at)) = run_for(&mut w, &up, &down, false, limit * 2).await else {
            panic!("30 s of silence with a call outstanding went unnoticed");
        };
        assert!(at >= limit && at <= limit + step, "noticed after {at:?}");
        assert_eq!(silent.outstanding, 1);
        assert!(
            silent.waited >= limit && silent.waited <= limit + step,
            "{silent:?}"
        );

        // Another connection: after 20 s, a reply to something else proves the server is
        // alive, and the wait restarts from about then.
        let mut w = Watch::new(limit);
        let (mut up, mut down) = (RpcScanner::default(), RpcScanner::default());
        up.feed(&record(1, CALL, 100));
        assert!(run_for(&mut w, &up, &down, false, Duration::from_secs(20))
            .await
            .is_none());
        down.feed(&record(0, REPLY, 10));
        up.feed(&record(2, CALL, 10));
        let early = limit - slice - step;
        assert!(run_for(&mut w, &up, &down, false, early).await.is_none());
        let Some((silent, at)) = run_for(&mut w, &up, &down, false, slice * 2).await else {
            panic!("30 s of silence after the reply went unnoticed");
        };
        // Noticed within one slice before the limit after the last byte, never after.
        let after_reply = early + at;
        assert!(
            after_reply <= limit + step,
            "noticed {after_reply:?} after the reply"
        );
        assert!(
            silent.waited >= limit && silent.waited <= limit + slice,
            "{silent:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_or_a_server_callback_never_fires() {
        let limit = Duration::from_secs(2);
        let mut w = Watch::new(limit);
        let (mut up, mut down) = (RpcScanner::default(), RpcScanner::default());
        up.feed(&record(1, CALL, 100));
        down.feed(&record(1, REPLY, 100));
        // A callback from the server, and the client's reply to it.
        down.feed(&record(9, CALL, 40));
        up.feed(&record(9, REPLY, 20));
        assert!(run_for(&mut w, &up, &down, false, limit * 10)
            .await
            .is_none());
        // Replies held back by a slow client do not count as the server's silence.
        up.feed(&record(2, CALL, 100));
        assert!(run_for(&mut w, &up, &down, true, limit * 10)
            .await
            .is_none());
        // Once the client has caught up, the call outstanding is watched again.
        let span = limit + Duration::from_millis(100);
        assert!(run_for(&mut w, &up, &down, false, span).await.is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_stream_of_answered_calls_re_arms_the_timer_per_slice_not_per_call() {
        // The timer is armed once for the stream, not once per call: after the first
        // call it is only re-armed when it fires (once per slice).
        let mut w = Watch::new(Duration::from_secs(30));
        let (mut up, mut down) = (RpcScanner::default(), RpcScanner::default());
        for xid in 0..10_000 {
            up.feed(&record(xid, CALL, 100));
            assert!(poll_watch(&mut w, &up, &down, false).is_pending());
            let deadline = w.timer.deadline();
            down.feed(&record(xid, REPLY, 100));
            assert!(poll_watch(&mut w, &up, &down, false).is_pending());
            assert_eq!(
                w.timer.deadline(),
                deadline,
                "call {xid} re-armed the timer"
            );
        }
        assert!(w.armed);
    }

    fn frag(last: bool, body: &[u8]) -> Vec<u8> {
        let mut v = ((body.len() as u32) | if last { 0x8000_0000 } else { 0 })
            .to_be_bytes()
            .to_vec();
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn the_scanner_finds_record_boundaries_in_pieces_of_any_size() {
        let mut rec = frag(false, &[0, 0, 0, 5]);
        rec.extend(frag(false, &[]));
        rec.extend(frag(true, &[0, 0, 0, 1, 9, 9]));
        let mut stream = rec.clone();
        stream.extend(frag(true, &[0, 0, 0, 6, 0, 0, 0, 0]));
        stream.extend(frag(true, &[]));
        let ends = [rec.len(), rec.len() + 12, rec.len() + 16];
        // Byte by byte: between records exactly at the ends, and never told to read
        // past one.
        let mut c = RpcScanner::default();
        assert!(c.between_records());
        assert_eq!(c.left_in_record(), 0);
        let mut pos = 0;
        while pos < stream.len() {
            c.feed(&stream[pos..pos + 1]);
            pos += 1;
            assert_eq!(c.between_records(), ends.contains(&pos), "at {pos}");
            let next_end = ends.iter().find(|&&e| e >= pos).copied().unwrap_or(pos);
            assert!(pos + c.left_in_record() <= next_end, "at {pos}");
        }
        assert_eq!((c.calls, c.replies), (1, 1));
        // Reading as far as it allows each time lands on every boundary.
        let mut c = RpcScanner::default();
        let mut pos = 0;
        let mut stops = Vec::new();
        while pos < stream.len() {
            let n = match c.left_in_record() {
                0 => 1,
                n => n,
            };
            c.feed(&stream[pos..pos + n]);
            pos += n;
            if c.between_records() {
                stops.push(pos);
            }
        }
        assert_eq!(stops, ends);
        // Whole, in one piece, or garbage: no panic.
        let mut c = RpcScanner::default();
        c.feed(&stream);
        assert!(c.between_records());
        c.feed(&[0xff; 9]);
        assert!(!c.between_records());
    }
}
