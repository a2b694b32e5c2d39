//! Starting and stopping a tunnel process: [`spawn`] (the watchdog's restarts) and
//! [`spawn_with_ready_pipe`] (`mount.efs`) hand the child its listening socket and, for
//! the latter, a ready pipe; [`stop`] and [`TERM_GRACE`] end it.
//!
//! Decisions:
//! * The child inherits exactly the descriptors named on its command line. Each is a
//!   fresh `dup` (which never carries close-on-exec) that the parent closes right after
//!   the spawn; everything else the parent holds stays close-on-exec. The caller keeps
//!   its own listener: the watchdog holds it across restarts, so the NFS client's
//!   reconnects queue in its backlog while a tunnel is replaced. (A process that spawned
//!   children from other threads at the same moment could leak the dup into them; both
//!   starters spawn from one thread.)
//! * The child's stdio is `/dev/null`: a tunnel logs to its log file, and must not hold
//!   a terminal or `mount`'s pipes open.
//! * Stopping is SIGTERM, then SIGKILL after [`TERM_GRACE`]: the tunnel drains its
//!   connections within 3 s of SIGTERM (its own deadline), so the grace only bites for
//!   a stuck process. The watchdog runs the same sequence as phases of its event loop;
//!   [`stop`] is the blocking form for `mount.efs`.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::command::descriptor_args;
use crate::ready::ReadyReader;

/// How long a tunnel gets to exit after SIGTERM before SIGKILL.
pub const TERM_GRACE: Duration = Duration::from_secs(3);

/// Why a tunnel could not be started.
#[derive(Debug)]
pub enum SpawnError {
    /// The recorded command line is empty.
    NoProgram,
    /// Duplicating a descriptor or creating the ready pipe failed.
    Descriptors(io::Error),
    /// The program could not be executed.
    Exec(PathBuf, io::Error),
}

impl fmt::Display for SpawnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpawnError::NoProgram => write!(f, "the tunnel command line is empty"),
            SpawnError::Descriptors(e) => {
                write!(f, "cannot prepare the tunnel's descriptors: {e}")
            }
            SpawnError::Exec(program, e) => write!(f, "cannot start {}: {e}", program.display()),
        }
    }
}

impl std::error::Error for SpawnError {}

/// Starts `argv` (a recorded command line, [`crate::TunnelCommand::to_args`]) with
/// `listener` as its `--listen-fd`.
pub fn spawn(argv: &[String], listener: BorrowedFd<'_>) -> Result<Child, SpawnError> {
    spawn_inner(argv, listener, None)
}

/// Like [`spawn`], plus a ready pipe (`--ready-fd`): the returned reader gets the
/// tunnel's one [`crate::Readiness`] line.
pub fn spawn_with_ready_pipe(
    argv: &[String],
    listener: BorrowedFd<'_>,
) -> Result<(Child, ReadyReader), SpawnError> {
    let (read_end, write_end) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| SpawnError::Descriptors(e.into()))?;
    // Only the child may hold the write end once it runs, so that its death is our EOF:
    // ours is closed when this function returns.
    let child = spawn_inner(argv, listener, Some(write_end))?;
    Ok((child, ReadyReader::new(read_end)))
}

fn spawn_inner(
    argv: &[String],
    listener: BorrowedFd<'_>,
    ready: Option<OwnedFd>,
) -> Result<Child, SpawnError> {
    let (program, recorded) = argv.split_first().ok_or(SpawnError::NoProgram)?;
    let inherit = |fd: BorrowedFd<'_>| -> Result<OwnedFd, SpawnError> {
        nix::unistd::dup(fd).map_err(|e| SpawnError::Descriptors(e.into()))
    };
    let listen = inherit(listener)?;
    let ready = ready.as_ref().map(|w| inherit(w.as_fd())).transpose()?;
    let program = PathBuf::from(program);
    let child = Command::new(&program)
        .args(recorded)
        .args(descriptor_args(
            listen.as_raw_fd(),
            ready.as_ref().map(AsRawFd::as_raw_fd),
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| SpawnError::Exec(program, e));
    // The child has its copies now (or there is no child): close ours.
    drop(listen);
    drop(ready);
    child
}

/// How a [`stop`] ended.
#[derive(Debug)]
pub enum Stopped {
    /// It exited within [`TERM_GRACE`] of SIGTERM.
    Exited(ExitStatus),
    /// It needed SIGKILL.
    Killed(ExitStatus),
}

/// Stops a tunnel we started: SIGTERM, up to [`TERM_GRACE`] to exit, then SIGKILL; reaps
/// it either way.
pub fn stop(child: &mut Child) -> io::Result<Stopped> {
    if let Some(status) = child.try_wait()? {
        return Ok(Stopped::Exited(status));
    }
    let pid = i32::try_from(child.id())
        .map(Pid::from_raw)
        .map_err(io::Error::other)?;
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + TERM_GRACE;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return Ok(Stopped::Exited(status));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill()?;
    child.wait().map(Stopped::Killed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn sh(script: &str) -> Vec<String> {
        // `$0` is "sh"; the appended descriptor flags are "$1".."$4".
        vec!["/bin/sh".into(), "-c".into(), script.into(), "sh".into()]
    }

    #[test]
    fn the_child_inherits_the_named_descriptors_and_reports_on_the_pipe() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        // The child checks its --listen-fd is open, then writes to its --ready-fd.
        let argv = sh(
            r#"[ "$1" = --listen-fd ] && [ -e /proc/self/fd/$2 ] && [ "$3" = --ready-fd ] && echo "ready port=9" >&$4"#,
        );
        let (mut child, ready) = spawn_with_ready_pipe(&argv, listener.as_fd()).unwrap();
        assert_eq!(
            ready.wait(Duration::from_secs(5)).unwrap(),
            crate::Readiness::Ready { port: 9 }
        );
        assert!(child.wait().unwrap().success());
        // The caller keeps its listener.
        assert!(listener.local_addr().is_ok());
    }

    #[test]
    fn a_dead_child_closes_the_pipe_and_a_missing_program_is_exec_error() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let (mut child, ready) = spawn_with_ready_pipe(&sh("exit 3"), listener.as_fd()).unwrap();
        assert!(matches!(
            ready.wait(Duration::from_secs(5)),
            Err(crate::NotReady::Closed)
        ));
        assert_eq!(child.wait().unwrap().code(), Some(3));

        let err = spawn(&["/nonexistent/efs-tunnel".into()], listener.as_fd()).unwrap_err();
        assert!(matches!(err, SpawnError::Exec(..)), "{err}");
        assert!(err.to_string().contains("/nonexistent/efs-tunnel"));
        assert!(matches!(
            spawn(&[], listener.as_fd()),
            Err(SpawnError::NoProgram)
        ));
    }

    #[test]
    fn stop_terminates_then_kills() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut child = spawn(&sh("exec sleep 30"), listener.as_fd()).unwrap();
        assert!(matches!(stop(&mut child).unwrap(), Stopped::Exited(_)));

        let mut stubborn = spawn(
            &sh("trap '' TERM; while :; do sleep 0.05; done"),
            listener.as_fd(),
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let t0 = Instant::now();
        assert!(matches!(stop(&mut stubborn).unwrap(), Stopped::Killed(_)));
        assert!(t0.elapsed() >= TERM_GRACE);
    }
}
