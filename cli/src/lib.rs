//! `efs-utils status`: one row per EFS mount on the host, answering "is this mount really
//! encrypted, and is its tunnel healthy?" without `grep mount.log` and `ps`.
//!
//! It reads the state directory, the mount table and the NFS client's tables, and asks
//! every tunnel's control socket for its status at once, with a short timeout: stuck
//! tunnels show as not answering after one timeout in all, and the command never touches
//! a mountpoint, so it cannot hang on a stuck mount. A mount's health is that of the
//! tunnel the kernel really sends its traffic to, which for a second mount of one server
//! is the first mount's (see `efs_config::mounts`), not the one its `port=` names.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use efs_config::mounts::{self, KernelView};
use efs_config::state::{self, MountState};
use efs_config::Config;
use efs_tunnel_contract::control::{self, Status};
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
    let mut mounts: Vec<Row> = states
        .into_iter()
        .map(|st| tls_row(st, &view, &tunnels, watchdog.is_some()))
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
        tunnel: tunnel.and_then(|t| t.answer.clone().ok()),
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
    }
    for p in &r.problems {
        out.push_str(&format!("\nproblem: {p}\n"));
    }
    out
}
