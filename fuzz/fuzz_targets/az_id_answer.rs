//! Fuzz target `az_id_answer`: what the instance metadata service answers to
//! `/latest/meta-data/placement/availability-zone-id`, the AZ ID a `crossaccount` mount
//! puts first in its DNS name (mount-helper/src/imds.rs `az_id_of_answer`); then that
//! DNS name and the certificate name built from it (mount-helper/src/target.rs).
//!
//! Input: `status NUL body`; a status that is not a number is 200, so that most inputs
//! reach the body's check.
//! Checks: no panic; only a 200 answer gives an AZ ID; an accepted AZ ID is the trimmed
//! body and one DNS label of the AZ ID shape (`<3-12 of [a-z0-9]>-az<1-3 digits>`), so
//! the DNS name gets exactly one label more, and the certificate name stays the file
//! system's; a refusal is one bounded line (it goes to mount.log).

#![no_main]

use efs_config::Config;
use efs_mount_helper::{imds, target};
use libfuzzer_sys::fuzz_target;

const FS_ID: &str = "fs-12345678";
const REGION: &str = "us-east-1";

fuzz_target!(|data: &[u8]| {
    let parts = efs_fuzz::split_nul(data, 2);
    let status = std::str::from_utf8(parts[0])
        .ok()
        .and_then(|s| s.trim().parse::<u16>().ok())
        .unwrap_or(200);
    let body = String::from_utf8_lossy(parts.get(1).copied().unwrap_or_default());
    match imds::az_id_of_answer(status, &body) {
        Ok(id) => {
            assert_eq!(status, 200, "an AZ ID from HTTP {status}");
            assert_eq!(id, body.trim(), "the AZ ID is not the answer");
            let Some((code, n)) = id.split_once("-az") else {
                panic!("AZ ID {id:?} has no -az");
            };
            assert!(
                (3..=12).contains(&code.len())
                    && code
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                    && (1..=3).contains(&n.len())
                    && n.bytes().all(|b| b.is_ascii_digit()),
                "AZ ID {id:?}"
            );
            let cfg = Config::default();
            let name = target::cross_account_dns_name(&cfg, FS_ID, REGION, &id);
            let fs_part = format!("{FS_ID}.efs.{REGION}.{}", cfg.dns_name_suffix(REGION));
            assert_eq!(name, format!("{id}.{fs_part}"));
            assert_eq!(target::check_host(&name, FS_ID), fs_part, "{name}");
        }
        Err(e) => {
            assert!(!e.contains('\n') && !e.contains('\r'), "two lines: {e:?}");
            assert!(e.len() < 1024, "{} bytes of error", e.len());
        }
    }
});
