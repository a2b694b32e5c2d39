//! The watchdog's main loop. It sleeps in one `poll` on:
//! * each tunnel's pidfd: a tunnel's death is known at once, and it is restarted on the
//!   same listening socket (after backoff if it keeps dying);
//! * `/proc/self/mountinfo` (POLLPRI when the mount table changes): an unmount is known
//!   at once, and the tunnel is torn down after `unmount_grace_period_sec` if the kernel
//!   no longer uses its port (re-read to confirm, never on a single read). "Uses" is what
//!   the kernel really does, not what mountinfo's `port=` says: the NFS client's own
//!   tables (`/proc/fs/nfsfs`) name the transport each mount rides on, and a second mount
//!   of a server rides on the first one's (see `efs_config::mounts` and
//!   docs/watchdog.md);
//! * inotify on the state directory: a new mount is adopted at once;
//! * signal pipes (SIGTERM: exit, tunnels untouched; SIGHUP: re-read the config), the
//!   health checker's pipe and the certificate renewal workers' (`crate::renew`: the
//!   loop hands out a job when a client certificate is due, and commits each result:
//!   the file, a SIGHUP to the tunnel, the state);
//!
//! and wakes on its own for deadlines and a sweep every `poll_interval_sec` (a safety net,
//! and how a mount table in a plain file, as in tests, is followed). Nothing on this thread
//! touches an NFS mountpoint or reads memory of another process.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use efs_config::mounts::KernelView;
use efs_config::state::{self, MountState};
use efs_config::Config;
use log::{debug, info, warn};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

use crate::notify;
use crate::renew;
use crate::takeover;
use crate::tunnels::{Phase, Reload, Skip, Trust, Tunnel};

/// A tunnel whose control socket did not answer: (state file, pid at the time).
type HealthReport = (PathBuf, i32);
type HealthTargets = crate::health::Targets;

pub struct Daemon {
    cfg: Config,
    /// What a state file must be for the watchdog to act on it (`Trust`).
    trust: Trust,
    tunnels: BTreeMap<PathBuf, Tunnel>,
    /// State files that were skipped (`Skip`: unreadable, untrusted, corrupt), already
    /// logged.
    /// By inode: a file replaced under the same name is looked at again.
    skipped: BTreeMap<PathBuf, u64>,
    /// amazon-efs-utils' state files whose takeover waits (`crate::takeover`), with the
    /// reason last logged.
    later: BTreeMap<PathBuf, String>,
    /// Tunnels we started and let go of; reaped when they exit.
    released: Vec<std::process::Child>,
    /// The mount table could not be read last time (logged once, not every sweep).
    mountinfo_unreadable: bool,
    term: UnixStream,
    hup: UnixStream,
    inotify: Option<Inotify>,
    /// Held only to poll for changes: the kernel re-arms POLLPRI in poll itself
    /// (`mounts_poll`), so this descriptor is never read; the table is read by path.
    mountinfo: Option<std::fs::File>,
    health_rx: Receiver<HealthReport>,
    health_wake: UnixStream,
    health_targets: HealthTargets,
    health_settings: crate::health::SharedSettings,
    last_sweep: Instant,
    next_ping: Option<Instant>,
    /// The certificate renewal threads, started with the first job.
    renewals: Option<renew::Workers>,
    /// They could not be started (logged once; tried again after SIGHUP).
    renewals_unavailable: bool,
}

impl Daemon {
    pub fn new(cfg: Config) -> Result<Daemon, String> {
        let (term, term_tx) = UnixStream::pair().map_err(|e| e.to_string())?;
        let (hup, hup_tx) = UnixStream::pair().map_err(|e| e.to_string())?;
        for (sig, tx) in [
            (signal_hook::consts::SIGTERM, &term_tx),
            (signal_hook::consts::SIGINT, &term_tx),
            (signal_hook::consts::SIGHUP, &hup_tx),
        ] {
            let tx = tx.try_clone().map_err(|e| e.to_string())?;
            signal_hook::low_level::pipe::register(sig, tx)
                .map_err(|e| format!("signal handler: {e}"))?;
        }
        for s in [&term, &hup] {
            s.set_nonblocking(true).map_err(|e| e.to_string())?;
        }
        state::ensure_state_dir(&cfg.paths.state_dir, cfg.state_file_dir_mode)
            .map_err(|e| format!("cannot create {}: {e}", cfg.paths.state_dir.display()))?;
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .and_then(|i| {
                i.add_watch(
                    &cfg.paths.state_dir,
                    AddWatchFlags::IN_MOVED_TO
                        | AddWatchFlags::IN_CLOSE_WRITE
                        | AddWatchFlags::IN_DELETE
                        | AddWatchFlags::IN_MOVED_FROM,
                )
                .map(|_| i)
            })
            .map_err(|e| {
                warn!("no inotify on the state directory ({e}); new mounts are found by the sweep")
            })
            .ok();
        let mountinfo = std::fs::File::open(&cfg.paths.mountinfo).ok();
        let (health_tx, health_rx) = mpsc::channel();
        let (health_wake, health_wake_tx) = UnixStream::pair().map_err(|e| e.to_string())?;
        health_wake
            .set_nonblocking(true)
            .map_err(|e| e.to_string())?;
        let health_targets: HealthTargets = Arc::default();
        let health_settings = Arc::new(Mutex::new(crate::health::Settings::from_config(&cfg)));
        crate::health::spawn(
            health_settings.clone(),
            health_targets.clone(),
            health_tx,
            health_wake_tx,
        );
        Ok(Daemon {
            trust: Trust::new(&cfg),
            cfg,
            tunnels: BTreeMap::new(),
            skipped: BTreeMap::new(),
            later: BTreeMap::new(),
            released: Vec::new(),
            mountinfo_unreadable: false,
            term,
            hup,
            inotify,
            mountinfo,
            health_rx,
            health_wake,
            health_targets,
            health_settings,
            last_sweep: Instant::now(),
            next_ping: notify::watchdog_interval().map(|i| Instant::now() + i),
            renewals: None,
            renewals_unavailable: false,
        })
    }

    /// Adopts every tunnel, tells systemd it is ready, and serves until SIGTERM.
    pub fn run(mut self) -> Result<(), String> {
        self.rescan();
        self.check_mounts();
        self.tick();
        self.dispatch_renewals();
        info!("watching {} tunnel(s)", self.tunnels.len());
        notify::send(&format!(
            "READY=1\nSTATUS=watching {} tunnel(s)",
            self.tunnels.len()
        ));
        loop {
            let timeout = self.next_wakeup().saturating_duration_since(Instant::now());
            let ready = self.wait(timeout);
            if ready.term {
                info!("SIGTERM: exiting; tunnels keep running");
                notify::send("STOPPING=1");
                return Ok(());
            }
            if ready.hup {
                self.reload();
            }
            // Before the restarts: a restart held for a renewal goes ahead with its result.
            self.collect_renewals();
            for path in &ready.exited {
                if let Some(t) = self.tunnels.get_mut(path) {
                    t.on_exit();
                }
            }
            if ready.health {
                while let Ok((path, pid)) = self.health_rx.try_recv() {
                    if let Some(t) = self.tunnels.get_mut(&path).filter(|t| t.pid() == Some(pid)) {
                        t.kill_unresponsive("did not answer its health check");
                    }
                }
            }
            if ready.state_dir {
                self.rescan();
            }
            let sweep_due = self.last_sweep.elapsed()
                >= Duration::from_secs(self.cfg.watchdog.poll_interval_sec);
            if ready.mounts || sweep_due {
                if sweep_due {
                    self.rescan();
                    self.last_sweep = Instant::now();
                }
                self.check_mounts();
            }
            self.tick();
            self.dispatch_renewals();
            self.ping();
        }
    }

    fn grace(&self) -> Duration {
        Duration::from_secs(self.cfg.watchdog.unmount_grace_period_sec)
    }

    fn next_wakeup(&self) -> Instant {
        let sweep = self.last_sweep + Duration::from_secs(self.cfg.watchdog.poll_interval_sec);
        let grace = self.grace();
        self.tunnels
            .values()
            .filter_map(|t| t.deadline(grace))
            .chain(self.next_ping)
            .chain(self.tunnels.values().filter_map(|t| self.renewal_due(t)))
            .fold(sweep, Instant::min)
    }

    /// Sleeps until something happens or `timeout` passes.
    fn wait(&mut self, timeout: Duration) -> Ready {
        let mut ready = Ready::default();
        let keys: Vec<PathBuf> = self
            .tunnels
            .iter()
            .filter(|(_, t)| t.pidfd().is_some())
            .map(|(k, _)| k.clone())
            .collect();
        let mut fds: Vec<PollFd> = vec![
            PollFd::new(self.term.as_fd(), PollFlags::POLLIN),
            PollFd::new(self.hup.as_fd(), PollFlags::POLLIN),
            PollFd::new(self.health_wake.as_fd(), PollFlags::POLLIN),
        ];
        let inotify_at = self.inotify.as_ref().map(|i| {
            fds.push(PollFd::new(i.as_fd(), PollFlags::POLLIN));
            fds.len() - 1
        });
        let mountinfo_at = self.mountinfo.as_ref().map(|m| {
            fds.push(PollFd::new(m.as_fd(), PollFlags::POLLPRI));
            fds.len() - 1
        });
        // Readable when a renewal is done; `collect_renewals` drains it.
        if let Some(w) = &self.renewals {
            fds.push(PollFd::new(w.wake.as_fd(), PollFlags::POLLIN));
        }
        let first_pidfd = fds.len();
        for k in &keys {
            if let Some(p) = self.tunnels.get(k).and_then(Tunnel::pidfd) {
                fds.push(PollFd::new(borrow(p), PollFlags::POLLIN));
            }
        }
        let ms = timeout.as_millis().min(60_000) as u16;
        if poll(&mut fds, PollTimeout::from(ms.max(1))).is_err() {
            return ready; // EINTR: go round again
        }
        let fired = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
        ready.term = fired(&fds[0]);
        ready.hup = fired(&fds[1]);
        ready.health = fired(&fds[2]);
        ready.state_dir = inotify_at.is_some_and(|i| fired(&fds[i]));
        ready.mounts = mountinfo_at.is_some_and(|i| fired(&fds[i]));
        for (i, k) in keys.iter().enumerate() {
            if fds.get(first_pidfd + i).is_some_and(fired) {
                ready.exited.push(k.clone());
            }
        }
        drop(fds);
        drain(&mut self.term);
        drain(&mut self.hup);
        drain(&mut self.health_wake);
        if ready.state_dir {
            if let Some(i) = &self.inotify {
                while let Ok(events) = i.read_events() {
                    if events.is_empty() {
                        break;
                    }
                }
            }
        }
        ready
    }

    /// Picks up new state files and forgets removed ones.
    fn rescan(&mut self) {
        let dir = &self.cfg.paths.state_dir;
        // Path -> inode: a state file is only ever replaced whole (renamed over), so a new
        // inode is a rewrite.
        // One listing per sweep, for the state files and the stale temporaries.
        let entries: Vec<std::fs::DirEntry> = match std::fs::read_dir(dir) {
            Ok(entries) => entries.flatten().collect(),
            Err(e) => {
                warn!("cannot read {}: {e}", dir.display());
                return;
            }
        };
        // Whatever is not a directory: a symlink or a FIFO under a state file's name is
        // logged and skipped by the trust check (never opened), not silently passed over.
        let present: BTreeMap<PathBuf, u64> = entries
            .iter()
            .filter(|e| state::is_state_file_name(&e.file_name().to_string_lossy()))
            .filter(|e| e.file_type().is_ok_and(|t| !t.is_dir()))
            .map(|e| (e.path(), std::os::unix::fs::DirEntryExt::ino(e)))
            .collect();
        self.skipped.retain(|p, ino| present.get(p) == Some(ino));
        // A mount.efs killed mid-write leaves its temporary file, never a torn state.
        for stale in state::stale_temp_files(&entries) {
            match std::fs::remove_file(&stale) {
                Ok(()) => info!("removed {}, left by a writer that died", stale.display()),
                Err(e) => warn!("cannot remove {}: {e}", stale.display()),
            }
        }
        let gone: Vec<PathBuf> = self
            .tunnels
            .keys()
            .filter(|p| !present.contains_key(*p))
            .cloned()
            .collect();
        let ports = if gone.is_empty() {
            None
        } else {
            self.read_mounts().map(|v| v.ports_in_use())
        };
        for p in gone {
            if let Some(t) = self.tunnels.remove(&p) {
                if !matches!(t.phase, Phase::Gone) {
                    info!(
                        "{} was removed; no longer watching {}",
                        p.display(),
                        t.name()
                    );
                }
                // Unreadable mount table: assume in use, never kill blindly.
                let in_use = ports.as_ref().is_none_or(|m| m.contains_key(&t.state.port));
                self.released.extend(t.release(in_use));
            }
        }
        let mut kernel_ports: Option<takeover::PortsInUse> = None;
        for (p, ino) in present {
            if let Some(t) = self.tunnels.get_mut(&p) {
                // Rewritten by someone else: mount.efs does, once, when the mount turns
                // out to ride on another mount's tunnel. Believed only if it passes the
                // same check as a new state file: it names the files a teardown deletes.
                if t.state.served_by.is_none() && t.saved_ino() != Some(ino) {
                    t.set_ino(ino);
                    match self.trust.read(&p) {
                        Ok(st) => self.released.extend(t.become_rider(st)),
                        Err(skip) => t.distrust(skip),
                    }
                }
                continue;
            }
            if self.skipped.get(&p) == Some(&ino) {
                continue;
            }
            match self.trust.read(&p) {
                Ok(st) => {
                    let mut t = Tunnel::adopt(p.clone(), st);
                    t.set_ino(ino);
                    self.tunnels.insert(p, t);
                }
                // Not ours, but root's file in root's directory: amazon-efs-utils' state
                // after an in-place upgrade, perhaps.
                Err(skip @ Skip::Corrupt { .. }) => {
                    let ports = kernel_ports
                        .get_or_insert_with(|| self.read_mounts().map(|v| v.ports_in_use()));
                    self.take_over(p, ino, skip, ports);
                }
                Err(skip) => {
                    warn!("{skip}");
                    self.skipped.insert(p, ino);
                }
            }
        }
        self.update_also_serves();
        self.publish_health_targets();
    }

    /// A state file not in our schema: if it is amazon-efs-utils', its mount is taken
    /// over (`crate::takeover`); if not, it is skipped as `skip` says.
    fn take_over(&mut self, p: PathBuf, ino: u64, skip: Skip, ports: &takeover::PortsInUse) {
        let text = match std::fs::read(&p) {
            Ok(t) => t,
            Err(_) => {
                warn!("{skip}");
                self.skipped.insert(p, ino);
                return;
            }
        };
        match takeover::take_over(&self.cfg, &p, &text, ports) {
            // Our own schema, torn or wrong, or anything else: said as it was.
            takeover::Outcome::NotIncumbent => {
                warn!("{skip}");
                self.skipped.insert(p, ino);
            }
            takeover::Outcome::TakenOver(t) => {
                self.later.remove(&p);
                self.tunnels.insert(p, *t);
            }
            takeover::Outcome::CleanedUp => {
                info!(
                    "{}: amazon-efs-utils' mount is gone; its tunnel and files are removed",
                    p.display()
                );
                self.later.remove(&p);
            }
            takeover::Outcome::Later(why) => {
                if self.later.get(&p) != Some(&why) {
                    info!(
                        "{}: not taken over from amazon-efs-utils yet: {why}",
                        p.display()
                    );
                    self.later.insert(p, why);
                }
            }
            takeover::Outcome::Refused(why) => {
                warn!(
                    "{}: not taken over from amazon-efs-utils: {why}; left as it is",
                    p.display()
                );
                self.later.remove(&p);
                self.skipped.insert(p, ino);
            }
        }
    }

    /// Whether this watchdog may act on a state it holds: run its `cmd` as root and
    /// delete its `files` (`Trust::check`: root's file in root's directory, the
    /// configured tunnel binary).
    fn trusted(&self, path: &std::path::Path, st: &MountState) -> Result<(), Skip> {
        self.trust.check(path, st)
    }

    /// The state files whose mounts the kernel still uses, from one read of its tables:
    /// a tunnel while any mount's traffic, any NFS client or any mountinfo line goes to
    /// its port, or a mount riding on it is still mounted; a riding mount while a local
    /// NFS mount is at its mountpoint.
    fn in_use(&self, view: &KernelView) -> BTreeSet<PathBuf> {
        let ports = view.ports_in_use();
        let rider_mounted = |t: &Tunnel| {
            view.local_mount_at(&t.state.mountpoint).is_some_and(|m| {
                m.port == Some(t.state.port) || view.transport_port(m) == t.state.served_by
            })
        };
        let ridden: BTreeSet<u16> = self
            .tunnels
            .values()
            .filter(|t| rider_mounted(t))
            .filter_map(|t| t.state.served_by)
            .collect();
        self.tunnels
            .iter()
            .filter(|(_, t)| match t.state.served_by {
                Some(_) => rider_mounted(t),
                None => ports.contains_key(&t.state.port) || ridden.contains(&t.state.port),
            })
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Keeps `also_serves` in each tunnel's state: the mounts that ride on it.
    fn update_also_serves(&mut self) {
        let mut riders: BTreeMap<u16, Vec<String>> = BTreeMap::new();
        for t in self.tunnels.values() {
            if let Some(port) = t.state.served_by {
                riders
                    .entry(port)
                    .or_default()
                    .push(t.state.mountpoint.clone());
            }
        }
        for t in self.tunnels.values_mut() {
            if t.state.served_by.is_none() && !matches!(t.phase, Phase::Gone) {
                let list = riders.remove(&t.state.port).unwrap_or_default();
                t.set_also_serves(list);
            }
        }
    }

    /// Marks tunnels the kernel no longer uses, and clears marks of those back in use.
    fn check_mounts(&mut self) {
        let Some(view) = self.read_mounts() else {
            return;
        };
        let used = self.in_use(&view);
        let mut maybe_unused = Vec::new();
        for (k, t) in self.tunnels.iter_mut() {
            if !matches!(
                t.phase,
                Phase::Running | Phase::RestartAt(_) | Phase::Riding
            ) {
                continue;
            }
            if used.contains(k) {
                t.seen_mounted = true;
                if t.unmounted_since.is_some() {
                    info!("{} is mounted again; keeping its tunnel", t.name());
                    t.set_unmounted(None);
                }
            } else if t.unmounted_since.is_none()
                && (t.seen_mounted || t.mount_age() > Duration::from_secs(30))
            {
                maybe_unused.push(k.clone());
            }
        }
        if maybe_unused.is_empty() {
            return;
        }
        // Never act on one read: mountinfo can be read torn while mounts change.
        std::thread::sleep(Duration::from_millis(50));
        let Some(again) = self.read_mounts() else {
            return;
        };
        let used = self.in_use(&again);
        let grace = self.grace().as_secs();
        for k in maybe_unused {
            if let Some(t) = self.tunnels.get_mut(&k) {
                if !used.contains(&k) {
                    info!("No mount found for {}; its tunnel stops in {grace} s unless a mount uses it again", t.name());
                    t.set_unmounted(Some(Instant::now()));
                }
            }
        }
    }

    fn read_mounts(&mut self) -> Option<KernelView> {
        match KernelView::read(&self.cfg.paths.mountinfo, &self.cfg.paths.nfsfs) {
            Ok(p) => {
                if self.mountinfo_unreadable {
                    info!("{} is readable again", self.cfg.paths.mountinfo.display());
                    self.mountinfo_unreadable = false;
                }
                Some(p)
            }
            Err(e) => {
                if !self.mountinfo_unreadable {
                    warn!(
                        "cannot read {}: {e}; no tunnel is torn down until it can be read",
                        self.cfg.paths.mountinfo.display()
                    );
                    self.mountinfo_unreadable = true;
                }
                None
            }
        }
    }

    /// Acts on every deadline that has passed.
    fn tick(&mut self) {
        let now = Instant::now();
        let grace = self.grace();
        let mut confirm_teardown = Vec::new();
        for (k, t) in self.tunnels.iter_mut() {
            match t.phase {
                Phase::RestartAt(at) if at <= now => {
                    // A certificate that is expired (or nearly) is renewed first: the
                    // tunnel would be refused with it (at most `MAX_RESTART_HOLD`).
                    let stale = t
                        .state
                        .client_cert
                        .as_ref()
                        .is_some_and(|c| renew::stale_for_restart(c, state::unix_time()));
                    let can_renew = !self.renewals_unavailable && t.state.served_by.is_none();
                    if can_renew && t.renewal.holds_restart(stale, now) {
                        continue;
                    }
                    if let Err(e) = t.start(&self.trust) {
                        warn!(
                            "cannot restart the tunnel of {}: {e}; trying again",
                            t.name()
                        );
                        t.phase = Phase::RestartAt(now + Duration::from_secs(1));
                    }
                }
                Phase::Stopping { deadline, .. } if deadline <= now => t.on_stop_deadline(),
                Phase::Running | Phase::Riding
                    if t.unmounted_since.is_some_and(|s| s + grace <= now) =>
                {
                    confirm_teardown.push(k.clone())
                }
                _ => {}
            }
        }
        if !confirm_teardown.is_empty() {
            if let Some(view) = self.read_mounts() {
                let used = self.in_use(&view);
                for k in confirm_teardown {
                    if let Some(t) = self.tunnels.get_mut(&k) {
                        if used.contains(&k) {
                            t.set_unmounted(None);
                        } else {
                            info!("Unmount grace period expired for {}", t.name());
                            t.begin_teardown();
                        }
                    }
                }
            }
        }
        let before = self.tunnels.len();
        self.tunnels.retain(|_, t| !matches!(t.phase, Phase::Gone));
        if self.tunnels.len() != before {
            self.update_also_serves();
        }
        self.released
            .retain_mut(|c| matches!(c.try_wait(), Ok(None)));
        self.publish_health_targets();
    }

    fn ping(&mut self) {
        if let (Some(at), Some(interval)) = (self.next_ping, notify::watchdog_interval()) {
            if Instant::now() >= at {
                notify::send("WATCHDOG=1");
                self.next_ping = Some(Instant::now() + interval);
            }
        }
    }

    /// SIGHUP: re-reads the configuration. What the main loop looks up each time applies
    /// at once (the `[mount-watchdog]` timings and health check, certificate renewal
    /// settings and endpoints, the log level); `[paths]` are kept as they were: the lock,
    /// the inotify watch and the open mount table are on the old ones, and a new
    /// `state_dir` would make the next rescan forget every tunnel.
    fn reload(&mut self) {
        match Config::load() {
            Ok(mut cfg) => {
                for w in &cfg.warnings {
                    warn!("{w}");
                }
                let changed = changed_paths(&self.cfg, &cfg);
                if !changed.is_empty() {
                    warn!(
                        "SIGHUP: {} changed; this watchdog keeps the paths it started with (takes effect at restart)",
                        changed.join(", ")
                    );
                }
                cfg.paths = self.cfg.paths.clone();
                if let Ok(mut s) = self.health_settings.lock() {
                    *s = crate::health::Settings::from_config(&cfg);
                }
                info!("SIGHUP: configuration re-read; the unmount grace period, poll interval, health check settings, certificate renewal settings and log level apply now ([paths] take effect at restart)");
                self.renewals_unavailable = false;
                log::set_max_level(cfg.logging_level);
                self.cfg = cfg;
            }
            Err(e) => warn!("SIGHUP: keeping the previous configuration: {e}"),
        }
    }

    /// When `t`'s certificate must next be looked at for renewal, if it has one to renew.
    fn renewal_due(&self, t: &Tunnel) -> Option<Instant> {
        if self.renewals_unavailable || t.renewal.in_flight || !t.renews() {
            return None;
        }
        let rec = t.state.client_cert.as_ref()?;
        let wait = renew::next_due(rec, renew::interval(&self.cfg)) - state::unix_time();
        // The loop wakes at least every minute anyway.
        let due = Instant::now()
            + Duration::try_from_secs_f64(wait.clamp(0.0, 60.0)).unwrap_or(Duration::ZERO);
        Some(t.renewal.retry_at.map_or(due, |r| r.max(due)))
    }

    /// Hands a job to the renewal workers for each certificate that is due (one per
    /// mount at a time; after a failure, not before its retry time unless a restart
    /// waits for it).
    fn dispatch_renewals(&mut self) {
        if self.renewals_unavailable {
            return;
        }
        let now = Instant::now();
        let now_unix = state::unix_time();
        let interval = renew::interval(&self.cfg);
        let mut jobs = Vec::new();
        for (k, t) in self.tunnels.iter() {
            let Some(rec) = t.state.client_cert.as_ref().filter(|_| t.renews()) else {
                continue;
            };
            if t.renewal.in_flight {
                continue;
            }
            let why = if t.renewal.urgent {
                Some("its tunnel is being restarted")
            } else if t.renewal.retry_at.is_some_and(|r| r > now) {
                None
            } else {
                renew::due(rec, now_unix, interval)
            };
            if let Some(why) = why {
                debug!("renewing the client certificate of {}: {why}", t.name());
                // The same checks as before a restart, before the renewer writes anything.
                let trusted = self
                    .trusted(&t.state_path, &t.state)
                    .map_err(|skip| skip.reason());
                jobs.push(renew::Job::new(
                    k.clone(),
                    &t.state.fs_id,
                    rec,
                    &self.cfg,
                    trusted,
                ));
            }
        }
        if jobs.is_empty() {
            return;
        }
        if self.renewals.is_none() {
            match renew::Workers::start(renew::WORKERS) {
                Ok(w) => self.renewals = Some(w),
                Err(e) => {
                    warn!("cannot start the certificate renewal threads ({e}); client certificates are not renewed until SIGHUP");
                    self.renewals_unavailable = true;
                    return;
                }
            }
        }
        let Some(workers) = &self.renewals else {
            return;
        };
        for job in jobs {
            let key = job.key.clone();
            if !workers.submit(job) {
                warn!("the certificate renewal threads are gone; client certificates are not renewed until SIGHUP");
                self.renewals = None;
                self.renewals_unavailable = true;
                return;
            }
            if let Some(t) = self.tunnels.get_mut(&key) {
                t.renewal.in_flight = true;
                t.renewal.urgent = false;
            }
        }
    }

    /// Commits the renewals that are done, and tells tunnels that were not answering
    /// when their certificate was renewed.
    fn collect_renewals(&mut self) {
        for t in self
            .tunnels
            .values_mut()
            .filter(|t| t.renewal.reload_pending)
        {
            match t.reload_certificate() {
                Reload::NotAnswering => {}
                Reload::Told(pid) => {
                    t.renewal.reload_pending = false;
                    info!("told the tunnel of {} (pid {pid}) to present its renewed client certificate", t.name());
                }
                Reload::Failed(e) => {
                    t.renewal.reload_pending = false;
                    warn!(
                        "cannot tell the tunnel of {} about its renewed client certificate: {e}",
                        t.name()
                    );
                }
                Reload::NoTunnel => t.renewal.reload_pending = false,
            }
        }
        let Some(workers) = self.renewals.as_mut() else {
            return;
        };
        for outcome in workers.collect() {
            self.commit_renewal(outcome);
        }
    }

    /// One renewal's result. Success: the new certificate replaces the file, the tunnel is
    /// told (SIGHUP), the state records it. Failure: the old file and the tunnel stay as
    /// they are, the state records the error, the log says it once, and it is retried
    /// later.
    fn commit_renewal(&mut self, outcome: renew::Outcome) {
        let now = Instant::now();
        let interval = renew::interval(&self.cfg);
        let Some(t) = self.tunnels.get_mut(&outcome.key) else {
            return; // torn down meanwhile, with the certificate's directory
        };
        match t.state.client_cert.as_ref().map(|c| c.issued.to_bits()) {
            Some(issued) if issued != outcome.replaces.to_bits() => {
                // Torn down meanwhile, and mounted again by the same name: the renewer
                // wrote nothing in the new mount's directory (it checks), and its answer
                // is not this mount's, whose own renewal may be in flight.
                info!(
                    "a certificate renewal for an earlier mount of {} ended; it is not this mount's",
                    t.name()
                );
                return;
            }
            _ => t.renewal.in_flight = false,
        }
        let Some(mut rec) = t.state.client_cert.clone().filter(|_| t.renews()) else {
            return; // it became a rider, or is being torn down
        };
        // efs-renew-cert wrote the file, after the checks made when the job was handed out.
        match outcome.result {
            Ok(r) => {
                let failures = t.renewal.succeeded();
                rec.issued = r.issued;
                rec.not_after = r.not_after;
                rec.credentials_expire = r.credentials_expire;
                rec.renewed = Some(state::unix_time());
                rec.renewal_error = None;
                let told = match t.reload_certificate() {
                    Reload::Told(pid) => format!("; told its tunnel (pid {pid}) to present it"),
                    Reload::NotAnswering => {
                        t.renewal.reload_pending = true;
                        "; its tunnel does not answer yet and is told when it does".into()
                    }
                    Reload::NoTunnel => "; its tunnel starts with it".into(),
                    Reload::Failed(e) => format!("; but the tunnel was not told: {e}"),
                };
                let after = match failures {
                    0 => String::new(),
                    n => format!(" after {n} failed attempt(s)"),
                };
                info!(
                    "renewed the client certificate of {}{after} (valid for {} min){told}",
                    t.name(),
                    ((r.not_after - rec.renewed.unwrap_or(r.issued)) / 60.0).floor()
                );
                t.set_client_cert(rec);
            }
            Err(e) => {
                let e = renew::one_line(&e);
                if t.renewal.failed(&e, now, interval) {
                    let left = rec.not_after - state::unix_time();
                    warn!(
                        "cannot renew the client certificate of {}: {e}; keeping the current one ({}), retrying in {} min",
                        t.name(),
                        if left > 0.0 {
                            format!("valid for {} more min", (left / 60.0).floor())
                        } else {
                            "EXPIRED".to_string()
                        },
                        renew::retry_delay(t.renewal.failures, interval).as_secs() / 60
                    );
                }
                if rec.renewal_error.as_deref() != Some(e.as_str()) {
                    rec.renewal_error = Some(e);
                    t.set_client_cert(rec);
                }
            }
        }
    }

    fn publish_health_targets(&self) {
        if let Ok(mut targets) = self.health_targets.lock() {
            *targets = self
                .tunnels
                .iter()
                .filter_map(|(k, t)| {
                    t.pid()
                        .map(|pid| (k.clone(), t.state.control_socket.clone(), pid))
                })
                .collect();
        }
    }
}

/// The `[paths]` keys that differ between two configurations, named as `efs-utils
/// config check` names them (`paths.state_dir`), from the one key table.
fn changed_paths(old: &Config, new: &Config) -> Vec<String> {
    use efs_config::keys::{At, Kind, KEYS};
    let mut changed: Vec<String> = KEYS
        .iter()
        .filter(|k| match k.at {
            At::Paths(Kind::Path { get, .. }) => get(old) != get(new),
            At::Paths(Kind::OptPath { get, .. }) => get(old) != get(new),
            _ => false,
        })
        .map(|k| k.dotted())
        .collect();
    if changed.is_empty() && old.paths != new.paths {
        changed.push("[paths]".into()); // a key of another kind; none today
    }
    changed
}

#[derive(Default)]
struct Ready {
    term: bool,
    hup: bool,
    health: bool,
    state_dir: bool,
    mounts: bool,
    exited: Vec<PathBuf>,
}

fn borrow(p: &crate::sys::Pidfd) -> BorrowedFd<'_> {
    p.as_fd()
}

fn drain(s: &mut UnixStream) {
    let mut buf = [0u8; 64];
    while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_paths_are_named_as_config_check_names_them() {
        let old = Config::default();
        let mut new = old.clone();
        assert!(changed_paths(&old, &new).is_empty());
        new.paths.state_dir = "/run/other".into();
        new.paths.mountinfo = "/tmp/mountinfo".into();
        new.watchdog.unmount_grace_period_sec += 1; // not a path
        assert_eq!(
            changed_paths(&old, &new),
            vec!["paths.state_dir".to_string(), "paths.mountinfo".to_string()]
        );
    }
}
