//! `efs-tunnel`: one TLS tunnel, in the foreground. `mount.efs` and the watchdog start it
//! with an inherited listening socket; an operator can run it by hand to debug or measure.

use std::ffi::OsString;
use std::net::TcpListener;
use std::process::ExitCode;

use efs_config::logging::{self, LogSpec, RotatingFile};
use efs_tunnel::client_cert::ClientCertFiles;
use efs_tunnel::fds;
use efs_tunnel::policy::{self, HostnameCheck, TlsPolicy, Trust};
use efs_tunnel::upstream::Target;
use efs_tunnel::TunnelConfig;
use efs_tunnel_contract::command::{first_non_utf8, KernelTls, PartitionMultiplexing};
use efs_tunnel_contract::{Invocation, Listen};
use rustls::pki_types::ServerName;

/// Exit code for a command line that does not parse (clap's own code for usage errors).
const EXIT_USAGE: u8 = 2;

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

/// The command line, which is `efs_tunnel_contract::command`'s to define. Non-UTF-8
/// text where a flag needs text gets one line naming the argument (not clap's usage
/// block); other usage errors are clap's; both exit 2.
fn parse_args() -> Result<Invocation, ExitCode> {
    let argv: Vec<OsString> = std::env::args_os().collect();
    Invocation::parse(argv.clone(), version_text()).map_err(|e| {
        match (e.kind(), first_non_utf8(&argv)) {
            (clap::error::ErrorKind::InvalidUtf8, Some((i, lossy))) => {
                eprintln!("efs-tunnel: argument {i} is not valid UTF-8: {lossy:?}");
                ExitCode::from(EXIT_USAGE)
            }
            _ => {
                // Prints the error (or --help, --version) where clap puts it.
                let _ = e.print();
                ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(EXIT_USAGE))
            }
        }
    })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(code) => return code,
    };
    if args.command.detach {
        // Fails only for a process group leader, which a freshly spawned child is not.
        let _ = nix::unistd::setsid();
    }
    // Everything the tunnel creates (its control socket, its log) is private to root.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o027));
    let cmd = &args.command;
    let Some(level) = logging::parse_level(&cmd.log_level) else {
        eprintln!(
            "efs-tunnel: unknown --log-level {:?}; use debug, info, warning or error",
            cmd.log_level
        );
        return ExitCode::from(EXIT_USAGE);
    };
    let file = cmd.log_file.clone().map(|path| RotatingFile {
        path,
        max_bytes: cmd.log_max_bytes,
        file_count: cmd.log_file_count,
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

/// The command line becomes the server's configuration here, at the boundary: the
/// server keeps its own types.
fn start(args: Invocation) -> Result<(), String> {
    let cmd = args.command;
    let (host, port) = split_host_port(&cmd.connect)?;
    let check_host = ServerName::try_from(cmd.check_host.clone())
        .map_err(|_| format!("--check-host {:?} is not a valid DNS name", cmd.check_host))?;
    let client_cert = match (cmd.client_cert, cmd.client_key) {
        (Some(cert), Some(key)) => Some(ClientCertFiles { cert, key }),
        (None, None) => None,
        // clap requires each with the other; said again here for any other caller.
        _ => return Err("--client-cert and --client-key go together".into()),
    };
    let kernel_tls = match cmd.kernel_tls {
        // FIPS: the validated module does all the crypto.
        Some(KernelTls::Auto) if !cmd.fips => efs_tunnel::ktls::Mode::Auto,
        Some(KernelTls::On) if !cmd.fips => efs_tunnel::ktls::Mode::On,
        // Absent: a command line of a version before kernel TLS.
        _ => efs_tunnel::ktls::Mode::Off,
    };
    let config = TunnelConfig {
        target: Target {
            host,
            port,
            check_host,
            fs_id: cmd.fs_id,
        },
        policy: TlsPolicy {
            trust: cmd.cafile.map(Trust::CaFile).unwrap_or(Trust::BundledRoots),
            hostname: if cmd.insecure_no_hostname_check {
                HostnameCheck::DisabledByConfig
            } else {
                HostnameCheck::Required
            },
            fips: cmd.fips,
            kernel_tls: kernel_tls != efs_tunnel::ktls::Mode::Off,
        },
        client_cert,
        control_socket: cmd.control,
        ready: args
            .ready_fd
            .map(fds::ReadyPipe::from_fd)
            .transpose()
            .map_err(|e| format!("--ready-fd: {e}"))?,
        allow_any_peer: cmd.allow_any_peer,
        dead_upstream: (cmd.dead_upstream_sec > 0)
            .then(|| std::time::Duration::from_secs(cmd.dead_upstream_sec)),
        probe_retry: std::time::Duration::from_secs(cmd.probe_retry_sec),
        multiplexing: match cmd.partition_multiplexing {
            Some(PartitionMultiplexing::Auto) => efs_tunnel::mux::Mode::Auto,
            // Absent: a command line of a version before multiplexing, which made no
            // bind call.
            Some(PartitionMultiplexing::Off) | None => efs_tunnel::mux::Mode::Off,
        },
        // Reads /proc/crypto (for `auto`) once, here.
        kernel_tls: efs_tunnel::ktls::KtlsState::new(kernel_tls),
    };
    // Before any socket is made or thread started: namespaces are per thread, and the
    // runtime's threads inherit this one's.
    if let Some(ns) = &cmd.netns {
        let file = std::fs::File::open(ns)
            .map_err(|e| format!("--netns: cannot open {}: {e}", ns.display()))?;
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("--netns: cannot enter {}: {e}", ns.display()))?;
    }
    let listener = match args.listen {
        Listen::Fd(fd) => fds::listener(fd).map_err(|e| format!("--listen-fd: {e}"))?,
        Listen::Addr(addr) => {
            TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?
        }
    };
    efs_tunnel::ktls::load_module(&config.kernel_tls);
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
