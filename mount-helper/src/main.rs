//! `mount.efs`: the helper util-linux runs for `mount -t efs`. Built in issue #3; until
//! then it refuses loudly rather than pretending to mount.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!("mount.efs: this build has no mount helper yet");
    ExitCode::from(32)
}
