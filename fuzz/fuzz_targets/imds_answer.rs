//! Fuzz target `imds_answer`: what the instance metadata service answers
//! (mount-helper/src/imds.rs): the session token answer and the identity document answer,
//! whole HTTP answers as read from the socket.
//!
//! Input: `token answer NUL document answer`.
//! Checks: no panic; a token is one header value (it is sent back as a header, so CR, LF or
//! another control byte would let the answer write headers of its own); a region is a
//! region name (it goes into DNS names and the certificate name).

#![no_main]

use efs_mount_helper::{imds, options};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let parts = efs_fuzz::split_nul(data, 2);
    if let Ok(token) = imds::token_of_answer(parts[0]) {
        assert!(
            !token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic()),
            "token {token:?}"
        );
    }
    if let Some(doc) = parts.get(1) {
        if let Ok(region) = imds::region_of_answer(doc) {
            assert!(options::is_region_name(&region), "region {region:?}");
        }
    }
});
