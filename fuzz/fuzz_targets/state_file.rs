//! Fuzz target `state_file`: a state file (config/src/state.rs, `MountState::read`, the
//! JSON one mount's tunnel is recorded in), then what the watchdog does with the numbers
//! in it when it adopts the tunnel (watchdog/src/tunnels.rs: `adopt`, `name`, `deadline`,
//! `mount_age`), and the names derived from it.
//!
//! The recorded pid is replaced by 0 before adopting, so that the harness never looks at
//! or touches a real process. Checks: no panic; an accepted state serialises again.

#![no_main]

use std::path::Path;
use std::time::Duration;

use efs_config::state::{self, MountState};
use efs_watchdog::tunnels::Tunnel;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = efs_fuzz::scratch_dir().join("fs-12345678.mnt.efs.20049");
    std::fs::write(&path, data).expect("scratch state file");
    let mut st = match MountState::read(&path) {
        Ok(st) => st,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let json = serde_json::to_vec_pretty(&st).expect("an accepted state serialises");
    assert!(serde_json::from_slice::<MountState>(&json).is_ok());
    let _ = state::state_file_name(&st.fs_id, Path::new(&st.mountpoint), st.port);
    let _ = state::is_state_file_name(&st.fs_id);

    st.pid = 0;
    let mount_time = st.mount_time;
    let t = Tunnel::adopt(path, st);
    let _ = t.name();
    let _ = t.deadline(Duration::from_secs(30));
    // Open finding (docs/fuzzing.md): `mount_age` panics when now - mount_time does not fit
    // a Duration (mount_time: -1e20). Reproducer: fuzz/regressions/state_file/.
    let fits = Duration::try_from_secs_f64((state::unix_time() - mount_time).max(0.0)).is_ok();
    if fits || cfg!(feature = "open-findings") {
        let _ = t.mount_age() > Duration::from_secs(30);
    }
});
