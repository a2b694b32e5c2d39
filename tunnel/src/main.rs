//! `efs-tunnel`: one TLS tunnel, in the foreground. `mount.efs` and the watchdog start it
//! with an inherited listening socket; an operator can run it by hand to debug or measure.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use efs_config::logging::{self, LogSpec, RotatingFile};
use efs_tunnel::fds;
use efs_tunnel::policy::{self, HostnameCheck, TlsPolicy, Trust};
use efs_tunnel::upstream::Target;
use efs_tunnel::TunnelConfig;
use rustls::pki_types::ServerName;

#[derive(Parser, Debug)]
#[command(
    name = "efs-tunnel",
    about = "Forward local TCP connections over verified TLS to an EFS mount target",
    version = version_text(),
)]
struct Args {
    /// Address to listen on, e.g. 127.0.0.1:20049.
    #[arg(
        long,
        value_name = "ADDR",
        required_unless_present = "listen_fd",
        conflicts_with = "listen_fd"
    )]
    listen: Option<SocketAddr>,
    /// Serve on an inherited, already listening TCP socket (descriptor number, 3 or above).
    #[arg(long, value_name = "N")]
    listen_fd: Option<i32>,
    /// Mount target to forward to, HOST:PORT (a DNS name or an IP address).
    #[arg(long, value_name = "HOST:PORT")]
    connect: String,
    /// Name the server certificate must match; also sent as SNI.
    #[arg(long, value_name = "NAME")]
    check_host: String,
    /// PEM bundle of trusted CAs (default: the bundled Mozilla roots, which include Amazon's).
    #[arg(long, value_name = "FILE")]
    cafile: Option<PathBuf>,
    /// Restrict TLS to FIPS-approved suites and groups.
    #[arg(long)]
    fips: bool,
    /// Accept a certificate from a trusted CA even if it does not match --check-host.
    /// Only for `stunnel_check_cert_hostname = false`; logged as a warning at every start.
    #[arg(long)]
    insecure_no_hostname_check: bool,
    /// File system id, for log lines and status.
    #[arg(long, value_name = "FS_ID")]
    fs_id: Option<String>,
    /// Unix socket to answer status requests on (created with mode 0600).
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,
    /// Complete one TLS handshake before serving and report `ready port=N` or
    /// `error <reason>` on this inherited descriptor.
    #[arg(long, value_name = "N")]
    ready_fd: Option<i32>,
    /// Start a new session (setsid), detached from the caller's terminal and process
    /// group, so that `mount` and a shell's job control never signal the tunnel.
    #[arg(long)]
    detach: bool,
    /// Log to this file (size-rotated) instead of stderr.
    #[arg(long, value_name = "PATH")]
    log_file: Option<PathBuf>,
    #[arg(long, value_name = "BYTES", default_value_t = 1_048_576)]
    log_max_bytes: u64,
    #[arg(long, value_name = "N", default_value_t = 10)]
    log_file_count: u32,
    /// debug, info, warning or error.
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    log_level: String,
    /// Serve local connections from any user. By default only sockets held by root (the
    /// kernel's NFS client) are served: anyone else could send NFS requests through the
    /// mount's TLS session, with its credentials.
    #[arg(long)]
    allow_any_peer: bool,
    /// Close a connection whose mount target sends nothing for this long while RPC calls
    /// are outstanding, so that the NFS client reconnects through a new one (0: never).
    #[arg(long, value_name = "SECONDS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(0..=86_400))]
    dead_upstream_sec: u64,
}

/// `--version` says which crypto module this build carries and what `--fips` means here.
fn version_text() -> &'static str {
    let text = format!(
        "{} (rustls 0.23, {})\n{}",
        env!("CARGO_PKG_VERSION"),
        policy::crypto_module(),
        policy::fips_description()
    );
    // Built once per process, for clap's lifetime.
    Box::leak(text.into_boxed_str())
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.detach {
        // Fails only for a process group leader, which a freshly spawned child is not.
        let _ = nix::unistd::setsid();
    }
    // Everything the tunnel creates (its control socket, its log) is private to root.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o027));
    let Some(level) = logging::parse_level(&args.log_level) else {
        eprintln!(
            "efs-tunnel: unknown --log-level {:?}; use debug, info, warning or error",
            args.log_level
        );
        return ExitCode::from(2);
    };
    let file = args.log_file.clone().map(|path| RotatingFile {
        path,
        max_bytes: args.log_max_bytes,
        file_count: args.log_file_count,
    });
    let stderr = file.is_none();
    if let Err(e) = logging::init(LogSpec {
        level,
        file,
        stderr,
    }) {
        eprintln!("efs-tunnel: cannot open the log file: {e}");
        return ExitCode::from(1);
    }
    match start(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            log::error!("{message}");
            if !stderr {
                eprintln!("efs-tunnel: {message}");
            }
            ExitCode::from(1)
        }
    }
}

fn start(args: Args) -> Result<(), String> {
    let (host, port) = split_host_port(&args.connect)?;
    let check_host = ServerName::try_from(args.check_host.clone())
        .map_err(|_| format!("--check-host {:?} is not a valid DNS name", args.check_host))?;
    let config = TunnelConfig {
        target: Target {
            host,
            port,
            check_host,
            fs_id: args.fs_id,
        },
        policy: TlsPolicy {
            trust: args
                .cafile
                .map(Trust::CaFile)
                .unwrap_or(Trust::BundledRoots),
            hostname: if args.insecure_no_hostname_check {
                HostnameCheck::DisabledByConfig
            } else {
                HostnameCheck::Required
            },
            fips: args.fips,
        },
        control_socket: args.control,
        ready: args
            .ready_fd
            .map(fds::ReadyPipe::from_fd)
            .transpose()
            .map_err(|e| format!("--ready-fd: {e}"))?,
        allow_any_peer: args.allow_any_peer,
        dead_upstream: (args.dead_upstream_sec > 0)
            .then(|| std::time::Duration::from_secs(args.dead_upstream_sec)),
    };
    let listener = match (args.listen, args.listen_fd) {
        (_, Some(fd)) => fds::listener(fd).map_err(|e| format!("--listen-fd: {e}"))?,
        (Some(addr), None) => {
            TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?
        }
        (None, None) => return Err("give --listen ADDR or --listen-fd N".into()),
    };
    // Nothing from here on needs a privilege; drop them all before the runtime starts
    // threads, which inherit the dropped sets (see `privilege`).
    efs_tunnel::privilege::drop_all().map_err(|e| format!("cannot drop privileges: {e}"))?;
    efs_tunnel::memory::tune_allocator();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("efs-tunnel")
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime
        .block_on(efs_tunnel::run(config, listener))
        .map_err(|e| e.to_string())
}

/// `host:port`, `1.2.3.4:port` or `[v6]:port`.
fn split_host_port(s: &str) -> Result<(String, u16), String> {
    let bad = || format!("--connect {s:?} is not HOST:PORT");
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return Err(bad());
    }
    let port = port.parse::<u16>().map_err(|_| bad())?;
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_forms() {
        assert_eq!(
            split_host_port("fs-1.efs.us-east-1.amazonaws.com:2049")
                .unwrap()
                .1,
            2049
        );
        assert_eq!(split_host_port("[::1]:2049").unwrap().0, "::1");
        assert_eq!(split_host_port("10.0.0.1:2049").unwrap().0, "10.0.0.1");
        assert!(split_host_port("nohost").is_err());
        assert!(split_host_port(":2049").is_err());
        assert!(split_host_port("h:99999").is_err());
    }
}
