//! The two namespaces a mount can be asked to happen in.
//!
//! * `-N NS` (util-linux): a **mount** namespace. libmount passes its own descriptor of the
//!   target namespace as `/proc/<mount's pid>/fd/<n>` and runs the helper in the original
//!   one, as mount(8) itself does: only the mount belongs in the target namespace; the
//!   state directory, the logs and the tunnel stay where the watchdog sees them.
//!   [`MountNamespace::enter`] switches for the `mount.nfs4` call (and the look at the
//!   mount table right after it) and switches back when the guard is dropped. The kernel
//!   allows it because `mount.efs` is single-threaded whenever it calls it.
//! * `-o netns=PATH` (amazon-efs-utils): a **network** namespace. The whole helper enters
//!   it first ([`enter_netns`]), so the port, the tunnel and `mount.nfs4` are all there;
//!   the tunnel's command line records it (`--netns`), so that a tunnel the watchdog
//!   restarts runs there too.

use std::fs::File;
use std::path::Path;

use nix::sched::{setns, CloneFlags};

use crate::MountError;

/// The mount namespace to mount in, and the one to come back to.
pub struct MountNamespace {
    target: File,
    origin: File,
}

/// While it lives, this process is in the target mount namespace.
pub struct Entered<'a>(&'a MountNamespace);

impl MountNamespace {
    pub fn open(path: &Path) -> Result<MountNamespace, MountError> {
        let open = |p: &Path| {
            File::open(p).map_err(|e| {
                MountError::Invalid(format!("cannot open mount namespace {}: {e}", p.display()))
            })
        };
        Ok(MountNamespace {
            target: open(path)?,
            origin: open(Path::new("/proc/self/ns/mnt"))?,
        })
    }

    pub fn enter(&self) -> Result<Entered<'_>, MountError> {
        setns(&self.target, CloneFlags::CLONE_NEWNS).map_err(|e| {
            MountError::Failed(format!(
                "cannot enter the mount namespace given with -N: {e}"
            ))
        })?;
        Ok(Entered(self))
    }
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        if let Err(e) = setns(&self.0.origin, CloneFlags::CLONE_NEWNS) {
            // Nothing sensible is left to do in another namespace: the state would be
            // written where the watchdog cannot see it.
            log::error!("cannot return to the original mount namespace: {e}");
            std::process::exit(32);
        }
    }
}

/// Moves this process (and so the tunnel and `mount.nfs4` it starts) into a network
/// namespace.
pub fn enter_netns(path: &Path) -> Result<(), MountError> {
    let file = File::open(path).map_err(|e| {
        MountError::Invalid(format!(
            "cannot open network namespace {}: {e}",
            path.display()
        ))
    })?;
    setns(file, CloneFlags::CLONE_NEWNET).map_err(|e| {
        MountError::Failed(format!(
            "cannot enter network namespace {}: {e}",
            path.display()
        ))
    })
}
