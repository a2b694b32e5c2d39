//! Fuzz target `imds_answer`: what the instance metadata service answers: the body of
//! the session token answer (iam/src/imds.rs) and of the identity document answer
//! (mount-helper/src/imds.rs). The HTTP around them is ureq's, as for every credential
//! source.
//!
//! Input: `token body NUL document body`.
//! Checks: no panic; a token is one header value (it is sent back as a header, so CR, LF or
//! another control byte would let the answer write headers of its own); a region is a
//! region name (it goes into DNS names and the certificate name).

#![no_main]

use efs_mount_helper::{imds, options};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let parts = efs_fuzz::split_nul(data, 2);
    if let Some(token) = std::str::from_utf8(parts[0])
        .ok()
        .and_then(efs_iam::imds::token_of_body)
    {
        assert!(
            !token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic()),
            "token {token:?}"
        );
    }
    if let Some(doc) = parts.get(1).and_then(|d| std::str::from_utf8(d).ok()) {
        if let Ok(region) = imds::region_of_answer(200, doc) {
            assert!(options::is_region_name(&region), "region {region:?}");
        }
    }
});
