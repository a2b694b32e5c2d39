//! What the kernel says about NFS mounts and the transports they really use: the mount
//! table (`/proc/self/mountinfo`) and the NFS client's own tables (`/proc/fs/nfsfs/servers`
//! and `/proc/fs/nfsfs/volumes`), read by the watchdog, the status command and `mount.efs`.
//!
//! Why the NFS client's tables and not only the mount table: an NFSv4.1 client that finds
//! the same server (same server owner) behind a second mount's address reuses the
//! transport it already has (client ID trunking). Three mounts of one file system through
//! three tunnels then show three `port=` values in mountinfo, but all their traffic goes
//! over the first mount's tunnel, and unmounting that first mount must not stop it.
//! `volumes` names, per superblock (`MAJ:MIN`, the third mountinfo field), the address and
//! port of the client it uses; `servers` lists every client. A tunnel is in use while any
//! of the three names its port.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

/// Port -> the mountpoints whose traffic goes through it. A port only the kernel's client
/// table names (a client no mountinfo line leads to, or one still being set up) is in use
/// with no mountpoint listed.
pub type PortsInUse = BTreeMap<u16, Vec<String>>;

/// A superblock's device number, `MAJ:MIN` in mountinfo and `volumes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dev {
    pub major: u32,
    pub minor: u32,
}

impl Dev {
    fn parse(s: &str) -> Option<Dev> {
        let (major, minor) = s.split_once(':')?;
        Some(Dev {
            major: major.parse().ok()?,
            minor: minor.parse().ok()?,
        })
    }
}

/// One NFS line of the mount table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NfsMount {
    pub mountpoint: String,
    /// `127.0.0.1:/`, `fs-….efs.….amazonaws.com:/path`, `10.0.0.5:/`
    pub source: String,
    /// The `port=` option, if the kernel shows one (it hides 2049). For a mount that
    /// shares another one's client, this is the port it asked for, not the one it uses:
    /// see [`KernelView::transport_port`].
    pub port: Option<u16>,
    /// Served through a local tunnel (127.0.0.1).
    pub local: bool,
    pub dev: Option<Dev>,
}

/// A line of `/proc/fs/nfsfs/servers` or `volumes`: where an NFS client sends its traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transport {
    /// NFS version (4).
    pub version: u32,
    /// The server address as the kernel prints it: 8 hex digits for IPv4
    /// (`7f000001`), 32 for IPv6.
    pub addr: String,
    pub port: u16,
}

impl Transport {
    /// Goes to a local tunnel: 127.0.0.1, where every tunnel listens.
    pub fn local(&self) -> bool {
        self.addr.eq_ignore_ascii_case("7f000001")
    }

    /// `v4 7f000001 4e51 ...`: the version, hex address and hex port that open both
    /// files' lines. None for the header and anything torn.
    fn parse(fields: &mut std::str::SplitWhitespace<'_>) -> Option<Transport> {
        let version = fields.next()?.strip_prefix('v')?.parse().ok()?;
        let addr = fields.next()?;
        if addr.is_empty() || !addr.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let port = u16::from_str_radix(fields.next()?, 16).ok()?;
        Some(Transport {
            version,
            addr: addr.to_string(),
            port,
        })
    }
}

/// A line of `/proc/fs/nfsfs/volumes`: one superblock and the client it uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub transport: Transport,
    pub dev: Dev,
}

/// The kernel's view, read at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelView {
    pub mounts: Vec<NfsMount>,
    /// `servers`: one line per NFS client (transport) that is ready.
    pub clients: Vec<Transport>,
    /// `volumes`: one line per superblock.
    pub volumes: Vec<Volume>,
}

impl KernelView {
    /// Reads the mount table and the NFS client's tables in `nfsfs`. The tables do not
    /// exist until the NFS client module is loaded, and then there is no NFS mount to
    /// know about: missing tables read as empty. Any other error is an error, so that a
    /// caller never mistakes "cannot tell" for "not in use".
    pub fn read(mountinfo: &Path, nfsfs: &Path) -> io::Result<KernelView> {
        let table = std::fs::read_to_string(mountinfo)?;
        let optional = |name: &str| match std::fs::read_to_string(nfsfs.join(name)) {
            Ok(text) => Ok(text),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
            Err(e) => Err(io::Error::new(
                e.kind(),
                format!("{}: {e}", nfsfs.join(name).display()),
            )),
        };
        Ok(KernelView::parse(
            &table,
            &optional("servers")?,
            &optional("volumes")?,
        ))
    }

    pub fn parse(mountinfo: &str, servers: &str, volumes: &str) -> KernelView {
        KernelView {
            mounts: nfs_mounts(mountinfo),
            clients: servers
                .lines()
                .filter_map(|l| Transport::parse(&mut l.split_whitespace()))
                .collect(),
            volumes: parse_volumes(volumes),
        }
    }

    /// The local port the kernel really sends this mount's traffic to: its superblock's
    /// client in `volumes`, else (tables missing) its own `port=`. None for a mount not
    /// served by a local tunnel.
    pub fn transport_port(&self, m: &NfsMount) -> Option<u16> {
        let via_volume = m
            .dev
            .and_then(|dev| self.volumes.iter().find(|v| v.dev == dev))
            .map(|v| &v.transport);
        match via_volume {
            Some(t) if t.local() => Some(t.port),
            Some(_) => None,
            None if m.local => m.port,
            None => None,
        }
    }

    /// The topmost local NFS mount at `mountpoint` (mounts stack; the last line is on top).
    pub fn local_mount_at(&self, mountpoint: &str) -> Option<&NfsMount> {
        self.mounts
            .iter()
            .rev()
            .find(|m| m.local && m.mountpoint == mountpoint)
    }

    /// Every tunnel port the kernel references, with the mountpoints it carries. A port
    /// counts when a mountinfo line names it (`port=`), when a superblock's client uses
    /// it, or when a client of the NFS client's table is connected to it.
    pub fn ports_in_use(&self) -> PortsInUse {
        let mut ports = PortsInUse::new();
        for m in &self.mounts {
            if let (true, Some(port)) = (m.local, m.port) {
                ports.entry(port).or_default();
            }
            if let Some(port) = self.transport_port(m) {
                ports.entry(port).or_default().push(m.mountpoint.clone());
            }
        }
        for t in self
            .clients
            .iter()
            .chain(self.volumes.iter().map(|v| &v.transport))
        {
            if t.local() {
                ports.entry(t.port).or_default();
            }
        }
        for list in ports.values_mut() {
            list.dedup();
        }
        ports
    }
}

/// Reads and parses the mount table and the NFS client's tables: the tunnel ports in use.
pub fn read(mountinfo: &Path, nfsfs: &Path) -> io::Result<PortsInUse> {
    KernelView::read(mountinfo, nfsfs).map(|v| v.ports_in_use())
}

/// `/proc/fs/nfsfs/volumes`: `NV SERVER PORT DEV FSID FSC`, e.g.
/// `v4 7f000001 4e51 0:25 0:0 no`.
fn parse_volumes(text: &str) -> Vec<Volume> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let transport = Transport::parse(&mut f)?;
            let dev = Dev::parse(f.next()?)?;
            Some(Volume { transport, dev })
        })
        .collect()
}

/// The NFS mounts of a mount table:
/// `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS`.
pub fn nfs_mounts(text: &str) -> Vec<NfsMount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mut r = right.split_whitespace();
            let (fstype, source, superopts) = (r.next()?, r.next()?, r.next()?);
            if !fstype.starts_with("nfs") {
                return None;
            }
            let mut l = left.split_whitespace();
            let dev = l.nth(2).and_then(Dev::parse);
            Some(NfsMount {
                mountpoint: unescape(l.nth(1)?),
                source: source.to_string(),
                port: superopts
                    .split(',')
                    .find_map(|o| o.strip_prefix("port="))
                    .and_then(|p| p.parse().ok()),
                local: source.starts_with("127.0.0.1:")
                    || superopts.split(',').any(|o| o == "addr=127.0.0.1"),
                dev,
            })
        })
        .collect()
}

/// The kernel writes spaces and a few other bytes in paths as octal escapes (`\040`).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        // `\ooo` up to `\377`, one byte; anything else is kept as it is.
        if b[i] == b'\\'
            && i + 3 < b.len()
            && (b'0'..=b'3').contains(&b[i + 1])
            && b[i + 2..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 0:21 / / rw,relatime - ext4 /dev/ubda rw
29 16 0:25 / /mnt/efs rw,relatime - nfs4 127.0.0.1:/ rw,vers=4.1,rsize=1048576,hard,noresvport,proto=tcp,port=20357,timeo=600,addr=127.0.0.1
30 16 0:25 / /mnt/my\\040efs rw,relatime - nfs4 127.0.0.1:/sub rw,vers=4.1,port=20357,addr=127.0.0.1
31 16 0:26 / /mnt/other rw,relatime - nfs4 127.0.0.1:/ rw,vers=4.1,port=20400,addr=127.0.0.1
32 16 0:27 / /mnt/plain rw,relatime - nfs4 10.0.0.5:/ rw,vers=4.1,addr=10.0.0.5
33 16 0:28 / /mnt/p2 rw,relatime - nfs4 fs-1.efs.us-east-1.amazonaws.com:/ rw,port=20500,addr=10.0.0.6
torn line without separator
";

    #[test]
    fn ports_of_local_nfs_mounts_whatever_the_mountpoint() {
        let p = KernelView::parse(SAMPLE, "", "").ports_in_use();
        assert_eq!(p.keys().copied().collect::<Vec<_>>(), vec![20357, 20400]);
        assert_eq!(
            p[&20357],
            vec!["/mnt/efs".to_string(), "/mnt/my efs".to_string()]
        );
    }

    #[test]
    fn escapes_above_one_byte_are_kept_as_written() {
        let line =
            "29 16 0:25 / /mnt/a\\777b\\011c rw - nfs4 127.0.0.1:/ rw,port=20049,addr=127.0.0.1\n";
        assert_eq!(nfs_mounts(line)[0].mountpoint, "/mnt/a\\777b\tc");
    }

    // Taken in the e2e guest (Linux 6.1, knfsd): three mounts of one file system through
    // three tunnels (ports 20840, 20220, 20164), all sent over the first one's client
    // (0x5168 = 20840) by NFSv4.1 trunking.
    const TRUNKED_MOUNTINFO: &str = "\
29 16 0:25 / /mnt/root rw,relatime - nfs4 127.0.0.1:/ rw,vers=4.1,rsize=1048576,wsize=1048576,namlen=255,hard,noresvport,proto=tcp,port=20840,timeo=600,retrans=2,sec=sys,clientaddr=127.0.0.1,local_lock=none,addr=127.0.0.1
30 16 0:26 / /mnt/a rw,relatime - nfs4 127.0.0.1:/a rw,vers=4.1,rsize=65536,wsize=1048576,namlen=255,hard,noresvport,proto=tcp,port=20220,timeo=600,retrans=2,sec=sys,clientaddr=127.0.0.1,local_lock=none,addr=127.0.0.1
31 16 0:27 / /mnt/b rw,relatime - nfs4 127.0.0.1:/b rw,vers=4.1,rsize=1048576,wsize=262144,namlen=255,hard,noresvport,proto=tcp,port=20164,timeo=600,retrans=2,sec=sys,clientaddr=127.0.0.1,local_lock=none,addr=127.0.0.1
";
    const TRUNKED_SERVERS: &str = "\
NV SERVER   PORT USE HOSTNAME
v4 7f000001 5168   3 127.0.0.1
";
    const TRUNKED_VOLUMES: &str = "\
NV SERVER   PORT DEV          FSID                              FSC
v4 7f000001 5168 0:25         0:0                               no 
v4 7f000001 5168 0:26         0:0                               no 
v4 7f000001 5168 0:27         0:0                               no 
";

    #[test]
    fn parses_the_nfs_clients_tables() {
        let v = KernelView::parse(TRUNKED_MOUNTINFO, TRUNKED_SERVERS, TRUNKED_VOLUMES);
        let client = Transport {
            version: 4,
            addr: "7f000001".into(),
            port: 20840,
        };
        assert_eq!(v.clients, vec![client.clone()]);
        assert!(client.local());
        assert_eq!(
            v.volumes.iter().map(|v| v.dev.minor).collect::<Vec<_>>(),
            vec![25, 26, 27]
        );
        assert!(v.volumes.iter().all(|vol| vol.transport == client));
        assert_eq!(
            v.mounts[1].dev,
            Some(Dev {
                major: 0,
                minor: 26
            })
        );
    }

    #[test]
    fn a_trunked_mount_uses_the_first_tunnel_whatever_its_port_option_says() {
        let v = KernelView::parse(TRUNKED_MOUNTINFO, TRUNKED_SERVERS, TRUNKED_VOLUMES);
        let a = v.local_mount_at("/mnt/a").unwrap();
        assert_eq!(a.port, Some(20220));
        assert_eq!(v.transport_port(a), Some(20840));
        let p = v.ports_in_use();
        assert_eq!(p[&20840], vec!["/mnt/root", "/mnt/a", "/mnt/b"]);
    }

    #[test]
    fn after_the_first_mount_is_gone_its_tunnel_is_still_in_use() {
        let mountinfo: String = TRUNKED_MOUNTINFO
            .lines()
            .skip(1)
            .map(|l| format!("{l}\n"))
            .collect();
        let servers = TRUNKED_SERVERS.replace("   3 ", "   2 ");
        let volumes: String = TRUNKED_VOLUMES
            .lines()
            .filter(|l| !l.contains(" 0:25 "))
            .map(|l| format!("{l}\n"))
            .collect();
        let p = KernelView::parse(&mountinfo, &servers, &volumes).ports_in_use();
        assert_eq!(p[&20840], vec!["/mnt/a", "/mnt/b"]);
        // And the two idle tunnels of /mnt/a and /mnt/b are still named by mountinfo.
        assert_eq!(
            p.keys().copied().collect::<Vec<_>>(),
            vec![20164, 20220, 20840]
        );
        // A client with no volume left (being torn down, or set up) still counts.
        let p = KernelView::parse("", &servers, "").ports_in_use();
        assert_eq!(p.keys().copied().collect::<Vec<_>>(), vec![20840]);
    }

    #[test]
    fn without_the_clients_tables_the_port_option_is_the_transport() {
        let v = KernelView::parse(TRUNKED_MOUNTINFO, "", "");
        assert_eq!(
            v.transport_port(v.local_mount_at("/mnt/a").unwrap()),
            Some(20220)
        );
    }

    #[test]
    fn other_servers_and_torn_lines_are_ignored() {
        let servers = "NV SERVER   PORT USE HOSTNAME\nv4 0a000005  801   1 10.0.0.5\nv4 7f000001\nvx 7f000001 5168 1 x\nv4 zz000001 5168 1 x\n";
        let v = KernelView::parse(
            "",
            servers,
            "v4 0a000005 801 0:40 0:0 no\nv4 7f000001 5168 garbage\n",
        );
        assert_eq!(v.clients.len(), 1);
        assert!(!v.clients[0].local());
        assert_eq!(v.clients[0].port, 2049);
        assert_eq!(v.volumes.len(), 1);
        assert!(v.ports_in_use().is_empty());
    }

    #[test]
    fn missing_tables_read_as_empty_but_a_missing_mount_table_is_an_error() {
        let dir = std::env::temp_dir().join(format!("efs-mounts-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mi = dir.join("mountinfo");
        std::fs::write(&mi, TRUNKED_MOUNTINFO).unwrap();
        let v = KernelView::read(&mi, &dir.join("no-nfsfs")).unwrap();
        assert_eq!(v.mounts.len(), 3);
        assert!(v.clients.is_empty());
        assert!(KernelView::read(&dir.join("missing"), &dir).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
