//! Process descriptors (pidfd), the Linux 5.6+ way to watch and signal a process without
//! pid-reuse races. Three syscalls have no safe wrapper in nix; they are wrapped here,
//! once, and nowhere else in the watchdog is `unsafe`.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// A descriptor for one process: readable (POLLIN) once the process has exited.
#[derive(Debug)]
pub struct Pidfd {
    fd: OwnedFd,
    pub pid: i32,
}

impl Pidfd {
    /// Opens a pidfd for a running process.
    pub fn open(pid: i32) -> io::Result<Pidfd> {
        // SAFETY: pidfd_open(2) takes a pid and flags and returns a new descriptor, which we
        // own from here on; it touches no memory of ours.
        let fd = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
        Ok(Pidfd {
            fd: unsafe { OwnedFd::from_raw_fd(fd as RawFd) },
            pid,
        })
    }

    /// Sends a signal to exactly this process, even if its pid has been reused since.
    pub fn signal(&self, sig: nix::sys::signal::Signal) -> io::Result<()> {
        // SAFETY: pidfd_send_signal(2) with a null siginfo behaves like kill(2) on the
        // process behind our own descriptor; no memory is passed.
        let r = unsafe {
            nix::libc::syscall(
                nix::libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                sig as i32,
                std::ptr::null::<nix::libc::siginfo_t>(),
                0,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Copies descriptor `target_fd` of the process into ours (needs ptrace rights over
    /// it, which root has): how the watchdog gets hold of a tunnel's listening socket.
    pub fn get_fd(&self, target_fd: RawFd) -> io::Result<OwnedFd> {
        // SAFETY: pidfd_getfd(2) returns a new descriptor in our table (close-on-exec set)
        // that we own from here on; it touches no memory of ours.
        let fd = unsafe {
            nix::libc::syscall(
                nix::libc::SYS_pidfd_getfd,
                self.fd.as_raw_fd(),
                target_fd,
                0,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor from the kernel, owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
    }
}

impl std::os::fd::AsFd for Pidfd {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
