//! Fuzz target `ktls_control`: the records other than application data that a kernel
//! TLS connection hands to user space (tunnel/src/ktls.rs, `Control::feed`), decrypted
//! but otherwise as the mount target sent them, in the pieces a short read buffer
//! makes of them.
//!
//! Input: the first byte picks TLS 1.3 (odd) or 1.2; then chunks of a content-type byte,
//! a length byte and that many bytes. Checks beyond no panic, no hang and bounded
//! memory: what is kept between chunks never exceeds the longest message allowed plus
//! one chunk; every error is one line that says what went wrong; nothing is fed after an
//! error or the end of the stream, as the data path does.

#![no_main]

use efs_tunnel::ktls::{Control, ControlEvent, MAX_POST_HANDSHAKE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&version, mut rest)) = data.split_first() else {
        return;
    };
    let mut control = Control::new(version & 1 == 1);
    while let [kind, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (chunk, after) = tail.split_at(n);
        rest = after;
        match control.feed(*kind, chunk) {
            Ok(ControlEvent::Nothing) => {
                assert!(
                    control.held() <= 4 + MAX_POST_HANDSHAKE + 255,
                    "{}",
                    control.held()
                );
            }
            Ok(ControlEvent::Closed) => return,
            Err(e) => {
                let line = e.to_string();
                assert!(
                    !line.is_empty() && !line.contains('\n') && line.len() < 300,
                    "{line:?}"
                );
                return;
            }
        }
    }
});
