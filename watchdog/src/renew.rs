//! Renewal of the client certificates tunnels present to EFS (`iam`, `accesspoint`; issue
//! #12). A certificate is valid for 3 hours and, with `iam`, carries credentials that
//! may expire sooner; the watchdog issues a new one before either runs out, writes it
//! over the old file and tells the tunnel (SIGHUP) to present it to new connections.
//!
//! Split in two because getting credentials blocks for seconds (IMDS, ECS, STS,
//! `credential_process`): the blocking part ([`issue`]: read the host key, fetch
//! credentials from the mount's recorded source, sign) runs on a small pool of worker
//! threads ([`Workers`]); the main loop decides when a certificate is due ([`due`]),
//! hands out one job per mount at a time, and commits each result itself: it writes the
//! file ([`write_certificate`], a few local syscalls), signals the tunnel it supervises
//! and rewrites the state. So a certificate is never written for a mount that was torn
//! down meanwhile, and nothing a worker does can stall restarts or teardowns.
//!
//! Failures keep the old certificate and the tunnel as they are, are recorded in the
//! state (`renewal_error`, for `efs-utils status`), logged once per distinct error, and
//! retried after 1 minute, doubling up to the renewal interval ([`Tracker`]).

use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Component, Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use efs_config::state::ClientCertRecord;
use efs_config::Config;
use efs_iam::{
    cert, credentials, CertificateRequest, Endpoints, Env, HostKey, Iam, ProcessEnv, SigningTime,
};

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
/// The largest host key file read.
const MAX_KEY_FILE: u64 = 64 * 1024;
/// The temporary name a new certificate is written under, in its own directory. Fixed:
/// one watchdog runs per state directory (the lock), and a leftover is replaced.
pub const TEMP_NAME: &str = ".certificate.pem.new";

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

/// Everything a worker needs to issue one mount's new certificate.
#[derive(Debug, Clone)]
pub struct Job {
    /// The mount's state file: which tunnel the result is for.
    pub key: PathBuf,
    pub fs_id: String,
    pub record: ClientCertRecord,
    /// `[client-info] source`.
    pub client_source: Option<String>,
    pub endpoints: Endpoints,
}

impl Job {
    pub fn new(key: PathBuf, fs_id: &str, record: &ClientCertRecord, cfg: &Config) -> Job {
        let m = &cfg.mount;
        Job {
            key,
            fs_id: fs_id.to_string(),
            record: record.clone(),
            client_source: cfg.client_info.source.clone(),
            endpoints: Endpoints {
                ecs: m.ecs_credentials_url.clone(),
                imds: m.instance_metadata_url.clone(),
                imds_token: !m.disable_fetch_ec2_metadata_token,
                sts: m.sts_endpoint_url.clone(),
                dns_name_suffix: cfg.dns_name_suffix(&record.region).to_string(),
                ..Endpoints::default()
            },
        }
    }
}

/// A new certificate, not yet written.
#[derive(Debug, Clone)]
pub struct Renewed {
    pub pem: String,
    pub issued: f64,
    pub not_after: f64,
    pub credentials_expire: Option<f64>,
}

/// A worker's answer.
#[derive(Debug)]
pub struct Outcome {
    pub key: PathBuf,
    pub result: Result<Renewed, String>,
}

/// Issues the new certificate of `job` (blocks: credentials come over the network).
/// The error is one line, never a secret (`efs_iam`'s errors never contain one).
pub fn issue(job: &Job, env: &dyn Env) -> Result<Renewed, String> {
    let rec = &job.record;
    let pem = read_key(&rec.private_key)
        .map_err(|e| format!("cannot read the key {}: {e}", rec.private_key.display()))?;
    let key = HostKey::from_pem(&pem).map_err(|e| e.to_string())?;
    let creds = match &rec.iam_source {
        None => None,
        Some(method) => {
            let source = credentials::Source::from_method(method)
                .ok_or_else(|| credentials::Error::UnknownMethod(method.clone()).to_string())?;
            Some(
                credentials::renew(&source, &rec.region, env, &job.endpoints)
                    .map_err(|e| e.to_string())?,
            )
        }
    };
    let now = SigningTime::now().ok_or("the clock is outside 2000-2049")?;
    let issued = cert::issue(
        &key,
        &CertificateRequest {
            common_name: &rec.common_name,
            fs_id: &job.fs_id,
            access_point: rec.access_point.as_deref(),
            iam: creds.as_ref().map(|c| Iam {
                credentials: c,
                region: &rec.region,
                service: efs_iam::EFS_SERVICE,
            }),
            client_source: job.client_source.as_deref(),
            efs_utils_version: efs_iam::cert::EFS_UTILS_VERSION,
            now,
        },
    )
    .map_err(|e| e.to_string())?;
    Ok(Renewed {
        pem: issued.pem,
        issued: now.datetime().unix_timestamp() as f64,
        not_after: issued.not_after.unix_timestamp() as f64,
        credentials_expire: creds
            .and_then(|c| c.expiration)
            .map(|t| t.unix_timestamp() as f64),
    })
}

/// The key file's bytes: a regular file (never a FIFO a read would block on), bounded.
fn read_key(path: &Path) -> io::Result<Vec<u8>> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    let mut buf = Vec::new();
    f.take(MAX_KEY_FILE).read_to_end(&mut buf)?;
    Ok(buf)
}

/// One line of text from an error, whatever it contained.
pub fn one_line(s: &str) -> String {
    s.split(['\n', '\r'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether a state file may make the watchdog write or remove `certificate`: only a
/// file in a `NAME+` directory directly in the state directory, named without `.` or
/// `..` (a state file is not trusted to name arbitrary files).
pub fn inside_state_dir(state_dir: &Path, certificate: &Path) -> bool {
    let plain = certificate
        .components()
        .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    let Some(dir) = certificate.parent() else {
        return false;
    };
    plain
        && certificate.file_name().is_some()
        && dir
            .file_name()
            .is_some_and(|n| n.to_string_lossy().ends_with('+'))
        && dir.parent() == Some(state_dir)
}

/// Writes `pem` over `certificate` atomically: a temporary in the same directory (0600,
/// `O_EXCL|O_NOFOLLOW`), fsync, rename, fsync of the directory. The directory must be
/// in the state directory and root's alone (`state::check_trusted`: no symlink, not
/// group- or world-writable); it is never created here.
pub fn write_certificate(state_dir: &Path, certificate: &Path, pem: &str) -> Result<(), String> {
    if !inside_state_dir(state_dir, certificate) {
        return Err(format!(
            "{} is not a certificate in the state directory {}; not writing it",
            certificate.display(),
            state_dir.display()
        ));
    }
    let Some(dir) = certificate.parent() else {
        return Err("no directory".into());
    };
    let root = nix::unistd::geteuid().as_raw();
    efs_config::state::check_trusted(dir, root)?;
    let tmp = dir.join(TEMP_NAME);
    let written = (|| {
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&tmp)?;
        // The umask cannot widen 0600, but a narrower one is fine; be explicit anyway.
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(pem.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, certificate)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(|e| format!("cannot write {}: {e}", certificate.display()))
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
                    let result = issue(&job, &ProcessEnv).map_err(|e| one_line(&e));
                    if done_tx
                        .send(Outcome {
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

    #[test]
    fn only_certificates_in_the_state_directory_are_written_or_removed() {
        let dir = Path::new("/run/efs");
        assert!(inside_state_dir(
            dir,
            Path::new("/run/efs/fs-1.mnt.20049+/certificate.pem")
        ));
        for bad in [
            "/etc/shadow",
            "/run/efs/certificate.pem",
            "/run/efs/fs-1.mnt.20049/certificate.pem",
            "/run/efs/fs-1+/../../etc/passwd",
            "fs-1+/certificate.pem",
            "/run/efs/fs-1+/",
        ] {
            assert!(!inside_state_dir(dir, Path::new(bad)), "{bad}");
        }
    }

    #[test]
    fn a_certificate_is_replaced_whole_and_private() {
        let base = std::env::temp_dir().join(format!("efs-renew-write-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let cert_dir = base.join("fs-1.mnt.20049+");
        std::fs::create_dir_all(&cert_dir).unwrap();
        std::fs::set_permissions(&cert_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o750)).unwrap();
        let cert = cert_dir.join("certificate.pem");
        std::fs::write(&cert, "old").unwrap();
        std::fs::write(cert_dir.join(TEMP_NAME), "a leftover").unwrap();
        write_certificate(&base, &cert, "new").unwrap();
        assert_eq!(std::fs::read_to_string(&cert).unwrap(), "new");
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(&cert).unwrap().mode() & 0o777, 0o600);
        let names: Vec<_> = std::fs::read_dir(&cert_dir).unwrap().flatten().collect();
        assert_eq!(names.len(), 1, "only the certificate is left");
        // A directory others may write to is refused, and nothing is written.
        std::fs::set_permissions(&cert_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = write_certificate(&base, &cert, "newer").unwrap_err();
        assert!(e.contains("writable by group or others"), "{e}");
        assert_eq!(std::fs::read_to_string(&cert).unwrap(), "new");
        assert!(write_certificate(&base, Path::new("/tmp/x+/c.pem"), "x").is_err());
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn errors_become_one_line() {
        assert_eq!(one_line("a\nb\r\n  c "), "a b c");
    }
}
