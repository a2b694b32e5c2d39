//! `efs-utils config import`: amazon-efs-utils' INI configuration (`efs-utils.conf`) to
//! our TOML, keeping every value and comment it can.
//!
//! `[DEFAULT]` keys become top-level keys, other sections keep their names
//! (`[mount.cn-north-1]` is already a TOML table path). Values become TOML booleans,
//! integers or strings. Whether a key can be carried over is decided by the real parser
//! ([`Config::parse`]) on that one key, so this module keeps no second list of keys: a key
//! it warns about or rejects is written as a comment with the reason, and named in
//! [`Imported::not_carried`]; a key the table marks as accepted with no effect is carried,
//! and named in [`Imported::no_effect`]. The reasons come from the parser's typed
//! [`Warning`]s and [`ConfigError`]s, matched here, never from their message text.

use std::path::Path;

use toml::{Table, Value};

use crate::config::one_line;
use crate::keys::Effect;
use crate::{Config, ConfigError, Origin, Warning};

/// The converted file and what could not be carried over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    pub toml: String,
    /// One line per key or section left behind, with the reason.
    pub not_carried: Vec<String>,
    /// Keys carried over that are accepted but change nothing yet: those the keys table
    /// marks [`Effect::NoneYet`], today only `[mount-watchdog]
    /// unmount_count_for_consistency` (`unmount_grace_period_sec` decides here).
    pub no_effect: Vec<String>,
}

struct Section {
    name: String,
    /// Comments right above the section header.
    comments: Vec<String>,
    items: Vec<Item>,
}

enum Item {
    Comment(String),
    Blank,
    Key(String, String),
}

/// Converts INI text; `source` names the input in the output's header.
pub fn import_ini(ini: &str, source: &str) -> Imported {
    let sections = parse_ini(ini);
    let mut out = format!("# Converted from {source} by `efs-utils config import`.\n");
    let mut not_carried = Vec::new();
    let mut no_effect = Vec::new();
    // TOML top-level keys must come before any table: the preamble, then [DEFAULT]
    // wherever it stood, then the other sections in their order.
    let rank = |s: &Section| match s.name.as_str() {
        "" => 0,
        "DEFAULT" => 1,
        _ => 2,
    };
    let mut ordered: Vec<&Section> = sections.iter().collect();
    ordered.sort_by_key(|s| rank(s));
    for section in ordered {
        let table = (section.name != "DEFAULT" && !section.name.is_empty())
            .then_some(section.name.as_str());
        for c in &section.comments {
            out.push_str(&format!("#{}\n", comment_text(c)));
        }
        let mut body = String::new();
        let mut carried = 0;
        let last_of = |key: &str| {
            section
                .items
                .iter()
                .rposition(|i| matches!(i, Item::Key(k, _) if k == key))
        };
        for (at, item) in section.items.iter().enumerate() {
            match item {
                Item::Key(k, v) if is_bare_key(k) && last_of(k) != Some(at) => {
                    body.push_str(&format!(
                        "# {} = {}    # not carried over: set again below\n",
                        k,
                        comment_text(v)
                    ));
                }
                Item::Blank => body.push('\n'),
                Item::Comment(c) => body.push_str(&format!("#{}\n", comment_text(c))),
                Item::Key(k, _) if !is_bare_key(k) => {
                    let where_ = table.map(|t| format!("[{t}] ")).unwrap_or_default();
                    let why = "not a key name (letters, digits, '_', '-' only)";
                    not_carried.push(format!("{where_}{}: {why}", comment_text(k)));
                    body.push_str(&format!(
                        "# (not understood) {}    # not carried over: {why}\n",
                        comment_text(k)
                    ));
                }
                Item::Key(k, v) => {
                    let line = format!("{k} = {}", ini_value(k, v));
                    let where_ = table.map(|t| format!("[{t}] ")).unwrap_or_default();
                    match check(table, &line) {
                        Verdict::Carried => {
                            carried += 1;
                            body.push_str(&format!("{line}\n"));
                        }
                        Verdict::NoEffect => {
                            carried += 1;
                            no_effect.push(format!("{where_}{k}"));
                            body.push_str(&format!("{line}    # {}\n", Effect::NoneYet));
                        }
                        Verdict::Left(why) => {
                            not_carried.push(format!("{where_}{k}: {why}"));
                            body.push_str(&format!(
                                "# {}    # not carried over: {}\n",
                                comment_text(&line),
                                comment_text(&why)
                            ));
                        }
                    }
                }
            }
        }
        if let Some(t) = table {
            // A table with nothing left in it would itself be an unknown section.
            if carried > 0 && is_table_path(t) {
                out.push_str(&format!("[{t}]\n"));
            } else {
                out.push_str(&format!(
                    "# [{}]    # not carried over: nothing in it is supported\n",
                    comment_text(t)
                ));
            }
        }
        out.push_str(&body);
    }
    let toml = loadable(out, &mut not_carried);
    Imported {
        toml,
        not_carried,
        no_effect,
    }
}

/// Text safe after a `#`: TOML comments may not hold control characters (tab aside), and
/// a byte-order mark or other invisible format character is shown, not copied.
fn comment_text(s: &str) -> String {
    s.chars()
        .map(|c| {
            if (c.is_control() && c != '\t') || c == '\u{feff}' || c == '\u{200b}' {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// A TOML bare key: what an INI key must be to be written as one.
fn is_bare_key(k: &str) -> bool {
    !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `mount`, `mount.cn-north-1`: a table path of bare keys.
fn is_table_path(t: &str) -> bool {
    t.split('.').all(|part| is_bare_key(part.trim()))
}

/// The safety net: each key was checked alone, but the file as a whole must load too (a
/// key or section given twice, say). Every line the TOML parser stops at is turned into a
/// comment, with the reason, until the file parses.
fn loadable(mut toml: String, not_carried: &mut Vec<String>) -> String {
    for _ in 0..1000 {
        let Err(e) = toml.parse::<Table>() else {
            return toml;
        };
        let at = e.span().map_or(0, |r| r.start).min(toml.len());
        let start = toml[..at].rfind('\n').map_or(0, |i| i + 1);
        let end = toml[start..].find('\n').map_or(toml.len(), |i| start + i);
        let line = toml[start..end].to_string();
        if line.starts_with('#') && !line.starts_with("# (does not load)") {
            // A comment cannot be at fault once escaped; be safe all the same.
            toml.replace_range(
                start..end,
                &format!("# (does not load) {}", comment_text(&line)),
            );
            continue;
        }
        if line.starts_with("# (does not load)") {
            break;
        }
        let why = one_line(e.message());
        not_carried.push(format!(
            "{}: does not load with the rest: {why}",
            comment_text(&line)
        ));
        toml.replace_range(
            start..end,
            &format!(
                "# {}    # not carried over: {}",
                comment_text(&line),
                comment_text(&why)
            ),
        );
    }
    // Cannot happen with the escaping above; never hand out a file that does not load.
    "# Converted by `efs-utils config import`: nothing could be carried over.\n".to_string()
}

/// What the parser made of one key.
enum Verdict {
    /// Taken and applied.
    Carried,
    /// Taken, but nothing reads it yet.
    NoEffect,
    /// Not taken, with the reason.
    Left(String),
}

/// Asks the parser about one key, and reads its typed warnings and errors.
fn check(table: Option<&str>, line: &str) -> Verdict {
    let snippet = match table {
        Some(t) => format!("[{t}]\n{line}\n"),
        None => format!("{line}\n"),
    };
    let cfg = match Config::parse(&snippet, Path::new("import")) {
        Ok(cfg) => cfg,
        Err(e) => return Verdict::Left(refused(&e)),
    };
    if !cfg.warnings.is_empty() {
        let why: Vec<String> = cfg.warnings.iter().map(left_behind).collect();
        return Verdict::Left(why.join("; "));
    }
    let no_effect = cfg
        .settings()
        .iter()
        .any(|s| s.origin == Origin::Toml && s.effect == Effect::NoneYet);
    if no_effect {
        Verdict::NoEffect
    } else {
        Verdict::Carried
    }
}

fn left_behind(w: &Warning) -> String {
    match w {
        Warning::UnknownKey { .. } => "efs-utils.toml has no such key".into(),
        Warning::UnsupportedSection { .. } => "the section is not supported yet".into(),
        Warning::StunnelOnly { .. } => {
            "a stunnel setting: the tunnel logs to efs-tunnel.log".into()
        }
    }
}

fn refused(e: &ConfigError) -> String {
    match e {
        ConfigError::BadValue { value, invalid, .. } => format!("{value} {invalid}"),
        ConfigError::Syntax { reason, .. } => format!("not valid TOML: {}", one_line(reason)),
        ConfigError::Unreadable { reason, .. } => reason.clone(),
    }
}

/// INI value to TOML: booleans and whole numbers keep their type, the rest are strings
/// (`state_file_dir_mode`'s digits too: they are octal).
fn ini_value(key: &str, v: &str) -> Value {
    let v = v.trim();
    if key != "state_file_dir_mode" {
        match v.to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" => return Value::Boolean(true),
            "false" | "no" | "off" => return Value::Boolean(false),
            _ => {}
        }
        if let Ok(n) = v.parse::<i64>() {
            return Value::Integer(n);
        }
    }
    Value::String(v.to_string())
}

/// `efs-utils.conf` read natively: the tables [`import_ini`] would write, for
/// [`Config::load`] to apply as the layer under `efs-utils.toml`. `[DEFAULT]` keys are
/// top-level keys; `[mount.cn-north-1]` is table `cn-north-1` in table `mount`.
pub(crate) fn ini_table(ini: &str) -> Table {
    let mut top = Table::new();
    for section in parse_ini(ini) {
        let keys = section.items.into_iter().filter_map(|item| match item {
            Item::Key(k, v) => {
                let value = ini_value(&k, &v);
                Some((k, value))
            }
            Item::Comment(_) | Item::Blank => None,
        });
        match section.name.as_str() {
            "" | "DEFAULT" => top.extend(keys),
            name => {
                let (parent, child) = match name.split_once('.') {
                    Some((p, c)) => (p, Some(c)),
                    None => (name, None),
                };
                let mut table = take_table(&mut top, parent);
                match child {
                    Some(c) => {
                        let mut sub = take_table(&mut table, c);
                        sub.extend(keys);
                        table.insert(c.to_string(), Value::Table(sub));
                    }
                    None => table.extend(keys),
                }
                top.insert(parent.to_string(), Value::Table(table));
            }
        }
    }
    top
}

/// The table `name` out of `t`, or a new one.
fn take_table(t: &mut Table, name: &str) -> Table {
    match t.remove(name) {
        Some(Value::Table(sub)) => sub,
        _ => Table::new(),
    }
}

fn parse_ini(text: &str) -> Vec<Section> {
    let mut sections = vec![Section {
        name: String::new(),
        comments: Vec::new(),
        items: Vec::new(),
    }];
    let mut pending: Vec<String> = Vec::new();
    // A section given twice is one section (as Python's configparser in the incumbent
    // would refuse; merging keeps every value): later lines go to the first one.
    let mut current_at = 0;
    for raw in text.lines() {
        // A byte-order mark (an editor's, at the start of the file) is not part of a line.
        let line = raw.trim_start_matches('\u{feff}').trim();
        let current = current_at;
        if line.is_empty() {
            sections[current]
                .items
                .extend(pending.drain(..).map(Item::Comment));
            sections[current].items.push(Item::Blank);
        } else if let Some(c) = line.strip_prefix('#').or_else(|| line.strip_prefix(';')) {
            pending.push(c.to_string());
        } else if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.trim().to_string();
            if let Some(at) = sections.iter().position(|s| s.name == name) {
                sections[at]
                    .items
                    .extend(pending.drain(..).map(Item::Comment));
                current_at = at;
            } else {
                sections.push(Section {
                    name,
                    comments: std::mem::take(&mut pending),
                    items: Vec::new(),
                });
                current_at = sections.len() - 1;
            }
        } else if let Some((k, v)) = line.split_once('=').or_else(|| line.split_once(':')) {
            let items = &mut sections[current].items;
            items.extend(pending.drain(..).map(Item::Comment));
            items.push(Item::Key(k.trim().to_string(), v.trim().to_string()));
        } else {
            pending.push(format!(" (not understood) {line}"));
        }
    }
    sections[current_at]
        .items
        .extend(pending.into_iter().map(Item::Comment));
    sections
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_sections_comments_and_leftovers() {
        let ini = "# top comment\n[DEFAULT]\nlogging_level = INFO\nstate_file_dir_mode = 750\n\n[mount]\n# the region\nregion = eu-west-1\nfips_mode_enabled = false\nport_range_lower_bound = 20100\nstunnel_debug_enabled = false\n[cloudwatch-log]\nlog_group_name = /aws/efs/utils\n";
        let out = import_ini(ini, "efs-utils.conf");
        let cfg = Config::parse(&out.toml, Path::new("imported.toml")).unwrap();
        assert_eq!(cfg.mount.region.as_deref(), Some("eu-west-1"));
        assert_eq!(cfg.mount.port_range.start, 20100);
        assert_eq!(cfg.state_file_dir_mode, 0o750);
        assert!(
            out.toml.contains("# the region\nregion = \"eu-west-1\""),
            "{}",
            out.toml
        );
        assert!(out.toml.contains("# top comment"));
        let left = out.not_carried.join("\n");
        assert!(left.contains("[mount] stunnel_debug_enabled"), "{left}");
        assert!(left.contains("[cloudwatch-log] log_group_name"), "{left}");
        assert!(
            cfg.warnings.is_empty(),
            "left-overs are comments: {:?}",
            cfg.warnings
        );
    }

    #[test]
    fn every_import_loads_whatever_the_input() {
        let cases = [
            // A byte-order mark before a line the INI reader takes for a key.
            "\u{feff}# Copyright 2017 Amazon, Inc. affiliatffix = \"-e!st-1\"\n[mount]\nregion = us-east-1\n",
            "[mount]\nregion = us-east-1\nregion = eu-west-1\n",
            "[mount]\nregion = us-east-1\n[mount]\nregion = eu-west-1\n",
            "# a lone\rCR and \u{1} in a comment\n[mount]\nbad key! = 1\nregion = x\n",
            "[mo unt]\nregion = us-east-1\n[mount.\"x]\nk = v\n",
        ];
        for ini in cases {
            let out = import_ini(ini, "/etc/amazon/efs/efs-utils.conf");
            assert!(
                out.toml.parse::<Table>().is_ok(),
                "does not load:\n{}",
                out.toml
            );
        }
        // A key given twice: the last value wins, as the incumbent's reader keeps it.
        let out = import_ini(cases[1], "x");
        assert!(out.toml.contains("region = \"eu-west-1\""), "{}", out.toml);
        assert!(out
            .toml
            .contains("# region = us-east-1    # not carried over: set again below"));
        // A section given twice is one section.
        let out = import_ini(cases[2], "x");
        assert_eq!(out.toml.matches("[mount]").count(), 1, "{}", out.toml);
        assert!(out.toml.contains("region = \"eu-west-1\""), "{}", out.toml);
    }
}
