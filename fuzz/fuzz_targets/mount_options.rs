//! Fuzz target `mount_options`: the `-o` option string (mount-helper/src/options.rs), as
//! `mount.efs` gets it from util-linux or an fstab line.
//!
//! Checks: no panic; printing the options and parsing them again gives the same options
//! (mount.log shows them, and a second `-o` is merged the same way); validation answers;
//! the option string for `mount.nfs4` never carries one of our options, and carries the
//! tunnel's port exactly once, last.

#![no_main]

use efs_mount_helper::options::{self, Options, EFS_OPTIONS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let o = Options::parse(text);
    assert_eq!(Options::parse(&o.to_string()), o, "print/parse round trip");
    let mut twice = o.clone();
    twice.extend(o.clone());
    assert_eq!(twice, o, "merging the same options again changes nothing");

    if let Ok(e) = options::validate(&o) {
        assert!(e.tlsport.is_none_or(|p| p > 0));
        if let Some(r) = &e.region {
            assert!(options::is_region_name(r));
        }
    }
    for port in [None, Some(20049)] {
        let nfs = options::nfs_options(&o, port);
        let n = Options::parse(&nfs);
        for k in EFS_OPTIONS {
            assert!(!n.has(k), "{k} reaches mount.nfs4: {nfs}");
        }
        if port.is_some() {
            assert!(nfs.ends_with(",port=20049"), "{nfs}");
            let ports = nfs
                .split(',')
                .filter(|item| {
                    item.trim()
                        .split_once('=')
                        .is_some_and(|(k, _)| k == "port")
                })
                .count();
            assert_eq!(ports, 1, "{nfs}");
        }
    }
});
