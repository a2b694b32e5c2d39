//! The configuration file: `/etc/amazon/efs/efs-utils.toml`, or the file named by
//! `EFS_UTILS_CONFIG`. It carries amazon-efs-utils' keys with the same names and defaults
//! (top-level keys for the incumbent's `[DEFAULT]` section, then `[mount]`,
//! `[mount.<region>]` and `[mount-watchdog]`), plus a `[paths]` table naming every file
//! and program the product touches, so that tests run in a temporary directory.
//!
//! A missing file means defaults. An unknown key is a warning that names it; a value of
//! the wrong type or out of range is an error naming key, value and file. No other crate
//! reads files under /etc.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use log::LevelFilter;
use toml::{Table, Value};

use crate::logging;

/// Where the configuration lives unless `EFS_UTILS_CONFIG` says otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/amazon/efs/efs-utils.toml";
/// The environment variable naming another configuration file.
pub const CONFIG_ENV: &str = "EFS_UTILS_CONFIG";

/// The whole effective configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it was read from; `None` when no file exists (all defaults).
    pub source: Option<PathBuf>,
    pub logging_level: LevelFilter,
    pub logging_max_bytes: u64,
    pub logging_file_count: u32,
    /// Mode of the state directory (`state_file_dir_mode`, octal, default 750).
    pub state_file_dir_mode: u32,
    pub mount: MountConfig,
    /// `[mount.<region>]` overrides.
    pub regions: BTreeMap<String, RegionConfig>,
    pub watchdog: WatchdogConfig,
    pub paths: Paths,
    /// Unknown keys and other things the operator should know; not fatal.
    pub warnings: Vec<String>,
    /// Dotted keys (`mount.region`, `mount.cn-north-1.dns_name_suffix`) the file set.
    pub from_file: std::collections::BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq)]
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
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct RegionConfig {
    pub dns_name_suffix: Option<String>,
    pub stunnel_cafile: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
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

/// Every path and program the product touches.
#[derive(Debug, Clone, PartialEq)]
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
    /// Backing-device settings (`read_ahead_kb`) of mounts.
    pub sysfs_bdi: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            source: None,
            logging_level: LevelFilter::Info,
            logging_max_bytes: 1_048_576,
            logging_file_count: 10,
            state_file_dir_mode: 0o750,
            mount: MountConfig {
                dns_name_format: "{az}.{fs_id}.efs.{region}.{dns_name_suffix}".into(),
                dns_name_suffix: "amazonaws.com".into(),
                region: None,
                stunnel_cafile: None,
                stunnel_check_cert_hostname: true,
                stunnel_check_cert_validity: false,
                fips_mode_enabled: false,
                port_range: 20049..21049,
                optimize_readahead: false,
                fall_back_to_mount_target_ip_address_enabled: true,
                disable_fetch_ec2_metadata_token: false,
                retry_nfs_mount_command: true,
                retry_nfs_mount_command_count: 3,
                retry_nfs_mount_command_timeout_sec: 15,
                instance_metadata_url: "http://169.254.169.254".into(),
            },
            regions: default_regions(),
            watchdog: WatchdogConfig {
                enabled: true,
                poll_interval_sec: 1,
                unmount_count_for_consistency: 5,
                unmount_grace_period_sec: 30,
                tls_cert_renewal_interval_min: 60,
                stunnel_health_check_enabled: true,
                stunnel_health_check_interval_min: 5,
                stunnel_health_check_command_timeout_sec: 30,
            },
            paths: Paths {
                state_dir: "/var/run/efs".into(),
                log_dir: "/var/log/amazon/efs".into(),
                mount_nfs: "/sbin/mount.nfs4".into(),
                systemctl: "systemctl".into(),
                systemd_run_dir: "/run/systemd/system".into(),
                mountinfo: "/proc/self/mountinfo".into(),
                nfsfs: "/proc/fs/nfsfs".into(),
                tunnel: "/usr/bin/efs-tunnel".into(),
                sysfs_bdi: "/sys/class/bdi".into(),
            },
            warnings: Vec::new(),
            from_file: Default::default(),
        }
    }
}

/// The incumbent's per-region DNS suffixes, so that they work without a config file too.
fn default_regions() -> BTreeMap<String, RegionConfig> {
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

/// Why the configuration could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    Unreadable {
        file: PathBuf,
        reason: String,
    },
    Syntax {
        file: PathBuf,
        reason: String,
    },
    BadValue {
        file: PathBuf,
        key: String,
        value: String,
        expected: String,
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
                reason.trim().replace('\n', " ")
            ),
            ConfigError::BadValue {
                file,
                key,
                value,
                expected,
            } => write!(
                f,
                "config file {}: {key} = {value} is invalid: expected {expected}",
                file.display()
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Loads the file named by `EFS_UTILS_CONFIG`, else the default path.
    pub fn load() -> Result<Config, ConfigError> {
        let path = std::env::var_os(CONFIG_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
        Config::load_from(&path)
    }

    /// Loads `path`; a file that does not exist means defaults.
    pub fn load_from(path: &Path) -> Result<Config, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            Err(e) => Err(ConfigError::Unreadable {
                file: path.to_path_buf(),
                reason: e.to_string(),
            }),
        }
    }

    /// Parses configuration text; `file` is only used in messages.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let table: Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Syntax {
                file: file.to_path_buf(),
                reason: e.to_string(),
            })?;
        let mut cfg = Config {
            source: Some(file.to_path_buf()),
            ..Config::default()
        };
        let mut r = Reader {
            file,
            warnings: Vec::new(),
            applied: Default::default(),
        };
        for (key, value) in &table {
            let before = r.warnings.len();
            match key.as_str() {
                "logging_level" => {
                    let s = r.string(key, value)?;
                    cfg.logging_level = logging::parse_level(&s).ok_or_else(|| {
                        r.bad(key, value, "one of debug, info, warning, error, critical")
                    })?;
                }
                "logging_max_bytes" => {
                    cfg.logging_max_bytes = r.int(key, value, 0, u32::MAX as i64)? as u64
                }
                "logging_file_count" => cfg.logging_file_count = r.int(key, value, 0, 1000)? as u32,
                "state_file_dir_mode" => {
                    let s = match value {
                        Value::Integer(i) => i.to_string(),
                        other => r.string(key, other)?,
                    };
                    cfg.state_file_dir_mode = u32::from_str_radix(&s, 8)
                        .ok()
                        .filter(|m| *m <= 0o777)
                        .ok_or_else(|| r.bad(key, value, "an octal mode such as \"750\""))?;
                }
                "mount" => r.mount(value, &mut cfg)?,
                "mount-watchdog" => r.watchdog(value, &mut cfg.watchdog)?,
                "paths" => r.paths(value, &mut cfg.paths)?,
                // Sections the incumbent has that we do not use yet: accepted, not applied.
                "cloudwatch-log" | "client-info" | "proxy" => {
                    r.warn(format!("[{key}] is not supported yet and is ignored"))
                }
                _ => r.unknown(key),
            }
            if r.warnings.len() == before && !value.is_table() {
                r.applied.insert(key.clone());
            }
        }
        if cfg.mount.port_range.end <= cfg.mount.port_range.start {
            return Err(ConfigError::BadValue {
                file: file.to_path_buf(),
                key: "mount.port_range_upper_bound".into(),
                value: cfg.mount.port_range.end.to_string(),
                expected: format!(
                    "a value strictly greater than port_range_lower_bound ({})",
                    cfg.mount.port_range.start
                ),
            });
        }
        cfg.warnings = r.warnings;
        cfg.from_file = r.applied;
        Ok(cfg)
    }

    /// `dns_name_suffix` for a region: its `[mount.<region>]` section first, then `[mount]`.
    pub fn dns_name_suffix(&self, region: &str) -> &str {
        self.regions
            .get(region)
            .and_then(|r| r.dns_name_suffix.as_deref())
            .unwrap_or(&self.mount.dns_name_suffix)
    }

    /// The CA bundle for a region; `None` means the tunnel's built-in roots.
    pub fn cafile(&self, region: &str) -> Option<&Path> {
        self.regions
            .get(region)
            .and_then(|r| r.stunnel_cafile.as_deref())
            .or(self.mount.stunnel_cafile.as_deref())
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
    /// As TOML: `"us-east-1"`, `true`, `20049`.
    pub value: String,
    /// `file`, `default`, or `built-in region default`.
    pub source: &'static str,
}

impl Config {
    /// Every effective value, with where it came from.
    pub fn settings(&self) -> Vec<Setting> {
        let text = |v: &str| Value::String(v.to_string()).to_string();
        let path = |p: &Path| text(&p.to_string_lossy());
        let m = &self.mount;
        let w = &self.watchdog;
        let p = &self.paths;
        let level = self.logging_level.to_string().to_lowercase();
        let mut list: Vec<(String, String)> = vec![
            ("logging_level".into(), text(&level)),
            (
                "logging_max_bytes".into(),
                self.logging_max_bytes.to_string(),
            ),
            (
                "logging_file_count".into(),
                self.logging_file_count.to_string(),
            ),
            (
                "state_file_dir_mode".into(),
                text(&format!("{:o}", self.state_file_dir_mode)),
            ),
            ("mount.dns_name_format".into(), text(&m.dns_name_format)),
            ("mount.dns_name_suffix".into(), text(&m.dns_name_suffix)),
            (
                "mount.region".into(),
                m.region
                    .as_deref()
                    .map(text)
                    .unwrap_or_else(|| "(unset)".into()),
            ),
            (
                "mount.stunnel_cafile".into(),
                m.stunnel_cafile
                    .as_deref()
                    .map(path)
                    .unwrap_or_else(|| "(unset: built-in roots)".into()),
            ),
            (
                "mount.stunnel_check_cert_hostname".into(),
                m.stunnel_check_cert_hostname.to_string(),
            ),
            (
                "mount.stunnel_check_cert_validity".into(),
                m.stunnel_check_cert_validity.to_string(),
            ),
            (
                "mount.fips_mode_enabled".into(),
                m.fips_mode_enabled.to_string(),
            ),
            (
                "mount.port_range_lower_bound".into(),
                m.port_range.start.to_string(),
            ),
            (
                "mount.port_range_upper_bound".into(),
                m.port_range.end.to_string(),
            ),
            (
                "mount.optimize_readahead".into(),
                m.optimize_readahead.to_string(),
            ),
            (
                "mount.fall_back_to_mount_target_ip_address_enabled".into(),
                m.fall_back_to_mount_target_ip_address_enabled.to_string(),
            ),
            (
                "mount.disable_fetch_ec2_metadata_token".into(),
                m.disable_fetch_ec2_metadata_token.to_string(),
            ),
            (
                "mount.retry_nfs_mount_command".into(),
                m.retry_nfs_mount_command.to_string(),
            ),
            (
                "mount.retry_nfs_mount_command_count".into(),
                m.retry_nfs_mount_command_count.to_string(),
            ),
            (
                "mount.retry_nfs_mount_command_timeout_sec".into(),
                m.retry_nfs_mount_command_timeout_sec.to_string(),
            ),
            (
                "mount.instance_metadata_url".into(),
                text(&m.instance_metadata_url),
            ),
        ];
        for (region, rc) in &self.regions {
            if let Some(v) = &rc.dns_name_suffix {
                list.push((format!("mount.{region}.dns_name_suffix"), text(v)));
            }
            if let Some(v) = &rc.stunnel_cafile {
                list.push((format!("mount.{region}.stunnel_cafile"), path(v)));
            }
        }
        list.extend([
            ("mount-watchdog.enabled".into(), w.enabled.to_string()),
            (
                "mount-watchdog.poll_interval_sec".into(),
                w.poll_interval_sec.to_string(),
            ),
            (
                "mount-watchdog.unmount_count_for_consistency".into(),
                w.unmount_count_for_consistency.to_string(),
            ),
            (
                "mount-watchdog.unmount_grace_period_sec".into(),
                w.unmount_grace_period_sec.to_string(),
            ),
            (
                "mount-watchdog.tls_cert_renewal_interval_min".into(),
                w.tls_cert_renewal_interval_min.to_string(),
            ),
            (
                "mount-watchdog.stunnel_health_check_enabled".into(),
                w.stunnel_health_check_enabled.to_string(),
            ),
            (
                "mount-watchdog.stunnel_health_check_interval_min".into(),
                w.stunnel_health_check_interval_min.to_string(),
            ),
            (
                "mount-watchdog.stunnel_health_check_command_timeout_sec".into(),
                w.stunnel_health_check_command_timeout_sec.to_string(),
            ),
            ("paths.state_dir".into(), path(&p.state_dir)),
            ("paths.log_dir".into(), path(&p.log_dir)),
            ("paths.mount_nfs".into(), path(&p.mount_nfs)),
            ("paths.systemctl".into(), path(&p.systemctl)),
            ("paths.systemd_run_dir".into(), path(&p.systemd_run_dir)),
            ("paths.mountinfo".into(), path(&p.mountinfo)),
            ("paths.nfsfs".into(), path(&p.nfsfs)),
            ("paths.tunnel".into(), path(&p.tunnel)),
            ("paths.sysfs_bdi".into(), path(&p.sysfs_bdi)),
        ]);
        let builtin = default_regions();
        list.into_iter()
            .map(|(key, value)| {
                let source = if self.from_file.contains(&key) {
                    "file"
                } else if key.matches('.').count() == 2
                    && builtin
                        .keys()
                        .any(|r| key.starts_with(&format!("mount.{r}.")))
                {
                    "built-in region default"
                } else {
                    "default"
                };
                Setting { key, value, source }
            })
            .collect()
    }
}

/// Typed access to TOML values with messages that name key, value and file.
struct Reader<'a> {
    file: &'a Path,
    warnings: Vec<String>,
    applied: std::collections::BTreeSet<String>,
}

impl Reader<'_> {
    fn bad(&self, key: &str, value: &Value, expected: &str) -> ConfigError {
        ConfigError::BadValue {
            file: self.file.to_path_buf(),
            key: key.to_string(),
            value: value.to_string(),
            expected: expected.to_string(),
        }
    }

    fn warn(&mut self, message: String) {
        self.warnings
            .push(format!("{}: {message}", self.file.display()));
    }

    fn unknown(&mut self, key: &str) {
        self.warn(format!("unknown key {key} is ignored"));
    }

    fn string(&self, key: &str, v: &Value) -> Result<String, ConfigError> {
        v.as_str()
            .map(str::to_string)
            .ok_or_else(|| self.bad(key, v, "a string"))
    }

    fn bool(&self, key: &str, v: &Value) -> Result<bool, ConfigError> {
        match v {
            Value::Boolean(b) => Ok(*b),
            // The incumbent's INI values, for configs converted by hand.
            Value::String(s) if matches!(s.to_ascii_lowercase().as_str(), "true" | "yes" | "1") => {
                Ok(true)
            }
            Value::String(s) if matches!(s.to_ascii_lowercase().as_str(), "false" | "no" | "0") => {
                Ok(false)
            }
            _ => Err(self.bad(key, v, "true or false")),
        }
    }

    fn int(&self, key: &str, v: &Value, min: i64, max: i64) -> Result<i64, ConfigError> {
        let n = match v {
            Value::Integer(i) => Some(*i),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        };
        n.filter(|n| (min..=max).contains(n))
            .ok_or_else(|| self.bad(key, v, &format!("a whole number from {min} to {max}")))
    }

    fn table<'v>(&self, key: &str, v: &'v Value) -> Result<&'v Table, ConfigError> {
        v.as_table().ok_or_else(|| self.bad(key, v, "a table"))
    }

    fn mount(&mut self, v: &Value, cfg: &mut Config) -> Result<(), ConfigError> {
        let m = &mut cfg.mount;
        let (mut lower, mut upper) = (m.port_range.start, m.port_range.end);
        for (k, v) in self.table("mount", v)? {
            let key = format!("mount.{k}");
            let key = key.as_str();
            let before = self.warnings.len();
            match k.as_str() {
                "dns_name_format" => {
                    let s = self.string(key, v)?;
                    if !s.contains("{fs_id}") {
                        return Err(self.bad(key, v, "a format that includes {fs_id}"));
                    }
                    m.dns_name_format = s;
                }
                "dns_name_suffix" => m.dns_name_suffix = self.string(key, v)?,
                "region" => m.region = Some(self.string(key, v)?),
                "stunnel_cafile" => m.stunnel_cafile = Some(PathBuf::from(self.string(key, v)?)),
                "stunnel_check_cert_hostname" => {
                    m.stunnel_check_cert_hostname = self.bool(key, v)?
                }
                "stunnel_check_cert_validity" => {
                    m.stunnel_check_cert_validity = self.bool(key, v)?
                }
                "fips_mode_enabled" => m.fips_mode_enabled = self.bool(key, v)?,
                "port_range_lower_bound" => lower = self.int(key, v, 1, 65535)? as u16,
                "port_range_upper_bound" => upper = self.int(key, v, 1, 65535)? as u16,
                "optimize_readahead" => m.optimize_readahead = self.bool(key, v)?,
                "fall_back_to_mount_target_ip_address_enabled" => {
                    m.fall_back_to_mount_target_ip_address_enabled = self.bool(key, v)?
                }
                "disable_fetch_ec2_metadata_token" => {
                    m.disable_fetch_ec2_metadata_token = self.bool(key, v)?
                }
                "retry_nfs_mount_command" => m.retry_nfs_mount_command = self.bool(key, v)?,
                "retry_nfs_mount_command_count" => {
                    m.retry_nfs_mount_command_count = self.int(key, v, 1, 100)? as u32
                }
                "retry_nfs_mount_command_timeout_sec" => {
                    m.retry_nfs_mount_command_timeout_sec = self.int(key, v, 1, 3600)? as u64
                }
                "instance_metadata_url" => m.instance_metadata_url = self.string(key, v)?,
                "stunnel_debug_enabled" | "stunnel_logs_file" => self.warn(format!(
                    "{key} is a stunnel setting and is ignored: the tunnel logs to efs-tunnel.log"
                )),
                region if v.is_table() => {
                    let mut rc = cfg.regions.get(region).cloned().unwrap_or_default();
                    for (rk, rv) in self.table(key, v)? {
                        let rkey = format!("{key}.{rk}");
                        match rk.as_str() {
                            "dns_name_suffix" => rc.dns_name_suffix = Some(self.string(&rkey, rv)?),
                            "stunnel_cafile" => {
                                rc.stunnel_cafile = Some(PathBuf::from(self.string(&rkey, rv)?))
                            }
                            _ => {
                                self.unknown(&rkey);
                                continue;
                            }
                        }
                        self.applied.insert(rkey);
                    }
                    cfg.regions.insert(region.to_string(), rc);
                }
                _ => self.unknown(key),
            }
            if self.warnings.len() == before && !v.is_table() {
                self.applied.insert(key.to_string());
            }
        }
        m.port_range = lower..upper;
        Ok(())
    }

    fn watchdog(&mut self, v: &Value, w: &mut WatchdogConfig) -> Result<(), ConfigError> {
        for (k, v) in self.table("mount-watchdog", v)? {
            let key = format!("mount-watchdog.{k}");
            let key = key.as_str();
            let before = self.warnings.len();
            match k.as_str() {
                "enabled" => w.enabled = self.bool(key, v)?,
                "poll_interval_sec" => w.poll_interval_sec = self.int(key, v, 1, 3600)? as u64,
                "unmount_count_for_consistency" => {
                    w.unmount_count_for_consistency = self.int(key, v, 0, 1000)? as u32
                }
                "unmount_grace_period_sec" => {
                    w.unmount_grace_period_sec = self.int(key, v, 0, 86_400)? as u64
                }
                "tls_cert_renewal_interval_min" => {
                    w.tls_cert_renewal_interval_min = self.int(key, v, 1, 1440)? as u64
                }
                "stunnel_health_check_enabled" => {
                    w.stunnel_health_check_enabled = self.bool(key, v)?
                }
                "stunnel_health_check_interval_min" => {
                    w.stunnel_health_check_interval_min = self.int(key, v, 1, 1440)? as u64
                }
                "stunnel_health_check_command_timeout_sec" => {
                    w.stunnel_health_check_command_timeout_sec = self.int(key, v, 1, 3600)? as u64
                }
                _ => self.unknown(key),
            }
            if self.warnings.len() == before {
                self.applied.insert(key.to_string());
            }
        }
        Ok(())
    }

    fn paths(&mut self, v: &Value, p: &mut Paths) -> Result<(), ConfigError> {
        for (k, v) in self.table("paths", v)? {
            let key = format!("paths.{k}");
            let before = self.warnings.len();
            let path = || self.string(&key, v).map(PathBuf::from);
            match k.as_str() {
                "state_dir" => p.state_dir = path()?,
                "log_dir" => p.log_dir = path()?,
                "mount_nfs" => p.mount_nfs = path()?,
                "systemctl" => p.systemctl = path()?,
                "systemd_run_dir" => p.systemd_run_dir = path()?,
                "mountinfo" => p.mountinfo = path()?,
                "nfsfs" => p.nfsfs = path()?,
                "tunnel" => p.tunnel = path()?,
                "sysfs_bdi" => p.sysfs_bdi = path()?,
                _ => self.unknown(&key),
            }
            if self.warnings.len() == before {
                self.applied.insert(key);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let w = cfg.warnings.join("\n");
        assert!(w.contains("unknown key colour"), "{w}");
        assert!(w.contains("unknown key mount.portrange"), "{w}");
        assert!(w.contains("unknown key mount-watchdog.enable"), "{w}");
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
                get("logging_level").source
            ),
            ("\"debug\"", "file")
        );
        assert_eq!(get("mount.region").source, "file");
        assert_eq!(get("mount.port_range_lower_bound").source, "default");
        assert_eq!(get("mount.xx-test-1.dns_name_suffix").source, "file");
        assert_eq!(
            get("mount.cn-north-1.dns_name_suffix").source,
            "built-in region default"
        );
    }

    #[test]
    fn paths_can_all_be_moved() {
        let cfg = parse(
            "[paths]\nstate_dir = \"/t/run\"\nlog_dir = \"/t/log\"\nmount_nfs = \"/t/mount.nfs4\"\n\
             systemctl = \"/t/systemctl\"\nsystemd_run_dir = \"/t/systemd\"\nmountinfo = \"/t/mountinfo\"\ntunnel = \"/t/efs-tunnel\"\n\
             sysfs_bdi = \"/t/bdi\"\n",
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
            &cfg.paths.sysfs_bdi,
        ] {
            assert!(p.starts_with("/t"), "{p:?}");
        }
    }
}
