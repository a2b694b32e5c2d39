//! Descriptors a tunnel inherits from the process that starts it.
//!
//! * A listening socket (`--listen-fd N`): `mount.efs` binds the port itself (so that
//!   choosing a port and holding it are one step, with no race between parallel mounts),
//!   and the watchdog keeps a duplicate of it, so that while a tunnel is restarted the
//!   kernel queues the NFS client's connection attempts instead of refusing them. The
//!   parent creates a bound, listening TCP socket, clears `FD_CLOEXEC` on it, and passes
//!   its number; the tunnel checks that it really is a listening TCP socket.
//! * A readiness pipe (`--ready-fd N`): the tunnel writes one line there once it has
//!   completed a TLS handshake with the mount target, or why it could not.
//!
//! The protocol (flags, the ready-pipe lines) is `efs_tunnel_contract`; this module is
//! the tunnel's side of it.
//!
//! Taking ownership of a descriptor number is `unsafe`; it lives in [`take`], after
//! checking that the number is open, not stdio, and not taken before: each number is
//! owned at most once in the life of the process, so a command line that names one
//! descriptor twice (`--listen-fd 3 --ready-fd 3`) is an error, never two owners that
//! would each close it. (The tunnel's only other `unsafe` is the two allocator calls in
//! `memory`.)

use std::collections::BTreeSet;
use std::fmt;
use std::fs::File;
use std::io::Write;
use std::net::TcpListener;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

use efs_tunnel_contract::Readiness;

use nix::sys::socket::{getsockopt, sockopt, SockType};

#[derive(Debug)]
pub enum FdError {
    Stdio(RawFd),
    NotOpen(RawFd),
    /// Already taken by an earlier [`take`]: named twice on the command line.
    AlreadyTaken(RawFd),
    NotAListeningTcpSocket(RawFd, String),
}

impl fmt::Display for FdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FdError::Stdio(n) => {
                write!(f, "descriptor {n} is stdin/stdout/stderr; pass 3 or above")
            }
            FdError::NotOpen(n) => write!(
                f,
                "descriptor {n} is not open in this process; did the parent clear FD_CLOEXEC?"
            ),
            FdError::AlreadyTaken(n) => write!(
                f,
                "descriptor {n} is already in use as another inherited descriptor; give --listen-fd and --ready-fd different descriptors"
            ),
            FdError::NotAListeningTcpSocket(n, why) => {
                write!(f, "descriptor {n} is not a listening TCP socket: {why}")
            }
        }
    }
}

impl std::error::Error for FdError {}

/// The descriptor numbers [`take`] has handed out; never shrinks, so that a number
/// closed and reused by a later `open` cannot be taken either.
static TAKEN: Mutex<BTreeSet<RawFd>> = Mutex::new(BTreeSet::new());

/// Takes ownership of an inherited descriptor, at most once per number.
pub fn take(fd: RawFd) -> Result<OwnedFd, FdError> {
    if (0..=2).contains(&fd) {
        return Err(FdError::Stdio(fd));
    }
    let mut taken = TAKEN
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if taken.contains(&fd) {
        return Err(FdError::AlreadyTaken(fd));
    }
    // SAFETY: F_GETFD on any integer is harmless; it fails with EBADF for a number that
    // is not an open descriptor.
    if unsafe { nix::libc::fcntl(fd, nix::libc::F_GETFD) } == -1 {
        return Err(FdError::NotOpen(fd));
    }
    taken.insert(fd);
    // SAFETY: the number is open, and it is not owned by anything else in this process:
    // it was opened for us by our parent and named on our command line, nothing else in
    // the tunnel uses raw numbers, and `TAKEN` (checked and updated under its lock)
    // guarantees this is its only owner, ever. So owning it, and closing it on drop, is
    // sound.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// An inherited listening TCP socket.
pub fn listener(fd: RawFd) -> Result<TcpListener, FdError> {
    let owned = take(fd)?;
    let bad = |why: String| FdError::NotAListeningTcpSocket(fd, why);
    let ty = getsockopt(&owned, sockopt::SockType).map_err(|e| bad(e.to_string()))?;
    if ty != SockType::Stream {
        return Err(bad(format!("socket type is {ty:?}")));
    }
    let listening = getsockopt(&owned, sockopt::AcceptConn).map_err(|e| bad(e.to_string()))?;
    if !listening {
        return Err(bad("listen() was not called on it".into()));
    }
    let listener = TcpListener::from(owned);
    let local = listener.local_addr().map_err(|e| bad(e.to_string()))?;
    log::debug!("inherited listener fd {fd}: {local}");
    Ok(listener)
}

/// Where the tunnel reports that it is ready, or why not.
#[derive(Debug)]
pub struct ReadyPipe(Option<File>);

impl ReadyPipe {
    pub fn from_fd(fd: RawFd) -> Result<ReadyPipe, FdError> {
        Ok(ReadyPipe(Some(File::from(take(fd)?))))
    }

    /// Reports readiness and closes the pipe; later calls do nothing.
    pub fn report(&mut self, readiness: &Readiness) {
        if let Some(mut f) = self.0.take() {
            let _ = f.write_all(readiness.line().as_bytes());
        }
    }

    /// Reports a line given as text (`ready port=N` or `error <reason>`); text that is
    /// not a [`Readiness`] line is reported as the reason of a failure, so that the
    /// parent always reads a line of the protocol.
    pub fn send(&mut self, line: &str) {
        let readiness = Readiness::parse(line).unwrap_or_else(|| Readiness::Failed(line.into()));
        self.report(&readiness);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// A pipe whose two numbers nothing owns yet, as if inherited. Each test gives its
    /// own `base`: a number, once taken, is never taken again in this process, and the
    /// kernel would hand a closed one to the next test.
    fn inherited_pipe(base: RawFd) -> (RawFd, RawFd) {
        use nix::fcntl::{fcntl, FcntlArg};
        let (r, w) = nix::unistd::pipe().unwrap();
        let high = |fd: &OwnedFd| fcntl(fd, FcntlArg::F_DUPFD_CLOEXEC(base)).unwrap();
        let (hr, hw) = (high(&r), high(&w));
        assert!(hr >= base && hw >= base);
        (hr, hw)
    }

    #[test]
    fn a_descriptor_is_owned_once_never_twice() {
        let (r, w) = inherited_pipe(600);
        let mut ready = ReadyPipe::from_fd(w).unwrap();
        // `--listen-fd W --ready-fd W`: the second claim is an error, not a second owner.
        let err = listener(w).unwrap_err();
        assert!(matches!(err, FdError::AlreadyTaken(n) if n == w), "{err}");
        assert!(err.to_string().contains("--ready-fd"), "{err}");
        assert!(matches!(
            ReadyPipe::from_fd(w),
            Err(FdError::AlreadyTaken(_))
        ));

        ready.send("ready port=20049");
        ready.send("ready port=1");
        drop(ready);
        let mut reader = File::from(take(r).unwrap());
        let mut text = String::new();
        reader.read_to_string(&mut text).unwrap();
        assert_eq!(text, "ready port=20049\n", "one line, then closed");
        assert!(matches!(take(r), Err(FdError::AlreadyTaken(_))));
    }

    #[test]
    fn stdio_closed_and_non_socket_descriptors_are_refused() {
        assert!(matches!(take(1), Err(FdError::Stdio(1))));
        // Far above any descriptor limit, so never open (a number just closed could be
        // reused by another test's thread meanwhile).
        assert!(matches!(take(RawFd::MAX), Err(FdError::NotOpen(_))));
        let (r, w) = inherited_pipe(700);
        assert!(matches!(
            listener(r),
            Err(FdError::NotAListeningTcpSocket(..))
        ));
        let mut ready = ReadyPipe::from_fd(w).unwrap();
        ready.send("no such line");
        drop(ready);
    }
}
