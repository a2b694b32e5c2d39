//! `efs-utils status`: one row per EFS mount on the host, answering "is this mount really
//! encrypted, and is its tunnel healthy?" without `grep mount.log` and `ps`.
//!
//! It reads the state directory, the mount table and the NFS client's tables, and asks
//! every tunnel's control socket for its status at once, with a short timeout: stuck
//! tunnels show as not answering after one timeout in all, and the command never touches
//! a mountpoint, so it cannot hang on a stuck mount. A mount's health is that of the
//! tunnel the kernel really sends its traffic to, which for a second mount of one server
//! is the first mount's (see `efs_config::mounts`), not the one its `port=` names.
//!
//! A mount with a client certificate (`iam`, `accesspoint`) also shows what the state
//! says of it (access point, IAM and where its credentials come from, expiry, the
//! watchdog's last renewal and renewal error) next to what its tunnel says it presents,
//! and warns when the two disagree: a renewed file the tunnel has not loaded, or could
//! not load, is a certificate EFS will refuse once the old one expires.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use efs_config::mounts::{self, KernelView};
use efs_config::state::{self, ClientCertRecord, MountState};
use efs_config::Config;
use efs_tunnel_contract::control::{self, ClientCertStatus, Status};
use serde::Serialize;

/// How long a tunnel gets to answer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(1);

/// How a mount stands, judged by the tunnel the kernel really sends its traffic to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// The tunnel answers on its control socket.
    Healthy,
    /// The tunnel runs but does not answer.
    NotAnswering,
    /// The tunnel is dead and the watchdog runs: it is being restarted.
    Restarting,
    /// The tunnel is dead and no watchdog runs to restart it.
    NotRunning,
    /// The kernel sends the mount to a local port where no tunnel of ours runs.
    Broken,
    /// The watchdog found the mount gone and tears its tunnel down after the grace period.
    Unmounted,
    /// Plain NFS to the mount target, not encrypted.
    Plain,
}

impl Health {
    pub fn text(self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::NotAnswering => "not answering",
            Health::Restarting => "restarting",
            Health::NotRunning => "not running",
            Health::Broken => "BROKEN: no tunnel serves the port the kernel sends it to",
            Health::Unmounted => "unmounted, waiting for teardown",
            Health::Plain => "plain NFS, not encrypted",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub fs_id: String,
    pub mountpoint: String,
    /// "tls" or "plain".
    pub transport: &'static str,
    /// The port this mount's own tunnel listens (or listened) on: its `port=`.
    pub port: Option<u16>,
    /// The tunnel port the kernel really sends this mount's traffic to (another mount's,
    /// when the kernel shares one connection between mounts of one server). None when
    /// the mount is not in the mount table.
    pub kernel_port: Option<u16>,
    /// The pid of the tunnel on `kernel_port` (else on `port`).
    pub pid: Option<i32>,
    pub state: Health,
    /// Times the watchdog restarted that tunnel.
    pub restarts: u64,
    pub mounted: bool,
    /// Set when the mount has no tunnel of its own: it rides on the one on this port.
    pub served_by: Option<u16>,
    /// Other mounts whose traffic goes through this mount's tunnel.
    pub also_serves: Vec<String>,
    /// What the tunnel on `kernel_port` (else `port`) says of itself.
    pub tunnel: Option<Status>,
    /// The client certificate of the connection (`iam`, `accesspoint`), if it has one:
    /// this mount's, or for a mount riding on another's tunnel, that tunnel's.
    pub client_cert: Option<ClientCert>,
}

/// A client certificate, as the state records it and as the tunnel presents it. Times
/// are seconds since the epoch. Nothing secret: `credential_source` names where the
/// credentials come from (`iam_source`, e.g. `metadata:`, `credentials:default`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClientCert {
    pub certificate: PathBuf,
    pub access_point: Option<String>,
    pub iam: bool,
    pub credential_source: Option<String>,
    pub issued_unix: i64,
    pub not_after_unix: i64,
    pub credentials_expire_unix: Option<i64>,
    /// The watchdog's last successful renewal.
    pub renewed_unix: Option<i64>,
    /// Set while the watchdog's renewals fail (one line).
    pub renewal_error: Option<String>,
    /// What the tunnel says it presents to new connections (None: it did not answer, or
    /// reports no certificate).
    pub presented: Option<ClientCertStatus>,
    /// What needs attention, one line each.
    pub warnings: Vec<String>,
}

impl ClientCert {
    /// Joins the record with the tunnel's answer (`None`: it did not answer) at `now`.
    pub fn new(rec: &ClientCertRecord, answer: Option<&Status>, now: i64) -> ClientCert {
        let unix = |t: f64| t as i64; // saturating; NaN is 0
        let not_after = unix(rec.not_after);
        let presented = answer.and_then(|a| a.client_cert.clone());
        let mut warnings = Vec::new();
        if not_after <= now {
            warnings.push(
                "the certificate has EXPIRED: EFS refuses new connections with it until the watchdog renews it".to_string(),
            );
        }
        match (answer, &presented) {
            (Some(_), None) => warnings.push(
                "the tunnel reports no client certificate: it is older than client certificates, or was started without --client-cert".into(),
            ),
            (_, Some(p)) => {
                if p.not_after_unix < not_after {
                    warnings.push(format!(
                        "the tunnel still presents an older certificate ({}) than the renewed file ({}): it has not loaded it; see efs-tunnel.log",
                        expiry(p.not_after_unix, now),
                        expiry(not_after, now)
                    ));
                }
                if let Some(e) = &p.reload_error {
                    warnings.push(format!(
                        "the tunnel could not load the renewed certificate and presents the previous one: {e}"
                    ));
                }
            }
            (None, None) => {}
        }
        ClientCert {
            certificate: rec.certificate.clone(),
            access_point: rec.access_point.clone(),
            iam: rec.iam_source.is_some(),
            credential_source: rec.iam_source.clone(),
            issued_unix: unix(rec.issued),
            not_after_unix: not_after,
            credentials_expire_unix: rec.credentials_expire.map(unix),
            renewed_unix: rec.renewed.map(unix),
            renewal_error: rec.renewal_error.clone(),
            presented,
            warnings,
        }
    }
}

/// `expires in 2 h 59 min` / `EXPIRED 5 min ago`.
fn expiry(at: i64, now: i64) -> String {
    if at > now {
        format!("expires in {}", span(at - now))
    } else {
        format!("EXPIRED {} ago", span(now.saturating_sub(at)))
    }
}

/// A duration for people: `42 s`, `17 min`, `2 h 5 min`, `3 days`.
fn span(secs: i64) -> String {
    let secs = secs.max(0);
    match secs {
        0..60 => format!("{secs} s"),
        60..3600 => format!("{} min", secs / 60),
        3600..172_800 => format!("{} h {} min", secs / 3600, secs % 3600 / 60),
        _ => format!("{} days", secs / 86_400),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub watchdog_pid: Option<i32>,
    pub mounts: Vec<Row>,
    /// State files that could not be read.
    pub problems: Vec<String>,
}

/// A tunnel of ours: its mount's state, and its answer.
struct Tunnel {
    state: MountState,
    answer: Result<Status, String>,
}

/// Builds the report for the host `cfg` describes.
pub fn report(cfg: &Config) -> Report {
    let mut problems = Vec::new();
    let view = KernelView::read(&cfg.paths.mountinfo, &cfg.paths.nfsfs).unwrap_or_else(|e| {
        problems.push(format!(
            "cannot read the mount table or the NFS client's tables: {e}"
        ));
        KernelView::default()
    });
    let watchdog = find_process("amazon-efs-moun");
    let mut names: Vec<_> = std::fs::read_dir(&cfg.paths.state_dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    names.sort();
    let mut states = Vec::new();
    for path in names {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !state::is_state_file_name(&name) {
            continue;
        }
        match MountState::read(&path) {
            Ok(st) => states.push(st),
            Err(e) => problems.push(e.to_string()),
        }
    }
    // All tunnels are asked at once, so stuck ones cost one timeout in all, not one each.
    let tunnels: BTreeMap<u16, Tunnel> = std::thread::scope(|scope| {
        let asks: Vec<_> = states
            .iter()
            .filter(|st| st.served_by.is_none())
            .map(|st| {
                scope.spawn(move || Tunnel {
                    state: st.clone(),
                    answer: control::query_status(&st.control_socket, ANSWER_TIMEOUT)
                        .map_err(|e| e.to_string()),
                })
            })
            .collect();
        asks.into_iter()
            .filter_map(|ask| ask.join().ok())
            .map(|t| (t.state.port, t))
            .collect()
    });
    let now = state::unix_time() as i64;
    let mut mounts: Vec<Row> = states
        .into_iter()
        .map(|st| tls_row(st, &view, &tunnels, watchdog.is_some(), now))
        .collect();
    mounts.extend(plain_rows(&view.mounts));
    Report {
        watchdog_pid: watchdog,
        mounts,
        problems,
    }
}

fn tls_row(
    st: MountState,
    view: &KernelView,
    tunnels: &BTreeMap<u16, Tunnel>,
    watchdog_running: bool,
    now: i64,
) -> Row {
    // This mount in the mount table: at its mountpoint, through its own port or the one
    // it rides on.
    let here = view.local_mount_at(&st.mountpoint).filter(|m| {
        m.port == Some(st.port)
            || (st.served_by.is_some() && view.transport_port(m) == st.served_by)
    });
    let kernel_port = here.and_then(|m| view.transport_port(m));
    let via = kernel_port.or(st.served_by).unwrap_or(st.port);
    let tunnel = tunnels.get(&via);
    let state = if st.unmount_time.is_some() {
        Health::Unmounted
    } else {
        match tunnel {
            Some(Tunnel { answer: Ok(_), .. }) => Health::Healthy,
            Some(t) if running(t.state.pid) => Health::NotAnswering,
            Some(_) if watchdog_running => Health::Restarting,
            Some(_) => Health::NotRunning,
            None => Health::Broken,
        }
    };
    let answer = tunnel.and_then(|t| t.answer.as_ref().ok());
    let client_cert = st
        .client_cert
        .as_ref()
        .or_else(|| tunnel.and_then(|t| t.state.client_cert.as_ref()))
        .map(|rec| ClientCert::new(rec, answer, now));
    Row {
        fs_id: st.fs_id,
        mountpoint: st.mountpoint,
        transport: "tls",
        port: Some(st.port),
        kernel_port,
        pid: tunnel.map(|t| t.state.pid),
        state,
        restarts: tunnel.map_or(0, |t| t.state.restarts),
        mounted: here.is_some(),
        served_by: st.served_by,
        also_serves: st.also_serves,
        tunnel: answer.cloned(),
        client_cert,
    }
}

/// EFS mounts without TLS: an NFS source naming an EFS DNS name.
fn plain_rows(mounts: &[mounts::NfsMount]) -> Vec<Row> {
    mounts
        .iter()
        .filter(|m| !m.local)
        .filter_map(|m| {
            let host = m.source.split(':').next()?;
            if !host.contains(".efs.") {
                return None;
            }
            Some(Row {
                fs_id: host.split('.').find(|l| l.starts_with("fs-"))?.to_string(),
                mountpoint: m.mountpoint.clone(),
                transport: "plain",
                port: None,
                kernel_port: None,
                pid: None,
                state: Health::Plain,
                restarts: 0,
                mounted: true,
                served_by: None,
                also_serves: Vec::new(),
                tunnel: None,
                client_cert: None,
            })
        })
        .collect()
}

/// True if the process exists and is not a zombie.
fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().to_string())
        })
        .is_some_and(|rest| !rest.starts_with('Z') && !rest.starts_with('X'))
}

/// The pid of a process by its (15-character) name.
fn find_process(comm: &str) -> Option<i32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_string_lossy().parse().ok()?;
        let c =
            std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("comm")).ok()?;
        (c.trim() == comm).then_some(pid)
    })
}

/// The lines of a client certificate.
fn render_client_cert(out: &mut String, c: &ClientCert, now: i64) {
    if let Some(ap) = &c.access_point {
        out.push_str(&format!("  access point {ap}\n"));
    }
    match &c.credential_source {
        Some(source) => out.push_str(&format!("  iam         on, credentials from {source}\n")),
        None => out.push_str("  iam         off\n"),
    }
    let renewed = match c.renewed_unix {
        Some(t) => format!("renewed {} ago", span(now.saturating_sub(t))),
        None => "not renewed yet".into(),
    };
    out.push_str(&format!(
        "  client cert {}, issued {} ago, {renewed}\n",
        expiry(c.not_after_unix, now),
        span(now.saturating_sub(c.issued_unix))
    ));
    if let Some(t) = c.credentials_expire_unix {
        out.push_str(&format!(
            "  credentials {}\n",
            expiry(t, now).replace("expires", "expire")
        ));
    }
    if let Some(p) = &c.presented {
        out.push_str(&format!(
            "  presented   {}, loaded {} ago, {} reload(s)\n",
            expiry(p.not_after_unix, now),
            span(now.saturating_sub(p.loaded_unix)),
            p.reloads
        ));
    }
    if let Some(e) = &c.renewal_error {
        out.push_str(&format!(
            "  renewal     FAILING: {e} (the watchdog keeps the current certificate and retries)\n"
        ));
    }
    for w in &c.warnings {
        out.push_str(&format!("  warning     {w}\n"));
    }
}

/// Where a tunnel's TLS records are made: `kernel TLS` (and on how many connections),
/// user space and why, and partition multiplexing when it is on.
fn records_line(t: &Status) -> Option<String> {
    let mut parts = Vec::new();
    if let Some(k) = t.kernel_tls.as_ref().filter(|k| k.enabled) {
        parts.push(match (k.available, &k.unavailable_reason) {
            (Some(false), Some(why)) => format!("user space (kernel TLS unavailable: {why})"),
            (Some(false), None) => "user space (kernel TLS unavailable)".into(),
            _ => {
                // Counted in upstream connections: with partition multiplexing one NFS
                // connection may have several.
                let mut s = format!(
                    "kernel TLS on {} upstream connection(s) open, {} in all",
                    k.connections_open, k.connections_total
                );
                if k.connections_closed_for_rekey > 0 {
                    s.push_str(&format!(
                        ", {} closed for a key update",
                        k.connections_closed_for_rekey
                    ));
                }
                s
            }
        });
    }
    if let Some(m) = t.multiplexing.as_ref().filter(|m| m.enabled) {
        parts.push(match m.server_supports {
            Some(false) => "partition multiplexing: the server does not speak it".into(),
            _ => format!(
                "partition multiplexing: {} bound connection(s){}",
                m.bound_connections,
                m.partition_id
                    .as_ref()
                    .map(|p| format!(", partition {p}"))
                    .unwrap_or_default()
            ),
        });
    }
    (!parts.is_empty()).then(|| format!("  records     {}\n", parts.join("; ")))
}

/// The human-readable table.
pub fn render(r: &Report, now_unix: i64) -> String {
    let mut out = String::new();
    match r.watchdog_pid {
        Some(pid) => out.push_str(&format!("watchdog: running (pid {pid})\n")),
        None => out.push_str(
            "watchdog: NOT RUNNING: dead tunnels will not be restarted; run `systemctl start amazon-efs-mount-watchdog`\n",
        ),
    }
    if r.mounts.is_empty() {
        out.push_str("no EFS mounts\n");
    }
    for m in &r.mounts {
        out.push_str(&format!(
            "\n{} on {}: {}\n",
            m.fs_id,
            m.mountpoint,
            m.state.text()
        ));
        let via = m.kernel_port.or(m.served_by).or(m.port);
        if let Some(port) = via {
            match m.pid.filter(|p| *p > 0) {
                Some(pid) => out.push_str(&format!(
                    "  tunnel      127.0.0.1:{port}, pid {pid}, restarted {} time(s)\n",
                    m.restarts
                )),
                None => out.push_str(&format!("  tunnel      127.0.0.1:{port}, none running\n")),
            }
        }
        if let (Some(own), Some(used)) = (m.port, via) {
            if own != used {
                out.push_str(&format!(
                    "  shared      the kernel sends this mount over the connection of the tunnel on port {used}, not through its own port {own}\n"
                ));
            }
        }
        if !m.mounted && m.state != Health::Unmounted && m.port.is_some() {
            out.push_str("  unmounted   its tunnel stays while other mounts use it\n");
        }
        if !m.also_serves.is_empty() {
            out.push_str(&format!("  also serves {}\n", m.also_serves.join(", ")));
        }
        if let Some(t) = &m.tunnel {
            out.push_str(&format!(
                "  target      {}:{} (certificate name {})\n",
                t.upstream_host, t.upstream_port, t.check_host
            ));
            if let Some(tls) = &t.tls {
                out.push_str(&format!("  tls         {} {}\n", tls.version, tls.cipher));
                if let Some(subject) = &tls.peer_subject {
                    let days = tls
                        .peer_not_after_unix
                        .map(|t| t.saturating_sub(now_unix) / 86_400);
                    out.push_str(&format!(
                        "  certificate {subject}{}\n",
                        days.map(|d| format!(", expires in {d} days"))
                            .unwrap_or_default()
                    ));
                }
            }
            if let Some(line) = records_line(t) {
                out.push_str(&line);
            }
            out.push_str(&format!(
                "  traffic     {} bytes sent, {} received; {} connection(s) open, {} in all\n",
                t.bytes_to_server, t.bytes_from_server, t.connections_open, t.connections_total
            ));
            out.push_str(&format!("  uptime      {} s\n", t.uptime_secs));
            if t.connects_failed + t.handshakes_failed > 0 {
                out.push_str(&format!(
                    "  failures    {} connect (DNS, TCP), {} TLS handshake\n",
                    t.connects_failed, t.handshakes_failed
                ));
            }
            if t.peer_refused > 0 {
                out.push_str(&format!(
                    "  refused     {} local connection(s) not from the kernel's NFS client (see efs-tunnel.log)\n",
                    t.peer_refused
                ));
            }
            if let Some(e) = &t.last_error {
                out.push_str(&format!("  last error  {}\n", e.message));
            }
        }
        if let Some(c) = &m.client_cert {
            render_client_cert(&mut out, c, now_unix);
        }
    }
    for p in &r.problems {
        out.push_str(&format!("\nproblem: {p}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn record() -> ClientCertRecord {
        ClientCertRecord {
            certificate: "/var/run/efs/fs-1.mnt.efs.20049+/certificate.pem".into(),
            private_key: "/etc/amazon/efs/privateKey.pem".into(),
            common_name: "host".into(),
            region: "us-east-1".into(),
            access_point: Some("fsap-0123456789abcdef0".into()),
            iam_source: Some("credentials:default".into()),
            issued: (NOW - 300) as f64,
            not_after: (NOW + 3 * 3600 - 300) as f64,
            credentials_expire: Some((NOW + 3000) as f64),
            renewed: Some((NOW - 300) as f64),
            renewal_error: None,
        }
    }

    fn answer(not_after: i64, reload_error: Option<&str>) -> Status {
        Status {
            client_cert: Some(ClientCertStatus {
                not_after_unix: not_after,
                loaded_unix: NOW - 290,
                reloads: 2,
                reload_error: reload_error.map(str::to_string),
            }),
            ..Status::default()
        }
    }

    fn row(cert: ClientCert) -> Report {
        Report {
            watchdog_pid: Some(1),
            mounts: vec![Row {
                fs_id: "fs-1".into(),
                mountpoint: "/mnt/efs".into(),
                transport: "tls",
                port: Some(20049),
                kernel_port: Some(20049),
                pid: Some(2),
                state: Health::Healthy,
                restarts: 0,
                mounted: true,
                served_by: None,
                also_serves: Vec::new(),
                tunnel: None,
                client_cert: Some(cert),
            }],
            problems: Vec::new(),
        }
    }

    #[test]
    fn a_current_certificate_shows_its_identity_expiry_and_renewal_and_no_warning() {
        let rec = record();
        let c = ClientCert::new(&rec, Some(&answer(rec.not_after as i64, None)), NOW);
        assert_eq!(c.warnings, Vec::<String>::new());
        let text = render(&row(c), NOW);
        for line in [
            "  access point fsap-0123456789abcdef0\n",
            "  iam         on, credentials from credentials:default\n",
            "  client cert expires in 2 h 55 min, issued 5 min ago, renewed 5 min ago\n",
            "  credentials expire in 50 min\n",
            "  presented   expires in 2 h 55 min, loaded 4 min ago, 2 reload(s)\n",
        ] {
            assert!(text.contains(line), "{line:?} in\n{text}");
        }
        assert!(!text.contains("warning"), "{text}");
    }

    #[test]
    fn a_renewed_file_the_tunnel_did_not_load_or_could_not_is_a_warning() {
        let mut rec = record();
        rec.renewal_error = Some("AWS profile [default] not found".into());
        let c = ClientCert::new(&rec, Some(&answer(NOW + 600, Some("bad PEM"))), NOW);
        let text = render(&row(c), NOW);
        for line in [
            "  renewal     FAILING: AWS profile [default] not found (the watchdog keeps the current certificate and retries)\n",
            "  warning     the tunnel still presents an older certificate (expires in 10 min) than the renewed file (expires in 2 h 55 min): it has not loaded it; see efs-tunnel.log\n",
            "  warning     the tunnel could not load the renewed certificate and presents the previous one: bad PEM\n",
        ] {
            assert!(text.contains(line), "{line:?} in\n{text}");
        }
    }

    #[test]
    fn an_expired_certificate_and_a_tunnel_that_presents_none_are_warnings() {
        let mut rec = record();
        rec.access_point = None;
        rec.iam_source = None;
        rec.not_after = (NOW - 120) as f64;
        rec.renewed = None;
        let c = ClientCert::new(&rec, Some(&Status::default()), NOW);
        assert!(!c.iam);
        let text = render(&row(c), NOW);
        assert!(text.contains("  iam         off\n"), "{text}");
        assert!(!text.contains("access point"), "{text}");
        assert!(
            text.contains("client cert EXPIRED 2 min ago, issued 5 min ago, not renewed yet"),
            "{text}"
        );
        assert!(
            text.contains("warning     the certificate has EXPIRED"),
            "{text}"
        );
        assert!(
            text.contains("warning     the tunnel reports no client certificate"),
            "{text}"
        );
        // A tunnel that does not answer says nothing of its certificate.
        let quiet = ClientCert::new(&rec, None, NOW);
        assert_eq!(quiet.warnings.len(), 1, "{:?}", quiet.warnings);
    }

    #[test]
    fn spans_read_as_people_say_them() {
        assert_eq!(span(-5), "0 s");
        assert_eq!(span(59), "59 s");
        assert_eq!(span(3599), "59 min");
        assert_eq!(span(3 * 3600 + 61), "3 h 1 min");
        assert_eq!(span(10 * 86_400), "10 days");
    }
}

#[cfg(test)]
mod records_tests {
    use super::*;
    use efs_tunnel_contract::{KernelTlsStatus, MultiplexStatus};

    #[test]
    fn the_records_line_says_where_tls_is_done_and_why() {
        let mut t = Status {
            connections_open: 2,
            ..Status::default()
        };
        // An older tunnel, or both off: no line.
        assert_eq!(records_line(&t), None);
        t.kernel_tls = Some(KernelTlsStatus {
            enabled: true,
            available: Some(true),
            connections_open: 2,
            connections_total: 5,
            connections_closed_for_rekey: 1,
            ..KernelTlsStatus::default()
        });
        assert_eq!(
            records_line(&t).unwrap(),
            "  records     kernel TLS on 2 upstream connection(s) open, 5 in all, 1 closed for a key update\n"
        );
        t.kernel_tls = Some(KernelTlsStatus {
            enabled: true,
            available: Some(false),
            unavailable_reason: Some("the kernel refused the tls ULP: ENOENT".into()),
            ..KernelTlsStatus::default()
        });
        t.multiplexing = Some(MultiplexStatus {
            enabled: true,
            server_supports: Some(false),
            ..MultiplexStatus::default()
        });
        assert_eq!(
            records_line(&t).unwrap(),
            "  records     user space (kernel TLS unavailable: the kernel refused the tls ULP: ENOENT); partition multiplexing: the server does not speak it\n"
        );
    }
}
