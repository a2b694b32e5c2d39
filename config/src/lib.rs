//! What every efs-utils program agrees on: the configuration file, the paths the product
//! touches, and the formats written to disk.
//!
//! One crate owns these facts so that `mount.efs`, the tunnel, the watchdog and the status
//! command can never drift apart (the incumbent copied its state-file naming into two
//! programs and shipped a bug when the copies differed):
//! * [`config`]: the configuration (efs-utils.toml over efs-utils.conf) and `[paths]`;
//! * [`keys`]: the one table of configuration keys everything else derives from;
//! * [`state`]: state file names, mountpoint mangling, the JSON schema, atomic writes;
//! * [`import`]: amazon-efs-utils' INI configuration converted to ours;
//! * [`incumbent`]: amazon-efs-utils' state files and tunnel configs, read so that an
//!   in-place upgrade takes its mounts over;
//! * [`mounts`]: the mount table, and which tunnel ports it references;
//! * [`logging`]: the log line format and size-rotated log files;
//! * [`renewal`]: the job the watchdog gives `efs-renew-cert` and the answer it reads
//!   back, and where a client certificate may be written;
//! * [`watchdog_lock`]: the one-watchdog lock on the state directory, taken by the
//!   watchdog and probed by `mount.efs`.

pub mod config;
pub mod import;
pub mod incumbent;
pub mod keys;
pub mod logging;
pub mod mounts;
pub mod renewal;
pub mod state;
pub mod watchdog_lock;

pub use config::{Config, ConfigError, Origin, Setting, Warning};
