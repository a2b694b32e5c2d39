//! `amazon-efs-mount-watchdog`: keeps every TLS mount's tunnel alive, and tears it down
//! after unmount. One daemon per host, run by systemd (`systemd/`), started on demand by
//! `mount.efs`. Tunnels are separate processes: they survive the watchdog's stop and
//! restart, and a new watchdog adopts them.
//!
//! Where to look:
//! * [`daemon`]: the main loop: what it waits on, and what it does for each event;
//! * [`tunnels`]: adopting, restarting and tearing down one tunnel;
//! * [`health`]: the health check thread;
//! * [`takeover`]: taking over amazon-efs-utils' live mounts after an in-place upgrade;
//! * [`renew`]: renewing the client certificates tunnels present (`iam`, `accesspoint`);
//! * the one-watchdog lock: `efs_config::watchdog_lock` (`mount.efs` probes it too);
//! * [`sys`]: pidfd syscalls (the crate's only `unsafe`); [`notify`]: sd_notify.

pub mod daemon;
pub mod health;
pub mod notify;
pub mod renew;
pub mod sys;
pub mod takeover;
pub mod tunnels;
