//! The tunnel's process contract: everything `mount.efs`, the watchdog, `efs-utils
//! status` and `efs-tunnel` itself must agree on to start, watch, ask and stop a tunnel,
//! and nothing of the data path (no tokio, no rustls), so that the watchdog and the
//! status command can depend on it cheaply.
//!
//! * [`command`]: the tunnel's command line, built (by `mount.efs`, recorded in the state
//!   file's `cmd`) and parsed (by `efs-tunnel`) in one place, and read back from a running
//!   tunnel's `/proc/PID/cmdline` (by the watchdog);
//! * [`process`]: [`spawn`] hands a child its listening socket (and a ready pipe),
//!   [`stop`] and [`TERM_GRACE`] end it;
//! * [`ready`]: the ready-pipe lines ([`Readiness`]) and the parent's wait for one;
//! * [`control`]: the control socket's request and answer ([`Status`]) and the blocking
//!   client ([`query_status`]).
//!
//! The state file itself (schema, name, mangling) lives in `efs_config::state`; its
//! `cmd` field is [`TunnelCommand::to_args`].

pub mod command;
pub mod control;
pub mod process;
pub mod ready;

pub use command::{Invocation, Listen, MountTarget, RunningArgs, TunnelCommand, PROCESS_NAME};
pub use control::{
    query_status, ClientCertStatus, ControlError, KernelTlsStatus, LastError, MultiplexStatus,
    Status, TlsSession,
};
pub use process::{spawn, spawn_with_ready_pipe, stop, SpawnError, Stopped, TERM_GRACE};
pub use ready::{NotReady, Readiness, ReadyReader};
