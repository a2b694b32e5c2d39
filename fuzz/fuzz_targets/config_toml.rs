//! Fuzz target `config_toml`: the TOML configuration (config/src/config.rs,
//! `Config::parse`, the string parser `Config::load_from` uses), then everything the
//! programs read from a parsed config: `settings()` (`efs-utils config check`), the
//! per-region look-ups and the log spec.
//!
//! Checks: no panic; an accepted config has a non-empty port range.

#![no_main]

use std::path::Path;

use efs_config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let cfg = match Config::parse(text, Path::new("/etc/amazon/efs/efs-utils.toml")) {
        Ok(cfg) => cfg,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    assert!(cfg.mount.port_range.start < cfg.mount.port_range.end);
    for s in cfg.settings() {
        assert!(!s.key.is_empty());
    }
    for region in cfg.regions.keys().map(String::as_str).chain(["us-east-1"]) {
        let _ = cfg.dns_name_suffix(region);
        let _ = cfg.cafile(region);
    }
    let _ = cfg.log_spec("mount.log", false);
});
