//! The ready pipe: how a tunnel started with `--ready-fd N` tells its parent that it has
//! completed one TLS handshake with the mount target, or why it could not.
//!
//! Protocol: the tunnel writes exactly one line ([`Readiness::line`]) and closes the
//! pipe: `ready port=N`, or `error <reason>` (then it exits 1). A pipe closed without a
//! line means the tunnel died before it knew (see its log). `mount.efs` waits on it
//! ([`ReadyReader::wait`]), so a wrong certificate or an unreachable target fails the
//! mount within seconds and with the reason. The watchdog never asks for it: a target
//! that is briefly unreachable must not stop a restart.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};

/// The longest line a parent reads; a reason is one log line, far shorter.
const MAX_LINE: usize = 4096;

/// What a tunnel reports on its ready pipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// Handshake done; serving on this local port.
    Ready { port: u16 },
    /// Cannot reach or verify the mount target; the tunnel exits 1.
    Failed(String),
}

impl Readiness {
    /// The line the tunnel writes, newline included (a reason's own newlines become
    /// spaces, so it is always one line).
    pub fn line(&self) -> String {
        match self {
            Readiness::Ready { port } => format!("ready port={port}\n"),
            Readiness::Failed(why) => format!("error {}\n", why.replace(['\n', '\r'], " ")),
        }
    }

    /// Reads a line [`Readiness::line`] wrote.
    pub fn parse(line: &str) -> Option<Readiness> {
        let line = line.trim_end_matches(['\n', '\r']);
        if let Some(port) = line.strip_prefix("ready port=") {
            return port.parse().ok().map(|port| Readiness::Ready { port });
        }
        line.strip_prefix("error ")
            .map(|why| Readiness::Failed(why.trim().to_string()))
    }
}

/// Why no [`Readiness`] arrived.
#[derive(Debug)]
pub enum NotReady {
    /// Nothing within the time allowed.
    TimedOut,
    /// The pipe closed without a line: the tunnel exited before it could say why.
    Closed,
    /// A line that is not in the protocol.
    Garbled(String),
    Io(io::Error),
}

impl fmt::Display for NotReady {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotReady::TimedOut => write!(f, "the tunnel did not report readiness in time"),
            NotReady::Closed => write!(f, "the tunnel exited without reporting readiness"),
            NotReady::Garbled(line) => write!(f, "the tunnel reported {line:?}"),
            NotReady::Io(e) => write!(f, "cannot read the tunnel's ready pipe: {e}"),
        }
    }
}

impl std::error::Error for NotReady {}

/// The parent's end of a ready pipe ([`crate::spawn_with_ready_pipe`]).
#[derive(Debug)]
pub struct ReadyReader(OwnedFd);

impl ReadyReader {
    pub(crate) fn new(read_end: OwnedFd) -> ReadyReader {
        ReadyReader(read_end)
    }

    /// Waits up to `timeout` for the tunnel's line. Never blocks longer: the pipe is
    /// polled against the deadline, not read blindly.
    pub fn wait(self, timeout: Duration) -> Result<Readiness, NotReady> {
        let deadline = Instant::now() + timeout;
        let mut line = Vec::new();
        let mut chunk = [0u8; 512];
        loop {
            if let Some(end) = line.iter().position(|b| *b == b'\n') {
                line.truncate(end);
                let text = String::from_utf8_lossy(&line).into_owned();
                return Readiness::parse(&text).ok_or(NotReady::Garbled(text));
            }
            if line.len() > MAX_LINE {
                return Err(NotReady::Garbled(String::from_utf8_lossy(&line).into()));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(NotReady::TimedOut);
            }
            let poll_for = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
            let mut fds = [PollFd::new(self.0.as_fd(), PollFlags::POLLIN)];
            match nix::poll::poll(&mut fds, poll_for) {
                Ok(0) => continue,
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(NotReady::Io(e.into())),
            }
            match nix::unistd::read(&self.0, &mut chunk) {
                Ok(0) if line.is_empty() => return Err(NotReady::Closed),
                // A last line without its newline still counts.
                Ok(0) => line.push(b'\n'),
                Ok(n) => line.extend_from_slice(&chunk[..n]),
                Err(Errno::EINTR | Errno::EAGAIN) => continue,
                Err(e) => return Err(NotReady::Io(e.into())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::fcntl::OFlag;
    use std::io::Write;

    #[test]
    fn lines_round_trip_and_are_always_one_line() {
        for r in [
            Readiness::Ready { port: 20049 },
            Readiness::Failed("cannot reach fs-1 at 10.0.0.5:2049: refused".into()),
        ] {
            let line = r.line();
            assert_eq!(line.matches('\n').count(), 1);
            assert_eq!(Readiness::parse(&line), Some(r));
        }
        let multi = Readiness::Failed("two\nlines".into()).line();
        assert_eq!(multi, "error two lines\n");
        assert_eq!(Readiness::parse("ready port=x"), None);
        assert_eq!(Readiness::parse("hello"), None);
    }

    fn pipe() -> (ReadyReader, std::fs::File) {
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        (ReadyReader::new(r), std::fs::File::from(w))
    }

    #[test]
    fn the_parent_gets_the_line_or_knows_why_not() {
        let (reader, mut w) = pipe();
        w.write_all(Readiness::Ready { port: 7 }.line().as_bytes())
            .unwrap();
        assert_eq!(
            reader.wait(Duration::from_secs(1)).unwrap(),
            Readiness::Ready { port: 7 }
        );

        let (reader, w) = pipe();
        drop(w);
        assert!(matches!(
            reader.wait(Duration::from_secs(1)),
            Err(NotReady::Closed)
        ));

        let (reader, mut w) = pipe();
        w.write_all(b"what?").unwrap();
        drop(w);
        assert!(matches!(
            reader.wait(Duration::from_secs(1)),
            Err(NotReady::Garbled(l)) if l == "what?"
        ));

        let (reader, _w) = pipe();
        let t0 = Instant::now();
        assert!(matches!(
            reader.wait(Duration::from_millis(100)),
            Err(NotReady::TimedOut)
        ));
        assert!(t0.elapsed() < Duration::from_secs(2));
    }
}
