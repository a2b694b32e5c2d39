//! The configuration: `/etc/amazon/efs/efs-utils.toml` (or the file named by
//! `EFS_UTILS_CONFIG`) over amazon-efs-utils' own `efs-utils.conf`, read natively. It
//! carries the incumbent's keys with the same names and defaults (top-level keys for the
//! incumbent's `[DEFAULT]` section, then `[mount]`, `[mount.<region>]` and
//! `[mount-watchdog]`), plus a `[paths]` table naming every file and program the product
//! touches, so that tests run in a temporary directory.
//!
//! The keys themselves (type, range, default, doc) are in one table, [`crate::keys`];
//! this module holds the typed [`Config`] every program reads, the layering, and the
//! errors. Decisions worth keeping:
//! * Layers ([`Config::load`]): built-in defaults, then `efs-utils.conf`, then
//!   `efs-utils.toml`, then `AWS_USE_FIPS_ENDPOINT=true`; a later layer wins only for the
//!   keys it sets, and [`Config::settings`] names each value's [`Origin`]. The INI file is
//!   converted to TOML tables by the same code `config import` uses, so both mean the
//!   same.
//! * A missing file means that layer is absent. An unknown key is a typed [`Warning`]
//!   that names it; a value of the wrong type or out of range is a [`ConfigError`] naming
//!   key, value and file, and every program exits non-zero with it.
//! * No other crate reads files under /etc.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use log::LevelFilter;
use toml::{Table, Value};

use crate::keys::{self, Effect, Expected, Invalid, Section};
use crate::{import, logging};

/// Where the configuration lives unless `EFS_UTILS_CONFIG` says otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/amazon/efs/efs-utils.toml";
/// The environment variable naming another configuration file.
pub const CONFIG_ENV: &str = "EFS_UTILS_CONFIG";
/// amazon-efs-utils' configuration, read under ours ([`Config::load`]): this name, next
/// to the TOML (`/etc/amazon/efs/efs-utils.conf`).
pub const INCUMBENT_CONFIG_NAME: &str = "efs-utils.conf";
/// The environment variable naming another incumbent configuration file.
pub const INCUMBENT_CONFIG_ENV: &str = "EFS_UTILS_INCUMBENT_CONFIG";
/// `true` turns FIPS mode on, as for the incumbent.
pub const FIPS_ENV: &str = "AWS_USE_FIPS_ENDPOINT";

/// The whole effective configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The `efs-utils.toml` read; `None` when there is none.
    pub source: Option<PathBuf>,
    /// The incumbent's `efs-utils.conf` read under it; `None` when there is none.
    pub incumbent_source: Option<PathBuf>,
    pub logging_level: LevelFilter,
    pub logging_max_bytes: u64,
    pub logging_file_count: u32,
    /// Mode of the state directory (`state_file_dir_mode`, octal, default 750).
    pub state_file_dir_mode: u32,
    pub mount: MountConfig,
    /// `[mount.<region>]` overrides.
    pub regions: BTreeMap<String, RegionConfig>,
    pub watchdog: WatchdogConfig,
    pub client_info: ClientInfo,
    pub paths: Paths,
    /// Unknown keys and other things the operator should know; not fatal.
    pub warnings: Vec<Warning>,
    /// Where each value a file set came from, by dotted key (`mount.region`,
    /// `mount.cn-north-1.dns_name_suffix`); a key not here has its default.
    pub origins: BTreeMap<String, Origin>,
}

/// `[mount]`. Its `Default` is the empty shape (zeros, empty strings); the built-in
/// defaults are `Config::default().mount`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MountConfig {
    pub dns_name_format: String,
    pub dns_name_suffix: String,
    pub region: Option<String>,
    /// CA bundle; `None` means the roots built into the tunnel (which include Amazon's).
    pub stunnel_cafile: Option<PathBuf>,
    pub stunnel_check_cert_hostname: bool,
    pub stunnel_check_cert_validity: bool,
    pub fips_mode_enabled: bool,
    /// Half-open, as the incumbent's: [lower, upper).
    pub port_range: Range<u16>,
    pub optimize_readahead: bool,
    pub fall_back_to_mount_target_ip_address_enabled: bool,
    pub disable_fetch_ec2_metadata_token: bool,
    pub retry_nfs_mount_command: bool,
    pub retry_nfs_mount_command_count: u32,
    pub retry_nfs_mount_command_timeout_sec: u64,
    /// Base URL of the instance metadata service (tests point it at a local fake).
    pub instance_metadata_url: String,
    /// Tunnels serve only root's sockets (the kernel's NFS client).
    pub tunnel_peer_check_enabled: bool,
    /// A connection whose mount target stays silent this long while calls are
    /// outstanding is closed so that the NFS client reconnects; 0: never.
    pub tunnel_dead_upstream_timeout_sec: u64,
    /// Whether tunnels bind to an EFS partition and multiplex under load.
    pub partition_multiplexing: PartitionMultiplexing,
    /// Whether tunnels hand each upstream connection's TLS records to the kernel.
    pub kernel_tls: KernelTls,
    /// Base URL of the ECS credential endpoint (tests point it at a local fake).
    pub ecs_credentials_url: String,
    /// STS endpoint; `None`: `https://sts.{region}.{dns_name_suffix}/`.
    pub sts_endpoint_url: Option<String>,
    /// EFS API endpoint of the mount-target-IP fallback; `None`: the region's.
    pub efs_endpoint_url: Option<String>,
    /// EC2 API endpoint of that fallback (AZ name to AZ ID); `None`: the region's.
    pub ec2_endpoint_url: Option<String>,
}

/// `partition_multiplexing`: whether a tunnel binds its connections to an EFS server
/// partition (ONC RPC program 400123) and spreads requests over several connections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PartitionMultiplexing {
    /// Bind, and multiplex if the server answers READY (the key table's default).
    #[default]
    Auto,
    /// No bind call: one TLS connection per NFS connection.
    Off,
}

impl PartitionMultiplexing {
    pub fn as_str(self) -> &'static str {
        match self {
            PartitionMultiplexing::Auto => "auto",
            PartitionMultiplexing::Off => "off",
        }
    }

    /// From a word the key table has checked (`auto`, `off`).
    pub fn from_word(word: &str) -> PartitionMultiplexing {
        if word == "off" {
            PartitionMultiplexing::Off
        } else {
            PartitionMultiplexing::Auto
        }
    }
}

/// `kernel_tls`: whether a tunnel moves a connection's TLS record layer into the
/// kernel after the handshake, where the kernel offers it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum KernelTls {
    /// Per connection, when the kernel has the `tls` module and does the cipher in
    /// hardware (the key table's default).
    #[default]
    Auto,
    /// Whenever the kernel has the `tls` module, even with its software ciphers.
    On,
    /// TLS in user space (rustls) only.
    Off,
}

impl KernelTls {
    pub fn as_str(self) -> &'static str {
        match self {
            KernelTls::Auto => "auto",
            KernelTls::On => "on",
            KernelTls::Off => "off",
        }
    }

    /// From a word the key table has checked (`auto`, `on`, `off`).
    pub fn from_word(word: &str) -> KernelTls {
        match word {
            "off" => KernelTls::Off,
            "on" => KernelTls::On,
            _ => KernelTls::Auto,
        }
    }
}

/// `[client-info]`: what the client certificate tells EFS about this client.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClientInfo {
    /// As written; the certificate carries `unknown` unless it is 1 to 100 characters.
    pub source: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct RegionConfig {
    pub dns_name_suffix: Option<String>,
    pub stunnel_cafile: Option<PathBuf>,
}

/// `[mount-watchdog]`. Its `Default` is the empty shape; the built-in defaults are
/// `Config::default().watchdog`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WatchdogConfig {
    pub enabled: bool,
    pub poll_interval_sec: u64,
    pub unmount_count_for_consistency: u32,
    pub unmount_grace_period_sec: u64,
    pub tls_cert_renewal_interval_min: u64,
    pub stunnel_health_check_enabled: bool,
    pub stunnel_health_check_interval_min: u64,
    pub stunnel_health_check_command_timeout_sec: u64,
}

/// Every path and program the product touches. Its `Default` is the empty shape; the
/// built-in defaults are `Config::default().paths`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Paths {
    pub state_dir: PathBuf,
    pub log_dir: PathBuf,
    pub mount_nfs: PathBuf,
    pub systemctl: PathBuf,
    /// Exists when systemd is the init system (sd_booted(3) checks the same).
    pub systemd_run_dir: PathBuf,
    pub mountinfo: PathBuf,
    /// The kernel NFS client's own tables (`servers`, `volumes`): which transport, and so
    /// which tunnel, each mount really uses.
    pub nfsfs: PathBuf,
    pub tunnel: PathBuf,
    /// `efs-renew-cert`, which the watchdog runs to renew a client certificate.
    pub renew_cert: PathBuf,
    /// The host's RSA key for client certificates.
    pub private_key: PathBuf,
    /// Backing-device settings (`read_ahead_kb`) of mounts.
    pub sysfs_bdi: PathBuf,
}

impl Config {
    /// The shape with every field empty; [`Default`] fills it from the key table. The
    /// sections' own `Default` is this empty shape too, so that a new key is a field and
    /// an entry in [`keys::KEYS`], nothing here.
    fn blank() -> Config {
        Config {
            source: None,
            incumbent_source: None,
            logging_level: LevelFilter::Off,
            logging_max_bytes: 0,
            logging_file_count: 0,
            state_file_dir_mode: 0,
            mount: MountConfig::default(),
            regions: BTreeMap::new(),
            watchdog: WatchdogConfig::default(),
            client_info: ClientInfo::default(),
            paths: Paths::default(),
            warnings: Vec::new(),
            origins: BTreeMap::new(),
        }
    }
}

/// Built-in defaults: every key's default from [`keys::KEYS`], and the built-in regions.
impl Default for Config {
    fn default() -> Self {
        let mut cfg = Config::blank();
        keys::apply_defaults(&mut cfg);
        cfg.regions = default_regions();
        cfg
    }
}

/// The incumbent's per-region DNS suffixes, so that they work without a config file too.
pub(crate) fn default_regions() -> BTreeMap<String, RegionConfig> {
    let system_bundle = Some(PathBuf::from(
        "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    ));
    let mut m = BTreeMap::new();
    let mut add = |region: &str, suffix: &str, ca: Option<PathBuf>| {
        m.insert(
            region.to_string(),
            RegionConfig {
                dns_name_suffix: Some(suffix.to_string()),
                stunnel_cafile: ca,
            },
        );
    };
    add("cn-north-1", "amazonaws.com.cn", None);
    add("cn-northwest-1", "amazonaws.com.cn", None);
    add("eu-isoe-west-1", "cloud.adc-e.uk", system_bundle.clone());
    add("eusc-de-east-1", "amazonaws.eu", system_bundle.clone());
    add("us-iso-east-1", "c2s.ic.gov", system_bundle.clone());
    add("us-iso-west-1", "c2s.ic.gov", system_bundle.clone());
    add("us-isob-east-1", "sc2s.sgov.gov", system_bundle.clone());
    add("us-isob-west-1", "sc2s.sgov.gov", system_bundle.clone());
    add("us-isof-east-1", "csp.hci.ic.gov", system_bundle.clone());
    add("us-isof-south-1", "csp.hci.ic.gov", system_bundle);
    m
}

/// The CA bundle efs-utils installs: Amazon Root CA 1-4 (`config/efs-utils.crt`, checked
/// against webpki-roots by a test). The trust when `stunnel_cafile` is not set, so that
/// the default is Amazon's four roots, not every public CA.
pub const DEFAULT_CAFILE: &str = "/etc/amazon/efs/efs-utils.crt";

/// Why the configuration could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    Unreadable {
        file: PathBuf,
        /// The system's reason.
        reason: String,
    },
    Syntax {
        file: PathBuf,
        /// The TOML parser's reason.
        reason: String,
    },
    BadValue {
        file: PathBuf,
        /// Dotted: `mount.port_range_lower_bound`.
        key: String,
        /// As written, in TOML.
        value: String,
        invalid: Invalid,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Unreadable { file, reason } => {
                write!(f, "cannot read config file {}: {reason}", file.display())
            }
            ConfigError::Syntax { file, reason } => write!(
                f,
                "config file {} is not valid TOML: {}",
                file.display(),
                one_line(reason)
            ),
            ConfigError::BadValue {
                file,
                key,
                value,
                invalid,
            } => write!(
                f,
                "config file {}: {key} = {value} {invalid}",
                file.display()
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

/// The text of `path`; `None` if it does not exist.
fn read_if_present(path: &Path) -> Result<Option<String>, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ConfigError::Unreadable {
            file: path.to_path_buf(),
            reason: e.to_string(),
        }),
    }
}

fn toml_table(text: &str, file: &Path) -> Result<Table, ConfigError> {
    text.parse()
        .map_err(|e: toml::de::Error| ConfigError::Syntax {
            file: file.to_path_buf(),
            reason: e.to_string(),
        })
}

/// The TOML parser's multi-line reason on one line.
pub(crate) fn one_line(reason: &str) -> String {
    reason.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Something in a file the operator should know about; the file is still used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Warning {
    /// Not a key of ours: a typo, or a key of a newer or older version.
    UnknownKey { file: PathBuf, key: String },
    /// One of the incumbent's sections we do not support yet (`[cloudwatch-log]`, ...).
    UnsupportedSection { file: PathBuf, section: String },
    /// One of the incumbent's stunnel-only keys; the tunnel has its own log.
    StunnelOnly { file: PathBuf, key: String },
}

impl Warning {
    /// What is wrong, without the file: `config import` reports it per key.
    pub fn reason(&self) -> String {
        match self {
            Warning::UnknownKey { key, .. } => format!("unknown key {key} is ignored"),
            Warning::UnsupportedSection { section, .. } => {
                format!("[{section}] is not supported yet and is ignored")
            }
            Warning::StunnelOnly { key, .. } => format!(
                "{key} is a stunnel setting and is ignored: the tunnel logs to efs-tunnel.log"
            ),
        }
    }

    fn file(&self) -> &Path {
        match self {
            Warning::UnknownKey { file, .. }
            | Warning::UnsupportedSection { file, .. }
            | Warning::StunnelOnly { file, .. } => file,
        }
    }
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file().display(), self.reason())
    }
}

/// The incumbent's sections that we accept with a warning instead of calling unknown.
const UNSUPPORTED_SECTIONS: [&str; 2] = ["cloudwatch-log", "proxy"];
/// The incumbent's `[mount]` keys that only meant something to stunnel.
const STUNNEL_ONLY_KEYS: [&str; 2] = ["stunnel_debug_enabled", "stunnel_logs_file"];

/// Where an effective value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The key table's built-in default.
    Default,
    /// The built-in per-region list (China and isolated regions).
    BuiltInRegion,
    /// amazon-efs-utils' `efs-utils.conf`.
    Incumbent,
    /// `efs-utils.toml` (or the file `EFS_UTILS_CONFIG` names).
    Toml,
    /// `AWS_USE_FIPS_ENDPOINT=true`, as for the incumbent.
    FipsEnvironment,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Origin::Default => "default",
            Origin::BuiltInRegion => "built-in region default",
            Origin::Incumbent => "efs-utils.conf",
            Origin::Toml => "efs-utils.toml",
            Origin::FipsEnvironment => "AWS_USE_FIPS_ENDPOINT",
        })
    }
}

impl Config {
    /// The effective configuration, as every program sees it: the built-in defaults,
    /// then amazon-efs-utils' `efs-utils.conf` if present, then `efs-utils.toml` if
    /// present (each file wins only for what it sets), then `AWS_USE_FIPS_ENDPOINT`.
    ///
    /// The TOML is `EFS_UTILS_CONFIG`, else [`DEFAULT_CONFIG_PATH`]. The INI is
    /// `EFS_UTILS_INCUMBENT_CONFIG`, else [`INCUMBENT_CONFIG_NAME`] next to the TOML
    /// (`/etc/amazon/efs/efs-utils.conf`): when `EFS_UTILS_CONFIG` moves the TOML into a
    /// test's temporary root, the machine's `/etc` is not read.
    pub fn load() -> Result<Config, ConfigError> {
        let toml = std::env::var_os(CONFIG_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
        let incumbent = std::env::var_os(INCUMBENT_CONFIG_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| toml.with_file_name(INCUMBENT_CONFIG_NAME));
        let fips = std::env::var_os(FIPS_ENV);
        Config::load_layers(&incumbent, &toml, fips.as_deref())
    }

    /// [`Config::load`] with its inputs named: `fips_endpoint` is the value of
    /// `AWS_USE_FIPS_ENDPOINT`.
    pub fn load_layers(
        incumbent: &Path,
        toml: &Path,
        fips_endpoint: Option<&OsStr>,
    ) -> Result<Config, ConfigError> {
        let mut cfg = Config::default();
        if let Some(text) = read_if_present(incumbent)? {
            let table = import::ini_table(&text);
            cfg.apply(&table, incumbent, Origin::Incumbent)?;
            cfg.incumbent_source = Some(incumbent.to_path_buf());
        }
        if let Some(text) = read_if_present(toml)? {
            cfg.apply(&toml_table(&text, toml)?, toml, Origin::Toml)?;
            cfg.source = Some(toml.to_path_buf());
        }
        if fips_endpoint.is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            cfg.mount.fips_mode_enabled = true;
            cfg.origins
                .insert("mount.fips_mode_enabled".into(), Origin::FipsEnvironment);
        }
        cfg.check_port_range()?;
        Ok(cfg)
    }

    /// `path` alone over the defaults (`config check FILE`); a file that does not exist
    /// means defaults.
    pub fn load_from(path: &Path) -> Result<Config, ConfigError> {
        match read_if_present(path)? {
            Some(text) => Config::parse(&text, path),
            None => Ok(Config::default()),
        }
    }

    /// Parses configuration text over the defaults; `file` is only used in messages.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let mut cfg = Config::default();
        cfg.apply(&toml_table(text, file)?, file, Origin::Toml)?;
        cfg.source = Some(file.to_path_buf());
        cfg.check_port_range()?;
        Ok(cfg)
    }

    /// One file's tables over what is there.
    fn apply(&mut self, table: &Table, file: &Path, origin: Origin) -> Result<(), ConfigError> {
        Reader {
            file,
            origin,
            cfg: self,
        }
        .section(Section::Top, "", table)
    }

    /// The file a value came from, for messages.
    fn file_of(&self, key: &str) -> PathBuf {
        let file = match self.origins.get(key) {
            Some(Origin::Incumbent) => self.incumbent_source.as_ref(),
            _ => self.source.as_ref(),
        };
        file.cloned().unwrap_or_default()
    }

    /// The one rule that spans two keys: the port range is not empty.
    fn check_port_range(&self) -> Result<(), ConfigError> {
        let range = &self.mount.port_range;
        if range.end > range.start {
            return Ok(());
        }
        let key = "mount.port_range_upper_bound";
        Err(ConfigError::BadValue {
            file: self.file_of(key),
            key: key.into(),
            value: range.end.to_string(),
            invalid: Invalid::Expected(Expected::Above {
                key: "port_range_lower_bound",
                value: range.start.into(),
            }),
        })
    }

    /// `dns_name_suffix` for a region: its `[mount.<region>]` section first, then `[mount]`.
    pub fn dns_name_suffix(&self, region: &str) -> &str {
        self.regions
            .get(region)
            .and_then(|r| r.dns_name_suffix.as_deref())
            .unwrap_or(&self.mount.dns_name_suffix)
    }

    /// The CA bundle for a region: the region's, else `stunnel_cafile`, else the bundle
    /// efs-utils installs ([`DEFAULT_CAFILE`], Amazon Root CA 1-4) if it is there, as
    /// amazon-efs-utils' default is; `None` means the tunnel's built-in roots.
    pub fn cafile(&self, region: &str) -> Option<&Path> {
        self.regions
            .get(region)
            .and_then(|r| r.stunnel_cafile.as_deref())
            .or(self.mount.stunnel_cafile.as_deref())
            .or_else(|| Some(Path::new(DEFAULT_CAFILE)).filter(|p| p.is_file()))
    }

    /// The log spec for one of the product's log files (`mount.log`, ...).
    pub fn log_spec(&self, file_name: &str, stderr: bool) -> logging::LogSpec {
        logging::LogSpec {
            level: self.logging_level,
            file: Some(logging::RotatingFile {
                path: self.paths.log_dir.join(file_name),
                max_bytes: self.logging_max_bytes,
                file_count: self.logging_file_count,
            }),
            stderr,
        }
    }
}

/// One effective setting, as `efs-utils config check` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// Dotted key: `logging_level`, `mount.region`, `mount.cn-north-1.dns_name_suffix`.
    pub key: String,
    /// As TOML: `"us-east-1"`, `true`, `20049`; or `(unset: ...)`.
    pub value: String,
    pub origin: Origin,
    /// Which programs read it, or that it is accepted with no effect.
    pub effect: Effect,
}

impl Config {
    /// Every effective value, with where it came from, in the key table's order.
    pub fn settings(&self) -> Vec<Setting> {
        keys::rows(self)
            .into_iter()
            .map(|(key, dotted, value)| {
                let origin = match self.origins.get(&dotted) {
                    Some(o) => *o,
                    None if key.section() == Section::Region => Origin::BuiltInRegion,
                    None => Origin::Default,
                };
                Setting {
                    key: dotted,
                    value,
                    origin,
                    effect: key.effect,
                }
            })
            .collect()
    }
}

/// Applies one file's tables to a configuration, through the key table.
struct Reader<'a> {
    file: &'a Path,
    origin: Origin,
    cfg: &'a mut Config,
}

impl Reader<'_> {
    fn bad(&self, key: &str, value: &Value, invalid: Invalid) -> ConfigError {
        ConfigError::BadValue {
            file: self.file.to_path_buf(),
            key: key.to_string(),
            value: value.to_string(),
            invalid,
        }
    }

    fn warn(&mut self, warning: Warning) {
        self.cfg.warnings.push(warning);
    }

    fn unknown(&mut self, key: String) {
        let file = self.file.to_path_buf();
        self.warn(Warning::UnknownKey { file, key });
    }

    /// The keys of one table: `prefix` is its dotted path (`""` for the top level).
    fn section(
        &mut self,
        section: Section,
        prefix: &str,
        table: &Table,
    ) -> Result<(), ConfigError> {
        for (name, value) in table {
            let dotted = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}.{name}")
            };
            if let Some((_, kind)) = keys::find(section, name) {
                kind.apply(self.cfg, value)
                    .map_err(|i| self.bad(&dotted, value, i))?;
                self.cfg.origins.insert(dotted, self.origin);
                continue;
            }
            let sub = Section::named(name).filter(|_| section == Section::Top);
            let top = section == Section::Top;
            let mount = section == Section::Mount;
            match (sub, value) {
                (Some(s), Value::Table(t)) => self.section(s, &dotted, t)?,
                (Some(_), v) => {
                    return Err(self.bad(&dotted, v, Invalid::Expected(Expected::Table)))
                }
                (None, Value::Table(t)) if mount => self.region(name, &dotted, t)?,
                (None, _) if top && UNSUPPORTED_SECTIONS.contains(&name.as_str()) => {
                    let file = self.file.to_path_buf();
                    self.warn(Warning::UnsupportedSection {
                        file,
                        section: dotted,
                    })
                }
                (None, _) if mount && STUNNEL_ONLY_KEYS.contains(&name.as_str()) => {
                    let file = self.file.to_path_buf();
                    self.warn(Warning::StunnelOnly { file, key: dotted })
                }
                _ => self.unknown(dotted),
            }
        }
        Ok(())
    }

    /// One `[mount.<region>]` table, over the region's built-in values.
    fn region(&mut self, region: &str, prefix: &str, table: &Table) -> Result<(), ConfigError> {
        for (name, value) in table {
            let dotted = format!("{prefix}.{name}");
            let Some((_, kind)) = keys::find_region(name) else {
                self.unknown(dotted);
                continue;
            };
            let rc = self.cfg.regions.entry(region.to_string()).or_default();
            kind.apply(rc, value)
                .map_err(|i| self.bad(&dotted, value, i))?;
            self.cfg.origins.insert(dotted, self.origin);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::KEYS;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/amazon/efs/efs-utils.toml"))
    }

    #[test]
    fn a_missing_file_means_defaults() {
        let cfg = Config::load_from(Path::new("/nonexistent/efs-utils.toml")).unwrap();
        assert_eq!(cfg, Config::default());
        assert_eq!(cfg.mount.port_range, 20049..21049);
        assert_eq!(cfg.paths.state_dir, PathBuf::from("/var/run/efs"));
    }

    #[test]
    fn the_shipped_config_parses_without_warnings() {
        let text = include_str!("../efs-utils.toml");
        let cfg = parse(text).unwrap();
        assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
        assert_eq!(cfg.dns_name_suffix("cn-north-1"), "amazonaws.com.cn");
        assert_eq!(cfg.dns_name_suffix("us-east-1"), "amazonaws.com");
        assert_eq!(cfg.watchdog.unmount_grace_period_sec, 30);
        assert!(cfg.mount.optimize_readahead);
    }

    #[test]
    fn region_sections_override_mount() {
        let cfg = parse(
            "[mount]\ndns_name_suffix = \"example.com\"\nstunnel_cafile = \"/ca.pem\"\n\
             [mount.xx-test-1]\ndns_name_suffix = \"x.example\"\nstunnel_cafile = \"/x.pem\"\n",
        )
        .unwrap();
        assert_eq!(cfg.dns_name_suffix("xx-test-1"), "x.example");
        assert_eq!(cfg.dns_name_suffix("us-east-1"), "example.com");
        assert_eq!(cfg.cafile("xx-test-1"), Some(Path::new("/x.pem")));
        assert_eq!(cfg.cafile("us-east-1"), Some(Path::new("/ca.pem")));
        assert_eq!(
            cfg.cafile("us-iso-east-1").unwrap().to_str().unwrap(),
            "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem"
        );
    }

    #[test]
    fn unknown_keys_are_warnings_that_name_the_key() {
        let cfg =
            parse("colour = 1\n[mount]\nportrange = 3\n[mount-watchdog]\nenable = true\n").unwrap();
        let unknown: Vec<&str> = cfg
            .warnings
            .iter()
            .filter_map(|w| match w {
                Warning::UnknownKey { key, .. } => Some(key.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(
            unknown,
            ["colour", "mount.portrange", "mount-watchdog.enable"]
        );
        let shown = cfg.warnings[0].to_string();
        assert_eq!(
            shown,
            "/etc/amazon/efs/efs-utils.toml: unknown key colour is ignored"
        );
    }

    #[test]
    fn bad_values_are_errors_naming_key_value_and_file() {
        let e = parse("[mount]\nport_range_lower_bound = \"many\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("mount.port_range_lower_bound")
                && e.contains("\"many\"")
                && e.contains("efs-utils.toml"),
            "{e}"
        );
        let e = parse("[mount]\nport_range_lower_bound = 21049\nport_range_upper_bound = 20049\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("strictly greater"), "{e}");
        let e = parse("[mount]\ndns_name_format = \"{az}.efs\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("{fs_id}"), "{e}");
        let e = parse("logging_level = \"loud\"\n").unwrap_err().to_string();
        assert!(e.contains("logging_level"), "{e}");
        let e = parse("[mount\n").unwrap_err().to_string();
        assert!(e.contains("not valid TOML"), "{e}");
        let e = parse("state_file_dir_mode = \"999\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("octal"), "{e}");
    }

    #[test]
    fn ini_style_booleans_and_numbers_in_strings_are_accepted() {
        let cfg =
            parse("[mount]\nfips_mode_enabled = \"yes\"\nretry_nfs_mount_command_count = \"4\"\n")
                .unwrap();
        assert!(cfg.mount.fips_mode_enabled);
        assert_eq!(cfg.mount.retry_nfs_mount_command_count, 4);
    }

    #[test]
    fn settings_say_where_each_value_came_from() {
        let cfg = parse("logging_level = \"debug\"\n[mount]\nregion = \"eu-west-1\"\n[mount.xx-test-1]\ndns_name_suffix = \"x\"\n").unwrap();
        let get = |k: &str| cfg.settings().into_iter().find(|s| s.key == k).unwrap();
        assert_eq!(
            (
                get("logging_level").value.as_str(),
                get("logging_level").origin
            ),
            ("\"debug\"", Origin::Toml)
        );
        assert_eq!(get("mount.region").origin, Origin::Toml);
        assert_eq!(get("mount.port_range_lower_bound").origin, Origin::Default);
        assert_eq!(get("mount.xx-test-1.dns_name_suffix").origin, Origin::Toml);
        assert_eq!(
            get("mount.cn-north-1.dns_name_suffix").origin,
            Origin::BuiltInRegion
        );
        assert_eq!(
            get("mount.stunnel_cafile").value,
            "(unset: /etc/amazon/efs/efs-utils.crt if installed, else built-in roots)"
        );
    }

    #[test]
    fn a_state_dir_mode_others_could_write_is_refused() {
        for mode in ["777", "770", "752"] {
            let e = parse(&format!("state_file_dir_mode = \"{mode}\"\n")).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!("config file /etc/amazon/efs/efs-utils.toml: state_file_dir_mode = \"{mode}\" would make the state directory writable by other users; use 750 (the default) or stricter")
            );
        }
        for (mode, want) in [("\"700\"", 0o700), ("755", 0o755), ("\"0750\"", 0o750)] {
            let cfg = parse(&format!("state_file_dir_mode = {mode}\n")).unwrap();
            assert_eq!(cfg.state_file_dir_mode, want, "{mode}");
        }
    }

    #[test]
    fn keys_accepted_with_no_effect_say_so() {
        let cfg = parse(
            "[mount]\nfall_back_to_mount_target_ip_address_enabled = false\n\
             [mount-watchdog]\nunmount_count_for_consistency = 3\ntls_cert_renewal_interval_min = 5\n",
        )
        .unwrap();
        assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
        let no_effect: Vec<String> = cfg
            .settings()
            .into_iter()
            .filter(|s| s.effect == Effect::NoneYet)
            .map(|s| format!("{} {}", s.key, s.origin))
            .collect();
        assert_eq!(
            no_effect,
            ["mount-watchdog.unmount_count_for_consistency efs-utils.toml"]
        );
    }

    #[test]
    fn every_key_shows_its_table_default_with_no_file() {
        let cfg = Config::default();
        let settings = cfg.settings();
        for key in KEYS.iter().filter(|k| k.section() != Section::Region) {
            let shown = settings.iter().find(|s| s.key == key.dotted()).unwrap();
            let want = key
                .default_toml()
                .or(key.unset_means().map(|u| format!("(unset: {u})")));
            assert_eq!(Some(shown.value.clone()), want, "{}", key.dotted());
            assert_eq!(shown.origin, Origin::Default);
        }
        // And each default is a value its own key accepts.
        for key in KEYS {
            if let Some(d) = key.default_toml() {
                let text = match key.section().table() {
                    Some(t) => format!("[{t}]\n{} = {d}\n", key.name),
                    None => format!("{} = {d}\n", key.name),
                };
                let cfg = parse(&text).unwrap();
                assert_eq!(
                    Config {
                        source: None,
                        origins: BTreeMap::new(),
                        ..cfg
                    },
                    Config::default()
                );
            }
        }
    }

    #[test]
    fn paths_can_all_be_moved() {
        let cfg = parse(
            "[paths]\nstate_dir = \"/t/run\"\nlog_dir = \"/t/log\"\nmount_nfs = \"/t/mount.nfs4\"\n\
             systemctl = \"/t/systemctl\"\nsystemd_run_dir = \"/t/systemd\"\nmountinfo = \"/t/mountinfo\"\ntunnel = \"/t/efs-tunnel\"\n\
             renew_cert = \"/t/efs-renew-cert\"\nsysfs_bdi = \"/t/bdi\"\n",
        )
        .unwrap();
        assert!(cfg.warnings.is_empty());
        for p in [
            &cfg.paths.state_dir,
            &cfg.paths.log_dir,
            &cfg.paths.mount_nfs,
            &cfg.paths.systemctl,
            &cfg.paths.systemd_run_dir,
            &cfg.paths.mountinfo,
            &cfg.paths.tunnel,
            &cfg.paths.renew_cert,
            &cfg.paths.sysfs_bdi,
        ] {
            assert!(p.starts_with("/t"), "{p:?}");
        }
    }

    /// A temporary directory of this test's own, removed at the end.
    struct Dir(PathBuf);
    impl Dir {
        fn new(name: &str) -> Dir {
            let d = std::env::temp_dir().join(format!("efs-config-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            Dir(d)
        }
        fn file(&self, name: &str, text: &str) -> PathBuf {
            let p = self.0.join(name);
            std::fs::write(&p, text).unwrap();
            p
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn the_toml_wins_over_efs_utils_conf_only_for_what_it_sets() {
        let d = Dir::new("layers");
        let ini = d.file(
            "efs-utils.conf",
            "[DEFAULT]\nlogging_level = DEBUG\n[mount]\nregion = eu-west-1\nport_range_lower_bound = 20100\n\
             retry_nfs_mount_command_count = 5\n[mount.xx-test-1]\ndns_name_suffix = x.example\n",
        );
        let toml = d.file(
            "efs-utils.toml",
            "[mount]\nregion = \"us-west-2\"\n[mount-watchdog]\npoll_interval_sec = 7\n",
        );
        let cfg = Config::load_layers(&ini, &toml, None).unwrap();
        assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
        assert_eq!(cfg.mount.region.as_deref(), Some("us-west-2"));
        assert_eq!(cfg.mount.port_range, 20100..21049);
        assert_eq!(cfg.mount.retry_nfs_mount_command_count, 5);
        assert_eq!(cfg.logging_level, LevelFilter::Debug);
        assert_eq!(cfg.watchdog.poll_interval_sec, 7);
        assert_eq!(cfg.dns_name_suffix("xx-test-1"), "x.example");
        let origin = |k: &str| {
            cfg.settings()
                .into_iter()
                .find(|s| s.key == k)
                .unwrap()
                .origin
        };
        assert_eq!(origin("mount.region"), Origin::Toml);
        assert_eq!(origin("mount-watchdog.poll_interval_sec"), Origin::Toml);
        assert_eq!(origin("mount.port_range_lower_bound"), Origin::Incumbent);
        assert_eq!(origin("logging_level"), Origin::Incumbent);
        assert_eq!(origin("mount.xx-test-1.dns_name_suffix"), Origin::Incumbent);
        assert_eq!(origin("mount.port_range_upper_bound"), Origin::Default);
        assert_eq!(
            origin("mount.cn-north-1.dns_name_suffix"),
            Origin::BuiltInRegion
        );
        assert_eq!(cfg.incumbent_source.as_deref(), Some(ini.as_path()));
        assert_eq!(cfg.source.as_deref(), Some(toml.as_path()));

        // Either file alone, or neither.
        let none = d.0.join("absent");
        let only_ini = Config::load_layers(&ini, &none, None).unwrap();
        assert_eq!(only_ini.mount.region.as_deref(), Some("eu-west-1"));
        assert_eq!(only_ini.source, None);
        let only_toml = Config::load_layers(&none, &toml, None).unwrap();
        assert_eq!(only_toml.mount.port_range, 20049..21049);
        assert_eq!(
            Config::load_layers(&none, &none, None).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn aws_use_fips_endpoint_true_turns_fips_on() {
        let d = Dir::new("fips");
        let toml = d.file("efs-utils.toml", "[mount]\nfips_mode_enabled = false\n");
        let none = d.0.join("absent.conf");
        for (env, on) in [
            (Some("true"), true),
            (Some("TRUE"), true),
            (Some("false"), false),
            (None, false),
        ] {
            let cfg = Config::load_layers(&none, &toml, env.map(OsStr::new)).unwrap();
            assert_eq!(cfg.mount.fips_mode_enabled, on, "{env:?}");
            let origin = cfg.origins.get("mount.fips_mode_enabled").copied();
            let want = if on {
                Origin::FipsEnvironment
            } else {
                Origin::Toml
            };
            assert_eq!(origin, Some(want), "{env:?}");
        }
    }

    #[test]
    fn a_bad_value_in_efs_utils_conf_names_that_file() {
        let d = Dir::new("badini");
        let ini = d.file("efs-utils.conf", "[mount]\nport_range_lower_bound = many\n");
        let e = Config::load_layers(&ini, &d.0.join("absent"), None).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("config file {}: mount.port_range_lower_bound = \"many\" is invalid: expected a whole number from 1 to 65535", ini.display())
        );
        let ini = d.file(
            "efs-utils.conf",
            "[mount]\nport_range_lower_bound = 30000\nport_range_upper_bound = 30000\n",
        );
        let e = Config::load_layers(&ini, &d.0.join("absent"), None).unwrap_err();
        assert!(
            e.to_string().starts_with(&format!(
                "config file {}: mount.port_range_upper_bound",
                ini.display()
            )),
            "{e}"
        );
    }

    #[test]
    fn the_incumbents_shipped_conf_read_natively_means_what_its_import_means() {
        let text = include_str!("../../cli/tests/fixtures/incumbent-efs-utils.conf");
        let d = Dir::new("native");
        let ini = d.file("efs-utils.conf", text);
        let native = Config::load_layers(&ini, &d.0.join("absent"), None).unwrap();
        let imported = parse(&crate::import::import_ini(text, "efs-utils.conf").toml).unwrap();
        let values = |c: &Config| Config {
            source: None,
            incumbent_source: None,
            warnings: Vec::new(),
            origins: BTreeMap::new(),
            ..c.clone()
        };
        assert_eq!(values(&native), values(&imported));
        assert!(native.mount.optimize_readahead);
        assert_eq!(
            native.mount.stunnel_cafile.as_deref(),
            Some(Path::new("/etc/amazon/efs/efs-utils.crt"))
        );
        // What it has that we do not support is said, naming the file.
        let w: Vec<String> = native.warnings.iter().map(|w| w.to_string()).collect();
        assert_eq!(
            w,
            [
                format!("{}: [cloudwatch-log] is not supported yet and is ignored", ini.display()),
                format!("{}: mount.stunnel_debug_enabled is a stunnel setting and is ignored: the tunnel logs to efs-tunnel.log", ini.display()),
            ]
        );
    }
}
