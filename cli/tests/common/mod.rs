//! What the `efs-utils` integration tests share: insisting that a run of the built
//! binary succeeded, with its stderr as the failure message, in one place.

use std::process::Output;

/// `out`, once it is known to be a success; the test fails with its stderr otherwise.
pub fn succeeded(out: Output) -> Output {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
