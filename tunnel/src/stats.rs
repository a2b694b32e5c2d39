//! Live counters of one tunnel process, shared by the connection tasks and read by the
//! control channel. Byte counters are plain atomics bumped once per write, never per
//! byte; everything behind a mutex changes at most once per connection.
//!
//! An upstream failure counts where it happened ([`FailedStep`]): before TLS (DNS
//! lookup, TCP connect: `connects_failed`, a network problem) or in the TLS handshake
//! (`handshakes_failed`, a certificate or policy problem), so that the status tells an
//! unreachable mount target from a refused one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use log::{info, warn};

use crate::certinfo;
use crate::control::{LastError, Status, TlsSession};
use crate::upstream::{TimedStep, UpstreamError};

#[derive(Debug)]
pub struct Stats {
    started: Instant,
    pub connections_open: AtomicU64,
    pub connections_total: AtomicU64,
    pub bytes_to_server: AtomicU64,
    pub bytes_from_server: AtomicU64,
    pub handshakes_full: AtomicU64,
    pub handshakes_resumed: AtomicU64,
    pub handshakes_failed: AtomicU64,
    pub connects_failed: AtomicU64,
    /// Local connections refused because root does not hold their socket (`peer`).
    pub peer_refused: AtomicU64,
    session: Mutex<Option<TlsSession>>,
    errors: Mutex<ErrorLog>,
}

/// How often an unchanged, repeating upstream error is logged again (with a count).
const REPEAT_LOG_INTERVAL_SECS: u64 = 300;

#[derive(Debug, Default)]
struct ErrorLog {
    last: Option<LastError>,
    /// Repeats of `last` not yet logged.
    suppressed: u64,
    last_logged: Option<Instant>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            started: Instant::now(),
            connections_open: AtomicU64::new(0),
            connections_total: AtomicU64::new(0),
            bytes_to_server: AtomicU64::new(0),
            bytes_from_server: AtomicU64::new(0),
            handshakes_full: AtomicU64::new(0),
            handshakes_resumed: AtomicU64::new(0),
            handshakes_failed: AtomicU64::new(0),
            connects_failed: AtomicU64::new(0),
            peer_refused: AtomicU64::new(0),
            session: Mutex::new(None),
            errors: Mutex::new(ErrorLog::default()),
        }
    }
}

/// Which step of reaching the mount target failed, as the counters tell them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailedStep {
    /// DNS lookup or TCP connect (or their timeouts): TLS never started.
    Connect,
    /// The TLS handshake (refused, failed or timed out).
    Handshake,
}

impl FailedStep {
    pub fn of(e: &UpstreamError) -> FailedStep {
        match e {
            UpstreamError::Handshake(_)
            | UpstreamError::RefusedAfterHandshake(_)
            | UpstreamError::Timeout(TimedStep::Handshake) => FailedStep::Handshake,
            UpstreamError::Resolve(_)
            | UpstreamError::NoAddress
            | UpstreamError::Connect(..)
            | UpstreamError::Timeout(TimedStep::Resolve) => FailedStep::Connect,
        }
    }
}

/// Marks one client connection as open for as long as it lives.
pub struct OpenConnection<'a>(&'a Stats);

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.connections_open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Stats {
    pub fn connection_opened(&self) -> OpenConnection<'_> {
        self.connections_open.fetch_add(1, Ordering::Relaxed);
        self.connections_total.fetch_add(1, Ordering::Relaxed);
        OpenConnection(self)
    }

    pub fn uptime_secs(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// Records a completed handshake. After a run of failures, says once that the
    /// mount target is reachable again.
    pub fn handshake_ok(
        &self,
        resumed: bool,
        version: String,
        cipher: String,
        peer: Option<&[u8]>,
    ) {
        let counter = if resumed {
            &self.handshakes_resumed
        } else {
            &self.handshakes_full
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let summary = peer.and_then(certinfo::summarize);
        if let Ok(mut s) = self.session.lock() {
            *s = Some(TlsSession {
                version,
                cipher,
                peer_subject: summary.as_ref().map(|c| c.subject.clone()),
                peer_not_after_unix: summary.map(|c| c.not_after_unix),
            });
        }
        if let Ok(mut e) = self.errors.lock() {
            if e.last.is_some() && e.last_logged.is_some() {
                let repeats = std::mem::take(&mut e.suppressed);
                if repeats > 0 {
                    info!("upstream is reachable again (the last error repeated {repeats} more times)");
                } else {
                    info!("upstream is reachable again");
                }
                e.last_logged = None;
            }
        }
    }

    /// A handshake counted by [`Stats::handshake_ok`] that the mount target then refused
    /// (TLS 1.3 judges the client certificate after the client's side is done): it
    /// counts as failed instead, and is logged as an upstream error.
    pub fn handshake_refused(&self, resumed: bool, message: String) {
        let counter = if resumed {
            &self.handshakes_resumed
        } else {
            &self.handshakes_full
        };
        let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        self.upstream_error(FailedStep::Handshake, message);
    }

    /// Records an upstream failure at `step` and logs it: a new message at once, an
    /// identical repeat only as a count every few minutes, so a dead mount target never
    /// floods the log with the same line.
    pub fn upstream_error(&self, step: FailedStep, message: String) {
        let counter = match step {
            FailedStep::Connect => &self.connects_failed,
            FailedStep::Handshake => &self.handshakes_failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let Ok(mut e) = self.errors.lock() else {
            return;
        };
        let now = Instant::now();
        let same = e.last.as_ref().is_some_and(|l| l.message == message) && e.last_logged.is_some();
        if same {
            e.suppressed += 1;
            let due = e
                .last_logged
                .is_some_and(|t| now.duration_since(t).as_secs() >= REPEAT_LOG_INTERVAL_SECS);
            if due {
                warn!(
                    "{message} (repeated {} times since last logged)",
                    e.suppressed
                );
                e.suppressed = 0;
                e.last_logged = Some(now);
            }
        } else {
            if e.suppressed > 0 {
                warn!(
                    "the previous upstream error repeated {} more times",
                    e.suppressed
                );
            }
            warn!("{message}");
            e.suppressed = 0;
            e.last_logged = Some(now);
        }
        e.last = Some(LastError {
            message,
            unix_time: unix_now(),
        });
    }

    /// A snapshot for the control channel; the caller fills in what it owns.
    pub fn snapshot(&self) -> Status {
        Status {
            pid: std::process::id(),
            uptime_secs: self.uptime_secs(),
            connections_open: self.connections_open.load(Ordering::Relaxed),
            connections_total: self.connections_total.load(Ordering::Relaxed),
            bytes_to_server: self.bytes_to_server.load(Ordering::Relaxed),
            bytes_from_server: self.bytes_from_server.load(Ordering::Relaxed),
            handshakes_full: self.handshakes_full.load(Ordering::Relaxed),
            handshakes_resumed: self.handshakes_resumed.load(Ordering::Relaxed),
            handshakes_failed: self.handshakes_failed.load(Ordering::Relaxed),
            connects_failed: self.connects_failed.load(Ordering::Relaxed),
            peer_refused: self.peer_refused.load(Ordering::Relaxed),
            tls: self.session.lock().ok().and_then(|s| s.clone()),
            last_error: self.errors.lock().ok().and_then(|e| e.last.clone()),
            ..Status::default()
        }
    }
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    fn every_error() -> Vec<UpstreamError> {
        let addr = "10.0.0.5:2049".parse().unwrap();
        let refused = || io::Error::from(io::ErrorKind::ConnectionRefused);
        vec![
            UpstreamError::Resolve(io::Error::other("no such host")),
            UpstreamError::NoAddress,
            UpstreamError::Connect(addr, refused()),
            UpstreamError::Timeout(TimedStep::Resolve),
            UpstreamError::Timeout(TimedStep::Handshake),
            UpstreamError::Handshake(io::Error::other(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ))),
            UpstreamError::Handshake(io::Error::from(io::ErrorKind::UnexpectedEof)),
        ]
    }

    #[test]
    fn connect_failures_are_not_handshake_failures() {
        let steps: Vec<FailedStep> = every_error().iter().map(FailedStep::of).collect();
        use FailedStep::{Connect as C, Handshake as H};
        assert_eq!(steps, [C, C, C, C, H, H, H]);

        let stats = Stats::default();
        for e in every_error() {
            stats.upstream_error(FailedStep::of(&e), e.to_string());
        }
        let st = stats.snapshot();
        assert_eq!((st.connects_failed, st.handshakes_failed), (4, 3));
    }
}
