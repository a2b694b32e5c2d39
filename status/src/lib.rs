//! `efs-utils status`: one row per EFS mount on the host, answering "is this mount really
//! encrypted, and is its tunnel healthy?" without `grep mount.log` and `ps`.
//!
//! It reads the state directory and the mount table, and asks every tunnel's control
//! socket for its status at once, with a short timeout: stuck tunnels show as not
//! answering after one timeout in all, and the command never touches a mountpoint, so it
//! cannot hang on a stuck mount.

use std::path::Path;
use std::time::Duration;

use efs_config::mounts;
use efs_config::state::{self, MountState};
use efs_config::Config;
use efs_tunnel_contract::control::{self, Status};
use serde::Serialize;

/// How long a tunnel gets to answer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub fs_id: String,
    pub mountpoint: String,
    /// "tls" or "plain".
    pub transport: &'static str,
    pub port: Option<u16>,
    pub pid: Option<i32>,
    /// healthy, not answering, restarting, not running, unmounted (waiting for
    /// teardown), plain.
    pub state: String,
    /// Times the watchdog restarted the tunnel.
    pub restarts: u64,
    pub mounted: bool,
    pub tunnel: Option<Status>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub watchdog_pid: Option<i32>,
    pub mounts: Vec<Row>,
    /// State files that could not be read.
    pub problems: Vec<String>,
}

/// Builds the report for the host `cfg` describes.
pub fn report(cfg: &Config) -> Report {
    let table =
        mounts::nfs_mounts(&std::fs::read_to_string(&cfg.paths.mountinfo).unwrap_or_default());
    let mounted_ports: Vec<u16> = table
        .iter()
        .filter(|m| m.local)
        .filter_map(|m| m.port)
        .collect();
    let watchdog = find_process("amazon-efs-moun");
    let mut mounts = Vec::new();
    let mut problems = Vec::new();
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
    let (ports, watchdog_running) = (&mounted_ports, watchdog.is_some());
    let tls_rows: Vec<std::thread::Result<Row>> = std::thread::scope(|scope| {
        let asks: Vec<_> = states
            .into_iter()
            .map(|st| scope.spawn(move || tls_row(st, ports, watchdog_running)))
            .collect();
        asks.into_iter().map(|ask| ask.join()).collect()
    });
    for row in tls_rows {
        match row {
            Ok(row) => mounts.push(row),
            Err(_) => problems.push("internal error while asking a tunnel for its status".into()),
        }
    }
    mounts.extend(plain_rows(&table));
    Report {
        watchdog_pid: watchdog,
        mounts,
        problems,
    }
}

fn tls_row(st: MountState, mounted_ports: &[u16], watchdog_running: bool) -> Row {
    let mounted = mounted_ports.contains(&st.port);
    let answer = control::query_status(&st.control_socket, ANSWER_TIMEOUT);
    let alive = running(st.pid);
    let state = if st.unmount_time.is_some() {
        "unmounted, waiting for teardown"
    } else if answer.is_ok() {
        "healthy"
    } else if alive {
        "not answering"
    } else if watchdog_running {
        "restarting"
    } else {
        "not running"
    }
    .to_string();
    Row {
        fs_id: st.fs_id,
        mountpoint: st.mountpoint,
        transport: "tls",
        port: Some(st.port),
        pid: Some(st.pid),
        state,
        restarts: st.restarts,
        mounted,
        tunnel: answer.ok(),
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
                pid: None,
                state: "plain NFS, not encrypted".into(),
                restarts: 0,
                mounted: true,
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
        out.push_str(&format!("\n{} on {}: {}\n", m.fs_id, m.mountpoint, m.state));
        if let Some(port) = m.port {
            out.push_str(&format!(
                "  tunnel      127.0.0.1:{port}, pid {}, restarted {} time(s)\n",
                m.pid.unwrap_or_default(),
                m.restarts
            ));
        }
        if let Some(t) = &m.tunnel {
            out.push_str(&format!(
                "  target      {}:{} (certificate name {})\n",
                t.upstream_host, t.upstream_port, t.check_host
            ));
            if let Some(tls) = &t.tls {
                out.push_str(&format!("  tls         {} {}\n", tls.version, tls.cipher));
                if let Some(subject) = &tls.peer_subject {
                    let days = tls.peer_not_after_unix.map(|t| (t - now_unix) / 86_400);
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
