//! Fuzz target `device_spec`: the device spec (`fs-id`, `fs-id:/path`, an EFS DNS name, or
//! a CNAME of one) in mount-helper/src/target.rs, with the DNS look-up's canonical names
//! taken from the input; then the DNS name and the certificate name built from it.
//!
//! Input: `spec NUL canonical-name NUL canonical-name ...`.
//! Checks: no panic; an accepted spec has a valid fs id and an absolute path.

#![no_main]

use efs_config::Config;
use efs_mount_helper::target;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(parts) = efs_fuzz::split_nul_str(data, 8) else {
        return;
    };
    let (spec, names) = (parts[0], &parts[1..]);
    let resolve = |_: &str| Ok(names.iter().map(|n| n.to_string()).collect());
    let Ok(d) = target::parse_device_with(spec, resolve) else {
        return;
    };
    assert!(target::is_fs_id(&d.fs_id), "{d:?}");
    assert!(d.path.starts_with('/'), "{d:?}");
    let cfg = Config::default();
    let region = d.region.as_deref().unwrap_or("us-east-1");
    for az in [None, d.az.as_deref()] {
        if let Ok(name) = target::dns_name(&cfg, &d.fs_id, region, az) {
            let host = target::check_host(&name, &d.fs_id);
            assert!(host.starts_with(&d.fs_id) || !name.contains(&d.fs_id));
        }
    }
});
