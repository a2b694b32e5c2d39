//! One mount's tunnel as the watchdog keeps it, and how a tunnel is restarted.
//!
//! The watchdog holds a duplicate of each tunnel's listening socket. When a tunnel dies,
//! the socket stays open, so the NFS client's reconnects wait in its backlog instead of
//! being refused, and a new tunnel is started on that same socket at once (then with
//! backoff if it keeps dying, never giving up while the mount exists). A tunnel the
//! watchdog did not start (mount.efs did, or an earlier watchdog) is adopted: its pid is
//! checked against pid reuse (process name, then its command line must name this mount's
//! control socket), and its socket is copied out of it with `pidfd_getfd`.
//!
//! Nothing here blocks: stopping is a phase with a deadline, driven by the main loop.
//!
//! A state file names a command the watchdog runs as root and files it deletes, so every
//! state it acts on, first read or re-read, passes one check ([`Trust`]): the file and
//! the state directory are root's alone and the command is the configured tunnel binary.
//! What fails is a [`Skip`], logged once and never acted on.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use efs_config::state::{self, MountState, StateError};
use efs_config::Config;
use efs_tunnel_contract::{RunningArgs, PROCESS_NAME};
use log::{info, warn};
use nix::sched::{setns, CloneFlags};
use nix::sys::signal::Signal;

use crate::sys::Pidfd;

/// How long a tunnel gets to exit after SIGTERM before SIGKILL (the tunnel contract's).
pub use efs_tunnel_contract::TERM_GRACE;
/// How long the main loop waits for a tunnel's answer before it tells it to reload.
const RELOAD_ASK_TIME: std::time::Duration = std::time::Duration::from_millis(500);

/// What came of telling a tunnel about a renewed certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// SIGHUP sent to this pid.
    Told(i32),
    /// It did not answer: it may be starting; ask again at the next look.
    NotAnswering,
    /// No tunnel runs; a restart reads the file.
    NoTunnel,
    Failed(String),
}

/// Why a state file is not acted on: nothing it names is run or removed. Its text is
/// the log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// It cannot be read (or stat'ed).
    Unreadable { path: PathBuf, error: String },
    /// Root did not write it alone (owner, mode, a symlink: the file or the state
    /// directory), or its command is not the tunnel binary.
    Untrusted { path: PathBuf, why: String },
    /// It is not a mount state: not JSON of the schema, or numbers it cannot mean (a
    /// `mount_time` of -1e20).
    Corrupt { path: PathBuf, error: String },
}

impl Skip {
    /// What is wrong, without the state file's name or the consequence.
    pub fn reason(&self) -> String {
        match self {
            Skip::Unreadable { path, error } => {
                format!("cannot read state file {}: {error}", path.display())
            }
            Skip::Untrusted { why, .. } => why.clone(),
            Skip::Corrupt { error, .. } => format!("not a valid mount state: {error}"),
        }
    }
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Skip::Unreadable { path, error } => {
                write!(
                    f,
                    "skipping cannot read state file {}: {error}",
                    path.display()
                )
            }
            Skip::Untrusted { path, why } => write!(
                f,
                "skipping state file {}: {why}; nothing in it is run or removed",
                path.display()
            ),
            Skip::Corrupt { path, error } => write!(
                f,
                "skipping state file {} is not a valid mount state: {error}",
                path.display()
            ),
        }
    }
}

impl From<StateError> for Skip {
    fn from(e: StateError) -> Skip {
        match e {
            StateError::Unreadable(path, error) => Skip::Unreadable { path, error },
            StateError::Corrupt(path, error) => Skip::Corrupt { path, error },
        }
    }
}

/// Whether this watchdog may act on a state file: run its `cmd` as root and delete its
/// `files`. Only what root wrote counts (file and directory owned by root, not group- or
/// world-writable, no symlink: `state::check_trusted`), and the command must be the
/// configured tunnel binary, whatever a file says. Paths are the ones the watchdog
/// started with (a SIGHUP does not change them).
#[derive(Debug, Clone)]
pub struct Trust {
    state_dir: PathBuf,
    tunnel: PathBuf,
    owner: u32,
}

impl Trust {
    pub fn new(cfg: &Config) -> Trust {
        Trust {
            state_dir: cfg.paths.state_dir.clone(),
            tunnel: cfg.paths.tunnel.clone(),
            owner: nix::unistd::geteuid().as_raw(),
        }
    }

    /// The checks on a state as the watchdog holds it (already read).
    pub fn check(&self, path: &Path, st: &MountState) -> Result<(), Skip> {
        self.check_file(path)?;
        self.check_command(path, st)
    }

    /// Reads a state file, only once the file and its directory are trusted: a symlink
    /// or a FIFO in their place is never opened.
    pub fn read(&self, path: &Path) -> Result<MountState, Skip> {
        self.check_file(path)?;
        let st = MountState::read(path)?;
        self.check_command(path, &st)?;
        Ok(st)
    }

    fn check_file(&self, path: &Path) -> Result<(), Skip> {
        if let Err(e) = std::fs::symlink_metadata(path) {
            return Err(Skip::Unreadable {
                path: path.to_path_buf(),
                error: e.to_string(),
            });
        }
        let untrusted = |why| Skip::Untrusted {
            path: path.to_path_buf(),
            why,
        };
        state::check_trusted(&self.state_dir, self.owner).map_err(untrusted)?;
        state::check_trusted(path, self.owner).map_err(untrusted)
    }

    fn check_command(&self, path: &Path, st: &MountState) -> Result<(), Skip> {
        let why = match st.cmd.first() {
            Some(program) if Path::new(program) == self.tunnel => return Ok(()),
            Some(program) => format!(
                "its command {program:?} is not the tunnel binary {}",
                self.tunnel.display()
            ),
            None => "it names no command".into(),
        };
        Err(Skip::Untrusted {
            path: path.to_path_buf(),
            why,
        })
    }
}

/// A tunnel that lived this long is healthy again: its next death restarts at once.
const STABLE_AFTER: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub enum Phase {
    Running,
    /// Dead; start again at this time.
    RestartAt(Instant),
    /// Being torn down: SIGTERM sent (then SIGKILL at the deadline).
    Stopping {
        deadline: Instant,
        killed: bool,
    },
    /// The mount has no tunnel of its own: the kernel sends it over another mount's
    /// tunnel (`served_by` in its state). Nothing to run or restart; its state file goes
    /// when the mount does.
    Riding,
    /// Torn down; the daemon drops it.
    Gone,
}

#[derive(Debug)]
struct Process {
    pidfd: Pidfd,
    /// Set when this watchdog started it, so that it can reap it and read its status.
    child: Option<Child>,
}

#[derive(Debug)]
pub struct Tunnel {
    pub state_path: PathBuf,
    pub state: MountState,
    listener: Option<OwnedFd>,
    process: Option<Process>,
    pub phase: Phase,
    started: Instant,
    quick_deaths: u32,
    /// A mount has referenced this port since the watchdog started watching.
    pub seen_mounted: bool,
    /// When the mount table was first seen without this port.
    pub unmounted_since: Option<Instant>,
    /// The state file's inode when this watchdog last read or wrote it.
    ino: Option<u64>,
    /// Renewal of the client certificate, if the mount has one (`crate::renew`).
    pub renewal: crate::renew::Tracker,
    /// The last re-read of the state file that was not believed, as logged (once).
    distrusted: Option<Skip>,
}

impl Tunnel {
    /// Takes over the tunnel a state file describes, restarting it if it is not running.
    pub fn adopt(state_path: PathBuf, state: MountState) -> Tunnel {
        let mut t = Tunnel {
            state_path,
            state,
            listener: None,
            process: None,
            phase: Phase::Running,
            started: Instant::now(),
            quick_deaths: 0,
            seen_mounted: false,
            unmounted_since: None,
            ino: None,
            renewal: Default::default(),
            distrusted: None,
        };
        if let Some(port) = t.state.served_by {
            info!(
                "{} has no tunnel of its own: the kernel sends it over the tunnel on port {port}",
                t.name()
            );
            t.phase = Phase::Riding;
            return t;
        }
        match running_tunnel(&t.state) {
            Ok((pidfd, listen_fd)) => {
                match pidfd.get_fd(listen_fd) {
                    Ok(fd) => t.listener = Some(fd),
                    Err(e) => warn!("{}: cannot hold the tunnel's listening socket ({e}); a restart will re-bind the port", t.name()),
                }
                info!("adopted the tunnel of {} (pid {})", t.name(), pidfd.pid);
                t.process = Some(Process { pidfd, child: None });
            }
            Err(why) => {
                warn!(
                    "the tunnel of {} is not running ({why}); starting it",
                    t.name()
                );
                t.phase = Phase::RestartAt(Instant::now());
            }
        }
        t
    }

    /// A tunnel this watchdog has just started on `listener` for a mount it took over
    /// from amazon-efs-utils (`crate::takeover`), whose state it has just written.
    pub fn taken_over(
        state_path: PathBuf,
        state: MountState,
        child: Child,
        listener: OwnedFd,
    ) -> Result<Tunnel, String> {
        let pid = child.id() as i32;
        let pidfd = Pidfd::open(pid).map_err(|e| format!("pidfd_open({pid}): {e}"))?;
        let mut t = Tunnel {
            state_path,
            state,
            listener: Some(listener),
            process: Some(Process {
                pidfd,
                child: Some(child),
            }),
            phase: Phase::Running,
            started: Instant::now(),
            quick_deaths: 0,
            // The takeover saw the kernel use its port.
            seen_mounted: true,
            unmounted_since: None,
            ino: None,
            renewal: Default::default(),
            distrusted: None,
        };
        t.note_ino();
        Ok(t)
    }

    /// `fs-… at /mnt/efs, port 20123`, for log lines.
    pub fn name(&self) -> String {
        format!(
            "{} at {}, port {}",
            self.state.fs_id, self.state.mountpoint, self.state.port
        )
    }

    pub fn pidfd(&self) -> Option<&Pidfd> {
        self.process.as_ref().map(|p| &p.pidfd)
    }

    pub fn pid(&self) -> Option<i32> {
        self.pidfd().map(|p| p.pid)
    }

    /// Lets go of the tunnel because its state file was removed (by mount.efs undoing a
    /// failed mount, or by hand). A tunnel no mount uses is an orphan nobody will ever
    /// stop, so it gets SIGTERM; one a mount still uses keeps running, since killing it
    /// would hang that mount. Returns the process if it is our child, to be reaped.
    pub fn release(mut self, in_use: bool) -> Option<Child> {
        let p = self.process.take()?;
        if in_use {
            warn!("{} was removed while a mount still uses port {}; leaving its tunnel (pid {}) running", self.state_path.display(), self.state.port, p.pidfd.pid);
        } else {
            info!(
                "stopping the tunnel of {} (pid {}): its state file was removed",
                self.name(),
                p.pidfd.pid
            );
            let _ = p.pidfd.signal(Signal::SIGTERM);
        }
        p.child
    }

    /// `mount.efs` found that the kernel sends this mount over another mount's tunnel
    /// and rewrote the state (`served_by`): stop supervising the idle tunnel it started
    /// (and stop it, if mount.efs has not yet).
    pub fn become_rider(&mut self, state: MountState) -> Option<Child> {
        let via = state.served_by?;
        info!(
            "{} rides on the tunnel on port {via}; its own tunnel is not needed",
            self.name()
        );
        self.state = state;
        self.phase = Phase::Riding;
        self.listener = None;
        let p = self.process.take()?;
        let _ = p.pidfd.signal(Signal::SIGTERM);
        p.child
    }

    /// The state file was rewritten (or re-read before a restart) and what it says now
    /// fails `trust`: keep the state as it was when it was trusted, and say so once.
    pub fn distrust(&mut self, skip: Skip) {
        if self.distrusted.as_ref() != Some(&skip) {
            warn!(
                "{skip}; the tunnel of {} is kept as its state was when last trusted",
                self.name()
            );
            self.distrusted = Some(skip);
        }
    }

    /// Starts a tunnel on our copy of the listening socket (binding the port again only
    /// if we have none, in the mount's network namespace) with the recorded command line.
    /// The state file is read again first, and believed only if it passes `trust`.
    pub fn start(&mut self, trust: &Trust) -> Result<(), String> {
        match trust.read(&self.state_path) {
            Err(_) if std::fs::symlink_metadata(&self.state_path).is_err() => {
                // mount.efs removed it (a failed mount): nothing to restart.
                info!(
                    "{} is gone; not restarting the tunnel of {}",
                    self.state_path.display(),
                    self.name()
                );
                self.phase = Phase::Gone;
                return Ok(());
            }
            Ok(st) if st.served_by.is_some() => {
                self.become_rider(st);
                return Ok(());
            }
            Ok(_) => self.distrusted = None,
            Err(skip) => self.distrust(skip),
        }
        if self.listener.is_none() {
            let netns = recorded_netns(&self.state.cmd);
            self.listener = Some(bind_loopback(self.state.port, netns.as_deref())?);
        }
        let Some(listener) = self.listener.as_ref() else {
            return Err("no listening socket".into());
        };
        // The recorded command line as it is: the binary it names judges it.
        let child = efs_tunnel_contract::spawn(&self.state.cmd, listener.as_fd())
            .map_err(|e| e.to_string())?;
        let pid = child.id() as i32;
        let pidfd = Pidfd::open(pid).map_err(|e| format!("pidfd_open({pid}): {e}"))?;
        self.process = Some(Process {
            pidfd,
            child: Some(child),
        });
        self.phase = Phase::Running;
        self.started = Instant::now();
        self.renewal.hold_since = None;
        self.renewal.urgent = false;
        self.state.restarts = self.state.restarts.saturating_add(1);
        self.state.pid = pid;
        // Logged before the state names the new pid, so that whoever sees the new pid
        // also finds the line.
        info!("started the tunnel of {} (pid {pid})", self.name());
        self.save();
        Ok(())
    }

    /// The process exited: reap it if it is ours, say how it ended, and schedule what
    /// comes next.
    pub fn on_exit(&mut self) {
        let how = match self.process.take() {
            Some(Process {
                child: Some(mut c), ..
            }) => match c.wait() {
                Ok(s) => match (s.code(), s.signal()) {
                    (Some(code), _) => format!("exited with status {code}"),
                    (_, Some(sig)) => format!(
                        "was killed by signal {}",
                        Signal::try_from(sig).map(|s| s.as_str()).unwrap_or("?")
                    ),
                    _ => "exited".into(),
                },
                Err(e) => format!("exited (wait failed: {e})"),
            },
            Some(Process { pidfd, child: None }) => {
                format!(
                    "(pid {}) exited; its status is unknown (it was not started by this watchdog)",
                    pidfd.pid
                )
            }
            None => "exited".into(),
        };
        match self.phase {
            Phase::Stopping { .. } => self.finish_teardown(),
            _ => {
                let lived = self.started.elapsed();
                self.quick_deaths = if lived >= STABLE_AFTER {
                    1
                } else {
                    self.quick_deaths + 1
                };
                let delay = backoff(self.quick_deaths);
                warn!(
                    "the tunnel of {} {how} after {:.1} s; restarting it{}",
                    self.name(),
                    lived.as_secs_f64(),
                    if delay.is_zero() {
                        String::new()
                    } else {
                        format!(" in {:.1} s", delay.as_secs_f64())
                    }
                );
                self.phase = Phase::RestartAt(Instant::now() + delay);
            }
        }
    }

    /// Kills a tunnel that stopped answering (the health check); its death restarts it.
    pub fn kill_unresponsive(&mut self, why: &str) {
        if let (Phase::Running, Some(p)) = (&self.phase, &self.process) {
            warn!(
                "the tunnel of {} (pid {}) {why}; killing it so it restarts",
                self.name(),
                p.pidfd.pid
            );
            let _ = p.pidfd.signal(Signal::SIGKILL);
        }
    }

    /// Starts tearing the tunnel down: SIGTERM now, SIGKILL after [`TERM_GRACE`].
    pub fn begin_teardown(&mut self) {
        match &self.process {
            Some(p) => {
                info!(
                    "stopping the tunnel of {} (pid {}): no mount uses it",
                    self.name(),
                    p.pidfd.pid
                );
                let _ = p.pidfd.signal(Signal::SIGTERM);
                self.phase = Phase::Stopping {
                    deadline: Instant::now() + TERM_GRACE,
                    killed: false,
                };
            }
            None => self.finish_teardown(),
        }
    }

    /// The stopping deadline passed.
    pub fn on_stop_deadline(&mut self) {
        if let Phase::Stopping { killed, .. } = self.phase {
            if killed {
                // SIGKILL was not enough in time (a process stuck in the kernel): clean
                // up anyway; it dies when the kernel lets it.
                warn!(
                    "the tunnel of {} did not exit after SIGKILL; removing its state anyway",
                    self.name()
                );
                self.process = None;
                self.finish_teardown();
            } else if let Some(p) = &self.process {
                warn!(
                    "the tunnel of {} (pid {}) ignored SIGTERM; sending SIGKILL",
                    self.name(),
                    p.pidfd.pid
                );
                let _ = p.pidfd.signal(Signal::SIGKILL);
                self.phase = Phase::Stopping {
                    deadline: Instant::now() + Duration::from_secs(2),
                    killed: true,
                };
            }
        }
    }

    fn finish_teardown(&mut self) {
        for f in &self.state.files {
            remove(f);
        }
        if let Some(rec) = &self.state.client_cert {
            // Like `files`, but only what a state file may name: its certificate
            // directory in the state directory.
            let state_dir = self.state_path.parent().unwrap_or(Path::new("/"));
            match rec.certificate.parent() {
                Some(dir) if crate::renew::inside_state_dir(state_dir, &rec.certificate) => {
                    // every writer's temporary (`TEMP_NAME.<pid>`)
                    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                        if e.file_name().to_string_lossy().starts_with(crate::renew::TEMP_NAME) {
                            remove(&e.path());
                        }
                    }
                    if let Err(e) = state::remove_client_cert(&rec.certificate) {
                        warn!("cannot remove {}: {e}", dir.display());
                    }
                }
                _ => warn!(
                    "not removing the client certificate {} of {}: it is not in the state directory",
                    rec.certificate.display(),
                    self.name()
                ),
            }
        }
        remove(&self.state.control_socket);
        remove(&self.state_path);
        self.listener = None;
        self.phase = Phase::Gone;
        info!("removed the tunnel and state of {}", self.name());
    }

    /// Whether this mount's client certificate is renewed here: it has one, and its own
    /// tunnel (riders present none; a tunnel that outlives its mount for riders renews).
    pub fn renews(&self) -> bool {
        self.state.client_cert.is_some()
            && self.state.served_by.is_none()
            && matches!(self.phase, Phase::Running | Phase::RestartAt(_))
    }

    /// Tells the running tunnel to load its certificate again, for new connections. Only
    /// a tunnel that answers on its control socket is signalled: before it serves that
    /// socket it may not have its SIGHUP handler yet, and the signal would kill it. (One
    /// that started after the file was written loads it again: harmless.) Only through
    /// the pidfd of the process this watchdog adopted (after its pid-reuse check) or
    /// started.
    pub fn reload_certificate(&self) -> Reload {
        let (Phase::Running, Some(p)) = (&self.phase, &self.process) else {
            return Reload::NoTunnel;
        };
        if efs_tunnel_contract::query_status(&self.state.control_socket, RELOAD_ASK_TIME).is_err() {
            return Reload::NotAnswering;
        }
        match p.pidfd.signal(Signal::SIGHUP) {
            Ok(()) => Reload::Told(p.pidfd.pid),
            Err(e) => Reload::Failed(format!("cannot signal pid {}: {e}", p.pidfd.pid)),
        }
    }

    /// Records a renewed (or failed) client certificate in the state file.
    pub fn set_client_cert(&mut self, rec: state::ClientCertRecord) {
        if self.state.client_cert.as_ref() != Some(&rec) {
            self.state.client_cert = Some(rec);
            self.save();
        }
    }

    /// Records the time the mount disappeared (or clears it), in memory and on disk.
    pub fn set_unmounted(&mut self, since: Option<Instant>) {
        self.unmounted_since = since;
        self.state.unmount_time = since.map(|_| state::unix_time());
        self.save();
    }

    /// Records which other mounts ride on this tunnel, if that changed.
    pub fn set_also_serves(&mut self, mountpoints: Vec<String>) {
        if self.state.also_serves != mountpoints {
            self.state.also_serves = mountpoints;
            self.save();
        }
    }

    pub fn saved_ino(&self) -> Option<u64> {
        self.ino
    }

    /// Remembers the inode the state file had when it was read.
    pub fn set_ino(&mut self, ino: u64) {
        self.ino = Some(ino);
    }

    /// Remembers the state file's inode as it is now (after writing it).
    fn note_ino(&mut self) {
        self.ino = std::fs::metadata(&self.state_path)
            .ok()
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m));
    }

    /// Rewrites the state file (only called when something in it changed).
    fn save(&mut self) {
        let (Some(dir), Some(name)) = (self.state_path.parent(), self.state_path.file_name())
        else {
            return;
        };
        match self.state.rewrite(dir, &name.to_string_lossy()) {
            Ok(true) => self.note_ino(),
            // Removed meanwhile (mount.efs undid a failed mount): the next rescan lets go.
            Ok(false) => {}
            Err(e) => warn!("cannot update {}: {e}", self.state_path.display()),
        }
    }

    /// When the main loop must next look at this tunnel, if at a set time.
    pub fn deadline(&self, grace: Duration) -> Option<Instant> {
        match self.phase {
            // Held for a renewal (`renew::Tracker::holds_restart`): the outcome wakes
            // the loop, at the latest this.
            Phase::RestartAt(t) => Some(self.renewal.hold_deadline().map_or(t, |h| h.max(t))),
            Phase::Stopping { deadline, .. } => Some(deadline),
            Phase::Running | Phase::Riding => self.unmounted_since.map(|t| t + grace),
            Phase::Gone => None,
        }
    }

    /// Seconds since the helper mounted it.
    pub fn mount_age(&self) -> Duration {
        // The state's times are checked when it is read; saturate all the same.
        Duration::try_from_secs_f64((state::unix_time() - self.state.mount_time).max(0.0))
            .unwrap_or(Duration::MAX)
    }
}

/// 0 for a first death, then 0.2, 0.4, 0.8 ... seconds, at most 5.
fn backoff(quick_deaths: u32) -> Duration {
    if quick_deaths <= 1 {
        return Duration::ZERO;
    }
    let ms = 200u64.saturating_mul(1 << (quick_deaths - 2).min(10));
    Duration::from_millis(ms).min(MAX_BACKOFF)
}

/// The network namespace a recorded command line names (`--netns PATH` or
/// `--netns=PATH`): the mount's (`-o netns=`). The command is otherwise run as recorded,
/// not parsed (`efs_tunnel_contract::command`).
fn recorded_netns(cmd: &[String]) -> Option<PathBuf> {
    use efs_tunnel_contract::command::flag;
    let flag = flag::dashed(flag::NETNS);
    let with_eq = format!("{flag}=");
    cmd.iter().enumerate().skip(1).find_map(|(i, a)| {
        if *a == flag {
            cmd.get(i + 1).map(PathBuf::from)
        } else {
            a.strip_prefix(&with_eq).map(PathBuf::from)
        }
    })
}

/// Binds 127.0.0.1:`port` for a tunnel that has no socket the watchdog holds: in the
/// network namespace `netns` if the mount was made in one, where its NFS client connects
/// (a socket stays in the namespace it was made in; the tunnel's own `--netns` only
/// moves the tunnel). Namespaces are per thread, so a short-lived thread enters it and
/// binds; the watchdog's other threads stay where they are.
pub(crate) fn bind_loopback(port: u16, netns: Option<&Path>) -> Result<OwnedFd, String> {
    let bind = move || {
        TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
            .map(OwnedFd::from)
            .map_err(|e| format!("cannot bind 127.0.0.1:{port}: {e}"))
    };
    let Some(ns) = netns else {
        return bind();
    };
    let ns = ns.to_path_buf();
    std::thread::Builder::new()
        .name("netns-bind".into())
        .spawn(move || {
            let file = File::open(&ns)
                .map_err(|e| format!("cannot open network namespace {}: {e}", ns.display()))?;
            setns(file, CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("cannot enter network namespace {}: {e}", ns.display()))?;
            bind().map_err(|e| format!("{e} in network namespace {}", ns.display()))
        })
        .map_err(|e| format!("cannot start a thread to bind 127.0.0.1:{port}: {e}"))?
        .join()
        .unwrap_or_else(|_| Err(format!("the thread binding 127.0.0.1:{port} failed")))
}

/// The running tunnel a state file names, checked against pid reuse, and the number its
/// listening socket has in it.
fn running_tunnel(state: &MountState) -> Result<(Pidfd, i32), String> {
    if state.pid <= 0 {
        return Err("no pid recorded".into());
    }
    let pidfd = Pidfd::open(state.pid).map_err(|_| format!("pid {} is gone", state.pid))?;
    // comm comes from the task, not its memory: reading it cannot hang on a process
    // stuck in an NFS call, as reading cmdline can (aws/efs-utils #374). Only an
    // efs-tunnel (which never touches NFS) has its cmdline read.
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", state.pid)).unwrap_or_default();
    if comm.trim() != PROCESS_NAME {
        return Err(format!(
            "pid {} is now {:?}, not a tunnel",
            state.pid,
            comm.trim()
        ));
    }
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", state.pid)).unwrap_or_default();
    let running = RunningArgs::from_cmdline(&cmdline);
    if running.control.as_deref() != Some(state.control_socket.as_path()) {
        return Err(format!("pid {} is another mount's tunnel", state.pid));
    }
    let fd = running
        .listen_fd
        .ok_or_else(|| format!("pid {} has no --listen-fd", state.pid))?;
    Ok((pidfd, fd))
}

/// Removes a file; missing is fine, anything else is logged.
pub(crate) fn remove(p: &Path) {
    if let Err(e) = std::fs::remove_file(p) {
        if e.kind() != std::io::ErrorKind::NotFound {
            warn!("cannot remove {}: {e}", p.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recorded_network_namespace_is_found_in_either_form() {
        let cmd = |args: &[&str]| -> Vec<String> { args.iter().map(|a| a.to_string()).collect() };
        assert_eq!(
            recorded_netns(&cmd(&[
                "/usr/bin/efs-tunnel",
                "--connect",
                "x:2049",
                "--netns",
                "/run/netns/a"
            ])),
            Some(PathBuf::from("/run/netns/a"))
        );
        assert_eq!(
            recorded_netns(&cmd(&["/usr/bin/efs-tunnel", "--netns=/run/netns/b"])),
            Some(PathBuf::from("/run/netns/b"))
        );
        assert_eq!(
            recorded_netns(&cmd(&["/usr/bin/efs-tunnel", "--netns"])),
            None
        );
        assert_eq!(
            recorded_netns(&cmd(&["/usr/bin/efs-tunnel", "--connect", "x:2049"])),
            None
        );
    }

    #[test]
    fn a_skip_says_what_is_wrong_and_what_is_not_done() {
        let p = PathBuf::from("/run/efs/fs-1.mnt.20049");
        let untrusted = Skip::Untrusted {
            path: p.clone(),
            why: "/run/efs is writable by group or others (mode 770)".into(),
        };
        assert_eq!(
            untrusted.to_string(),
            "skipping state file /run/efs/fs-1.mnt.20049: /run/efs is writable by group or others (mode 770); nothing in it is run or removed"
        );
        let corrupt = Skip::from(StateError::Corrupt(
            p.clone(),
            "mount_time -100000000000000000000 is not a time in seconds since 1970".into(),
        ));
        assert!(matches!(corrupt, Skip::Corrupt { .. }));
        assert!(corrupt.to_string().starts_with(
            "skipping state file /run/efs/fs-1.mnt.20049 is not a valid mount state: mount_time"
        ));
        let unreadable = Skip::from(StateError::Unreadable(p, "Permission denied".into()));
        assert_eq!(
            unreadable.to_string(),
            "skipping cannot read state file /run/efs/fs-1.mnt.20049: Permission denied"
        );
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(1), Duration::ZERO);
        assert_eq!(backoff(2), Duration::from_millis(200));
        assert_eq!(backoff(3), Duration::from_millis(400));
        assert_eq!(backoff(6), Duration::from_millis(3200));
        assert_eq!(backoff(7), MAX_BACKOFF);
        assert_eq!(backoff(1000), MAX_BACKOFF);
    }
}
