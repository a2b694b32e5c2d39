//! A fake EFS's side of partition binding: the AWS-private ONC RPC program 400123
//! (version 1, procedure 2 `bind_client_to_partition`), as a server decodes the call
//! and answers it. One home for every fake that speaks it: the host-side multiplexing
//! tests (`tunnel/tests/multiplexing.rs`) and `efs-fake-efs` in the e2e guest.
//!
//! Written from the protocol description (amazon-efs-utils' `awsfile_prot.x`), not with
//! the tunnel's own encoder and parser (`tunnel/src/partition.rs`), so that the two
//! check each other; and so that this dev-only crate does not depend on `efs-tunnel`,
//! which depends on it for its tests.
//!
//! * The call: an RPC call header (`xid, CALL, rpcvers 2, prog, vers, proc`, AUTH_NONE
//!   credential and verifier) and `ProxyIdentifier { opaque identifier<16>; opaque
//!   incarnation<8>; }`.
//! * The reply: an accepted `SUCCESS` reply, then `BindResponse` (a union on
//!   `RETRY = 0, RETRY_LATER = 1, PREFERRED = 2, READY = 3, ERROR = 4`; READY carries a
//!   64-byte partition id) and `ScaleUpConfig`, four signed ints.

pub const PROGRAM: u32 = 400123;
pub const VERSION: u32 = 1;
pub const PROC_BIND_CLIENT_TO_PARTITION: u32 = 2;
pub const PARTITION_ID_LEN: usize = 64;
/// The last-fragment bit of a record marking header (RFC 5531 section 11).
pub const LAST_FRAGMENT: u32 = 0x8000_0000;
const CALL: u32 = 0;
const REPLY: u32 = 1;
/// `BindResponse`'s READY arm.
const READY: u32 = 3;

/// A decoded `bind_client_to_partition` call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindCall {
    pub xid: u32,
    /// `ProxyIdentifier.identifier`: the client's id (16 bytes from efs-proxy and ours).
    pub client_id: Vec<u8>,
    /// `ProxyIdentifier.incarnation`: which kernel connection of that client.
    pub incarnation: Vec<u8>,
}

/// `ScaleUpConfig` as it goes on the wire (a value that is not positive means "the
/// client's default").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScaleUpFigures {
    pub max_multiplexed_connections: i32,
    pub scale_up_bytes_per_ms_threshold: i32,
    pub scale_up_threshold_breached_duration_ms: i32,
    pub scale_up_lookback_window_size_ms: i32,
}

impl ScaleUpFigures {
    /// What EFS sends (efs-proxy's `DEFAULT_SCALE_UP_CONFIG`): 5 connections, 300 MiB/s
    /// for 1 s over a 1 s window.
    pub const EFS: ScaleUpFigures = ScaleUpFigures {
        max_multiplexed_connections: 5,
        scale_up_bytes_per_ms_threshold: 300 * 1024 * 1024 / 1000,
        scale_up_threshold_breached_duration_ms: 1000,
        scale_up_lookback_window_size_ms: 1000,
    };
}

/// Big-endian XDR words.
pub fn words(ws: &[u32]) -> Vec<u8> {
    ws.iter().flat_map(|w| w.to_be_bytes()).collect()
}

/// `body` as one record of one fragment (header included).
pub fn record(body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(body.len())
        .ok()
        .filter(|l| *l < LAST_FRAGMENT)
        .expect("a record body under 2 GiB");
    let mut r = (LAST_FRAGMENT | len).to_be_bytes().to_vec();
    r.extend_from_slice(body);
    r
}

/// A cursor over XDR; `None` when cut short.
struct Xdr<'a>(&'a [u8]);

impl<'a> Xdr<'a> {
    fn u32(&mut self) -> Option<u32> {
        let (head, rest) = self.0.split_first_chunk::<4>()?;
        self.0 = rest;
        Some(u32::from_be_bytes(*head))
    }

    /// A variable-length opaque of at most `max` bytes, and its padding.
    fn opaque(&mut self, max: usize) -> Option<&'a [u8]> {
        let len = usize::try_from(self.u32()?).ok().filter(|l| *l <= max)?;
        let padded = len.checked_add(3)? & !3;
        if self.0.len() < padded {
            return None;
        }
        let (data, rest) = self.0.split_at(padded);
        self.0 = rest;
        Some(&data[..len])
    }
}

/// The XID, version and procedure of `body` (a record's body, fragments joined) if it is
/// an ONC RPC call to program 400123, any version or procedure.
pub fn program_call(body: &[u8]) -> Option<(u32, u32, u32)> {
    let mut x = Xdr(body);
    let (xid, kind, _rpcvers, prog) = (x.u32()?, x.u32()?, x.u32()?, x.u32()?);
    (kind == CALL && prog == PROGRAM).then_some((xid, x.u32()?, x.u32()?))
}

/// `body` decoded as a call to `bind_client_to_partition` (400123 v1 proc 2); `None` for
/// any other record, or one cut short.
pub fn parse_bind_call(body: &[u8]) -> Option<BindCall> {
    let (xid, vers, proc) = program_call(body)?;
    if (vers, proc) != (VERSION, PROC_BIND_CLIENT_TO_PARTITION) {
        return None;
    }
    // Past the six header words: credential and verifier (flavor, body), then the args.
    let mut x = Xdr(body.get(24..)?);
    for _ in 0..2 {
        x.u32()?;
        x.opaque(400)?;
    }
    let client_id = x.opaque(16)?.to_vec();
    let incarnation = x.opaque(8)?.to_vec();
    Some(BindCall {
        xid,
        client_id,
        incarnation,
    })
}

/// The body of the READY reply to bind call `xid`: partition `partition`, scale-up
/// figures `scale`.
pub fn ready_reply(xid: u32, partition: &[u8; PARTITION_ID_LEN], scale: ScaleUpFigures) -> Vec<u8> {
    // Accepted (0), AUTH_NONE verifier (0, empty), SUCCESS (0), READY.
    let mut b = words(&[xid, REPLY, 0, 0, 0, 0, READY]);
    b.extend_from_slice(partition);
    let s = scale;
    for v in [
        s.max_multiplexed_connections,
        s.scale_up_bytes_per_ms_threshold,
        s.scale_up_threshold_breached_duration_ms,
        s.scale_up_lookback_window_size_ms,
    ] {
        b.extend_from_slice(&v.to_be_bytes());
    }
    b
}

/// The body of a `PROG_UNAVAIL` reply to call `xid`, as knfsd answers program 400123.
pub fn prog_unavail_reply(xid: u32) -> Vec<u8> {
    words(&[xid, REPLY, 0, 0, 0, 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bind call as the protocol description lays it out.
    fn call(xid: u32, vers: u32, proc: u32) -> Vec<u8> {
        let mut b = words(&[xid, CALL, 2, PROGRAM, vers, proc, 0, 0, 0, 0, 16]);
        b.extend_from_slice(b"0123456789abcdef");
        b.extend_from_slice(&words(&[8]));
        b.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 7]);
        b
    }

    #[test]
    fn a_bind_call_is_decoded_and_anything_else_is_not_one() {
        assert_eq!(
            parse_bind_call(&call(9, 1, 2)),
            Some(BindCall {
                xid: 9,
                client_id: b"0123456789abcdef".to_vec(),
                incarnation: vec![0, 0, 0, 0, 0, 0, 0, 7],
            })
        );
        // Program 400123, but another version or procedure.
        assert_eq!(parse_bind_call(&call(9, 2, 2)), None);
        assert_eq!(parse_bind_call(&call(9, 1, 1)), None);
        assert_eq!(program_call(&call(9, 1, 1)), Some((9, 1, 1)));
        // An NFS call (program 100003), and a reply.
        assert_eq!(program_call(&words(&[9, CALL, 2, 100003, 4, 1])), None);
        assert_eq!(program_call(&words(&[9, REPLY, 2, PROGRAM, 1, 2])), None);
        // Cut anywhere: not a call, never a panic.
        let full = call(3, 1, 2);
        for cut in 0..full.len() {
            assert_eq!(parse_bind_call(&full[..cut]), None, "cut at {cut}");
        }
    }

    #[test]
    fn the_ready_reply_is_the_documented_xdr() {
        let reply = ready_reply(5, &[0xab; 64], ScaleUpFigures::EFS);
        let mut want = words(&[5, 1, 0, 0, 0, 0, 3]);
        want.extend_from_slice(&[0xab; 64]);
        want.extend_from_slice(&words(&[5, 314_572, 1000, 1000]));
        assert_eq!(reply, want);
        assert_eq!(prog_unavail_reply(5), words(&[5, 1, 0, 0, 0, 1]));
        let rec = record(&reply);
        // Seven header and union words, the partition id, four figures.
        assert_eq!(
            rec[..4],
            (LAST_FRAGMENT | (7 * 4 + 64 + 4 * 4)).to_be_bytes()
        );
        assert_eq!(rec[4..], reply);
    }
}
