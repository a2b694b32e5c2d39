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
//! Taking ownership of a descriptor number is `unsafe`; it lives in [`take`], after
//! checking that the number is open and not stdio. (The tunnel's only other `unsafe` is
//! the two allocator calls in `memory`.)

use std::fmt;
use std::fs::File;
use std::io::Write;
use std::net::TcpListener;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{getsockopt, sockopt, SockType};

#[derive(Debug)]
pub enum FdError {
    Stdio(RawFd),
    NotOpen(RawFd),
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
            FdError::NotAListeningTcpSocket(n, why) => {
                write!(f, "descriptor {n} is not a listening TCP socket: {why}")
            }
        }
    }
}

impl std::error::Error for FdError {}

/// Takes ownership of an inherited descriptor. Each number may be taken once: the
/// command line names each descriptor once, and nothing else in the tunnel uses raw
/// numbers.
pub fn take(fd: RawFd) -> Result<OwnedFd, FdError> {
    if (0..=2).contains(&fd) {
        return Err(FdError::Stdio(fd));
    }
    // SAFETY: F_GETFD on any integer is harmless; it fails with EBADF for a number that
    // is not an open descriptor. An open descriptor named on our command line was opened
    // for us by our parent and is used by nothing else in this process, so owning it
    // (and closing it on drop) is sound.
    unsafe {
        if nix::libc::fcntl(fd, nix::libc::F_GETFD) == -1 {
            return Err(FdError::NotOpen(fd));
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
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

    /// Writes one line and closes the pipe; later calls do nothing.
    pub fn send(&mut self, line: &str) {
        if let Some(mut f) = self.0.take() {
            let _ = f.write_all(format!("{}\n", line.replace('\n', " ")).as_bytes());
        }
    }
}
