//! amazon-efs-utils' own state, read so that an in-place upgrade takes its live mounts
//! over instead of orphaning them (the watchdog's `takeover` acts on what this reads).
//!
//! The incumbent leaves, per TLS mount, in the state directory:
//! * `<fs>.<mp>.<port>`: a JSON state file (`pid`, `cmd`, `files`, `mount_time`,
//!   `mountpoint`, and the client certificate's fields, at the top level as every
//!   release since 1.2x writes them, or under `cert_details` as older ones did);
//! * `stunnel-config.<fs>.<mp>.<port>`: the stunnel-syntax config its tunnel runs from,
//!   read by stunnel and efs-proxy alike (`accept`, `connect`, `checkHost`, `CAfile`,
//!   `cert`, `key`, `fips`);
//! * `<fs>.<mp>.<port>+/`: its OpenSSL workspace with the certificate, and the tunnel's
//!   pid file.
//!
//! Every function here is a pure function of the text it is given, returns a typed
//! error for anything it cannot use, and never panics (fuzzed: `incumbent_state`).
//! Names and meanings follow `efs-utils-behaviour.md` sections 2 and 6.2.

use std::path::{Path, PathBuf};

use serde_json::Value;

/// The tunnel program a state file names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Program {
    /// `stunnel`, `stunnel4` or `stunnel5`.
    Stunnel,
    /// `efs-proxy`; `tls` is false for a plain (unencrypted) mount, which efs-utils 2+
    /// also sends through efs-proxy.
    EfsProxy { tls: bool },
}

impl Program {
    /// The process name (`/proc/PID/comm`) such a tunnel runs under.
    pub fn matches_comm(&self, comm: &str) -> bool {
        match self {
            Program::Stunnel => matches!(comm, "stunnel" | "stunnel4" | "stunnel5"),
            Program::EfsProxy { .. } => comm == "efs-proxy",
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Program::Stunnel => "stunnel",
            Program::EfsProxy { .. } => "efs-proxy",
        }
    }
}

/// An incumbent state file, as far as a takeover needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct IncumbentState {
    /// The tunnel's pid; `None` when the file records none (-1 in a mount under way, or
    /// removed by the incumbent's watchdog when the process was gone).
    pub pid: Option<i32>,
    pub program: Program,
    /// The config file the tunnel runs from (the argument after the program).
    pub tunnel_config: PathBuf,
    /// `nsenter --net=PATH` in front of the program: the mount's network namespace.
    pub netns: Option<PathBuf>,
    /// Files the incumbent deletes at teardown (its tunnel config).
    pub files: Vec<PathBuf>,
    /// Seconds since the epoch (older releases did not record it).
    pub mount_time: Option<f64>,
    pub mountpoint: Option<String>,
    /// `elasticfilesystem` (or absent, as in older files) or `s3files`.
    pub service_type: Option<String>,
    pub cert: Option<IncumbentCert>,
}

/// The client certificate fields of an incumbent state (its `cert_details`).
#[derive(Debug, Clone, PartialEq)]
pub struct IncumbentCert {
    pub certificate: PathBuf,
    pub private_key: PathBuf,
    pub common_name: Option<String>,
    pub region: Option<String>,
    pub access_point: Option<String>,
    pub fs_id: Option<String>,
    /// `awsCredentialsMethod`, in the same notation as our `iam_source`.
    pub credentials_method: Option<String>,
    /// `certificateCreationTime` (`%y%m%d%H%M%SZ`), as seconds since the epoch.
    pub created: Option<f64>,
}

/// The incumbent's tunnel config (stunnel syntax), as far as a takeover needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelConfig {
    /// The local port of `accept = 127.0.0.1:PORT`.
    pub accept_port: u16,
    /// `connect`: `HOST:2049`.
    pub connect: String,
    /// `checkHost`: the name the server certificate must match; absent when the admin
    /// turned hostname checking off (`stunnel_check_cert_hostname = false`).
    pub check_host: Option<String>,
    pub cafile: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub fips: bool,
}

/// Why a file is not an incumbent state (or config) a takeover can use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IncumbentError {
    /// Not a JSON object.
    NotJson(String),
    /// JSON, but its command is not an incumbent tunnel (stunnel, efs-proxy).
    NotIncumbent(String),
    /// A field it needs is missing or of the wrong kind.
    Field { field: &'static str, why: String },
}

impl std::fmt::Display for IncumbentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IncumbentError::NotJson(e) => write!(f, "not JSON: {e}"),
            IncumbentError::NotIncumbent(why) => write!(f, "not an amazon-efs-utils state: {why}"),
            IncumbentError::Field { field, why } => write!(f, "{field}: {why}"),
        }
    }
}

impl std::error::Error for IncumbentError {}

fn field(field: &'static str, why: impl Into<String>) -> IncumbentError {
    IncumbentError::Field {
        field,
        why: why.into(),
    }
}

impl IncumbentState {
    /// Reads the JSON text of an incumbent state file.
    pub fn parse(text: &[u8]) -> Result<IncumbentState, IncumbentError> {
        let v: Value =
            serde_json::from_slice(text).map_err(|e| IncumbentError::NotJson(e.to_string()))?;
        let obj = v
            .as_object()
            .ok_or_else(|| IncumbentError::NotJson("not an object".into()))?;
        let cmd: Vec<&str> = match obj.get("cmd") {
            Some(Value::Array(a)) => a.iter().map(|s| s.as_str().unwrap_or("")).collect(),
            _ => return Err(IncumbentError::NotIncumbent("no cmd list".into())),
        };
        let (program, tunnel_config, netns) = tunnel_command(&cmd)?;
        let pid = match obj.get("pid") {
            None | Some(Value::Null) => None,
            Some(p) => {
                let n = p.as_i64().ok_or_else(|| field("pid", "not an integer"))?;
                i32::try_from(n).ok().filter(|n| *n > 0)
            }
        };
        let files = match obj.get("files") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|f| f.as_str().map(PathBuf::from))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| field("files", "not a list of paths"))?,
            Some(_) => return Err(field("files", "not a list")),
        };
        let mount_time = match obj.get("mount_time") {
            None | Some(Value::Null) => None,
            Some(t) => Some(
                t.as_f64()
                    .filter(|t| t.is_finite() && (0.0..=1e11).contains(t))
                    .ok_or_else(|| field("mount_time", "not a time in seconds since 1970"))?,
            ),
        };
        let mountpoint = string(obj, "mountpoint");
        // Certificate fields: top level (what releases write now), or `cert_details`.
        let details = obj.get("cert_details").and_then(Value::as_object);
        let get = |k: &str| string(obj, k).or_else(|| details.and_then(|d| string(d, k)));
        let cert = match (get("certificate"), get("privateKey")) {
            (Some(c), Some(k)) => Some(IncumbentCert {
                certificate: c.into(),
                private_key: k.into(),
                common_name: get("commonName"),
                region: get("region"),
                access_point: get("accessPoint"),
                fs_id: get("fsId"),
                credentials_method: get("awsCredentialsMethod"),
                created: get("certificateCreationTime")
                    .as_deref()
                    .and_then(certificate_time),
            }),
            _ => None,
        };
        Ok(IncumbentState {
            pid,
            program,
            tunnel_config,
            netns,
            files,
            mount_time,
            mountpoint,
            service_type: string(obj, "service_type"),
            cert,
        })
    }
}

fn string(obj: &serde_json::Map<String, Value>, key: &str) -> Option<String> {
    obj.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// `[nsenter --net=NS] PROGRAM CONFIG [--tls] [--no-direct-s3-read]`.
fn tunnel_command(cmd: &[&str]) -> Result<(Program, PathBuf, Option<PathBuf>), IncumbentError> {
    let mut rest = cmd;
    let mut netns = None;
    if rest.first().is_some_and(|p| base(p) == "nsenter") {
        let ns = rest
            .iter()
            .skip(1)
            .find_map(|a| a.strip_prefix("--net="))
            .ok_or_else(|| IncumbentError::NotIncumbent("nsenter without --net=".into()))?;
        netns = Some(PathBuf::from(ns));
        let at = rest
            .iter()
            .position(|a| matches!(base(a), "stunnel" | "stunnel4" | "stunnel5" | "efs-proxy"))
            .ok_or_else(|| IncumbentError::NotIncumbent("nsenter runs no tunnel".into()))?;
        rest = &rest[at..];
    }
    let (program, args) = rest
        .split_first()
        .ok_or_else(|| IncumbentError::NotIncumbent("empty cmd".into()))?;
    let program = match base(program) {
        "stunnel" | "stunnel4" | "stunnel5" => Program::Stunnel,
        "efs-proxy" => Program::EfsProxy {
            tls: args.contains(&"--tls"),
        },
        other => {
            return Err(IncumbentError::NotIncumbent(format!(
                "its command {} is not stunnel or efs-proxy",
                quoted(other)
            )))
        }
    };
    let config = args
        .iter()
        .find(|a| !a.starts_with("--") && !a.is_empty())
        .ok_or_else(|| field("cmd", "names no tunnel config"))?;
    Ok((program, PathBuf::from(config), netns))
}

/// A value from the file, quoted for an error line: at most 64 characters, escaped.
fn quoted(s: &str) -> String {
    let cut: String = s.chars().take(64).collect();
    if cut.len() < s.len() {
        format!("{cut:?}...")
    } else {
        format!("{cut:?}")
    }
}

fn base(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

/// `%y%m%d%H%M%SZ` (UTC, 20YY), as the incumbent records `certificateCreationTime`.
pub fn certificate_time(s: &str) -> Option<f64> {
    let d = s.strip_suffix('Z')?;
    if d.len() != 12 || !d.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n = |i: usize| d.get(i..i + 2).and_then(|x| x.parse::<i64>().ok());
    let (y, mo, da, h, mi, se) = (2000 + n(0)?, n(2)?, n(4)?, n(6)?, n(8)?, n(10)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&da) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm), March-based years.
    let (y, m) = if mo <= 2 {
        (y - 1, mo + 9)
    } else {
        (y, mo - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + da - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + h * 3600 + mi * 60 + se) as f64)
}

impl TunnelConfig {
    /// Reads the incumbent's stunnel-syntax tunnel config: global lines, then the `[efs]`
    /// service. Unknown keys (stunnel's own: `socket`, `TIMEOUTidle`...) are ignored, as
    /// efs-proxy ignores them.
    pub fn parse(text: &str) -> Result<TunnelConfig, IncumbentError> {
        let mut section = String::new();
        let (mut accept, mut connect, mut check_host) = (None, None, None);
        let (mut cafile, mut cert, mut key, mut fips) = (None, None, None, false);
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with(['#', ';']) {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name.trim().to_string();
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            let (k, v) = (k.trim(), v.trim());
            let value = (!v.is_empty()).then(|| v.to_string());
            match (section.as_str(), k) {
                ("", "fips") => fips = matches!(v, "yes" | "true" | "1"),
                ("efs", "accept") => accept = value,
                ("efs", "connect") => connect = value,
                ("efs", "checkHost") => check_host = value,
                ("efs", "CAfile") => cafile = value.map(PathBuf::from),
                ("efs", "cert") => cert = value.map(PathBuf::from),
                ("efs", "key") => key = value.map(PathBuf::from),
                _ => {}
            }
        }
        let accept = accept.ok_or_else(|| field("accept", "missing in [efs]"))?;
        let accept_port = accept_port(&accept).ok_or_else(|| {
            field(
                "accept",
                format!("{} is not 127.0.0.1:PORT", quoted(&accept)),
            )
        })?;
        let connect = connect.ok_or_else(|| field("connect", "missing in [efs]"))?;
        if connect
            .rsplit_once(':')
            .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        {
            return Err(field(
                "connect",
                format!("{} is not HOST:PORT", quoted(&connect)),
            ));
        }
        Ok(TunnelConfig {
            accept_port,
            connect,
            check_host,
            cafile,
            cert,
            key,
            fips,
        })
    }

    /// The host part of `connect` (without IPv6 brackets).
    pub fn connect_host(&self) -> &str {
        let host = self.connect.rsplit_once(':').map_or("", |(h, _)| h);
        host.trim_start_matches('[').trim_end_matches(']')
    }
}

/// `127.0.0.1:PORT`, `localhost:PORT` or a bare `PORT` (stunnel binds all addresses
/// then; the incumbent always writes 127.0.0.1).
fn accept_port(accept: &str) -> Option<u16> {
    let port = match accept.rsplit_once(':') {
        Some(("127.0.0.1" | "localhost", p)) => p,
        Some(_) => return None,
        None => accept,
    };
    port.parse().ok().filter(|p| *p != 0)
}

/// The inode of the socket listening on 127.0.0.1:`port` (or on every address) in a
/// `/proc/PID/net/tcp` text: how the listening socket of an incumbent tunnel is found
/// among its descriptors.
pub fn listening_inode(proc_net_tcp: &str, port: u16) -> Option<u64> {
    let wanted = [
        format!("0100007F:{port:04X}"),
        format!("00000000:{port:04X}"),
    ];
    proc_net_tcp.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (local, state, inode) = (f.get(1)?, f.get(3)?, f.get(9)?);
        (*state == "0A" && wanted.iter().any(|w| w == local))
            .then(|| inode.parse().ok())
            .flatten()
            .filter(|i| *i != 0)
    })
}

/// The descriptor number of `/proc/PID/fd/N` whose link reads `socket:[INODE]`.
pub fn socket_fd(links: impl IntoIterator<Item = (i32, String)>, inode: u64) -> Option<i32> {
    let want = format!("socket:[{inode}]");
    links
        .into_iter()
        .find_map(|(fd, l)| (l == want).then_some(fd))
}

/// `stunnel-config.<name>`: the incumbent's tunnel config for the state file `name`.
pub fn tunnel_config_name(state_name: &str) -> String {
    format!("stunnel-config.{state_name}")
}

/// The state file's `fs-…` id and port from its name `<fs>.<mp>.<port>`.
pub fn name_parts(state_name: &str) -> Option<(&str, u16)> {
    let (fs_id, _) = state_name.split_once('.')?;
    let (_, port) = state_name.rsplit_once('.')?;
    let port = port.parse().ok().filter(|p| *p != 0)?;
    fs_id.starts_with("fs-").then_some((fs_id, port))
}

/// True if `path` lies inside `dir` (lexically: no `..`): the only files a takeover
/// removes, whatever a state file lists.
pub fn inside(dir: &Path, path: &Path) -> bool {
    path.starts_with(dir)
        && path != dir
        && !path
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
}

#[cfg(test)]
mod tests {
    use super::*;

    // The shape of a real state file (EFS CSI driver issue #1353), names shortened.
    const CSI_STATE: &str = r#"{"pid": 17200, "cmd": ["/usr/bin/stunnel5", "/var/run/efs/stunnel-config.fs-1.mnt.20155"], "files": ["/var/run/efs/stunnel-config.fs-1.mnt.20155"], "mount_time": 1715937339.06, "mountpoint": "/var/lib/kubelet/pods/x/mount", "accessPoint": "fsap-0123456789abcdef0", "mountStateDir": "fs-1.mnt.20155+", "commonName": "ip-10-0-0-1.ec2.internal", "region": "us-east-1", "certificateCreationTime": "240517091539Z", "certificate": "/var/run/efs/fs-1.mnt.20155+/certificate.pem", "privateKey": "/etc/amazon/efs/privateKey.pem", "fsId": "fs-1", "unmount_count": 0}"#;

    #[test]
    fn a_state_file_of_the_csi_driver_is_read() {
        let st = IncumbentState::parse(CSI_STATE.as_bytes()).unwrap();
        assert_eq!(st.pid, Some(17200));
        assert_eq!(st.program, Program::Stunnel);
        assert_eq!(
            st.tunnel_config,
            Path::new("/var/run/efs/stunnel-config.fs-1.mnt.20155")
        );
        assert_eq!(st.mount_time, Some(1715937339.06));
        let cert = st.cert.unwrap();
        assert_eq!(cert.access_point.as_deref(), Some("fsap-0123456789abcdef0"));
        assert_eq!(
            cert.private_key,
            Path::new("/etc/amazon/efs/privateKey.pem")
        );
        // 2024-05-17 09:15:39 UTC
        assert_eq!(cert.created, Some(1_715_937_339.0));
        assert_eq!(cert.credentials_method, None);
    }

    #[test]
    fn certificate_fields_under_cert_details_and_efs_proxy_commands_are_read() {
        let st = IncumbentState::parse(
            br#"{"pid": -1, "cmd": ["nsenter", "--net=/var/run/netns/a", "/usr/bin/efs-proxy", "/var/run/efs/stunnel-config.fs-1.mnt.20001", "--tls", "--no-direct-s3-read"], "files": [], "cert_details": {"certificate": "/c.pem", "privateKey": "/k.pem", "awsCredentialsMethod": "metadata:"}}"#,
        )
        .unwrap();
        assert_eq!(st.pid, None, "-1 is a mount under way: no tunnel to stop");
        assert_eq!(st.program, Program::EfsProxy { tls: true });
        assert_eq!(st.netns.as_deref(), Some(Path::new("/var/run/netns/a")));
        assert_eq!(st.mount_time, None);
        let cert = st.cert.unwrap();
        assert_eq!(cert.credentials_method.as_deref(), Some("metadata:"));
        let plain = IncumbentState::parse(
            br#"{"pid": 9, "cmd": ["/usr/bin/efs-proxy", "/var/run/efs/stunnel-config.fs-1.mnt.20001", "--no-direct-s3-read"]}"#,
        )
        .unwrap();
        assert_eq!(plain.program, Program::EfsProxy { tls: false });
    }

    #[test]
    fn what_is_not_an_incumbent_state_says_why() {
        let cases: [(&[u8], &str); 6] = [
            (b"", "not JSON"),
            (b"[1]", "not JSON"),
            (br#"{"pid": 1}"#, "no cmd list"),
            (
                br#"{"cmd": ["/usr/sbin/efs-tunnel", "--connect", "x"]}"#,
                "not stunnel or efs-proxy",
            ),
            (
                br#"{"cmd": ["/usr/bin/stunnel"]}"#,
                "names no tunnel config",
            ),
            (
                br#"{"cmd": ["stunnel", "/c"], "mount_time": -1e20}"#,
                "mount_time",
            ),
        ];
        for (text, why) in cases {
            let e = IncumbentState::parse(text).unwrap_err().to_string();
            assert!(e.contains(why), "{:?}: {e}", String::from_utf8_lossy(text));
        }
    }

    #[test]
    fn the_tunnel_config_the_incumbent_writes_is_read() {
        let text = "fips = no\nforeground = yes\nsocket = l:SO_REUSEADDR=yes\npid = /var/run/efs/fs-1.mnt.20123+/stunnel.pid\n[efs]\nclient = yes\naccept = 127.0.0.1:20123\nconnect = fs-1.efs.us-east-1.amazonaws.com:2049\nsslVersion = TLSv1.2\nverify = 2\nCAfile = /etc/amazon/efs/efs-utils.crt\ncert = /var/run/efs/fs-1.mnt.20123+/certificate.pem\nkey = /etc/amazon/efs/privateKey.pem\ncheckHost = fs-1.efs.us-east-1.amazonaws.com\n";
        let c = TunnelConfig::parse(text).unwrap();
        assert_eq!(c.accept_port, 20123);
        assert_eq!(c.connect_host(), "fs-1.efs.us-east-1.amazonaws.com");
        assert_eq!(
            c.check_host.as_deref(),
            Some("fs-1.efs.us-east-1.amazonaws.com")
        );
        assert_eq!(
            c.cafile.as_deref(),
            Some(Path::new("/etc/amazon/efs/efs-utils.crt"))
        );
        assert!(!c.fips);
        let v6 = TunnelConfig::parse(
            "fips = yes\n[efs]\naccept = 127.0.0.1:20001\nconnect = [fd00::1]:2049\n",
        )
        .unwrap();
        assert_eq!(v6.connect_host(), "fd00::1");
        assert!(v6.fips);
        assert_eq!(v6.check_host, None);
        for bad in [
            "[efs]\nconnect = a:2049\n",
            "[efs]\naccept = 10.0.0.1:20001\nconnect = a:2049\n",
            "[efs]\naccept = 127.0.0.1:20001\nconnect = a\n",
            "accept = 127.0.0.1:20001\nconnect = a:2049\n",
        ] {
            assert!(TunnelConfig::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_listening_socket_is_found_by_port_and_inode() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:4E9B 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 48213 1 0000000000000000 100 0 0 10 0\n   1: 0100007F:4E9B 0100007F:D2C4 01 00000000:00000000 00:00000000 00000000     0        0 48299 1 0000000000000000 20 4 30 10 -1\n";
        assert_eq!(listening_inode(tcp, 0x4E9B), Some(48213));
        assert_eq!(listening_inode(tcp, 20050), None);
        let links = vec![
            (3, "pipe:[1]".to_string()),
            (7, "socket:[48213]".to_string()),
        ];
        assert_eq!(socket_fd(links, 48213), Some(7));
    }

    #[test]
    fn names_and_paths() {
        assert_eq!(name_parts("fs-1.mnt.efs.20123"), Some(("fs-1", 20123)));
        assert_eq!(name_parts("fs-1..20123"), Some(("fs-1", 20123)));
        assert_eq!(name_parts("fs-1.mnt.efs"), None);
        assert_eq!(name_parts("x.mnt.1"), None);
        let dir = Path::new("/var/run/efs");
        assert!(inside(
            dir,
            Path::new("/var/run/efs/stunnel-config.fs-1.a.1")
        ));
        assert!(!inside(dir, Path::new("/var/run/efs/../../etc/passwd")));
        assert!(!inside(dir, Path::new("/etc/passwd")));
        assert!(!inside(dir, dir));
        assert_eq!(certificate_time("000101000000Z"), Some(946_684_800.0));
        assert_eq!(certificate_time("241301000000Z"), None);
        assert_eq!(certificate_time("2405170915Z"), None);
    }
}
