//! Who is on the other end of a local connection, so that only root may use the tunnel.
//!
//! The tunnel's port is open to every local user, and what comes through it reaches the
//! mount target inside the mount's TLS session, where NFS trusts AUTH_SYS credentials
//! (uid 0 included). The mount uses `noresvport`, so a privileged source port proves
//! nothing. The kernel's NFS client connects with kernel sockets, which are owned by
//! uid 0: so the tunnel looks up the socket at the other end of each accepted
//! connection (by its exact address pair) and serves it only if root owns it.
//!
//! The lookup asks the kernel through netlink `sock_diag` (one request, one answer) and
//! falls back to reading `/proc/net/tcp` and `/proc/net/tcp6` where netlink is not there
//! (no `tcp_diag` module, or a sandbox that forbids netlink). Both parsers are pure
//! functions of the bytes the kernel gave, and never panic.
//!
//! A socket counts as root's only while a process or the kernel still holds it: an
//! orphan (a socket closed by its owner, whose last bytes are still in flight) is listed
//! with uid 0 in both tables, and must not pass for root's, or anyone could connect, send
//! a request, close, and have the tunnel forward it.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{
    recvfrom, sendto, setsockopt, socket, sockopt, AddressFamily, MsgFlags, NetlinkAddr, SockFlag,
    SockProtocol, SockType,
};
use nix::sys::time::TimeVal;

/// The two ends of an accepted connection, as the connecting socket sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoints {
    /// The connecting socket's own address (the accepted socket's peer address).
    pub client: SocketAddr,
    /// The address it connected to (the accepted socket's local address).
    pub server: SocketAddr,
}

impl Endpoints {
    /// Both addresses in their plain form (an IPv4-mapped IPv6 address as IPv4): an IPv4
    /// client of a dual-stack listener has an IPv4 socket.
    fn canonical(self) -> Endpoints {
        let plain = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
        Endpoints {
            client: plain(self.client),
            server: plain(self.server),
        }
    }
}

/// What the kernel says about a TCP socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketInfo {
    pub uid: u32,
    /// The kernel's TCP state number (1 established, 4 FIN-WAIT-1, 5 FIN-WAIT-2, ...).
    pub state: u8,
    /// The socket's inode; 0 when no process holds it any more.
    pub inode: u64,
}

const TCP_ESTABLISHED: u8 = 1;
const TCP_FIN_WAIT1: u8 = 4;
const TCP_FIN_WAIT2: u8 = 5;

impl SocketInfo {
    /// The uid that holds the socket, if anyone does. An established socket is held (a
    /// kernel socket has inode 0). One that has half-closed is held only while it has an
    /// inode: without one it is an orphan or a time-wait entry, which both tables list
    /// with uid 0 whoever made it.
    pub fn holder(&self) -> Option<u32> {
        match self.state {
            TCP_ESTABLISHED => Some(self.uid),
            TCP_FIN_WAIT1 | TCP_FIN_WAIT2 if self.inode != 0 => Some(self.uid),
            _ => None,
        }
    }
}

/// Why a connection was not served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The connecting socket belongs to this user, who is not root.
    NotRoot(u32),
    /// The connecting socket is closed already: no one holds it.
    Orphaned,
    /// No local socket has this address pair: the connection comes from another host, or
    /// its socket is gone.
    NotLocal,
    /// Neither netlink nor `/proc` could answer.
    LookupFailed(String),
}

impl Refusal {
    /// What repeats of this refusal are counted under, for rate-limited logging.
    pub fn log_key(&self) -> Option<u32> {
        match self {
            Refusal::NotRoot(uid) => Some(*uid),
            _ => None,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NotRoot(uid) => write!(f, "its socket belongs to uid {uid}, not root"),
            Refusal::Orphaned => write!(f, "its socket was already closed by its owner"),
            Refusal::NotLocal => write!(f, "no local socket has that address"),
            Refusal::LookupFailed(why) => write!(f, "its owner could not be found: {why}"),
        }
    }
}

/// Serves the connection only if root holds the socket at its other end.
pub fn check(endpoints: Endpoints) -> Result<(), Refusal> {
    match lookup(endpoints.canonical())?.holder() {
        Some(0) => Ok(()),
        Some(uid) => Err(Refusal::NotRoot(uid)),
        None => Err(Refusal::Orphaned),
    }
}

/// Netlink first; `/proc` where netlink gave no answer. "No such socket" (ENOENT) is also
/// what netlink says when `tcp_diag` cannot be loaded, so `/proc` has the last word then.
fn lookup(ep: Endpoints) -> Result<SocketInfo, Refusal> {
    let netlink = match query_netlink(ep) {
        Ok(info) => return Ok(info),
        Err(e) => e,
    };
    match query_proc(ep) {
        Ok(Some(info)) => Ok(info),
        Ok(None) => Err(Refusal::NotLocal),
        Err(e) => Err(Refusal::LookupFailed(format!(
            "netlink: {netlink}; /proc/net/tcp: {e}"
        ))),
    }
}

/// Why the netlink lookup gave no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiagError {
    /// The socket could not be opened, or the request sent, or the answer read.
    Io(Errno),
    /// The kernel answered with this error (ENOENT: no such socket, or no `tcp_diag`).
    Kernel(Errno),
    /// The answer was not a well-formed `sock_diag` message for our request.
    Malformed(&'static str),
    /// The answer describes another socket than the one asked about.
    Mismatch,
}

impl fmt::Display for DiagError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DiagError::Io(e) => write!(f, "{e}"),
            DiagError::Kernel(e) => write!(f, "the kernel answered {e}"),
            DiagError::Malformed(what) => write!(f, "malformed answer: {what}"),
            DiagError::Mismatch => write!(f, "the answer is about another socket"),
        }
    }
}

// From <linux/netlink.h>, <linux/sock_diag.h> and <linux/inet_diag.h>.
const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// The request: the netlink header, then `struct inet_diag_req_v2` (family, protocol,
/// ext, pad, states, then the socket id).
const REQUEST_LEN: usize = NLMSG_HDRLEN + 8 + SOCKID_LEN;
/// `struct inet_diag_sockid`: sport, dport (big-endian), src, dst (4 words each), if,
/// cookie (2 words).
const SOCKID_LEN: usize = 48;
/// `struct inet_diag_msg`: family, state, timer, retrans, the socket id, then expires,
/// rqueue, wqueue, uid, inode (native 32-bit words).
const MSG_LEN: usize = 4 + SOCKID_LEN + 20;
const MSG_UID: usize = 4 + SOCKID_LEN + 12;
const MSG_INODE: usize = 4 + SOCKID_LEN + 16;
const NETLINK_TIMEOUT: Duration = Duration::from_secs(1);

/// The `SOCK_DIAG_BY_FAMILY` request for the TCP socket whose own address is
/// `ep.client` and whose peer is `ep.server` (the kernel's exact lookup, not a dump).
pub fn diag_request(ep: Endpoints, seq: u32) -> [u8; REQUEST_LEN] {
    let mut m = [0u8; REQUEST_LEN];
    m[0..4].copy_from_slice(&(REQUEST_LEN as u32).to_ne_bytes());
    m[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    m[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    m[8..12].copy_from_slice(&seq.to_ne_bytes());
    let r = &mut m[NLMSG_HDRLEN..];
    r[0] = family(ep.client);
    r[1] = nix::libc::IPPROTO_TCP as u8;
    r[4..8].copy_from_slice(&u32::MAX.to_ne_bytes()); // every state
    let id = &mut r[8..];
    id[0..2].copy_from_slice(&ep.client.port().to_be_bytes());
    id[2..4].copy_from_slice(&ep.server.port().to_be_bytes());
    put_addr(&mut id[4..20], ep.client.ip());
    put_addr(&mut id[20..36], ep.server.ip());
    id[40..48].copy_from_slice(&[0xff; 8]); // INET_DIAG_NOCOOKIE
    m
}

fn family(a: SocketAddr) -> u8 {
    match a {
        SocketAddr::V4(_) => nix::libc::AF_INET as u8,
        SocketAddr::V6(_) => nix::libc::AF_INET6 as u8,
    }
}

fn put_addr(out: &mut [u8], ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => out[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => out[..16].copy_from_slice(&v6.octets()),
    }
}

/// Reads the kernel's answer to [`diag_request`] with sequence number `seq`.
pub fn parse_diag_reply(reply: &[u8], seq: u32, ep: Endpoints) -> Result<SocketInfo, DiagError> {
    let mut rest = reply;
    while !rest.is_empty() {
        let len = u32_at(rest, 0).ok_or(DiagError::Malformed("short header"))? as usize;
        let kind = u16_at(rest, 4).ok_or(DiagError::Malformed("short header"))?;
        let msg_seq = u32_at(rest, 8).ok_or(DiagError::Malformed("short header"))?;
        if len < NLMSG_HDRLEN || len > rest.len() {
            return Err(DiagError::Malformed("bad message length"));
        }
        let body = &rest[NLMSG_HDRLEN..len];
        rest = rest.get(len.next_multiple_of(4)..).unwrap_or_default();
        if msg_seq != seq {
            continue;
        }
        match kind {
            NLMSG_ERROR => {
                let code = u32_at(body, 0).ok_or(DiagError::Malformed("short error"))? as i32;
                if code != 0 {
                    return Err(DiagError::Kernel(Errno::from_raw(code.saturating_neg())));
                }
            }
            NLMSG_DONE => break,
            SOCK_DIAG_BY_FAMILY => return diag_message(body, ep),
            _ => {}
        }
    }
    Err(DiagError::Kernel(Errno::ENOENT))
}

fn diag_message(body: &[u8], ep: Endpoints) -> Result<SocketInfo, DiagError> {
    if body.len() < MSG_LEN {
        return Err(DiagError::Malformed("short inet_diag_msg"));
    }
    let id = &body[4..4 + SOCKID_LEN];
    let addr = |at: usize, port: &[u8]| -> Option<SocketAddr> {
        let port = u16::from_be_bytes([port[0], port[1]]);
        let ip = match i32::from(body[0]) {
            nix::libc::AF_INET => {
                IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(&id[at..at + 4]).ok()?))
            }
            nix::libc::AF_INET6 => {
                IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&id[at..at + 16]).ok()?))
            }
            _ => return None,
        };
        Some(SocketAddr::new(ip.to_canonical(), port))
    };
    let found = Endpoints {
        client: addr(4, &id[0..2]).ok_or(DiagError::Malformed("unknown address family"))?,
        server: addr(20, &id[2..4]).ok_or(DiagError::Malformed("unknown address family"))?,
    };
    if found != ep.canonical() {
        return Err(DiagError::Mismatch);
    }
    Ok(SocketInfo {
        uid: u32_at(body, MSG_UID).ok_or(DiagError::Malformed("short inet_diag_msg"))?,
        state: body[1],
        inode: u64::from(
            u32_at(body, MSG_INODE).ok_or(DiagError::Malformed("short inet_diag_msg"))?,
        ),
    })
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

/// One `sock_diag` round trip on a fresh netlink socket. The kernel answers an exact
/// lookup before `sendto` returns, so the receive timeout is only a safety net.
fn query_netlink(ep: Endpoints) -> Result<SocketInfo, DiagError> {
    static SEQ: AtomicU32 = AtomicU32::new(1);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkSockDiag,
    )
    .map_err(DiagError::Io)?;
    let timeout = TimeVal::new(NETLINK_TIMEOUT.as_secs() as _, 0);
    setsockopt(&fd, sockopt::ReceiveTimeout, &timeout).map_err(DiagError::Io)?;
    let request = diag_request(ep, seq);
    sendto(
        fd.as_raw_fd(),
        &request,
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )
    .map_err(DiagError::Io)?;
    let mut buf = [0u8; 4096];
    let (n, from) = recvfrom::<NetlinkAddr>(fd.as_raw_fd(), &mut buf).map_err(DiagError::Io)?;
    // Only the kernel (port 0) answers; another process could not send here without
    // CAP_NET_ADMIN, but an answer from anyone else is not taken in any case.
    if from.is_none_or(|a| a.pid() != 0) {
        return Err(DiagError::Malformed(
            "the answer does not come from the kernel",
        ));
    }
    parse_diag_reply(&buf[..n], seq, ep)
}

/// The `/proc` fallback: `/proc/net/tcp` for IPv4, then `/proc/net/tcp6` (where an IPv6
/// socket connected to an IPv4-mapped address is listed).
fn query_proc(ep: Endpoints) -> io::Result<Option<SocketInfo>> {
    let files: &[&str] = match ep.client {
        SocketAddr::V4(_) => &["/proc/net/tcp", "/proc/net/tcp6"],
        SocketAddr::V6(_) => &["/proc/net/tcp6"],
    };
    let mut first_error = None;
    for file in files {
        match std::fs::read_to_string(file) {
            Ok(text) => {
                if let Some(info) = parse_proc_net_tcp(&text, ep) {
                    return Ok(Some(info));
                }
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        // /proc/net/tcp6 is missing where IPv6 is off: not finding the socket is an answer.
        Some(e) if files.len() == 1 || e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(None),
    }
}

/// Finds the socket whose own address is `ep.client` and whose peer is `ep.server` in the
/// text of `/proc/net/tcp` or `/proc/net/tcp6`. Lines that do not parse are skipped.
pub fn parse_proc_net_tcp(text: &str, ep: Endpoints) -> Option<SocketInfo> {
    let want = ep.canonical();
    text.lines().skip(1).find_map(|line| {
        let mut f = line.split_whitespace();
        let _slot = f.next()?;
        let local = proc_addr(f.next()?)?;
        let remote = proc_addr(f.next()?)?;
        let state = u8::from_str_radix(f.next()?, 16).ok()?;
        // tx_queue:rx_queue, tr:tm->when, retrnsmt
        let mut f = f.skip(3);
        let uid = f.next()?.parse().ok()?;
        let _timeout = f.next()?;
        let inode = f.next()?.parse().ok()?;
        let found = Endpoints {
            client: local,
            server: remote,
        };
        (found == want).then_some(SocketInfo { uid, state, inode })
    })
}

/// `0100007F:0801` or a 32-digit IPv6 form: each 32-bit word of the address as the
/// kernel holds it in memory, printed as a native-endian hex number; the port in hex.
fn proc_addr(field: &str) -> Option<SocketAddr> {
    let (addr, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let hex = addr.get(i * 8..i * 8 + 8)?;
        Some(u32::from_str_radix(hex, 16).ok()?.to_ne_bytes())
    };
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut octets = [0u8; 16];
            for i in 0..4 {
                octets[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip.to_canonical(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(client: &str, server: &str) -> Endpoints {
        Endpoints {
            client: client.parse().unwrap(),
            server: server.parse().unwrap(),
        }
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    // Real answers of a 6.18 kernel to exact lookups of sockets on 127.0.0.1 (port
    // 49309 listening): one held by uid 65534, one closed by its owner right after
    // sending (now a FIN-WAIT-2 time-wait entry), one held by root, and no such socket.
    const NOBODY_REPLY: &str = "7c000000140000002a000000d6510000020100009af4c09d7f0000010000000000000000000000007f000001000000000000000000000000000000000110000000000000000000000000000000000000feff00004fdd0100050008000000000008000f00000000000c00150001000000000000000600160052000000";
    const ORPHAN_REPLY: &str = "60000000140000002b000000d6510000020503009af6c09d7f0000010000000000000000000000007f00000100000000000000000000000000000000021000000000000060e900000000000000000000000000000000000008000f0000000000";
    const ROOT_REPLY: &str = "7c0000001400000007000000054f000002010000ed5893ff7f0000010000000000000000000000007f00000100000000000000000000000000000000010000000000000000000000000000000000000000000000ccdc0100050008000000000008000f00000000000c00150001000000000000000600160052000000";
    const NO_SUCH_SOCKET: &str = "5c0000000200000008000000054f0000feffffff4800000014000100080000000000000002060000ffffffff000193ff7f0000010000000000000000000000007f00000100000000000000000000000000000000ffffffffffffffff";

    #[test]
    fn the_request_is_laid_out_as_the_kernel_expects() {
        // Built independently with Python's struct module from <linux/inet_diag.h>.
        let v4 = "48000000140001002a0000000000000002060000ffffffff9af4c09d7f0000010000000000000000000000007f00000100000000000000000000000000000000ffffffffffffffff";
        let v6 = "480000001400010005000000000000000a060000ffffffffbf34e90f000000000000000000000000000000010000000000000000000000000000000100000000ffffffffffffffff";
        assert_eq!(
            diag_request(ep("127.0.0.1:39668", "127.0.0.1:49309"), 42).to_vec(),
            hex(v4)
        );
        assert_eq!(
            diag_request(ep("[::1]:48948", "[::1]:59663"), 5).to_vec(),
            hex(v6)
        );
    }

    #[test]
    fn netlink_answers_name_the_holder_and_an_orphan_has_none() {
        let nobody = ep("127.0.0.1:39668", "127.0.0.1:49309");
        let info = parse_diag_reply(&hex(NOBODY_REPLY), 42, nobody).unwrap();
        assert_eq!((info.uid, info.state, info.inode), (65534, 1, 0x1dd4f));
        assert_eq!(info.holder(), Some(65534));

        let orphan = ep("127.0.0.1:39670", "127.0.0.1:49309");
        let info = parse_diag_reply(&hex(ORPHAN_REPLY), 43, orphan).unwrap();
        assert_eq!((info.uid, info.state, info.inode), (0, 5, 0));
        assert_eq!(
            info.holder(),
            None,
            "a closed socket must not pass for root's"
        );

        let root = ep("127.0.0.1:60760", "127.0.0.1:37887");
        let info = parse_diag_reply(&hex(ROOT_REPLY), 7, root).unwrap();
        assert_eq!(info.holder(), Some(0));

        assert_eq!(
            parse_diag_reply(&hex(NO_SUCH_SOCKET), 8, root),
            Err(DiagError::Kernel(Errno::ENOENT))
        );
    }

    #[test]
    fn an_answer_about_another_socket_or_request_is_not_taken() {
        let other = ep("127.0.0.1:39669", "127.0.0.1:49309");
        assert_eq!(
            parse_diag_reply(&hex(NOBODY_REPLY), 42, other),
            Err(DiagError::Mismatch)
        );
        let nobody = ep("127.0.0.1:39668", "127.0.0.1:49309");
        assert_eq!(
            parse_diag_reply(&hex(NOBODY_REPLY), 41, nobody),
            Err(DiagError::Kernel(Errno::ENOENT)),
            "an answer to another request is skipped"
        );
    }

    #[test]
    fn netlink_parsing_never_panics_on_cut_or_altered_answers() {
        let target = ep("127.0.0.1:39668", "127.0.0.1:49309");
        for sample in [NOBODY_REPLY, ORPHAN_REPLY, ROOT_REPLY, NO_SUCH_SOCKET] {
            let bytes = hex(sample);
            for cut in 0..bytes.len() {
                let _ = parse_diag_reply(&bytes[..cut], 42, target);
            }
            for at in 0..bytes.len() {
                for v in [0u8, 1, 0x7f, 0xff] {
                    let mut b = bytes.clone();
                    b[at] = v;
                    let _ = parse_diag_reply(&b, 42, target);
                }
            }
        }
    }

    // From /proc/net/tcp and /proc/net/tcp6 of the same kernel, with a listener on
    // 127.0.0.1:46507 (B5AB) and clients held by root (8C26) and by uid 65534 (8C3E),
    // one closed by its owner right after sending (8C34), queued accepts (uid 0, inode
    // 0), and a dual-stack listener on [::]:59663 (E90F) with an IPv4 client (DDE0) and
    // an IPv6 one (BF34).
    const PROC_NET_TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:B5AB 00000000:0000 0A 00000000:00000003 00:00000000 00000000     0        0 37635 4 000000008cc1dddc 100 0 0 10 0
   1: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1075 1 00000000abb6ff48 100 0 0 10 0
   2: 0100007F:B5AB 0100007F:8C3E 01 00000000:00000000 00:00000000 00000000     0        0 0 1 0000000016d11e77 20 0 0 10 -1
   3: 0100007F:B5AB 0100007F:8C26 01 00000000:00000000 00:00000000 00000000     0        0 0 1 00000000a7a42a8f 20 0 0 10 -1
   4: 020200C0:CA78 507100CB:01BB 01 00000000:00000000 00:00000000 00000000     0        0 34173 1 00000000f1b9695d 20 4 1 124 148
   5: 0100007F:DDE0 0100007F:E90F 01 00000000:00000000 00:00000000 00000000     0        0 37641 2 0000000049cd3766 20 0 0 10 -1
   6: 0100007F:8C26 0100007F:B5AB 01 00000000:00000000 00:00000000 00000000     0        0 37637 1 00000000b9582605 20 0 0 10 -1
   7: 0100007F:8C34 0100007F:B5AB 05 00000000:00000000 03:00001710 00000000     0        0 0 3 00000000b10ea3d9
   8: 0100007F:8C3E 0100007F:B5AB 01 00000000:00000000 00:00000000 00000000 65534        0 38006 2 00000000cda905e6 20 0 0 10 -1
   9: 0100007F:B5AB 0100007F:8C34 08 00000000:00000002 00:00000000 00000000     0        0 0 1 0000000073504d5b 20 4 28 10 -1
";
    const PROC_NET_TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:E90F 00000000000000000000000000000000:0000 0A 00000000:00000002 00:00000000 00000000     0        0 37636 3 00000000ca9d2ef3 100 0 0 10 0
   1: 0000000000000000FFFF00000100007F:E90F 0000000000000000FFFF00000100007F:DDE0 01 00000000:00000000 00:00000000 00000000     0        0 0 1 000000000627e97f 20 0 0 10 -1
   2: 00000000000000000000000001000000:E90F 00000000000000000000000001000000:BF34 01 00000000:00000000 00:00000000 00000000     0        0 0 1 00000000f8c76f13 20 0 0 10 -1
   3: 00000000000000000000000001000000:BF34 00000000000000000000000001000000:E90F 01 00000000:00000000 00:00000000 00000000     0        0 37640 2 000000007a571f4b 20 0 0 10 -1
";

    #[test]
    fn proc_net_tcp_names_the_holder_of_the_connecting_socket() {
        let find = |client: &str, server: &str| {
            parse_proc_net_tcp(PROC_NET_TCP, ep(client, server)).map(|i| i.holder())
        };
        assert_eq!(
            find("127.0.0.1:35902", "127.0.0.1:46507"),
            Some(Some(65534))
        );
        assert_eq!(find("127.0.0.1:35878", "127.0.0.1:46507"), Some(Some(0)));
        assert_eq!(
            find("127.0.0.1:35892", "127.0.0.1:46507"),
            Some(None),
            "the closed socket is listed as uid 0 and must not pass for root's"
        );
        assert_eq!(find("127.0.0.1:35903", "127.0.0.1:46507"), None);
        let info = parse_proc_net_tcp(PROC_NET_TCP, ep("127.0.0.1:35902", "127.0.0.1:46507"));
        assert_eq!(
            info,
            Some(SocketInfo {
                uid: 65534,
                state: 1,
                inode: 38006
            })
        );
        // An IPv4 client of the dual-stack listener, which the listener sees as
        // ::ffff:127.0.0.1, is an IPv4 socket.
        let mapped = ep("[::ffff:127.0.0.1]:56800", "[::ffff:127.0.0.1]:59663");
        assert_eq!(
            parse_proc_net_tcp(PROC_NET_TCP, mapped).map(|i| i.inode),
            Some(37641)
        );
        let v6 = ep("[::1]:48948", "[::1]:59663");
        assert_eq!(
            parse_proc_net_tcp(PROC_NET_TCP6, v6).map(|i| i.inode),
            Some(37640)
        );
        // IPv4-mapped entries of tcp6 match the plain IPv4 pair.
        let accepted = ep("127.0.0.1:59663", "127.0.0.1:56800");
        assert_eq!(
            parse_proc_net_tcp(PROC_NET_TCP6, accepted).map(|i| i.uid),
            Some(0)
        );
    }

    #[test]
    fn proc_parsing_never_panics_on_odd_text() {
        let target = ep("127.0.0.1:35902", "127.0.0.1:46507");
        for text in [PROC_NET_TCP, PROC_NET_TCP6] {
            for cut in 0..text.len() {
                if let Some(t) = text.get(..cut) {
                    let _ = parse_proc_net_tcp(t, target);
                }
            }
        }
        for odd in [
            "",
            "\n",
            "x\n 0: :",
            "h\n0: 0100007F:8C3E 0100007F:B5AB zz",
            "h\n0: é0100007F:8C3E",
        ] {
            assert_eq!(parse_proc_net_tcp(odd, target), None);
        }
    }

    /// A live connection on this machine, and both its sockets (kept open).
    fn live_connection(listen: &str) -> Option<(Endpoints, [std::net::TcpStream; 2])> {
        let listener = std::net::TcpListener::bind(listen).ok()?;
        let client = std::net::TcpStream::connect(listener.local_addr().ok()?).ok()?;
        let (accepted, peer) = listener.accept().ok()?;
        let ep = Endpoints {
            client: peer,
            server: accepted.local_addr().ok()?,
        };
        Some((ep, [client, accepted]))
    }

    #[test]
    fn both_lookups_find_a_live_socket_and_its_owner() {
        let me = nix::unistd::geteuid().as_raw();
        let mut cases = vec![live_connection("127.0.0.1:0").unwrap()];
        match live_connection("[::1]:0") {
            Some(v6) => cases.push(v6),
            None => eprintln!("no IPv6 loopback here: IPv4 only"),
        }
        for &(ep, _) in &cases {
            let by_netlink = query_netlink(ep).unwrap();
            let by_proc = query_proc(ep).unwrap().unwrap();
            assert_eq!(by_netlink.uid, me, "{ep:?}");
            assert_eq!(by_netlink.holder(), Some(me), "{ep:?}");
            assert_eq!(
                (by_proc.uid, by_proc.inode),
                (me, by_netlink.inode),
                "{ep:?}"
            );
            let expected = if me == 0 {
                Ok(())
            } else {
                Err(Refusal::NotRoot(me))
            };
            assert_eq!(check(ep), expected);
        }
        // Nobody on this machine has this pair.
        let gone = Endpoints {
            client: SocketAddr::new(cases[0].0.client.ip(), 1),
            ..cases[0].0
        };
        assert_eq!(check(gone), Err(Refusal::NotLocal));
    }
}
