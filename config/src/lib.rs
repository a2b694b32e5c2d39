//! What every efs-utils program agrees on: the configuration file, the paths the product
//! touches, and the formats written to disk.
//!
//! One crate owns these facts so that `mount.efs`, the tunnel, the watchdog and the status
//! command can never drift apart (the incumbent copied its state-file naming into two
//! programs and shipped a bug when the copies differed). Today it holds the log format;
//! the TOML configuration, the `[paths]` table and the state-file module arrive with the
//! mount helper.

pub mod logging;
