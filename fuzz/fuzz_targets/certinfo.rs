//! Fuzz target `certinfo`: the server certificate summary the tunnel's status shows
//! (tunnel/src/certinfo.rs, `summarize`: subject and notAfter from DER).
//!
//! Checks: no panic; `None` or a summary whose expiry is a real date (year 0 to 9999) and
//! whose subject is bounded by the input's size.

#![no_main]

use efs_tunnel::certinfo::summarize;
use libfuzzer_sys::fuzz_target;

/// 0000-01-01T00:00:00Z and 10000-01-01T00:00:00Z.
const YEAR_0: i64 = -62_167_219_200;
const YEAR_10000: i64 = 253_402_300_800;

fuzz_target!(|data: &[u8]| {
    let Some(s) = summarize(data) else {
        return;
    };
    assert!(
        (YEAR_0..=YEAR_10000).contains(&s.not_after_unix),
        "{}",
        s.not_after_unix
    );
    assert!(s.subject.len() <= 4 * data.len(), "{}", s.subject.len());
});
