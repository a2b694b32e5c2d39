//! The tunnel's command line, in one place: [`TunnelCommand`] is built by `mount.efs`
//! (and recorded as the state file's `cmd`), started again from that record by the
//! watchdog, and parsed by `efs-tunnel` ([`Invocation::parse`]); [`RunningArgs`] is what
//! the watchdog reads back from a running tunnel's `/proc/PID/cmdline`.
//!
//! Decisions:
//! * The state file records the command line *without* the descriptors a tunnel inherits
//!   (`--listen-fd`, `--ready-fd`): their numbers only mean something in the process
//!   that starts it, so each starter appends its own ([`crate::spawn`]).
//! * Each flag's name is a constant of [`flag`], used by the parser, the builder and the
//!   `/proc` reader alike; `to_args` then `parse` gives back the same command (tested).
//! * The watchdog re-spawns `state.cmd` as recorded, without parsing it: a state file
//!   written by another version may name flags this version does not know, and the
//!   tunnel binary it names is the judge of its own command line. For the same reason
//!   [`RunningArgs`] looks up its two flags leniently instead of parsing the whole line.
//! * What a tunnel's command line takes from the configuration is decided once, in
//!   [`TunnelCommand::for_mount`]: `mount.efs` builds a new mount's tunnel with it and
//!   the watchdog the tunnel that takes over a mount of amazon-efs-utils.
//! * A malformed command line (unknown flag, missing or unparsable value, non-UTF-8
//!   text) is clap's error and exits 2; a value that parses but cannot be used (a
//!   `--connect` that is not HOST:PORT, a descriptor that is not open) exits 1.

use std::ffi::{OsStr, OsString};
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use clap::{CommandFactory, FromArgMatches, Parser};

/// The tunnel's process name (`/proc/PID/comm`), which the watchdog checks before it
/// trusts a recorded pid.
pub const PROCESS_NAME: &str = "efs-tunnel";

/// The tunnel's flags, without their leading `--`.
pub mod flag {
    pub const LISTEN: &str = "listen";
    pub const LISTEN_FD: &str = "listen-fd";
    pub const READY_FD: &str = "ready-fd";
    pub const CONNECT: &str = "connect";
    pub const CHECK_HOST: &str = "check-host";
    pub const CAFILE: &str = "cafile";
    pub const FIPS: &str = "fips";
    pub const INSECURE_NO_HOSTNAME_CHECK: &str = "insecure-no-hostname-check";
    pub const FS_ID: &str = "fs-id";
    pub const CONTROL: &str = "control";
    pub const DETACH: &str = "detach";
    pub const LOG_FILE: &str = "log-file";
    pub const LOG_MAX_BYTES: &str = "log-max-bytes";
    pub const LOG_FILE_COUNT: &str = "log-file-count";
    pub const LOG_LEVEL: &str = "log-level";
    pub const ALLOW_ANY_PEER: &str = "allow-any-peer";
    pub const DEAD_UPSTREAM_SEC: &str = "dead-upstream-sec";
    pub const PROBE_RETRY_SEC: &str = "probe-retry-sec";
    pub const NETNS: &str = "netns";
    pub const CLIENT_CERT: &str = "client-cert";
    pub const CLIENT_KEY: &str = "client-key";
    pub const PARTITION_MULTIPLEXING: &str = "partition-multiplexing";
    pub const KERNEL_TLS: &str = "kernel-tls";

    /// `--NAME`.
    pub fn dashed(name: &str) -> String {
        format!("--{name}")
    }
}

/// A tunnel's command line apart from the descriptors it inherits: the state file's
/// `cmd`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct TunnelCommand {
    /// The `efs-tunnel` binary (argv\[0\]).
    #[arg(skip)]
    pub program: PathBuf,
    /// Mount target to forward to, HOST:PORT (a DNS name or an IP address).
    #[arg(long = flag::CONNECT, value_name = "HOST:PORT")]
    pub connect: String,
    /// Name the server certificate must match; also sent as SNI.
    #[arg(long = flag::CHECK_HOST, value_name = "NAME")]
    pub check_host: String,
    /// PEM bundle of trusted CAs (default: the bundled Mozilla roots, which include Amazon's).
    #[arg(long = flag::CAFILE, value_name = "FILE")]
    pub cafile: Option<PathBuf>,
    /// Restrict TLS to FIPS-approved suites and groups.
    #[arg(long = flag::FIPS)]
    pub fips: bool,
    /// Accept a certificate from a trusted CA even if it does not match --check-host.
    /// Only for `stunnel_check_cert_hostname = false`; logged as a warning at every start.
    #[arg(long = flag::INSECURE_NO_HOSTNAME_CHECK)]
    pub insecure_no_hostname_check: bool,
    /// File system id, for log lines and status.
    #[arg(long = flag::FS_ID, value_name = "FS_ID")]
    pub fs_id: Option<String>,
    /// Unix socket to answer status requests on (created with mode 0600).
    #[arg(long = flag::CONTROL, value_name = "PATH")]
    pub control: Option<PathBuf>,
    /// Start a new session (setsid), detached from the caller's terminal and process
    /// group, so that `mount` and a shell's job control never signal the tunnel.
    #[arg(long = flag::DETACH)]
    pub detach: bool,
    /// Log to this file (size-rotated) instead of stderr.
    #[arg(long = flag::LOG_FILE, value_name = "PATH")]
    pub log_file: Option<PathBuf>,
    /// Rotate the log file when it reaches this size.
    #[arg(long = flag::LOG_MAX_BYTES, value_name = "BYTES", default_value_t = 1_048_576)]
    pub log_max_bytes: u64,
    /// Rotated log files to keep.
    #[arg(long = flag::LOG_FILE_COUNT, value_name = "N", default_value_t = 10)]
    pub log_file_count: u32,
    /// debug, info, warning or error.
    #[arg(long = flag::LOG_LEVEL, value_name = "LEVEL", default_value = "info")]
    pub log_level: String,
    /// Serve local connections from any user. By default only sockets held by root (the
    /// kernel's NFS client) are served: anyone else could send NFS requests through the
    /// mount's TLS session, with its credentials.
    #[arg(long = flag::ALLOW_ANY_PEER)]
    pub allow_any_peer: bool,
    /// Close a connection whose mount target sends nothing for this long while RPC calls
    /// are outstanding, so that the NFS client reconnects through a new one (0: never).
    #[arg(long = flag::DEAD_UPSTREAM_SEC, value_name = "SECONDS", default_value_t = DEFAULT_DEAD_UPSTREAM_SEC,
          value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub dead_upstream_sec: u64,
    /// With `--ready-fd`: keep trying a mount target that cannot be reached (DNS not
    /// resolvable yet, connection refused or timed out) for up to this long, with
    /// backoff, before reporting failure; a refused certificate or protocol fails at
    /// once. 0: one attempt.
    #[arg(long = flag::PROBE_RETRY_SEC, value_name = "SECONDS", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub probe_retry_sec: u64,
    /// Run in this network namespace (a namespace file, e.g. /var/run/netns/NAME): the
    /// one the mount was made in (`-o netns=`), so that a restarted tunnel reaches the
    /// same network. Entered before anything else, by the tunnel itself.
    #[arg(long = flag::NETNS, value_name = "PATH")]
    pub netns: Option<PathBuf>,
    /// Present this PEM certificate to the mount target: the client certificate EFS
    /// authorizes by (`iam`, `accesspoint`). Read again with `--client-key` on SIGHUP, for
    /// new connections; open ones keep theirs.
    #[arg(long = flag::CLIENT_CERT, value_name = "FILE", requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// The private key (PEM, PKCS#8) of `--client-cert`.
    #[arg(long = flag::CLIENT_KEY, value_name = "FILE", requires = "client_cert")]
    pub client_key: Option<PathBuf>,
    /// EFS partition multiplexing: `auto` binds each connection to a server partition
    /// (ONC RPC program 400123) and opens up to the server's count of connections under
    /// load; `off` (also when absent) makes no bind call.
    #[arg(long = flag::PARTITION_MULTIPLEXING,
          value_parser = choice("partition_multiplexing", PartitionMultiplexing::from_word))]
    pub partition_multiplexing: Option<PartitionMultiplexing>,
    /// Kernel TLS: `auto` moves each upstream connection's record layer into the kernel
    /// after the handshake when the kernel has the tls module and does the cipher in
    /// hardware; `on` also with the kernel's software ciphers; `off` (also when absent)
    /// keeps TLS in user space.
    #[arg(long = flag::KERNEL_TLS, value_parser = choice("kernel_tls", KernelTls::from_word))]
    pub kernel_tls: Option<KernelTls>,
}

pub use efs_config::config::{KernelTls, PartitionMultiplexing};

/// The parser of a flag that takes a choice key's words: the words are the key table's
/// (`efs_config::keys`), the value is the config's own type, so a flag and its key have
/// one list of words and one enum between them.
fn choice<T: Clone + Send + Sync + 'static>(
    key: &'static str,
    from_word: fn(&str) -> T,
) -> impl clap::builder::TypedValueParser<Value = T> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(efs_config::keys::choices(key).iter().copied())
        .map(move |word: String| from_word(&word))
}

/// What differs from one mount's tunnel to the next; everything else a tunnel's command
/// line holds follows from the configuration ([`TunnelCommand::for_mount`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountTarget {
    /// HOST:PORT of the mount target.
    pub connect: String,
    /// The name its certificate must match.
    pub check_host: String,
    pub fs_id: String,
    /// The trusted CAs (`-o cafile=`, the region's or the global `stunnel_cafile`).
    pub cafile: Option<PathBuf>,
    /// The tunnel's control socket (`efs_config::state::control_socket_path`).
    pub control: PathBuf,
    /// The network namespace the mount was made in (`-o netns=`).
    pub netns: Option<PathBuf>,
    /// The client certificate and its key, for `iam` and `accesspoint`.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

impl TunnelCommand {
    /// The command line of a mount's tunnel: `target`, and the rest from `cfg`.
    pub fn for_mount(cfg: &efs_config::Config, target: MountTarget) -> TunnelCommand {
        let (client_cert, client_key) = target.client_cert.unzip();
        TunnelCommand {
            program: cfg.paths.tunnel.clone(),
            connect: target.connect,
            check_host: target.check_host,
            fs_id: Some(target.fs_id),
            cafile: target.cafile,
            fips: cfg.mount.fips_mode_enabled,
            insecure_no_hostname_check: !cfg.mount.stunnel_check_cert_hostname,
            control: Some(target.control),
            // Started detached from `mount`'s session and process group.
            detach: true,
            log_file: Some(cfg.paths.log_dir.join("efs-tunnel.log")),
            log_max_bytes: cfg.logging_max_bytes,
            log_file_count: cfg.logging_file_count,
            log_level: cfg.logging_level.to_string().to_lowercase(),
            allow_any_peer: !cfg.mount.tunnel_peer_check_enabled,
            dead_upstream_sec: cfg.mount.tunnel_dead_upstream_timeout_sec,
            // A target not reachable yet (at boot, while routes and security groups
            // settle) is tried for as long as the incumbent's mount.nfs4 retries take.
            probe_retry_sec: probe_retry(&cfg.mount).as_secs(),
            // Recorded so that a tunnel the watchdog restarts runs there too.
            netns: target.netns,
            client_cert,
            client_key,
            // Always written, so that a restarted tunnel keeps the mount's choice.
            partition_multiplexing: Some(cfg.mount.partition_multiplexing),
            kernel_tls: Some(cfg.mount.kernel_tls),
        }
    }
}

/// How long the tunnel keeps trying an unreachable mount target before the mount fails:
/// `retry_nfs_mount_command_timeout_sec` x `retry_nfs_mount_command_count`, the time the
/// incumbent's retries of mount.nfs4 take; nothing with `retry_nfs_mount_command = false`.
fn probe_retry(m: &efs_config::config::MountConfig) -> std::time::Duration {
    if !m.retry_nfs_mount_command {
        return std::time::Duration::ZERO;
    }
    std::time::Duration::from_secs(
        m.retry_nfs_mount_command_timeout_sec
            .saturating_mul(u64::from(m.retry_nfs_mount_command_count))
            .min(3600),
    )
}

/// How long a mount target may stay silent while calls are outstanding, by default.
pub const DEFAULT_DEAD_UPSTREAM_SEC: u64 = 30;

impl TunnelCommand {
    /// The command line, as the state file records it (paths that are not UTF-8 are
    /// recorded lossily: the state file is JSON text).
    pub fn to_args(&self) -> Vec<String> {
        let lossy = |p: &PathBuf| p.to_string_lossy().into_owned();
        let mut args = vec![lossy(&self.program)];
        let mut push = |name: &str, value: Option<String>| {
            args.push(flag::dashed(name));
            args.extend(value);
        };
        if self.detach {
            push(flag::DETACH, None);
        }
        push(flag::CONNECT, Some(self.connect.clone()));
        push(flag::CHECK_HOST, Some(self.check_host.clone()));
        if let Some(fs_id) = &self.fs_id {
            push(flag::FS_ID, Some(fs_id.clone()));
        }
        if let Some(control) = &self.control {
            push(flag::CONTROL, Some(lossy(control)));
        }
        if let Some(log_file) = &self.log_file {
            push(flag::LOG_FILE, Some(lossy(log_file)));
        }
        push(flag::LOG_MAX_BYTES, Some(self.log_max_bytes.to_string()));
        push(flag::LOG_FILE_COUNT, Some(self.log_file_count.to_string()));
        push(flag::LOG_LEVEL, Some(self.log_level.clone()));
        if let Some(ca) = &self.cafile {
            push(flag::CAFILE, Some(lossy(ca)));
        }
        if self.fips {
            push(flag::FIPS, None);
        }
        if self.insecure_no_hostname_check {
            push(flag::INSECURE_NO_HOSTNAME_CHECK, None);
        }
        if self.allow_any_peer {
            push(flag::ALLOW_ANY_PEER, None);
        }
        if let Some(ns) = &self.netns {
            push(flag::NETNS, Some(lossy(ns)));
        }
        if self.probe_retry_sec > 0 {
            push(
                flag::PROBE_RETRY_SEC,
                Some(self.probe_retry_sec.to_string()),
            );
        }
        if self.dead_upstream_sec != DEFAULT_DEAD_UPSTREAM_SEC {
            push(
                flag::DEAD_UPSTREAM_SEC,
                Some(self.dead_upstream_sec.to_string()),
            );
        }
        if let (Some(cert), Some(key)) = (&self.client_cert, &self.client_key) {
            push(flag::CLIENT_CERT, Some(lossy(cert)));
            push(flag::CLIENT_KEY, Some(lossy(key)));
        }
        if let Some(m) = self.partition_multiplexing {
            push(flag::PARTITION_MULTIPLEXING, Some(m.as_str().into()));
        }
        if let Some(k) = self.kernel_tls {
            push(flag::KERNEL_TLS, Some(k.as_str().into()));
        }
        args
    }
}

/// Who a tunnel's TLS connection says it is and whom it trusts: two mounts may share one
/// connection (the kernel's NFS client puts a second mount of a server on the first one's)
/// only if these agree. Everything else of a command line (log settings, the control
/// socket, which mount target address is dialled, the client certificate's file) may
/// differ. The client certificate's identity (access point, IAM source) is the state
/// file's (`ClientCertRecord`), compared next to this by `mount.efs`'s `sharing.rs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsIdentity {
    pub fs_id: Option<String>,
    pub check_host: String,
    pub cafile: Option<PathBuf>,
    pub fips: bool,
    pub insecure_no_hostname_check: bool,
}

impl TlsIdentity {
    /// Each part that differs: (what it is, in config terms; this value; that value).
    pub fn differences(&self, other: &TlsIdentity) -> Vec<(&'static str, String, String)> {
        let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "none".into());
        let path = |v: &Option<PathBuf>| {
            v.as_ref()
                .map_or_else(|| "none".into(), |p| p.display().to_string())
        };
        let yes = |b: bool| if b { "yes" } else { "no" }.to_string();
        let mut d = Vec::new();
        if self.fs_id != other.fs_id {
            d.push(("file system", opt(&self.fs_id), opt(&other.fs_id)));
        }
        if self.check_host != other.check_host {
            d.push((
                "certificate name",
                self.check_host.clone(),
                other.check_host.clone(),
            ));
        }
        if self.cafile != other.cafile {
            d.push((
                "CA file (cafile, stunnel_cafile)",
                path(&self.cafile),
                path(&other.cafile),
            ));
        }
        if self.fips != other.fips {
            d.push((
                "FIPS mode (fips_mode_enabled)",
                yes(self.fips),
                yes(other.fips),
            ));
        }
        if self.insecure_no_hostname_check != other.insecure_no_hostname_check {
            d.push((
                "no hostname check (stunnel_check_cert_hostname = false)",
                yes(self.insecure_no_hostname_check),
                yes(other.insecure_no_hostname_check),
            ));
        }
        d
    }
}

impl TunnelCommand {
    /// Parses a recorded command line (a state file's `cmd`: argv\[0\] first, no
    /// descriptors).
    pub fn from_recorded(cmd: &[String]) -> Result<TunnelCommand, clap::Error> {
        #[derive(Debug, Parser)]
        #[command(name = PROCESS_NAME)]
        struct Recorded {
            #[command(flatten)]
            command: TunnelCommand,
        }
        let parsed = Recorded::try_parse_from(cmd)?;
        Ok(TunnelCommand {
            program: cmd.first().map(PathBuf::from).unwrap_or_default(),
            ..parsed.command
        })
    }

    pub fn tls_identity(&self) -> TlsIdentity {
        TlsIdentity {
            fs_id: self.fs_id.clone(),
            check_host: self.check_host.clone(),
            cafile: self.cafile.clone(),
            fips: self.fips,
            insecure_no_hostname_check: self.insecure_no_hostname_check,
        }
    }
}

/// The arguments a starter appends to a recorded command line for the descriptors the
/// child inherits.
pub fn descriptor_args(listen_fd: RawFd, ready_fd: Option<RawFd>) -> Vec<String> {
    let mut args = vec![flag::dashed(flag::LISTEN_FD), listen_fd.to_string()];
    if let Some(fd) = ready_fd {
        args.extend([flag::dashed(flag::READY_FD), fd.to_string()]);
    }
    args
}

/// Where a tunnel gets its listening socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    /// `--listen ADDR`: bind it (by hand, for debugging and measurements).
    Addr(SocketAddr),
    /// `--listen-fd N`: an inherited, bound and listening socket (`mount.efs`, watchdog).
    Fd(RawFd),
}

/// A whole `efs-tunnel` command line, as the tunnel parses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub command: TunnelCommand,
    pub listen: Listen,
    /// `--ready-fd N`: complete one TLS handshake before serving and report
    /// [`crate::Readiness`] on this inherited descriptor.
    pub ready_fd: Option<RawFd>,
}

#[derive(Debug, Parser)]
#[command(
    name = PROCESS_NAME,
    about = "Forward local TCP connections over verified TLS to an EFS mount target"
)]
struct Cli {
    /// Address to listen on, e.g. 127.0.0.1:20049.
    #[arg(
        long = flag::LISTEN,
        value_name = "ADDR",
        required_unless_present = "listen_fd",
        conflicts_with = "listen_fd"
    )]
    listen: Option<SocketAddr>,
    /// Serve on an inherited, already listening TCP socket (descriptor number, 3 or above).
    #[arg(long = flag::LISTEN_FD, value_name = "N")]
    listen_fd: Option<RawFd>,
    /// Complete one TLS handshake before serving and report `ready port=N` or
    /// `error <reason>` on this inherited descriptor.
    #[arg(long = flag::READY_FD, value_name = "N")]
    ready_fd: Option<RawFd>,
    #[command(flatten)]
    command: TunnelCommand,
}

impl Invocation {
    /// Parses `efs-tunnel`'s argv (argv\[0\] first). `version` is what `--version`
    /// prints. The error is clap's: [`clap::Error::exit`] prints it and exits 2 (0 for
    /// `--help` and `--version`).
    pub fn parse<I, T>(argv: I, version: &'static str) -> Result<Invocation, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString>,
    {
        let argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
        let program = argv.first().map(PathBuf::from).unwrap_or_default();
        let mut cli = Cli::command().version(version);
        let matches = cli.try_get_matches_from_mut(&argv)?;
        let parsed = Cli::from_arg_matches(&matches).map_err(|e| e.format(&mut cli))?;
        let listen = match (parsed.listen, parsed.listen_fd) {
            (Some(addr), None) => Listen::Addr(addr),
            (None, Some(fd)) => Listen::Fd(fd),
            // clap's required_unless_present and conflicts_with rule both out.
            _ => {
                return Err(cli.error(
                    clap::error::ErrorKind::ArgumentConflict,
                    "give exactly one of --listen ADDR and --listen-fd N",
                ))
            }
        };
        Ok(Invocation {
            command: TunnelCommand {
                program,
                ..parsed.command
            },
            listen,
            ready_fd: parsed.ready_fd,
        })
    }
}

/// The first argument of `argv` (after argv\[0\]) that is not UTF-8, lossily, with its
/// position: a one-line answer to clap's `InvalidUtf8` error.
pub fn first_non_utf8(argv: &[OsString]) -> Option<(usize, String)> {
    argv.iter()
        .enumerate()
        .skip(1)
        .find(|(_, a)| a.to_str().is_none())
        .map(|(i, a)| (i, a.to_string_lossy().into_owned()))
}

/// What the watchdog needs to know about a running tunnel, read from its
/// `/proc/PID/cmdline`: which mount it serves (`--control`) and which of its descriptors
/// is the listening socket (`--listen-fd`). Both forms of a flag are understood
/// (`--flag VALUE`, `--flag=VALUE`); nothing else is checked, so a tunnel of another
/// version is still recognised.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunningArgs {
    pub control: Option<PathBuf>,
    pub listen_fd: Option<RawFd>,
}

impl RunningArgs {
    /// From the NUL-separated bytes of `/proc/PID/cmdline`.
    pub fn from_cmdline(cmdline: &[u8]) -> RunningArgs {
        let args: Vec<&OsStr> = cmdline
            .split(|b| *b == 0)
            .skip(1)
            .map(OsStr::from_bytes)
            .collect();
        RunningArgs {
            control: value_of(&args, flag::CONTROL).map(PathBuf::from),
            listen_fd: value_of(&args, flag::LISTEN_FD)
                .and_then(|v| v.to_str())
                .and_then(|v| v.parse().ok()),
        }
    }
}

fn value_of<'a>(args: &[&'a OsStr], name: &str) -> Option<&'a OsStr> {
    let dashed = flag::dashed(name);
    let with_eq = format!("{dashed}=");
    args.iter().enumerate().find_map(|(i, a)| {
        let bytes = a.as_bytes();
        if bytes == dashed.as_bytes() {
            args.get(i + 1).copied()
        } else {
            bytes
                .strip_prefix(with_eq.as_bytes())
                .map(OsStr::from_bytes)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStringExt;

    #[test]
    fn a_recorded_command_line_parses_back_and_names_its_tls_identity() {
        let c = full();
        let back = TunnelCommand::from_recorded(&c.to_args()).unwrap();
        assert_eq!(back, c);
        let mut other = c.clone();
        other.connect = "10.0.0.6:2049".into();
        other.control = Some("/var/run/efs/tunnel-20002.sock".into());
        other.log_level = "info".into();
        assert!(c
            .tls_identity()
            .differences(&other.tls_identity())
            .is_empty());
        other.cafile = None;
        other.fips = !c.fips;
        let d = c.tls_identity().differences(&other.tls_identity());
        assert_eq!(d.len(), 2, "{d:?}");
        assert_eq!(
            d[0],
            (
                "CA file (cafile, stunnel_cafile)",
                "/etc/ca.pem".to_string(),
                "none".to_string()
            )
        );
        assert!(TunnelCommand::from_recorded(&["efs-tunnel".into(), "--bogus".into()]).is_err());
    }

    fn full() -> TunnelCommand {
        TunnelCommand {
            program: "/usr/bin/efs-tunnel".into(),
            connect: "10.0.0.5:2049".into(),
            check_host: "fs-12345678.efs.us-east-1.amazonaws.com".into(),
            cafile: Some("/etc/ca.pem".into()),
            fips: true,
            insecure_no_hostname_check: true,
            fs_id: Some("fs-12345678".into()),
            control: Some("/var/run/efs/tunnel-20049.sock".into()),
            detach: true,
            log_file: Some("/var/log/amazon/efs/efs-tunnel.log".into()),
            log_max_bytes: 4096,
            log_file_count: 3,
            log_level: "debug".into(),
            allow_any_peer: true,
            dead_upstream_sec: 12,
            probe_retry_sec: 0,
            netns: None,
            client_cert: Some("/var/run/efs/fs-12345678.mnt.efs.20049+/certificate.pem".into()),
            client_key: Some("/etc/amazon/efs/privateKey.pem".into()),
            partition_multiplexing: None,
            kernel_tls: None,
        }
    }

    fn with_fds(cmd: &TunnelCommand, listen: RawFd, ready: Option<RawFd>) -> Vec<String> {
        let mut argv = cmd.to_args();
        argv.extend(descriptor_args(listen, ready));
        argv
    }

    #[test]
    fn what_is_built_parses_back_to_the_same_command() {
        let cmd = full();
        let parsed = Invocation::parse(with_fds(&cmd, 7, Some(8)), "test").unwrap();
        assert_eq!(parsed.command, cmd);
        assert_eq!(parsed.listen, Listen::Fd(7));
        assert_eq!(parsed.ready_fd, Some(8));

        let minimal = TunnelCommand {
            cafile: None,
            fips: false,
            insecure_no_hostname_check: false,
            fs_id: None,
            control: None,
            detach: false,
            log_file: None,
            ..full()
        };
        let parsed = Invocation::parse(with_fds(&minimal, 3, None), "test").unwrap();
        assert_eq!(parsed.command, minimal);
        assert_eq!(parsed.ready_fd, None);
    }

    #[test]
    fn the_recorded_form_is_the_one_state_files_have_always_had() {
        let args = full().to_args();
        assert_eq!(
            args[..8],
            [
                "/usr/bin/efs-tunnel",
                "--detach",
                "--connect",
                "10.0.0.5:2049",
                "--check-host",
                "fs-12345678.efs.us-east-1.amazonaws.com",
                "--fs-id",
                "fs-12345678"
            ]
        );
        assert!(!args.iter().any(|a| a == "--listen-fd" || a == "--ready-fd"));
        let (args, client) = args.split_at(args.len() - 4);
        assert_eq!(
            client,
            [
                "--client-cert",
                "/var/run/efs/fs-12345678.mnt.efs.20049+/certificate.pem",
                "--client-key",
                "/etc/amazon/efs/privateKey.pem"
            ]
        );
        assert_eq!(
            args[args.len() - 7..],
            [
                "--cafile",
                "/etc/ca.pem",
                "--fips",
                "--insecure-no-hostname-check",
                "--allow-any-peer",
                "--dead-upstream-sec",
                "12"
            ]
        );
        // Defaults of the hardening flags are not written: older tunnels do not know them.
        let plain = TunnelCommand {
            allow_any_peer: false,
            dead_upstream_sec: DEFAULT_DEAD_UPSTREAM_SEC,
            client_cert: None,
            client_key: None,
            ..full()
        };
        assert!(plain
            .to_args()
            .ends_with(&["--insecure-no-hostname-check".to_string()]));
    }

    /// A mount target with no CA file, namespace or client certificate.
    fn plain_target() -> MountTarget {
        MountTarget {
            connect: "10.0.0.5:2049".into(),
            check_host: "fs-12345678.efs.us-east-1.amazonaws.com".into(),
            fs_id: "fs-12345678".into(),
            cafile: None,
            control: "/var/run/efs/tunnel.sock".into(),
            netns: None,
            client_cert: None,
        }
    }

    /// The value after `flag` on a command line.
    fn value_after(args: &[String], flag: &str) -> Option<String> {
        let at = args.iter().position(|a| a == flag)?;
        args.get(at + 1).cloned()
    }

    #[test]
    fn for_mount_puts_partition_multiplexing_on_the_command_line() {
        let target = plain_target();
        let value_after = |args: &[String]| value_after(args, "--partition-multiplexing");
        let mut cfg = efs_config::Config::default();
        let auto = TunnelCommand::for_mount(&cfg, target.clone());
        assert_eq!(
            auto.partition_multiplexing,
            Some(PartitionMultiplexing::Auto)
        );
        assert_eq!(value_after(&auto.to_args()).as_deref(), Some("auto"));
        cfg.mount.partition_multiplexing = PartitionMultiplexing::Off;
        let off = TunnelCommand::for_mount(&cfg, target);
        let args = off.to_args();
        assert_eq!(value_after(&args).as_deref(), Some("off"));
        // What the tunnel parses back, descriptors appended as a starter does.
        let parsed = Invocation::parse(with_fds(&off, 3, None), "test").unwrap();
        assert_eq!(
            parsed.command.partition_multiplexing,
            Some(PartitionMultiplexing::Off)
        );
        assert_eq!(TunnelCommand::from_recorded(&args).unwrap(), off);
        // Absent (an older state file's command line): the tunnel makes no bind call.
        assert!(!full().to_args().iter().any(|a| a.contains("partition")));
        let bad = [&args[..], &["--partition-multiplexing".into(), "on".into()]].concat();
        assert!(TunnelCommand::from_recorded(&bad).is_err());
    }

    #[test]
    fn for_mount_puts_kernel_tls_on_the_command_line() {
        let target = plain_target();
        let value_after = |args: &[String]| value_after(args, "--kernel-tls");
        let mut cfg = efs_config::Config::default();
        let default = TunnelCommand::for_mount(&cfg, target.clone());
        assert_eq!(default.kernel_tls, Some(KernelTls::Auto));
        assert_eq!(value_after(&default.to_args()).as_deref(), Some("auto"));
        cfg.mount.kernel_tls = KernelTls::Off;
        let off = TunnelCommand::for_mount(&cfg, target.clone());
        let args = off.to_args();
        assert_eq!(value_after(&args).as_deref(), Some("off"));
        let parsed = Invocation::parse(with_fds(&off, 3, None), "test").unwrap();
        assert_eq!(parsed.command.kernel_tls, Some(KernelTls::Off));
        assert_eq!(TunnelCommand::from_recorded(&args).unwrap(), off);
        // Absent (an older state file's command line): TLS stays in user space.
        assert!(!full().to_args().iter().any(|a| a.contains("kernel-tls")));
        cfg.mount.kernel_tls = KernelTls::On;
        let on = TunnelCommand::for_mount(&cfg, target.clone());
        assert_eq!(value_after(&on.to_args()).as_deref(), Some("on"));
        let bad = [&args[..], &["--kernel-tls".into(), "yes".into()]].concat();
        assert!(TunnelCommand::from_recorded(&bad).is_err());
    }

    #[test]
    fn a_choice_flag_takes_every_word_of_its_key_and_no_other() {
        for (key, flag) in [
            ("kernel_tls", "--kernel-tls"),
            ("partition_multiplexing", "--partition-multiplexing"),
        ] {
            let words = efs_config::keys::choices(key);
            assert!(words.len() >= 2, "{key} is not a choice key");
            let args = full().to_args();
            for word in words.iter().chain(&["yes", "Auto", ""]) {
                let line = [&args[..], &[flag.into(), word.to_string()]].concat();
                let parsed = TunnelCommand::from_recorded(&line);
                let taken = match &parsed {
                    Ok(c) if key == "kernel_tls" => c.kernel_tls.map(|k| k.as_str()),
                    Ok(c) => c.partition_multiplexing.map(|m| m.as_str()),
                    Err(_) => None,
                };
                if words.contains(word) {
                    assert_eq!(taken, Some(*word), "{flag} {word}");
                } else {
                    assert!(parsed.is_err(), "{flag} {word:?} was taken");
                }
            }
        }
    }

    #[test]
    fn listen_by_address_and_defaults() {
        let parsed = Invocation::parse(
            [
                "efs-tunnel",
                "--listen",
                "127.0.0.1:0",
                "--connect",
                "h:2049",
                "--check-host",
                "h",
            ],
            "test",
        )
        .unwrap();
        assert_eq!(parsed.listen, Listen::Addr("127.0.0.1:0".parse().unwrap()));
        assert_eq!(parsed.command.log_max_bytes, 1_048_576);
        assert_eq!(parsed.command.log_file_count, 10);
        assert_eq!(parsed.command.log_level, "info");
    }

    #[test]
    fn malformed_command_lines_are_errors_not_panics() {
        let base = ["efs-tunnel", "--connect", "h:2049", "--check-host", "h"];
        let parse = |extra: &[&str]| Invocation::parse([&base[..], extra].concat(), "test");
        assert!(parse(&[]).is_err(), "no listener");
        assert!(parse(&["--listen", "127.0.0.1:0", "--listen-fd", "3"]).is_err());
        assert!(parse(&["--listen-fd", "x"]).is_err());
        assert!(parse(&["--listen-fd", "3", "--bogus"]).is_err());
        let err = parse(&["--listen-fd", "3", "--ready-fd"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);

        let mut argv: Vec<OsString> = base.iter().map(OsString::from).collect();
        argv.extend(["--listen-fd".into(), "3".into(), "--fs-id".into()]);
        argv.push(OsString::from_vec(b"fs-\xff".to_vec()));
        let err = Invocation::parse(argv.clone(), "test").unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::InvalidUtf8);
        assert_eq!(first_non_utf8(&argv), Some((8, "fs-\u{fffd}".into())));
        assert_eq!(first_non_utf8(&argv[..8]), None);
    }

    #[test]
    fn a_running_tunnel_s_control_socket_and_listener_are_read_from_its_cmdline() {
        let cmdline = with_fds(&full(), 5, None).join("\0") + "\0";
        let running = RunningArgs::from_cmdline(cmdline.as_bytes());
        assert_eq!(running.control, full().control);
        assert_eq!(running.listen_fd, Some(5));

        let eq_form = b"efs-tunnel\0--control=/run/x.sock\0--listen-fd=9\0";
        let running = RunningArgs::from_cmdline(eq_form);
        assert_eq!(running.control, Some(PathBuf::from("/run/x.sock")));
        assert_eq!(running.listen_fd, Some(9));

        assert_eq!(RunningArgs::from_cmdline(b""), RunningArgs::default());
        let odd = b"efs-tunnel\0--listen-fd\0--control\0\xff\xfe\0--listen-fd";
        let running = RunningArgs::from_cmdline(odd);
        assert_eq!(running.listen_fd, None, "the value is not a number");
        assert!(
            running.control.is_some(),
            "a non-UTF-8 path is still a path"
        );
    }
}
