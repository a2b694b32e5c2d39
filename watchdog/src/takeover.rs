//! Taking over the live mounts of amazon-efs-utils after an in-place upgrade
//! (`apt install ./efs-utils_*.deb`, `rpm -U`), so that no hard mount it made is orphaned.
//!
//! The incumbent's state files sit in the same directory under the same names as ours
//! (`<fs>.<mp>.<port>`) but in its schema, which [`crate::tunnels::Trust::read`] rejects as
//! not ours; the daemon then hands the file here ([`take_over`]). For each one:
//! * its state file (already checked: root's, in root's directory) and its tunnel config
//!   `stunnel-config.<name>` (checked the same way) are read
//!   (`efs_config::incumbent`); the port in the name must be the port it accepts on;
//! * while amazon-efs-utils' own watchdog still runs nothing is done (it would restart
//!   the tunnel we stop, and run our command line as its own): retried at every sweep;
//! * a mount the kernel no longer uses (and not made in the last 30 s) is cleaned up as
//!   the incumbent would have: its tunnel stopped, its files removed;
//! * a live mount gets our tunnel on *the incumbent's own listening socket* (copied out
//!   of the running stunnel or efs-proxy with pidfd_getfd, so the port is never
//!   unbound and no connection attempt of the NFS client is ever refused), and only once
//!   ours is ready (its first TLS handshake with the mount target succeeded) is the
//!   incumbent's tunnel stopped; the kernel's NFS client then reconnects through ours.
//!   This is the reverse of "stop theirs, then bind": if our tunnel cannot get through
//!   (a CA bundle we cannot use, a name we cannot verify) the incumbent's keeps serving
//!   and the file is left alone, logged once.
//!
//! The new state is ours, under the same name: our command line built from the config
//! as for a new mount (`TunnelCommand::for_mount`), the incumbent's `connect` and
//! `checkHost`, its netns, and for `iam` / `accesspoint` mounts its client certificate
//! (kept at `<name>+/certificate.pem`, which is where ours live too) with what renewal
//! needs. Then the incumbent's files go: the tunnel config, whatever else its `files`
//! lists inside the state directory, and its OpenSSL workspace in `<name>+/`.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use efs_config::incumbent::{self, IncumbentError, IncumbentState, Program, TunnelConfig};
use efs_config::state::{self, ClientCertRecord, MountState};
use efs_config::Config;
use efs_tunnel_contract::{MountTarget, NotReady, Readiness, TunnelCommand};
use log::{info, warn};
use nix::sys::signal::Signal;

use crate::sys::Pidfd;
use crate::tunnels::{remove, Tunnel};

/// How long our tunnel has to be ready (its first handshake) before the takeover is
/// given up and the incumbent's tunnel left serving.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the incumbent's tunnel has to exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// A state file younger than this may belong to a mount still being made (the
/// incumbent's own `UNMOUNT_DIFF_TIME`).
const YOUNG: f64 = 30.0;
/// The incumbent's client certificates are valid for 3 hours from their creation.
const INCUMBENT_CERT_VALIDITY: f64 = 3.0 * 3600.0;

/// What became of one incumbent state file.
#[derive(Debug)]
pub enum Outcome {
    /// The mount is ours now: this tunnel serves it, under the same state file.
    TakenOver(Box<Tunnel>),
    /// The mount was gone: the incumbent's tunnel was stopped and its files removed.
    CleanedUp,
    /// Not now: tried again at the next sweep (logged once per reason by the caller).
    Later(String),
    /// Not this file, until it changes: why (logged once by the caller).
    Refused(String),
    /// Not amazon-efs-utils' state file (not JSON, or no stunnel / efs-proxy command).
    NotIncumbent,
}

/// The kernel's use of tunnel ports, as read for this sweep (`None`: unreadable).
pub type PortsInUse = Option<BTreeMap<u16, Vec<String>>>;

/// Takes over the incumbent mount whose state file is `path` (whose text is `text`).
pub fn take_over(cfg: &Config, path: &Path, text: &[u8], ports: &PortsInUse) -> Outcome {
    match try_take_over(cfg, path, text, ports) {
        Ok(o) | Err(o) => o,
    }
}

fn try_take_over(
    cfg: &Config,
    path: &Path,
    text: &[u8],
    ports: &PortsInUse,
) -> Result<Outcome, Outcome> {
    let dir = &cfg.paths.state_dir;
    let refuse = |why: String| Outcome::Refused(why);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let inc = IncumbentState::parse(text).map_err(|e| match e {
        IncumbentError::NotJson(_) | IncumbentError::NotIncumbent(_) => Outcome::NotIncumbent,
        IncumbentError::Field { .. } => refuse(e.to_string()),
    })?;
    let (name_fs_id, port) = incumbent::name_parts(&name)
        .ok_or_else(|| refuse("its name is not <fs-id>.<mountpoint>.<port>".into()))?;
    if let Some(other) = inc
        .service_type
        .as_deref()
        .filter(|t| *t != state::SERVICE_TYPE_EFS)
    {
        let other: String = other.chars().take(32).collect();
        return Err(refuse(format!("it is a mount of {other:?}, not of EFS")));
    }
    let config_path = dir.join(incumbent::tunnel_config_name(&name));
    if inc.tunnel_config != config_path {
        return Err(refuse(format!(
            "its tunnel config {} is not {}",
            inc.tunnel_config.display(),
            config_path.display()
        )));
    }
    let owner = nix::unistd::geteuid().as_raw();
    state::check_trusted(&config_path, owner)
        .map_err(|why| refuse(format!("its tunnel config: {why}")))?;
    let config_text = std::fs::read_to_string(&config_path)
        .map_err(|e| refuse(format!("cannot read {}: {e}", config_path.display())))?;
    let tc = TunnelConfig::parse(&config_text)
        .map_err(|e| refuse(format!("{}: {e}", config_path.display())))?;
    if tc.accept_port != port {
        return Err(refuse(format!(
            "its tunnel accepts on port {}, not {port}",
            tc.accept_port
        )));
    }
    if let Some(pid) = incumbent_watchdog() {
        return Err(Outcome::Later(format!(
            "amazon-efs-utils' watchdog (pid {pid}) still runs; stop it (systemctl stop amazon-efs-mount-watchdog, or kill {pid}) and its mounts are taken over"
        )));
    }
    let running = running_incumbent(&inc);
    let Some(ports) = ports else {
        return Err(Outcome::Later("the mount table cannot be read".into()));
    };
    if !ports.contains_key(&port) {
        let age = inc.mount_time.map(|t| state::unix_time() - t);
        if age.is_some_and(|a| a < YOUNG) {
            return Err(Outcome::Later("its mount is still being made".into()));
        }
        if let Some(p) = &running {
            info!(
                "the mount of {name} is gone: stopping amazon-efs-utils' tunnel (pid {})",
                p.pidfd.pid
            );
            stop(&p.pidfd);
        }
        remove_incumbent_files(dir, &name, &inc, None);
        remove(path);
        return Ok(Outcome::CleanedUp);
    }
    let fs_id = inc
        .cert
        .as_ref()
        .and_then(|c| c.fs_id.clone())
        .unwrap_or_else(|| name_fs_id.to_string());
    if fs_id != name_fs_id {
        return Err(refuse(format!(
            "it names file system {fs_id}, its file name {name_fs_id}"
        )));
    }
    if matches!(inc.program, Program::EfsProxy { tls: false }) {
        // A plain (unencrypted) mount through efs-proxy: ours is encrypted, and is
        // ready only if the mount target answers TLS on 2049, which EFS does.
        info!("{name} is a mount without TLS; it is taken over with TLS");
    }

    // Our command line, as for a new mount of the same target.
    let connect_host = tc.connect_host().to_string();
    let check_host = tc
        .check_host
        .clone()
        .unwrap_or_else(|| strip_az(&connect_host, &fs_id));
    let region = inc.cert.as_ref().and_then(|c| c.region.clone());
    let cafile = tc.cafile.clone().or_else(|| {
        cfg.cafile(region.as_deref().unwrap_or(""))
            .map(Path::to_path_buf)
    });
    let client_cert = client_cert_record(&inc, &tc, region.as_deref());
    let control = state::control_socket_path(dir, port);
    let spec = TunnelCommand::for_mount(
        cfg,
        MountTarget {
            connect: tc.connect.clone(),
            check_host: check_host.clone(),
            fs_id: fs_id.clone(),
            cafile,
            control: control.clone(),
            netns: inc.netns.clone(),
            client_cert: client_cert
                .as_ref()
                .map(|c| (c.certificate.clone(), c.private_key.clone())),
        },
    );

    // The port: the incumbent's own socket if its tunnel runs, else bound again.
    let listener: OwnedFd = match &running {
        Some(p) => p
            .listener(port)
            .map_err(|e| Outcome::Refused(format!("cannot share its tunnel's port: {e}")))?,
        None => {
            crate::tunnels::bind_loopback(port, inc.netns.as_deref()).map_err(Outcome::Later)?
        }
    };
    let (mut child, ready) =
        efs_tunnel_contract::spawn_with_ready_pipe(&spec.to_args(), listener.as_fd())
            .map_err(|e| Outcome::Refused(format!("cannot start our tunnel: {e}")))?;
    match ready.wait(READY_TIMEOUT) {
        Ok(Readiness::Ready { .. }) => {}
        outcome => {
            let _ = efs_tunnel_contract::stop(&mut child);
            let why = match outcome {
                Ok(Readiness::Failed(why)) => why,
                Err(NotReady::TimedOut) => format!("not ready in {READY_TIMEOUT:?}"),
                _ => "it exited at once (see efs-tunnel.log)".into(),
            };
            return Err(refuse(format!(
                "our tunnel cannot reach {} ({check_host}): {why}; amazon-efs-utils' tunnel is left serving",
                tc.connect
            )));
        }
    }
    if let Some(p) = &running {
        stop(&p.pidfd);
    }
    let pid = child.id() as i32;
    let record = MountState {
        pid,
        cmd: spec.to_args(),
        files: Vec::new(),
        mount_time: inc.mount_time.unwrap_or_else(state::unix_time),
        mountpoint: inc
            .mountpoint
            .clone()
            .or_else(|| ports.get(&port).and_then(|m| m.first().cloned()))
            .unwrap_or_default(),
        service_type: state::SERVICE_TYPE_EFS.into(),
        fs_id,
        port,
        dns_name: connect_host,
        check_host,
        connect: spec.connect.clone(),
        control_socket: control,
        client_cert,
        ..MountState::default()
    };
    if let Err(e) = record.write(dir, &name) {
        // Ours serves the port now (theirs is stopped): keep it running, unwatched, and
        // say what is wrong; the file is looked at again when it changes.
        warn!("cannot write the state file {name}: {e}; the tunnel (pid {pid}) runs unwatched");
        return Err(refuse(format!("cannot write the state file: {e}")));
    }
    let kept = record.client_cert.as_ref().map(|c| c.certificate.clone());
    remove_incumbent_files(dir, &name, &inc, kept.as_deref());
    info!(
        "took over the mount of {} at {} (port {port}) from amazon-efs-utils' {}: our tunnel is pid {pid}",
        record.fs_id,
        record.mountpoint,
        inc.program.name()
    );
    let tunnel = Tunnel::taken_over(path.to_path_buf(), record, child, listener)
        .map_err(|e| refuse(format!("cannot watch our tunnel: {e}")))?;
    Ok(Outcome::TakenOver(Box::new(tunnel)))
}

/// `checkHost` as the incumbent derives it when it is not written: the DNS name with an
/// AZ prefix dropped (`us-east-1a.fs-….efs…` → `fs-….efs…`), since EFS's certificate is
/// a wildcard for the region.
fn strip_az(host: &str, fs_id: &str) -> String {
    host.find(fs_id).map_or(host, |at| &host[at..]).to_string()
}

/// The client certificate to keep presenting: only an authorization certificate (`iam`,
/// `accesspoint`). The incumbent makes one for every TLS mount; ours present none
/// unless EFS authorizes by it.
fn client_cert_record(
    inc: &IncumbentState,
    tc: &TunnelConfig,
    region: Option<&str>,
) -> Option<ClientCertRecord> {
    let c = inc.cert.as_ref()?;
    if c.credentials_method.is_none() && c.access_point.is_none() {
        return None;
    }
    let issued = c.created.unwrap_or(0.0);
    Some(ClientCertRecord {
        certificate: tc.cert.clone().unwrap_or_else(|| c.certificate.clone()),
        private_key: tc.key.clone().unwrap_or_else(|| c.private_key.clone()),
        common_name: c.common_name.clone().unwrap_or_default(),
        region: region.unwrap_or_default().to_string(),
        access_point: c.access_point.clone(),
        iam_source: c.credentials_method.clone(),
        issued,
        // Unknown creation: due at once.
        not_after: issued + INCUMBENT_CERT_VALIDITY,
        credentials_expire: None,
        renewed: None,
        renewal_error: None,
    })
}

/// The incumbent's running tunnel, checked against pid reuse: a process of the program
/// its state names (by `comm`, which reading cannot hang) whose command line names its
/// tunnel config.
struct Running {
    pidfd: Pidfd,
}

fn running_incumbent(inc: &IncumbentState) -> Option<Running> {
    let pid = inc.pid?;
    let pidfd = Pidfd::open(pid).ok()?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    if !inc.program.matches_comm(comm.trim()) {
        return None;
    }
    // stunnel and efs-proxy never touch an NFS mount: reading their cmdline cannot hang.
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let names_config = cmdline
        .split(|b| *b == 0)
        .any(|a| Path::new(std::ffi::OsStr::from_bytes(a)) == inc.tunnel_config);
    names_config.then_some(Running { pidfd })
}

impl Running {
    /// A copy of the socket it listens on `port` with: found by its inode in the
    /// process's own view of TCP (its network namespace), then among its descriptors.
    fn listener(&self, port: u16) -> Result<OwnedFd, String> {
        let pid = self.pidfd.pid;
        let tcp = std::fs::read_to_string(format!("/proc/{pid}/net/tcp"))
            .map_err(|e| format!("/proc/{pid}/net/tcp: {e}"))?;
        let inode = incumbent::listening_inode(&tcp, port)
            .ok_or_else(|| format!("pid {pid} does not listen on 127.0.0.1:{port}"))?;
        let links = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map_err(|e| format!("/proc/{pid}/fd: {e}"))?
            .flatten()
            .filter_map(|e| {
                let fd = e.file_name().to_str()?.parse().ok()?;
                let link = std::fs::read_link(e.path()).ok()?;
                Some((fd, link.to_string_lossy().into_owned()))
            });
        let fd = incumbent::socket_fd(links, inode)
            .ok_or_else(|| format!("pid {pid} holds no descriptor of socket {inode}"))?;
        self.pidfd
            .get_fd(fd)
            .map_err(|e| format!("pidfd_getfd({pid}, {fd}): {e}"))
    }
}

/// SIGTERM, up to [`STOP_GRACE`] to exit, then SIGKILL. Its process only: stunnel and
/// efs-proxy run in a session of their own, with no children.
fn stop(pidfd: &Pidfd) {
    if pidfd.signal(Signal::SIGTERM).is_err() {
        return; // already gone
    }
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline {
        if exited(pidfd) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    warn!(
        "amazon-efs-utils' tunnel (pid {}) did not exit on SIGTERM; killing it",
        pidfd.pid
    );
    let _ = pidfd.signal(Signal::SIGKILL);
}

fn exited(pidfd: &Pidfd) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
    poll(&mut fds, PollTimeout::ZERO).is_ok_and(|n| n > 0)
}

/// amazon-efs-utils' watchdog, if one runs: a process named as ours (`comm` is cut to
/// 15 characters) that is not this binary (it is Python's).
fn incumbent_watchdog() -> Option<i32> {
    let me = std::fs::read_link("/proc/self/exe").ok()?;
    let own = std::process::id() as i32;
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        if pid == own {
            return None;
        }
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        if !"amazon-efs-mount-watchdog".starts_with(comm.trim()) || comm.trim().len() < 14 {
            return None;
        }
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
        (exe != me).then_some(pid)
    })
}

/// Removes what the incumbent left for this mount, only inside the state directory: its
/// tunnel config, what its `files` list, and its workspace `<name>+/` (all of it, or
/// all but the certificate we keep presenting).
fn remove_incumbent_files(dir: &Path, name: &str, inc: &IncumbentState, keep: Option<&Path>) {
    let mut files = inc.files.clone();
    files.push(dir.join(incumbent::tunnel_config_name(name)));
    for f in files.iter().filter(|f| incumbent::inside(dir, f)) {
        remove(f);
    }
    let workspace = dir.join(format!("{name}+"));
    let Ok(meta) = std::fs::symlink_metadata(&workspace) else {
        return;
    };
    if !meta.is_dir() {
        return;
    }
    match keep.filter(|k| k.parent() == Some(workspace.as_path())) {
        None => {
            if let Err(e) = std::fs::remove_dir_all(&workspace) {
                warn!("cannot remove {}: {e}", workspace.display());
            }
        }
        Some(kept) => {
            for e in std::fs::read_dir(&workspace)
                .into_iter()
                .flatten()
                .flatten()
            {
                let p: PathBuf = e.path();
                if p == kept {
                    continue;
                }
                let r = match e.file_type() {
                    Ok(t) if t.is_dir() => std::fs::remove_dir_all(&p),
                    _ => std::fs::remove_file(&p),
                };
                if let Err(e) = r {
                    warn!("cannot remove {}: {e}", p.display());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_az_prefix_is_dropped_from_the_name_checked() {
        assert_eq!(
            strip_az(
                "us-east-1a.fs-12345678.efs.us-east-1.amazonaws.com",
                "fs-12345678"
            ),
            "fs-12345678.efs.us-east-1.amazonaws.com"
        );
        assert_eq!(strip_az("10.0.0.5", "fs-12345678"), "10.0.0.5");
    }
}
