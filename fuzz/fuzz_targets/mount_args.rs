//! Fuzz target `mount_args`: `mount.efs`'s command line (mount-helper/src/args.rs), then
//! what `run` does with it before any I/O: option validation, the device spec, the DNS
//! name and the certificate name (DNS look-ups answer "not found").
//!
//! Input: the arguments after argv[0], separated by NUL bytes (as the kernel hands them).

#![no_main]

use efs_config::Config;
use efs_mount_helper::args::{self, Parsed};
use efs_mount_helper::{options, target};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(parts) = efs_fuzz::split_nul_str(data, 32) else {
        return;
    };
    let argv: Vec<String> = parts.iter().map(|s| s.to_string()).collect();
    let Ok(Parsed::Mount(inv)) = args::parse(&argv) else {
        return;
    };
    assert!(!inv.spec.starts_with('-') && !inv.mountpoint.starts_with('-'));
    let Ok(opts) = options::validate(&inv.options) else {
        return;
    };
    let _ = options::nfs_options(&inv.options, opts.tls.then_some(20049));
    let Ok(device) = target::parse_device_with(&inv.spec, |_| Err("no DNS in fuzzing".into()))
    else {
        return;
    };
    let region = opts.region.as_deref().unwrap_or("us-east-1");
    let az = opts.az.as_deref().or(device.az.as_deref());
    if let Ok(name) = target::dns_name(&Config::default(), &device.fs_id, region, az) {
        let _ = target::check_host(&name, &device.fs_id);
    }
});
