//! The one table of configuration keys: [`KEYS`]. Each entry is a key's section, name,
//! type and range, default, one-line doc, which programs it changes and whether it is
//! only accepted for compatibility; and typed access to the [`Config`] field it fills.
//!
//! Everything else is derived from this table, the way ripgrep keeps one definition per
//! flag: the parser ([`Config::parse`] looks keys up here), the defaults
//! ([`Config::default`] applies every entry's default), `efs-utils config check`'s rows
//! ([`Config::settings`]), the key list of `man/efs-utils.toml.5` ([`man_key_list`]) and
//! the whole shipped `config/efs-utils.toml` ([`shipped_toml`]). Tests compare both files
//! with what this module renders, and name any key one of them lacks or has extra;
//! `EFS_UTILS_BLESS=1 cargo test -p efs-config` rewrites them after a change here.
//!
//! Decisions worth keeping:
//! * The table holds typed accessors (`fn` pointers into the struct), not a macro that
//!   generates the struct: the typed [`Config`] that every program reads keeps its
//!   nested layout (`cfg.mount.port_range` is two keys in one `Range`) and field types.
//! * Where a key lives is in its [`At`], and its type is the payload of that variant: a
//!   per-region key can only have per-region accessors, a boolean only a boolean default.
//! * [`Effect::NoneYet`] marks keys accepted for compatibility that change nothing yet;
//!   `config check` and `config import` say "accepted, no effect" for them.
//! * efs-tunnel never reads the file: mount.efs passes it what it needs. [`Effect`] names
//!   the programs whose behaviour a key changes, the tunnel included.
//! * The shipped file sets only `[paths]` (the install layout, which `make install`
//!   rewrites); every other key is its commented default, so that it never masks a value
//!   of the incumbent's `efs-utils.conf` read under it. Hence `optimize_readahead`'s
//!   built-in default is `true`, the value amazon-efs-utils ships (its code's is false).

use std::fmt;
use std::path::{Path, PathBuf};

use log::LevelFilter;
use toml::Value;

use crate::config::{default_regions, Config, KernelTls, PartitionMultiplexing, RegionConfig};
use crate::logging;

/// Where a key is written in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Section {
    /// Top-level keys: the incumbent's `[DEFAULT]` section.
    Top,
    Mount,
    /// `[mount.<region>]`.
    Region,
    Watchdog,
    /// `[client-info]`: what the client certificate says about this client.
    ClientInfo,
    Paths,
}

impl Section {
    pub const ALL: [Section; 6] = [
        Section::Top,
        Section::Mount,
        Section::Region,
        Section::Watchdog,
        Section::ClientInfo,
        Section::Paths,
    ];

    /// The TOML table name of a section with one table (`None` for top-level keys).
    pub fn table(self) -> Option<&'static str> {
        match self {
            Section::Top => None,
            Section::Mount => Some("mount"),
            Section::Region => Some("mount.<region>"),
            Section::Watchdog => Some("mount-watchdog"),
            Section::ClientInfo => Some("client-info"),
            Section::Paths => Some("paths"),
        }
    }

    /// The section whose one table is called `name` (`mount`, `mount-watchdog`, `paths`).
    pub fn named(name: &str) -> Option<Section> {
        [
            Section::Mount,
            Section::Watchdog,
            Section::ClientInfo,
            Section::Paths,
        ]
        .into_iter()
        .find(|s| s.table() == Some(name))
    }

    fn title(self) -> String {
        match self.table() {
            None => "Top-level keys".into(),
            Some(t) => format!("[{t}]"),
        }
    }
}

/// A program whose behaviour a key changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Program {
    MountEfs,
    Tunnel,
    Watchdog,
    Status,
}

impl fmt::Display for Program {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Program::MountEfs => "mount.efs",
            Program::Tunnel => "efs-tunnel",
            Program::Watchdog => "amazon-efs-mount-watchdog",
            Program::Status => "efs-utils status",
        })
    }
}

/// What setting a key does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Read by these programs.
    ReadBy(&'static [Program]),
    /// Accepted (the incumbent has it, so converted files keep it) but nothing reads it
    /// yet.
    NoneYet,
}

impl fmt::Display for Effect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Effect::ReadBy(programs) => {
                let names: Vec<String> = programs.iter().map(Program::to_string).collect();
                write!(f, "read by {}", names.join(", "))
            }
            Effect::NoneYet => f.write_str("accepted, no effect"),
        }
    }
}

/// How the shipped `efs-utils.toml` writes a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shipped {
    /// `#key = default`: the built-in default applies, and `config check` says so.
    CommentedDefault,
    /// `key = default`, set: install paths, which `make install PREFIX=` rewrites.
    SetToDefault,
}

/// What a value must be; the type column of the table, and the tail of a bad value's
/// error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    Bool,
    Int {
        min: i64,
        max: i64,
    },
    Text,
    Table,
    Level,
    OctalMode,
    /// A string containing this placeholder.
    Containing(&'static str),
    /// One of these words.
    OneOf(&'static [&'static str]),
    /// A number strictly greater than another key's value.
    Above {
        key: &'static str,
        value: i64,
    },
}

impl fmt::Display for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expected::Bool => f.write_str("true or false"),
            Expected::Int { min, max } => write!(f, "a whole number from {min} to {max}"),
            Expected::Text => f.write_str("a string"),
            Expected::Table => f.write_str("a table"),
            Expected::Level => f.write_str("one of debug, info, warning, error, critical"),
            Expected::OctalMode => f.write_str("an octal mode such as \"750\""),
            Expected::Containing(p) => write!(f, "a format that includes {p}"),
            Expected::OneOf(words) => write!(f, "one of {}", words.join(", ")),
            Expected::Above { key, value } => {
                write!(f, "a value strictly greater than {key} ({value})")
            }
        }
    }
}

/// Why a value was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalid {
    /// Not of the key's type or range.
    Expected(Expected),
    /// A state directory mode that grants group or world write.
    WritableByOthers { default: u32 },
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Invalid::Expected(e) => write!(f, "is invalid: expected {e}"),
            Invalid::WritableByOthers { default } => write!(
                f,
                "would make the state directory writable by other users; use {default:o} (the default) or stricter"
            ),
        }
    }
}

/// A key's type, default and typed access to its field.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Bool {
        default: bool,
        get: fn(&Config) -> bool,
        set: fn(&mut Config, bool),
    },
    /// The range is inclusive; the setter may cast to the field's type, which holds it.
    Int {
        min: i64,
        max: i64,
        default: i64,
        get: fn(&Config) -> i64,
        set: fn(&mut Config, i64),
    },
    Text {
        default: &'static str,
        /// A placeholder the value must contain.
        must_contain: Option<&'static str>,
        get: fn(&Config) -> &str,
        set: fn(&mut Config, String),
    },
    /// One word of `choices`; the setter is only given one of them.
    Choice {
        default: &'static str,
        choices: &'static [&'static str],
        get: fn(&Config) -> &'static str,
        set: fn(&mut Config, &str),
    },
    /// A string that is unset by default; `unset` says what unset means.
    OptText {
        unset: &'static str,
        get: fn(&Config) -> Option<&str>,
        set: fn(&mut Config, String),
    },
    Path {
        default: &'static str,
        get: fn(&Config) -> &Path,
        set: fn(&mut Config, PathBuf),
    },
    OptPath {
        unset: &'static str,
        get: fn(&Config) -> Option<&Path>,
        set: fn(&mut Config, PathBuf),
    },
    Level {
        default: LevelFilter,
        get: fn(&Config) -> LevelFilter,
        set: fn(&mut Config, LevelFilter),
    },
    /// An octal directory mode that may not grant group or world write.
    Mode {
        default: u32,
        get: fn(&Config) -> u32,
        set: fn(&mut Config, u32),
    },
}

/// A `[mount.<region>]` key: unset unless the file or the built-in region list sets it.
#[derive(Debug, Clone, Copy)]
pub enum RegionKind {
    Text {
        get: fn(&RegionConfig) -> Option<&str>,
        set: fn(&mut RegionConfig, String),
    },
    Path {
        get: fn(&RegionConfig) -> Option<&Path>,
        set: fn(&mut RegionConfig, PathBuf),
    },
}

/// Where a key lives, with its type.
#[derive(Debug, Clone, Copy)]
pub enum At {
    Top(Kind),
    Mount(Kind),
    Region(RegionKind),
    Watchdog(Kind),
    ClientInfo(Kind),
    Paths(Kind),
}

/// One configuration key.
#[derive(Debug, Clone, Copy)]
pub struct Key {
    pub name: &'static str,
    pub at: At,
    /// One line for the man page and the shipped file.
    pub doc: &'static str,
    pub effect: Effect,
    pub shipped: Shipped,
}

impl Key {
    pub fn section(&self) -> Section {
        match self.at {
            At::Top(_) => Section::Top,
            At::Mount(_) => Section::Mount,
            At::Region(_) => Section::Region,
            At::Watchdog(_) => Section::Watchdog,
            At::ClientInfo(_) => Section::ClientInfo,
            At::Paths(_) => Section::Paths,
        }
    }

    fn global(&self) -> Option<&Kind> {
        match &self.at {
            At::Top(k) | At::Mount(k) | At::Watchdog(k) | At::ClientInfo(k) | At::Paths(k) => {
                Some(k)
            }
            At::Region(_) => None,
        }
    }

    /// The dotted name `config check` shows: `mount.region`; `mount.<region>.x` for
    /// per-region keys.
    pub fn dotted(&self) -> String {
        match self.section().table() {
            None => self.name.to_string(),
            Some(t) => format!("{t}.{}", self.name),
        }
    }

    /// The key's type and range.
    pub fn expected(&self) -> Expected {
        match &self.at {
            At::Region(_) => Expected::Text,
            At::Top(k) | At::Mount(k) | At::Watchdog(k) | At::ClientInfo(k) | At::Paths(k) => {
                k.expected()
            }
        }
    }

    /// The built-in default as TOML text; `None` when unset by default (and for
    /// per-region keys, whose defaults are per region).
    pub fn default_toml(&self) -> Option<String> {
        let kind = self.global()?;
        Some(match *kind {
            Kind::Bool { default, .. } => default.to_string(),
            Kind::Int { default, .. } => default.to_string(),
            Kind::Text { default, .. }
            | Kind::Path { default, .. }
            | Kind::Choice { default, .. } => text(default),
            Kind::OptText { .. } | Kind::OptPath { .. } => return None,
            Kind::Level { default, .. } => level_text(default),
            Kind::Mode { default, .. } => text(&format!("{default:o}")),
        })
    }

    /// What an unset value means, for keys unset by default.
    pub fn unset_means(&self) -> Option<&'static str> {
        match self.global()? {
            Kind::OptText { unset, .. } | Kind::OptPath { unset, .. } => Some(unset),
            _ => None,
        }
    }
}

impl Kind {
    fn expected(&self) -> Expected {
        match self {
            Kind::Bool { .. } => Expected::Bool,
            Kind::Int { min, max, .. } => Expected::Int {
                min: *min,
                max: *max,
            },
            Kind::Text {
                must_contain: Some(p),
                ..
            } => Expected::Containing(p),
            Kind::Text { .. } | Kind::OptText { .. } | Kind::Path { .. } | Kind::OptPath { .. } => {
                Expected::Text
            }
            Kind::Level { .. } => Expected::Level,
            Kind::Mode { .. } => Expected::OctalMode,
            Kind::Choice { choices, .. } => Expected::OneOf(choices),
        }
    }

    fn apply_default(&self, cfg: &mut Config) {
        match *self {
            Kind::Bool { default, set, .. } => set(cfg, default),
            Kind::Int { default, set, .. } => set(cfg, default),
            Kind::Text { default, set, .. } => set(cfg, default.to_string()),
            Kind::Choice { default, set, .. } => set(cfg, default),
            Kind::Path { default, set, .. } => set(cfg, default.into()),
            Kind::OptText { .. } | Kind::OptPath { .. } => {}
            Kind::Level { default, set, .. } => set(cfg, default),
            Kind::Mode { default, set, .. } => set(cfg, default),
        }
    }

    /// Checks `v` against the key's type and range and stores it.
    pub(crate) fn apply(&self, cfg: &mut Config, v: &Value) -> Result<(), Invalid> {
        let wrong = || Invalid::Expected(self.expected());
        match *self {
            Kind::Bool { set, .. } => set(cfg, as_bool(v).ok_or_else(wrong)?),
            Kind::Int { min, max, set, .. } => set(
                cfg,
                as_int(v)
                    .filter(|n| (min..=max).contains(n))
                    .ok_or_else(wrong)?,
            ),
            Kind::Text {
                must_contain, set, ..
            } => {
                let s = v
                    .as_str()
                    .filter(|s| must_contain.is_none_or(|p| s.contains(p)))
                    .ok_or_else(wrong)?;
                set(cfg, s.to_string())
            }
            Kind::Choice { choices, set, .. } => {
                let word = v
                    .as_str()
                    .map(|s| s.trim().to_ascii_lowercase())
                    .filter(|s| choices.contains(&s.as_str()))
                    .ok_or_else(wrong)?;
                set(cfg, &word)
            }
            Kind::OptText { set, .. } => set(cfg, v.as_str().ok_or_else(wrong)?.to_string()),
            Kind::Path { set, .. } | Kind::OptPath { set, .. } => {
                set(cfg, v.as_str().ok_or_else(wrong)?.into())
            }
            Kind::Level { set, .. } => set(
                cfg,
                v.as_str()
                    .and_then(logging::parse_level)
                    .ok_or_else(wrong)?,
            ),
            Kind::Mode { default, set, .. } => {
                let mode = as_mode(v).ok_or_else(wrong)?;
                if mode & 0o022 != 0 {
                    return Err(Invalid::WritableByOthers { default });
                }
                set(cfg, mode)
            }
        }
        Ok(())
    }

    /// The effective value as TOML text (or what unset means).
    fn show(&self, cfg: &Config) -> String {
        let path = |p: &Path| text(&p.to_string_lossy());
        match *self {
            Kind::Bool { get, .. } => get(cfg).to_string(),
            Kind::Int { get, .. } => get(cfg).to_string(),
            Kind::Text { get, .. } => text(get(cfg)),
            Kind::Choice { get, .. } => text(get(cfg)),
            Kind::OptText { get, unset, .. } => {
                get(cfg).map(text).unwrap_or_else(|| unset_text(unset))
            }
            Kind::Path { get, .. } => path(get(cfg)),
            Kind::OptPath { get, unset, .. } => {
                get(cfg).map(path).unwrap_or_else(|| unset_text(unset))
            }
            Kind::Level { get, .. } => level_text(get(cfg)),
            Kind::Mode { get, .. } => text(&format!("{:o}", get(cfg))),
        }
    }
}

impl RegionKind {
    pub(crate) fn apply(&self, rc: &mut RegionConfig, v: &Value) -> Result<(), Invalid> {
        let s = v
            .as_str()
            .ok_or(Invalid::Expected(Expected::Text))?
            .to_string();
        match *self {
            RegionKind::Text { set, .. } => set(rc, s),
            RegionKind::Path { set, .. } => set(rc, s.into()),
        }
        Ok(())
    }

    /// The value as TOML text, if the region sets it.
    fn show(&self, rc: &RegionConfig) -> Option<String> {
        match *self {
            RegionKind::Text { get, .. } => get(rc).map(text),
            RegionKind::Path { get, .. } => get(rc).map(|p| text(&p.to_string_lossy())),
        }
    }
}

fn text(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

fn unset_text(unset: &str) -> String {
    format!("(unset: {unset})")
}

fn level_text(l: LevelFilter) -> String {
    text(&l.to_string().to_lowercase())
}

/// A boolean, or the incumbent's INI spellings in a string (for files converted by hand).
fn as_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Boolean(b) => Some(*b),
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "true" | "yes" | "1" => Some(true),
            "false" | "no" | "0" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// An integer, or one in a string.
fn as_int(v: &Value) -> Option<i64> {
    match v {
        Value::Integer(i) => Some(*i),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// An octal mode, written as a string (`"750"`) or as digits (`750`).
fn as_mode(v: &Value) -> Option<u32> {
    let digits = match v {
        Value::Integer(i) => i.to_string(),
        Value::String(s) => s.trim().to_string(),
        _ => return None,
    };
    u32::from_str_radix(&digits, 8).ok().filter(|m| *m <= 0o777)
}

use Program::{MountEfs, Status, Tunnel, Watchdog};

const MOUNT: Effect = Effect::ReadBy(&[MountEfs]);
const MOUNT_AND_TUNNEL: Effect = Effect::ReadBy(&[MountEfs, Tunnel]);
const WATCHDOG: Effect = Effect::ReadBy(&[Watchdog]);
/// Keys of the client certificate and credentials: made by mount.efs, renewed by the
/// watchdog.
const MOUNT_AND_WATCHDOG: Effect = Effect::ReadBy(&[MountEfs, Watchdog]);

/// Every key, in the order of the file, the man page and `config check`.
/// The words of the choice key `name` ([`Kind::Choice`]); none for any other name (a
/// test checks every flag that asks).
pub fn choices(name: &str) -> &'static [&'static str] {
    KEYS.iter()
        .find(|k| k.name == name)
        .and_then(|k| match k.at {
            At::Top(Kind::Choice { choices, .. })
            | At::Mount(Kind::Choice { choices, .. })
            | At::Watchdog(Kind::Choice { choices, .. })
            | At::ClientInfo(Kind::Choice { choices, .. })
            | At::Paths(Kind::Choice { choices, .. }) => Some(choices),
            _ => None,
        })
        .unwrap_or(&[])
}

pub static KEYS: &[Key] = &[
    // Top level: the incumbent's [DEFAULT].
    Key {
        name: "logging_level",
        at: At::Top(Kind::Level {
            default: LevelFilter::Info,
            get: |c| c.logging_level,
            set: |c, v| c.logging_level = v,
        }),
        doc: "Level of mount.log, mount-watchdog.log and efs-tunnel.log: debug, info, warning, error or critical.",
        effect: Effect::ReadBy(&[MountEfs, Tunnel, Watchdog]),
        shipped: Shipped::CommentedDefault,
    },
    Key {
        name: "logging_max_bytes",
        at: At::Top(Kind::Int {
            min: 0,
            max: u32::MAX as i64,
            default: 1_048_576,
            get: |c| c.logging_max_bytes as i64,
            set: |c, v| c.logging_max_bytes = v as u64,
        }),
        doc: "Size at which each log file is rotated.",
        effect: Effect::ReadBy(&[MountEfs, Tunnel, Watchdog]),
        shipped: Shipped::CommentedDefault,
    },
    Key {
        name: "logging_file_count",
        at: At::Top(Kind::Int {
            min: 0,
            max: 1000,
            default: 10,
            get: |c| c.logging_file_count as i64,
            set: |c, v| c.logging_file_count = v as u32,
        }),
        doc: "Rotated log files kept.",
        effect: Effect::ReadBy(&[MountEfs, Tunnel, Watchdog]),
        shipped: Shipped::CommentedDefault,
    },
    Key {
        name: "state_file_dir_mode",
        at: At::Top(Kind::Mode {
            default: 0o750,
            get: |c| c.state_file_dir_mode,
            set: |c, v| c.state_file_dir_mode = v,
        }),
        doc: "Octal mode of the state directory; group or world write is refused.",
        effect: Effect::ReadBy(&[MountEfs, Watchdog]),
        shipped: Shipped::CommentedDefault,
    },
    // [mount]
    Key {
        name: "dns_name_format",
        at: At::Mount(Kind::Text {
            default: "{az}.{fs_id}.efs.{region}.{dns_name_suffix}",
            must_contain: Some("{fs_id}"),
            get: |c| &c.mount.dns_name_format,
            set: |c, v| c.mount.dns_name_format = v,
        }),
        doc: "The file system's DNS name; {fs_id}, {az}, {region} and {dns_name_suffix} are replaced.",
        effect: MOUNT,
        shipped: Shipped::CommentedDefault,
    },
    Key {
        name: "dns_name_suffix",
        at: At::Mount(Kind::Text {
            default: "amazonaws.com",
            must_contain: None,
            get: |c| &c.mount.dns_name_suffix,
            set: |c, v| c.mount.dns_name_suffix = v,
        }),
        doc: "{dns_name_suffix} in dns_name_format, unless the region's own section sets it.",
        effect: MOUNT,
        shipped: Shipped::CommentedDefault,
    },
    Key {
        name: "region",
        at: At::Mount(Kind::OptText {
            unset: "from AWS_REGION, then instance metadata",
            get: |c| c.mount.region.as_deref(),
            set: |c, v| c.mount.region = Some(v),
        }),
        doc: "The file system's region, when mounting from on-premises or across regions.",
        effect: MOUNT,
        shipped: Shipped::CommentedDefault,
    },
    Key {
        name: "stunnel_cafile",
        at: At::Mount(Kind::OptPath {
            unset: "/etc/amazon/efs/efs-utils.crt if installed, else built-in roots",
            get: |c| c.mount.stunnel_cafile.as_deref(),
            set: |c, v| c.mount.stunnel_cafile = Some(v),
        }),
        doc: "CA bundle the mount target's certificate must chain to; unset, /etc/amazon/efs/efs-utils.crt (Amazon Root CA 1-4, installed with efs-utils) if it exists, else efs-tunnel's built-in roots.",
        effect: MOUNT_AND_TUNNEL,
        shipped: Shipped::CommentedDefault,
    },
    Key {
        name: "stunnel_check_cert_hostname",
        at: At::Mount(Kind::Bool {
            default: true,
            get: |c| c.mount.stunnel_check_cert_hostname,
            set: |c, v| c.mount.stunnel_check_cert_hostname = v,
        }),
        doc: "Check that the certificate matches the file system's name; false is logged as a warning at every tunnel start, and the chain is verified regardless.",
        effect: MOUNT_AND_TUNNEL,
        shipped: Shipped::CommentedDefault,
    },
    Key {
        name: "stunnel_check_cert_validity",
        at: At::Mount(Kind::Bool {
            default: false,
            get: |c| c.mount.stunnel_check_cert_validity,
            set: |c, v| c.mount.stunnel_check_cert_validity = v,
        }),
        doc: "OCSP; not supported yet: true is refused at mount time (unless -o noocsp).",
        effect: MOUNT,
        shipped: Shipped::CommentedDefault,
    },
    Key {
        name: "fips_mode_enabled",
        at: At::Mount(Kind::Bool {
            default: false,
            get: |c| c.mount.fips_mode_enabled,
            set: |c, v| c.mount.fips_mode_enabled = v,
        }),
        doc: "Restrict TLS to FIPS-approved algorithms (efs-tunnel --version says whether the binary carries the validated AWS-LC module).",
        effect: MOUNT_AND_TUNNEL,
        shipped: Shipped::CommentedDefault,
    },
    Key {
        name: "port_range_lower_bound",
        at: At::Mount(Kind::Int {
            min: 1,
            max: 65535,
            default: 20049,
            get: |c| c.mount.port_range.start as i64,
            set: |c, v| c.mount.port_range.start = v as u16,
        }),
        doc: "First local port a tunnel may listen on.",
        effect: MOUNT,
        shipped: Shipped::CommentedDefault,
    },
    Key {
        name: "port_range_upper_bound",
        at: At::Mount(Kind::Int {
            min: 1,
            max: 65535,
            default: 21049,
            get: |c| c.mount.port_range.end as i64,
            set: |c, v| c.mount.port_range.end = v as u16,
        }),
        doc: "End of the tunnels' local port range (exclusive); must exceed port_range_lower_bound.",
        effect: MOUNT,
        shipped: Shipped::CommentedDefault,
    },
    Key {
        name: "optimize_readahead",
        at: At::Mount(Kind::Bool {
            default: true,
            get: |c| c.mount.optimize_readahead,
            set: |c, v| c.mount.optimize_readahead = v,
        }),
        doc: "Raise the mount's read_ahead_kb after mounting (Linux 5.4+ defaults NFS to 128 KiB, too little for EFS); on, as amazon-efs-utils ships it.",
        effect: MOUNT,
        shipped: Shipped::CommentedDefault,
    },
    Key {
        name: "fall_back_to_mount_target_ip_address_enabled",
        at: At::Mount(Kind::Bool {
            default: true,
            get: |c| c.mount.fall_back_to_mount_target_ip_address_enabled,
            set: |c, v| c.mount.fall_back_to_mount_target_ip_address_enabled = v,
        }),
        doc: "When the file system's DNS name does not resolve, ask the EFS API for the IP address of the mount target in this client's AZ (as amazon-efs-utils does); the certificate is still checked against the DNS name.",
        effect: MOUNT,
        shipped: Shipped::CommentedDefault,
    },
    Key {
        name: "disable_fetch_ec2_metadata_token",
        at: At::Mount(Kind::Bool {
            default: false,
            get: |c| c.mount.disable_fetch_ec2_metadata_token,
            set: |c, v| c.mount.disable_fetch_ec2_metadata_token = v,
        }),
        doc: "Ask instance metadata without an IMDSv2 token.",
        effect: MOUNT_AND_WATCHDOG,
        shipped: Shipped::CommentedDefault,
    },
    Key {
        name: "retry_nfs_mount_command",
        at: At::Mount(Kind::Bool {
            default: true,
            get: |c| c.mount.retry_nfs_mount_command,
            set: |c, v| c.mount.retry_nfs_mount_command = v,
        }),
        doc: "Retry mount.nfs4 when it fails with \"reset by peer\" or does not finish in time.",
        effect: MOUNT,
        shipped: Shipped::CommentedDefault,
    },
    Key {
        name: "retry_nfs_mount_command_count",
        at: At::Mount(Kind::Int {
            min: 1,
            max: 100,
            default: 3,
            get: |c| c.mount.retry_nfs_mount_command_count as i64,
            set: |c, v| c.mount.retry_nfs_mount_command_count = v as u32,
        }),
        doc: "Attempts in all; all but the last are cut off after retry_nfs_mount_command_timeout_sec.",
        effect: MOUNT,
        shipped: Shipped::CommentedDefault,
    },
    Key {
        name: "retry_nfs_mount_command_timeout_sec",
        at: At::Mount(Kind::Int {
            min: 1,
            max: 3600,
            default: 15,
            get: |c| c.mount.retry_nfs_mount_command_timeout_sec as i64,
            set: |c, v| c.mount.retry_nfs_mount_command_timeout_sec = v as u64,
        }),
        doc: "Seconds an attempt of mount.nfs4 may take before it is retried.",
        effect: MOUNT,
        shipped: Shipped::CommentedDefault,
    },
    Key {
        name: "tunnel_peer_check_enabled",
        at: At::Mount(Kind::Bool {
            default: true,
            get: |c| c.mount.tunnel_peer_check_enabled,
            set: |c, v| c.mount.tunnel_peer_check_enabled = v,
        }),
        doc: "Tunnels serve only sockets root holds (the kernel's NFS client): any other local user could otherwise send NFS requests with the mount's credentials. Off only for an NFS client that runs as another user.",
        effect: MOUNT_AND_TUNNEL,
        shipped: Shipped::CommentedDefault,
    },
    Key {
        name: "tunnel_dead_upstream_timeout_sec",
        at: At::Mount(Kind::Int {
            min: 0,
            max: 86400,
            default: 30,
            get: |c| c.mount.tunnel_dead_upstream_timeout_sec as i64,
            set: |c, v| c.mount.tunnel_dead_upstream_timeout_sec = v as u64,
        }),
        doc: "Close a connection whose mount target sends nothing this long while NFS calls are outstanding, so that the hard mount reconnects (also TCP_USER_TIMEOUT); 0: never. Idle connections are never closed.",
        effect: MOUNT_AND_TUNNEL,
        shipped: Shipped::CommentedDefault,
    },
    Key {
        name: "partition_multiplexing",
        at: At::Mount(Kind::Choice {
            default: "auto",
            choices: &["auto", "off"],
            get: |c| c.mount.partition_multiplexing.as_str(),
            set: |c, v| c.mount.partition_multiplexing = PartitionMultiplexing::from_word(v),
        }),
        doc: "EFS partition multiplexing, as efs-proxy does it: auto binds each tunnel connection to a server partition and, under load, spreads NFS requests over up to 5 TLS connections to it (a server that does not answer the bind keeps one connection); off: one connection, no bind call. A bound connection that is not scaled up costs what an unbound one costs (docs/performance.md); kernel_tls applies to bound connections as to the others.",
        effect: MOUNT_AND_TUNNEL,
        shipped: Shipped::CommentedDefault,
    },
    Key {
        name: "kernel_tls",
        at: At::Mount(Kind::Choice {
            default: "auto",
            choices: &["auto", "on", "off"],
            get: |c| c.mount.kernel_tls.as_str(),
            set: |c, v| c.mount.kernel_tls = KernelTls::from_word(v),
        }),
        doc: "Kernel TLS: auto hands each tunnel connection's TLS records to the kernel after rustls has made and verified the handshake, when the kernel has the tls module and does the connection's cipher in hardware (/proc/crypto); on: also with the kernel's software ciphers; off: TLS in user space only. Connections bound to an EFS partition (partition_multiplexing) go to the kernel too. The status shows which connections use it.",
        effect: MOUNT_AND_TUNNEL,
        shipped: Shipped::CommentedDefault,
    },
    Key {
        name: "instance_metadata_url",
        at: At::Mount(Kind::Text {
            default: "http://169.254.169.254",
            must_contain: None,
            get: |c| &c.mount.instance_metadata_url,
            set: |c, v| c.mount.instance_metadata_url = v,
        }),
        doc: "Instance metadata service: the region when nothing else names it, and the instance role's credentials (with iam).",
        effect: MOUNT_AND_WATCHDOG,
        shipped: Shipped::CommentedDefault,
    },
    Key {
        name: "ecs_credentials_url",
        at: At::Mount(Kind::Text {
            default: "http://169.254.170.2",
            must_contain: None,
            get: |c| &c.mount.ecs_credentials_url,
            set: |c, v| c.mount.ecs_credentials_url = v,
        }),
        doc: "ECS credential endpoint: base of awscredsuri and AWS_CONTAINER_CREDENTIALS_RELATIVE_URI (with iam).",
        effect: MOUNT_AND_WATCHDOG,
        shipped: Shipped::CommentedDefault,
    },
    Key {
        name: "sts_endpoint_url",
        at: At::Mount(Kind::OptText {
            unset: "https://sts.{region}.{dns_name_suffix}/",
            get: |c| c.mount.sts_endpoint_url.as_deref(),
            set: |c, v| c.mount.sts_endpoint_url = Some(v),
        }),
        doc: "AWS STS endpoint for web identity and AssumeRole credentials (with iam).",
        effect: MOUNT_AND_WATCHDOG,
        shipped: Shipped::CommentedDefault,
    },
    Key {
        name: "efs_endpoint_url",
        at: At::Mount(Kind::OptText {
            unset: "https://elasticfilesystem[-fips].{region}.{dns_name_suffix}/",
            get: |c| c.mount.efs_endpoint_url.as_deref(),
            set: |c, v| c.mount.efs_endpoint_url = Some(v),
        }),
        doc: "EFS API endpoint for DescribeMountTargets, asked only when the DNS name does not resolve (fall_back_to_mount_target_ip_address_enabled).",
        effect: MOUNT,
        shipped: Shipped::CommentedDefault,
    },
    Key {
        name: "ec2_endpoint_url",
        at: At::Mount(Kind::OptText {
            unset: "https://ec2[-fips].{region}.{dns_name_suffix}/",
            get: |c| c.mount.ec2_endpoint_url.as_deref(),
            set: |c, v| c.mount.ec2_endpoint_url = Some(v),
        }),
        doc: "EC2 API endpoint for DescribeAvailabilityZones, asked only by that fallback when the az option names the zone.",
        effect: MOUNT,
        shipped: Shipped::CommentedDefault,
    },
    // [mount.<region>]
    Key {
        name: "dns_name_suffix",
        at: At::Region(RegionKind::Text {
            get: |r| r.dns_name_suffix.as_deref(),
            set: |r, v| r.dns_name_suffix = Some(v),
        }),
        doc: "The DNS name suffix in this region (China and isolated regions are built in).",
        effect: MOUNT,
        shipped: Shipped::CommentedDefault,
    },
    Key {
        name: "stunnel_cafile",
        at: At::Region(RegionKind::Path {
            get: |r| r.stunnel_cafile.as_deref(),
            set: |r, v| r.stunnel_cafile = Some(v),
        }),
        doc: "The CA bundle in this region.",
        effect: MOUNT_AND_TUNNEL,
        shipped: Shipped::CommentedDefault,
    },
    // [mount-watchdog]
    Key {
        name: "enabled",
        at: At::Watchdog(Kind::Bool {
            default: true,
            get: |c| c.watchdog.enabled,
            set: |c, v| c.watchdog.enabled = v,
        }),
        doc: "false: the watchdog exits at start, and dead tunnels are not restarted.",
        effect: WATCHDOG,
        shipped: Shipped::CommentedDefault,
    },
    Key {
        name: "poll_interval_sec",
        at: At::Watchdog(Kind::Int {
            min: 1,
            max: 3600,
            default: 1,
            get: |c| c.watchdog.poll_interval_sec as i64,
            set: |c, v| c.watchdog.poll_interval_sec = v as u64,
        }),
        doc: "Seconds between the watchdog's checks of tunnels and mounts.",
        effect: WATCHDOG,
        shipped: Shipped::CommentedDefault,
    },
    Key {
        name: "unmount_count_for_consistency",
        at: At::Watchdog(Kind::Int {
            min: 0,
            max: 1000,
            default: 5,
            get: |c| c.watchdog.unmount_count_for_consistency as i64,
            set: |c, v| c.watchdog.unmount_count_for_consistency = v as u32,
        }),
        doc: "The incumbent's count of polls a mount must be gone before its tunnel is removed (unmount_grace_period_sec decides here).",
        effect: Effect::NoneYet,
        shipped: Shipped::CommentedDefault,
    },
    Key {
        name: "unmount_grace_period_sec",
        at: At::Watchdog(Kind::Int {
            min: 0,
            max: 86_400,
            default: 30,
            get: |c| c.watchdog.unmount_grace_period_sec as i64,
            set: |c, v| c.watchdog.unmount_grace_period_sec = v as u64,
        }),
        doc: "Seconds after an unmount before its tunnel is stopped and its state removed.",
        effect: WATCHDOG,
        shipped: Shipped::CommentedDefault,
    },
    Key {
        name: "tls_cert_renewal_interval_min",
        at: At::Watchdog(Kind::Int {
            min: 1,
            max: 1440,
            default: 60,
            get: |c| c.watchdog.tls_cert_renewal_interval_min as i64,
            set: |c, v| c.watchdog.tls_cert_renewal_interval_min = v as u64,
        }),
        doc: "Minutes between renewals of each mount's client certificate (iam, accesspoint) by the watchdog; it also renews one that expires within 30 minutes or whose credentials expire within 10.",
        effect: WATCHDOG,
        shipped: Shipped::CommentedDefault,
    },
    Key {
        name: "stunnel_health_check_enabled",
        at: At::Watchdog(Kind::Bool {
            default: true,
            get: |c| c.watchdog.stunnel_health_check_enabled,
            set: |c, v| c.watchdog.stunnel_health_check_enabled = v,
        }),
        doc: "Ask each tunnel periodically whether it answers, and restart one that does not.",
        effect: WATCHDOG,
        shipped: Shipped::CommentedDefault,
    },
    Key {
        name: "stunnel_health_check_interval_min",
        at: At::Watchdog(Kind::Int {
            min: 1,
            max: 1440,
            default: 5,
            get: |c| c.watchdog.stunnel_health_check_interval_min as i64,
            set: |c, v| c.watchdog.stunnel_health_check_interval_min = v as u64,
        }),
        doc: "Minutes between health checks of a tunnel.",
        effect: WATCHDOG,
        shipped: Shipped::CommentedDefault,
    },
    Key {
        name: "stunnel_health_check_command_timeout_sec",
        at: At::Watchdog(Kind::Int {
            min: 1,
            max: 3600,
            default: 30,
            get: |c| c.watchdog.stunnel_health_check_command_timeout_sec as i64,
            set: |c, v| c.watchdog.stunnel_health_check_command_timeout_sec = v as u64,
        }),
        doc: "Seconds a tunnel may take to answer a health check (at most 30 are waited: a tunnel that takes longer is not answering).",
        effect: WATCHDOG,
        shipped: Shipped::CommentedDefault,
    },
    // [client-info]
    Key {
        name: "source",
        at: At::ClientInfo(Kind::OptText {
            unset: "unknown",
            get: |c| c.client_info.source.as_deref(),
            set: |c, v| c.client_info.source = Some(v),
        }),
        doc: "Who mounts, as the client certificate tells EFS (1 to 100 characters, else unknown; the EFS CSI driver writes k8s).",
        effect: MOUNT_AND_WATCHDOG,
        shipped: Shipped::CommentedDefault,
    },
    // [paths]
    Key {
        name: "state_dir",
        at: At::Paths(Kind::Path {
            default: "/var/run/efs",
            get: |c| &c.paths.state_dir,
            set: |c, v| c.paths.state_dir = v,
        }),
        doc: "State files, one per mount.",
        effect: Effect::ReadBy(&[MountEfs, Watchdog, Status]),
        shipped: Shipped::SetToDefault,
    },
    Key {
        name: "log_dir",
        at: At::Paths(Kind::Path {
            default: "/var/log/amazon/efs",
            get: |c| &c.paths.log_dir,
            set: |c, v| c.paths.log_dir = v,
        }),
        doc: "mount.log, mount-watchdog.log and efs-tunnel.log.",
        effect: Effect::ReadBy(&[MountEfs, Tunnel, Watchdog]),
        shipped: Shipped::SetToDefault,
    },
    Key {
        name: "mount_nfs",
        at: At::Paths(Kind::Path {
            default: "/sbin/mount.nfs4",
            get: |c| &c.paths.mount_nfs,
            set: |c, v| c.paths.mount_nfs = v,
        }),
        doc: "The NFS mount program.",
        effect: MOUNT,
        shipped: Shipped::SetToDefault,
    },
    Key {
        name: "systemctl",
        at: At::Paths(Kind::Path {
            default: "systemctl",
            get: |c| &c.paths.systemctl,
            set: |c, v| c.paths.systemctl = v,
        }),
        doc: "Starts the watchdog's unit.",
        effect: MOUNT,
        shipped: Shipped::SetToDefault,
    },
    Key {
        name: "systemd_run_dir",
        at: At::Paths(Kind::Path {
            default: "/run/systemd/system",
            get: |c| &c.paths.systemd_run_dir,
            set: |c, v| c.paths.systemd_run_dir = v,
        }),
        doc: "Exists when systemd is the init system (sd_booted(3) checks the same).",
        effect: MOUNT,
        shipped: Shipped::SetToDefault,
    },
    Key {
        name: "mountinfo",
        at: At::Paths(Kind::Path {
            default: "/proc/self/mountinfo",
            get: |c| &c.paths.mountinfo,
            set: |c, v| c.paths.mountinfo = v,
        }),
        doc: "The mount table.",
        effect: Effect::ReadBy(&[MountEfs, Watchdog, Status]),
        shipped: Shipped::SetToDefault,
    },
    Key {
        name: "nfsfs",
        at: At::Paths(Kind::Path {
            default: "/proc/fs/nfsfs",
            get: |c| &c.paths.nfsfs,
            set: |c, v| c.paths.nfsfs = v,
        }),
        doc: "The kernel NFS client's tables: which transport, and so which tunnel, each mount uses.",
        effect: Effect::ReadBy(&[MountEfs, Watchdog, Status]),
        shipped: Shipped::SetToDefault,
    },
    Key {
        name: "private_key",
        at: At::Paths(Kind::Path {
            default: "/etc/amazon/efs/privateKey.pem",
            get: |c| &c.paths.private_key,
            set: |c, v| c.paths.private_key = v,
        }),
        doc: "The host's RSA key for client certificates (iam, accesspoint): made once, mode 0400.",
        effect: MOUNT_AND_WATCHDOG,
        shipped: Shipped::SetToDefault,
    },
    Key {
        name: "tunnel",
        at: At::Paths(Kind::Path {
            default: "/usr/bin/efs-tunnel",
            get: |c| &c.paths.tunnel,
            set: |c, v| c.paths.tunnel = v,
        }),
        doc: "The TLS tunnel program.",
        effect: MOUNT_AND_WATCHDOG,
        shipped: Shipped::SetToDefault,
    },
    Key {
        name: "renew_cert",
        at: At::Paths(Kind::Path {
            default: "/usr/bin/efs-renew-cert",
            get: |c| &c.paths.renew_cert,
            set: |c, v| c.paths.renew_cert = v,
        }),
        doc: "The program the watchdog runs to renew a client certificate (iam, accesspoint), one process per renewal.",
        effect: WATCHDOG,
        shipped: Shipped::SetToDefault,
    },
    Key {
        name: "sysfs_bdi",
        at: At::Paths(Kind::Path {
            default: "/sys/class/bdi",
            get: |c| &c.paths.sysfs_bdi,
            set: |c, v| c.paths.sysfs_bdi = v,
        }),
        doc: "Backing-device settings (read_ahead_kb) of mounts.",
        effect: MOUNT,
        shipped: Shipped::SetToDefault,
    },
];

/// The key `name` of a section with one table (not `[mount.<region>]`), with its kind.
pub(crate) fn find(section: Section, name: &str) -> Option<(&'static Key, &'static Kind)> {
    KEYS.iter()
        .filter(|k| k.section() == section && k.name == name)
        .find_map(|k| k.global().map(|kind| (k, kind)))
}

/// The `[mount.<region>]` key `name`, with its kind.
pub(crate) fn find_region(name: &str) -> Option<(&'static Key, &'static RegionKind)> {
    KEYS.iter().find_map(|k| match &k.at {
        At::Region(rk) if k.name == name => Some((k, rk)),
        _ => None,
    })
}

/// Every key's built-in default into `cfg`.
pub(crate) fn apply_defaults(cfg: &mut Config) {
    for kind in KEYS.iter().filter_map(Key::global) {
        kind.apply_default(cfg);
    }
}

/// Every effective value as (key, dotted name, TOML text), in table order; the
/// `[mount.<region>]` keys stand where the first of them does, grouped by region.
pub(crate) fn rows(cfg: &Config) -> Vec<(&'static Key, String, String)> {
    let mut out = Vec::new();
    let mut regions_done = false;
    for key in KEYS {
        match &key.at {
            At::Region(_) if regions_done => {}
            At::Region(_) => {
                regions_done = true;
                for (region, rc) in &cfg.regions {
                    for rkey in in_section(Section::Region) {
                        if let At::Region(rk) = &rkey.at {
                            if let Some(v) = rk.show(rc) {
                                out.push((rkey, format!("mount.{region}.{}", rkey.name), v));
                            }
                        }
                    }
                }
            }
            At::Top(k) | At::Mount(k) | At::Watchdog(k) | At::ClientInfo(k) | At::Paths(k) => {
                out.push((key, key.dotted(), k.show(cfg)))
            }
        }
    }
    out
}

/// The keys of one section, in table order.
fn in_section(section: Section) -> impl Iterator<Item = &'static Key> {
    KEYS.iter().filter(move |k| k.section() == section)
}

/// The `KEYS` part of `man/efs-utils.toml.5`: a subsection per section, a tagged
/// paragraph per key with its type, default, doc and effect.
pub fn man_key_list() -> String {
    let esc = |s: &str| s.replace('\\', "\\\\").replace('-', "\\-");
    let mut out = String::new();
    for section in Section::ALL {
        out.push_str(&format!(".SS {}\n", esc(&section.title())));
        for key in in_section(section) {
            let default = match (key.default_toml(), key.unset_means()) {
                (Some(d), _) => format!("default {d}"),
                (None, Some(u)) => format!("unset by default: {u}"),
                (None, None) => "unset unless built in for the region".into(),
            };
            out.push_str(&format!(
                ".TP\n.B {}\n{}\n.br\n({}; {}; {}.)\n",
                esc(key.name),
                esc(key.doc),
                esc(&key.expected().to_string()),
                esc(&default),
                esc(&key.effect.to_string()),
            ));
        }
    }
    out
}

/// The shipped `config/efs-utils.toml`, entire.
pub fn shipped_toml() -> String {
    let mut out = String::from(SHIPPED_HEADER);
    for section in Section::ALL {
        match section {
            Section::Top => out.push('\n'),
            Section::Region => {
                out.push_str(&region_part());
                continue;
            }
            _ => out.push_str(&format!("\n{}\n", section.title())),
        }
        for key in in_section(section) {
            out.push_str(&comment(key.doc, key.effect));
            let line = match (key.shipped, key.default_toml(), key.unset_means()) {
                (Shipped::SetToDefault, Some(d), _) => format!("{} = {d}\n", key.name),
                (_, Some(d), _) => format!("#{} = {d}\n", key.name),
                (_, None, Some(u)) => format!("#{} = \"...\"    # unset: {u}\n", key.name),
                (_, None, None) => format!("#{} = \"...\"\n", key.name),
            };
            out.push_str(&line);
        }
    }
    out
}

const SHIPPED_HEADER: &str = "\
# efs-utils configuration: /etc/amazon/efs/efs-utils.toml, or the file EFS_UTILS_CONFIG names.
#
# Keys and defaults follow amazon-efs-utils' efs-utils.conf: its [DEFAULT] keys are the
# top-level keys here, then [mount], [mount.<region>] and [mount-watchdog]; [paths] is ours.
# `efs-utils config check` prints every effective value and where it came from; man
# efs-utils.toml(5) describes every key.
#
# If amazon-efs-utils' efs-utils.conf is next to this file, it is read first, and this
# file wins only for what it sets.
#
# Every key is here with its built-in default, commented out (`#key = value`), so that
# this file sets nothing over efs-utils.conf that the admin did not set, `config check`
# says \"default\" for it, and a better built-in default reaches this machine on upgrade.
# Only [paths] is set: the install layout (`make install PREFIX=` rewrites paths.tunnel
# and paths.renew_cert), which efs-utils.conf does not have.
#
# (In the source tree this file is generated from config/src/keys.rs: edit that table.)
";

/// `# doc` lines wrapped at 88 columns; keys with no effect say so.
fn comment(doc: &str, effect: Effect) -> String {
    let mut out = String::new();
    let mut line = String::from("#");
    for word in doc.split_whitespace() {
        if line.len() + 1 + word.len() > 88 {
            out.push_str(&line);
            out.push('\n');
            line = String::from("#");
        }
        line.push(' ');
        line.push_str(word);
    }
    if effect == Effect::NoneYet {
        line.push_str(" (Accepted, no effect yet.)");
    }
    out.push_str(&line);
    out.push('\n');
    out
}

/// The per-region keys, documented, then the built-in regions as commented sections,
/// indented (`#  key = v`) so that a script uncommenting `#stunnel_cafile = ` of
/// `[mount]` does not also uncomment them.
fn region_part() -> String {
    let mut out = String::from(
        "\n# [mount.<region>]: overrides for one region. The built-in ones follow, commented.\n",
    );
    for key in in_section(Section::Region) {
        out.push_str(&comment(&format!("{}: {}", key.name, key.doc), key.effect));
    }
    for (region, rc) in &default_regions() {
        out.push_str(&format!("\n#  [mount.{region}]\n"));
        for key in in_section(Section::Region) {
            if let At::Region(rk) = &key.at {
                if let Some(v) = rk.show(rc) {
                    out.push_str(&format!("#  {} = {v}\n", key.name));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    //! The man page and the shipped file against the table: first which keys each names
    //! (so that a failure says which key), then the exact text. With `EFS_UTILS_BLESS=1`
    //! the generated text is written instead of compared.

    use std::collections::BTreeSet;

    use super::*;

    const MAN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../man/efs-utils.toml.5");
    const SHIPPED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/efs-utils.toml");
    const MAN_BEGIN: &str = ".\\\" BEGIN KEYS: generated from config/src/keys.rs (EFS_UTILS_BLESS=1 cargo test -p efs-config)\n";
    const MAN_END: &str = ".\\\" END KEYS\n";

    type Names = BTreeSet<(Section, String)>;

    fn table() -> Names {
        KEYS.iter()
            .map(|k| (k.section(), k.name.to_string()))
            .collect()
    }

    /// The section of a TOML table path: `mount`, `mount.cn-north-1`, ...
    fn section_of(path: &str) -> Option<Section> {
        match path {
            "" => Some(Section::Top),
            p if p.starts_with("mount.") => Some(Section::Region),
            p => Section::named(p),
        }
    }

    /// Keys a TOML file names, set (`key = v`) or as commented defaults (`#key = v`,
    /// `#  key = v`), under `[table]` or commented `#  [table]` headers.
    fn named_in_toml(text: &str) -> Names {
        let mut section = Some(Section::Top);
        let mut names = Names::new();
        for line in text.lines() {
            let line = line.strip_prefix('#').unwrap_or(line).trim_start();
            if let Some(t) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = section_of(t);
            } else if let Some((k, _)) = line.split_once(" = ") {
                if !k.is_empty()
                    && k.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                {
                    if let Some(s) = section {
                        names.insert((s, k.to_string()));
                    }
                }
            }
        }
        names
    }

    /// Keys the man page lists: `.B key` after `.TP`, under `.SS` section titles.
    fn named_in_man(text: &str) -> Names {
        let mut section = None;
        let mut tagged = false;
        let mut names = Names::new();
        for line in text.lines() {
            let line = line.replace("\\-", "-");
            if let Some(title) = line.strip_prefix(".SS ") {
                section = Section::ALL.into_iter().find(|s| s.title() == title);
            } else if let (true, Some(key), Some(s)) = (tagged, line.strip_prefix(".B "), section) {
                names.insert((s, key.trim().to_string()));
            }
            tagged = line == ".TP";
        }
        names
    }

    fn drift(file: &str, named: &Names) -> Vec<String> {
        let want = table();
        let show = |(s, k): &(Section, String)| format!("{k} in {}", s.title());
        let mut out: Vec<String> = want
            .difference(named)
            .map(|n| format!("{file} lacks {}", show(n)))
            .collect();
        out.extend(
            named
                .difference(&want)
                .map(|n| format!("{file} names {}, which the key table lacks", show(n))),
        );
        out
    }

    fn bless() -> bool {
        std::env::var_os("EFS_UTILS_BLESS").is_some_and(|v| v == "1")
    }

    #[test]
    fn the_shipped_file_names_exactly_the_tables_keys() {
        let text = std::fs::read_to_string(SHIPPED).unwrap();
        let drift = drift("config/efs-utils.toml", &named_in_toml(&text));
        assert!(bless() || drift.is_empty(), "{}", drift.join("\n"));
    }

    #[test]
    fn the_man_page_names_exactly_the_tables_keys() {
        let text = std::fs::read_to_string(MAN).unwrap();
        let drift = drift("man/efs-utils.toml.5", &named_in_man(&text));
        assert!(bless() || drift.is_empty(), "{}", drift.join("\n"));
    }

    #[test]
    fn the_shipped_file_is_the_one_the_table_renders() {
        let text = std::fs::read_to_string(SHIPPED).unwrap();
        let want = shipped_toml();
        if bless() {
            std::fs::write(SHIPPED, &want).unwrap();
        } else {
            assert!(
                text == want,
                "config/efs-utils.toml differs from the key table's rendering: run EFS_UTILS_BLESS=1 cargo test -p efs-config"
            );
        }
    }

    #[test]
    fn the_man_pages_key_list_is_the_one_the_table_renders() {
        let text = std::fs::read_to_string(MAN).unwrap();
        let (head, rest) = text.split_once(MAN_BEGIN).expect("the BEGIN KEYS marker");
        let (old, tail) = rest.split_once(MAN_END).expect("the END KEYS marker");
        let want = man_key_list();
        if bless() {
            std::fs::write(MAN, format!("{head}{MAN_BEGIN}{want}{MAN_END}{tail}")).unwrap();
        } else {
            assert!(
                old == want,
                "man/efs-utils.toml.5's key list differs from the key table's rendering: run EFS_UTILS_BLESS=1 cargo test -p efs-config"
            );
        }
    }

    #[test]
    fn a_choice_key_takes_only_its_words() {
        let parse = |v: &str| {
            Config::parse(
                &format!("[mount]\npartition_multiplexing = {v}\n"),
                Path::new("efs-utils.toml"),
            )
        };
        assert_eq!(
            Config::default().mount.partition_multiplexing,
            PartitionMultiplexing::Auto
        );
        let auto = parse("\"auto\"").unwrap();
        assert_eq!(
            auto.mount.partition_multiplexing,
            PartitionMultiplexing::Auto
        );
        let off = parse("\"off\"").unwrap();
        assert_eq!(off.mount.partition_multiplexing, PartitionMultiplexing::Off);
        assert_eq!(
            parse("\" Auto \"").unwrap().mount.partition_multiplexing,
            PartitionMultiplexing::Auto
        );
        let err = parse("\"maybe\"").unwrap_err().to_string();
        assert!(err.contains("expected one of auto, off"), "{err}");
        assert!(parse("true").is_err());
    }

    #[test]
    fn the_shipped_file_means_the_built_in_defaults_but_for_what_it_sets() {
        let cfg = Config::parse(&shipped_toml(), Path::new("efs-utils.toml")).unwrap();
        assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
        // Set: [paths] only, at their defaults.
        let set: BTreeSet<String> = cfg.origins.keys().cloned().collect();
        let paths: BTreeSet<String> = in_section(Section::Paths).map(Key::dotted).collect();
        assert_eq!(set, paths);
        let want = Config::default();
        assert_eq!(
            Config {
                source: None,
                origins: Default::default(),
                ..cfg
            },
            want
        );
        // Uncommenting a built-in region section changes nothing.
        let uncommented = shipped_toml().replace("\n#  ", "\n");
        let cfg2 = Config::parse(&uncommented, Path::new("efs-utils.toml")).unwrap();
        assert_eq!(cfg2.regions, default_regions());
    }
}
