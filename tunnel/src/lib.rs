//! The TLS data path of efs-utils: a local TCP listener whose every connection is
//! forwarded over its own verified TLS connection to an EFS mount target.
//!
//! One tunnel process runs per mount, started by `mount.efs` and restarted by the
//! watchdog; `efs-tunnel` is also usable by hand in the foreground. Where to look:
//! * [`server::run`]: the life of a tunnel, top to bottom;
//! * [`policy`]: the TLS policy (versions, suites, groups, verification), in one place;
//! * [`tls_config`]: the configuration new connections use, rebuilt on SIGHUP, and
//!   [`client_cert`]: the client certificate EFS authorizes the tunnel by;
//! * [`copy`]: how bytes move, and why it is fast;
//! * [`upstream`]: reaching the mount target, and the errors it can give;
//! * [`ktls`]: handing a connection's records to the kernel's TLS after the handshake;
//! * [`partition`]: EFS's partition bind (ONC RPC program 400123) and RPC record framing,
//!   and [`mux`]: one NFS connection spread over several bound connections;
//! * [`control`]: serving the status socket the watchdog and the status command read,
//!   and the stable names of TLS versions and suites;
//! * [`fds`]: the inherited listening socket and readiness pipe;
//! * [`stats`]: the live counters behind the status;
//! * [`memory`]: the heap settings the data path needs to stay cheap;
//! * [`peer`]: who may connect (root's sockets only), [`watch`]: noticing a mount target
//!   that fell silent, [`privilege`]: what the tunnel gives up at start.
//!
//! What other programs must agree on with a tunnel (its command line, the descriptors
//! it inherits, the ready-pipe lines, the stop grace, the control protocol) is the
//! `efs_tunnel_contract` crate, which has neither tokio nor rustls.

pub mod certinfo;
pub mod client_cert;
pub mod control;
pub mod copy;
pub mod fds;
pub mod ktls;
pub mod memory;
pub mod mux;
pub mod partition;
pub mod peer;
pub mod policy;
pub mod privilege;
pub mod repeat_log;
pub mod server;
pub mod shutdown;
pub mod stats;
pub mod tls_config;
pub mod upstream;
pub mod watch;

pub use server::{run, TunnelConfig, TunnelError};
