//! Renewal of the client certificates tunnels present to EFS (`iam`, `accesspoint`; issue
//! #12). A certificate is valid for 3 hours and, with `iam`, carries credentials that
//! may expire sooner; the watchdog has a new one issued before either runs out, written
//! over the old file, and tells the tunnel (SIGHUP) to present it to new connections.
//!
//! The main loop decides when a certificate is due ([`due`]), checks the state file (the
//! same checks as before a restart) and hands out one [`Job`] per mount at a time. A
//! small pool of worker threads ([`Workers`]) runs each job as a process of its own,
//! `efs-renew-cert` (`[paths] renew_cert`, crate `efs-client-cert`): no shell, no
//! arguments, the job as JSON on stdin, one JSON answer on stdout
//! (`efs_config::renewal`). That program reads the host key, fetches credentials again
//! from the mount's recorded source, signs, and writes the certificate file itself; this
//! crate links no TLS, HTTP or crypto (issue #11), the PEM never passes through it, and a
//! renewal that hangs is killed after [`RENEWER_DEADLINE`] and counts as failed; each
//! runs in a process group of its own, which is killed when it ends, so nothing it
//! started (a `credential_process` that forked) outlives it. The main loop then signals the tunnel it supervises and rewrites the state.
//!
//! Failures keep the old certificate and the tunnel as they are, are recorded in the
//! state (`renewal_error`, for `efs-utils status`), logged once per distinct error, and
//! retried after 1 minute, doubling up to the renewal interval ([`Tracker`]).

use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use efs_config::renewal::{self, Answer, MAX_ANSWER};
use efs_config::state::ClientCertRecord;
use efs_config::Config;
use log::warn;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

pub use efs_config::renewal::{inside_state_dir, one_line, Renewed, TEMP_NAME};

/// Renew when the certificate has less than this left. A certificate lives 3 h: with
/// the default interval (60 min) this never decides, but with an interval of 150 min
/// or more (up to 1440 is accepted) it is what renews in time; and 30 min leave room
/// for five retries (1, 2, 4, 8, 16 min) before EFS would refuse new connections.
pub const EXPIRY_MARGIN: Duration = Duration::from_secs(30 * 60);
/// Renew when the credentials in the certificate expire within this. Instance and ECS
/// credentials last about 6 h and are refreshed by AWS well before, STS ones 1 h; 10 min
/// is botocore's mandatory refresh window, and leaves three retries.
pub const CREDENTIALS_MARGIN: Duration = Duration::from_secs(10 * 60);
/// A dead tunnel whose certificate has less than this left (or is expired) is restarted
/// only after a renewal (or after [`MAX_RESTART_HOLD`]): started with it, it would be
/// refused at once.
pub const RESTART_MARGIN: Duration = Duration::from_secs(2 * 60);
/// The longest a restart waits for a renewal: a worker's requests have deadlines of a
/// few seconds each; past this, the tunnel is started with what there is.
pub const MAX_RESTART_HOLD: Duration = Duration::from_secs(20);
/// The first retry after a failed renewal; then doubling, up to the renewal interval.
pub const FIRST_RETRY: Duration = Duration::from_secs(60);
/// Worker threads: renewals mostly wait on the network, and one slow source must not
/// hold up every other mount's.
pub const WORKERS: usize = 2;
/// How long a renewal may take, start to end: `efs-renew-cert` is killed (with what it
/// started) after this, and the renewal counts as failed. Its own requests have
/// deadlines of a few seconds each (1 s per link-local request, 5 s per STS call or
/// `credential_process`), so only a renewer that hangs ever reaches it.
pub const RENEWER_DEADLINE: Duration = Duration::from_secs(60);
/// The most of a renewer's stderr kept (it writes nothing there unless something is
/// wrong); the rest is read and dropped.
const MAX_STDERR: usize = 4 * 1024;

/// `tls_cert_renewal_interval_min`, as a duration (at least a minute).
pub fn interval(cfg: &Config) -> Duration {
    Duration::from_secs(cfg.watchdog.tls_cert_renewal_interval_min.max(1) * 60)
}

/// A recorded time that state files can mean (see `MountState::check`).
fn valid_time(t: f64) -> bool {
    t.is_finite() && (0.0..=1e11).contains(&t)
}

/// Why `rec` needs renewing at `now` (seconds since the epoch), if it does.
pub fn due(rec: &ClientCertRecord, now: f64, interval: Duration) -> Option<&'static str> {
    if !valid_time(rec.issued) || !valid_time(rec.not_after) {
        return Some("its recorded times are not valid");
    }
    if rec.credentials_expire.is_some_and(|t| !valid_time(t)) {
        return Some("its recorded credentials expiry is not valid");
    }
    if now - rec.issued >= interval.as_secs_f64() {
        return Some("the renewal interval has passed");
    }
    if rec.not_after - now < EXPIRY_MARGIN.as_secs_f64() {
        return Some("it expires soon");
    }
    if rec
        .credentials_expire
        .is_some_and(|t| t - now < CREDENTIALS_MARGIN.as_secs_f64())
    {
        return Some("its credentials expire soon");
    }
    None
}

/// When `rec` becomes due (seconds since the epoch), for the main loop's wake-up.
pub fn next_due(rec: &ClientCertRecord, interval: Duration) -> f64 {
    if !valid_time(rec.issued) || !valid_time(rec.not_after) {
        return 0.0;
    }
    let by_interval = rec.issued + interval.as_secs_f64();
    let by_expiry = rec.not_after - EXPIRY_MARGIN.as_secs_f64();
    let by_credentials = rec
        .credentials_expire
        .map_or(f64::INFINITY, |t| t - CREDENTIALS_MARGIN.as_secs_f64());
    by_interval.min(by_expiry).min(by_credentials)
}

/// Whether a tunnel started with `rec` now would be refused: the certificate, or the
/// credentials in it, expire within [`RESTART_MARGIN`].
pub fn stale_for_restart(rec: &ClientCertRecord, now: f64) -> bool {
    let left = |t: f64| !valid_time(t) || t - now < RESTART_MARGIN.as_secs_f64();
    left(rec.not_after) || rec.credentials_expire.is_some_and(left)
}

/// One mount's renewal bookkeeping, kept by the main loop.
#[derive(Debug, Default)]
pub struct Tracker {
    /// A job for this mount is with the workers.
    pub in_flight: bool,
    /// After a failure: not before this.
    pub retry_at: Option<Instant>,
    pub failures: u32,
    /// The last error logged, so that a repeated one is not logged again.
    logged: Option<String>,
    /// A restart waits for a renewal, since then.
    pub hold_since: Option<Instant>,
    /// Renew at once, whatever the backoff says (a restart waits for it).
    pub urgent: bool,
    /// A renewed certificate the tunnel has not been told about yet: it did not answer
    /// on its control socket, so it may still be starting, before its SIGHUP handler
    /// exists (a SIGHUP would kill it). Told at the next look.
    pub reload_pending: bool,
}

impl Tracker {
    /// Records a failure and schedules the retry; true if this error should be logged
    /// (it differs from the last one logged).
    pub fn failed(&mut self, error: &str, now: Instant, interval: Duration) -> bool {
        self.failures = self.failures.saturating_add(1);
        self.retry_at = Some(now + retry_delay(self.failures, interval));
        if self.logged.as_deref() == Some(error) {
            return false;
        }
        self.logged = Some(error.to_string());
        true
    }

    /// Records a success; the number of failures before it.
    pub fn succeeded(&mut self) -> u32 {
        self.retry_at = None;
        self.logged = None;
        std::mem::take(&mut self.failures)
    }

    /// Whether a restart must wait for a renewal (and asks for one if none is running).
    /// Ends when the certificate is fresh, when an asked-for renewal has come back
    /// (fresh or not), or after [`MAX_RESTART_HOLD`].
    pub fn holds_restart(&mut self, stale: bool, now: Instant) -> bool {
        if !stale {
            self.hold_since = None;
            return false;
        }
        match self.hold_since {
            // A renewal that failed recently is not asked again at once (a tunnel that
            // keeps dying must not hammer the credential source): start as it is.
            None if !self.in_flight && self.retry_at.is_some_and(|r| r > now) => false,
            None => {
                self.hold_since = Some(now);
                self.urgent = !self.in_flight;
                true
            }
            Some(since) => {
                now.duration_since(since) < MAX_RESTART_HOLD && (self.in_flight || self.urgent)
            }
        }
    }

    /// When a held restart goes ahead anyway.
    pub fn hold_deadline(&self) -> Option<Instant> {
        self.hold_since.map(|s| s + MAX_RESTART_HOLD)
    }
}

/// 1 min after the first failure, then 2, 4 ... at most the renewal interval.
pub fn retry_delay(failures: u32, interval: Duration) -> Duration {
    let doubled = FIRST_RETRY.saturating_mul(1 << failures.saturating_sub(1).min(16));
    doubled.min(interval.max(FIRST_RETRY))
}

/// One renewal, as a worker runs it.
#[derive(Debug, Clone)]
pub struct Job {
    /// The mount's state file: which tunnel the result is for.
    pub key: PathBuf,
    /// What `efs-renew-cert` is asked.
    pub job: renewal::Job,
    /// `[paths] renew_cert`.
    pub program: PathBuf,
    /// Why the state file may not have its certificate renewed, if so: the job then
    /// fails without running anything.
    pub refused: Option<String>,
}

impl Job {
    /// The job for the mount of `fs_id` whose state file is `key`; `trusted` is the main
    /// loop's verdict on that state file (`Daemon::trusted`).
    pub fn new(
        key: PathBuf,
        fs_id: &str,
        record: &ClientCertRecord,
        cfg: &Config,
        trusted: Result<(), String>,
    ) -> Job {
        Job {
            key,
            job: renewal::Job::new(fs_id, record, cfg),
            program: cfg.paths.renew_cert.clone(),
            refused: trusted.err(),
        }
    }

    /// Runs the renewal (blocks: at most [`RENEWER_DEADLINE`]). The error is one line,
    /// never a secret.
    pub fn run(&self) -> Result<Renewed, String> {
        if let Some(why) = &self.refused {
            return Err(format!("not renewing: {why}"));
        }
        run_renewer(&self.program, &self.job.to_json(), RENEWER_DEADLINE).map_err(|e| one_line(&e))
    }
}

/// A worker's answer.
#[derive(Debug)]
pub struct Outcome {
    pub key: PathBuf,
    /// The `issued` of the certificate the job was to replace: which mount of that
    /// state file's name the answer is for (an unmount and a mount of the same name may
    /// have come in between).
    pub replaces: f64,
    pub result: Result<Renewed, String>,
}

/// Runs `program` with `input` on its stdin and reads its answer, all within `deadline`:
/// past it, the program and whatever it started (its own process group) are killed.
/// Its stderr is kept up to `MAX_STDERR` and logged.
pub fn run_renewer(program: &Path, input: &[u8], deadline: Duration) -> Result<Renewed, String> {
    let name = program.display();
    let started = Instant::now();
    let mut child = Command::new(program)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group: a kill at the deadline reaches what it started too.
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot run {name}: {e}"))?;
    let talked = talk(&mut child, input, started + deadline);
    let (out, err, status) = match talked {
        Ok(done) => done,
        Err(why) => {
            kill_group(&mut child);
            return Err(match why {
                Talk::Late => format!(
                    "{name} did not finish within {} s; killed it",
                    deadline.as_secs()
                ),
                Talk::TooLong => format!(
                    "{name} wrote more than {} KiB; killed it",
                    MAX_ANSWER / 1024
                ),
                Talk::Io(e) => format!("cannot talk to {name}: {e}"),
            });
        }
    };
    let err = one_line(&String::from_utf8_lossy(&err));
    let answered = !out.iter().all(u8::is_ascii_whitespace);
    if !err.is_empty() && answered {
        warn!("{name} said on stderr: {err}");
    }
    if !answered {
        let said = if err.is_empty() {
            String::new()
        } else {
            format!(": {err}")
        };
        return Err(format!("{name} ended ({status}) without an answer{said}"));
    }
    match Answer::parse(&out) {
        Ok(r) if status.success() => Ok(r),
        Ok(_) => Err(format!("{name} answered, but ended with {status}")),
        Err(e) => Err(e),
    }
}

/// Why talking to a renewer stopped before it ended.
enum Talk {
    Late,
    TooLong,
    Io(io::Error),
}

/// Writes `input` to the child's stdin, reads its stdout and stderr, and waits for it to
/// end, until `until`; one `poll` at a time, so no pipe can block this thread. Returns
/// stdout, the start of stderr and how it ended.
fn talk(
    child: &mut Child,
    input: &[u8],
    until: Instant,
) -> Result<(Vec<u8>, Vec<u8>, ExitStatus), Talk> {
    let mut stdin = child.stdin.take();
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    if let Some(s) = &stdin {
        use nix::fcntl::{fcntl, FcntlArg, OFlag};
        let flags = fcntl(s, FcntlArg::F_GETFL).map_err(|e| Talk::Io(e.into()))?;
        fcntl(
            s,
            FcntlArg::F_SETFL(OFlag::from_bits_retain(flags) | OFlag::O_NONBLOCK),
        )
        .map_err(|e| Talk::Io(e.into()))?;
    }
    let (mut out, mut err, mut written) = (Vec::new(), Vec::new(), 0);
    let mut buf = [0u8; 4096];
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Talk::Late);
        }
        // The answer is in once stdout is closed; then only the exit is awaited (a
        // process it started might hold stderr open).
        if stdout.is_none() && has_ended(child).map_err(Talk::Io)? {
            // Not reaped yet, so its pid is still its group's: whatever it started and
            // left behind (a `credential_process` that forked, say) ends with it.
            kill_group(child);
            drain(&mut stderr, &mut err);
            let status = child.wait().map_err(Talk::Io)?;
            return Ok((out, err, status));
        }
        let wait = match stdout {
            Some(_) => left,
            None => left.min(Duration::from_millis(10)),
        };
        let ms = wait.as_millis().clamp(1, 60_000) as u16;
        let (w, r, e) = {
            let mut fds = Vec::with_capacity(3);
            let mut slots = [None; 3];
            if let Some(s) = &stdin {
                slots[0] = Some(fds.len());
                fds.push(PollFd::new(s.as_fd(), PollFlags::POLLOUT));
            }
            if let Some(s) = &stdout {
                slots[1] = Some(fds.len());
                fds.push(PollFd::new(s.as_fd(), PollFlags::POLLIN));
            }
            if let Some(s) = &stderr {
                slots[2] = Some(fds.len());
                fds.push(PollFd::new(s.as_fd(), PollFlags::POLLIN));
            }
            if fds.is_empty() {
                std::thread::sleep(wait);
                continue;
            }
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(Talk::Io(e.into())),
            }
            let fired = |slot: Option<usize>| {
                slot.and_then(|i| fds[i].revents())
                    .is_some_and(|r| !r.is_empty())
            };
            (fired(slots[0]), fired(slots[1]), fired(slots[2]))
        };
        if w {
            if let Some(s) = stdin.as_mut() {
                match s.write(&input[written..]) {
                    Ok(n) => written += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    // It does not read (it ended, or refused): its answer says why.
                    Err(_) => written = input.len(),
                }
            }
            if written >= input.len() {
                stdin = None; // closed: the end of the job
            }
        }
        if r {
            if let Some(s) = stdout.as_mut() {
                match s.read(&mut buf) {
                    Ok(0) => stdout = None,
                    Ok(n) => {
                        out.extend_from_slice(&buf[..n]);
                        if out.len() > MAX_ANSWER {
                            return Err(Talk::TooLong);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(Talk::Io(e)),
                }
            }
        }
        if e {
            if let Some(s) = stderr.as_mut() {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => stderr = None,
                    Ok(n) => keep(&mut err, &buf[..n]),
                }
            }
        }
    }
}

/// Reads what `stderr` holds now, without waiting for more.
fn drain(stderr: &mut Option<std::process::ChildStderr>, err: &mut Vec<u8>) {
    let Some(s) = stderr.as_mut() else { return };
    let mut buf = [0u8; 4096];
    loop {
        let mut fds = [PollFd::new(s.as_fd(), PollFlags::POLLIN)];
        let ready = matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0);
        if !ready {
            return;
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => keep(err, &buf[..n]),
        }
    }
}

/// Appends `bytes` to `err`, up to [`MAX_STDERR`] in all.
fn keep(err: &mut Vec<u8>, bytes: &[u8]) {
    let room = MAX_STDERR.saturating_sub(err.len());
    err.extend_from_slice(&bytes[..bytes.len().min(room)]);
}

/// Whether the renewer has ended, without reaping it (`WNOWAIT`): until it is reaped,
/// no new process can take its pid, so [`kill_group`] reaches its own group only.
fn has_ended(child: &Child) -> io::Result<bool> {
    use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).map_err(io::Error::other)?);
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    match waitid(Id::Pid(pid), flags) {
        Ok(WaitStatus::StillAlive) => Ok(false),
        Ok(_) => Ok(true),
        Err(e) => Err(e.into()),
    }
}

/// SIGKILL to the renewer's process group (its pid: not reaped yet, so still its), and
/// reaps it.
fn kill_group(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The pool of renewal threads, started on the first job: a host without client
/// certificates never has one. The main loop polls [`Workers::wake`], readable when an
/// [`Outcome`] waits.
pub struct Workers {
    jobs: Sender<Job>,
    done: Receiver<Outcome>,
    pub wake: UnixStream,
}

impl Workers {
    pub fn start(threads: usize) -> io::Result<Workers> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        let (done_tx, done) = mpsc::channel();
        let (wake, wake_tx) = UnixStream::pair()?;
        wake.set_nonblocking(true)?;
        // A full socket buffer must never block a worker: the byte is only a nudge.
        wake_tx.set_nonblocking(true)?;
        for i in 0..threads.max(1) {
            let (queue, done_tx) = (queue.clone(), done_tx.clone());
            let mut nudge = wake_tx.try_clone()?;
            std::thread::Builder::new()
                .name(format!("renew-{i}"))
                .spawn(move || loop {
                    // The lock is held only while waiting for the next job.
                    let next = match queue.lock() {
                        Ok(q) => q.recv(),
                        Err(_) => return,
                    };
                    let Ok(job) = next else { return };
                    let result = job.run();
                    if done_tx
                        .send(Outcome {
                            replaces: job.job.record.issued,
                            key: job.key,
                            result,
                        })
                        .is_err()
                    {
                        return;
                    }
                    let _ = nudge.write(b"!");
                })?;
        }
        Ok(Workers { jobs, done, wake })
    }

    /// Queues a job; false if no worker is left to take it.
    pub fn submit(&self, job: Job) -> bool {
        self.jobs.send(job).is_ok()
    }

    /// Outcomes that are in, without waiting.
    pub fn collect(&mut self) -> Vec<Outcome> {
        let mut buf = [0u8; 64];
        while matches!(self.wake.read(&mut buf), Ok(n) if n > 0) {}
        std::iter::from_fn(|| self.done.try_recv().ok()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(issued: f64, not_after: f64, creds: Option<f64>) -> ClientCertRecord {
        ClientCertRecord {
            certificate: "/run/efs/fs-1.mnt.20049+/certificate.pem".into(),
            private_key: "/etc/amazon/efs/privateKey.pem".into(),
            common_name: "host".into(),
            region: "us-east-1".into(),
            access_point: None,
            iam_source: None,
            issued,
            not_after,
            credentials_expire: creds,
            renewed: None,
            renewal_error: None,
        }
    }

    const NOW: f64 = 1_800_000_000.0;
    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn due_by_interval_expiry_credentials_or_nonsense() {
        let fresh = record(NOW - 60.0, NOW + 3.0 * 3600.0, None);
        assert_eq!(due(&fresh, NOW, HOUR), None);
        assert_eq!(
            due(&record(NOW - 3600.0, NOW + 7200.0, None), NOW, HOUR),
            Some("the renewal interval has passed")
        );
        // An interval longer than the certificate lives: the expiry margin renews.
        let long = Duration::from_secs(1440 * 60);
        assert_eq!(
            due(&record(NOW - 9000.0, NOW + 1700.0, None), NOW, long),
            Some("it expires soon")
        );
        assert_eq!(
            due(
                &record(NOW - 60.0, NOW + 10_000.0, Some(NOW + 500.0)),
                NOW,
                HOUR
            ),
            Some("its credentials expire soon")
        );
        assert!(due(&record(f64::NAN, NOW, None), NOW, HOUR).is_some());
        assert!(due(&record(NOW, 1e300, None), NOW, HOUR).is_some());
        assert!(due(&record(NOW, NOW + 9000.0, Some(-1.0)), NOW, HOUR).is_some());
        assert_eq!(next_due(&fresh, HOUR), NOW - 60.0 + 3600.0);
        assert_eq!(
            next_due(&record(NOW, NOW + 10_000.0, Some(NOW + 1200.0)), HOUR),
            NOW + 600.0
        );
    }

    #[test]
    fn stale_for_a_restart_only_when_nearly_or_already_expired() {
        assert!(!stale_for_restart(
            &record(NOW - 9000.0, NOW + 1000.0, None),
            NOW
        ));
        assert!(stale_for_restart(
            &record(NOW - 9000.0, NOW - 1.0, None),
            NOW
        ));
        assert!(stale_for_restart(
            &record(NOW, NOW + 9000.0, Some(NOW + 60.0)),
            NOW
        ));
        assert!(stale_for_restart(&record(NOW, f64::INFINITY, None), NOW));
    }

    #[test]
    fn failures_back_off_to_the_interval_and_each_error_is_logged_once() {
        let t0 = Instant::now();
        let mut t = Tracker::default();
        assert!(t.failed("no profile", t0, HOUR));
        assert_eq!(t.retry_at, Some(t0 + Duration::from_secs(60)));
        assert!(!t.failed("no profile", t0, HOUR), "the same error again");
        assert_eq!(t.retry_at, Some(t0 + Duration::from_secs(120)));
        assert!(t.failed("IMDS timed out", t0, HOUR), "another error");
        assert!(t.failed("no profile", t0, HOUR), "back to the first");
        assert_eq!(t.succeeded(), 4);
        assert!(
            t.failed("no profile", t0, HOUR),
            "after a success, logged again"
        );
        assert_eq!(retry_delay(1, HOUR), Duration::from_secs(60));
        assert_eq!(retry_delay(3, HOUR), Duration::from_secs(240));
        assert_eq!(retry_delay(7, HOUR), HOUR);
        assert_eq!(retry_delay(1000, HOUR), HOUR);
        assert_eq!(
            retry_delay(5, Duration::from_secs(60)),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn a_restart_waits_for_one_renewal_at_most_and_not_for_long() {
        let t0 = Instant::now();
        let mut t = Tracker::default();
        assert!(!t.holds_restart(false, t0));
        assert!(t.holds_restart(true, t0));
        assert!(t.urgent);
        // The job goes out, comes back failed: the restart goes ahead.
        t.urgent = false;
        t.in_flight = true;
        assert!(t.holds_restart(true, t0 + Duration::from_secs(1)));
        t.in_flight = false;
        assert!(!t.holds_restart(true, t0 + Duration::from_secs(2)));
        // A renewal that never comes back: not past the limit.
        let mut t = Tracker::default();
        assert!(t.holds_restart(true, t0));
        t.urgent = false;
        t.in_flight = true;
        assert!(!t.holds_restart(true, t0 + MAX_RESTART_HOLD));
        assert_eq!(t.hold_deadline(), Some(t0 + MAX_RESTART_HOLD));
        // Just failed: no new attempt for a restart, it goes ahead.
        let mut t = Tracker::default();
        t.failed("no profile", t0, HOUR);
        assert!(!t.holds_restart(true, t0));
        assert!(!t.urgent);
    }

    /// A stand-in renewer: a shell script in a directory of its own.
    struct Script {
        dir: PathBuf,
        path: PathBuf,
    }

    impl Script {
        fn new(name: &str, body: &str) -> Script {
            let dir =
                std::env::temp_dir().join(format!("efs-renewer-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("renewer");
            let script = format!("#!/bin/sh\ncd {}\n{body}\n", dir.display());
            efs_testkit::write_executable(&path, &script, 0o755);
            Script { dir, path }
        }

        fn run(&self, input: &[u8], deadline: Duration) -> Result<Renewed, String> {
            run_renewer(&self.path, input, deadline)
        }

        fn pid(&self, name: &str) -> i32 {
            std::fs::read_to_string(self.dir.join(name))
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        }
    }

    impl Drop for Script {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// Running: there, and not a zombie waiting for whoever inherited it.
    fn alive(pid: i32) -> bool {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
            && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap_or_default()
                .rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
    }

    const OK: &str = r#"{"ok":{"issued":1800000000.0,"not_after":1800010800.0}}"#;

    #[test]
    fn the_renewer_gets_the_job_on_stdin_and_its_answer_is_read() {
        let s = Script::new("ok", &format!("cat > job\necho '{OK}'"));
        let r = s
            .run(b"{\"the\":\"job\"}", Duration::from_secs(10))
            .unwrap();
        assert_eq!((r.issued, r.not_after), (1_800_000_000.0, 1_800_010_800.0));
        assert_eq!(
            std::fs::read(s.dir.join("job")).unwrap(),
            b"{\"the\":\"job\"}"
        );
        // Its error answer is the renewal's error.
        let s = Script::new(
            "error",
            "cat >/dev/null\necho '{\"error\":\"AWS profile [x] not found\"}'\nexit 1",
        );
        assert_eq!(
            s.run(b"{}", Duration::from_secs(10)).unwrap_err(),
            "AWS profile [x] not found"
        );
    }

    #[test]
    fn a_renewer_that_hangs_is_killed_at_the_deadline_with_what_it_started() {
        let s = Script::new(
            "hang",
            "sleep 600 &\necho $! > child.pid\necho $$ > self.pid\nwait",
        );
        let t0 = Instant::now();
        let e = s.run(b"{}", Duration::from_secs(1)).unwrap_err();
        // Far from the script's 600 s; the slack is for a machine busy with other tests
        // (a run of the whole workspace once took over 5 s here).
        assert!(t0.elapsed() < Duration::from_secs(15), "{:?}", t0.elapsed());
        assert!(e.contains("did not finish within 1 s; killed it"), "{e}");
        let (me, child) = (s.pid("self.pid"), s.pid("child.pid"));
        assert!(!alive(me), "the renewer is reaped");
        let gone = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(20));
            !alive(child)
        });
        assert!(gone, "what it started is killed too");
    }

    #[test]
    fn what_a_renewer_leaves_behind_when_it_succeeds_is_killed_with_it() {
        let s = Script::new(
            "leaves",
            &format!(
                "cat >/dev/null\nsleep 600 </dev/null >/dev/null 2>&1 &\necho $! > child.pid\necho '{OK}'"
            ),
        );
        let t0 = Instant::now();
        s.run(b"{}", Duration::from_secs(10)).unwrap();
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        let child = s.pid("child.pid");
        let gone = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(20));
            !alive(child)
        });
        assert!(gone, "the sleep it left behind is killed");
    }

    #[test]
    fn a_renewer_that_reads_nothing_cannot_block_the_worker() {
        // A job larger than any pipe buffer, to a renewer that never reads it.
        let s = Script::new("deaf", "sleep 600");
        let e = s
            .run(&vec![b' '; 1 << 20], Duration::from_secs(1))
            .unwrap_err();
        assert!(e.contains("did not finish within 1 s"), "{e}");
        // One that exits at once without reading answers nothing; its stderr says why.
        let s = Script::new("refuses", "echo 'no such option' >&2\nexit 3");
        let e = s
            .run(&vec![b' '; 1 << 20], Duration::from_secs(10))
            .unwrap_err();
        assert!(
            e.contains("ended (exit status: 3) without an answer: no such option"),
            "{e}"
        );
    }

    #[test]
    fn a_malformed_or_inconsistent_answer_is_a_failed_renewal_not_a_panic() {
        for (name, body, says) in [
            ("garbage", "echo 'certainly'", "not valid"),
            ("half", "printf '{\"ok\":{\"issued\":'", "not valid"),
            ("nothing", "exit 0", "without an answer"),
            (
                "exit1",
                &format!("echo '{OK}'\nexit 1"),
                "answered, but ended with exit status: 1",
            ),
            ("killed", "kill -9 $$", "signal: 9"),
            (
                "huge",
                "yes '{}' | head -c 100000",
                "wrote more than 16 KiB; killed it",
            ),
            (
                "times",
                r#"echo '{"ok":{"issued":5.0,"not_after":1.0}}'"#,
                "times that are not valid",
            ),
        ] {
            let s = Script::new(name, body);
            let e = s.run(b"{}", Duration::from_secs(10)).unwrap_err();
            assert!(e.contains(says), "{name}: {e}");
        }
        let e = run_renewer(
            Path::new("/nonexistent/efs-renew-cert"),
            b"{}",
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(
            e.starts_with("cannot run /nonexistent/efs-renew-cert: "),
            "{e}"
        );
    }

    #[test]
    fn a_refused_job_runs_nothing() {
        let s = Script::new("refused", "touch ran");
        let cfg = Config::default();
        let mut job = Job::new(
            "/run/efs/fs-1.mnt.20049".into(),
            "fs-1",
            &record(NOW, NOW, None),
            &cfg,
            Err("/run/efs/fs-1.mnt.20049 is owned by uid 1000, not by root".into()),
        );
        job.program = s.path.clone();
        assert_eq!(
            job.run().unwrap_err(),
            "not renewing: /run/efs/fs-1.mnt.20049 is owned by uid 1000, not by root"
        );
        assert!(!s.dir.join("ran").exists());
        assert_eq!(job.program, s.path);
        assert_eq!(
            Job::new("k".into(), "fs-1", &record(NOW, NOW, None), &cfg, Ok(())).program,
            Path::new("/usr/bin/efs-renew-cert")
        );
    }
}
