//! Giving up every privilege once the tunnel is set up.
//!
//! A tunnel runs as root (the mount helper and the watchdog start it), but once its
//! listening socket exists and its log file is open it needs no capability: it accepts on
//! that socket, makes outbound TCP connections, reads its CA file (owned by root, on
//! SIGHUP too) and answers on a control socket in root's state directory. So it drops all
//! capabilities (effective, permitted, inheritable, ambient and the bounding set) and sets
//! `no_new_privs`, so that a compromised tunnel can neither use nor regain them, even
//! through `execve` of a setuid or file-capability binary.
//!
//! It must run before the runtime starts its threads: capabilities belong to each
//! thread, and threads created afterwards inherit the dropped set.
//!
//! Without root there is little to drop, and that is not an error: the bounding set can
//! only be emptied with `CAP_SETPCAP`, and without it `no_new_privs` already makes the
//! bounding set irrelevant (nothing can be gained through `execve`).
//!
//! The raw calls (`prctl` for the bounding and ambient sets, `capset`) are the only
//! `unsafe` here, each in one wrapper; nix has no binding for them, and three system
//! calls did not seem worth a new dependency in the tunnel's supply chain.

use std::fmt;

use log::debug;
use nix::errno::Errno;
use nix::libc;

/// Which step failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrivilegeError {
    BoundingSet(u32, Errno),
    Ambient(Errno),
    Capset(Errno),
    NoNewPrivs(Errno),
}

impl fmt::Display for PrivilegeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PrivilegeError::BoundingSet(cap, e) => {
                write!(f, "cannot drop capability {cap} from the bounding set: {e}")
            }
            PrivilegeError::Ambient(e) => write!(f, "cannot clear the ambient capabilities: {e}"),
            PrivilegeError::Capset(e) => write!(f, "cannot clear the capability sets: {e}"),
            PrivilegeError::NoNewPrivs(e) => write!(f, "cannot set no_new_privs: {e}"),
        }
    }
}

impl std::error::Error for PrivilegeError {}

/// What was done, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    /// The bounding set was emptied (false: the process lacked `CAP_SETPCAP`).
    pub bounding_set_emptied: bool,
}

/// Drops every capability of the calling thread and sets `no_new_privs`. Call it while the
/// process has one thread.
pub fn drop_all() -> Result<Dropped, PrivilegeError> {
    // The bounding set first: emptying it needs CAP_SETPCAP, which the next steps remove.
    let bounding_set_emptied = empty_bounding_set()?;
    match prctl(
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
    ) {
        // EINVAL: a kernel before 4.3, which has no ambient set.
        Ok(_) | Err(Errno::EINVAL) => {}
        Err(e) => return Err(PrivilegeError::Ambient(e)),
    }
    clear_capability_sets().map_err(PrivilegeError::Capset)?;
    nix::sys::prctl::set_no_new_privs().map_err(PrivilegeError::NoNewPrivs)?;
    debug!(
        "dropped all capabilities and set no_new_privs{}",
        if bounding_set_emptied {
            ""
        } else {
            " (bounding set left as it was: no CAP_SETPCAP)"
        }
    );
    Ok(Dropped {
        bounding_set_emptied,
    })
}

/// Drops every capability in the bounding set; false if the process may not
/// (`EPERM`: no `CAP_SETPCAP`).
fn empty_bounding_set() -> Result<bool, PrivilegeError> {
    // Capabilities are numbered from 0; the kernel says EINVAL past its last one.
    for cap in 0..64u32 {
        match prctl(libc::PR_CAPBSET_READ, cap.into()) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(Errno::EINVAL) => break,
            Err(e) => return Err(PrivilegeError::BoundingSet(cap, e)),
        }
        match prctl(libc::PR_CAPBSET_DROP, cap.into()) {
            Ok(_) => {}
            Err(Errno::EPERM) => return Ok(false),
            Err(e) => return Err(PrivilegeError::BoundingSet(cap, e)),
        }
    }
    Ok(true)
}

fn prctl(option: libc::c_int, arg: libc::c_ulong) -> Result<libc::c_int, Errno> {
    // SAFETY: the options used here (PR_CAPBSET_READ, PR_CAPBSET_DROP, PR_CAP_AMBIENT)
    // take integers only and touch no memory of ours; unused arguments are zero, as the
    // kernel requires.
    let r = unsafe {
        libc::prctl(
            option,
            arg,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    Errno::result(r)
}

/// `struct __user_cap_header_struct` and `struct __user_cap_data_struct` (version 3:
/// two data structs for 64 capabilities), from <linux/capability.h>.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Empties the effective, permitted and inheritable sets of the calling thread. Giving
/// capabilities up is always allowed.
fn clear_capability_sets() -> Result<(), Errno> {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: capset reads one header and, for version 3, two data structs, which are
    // live, correctly laid out (repr(C), as in <linux/capability.h>) and outlive the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        )
    };
    Errno::result(r).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A field of /proc/thread-self/status, e.g. `CapEff`.
    fn status_field(name: &str) -> String {
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .unwrap_or_else(|| panic!("no {name} in /proc/thread-self/status"))
            .trim()
            .to_string()
    }

    #[test]
    fn a_thread_that_drops_holds_no_capability_and_a_second_drop_is_no_error() {
        // Capabilities are per thread: a thread of its own leaves the test runner alone.
        std::thread::spawn(|| {
            let before = u64::from_str_radix(&status_field("CapEff"), 16).unwrap();
            let had_setpcap = before & (1 << 8) != 0; // CAP_SETPCAP
            let first = drop_all().unwrap();
            assert_eq!(first.bounding_set_emptied, had_setpcap);
            for set in ["CapEff", "CapPrm", "CapInh", "CapAmb"] {
                assert_eq!(status_field(set), "0000000000000000", "{set}");
            }
            assert_eq!(status_field("NoNewPrivs"), "1");
            if first.bounding_set_emptied {
                assert_eq!(status_field("CapBnd"), "0000000000000000");
            }
            // Nothing left to drop, as for a tunnel started without root.
            let again = drop_all().unwrap();
            assert_eq!(again.bounding_set_emptied, first.bounding_set_emptied);
        })
        .join()
        .unwrap();
    }
}
