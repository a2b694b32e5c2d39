//! `mount.efs`: the helper util-linux runs for `mount -t efs`, a drop-in for
//! amazon-efs-utils' Python helper.
//!
//! [`run`] is a whole mount, top to bottom. Where to look:
//! * [`args`]: the command line util-linux passes;
//! * [`options`]: every `-o` option, its validation and error text, and the options
//!   `mount.nfs4` gets;
//! * [`target`]: file system id, region, DNS name and certificate name;
//! * [`fallback`]: the mount target's IP address when the DNS name does not resolve;
//! * [`client_cert`]: the client certificate of an `iam` or `accesspoint` mount (host
//!   key, AWS credentials, signing, where it is written);
//! * [`launch`]: choosing the port and starting the tunnel;
//! * [`nfs`]: running `mount.nfs4`, with retries;
//! * [`sharing`]: which tunnel the kernel really gave the mount (it may share another's);
//! * [`watchdog`]: starting the watchdog;
//! * [`already`]: a mount that is already there (`mount -a` run twice) is left alone.
//!
//! Exit codes follow mount(8): 1 for usage and invalid options, `mount.nfs4`'s own code
//! when it fails, 32 for any other failure. A failure after the tunnel started stops the
//! tunnel and removes its state and client certificate: a failed mount leaves nothing
//! behind. AWS credentials are found before anything of the mount exists, so a mount
//! that cannot have them fails with nothing to undo.

pub mod already;
pub mod args;
pub mod client_cert;
pub mod fallback;
pub mod imds;
pub mod launch;
pub mod namespace;
pub mod nfs;
pub mod options;
pub mod readahead;
pub mod sharing;
pub mod target;
pub mod watchdog;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use efs_config::state::{self, MountState};
use efs_config::{logging, Config};
use log::{info, warn};

use crate::args::Invocation;
use crate::launch::RunningTunnel;
use efs_tunnel_contract::{MountTarget, TunnelCommand};

/// Why a mount did not happen; [`MountError::exit_code`] follows mount(8).
#[derive(Debug)]
pub enum MountError {
    /// Bad command line, invalid option or configuration: exit 1.
    Invalid(String),
    /// Anything else that stopped the mount: exit 32.
    Failed(String),
    /// `mount.nfs4` failed: its code and what it printed.
    Nfs { code: i32, stderr: String },
}

impl MountError {
    pub fn exit_code(&self) -> u8 {
        match self {
            MountError::Invalid(_) => 1,
            MountError::Failed(_) => 32,
            MountError::Nfs { code, .. } => {
                u8::try_from(*code).ok().filter(|c| *c != 0).unwrap_or(32)
            }
        }
    }
}

impl fmt::Display for MountError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MountError::Invalid(m) | MountError::Failed(m) => f.write_str(m),
            MountError::Nfs { code, stderr } => {
                let text = stderr.trim();
                if text.is_empty() {
                    write!(f, "mount.nfs4 failed with exit code {code}")
                } else {
                    f.write_str(text)
                }
            }
        }
    }
}

impl std::error::Error for MountError {}

impl From<options::OptionError> for MountError {
    fn from(e: options::OptionError) -> Self {
        MountError::Invalid(e.0)
    }
}

/// Mounts what `inv` describes.
pub fn run(inv: &Invocation) -> Result<(), MountError> {
    let cfg = Config::load().map_err(|e| MountError::Invalid(e.to_string()))?;
    if logging::init(cfg.log_spec("mount.log", false)).is_err() {
        eprintln!(
            "mount.efs: cannot write {}; continuing without a log",
            cfg.paths.log_dir.join("mount.log").display()
        );
    }
    for w in &cfg.warnings {
        warn!("{w}");
        eprintln!("mount.efs: {w}");
    }
    info!(
        "version={} spec={} mountpoint={} options={}",
        env!("CARGO_PKG_VERSION"),
        inv.spec,
        inv.mountpoint,
        inv.options
    );

    let opts = options::validate(&inv.options)?;
    if opts.stunnel {
        eprintln!(
            "mount.efs: the \"stunnel\" option is ignored: this efs-utils has its own TLS tunnel"
        );
    }
    if opts.tls && cfg.mount.stunnel_check_cert_validity && !inv.options.has("noocsp") {
        return Err(MountError::Invalid(
            "OCSP (stunnel_check_cert_validity = true) is not supported yet; set it to false in the config or mount with -o noocsp"
                .into(),
        ));
    }
    let device = target::parse_device(&inv.spec).map_err(MountError::Invalid)?;
    // `mount -a` run twice: a mountpoint our tunnel already serves for this file system
    // and path is left alone, before any lookup (region, DNS name, the EFS API).
    if opts.tls {
        if let Some(st) = already::mounted(&cfg, &inv.mountpoint, &device.fs_id, &device.path) {
            let msg = already::message(&inv.mountpoint);
            info!(
                "{msg} ({} through the tunnel on port {})",
                st.fs_id, st.port
            );
            println!("{msg}");
            return Ok(());
        }
    }
    let az = opts.az.clone().or(device.az.clone());
    let needs_region = ["{region}", "{dns_name_suffix}"]
        .iter()
        .any(|f| cfg.mount.dns_name_format.contains(f));
    // With iam the SigV4 signature is scoped to the region; crossaccount names the
    // region in its DNS name whatever the format says.
    let region = if needs_region || (opts.tls && opts.iam) || opts.crossaccount {
        target::resolve_region(opts.region.as_deref(), &device, &cfg)
            .map_err(MountError::Invalid)?
    } else {
        opts.region.clone().unwrap_or_default()
    };
    let dns_name = if opts.crossaccount {
        // The incumbent's: the mount target in this client's AZ, by its AZ ID (AZ names
        // are per account), whatever dns_name_format says.
        let az_id = imds::az_id(
            &cfg.mount.instance_metadata_url,
            !cfg.mount.disable_fetch_ec2_metadata_token,
        )
        .map_err(|why| {
            log::warn!("instance metadata: {why}");
            MountError::Invalid(
                "Cannot retrieve AZ-ID from metadata service. This is required for the crossaccount mount option.".into(),
            )
        })?;
        target::cross_account_dns_name(&cfg, &device.fs_id, &region, &az_id)
    } else {
        target::dns_name(&cfg, &device.fs_id, &region, az.as_deref())
            .map_err(MountError::Invalid)?
    };
    // Where to connect: mounttargetip, else the mount target's address from the EFS API
    // when the name does not resolve, else the name itself.
    let mount_target_ip = match &opts.mounttargetip {
        Some(ip) => Some(ip.clone()),
        None => fallback::mount_target_ip(&cfg, &opts, &device, &region, &dns_name, az.as_deref())?,
    };
    // -N is a mount namespace (util-linux), netns= a network namespace (the incumbent's).
    let mount_ns = inv
        .namespace
        .as_deref()
        .map(|ns| namespace::MountNamespace::open(Path::new(ns)))
        .transpose()?;
    let mount = Mount {
        cfg: &cfg,
        inv,
        fs_id: &device.fs_id,
        path: &device.path,
        dns_name: &dns_name,
        mount_target_ip: mount_target_ip.as_deref(),
        region: &region,
        opts: &opts,
        mount_ns: mount_ns.as_ref(),
    };
    // In this network namespace, before netns= is entered: the CA file, and the AWS
    // credentials, found where the region was and where the watchdog renews them.
    let tls = if opts.tls {
        Some(mount.tls_prepare()?)
    } else {
        None
    };
    if let Some(ns) = opts.netns.as_deref() {
        namespace::enter_netns(Path::new(ns))?;
    }
    match tls {
        Some(t) => mount.tls(t),
        None => mount.plain(),
    }
}

/// What a TLS mount settles before it starts anything.
struct TlsPrepared {
    cafile: Option<PathBuf>,
    client_cert: Option<client_cert::Prepared>,
}

/// Everything one mount needs, resolved.
struct Mount<'a> {
    cfg: &'a Config,
    inv: &'a Invocation,
    fs_id: &'a str,
    path: &'a str,
    dns_name: &'a str,
    /// The address to connect to instead of the name (`mounttargetip`, or the fallback's).
    mount_target_ip: Option<&'a str>,
    region: &'a str,
    opts: &'a options::EfsOptions,
    /// `-N`: where the mount itself happens.
    mount_ns: Option<&'a namespace::MountNamespace>,
}

impl Mount<'_> {
    /// Runs `f` in the mount namespace `-N` named, if any: the `mount.nfs4` call and what
    /// looks at or undoes the new mount.
    fn in_mount_ns<T>(&self, f: impl FnOnce() -> T) -> Result<T, MountError> {
        let _entered = self.mount_ns.map(|ns| ns.enter()).transpose()?;
        Ok(f())
    }

    /// Takes the new mount back (the guard then removes its tunnel and state).
    fn undo_mount(&self) {
        let _ = self.in_mount_ns(|| unmount(&self.inv.mountpoint));
    }

    /// Straight to the mount target: no tunnel, no state, no watchdog.
    fn plain(&self) -> Result<(), MountError> {
        let host = match self.mount_target_ip {
            Some(ip) if ip.contains(':') => format!("[{ip}]"),
            Some(ip) => ip.to_string(),
            None => self.dns_name.to_string(),
        };
        let source = format!("{host}:{}", self.path);
        let nfs_opts = options::nfs_options(&self.inv.options, None);
        self.in_mount_ns(|| self.mount_nfs(&source, &nfs_opts))??;
        if !self.inv.fake {
            self.in_mount_ns(|| self.mounted(&nfs_opts))?;
        }
        Ok(())
    }

    /// After a successful mount: say so, and tune read-ahead (`optimize_readahead`: since
    /// Linux 5.4 NFS read-ahead is 128 KiB, far too little for EFS).
    fn mounted(&self, nfs_opts: &str) {
        info!(
            "Successfully mounted {} at {}",
            self.dns_name, self.inv.mountpoint
        );
        if self.cfg.mount.optimize_readahead {
            readahead::tune(
                &self.cfg.paths.sysfs_bdi,
                Path::new(&self.inv.mountpoint),
                nfs_opts,
            );
        }
    }

    /// Before a TLS mount starts anything: the CA file and, with `iam` or `accesspoint`,
    /// the client certificate. Credentials and certificate come before anything of the mount
    /// exists: a mount that cannot have them leaves nothing to undo.
    fn tls_prepare(&self) -> Result<TlsPrepared, MountError> {
        let cfg = self.cfg;
        let cafile = self
            .opts
            .cafile
            .as_deref()
            .map(PathBuf::from)
            .or_else(|| cfg.cafile(self.region).map(Path::to_path_buf));
        if let Some(ca) = &cafile {
            if !ca.is_file() {
                return Err(MountError::Invalid(format!(
                    "Failed to find certificate authority file for verification: {} does not exist; fix the cafile option or stunnel_cafile in the config",
                    ca.display()
                )));
            }
        }
        let client_cert = client_cert::prepare(cfg, self.opts, self.fs_id, self.region)?;
        Ok(TlsPrepared {
            cafile,
            client_cert,
        })
    }

    /// Through a tunnel on 127.0.0.1.
    fn tls(&self, prepared: TlsPrepared) -> Result<(), MountError> {
        let cfg = self.cfg;
        let paths = &cfg.paths;
        let TlsPrepared {
            cafile,
            client_cert: prepared,
        } = prepared;
        state::ensure_state_dir(&paths.state_dir, cfg.state_file_dir_mode).map_err(|e| {
            MountError::Failed(format!("cannot create {}: {e}", paths.state_dir.display()))
        })?;

        let listener = launch::bind_port(
            cfg.mount.port_range.clone(),
            self.opts.tlsport,
            &paths.state_dir,
        )
        .map_err(|e| MountError::Failed(e.to_string()))?;
        let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
        info!("binding {port}");
        let connect_host = self.mount_target_ip.unwrap_or(self.dns_name);
        let connect = if connect_host.contains(':') {
            format!("[{connect_host}]:2049")
        } else {
            format!("{connect_host}:2049")
        };
        let control = state::control_socket_path(&paths.state_dir, port);
        let name = state::state_file_name(self.fs_id, Path::new(&self.inv.mountpoint), port);
        let mut guard = Undo {
            tunnel: None,
            state_file: None,
            client_cert: None,
        };
        let client_cert = match &prepared {
            Some(p) => {
                let path = state::client_cert_path(&paths.state_dir, &name);
                client_cert::write(&path, &p.pem).map_err(|e| {
                    MountError::Failed(format!(
                        "cannot write the client certificate {}: {e}",
                        path.display()
                    ))
                })?;
                guard.client_cert = Some(path.clone());
                Some(p.record(&path, &paths.private_key, self.region))
            }
            None => None,
        };
        let spec = TunnelCommand::for_mount(
            cfg,
            MountTarget {
                connect,
                check_host: target::check_host(self.dns_name, self.fs_id),
                fs_id: self.fs_id.to_string(),
                cafile,
                control: control.clone(),
                // Already there (the helper entered it).
                netns: self.opts.netns.as_ref().map(PathBuf::from),
                client_cert: client_cert
                    .as_ref()
                    .map(|c| (c.certificate.clone(), c.private_key.clone())),
            },
        );
        info!("Starting TLS tunnel: \"{}\"", spec.to_args().join(" "));
        let tunnel =
            launch::start(&spec, listener).map_err(|e| MountError::Failed(e.to_string()))?;
        info!("Started TLS tunnel, pid: {}", tunnel.pid());
        guard.tunnel = Some(tunnel);

        let mut record = MountState {
            pid: guard
                .tunnel
                .as_ref()
                .map(RunningTunnel::pid)
                .unwrap_or_default(),
            cmd: spec.to_args(),
            files: Vec::new(),
            mount_time: state::unix_time(),
            mountpoint: self.inv.mountpoint.clone(),
            service_type: state::SERVICE_TYPE_EFS.into(),
            fs_id: self.fs_id.to_string(),
            port,
            dns_name: self.dns_name.to_string(),
            check_host: spec.check_host.clone(),
            connect: spec.connect.clone(),
            control_socket: control,
            // Not in `files`: the watchdog removes it, and its directory, at teardown
            // (state::remove_client_cert).
            client_cert,
            // What only the watchdog sets later (restarts, unmount time, riders).
            ..MountState::default()
        };
        guard.state_file = Some(
            record
                .write(&paths.state_dir, &name)
                .map_err(|e| MountError::Failed(format!("cannot write state file {name}: {e}")))?,
        );

        let source = format!("127.0.0.1:{}", self.path);
        let nfs_opts = options::nfs_options(&self.inv.options, Some(port));
        self.in_mount_ns(|| self.mount_nfs(&source, &nfs_opts))??;
        if self.inv.fake {
            return Ok(()); // the guard stops the tunnel and removes the state
        }
        let transport =
            self.in_mount_ns(|| sharing::after_mount(cfg, &self.inv.mountpoint, &record));
        let transport = match transport {
            Ok(t) => t,
            Err(e) => {
                self.undo_mount();
                return Err(e);
            }
        };
        match transport {
            sharing::Transport::Own => {}
            sharing::Transport::Rides { port: via, state } => {
                // State first: a watchdog that sees the idle tunnel exit then finds that
                // the mount rides on another one, and does not restart it.
                record.served_by = Some(via);
                record.pid = 0;
                if let Err(e) = record.write(&paths.state_dir, &name) {
                    self.undo_mount();
                    return Err(MountError::Failed(format!(
                        "cannot write state file {name}: {e}"
                    )));
                }
                if let Some(t) = guard.tunnel.take() {
                    t.stop();
                }
                info!(
                    "The kernel's NFS client sends {} over its existing connection through the tunnel of {} (port {via}); stopped the new tunnel on port {port}, which it would never use",
                    self.inv.mountpoint, state.mountpoint
                );
            }
            sharing::Transport::Refused(why) => {
                self.undo_mount();
                return Err(MountError::Failed(why));
            }
        }
        guard.keep();
        let _ = self.in_mount_ns(|| self.mounted(&nfs_opts));
        watchdog::ensure_running(cfg);
        Ok(())
    }

    /// Runs `mount.nfs4`, or with `-f` only says it would.
    fn mount_nfs(&self, source: &str, nfs_opts: &str) -> Result<(), MountError> {
        let mount_nfs = &self.cfg.paths.mount_nfs;
        if self.inv.verbose {
            println!(
                "{} {source} {} -o {nfs_opts}",
                mount_nfs.display(),
                self.inv.mountpoint
            );
        }
        if self.inv.fake {
            info!("Fake mount mode enabled (-f), skipping actual mount");
            return Ok(());
        }
        let m = &self.cfg.mount;
        let retry = nfs::Retry {
            enabled: m.retry_nfs_mount_command,
            count: m.retry_nfs_mount_command_count,
            timeout: Duration::from_secs(m.retry_nfs_mount_command_timeout_sec),
        };
        nfs::mount(mount_nfs, source, &self.inv.mountpoint, nfs_opts, retry).map_err(|e| match e {
            nfs::NfsError::Spawn(msg) => MountError::Failed(msg),
            nfs::NfsError::Failed { code, stderr } => MountError::Nfs { code, stderr },
        })
    }
}

/// What a failed TLS mount must undo: stop the tunnel, remove the state file and the
/// client certificate with its directory.
struct Undo {
    tunnel: Option<RunningTunnel>,
    state_file: Option<PathBuf>,
    client_cert: Option<PathBuf>,
}

impl Undo {
    /// The mount succeeded: keep everything.
    fn keep(&mut self) {
        self.tunnel = None;
        self.state_file = None;
        self.client_cert = None;
    }
}

impl Drop for Undo {
    /// State first: a watchdog that already adopted the tunnel then forgets it instead of
    /// restarting it when it dies.
    fn drop(&mut self) {
        if let Some(p) = self.state_file.take() {
            let _ = std::fs::remove_file(p);
        }
        if let Some(t) = self.tunnel.take() {
            t.stop();
        }
        if let Some(c) = self.client_cert.take() {
            let _ = state::remove_client_cert(&c);
        }
    }
}

/// Takes back a mount that must not stay (the guard then removes its tunnel and state).
fn unmount(mountpoint: &str) {
    if let Err(e) = nix::mount::umount2(mountpoint, nix::mount::MntFlags::empty()) {
        warn!("cannot unmount {mountpoint} again: {e}; unmount it by hand");
    }
}
