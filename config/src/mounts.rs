//! The mount table (`/proc/self/mountinfo`), read by the watchdog and the status command.
//!
//! A tunnel is in use while any NFS mount in mountinfo is served through its port
//! (`127.0.0.1` and `port=N`), whatever the mountpoint: the kernel may give a second mount
//! of the same server the first mount's client, so a mountpoint-and-port match (the
//! incumbent's) would tear down a tunnel that another mount still uses.

use std::collections::BTreeMap;
use std::path::Path;

/// Port -> mountpoints served through it.
pub type PortsInUse = BTreeMap<u16, Vec<String>>;

/// Reads and parses the mount table.
pub fn read(mountinfo: &Path) -> std::io::Result<PortsInUse> {
    Ok(parse(&std::fs::read_to_string(mountinfo)?))
}

/// One NFS line of the mount table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NfsMount {
    pub mountpoint: String,
    /// `127.0.0.1:/`, `fs-….efs.….amazonaws.com:/path`, `10.0.0.5:/`
    pub source: String,
    /// The `port=` option, if the kernel shows one (it hides 2049).
    pub port: Option<u16>,
    /// Served through a local tunnel (127.0.0.1).
    pub local: bool,
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
            Some(NfsMount {
                mountpoint: unescape(left.split_whitespace().nth(4)?),
                source: source.to_string(),
                port: superopts
                    .split(',')
                    .find_map(|o| o.strip_prefix("port="))
                    .and_then(|p| p.parse().ok()),
                local: source.starts_with("127.0.0.1:")
                    || superopts.split(',').any(|o| o == "addr=127.0.0.1"),
            })
        })
        .collect()
}

/// Tunnel ports in use -> the mountpoints served through each.
pub fn parse(text: &str) -> PortsInUse {
    let mut ports = PortsInUse::new();
    for m in nfs_mounts(text) {
        if let (true, Some(port)) = (m.local, m.port) {
            ports.entry(port).or_default().push(m.mountpoint);
        }
    }
    ports
}

/// The kernel writes spaces and a few other bytes in paths as octal escapes (`\040`).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
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
        let p = parse(SAMPLE);
        assert_eq!(p.keys().copied().collect::<Vec<_>>(), vec![20357, 20400]);
        assert_eq!(
            p[&20357],
            vec!["/mnt/efs".to_string(), "/mnt/my efs".to_string()]
        );
    }
}
