//! Fuzz target `config_import`: `efs-utils config import`, amazon-efs-utils' INI file to
//! our TOML (config/src/import.rs, `import_ini`).
//!
//! Checks: no panic; what the import writes is a configuration our parser loads, with no
//! warning (every key it could not carry over is a comment). The classes of input the
//! import is known to turn into a file that does not load (open findings, docs/fuzzing.md;
//! reproducers in fuzz/regressions/config_import/) are let through, by their error text,
//! unless the target is built with `--features open-findings`.

#![no_main]

use std::path::Path;

use efs_config::import::import_ini;
use efs_config::Config;
use libfuzzer_sys::fuzz_target;

/// What the parser says about the one open finding's output: an inverted port range,
/// each bound valid alone (a key or section given twice and control bytes or a
/// byte-order mark in comments are fixed: the import's whole output is checked).
const OPEN: &[&str] = &["port_range_upper_bound"];

fuzz_target!(|data: &[u8]| {
    let Ok(ini) = std::str::from_utf8(data) else {
        return;
    };
    let out = import_ini(ini, "/etc/amazon/efs/efs-utils.conf");
    match Config::parse(&out.toml, Path::new("imported.toml")) {
        Ok(cfg) => assert!(
            cfg.warnings.is_empty(),
            "warnings {:?} for\n{}",
            cfg.warnings,
            out.toml
        ),
        Err(e) => {
            let e = e.to_string();
            if !cfg!(feature = "open-findings") && OPEN.iter().any(|known| e.contains(known)) {
                return;
            }
            panic!(
                "the import wrote a file that does not load: {e}\n{}",
                out.toml
            )
        }
    }
});
