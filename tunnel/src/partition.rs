//! EFS partition binding: the AWS-private ONC RPC program 400123 (version 1, procedure 2
//! `bind_client_to_partition`) that lets one client open several TLS connections to the
//! same server partition, and the record framing (RFC 5531 section 11) that spreading
//! RPCs over those connections needs.
//!
//! Why its own module: everything here reads bytes from the mount target or the kernel,
//! which is outside input. It is pure (no I/O but [`RecordReader`], which only buffers),
//! bounded ([`MAX_RECORD`]), never panics, and is fuzzed (`fuzz/fuzz_targets/rpc_records.rs`).
//!
//! The wire layout, as amazon-efs-utils' efs-proxy uses it (`awsfile_prot.x`):
//! * call arguments `ProxyIdentifier { opaque identifier<16>; opaque incarnation<8>; }`:
//!   the tunnel's random 16-byte id and the kernel connection's incarnation (8 bytes,
//!   big-endian), both as variable-length XDR opaques;
//! * reply `BindClientResponse { BindResponse bind_response; ScaleUpConfig scale_up_config; }`
//!   where `BindResponse` is a union on `RETRY = 0, RETRY_LATER = 1, PREFERRED = 2,
//!   READY = 3, ERROR = 4`: PREFERRED and READY carry a 64-byte partition id, the others a
//!   string, any other value nothing; and `ScaleUpConfig` is four signed ints:
//!   `max_multiplexed_connections`, `scale_up_bytes_per_ms_threshold`,
//!   `scale_up_threshold_breached_duration_ms`, `scale_up_lookback_window_size_ms`.
//!   A value the server leaves at zero (or negative) takes efs-proxy's default
//!   ([`ScaleUp::DEFAULT`]: 5 connections, 300 MiB/s for 1 s over a 1 s window).

use std::fmt;
use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// The AWS file services program.
pub const PROGRAM: u32 = 400123;
pub const VERSION: u32 = 1;
pub const PROC_BIND_CLIENT_TO_PARTITION: u32 = 2;
pub const PARTITION_ID_LEN: usize = 64;
/// The largest record (fragment headers included) read from either side. NFS's largest
/// message is a 1 MiB READ or WRITE plus its headers; this leaves room for any
/// `rsize`/`wsize` the kernel may grow to, and bounds what one record can cost.
pub const MAX_RECORD: usize = 4 << 20;
/// The largest reply to a bind call that is read: the reply is a few hundred bytes.
pub const MAX_BIND_REPLY: usize = 64 * 1024;
/// The most connections a server can ask for: a bound on what outside input can make
/// the tunnel open (efs-proxy's default, and EFS's documented figure, is 5).
pub const MAX_CONNECTIONS_CAP: u32 = 16;

/// `msg_type` of an ONC RPC message.
pub const CALL: u32 = 0;
pub const REPLY: u32 = 1;
const LAST_FRAGMENT: u32 = 0x8000_0000;

/// Who binds: one random id per tunnel process, one incarnation per kernel connection
/// (efs-proxy's `ProxyIdentifier`). Every upstream connection of one kernel connection
/// binds with the same pair, which is how the server puts them on one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientId {
    pub id: [u8; 16],
    pub incarnation: u64,
}

/// A server partition, as the bind reply names it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PartitionId(pub [u8; PARTITION_ID_LEN]);

impl fmt::Display for PartitionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for PartitionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PartitionId({self})")
    }
}

/// When to open more connections and how many, from the bind reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScaleUp {
    /// Connections in all, the first included.
    pub max_connections: u32,
    /// Throughput (both directions) that, held for `breached`, opens more connections.
    pub threshold_bytes_per_sec: u64,
    pub breached: Duration,
    /// The window throughput is measured over.
    pub lookback: Duration,
}

impl ScaleUp {
    /// efs-proxy's defaults (`DEFAULT_SCALE_UP_CONFIG`).
    pub const DEFAULT: ScaleUp = ScaleUp {
        max_connections: 5,
        threshold_bytes_per_sec: 300 * 1024 * 1024 / 1000 * 1000,
        breached: Duration::from_millis(1000),
        lookback: Duration::from_millis(1000),
    };

    /// From the reply's four ints; each that is not positive takes its default.
    pub fn from_wire(max: i32, bytes_per_ms: i32, breached_ms: i32, lookback_ms: i32) -> ScaleUp {
        let d = ScaleUp::DEFAULT;
        let pos = |v: i32| u64::try_from(v).ok().filter(|v| *v > 0);
        ScaleUp {
            max_connections: pos(max).map_or(d.max_connections, |m| {
                u32::try_from(m)
                    .unwrap_or(MAX_CONNECTIONS_CAP)
                    .min(MAX_CONNECTIONS_CAP)
            }),
            threshold_bytes_per_sec: pos(bytes_per_ms)
                .map_or(d.threshold_bytes_per_sec, |b| b * 1000),
            breached: pos(breached_ms).map_or(d.breached, Duration::from_millis),
            lookback: pos(lookback_ms).map_or(d.lookback, Duration::from_millis),
        }
    }
}

/// What the server said to a bind call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bind {
    Ready(PartitionId),
    Preferred(PartitionId),
    Retry(String),
    RetryLater(String),
    Error(String),
    /// A response type this version does not know.
    Other(u32),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindReply {
    pub bind: Bind,
    pub scale_up: ScaleUp,
}

/// Why a bind call gave no [`BindReply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindError {
    /// The server answered with a well-formed RPC error: it does not speak the program
    /// (knfsd: `PROG_UNAVAIL`), or refused the call. The connection is still in step.
    Refused(RpcRefusal),
    /// What came back is not the reply to our call (another XID, a call, cut short,
    /// malformed): the connection cannot be trusted to be in step.
    Garbage(&'static str),
}

/// A well-formed RPC reply that is not `SUCCESS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RpcRefusal {
    /// `MSG_DENIED` (RPC version mismatch or an authentication error).
    Denied,
    ProgUnavail,
    ProgMismatch {
        low: u32,
        high: u32,
    },
    ProcUnavail,
    GarbageArgs,
    SystemErr,
    /// An `accept_stat` RFC 5531 does not define.
    Other(u32),
}

impl fmt::Display for RpcRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RpcRefusal::Denied => f.write_str("MSG_DENIED"),
            RpcRefusal::ProgUnavail => f.write_str("PROG_UNAVAIL"),
            RpcRefusal::ProgMismatch { low, high } => {
                write!(f, "PROG_MISMATCH (versions {low} to {high})")
            }
            RpcRefusal::ProcUnavail => f.write_str("PROC_UNAVAIL"),
            RpcRefusal::GarbageArgs => f.write_str("GARBAGE_ARGS"),
            RpcRefusal::SystemErr => f.write_str("SYSTEM_ERR"),
            RpcRefusal::Other(n) => write!(f, "accept_stat {n}"),
        }
    }
}

impl fmt::Display for BindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BindError::Refused(r) => write!(f, "the server answered {r}"),
            BindError::Garbage(why) => write!(f, "the answer is not a bind reply: {why}"),
        }
    }
}

impl std::error::Error for BindError {}

/// The whole bind call, as one record (fragment header included).
pub fn bind_call(xid: u32, client: &ClientId) -> Vec<u8> {
    let mut body = Vec::with_capacity(72);
    for word in [
        xid,
        CALL,
        2,
        PROGRAM,
        VERSION,
        PROC_BIND_CLIENT_TO_PARTITION,
    ] {
        body.extend_from_slice(&word.to_be_bytes());
    }
    // Credential and verifier: AUTH_NONE, no body.
    body.extend_from_slice(&[0u8; 16]);
    body.extend_from_slice(&16u32.to_be_bytes());
    body.extend_from_slice(&client.id);
    body.extend_from_slice(&8u32.to_be_bytes());
    body.extend_from_slice(&client.incarnation.to_be_bytes());
    let mut record = Vec::with_capacity(body.len() + 4);
    // The body is 72 bytes: the length always fits.
    record.extend_from_slice(&(LAST_FRAGMENT | body.len() as u32).to_be_bytes());
    record.extend_from_slice(&body);
    record
}

/// A cursor over XDR: every read is bounds-checked and says what was cut short.
struct Xdr<'a>(&'a [u8]);

impl<'a> Xdr<'a> {
    fn u32(&mut self) -> Result<u32, BindError> {
        let (head, rest) = self
            .0
            .split_first_chunk::<4>()
            .ok_or(BindError::Garbage("cut short"))?;
        self.0 = rest;
        Ok(u32::from_be_bytes(*head))
    }

    fn i32(&mut self) -> Result<i32, BindError> {
        self.u32().map(|v| i32::from_be_bytes(v.to_be_bytes()))
    }

    /// `len` bytes and their padding to a multiple of four.
    fn fixed(&mut self, len: usize) -> Result<&'a [u8], BindError> {
        let padded = len
            .checked_add(3)
            .map(|l| l & !3)
            .ok_or(BindError::Garbage("cut short"))?;
        if self.0.len() < padded {
            return Err(BindError::Garbage("cut short"));
        }
        let (data, rest) = self.0.split_at(padded);
        self.0 = rest;
        Ok(&data[..len])
    }

    /// A variable-length opaque or string of at most `max` bytes.
    fn opaque(&mut self, max: usize) -> Result<&'a [u8], BindError> {
        let len = self.u32()? as usize;
        if len > max {
            return Err(BindError::Garbage("an opaque longer than allowed"));
        }
        self.fixed(len)
    }
}

/// The reply record's body (fragments joined, headers removed) parsed as the answer to
/// the bind call `xid`.
pub fn parse_bind_reply(body: &[u8], xid: u32) -> Result<BindReply, BindError> {
    let mut x = Xdr(body);
    if x.u32()? != xid {
        return Err(BindError::Garbage("another XID"));
    }
    if x.u32()? != REPLY {
        return Err(BindError::Garbage("not a reply"));
    }
    match x.u32()? {
        0 => {}
        1 => return Err(BindError::Refused(RpcRefusal::Denied)),
        _ => return Err(BindError::Garbage("an unknown reply_stat")),
    }
    let _verifier_flavor = x.u32()?;
    x.opaque(400)?;
    let refusal = match x.u32()? {
        0 => None,
        1 => Some(RpcRefusal::ProgUnavail),
        2 => Some(RpcRefusal::ProgMismatch {
            low: x.u32()?,
            high: x.u32()?,
        }),
        3 => Some(RpcRefusal::ProcUnavail),
        4 => Some(RpcRefusal::GarbageArgs),
        5 => Some(RpcRefusal::SystemErr),
        n => Some(RpcRefusal::Other(n)),
    };
    if let Some(r) = refusal {
        return Err(BindError::Refused(r));
    }
    let text = |x: &mut Xdr<'_>| -> Result<String, BindError> {
        Ok(String::from_utf8_lossy(x.opaque(1024)?).into_owned())
    };
    let partition = |x: &mut Xdr<'_>| -> Result<PartitionId, BindError> {
        let mut id = [0u8; PARTITION_ID_LEN];
        id.copy_from_slice(x.fixed(PARTITION_ID_LEN)?);
        Ok(PartitionId(id))
    };
    let bind = match x.u32()? {
        0 => Bind::Retry(text(&mut x)?),
        1 => Bind::RetryLater(text(&mut x)?),
        2 => Bind::Preferred(partition(&mut x)?),
        3 => Bind::Ready(partition(&mut x)?),
        4 => Bind::Error(text(&mut x)?),
        n => Bind::Other(n),
    };
    let scale_up = ScaleUp::from_wire(x.i32()?, x.i32()?, x.i32()?, x.i32()?);
    Ok(BindReply { bind, scale_up })
}

/// Why a record could not be framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordError {
    /// The record (headers included) would be longer than the limit.
    TooLarge { limit: usize },
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordError::TooLarge { limit } => {
                write!(f, "an RPC record longer than {limit} bytes")
            }
        }
    }
}

impl std::error::Error for RecordError {}

/// The length of the complete record at the start of `buf` (all its fragments, headers
/// included), or `None` if more bytes are needed. A record longer than `max` is an
/// error as soon as a header says so, before its bytes arrive.
pub fn record_len(buf: &[u8], max: usize) -> Result<Option<usize>, RecordError> {
    let mut pos = 0usize;
    loop {
        let Some(header) = buf.get(pos..).and_then(|b| b.first_chunk::<4>()) else {
            return Ok(None);
        };
        let header = u32::from_be_bytes(*header);
        let len = (header & !LAST_FRAGMENT) as usize;
        pos = pos
            .checked_add(4 + len)
            .filter(|p| *p <= max)
            .ok_or(RecordError::TooLarge { limit: max })?;
        if buf.len() < pos {
            return Ok(None);
        }
        if header & LAST_FRAGMENT != 0 {
            return Ok(Some(pos));
        }
    }
}

/// The body of a complete record (as [`record_len`] delimits it): its fragments joined.
pub fn record_body(record: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(record.len());
    let mut rest = record;
    while let Some((header, after)) = rest.split_first_chunk::<4>() {
        let len = ((u32::from_be_bytes(*header) & !LAST_FRAGMENT) as usize).min(after.len());
        body.extend_from_slice(&after[..len]);
        rest = &after[len..];
    }
    body
}

/// The XID and `msg_type` of a complete record, from the first eight body bytes (which
/// may span fragments); `None` for a record too short to have them.
pub fn record_head(record: &[u8]) -> Option<(u32, u32)> {
    let mut head = [0u8; 8];
    let mut got = 0;
    let mut rest = record;
    while got < 8 {
        let (header, after) = rest.split_first_chunk::<4>()?;
        let len = ((u32::from_be_bytes(*header) & !LAST_FRAGMENT) as usize).min(after.len());
        let take = len.min(8 - got);
        head[got..got + take].copy_from_slice(&after[..take]);
        got += take;
        rest = &after[len..];
        if len == 0 && rest.is_empty() {
            return None;
        }
    }
    let (xid, kind) = head.split_at(4);
    Some((
        u32::from_be_bytes(xid.try_into().ok()?),
        u32::from_be_bytes(kind.try_into().ok()?),
    ))
}

/// Reads whole records from a byte stream. Bytes read past a record stay buffered for
/// the next one, so a stream can be read as records first and then handed on
/// ([`RecordReader::into_parts`]) with nothing lost.
pub struct RecordReader<R> {
    inner: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    max: usize,
}

const READ_CHUNK: usize = 64 * 1024;

impl<R: AsyncRead + Unpin> RecordReader<R> {
    pub fn new(inner: R, max: usize) -> Self {
        RecordReader::with_buffered(inner, Vec::new(), max)
    }

    /// A reader whose first bytes are `buffered`, then `inner`'s.
    pub fn with_buffered(inner: R, buffered: Vec<u8>, max: usize) -> Self {
        let end = buffered.len();
        RecordReader {
            inner,
            buf: buffered,
            start: 0,
            end,
            max,
        }
    }

    /// The next whole record, fragment headers included; `None` at the end of the
    /// stream between records. The end of the stream inside a record is an error.
    pub async fn next(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            let pending = &self.buf[self.start..self.end];
            if let Some(n) = record_len(pending, self.max)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
            {
                let record = pending[..n].to_vec();
                self.start += n;
                if self.start == self.end {
                    self.start = 0;
                    self.end = 0;
                    if self.buf.len() > READ_CHUNK {
                        self.buf = Vec::new();
                    }
                }
                return Ok(Some(record));
            }
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.end == self.buf.len() {
                let grown = (self.buf.len() * 2).clamp(READ_CHUNK, self.max.max(READ_CHUNK));
                if grown <= self.buf.len() {
                    // Cannot happen: record_len refuses a record longer than max.
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "record too long",
                    ));
                }
                self.buf.resize(grown, 0);
            }
            let n = self.inner.read(&mut self.buf[self.end..]).await?;
            if n == 0 {
                return if self.end == 0 {
                    Ok(None)
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the stream ended inside an RPC record",
                    ))
                };
            }
            self.end += n;
        }
    }

    /// The stream and the bytes read from it but not yet returned.
    pub fn into_parts(self) -> (R, Vec<u8>) {
        let rest = self.buf[self.start..self.end].to_vec();
        (self.inner, rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frag(last: bool, body: &[u8]) -> Vec<u8> {
        let mut v = ((body.len() as u32) | if last { LAST_FRAGMENT } else { 0 })
            .to_be_bytes()
            .to_vec();
        v.extend_from_slice(body);
        v
    }

    fn words(ws: &[u32]) -> Vec<u8> {
        ws.iter().flat_map(|w| w.to_be_bytes()).collect()
    }

    /// A reply as a server would write it: accepted, AUTH_NONE verifier, `rest` after.
    fn accepted(xid: u32, accept_stat: u32, rest: &[u8]) -> Vec<u8> {
        let mut b = words(&[xid, REPLY, 0, 0, 0, accept_stat]);
        b.extend_from_slice(rest);
        b
    }

    #[test]
    fn the_bind_call_is_the_documented_xdr() {
        let client = ClientId {
            id: *b"0123456789abcdef",
            incarnation: 0x0102030405060708,
        };
        let call = bind_call(7, &client);
        assert_eq!(record_len(&call, MAX_RECORD), Ok(Some(call.len())));
        assert_eq!(record_head(&call), Some((7, CALL)));
        let body = record_body(&call);
        let mut want = words(&[7, 0, 2, 400123, 1, 2, 0, 0, 0, 0, 16]);
        want.extend_from_slice(b"0123456789abcdef");
        want.extend_from_slice(&words(&[8]));
        want.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(body, want);
    }

    #[test]
    fn a_ready_reply_gives_the_partition_and_the_servers_scale_up_figures() {
        let mut rest = words(&[3]);
        rest.extend_from_slice(&[0xab; 64]);
        rest.extend_from_slice(&words(&[4, 10, 200, 300]));
        let reply = parse_bind_reply(&accepted(9, 0, &rest), 9).unwrap();
        assert_eq!(reply.bind, Bind::Ready(PartitionId([0xab; 64])));
        assert_eq!(
            reply.scale_up,
            ScaleUp {
                max_connections: 4,
                threshold_bytes_per_sec: 10_000,
                breached: Duration::from_millis(200),
                lookback: Duration::from_millis(300),
            }
        );
        assert_eq!(PartitionId([0xab; 64]).to_string(), "ab".repeat(64));
    }

    #[test]
    fn zero_figures_take_efs_proxys_defaults_and_a_huge_count_is_capped() {
        assert_eq!(ScaleUp::from_wire(0, 0, 0, 0), ScaleUp::DEFAULT);
        assert_eq!(ScaleUp::from_wire(-1, -5, i32::MIN, 0), ScaleUp::DEFAULT);
        assert_eq!(
            ScaleUp::from_wire(i32::MAX, 1, 1, 1).max_connections,
            MAX_CONNECTIONS_CAP
        );
        assert_eq!(ScaleUp::DEFAULT.threshold_bytes_per_sec, 314_572_000);
    }

    #[test]
    fn knfsds_prog_unavail_and_other_errors_are_refusals_and_junk_is_garbage() {
        assert_eq!(
            parse_bind_reply(&accepted(1, 1, &[]), 1),
            Err(BindError::Refused(RpcRefusal::ProgUnavail))
        );
        assert_eq!(
            parse_bind_reply(&accepted(1, 2, &words(&[4, 4])), 1),
            Err(BindError::Refused(RpcRefusal::ProgMismatch {
                low: 4,
                high: 4
            }))
        );
        assert_eq!(
            parse_bind_reply(&words(&[1, REPLY, 1, 0, 2, 2]), 1),
            Err(BindError::Refused(RpcRefusal::Denied))
        );
        assert!(matches!(
            parse_bind_reply(&accepted(2, 1, &[]), 1),
            Err(BindError::Garbage(_))
        ));
        assert!(matches!(
            parse_bind_reply(&words(&[1, CALL]), 1),
            Err(BindError::Garbage(_))
        ));
        // Cut anywhere: an error, never a panic.
        let mut rest = words(&[3]);
        rest.extend_from_slice(&[1; 64]);
        rest.extend_from_slice(&words(&[5, 1, 1, 1]));
        let full = accepted(1, 0, &rest);
        for cut in 0..full.len() {
            assert!(parse_bind_reply(&full[..cut], 1).is_err(), "cut at {cut}");
        }
        assert!(parse_bind_reply(&full, 1).is_ok());
    }

    #[test]
    fn records_are_framed_across_fragments_and_bounded() {
        let mut rec = frag(false, &[0, 0, 0, 5]);
        rec.extend(frag(false, &[]));
        rec.extend(frag(true, &[0, 0, 0, 1, 9, 9]));
        for cut in 0..rec.len() {
            assert_eq!(
                record_len(&rec[..cut], MAX_RECORD),
                Ok(None),
                "cut at {cut}"
            );
        }
        let mut two = rec.clone();
        two.extend(frag(true, b"next"));
        assert_eq!(record_len(&two, MAX_RECORD), Ok(Some(rec.len())));
        assert_eq!(record_head(&rec), Some((5, 1)));
        assert_eq!(record_body(&rec), [0, 0, 0, 5, 0, 0, 0, 1, 9, 9]);
        assert_eq!(record_head(&frag(true, &[1, 2, 3])), None);
        // A header announcing more than the limit fails before the bytes come.
        let huge = (LAST_FRAGMENT | 0x7fff_ffff).to_be_bytes();
        assert_eq!(
            record_len(&huge, MAX_RECORD),
            Err(RecordError::TooLarge { limit: MAX_RECORD })
        );
        assert_eq!(
            record_len(&frag(true, &[0; 100]), 50),
            Err(RecordError::TooLarge { limit: 50 })
        );
    }

    #[tokio::test]
    async fn the_reader_returns_whole_records_and_keeps_what_follows() {
        let mut stream = frag(true, &[0, 0, 0, 1, 0, 0, 0, 0]);
        let mut big = frag(false, &vec![7u8; 200_000]);
        big.extend(frag(true, &[8u8; 3]));
        stream.extend_from_slice(&big);
        stream.extend_from_slice(&[0x80, 0, 0, 9, 1, 2]); // cut short
        let mut r = RecordReader::new(&stream[..], MAX_RECORD);
        assert_eq!(r.next().await.unwrap().unwrap(), stream[..12]);
        assert_eq!(r.next().await.unwrap().unwrap(), big);
        let err = r.next().await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);

        let mut r = RecordReader::new(&stream[..], MAX_RECORD);
        r.next().await.unwrap();
        let (_, rest) = r.into_parts();
        assert!(rest.len() <= stream.len() - 12);
        let mut empty = RecordReader::new(&[][..], MAX_RECORD);
        assert!(empty.next().await.unwrap().is_none());
    }
}
