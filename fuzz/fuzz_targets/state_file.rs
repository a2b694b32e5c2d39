//! Fuzz target `state_file`: a state file (config/src/state.rs, `MountState::read`, the
//! JSON one mount's tunnel is recorded in), then what the watchdog does with the numbers
//! in it when it adopts the tunnel (watchdog/src/tunnels.rs: `adopt`, `name`, `deadline`,
//! `mount_age`), and the names derived from it.
//!
//! Mutating JSON text seldom lands an extreme number in the right field, so the input's
//! first 8 bytes are also taken as a `mount_time` (any finite f64, which JSON can carry)
//! on a well-formed state. The recorded pid is replaced by 0 before adopting, so that the
//! harness never looks at or touches a real process. Checks: no panic; an accepted state
//! serialises again.

#![no_main]

use std::path::{Path, PathBuf};
use std::time::Duration;

use efs_config::state::{self, MountState, SERVICE_TYPE_EFS};
use efs_watchdog::tunnels::Tunnel;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = efs_fuzz::scratch_dir().join("fs-12345678.mnt.efs.20049");
    if let Some(bits) = data.first_chunk::<8>() {
        let mount_time = f64::from_le_bytes(*bits);
        if mount_time.is_finite() {
            let st = MountState {
                mount_time,
                ..well_formed()
            };
            let json = serde_json::to_vec(&st).expect("a finite mount_time serialises");
            assert!(serde_json::from_slice::<MountState>(&json).is_ok());
            adopt(path.clone(), st);
        }
    }

    std::fs::write(&path, data).expect("scratch state file");
    let st = match MountState::read(&path) {
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
    adopt(path, st);
});

/// What the watchdog does with a state it finds, short of starting a process.
fn adopt(path: PathBuf, mut st: MountState) {
    st.pid = 0;
    let t = Tunnel::adopt(path, st);
    let _ = t.name();
    let _ = t.deadline(Duration::from_secs(30));
    let _ = t.mount_age() > Duration::from_secs(30);
}

/// The state `mount.efs` writes for `fs-12345678` on `/mnt/efs`.
fn well_formed() -> MountState {
    let host = "fs-12345678.efs.us-east-1.amazonaws.com";
    MountState {
        pid: 0,
        cmd: vec!["/usr/bin/efs-tunnel".into()],
        files: Vec::new(),
        mount_time: 1_700_000_000.5,
        mountpoint: "/mnt/efs".into(),
        service_type: SERVICE_TYPE_EFS.into(),
        fs_id: "fs-12345678".into(),
        port: 20049,
        dns_name: host.into(),
        check_host: host.into(),
        connect: format!("{host}:2049"),
        control_socket: "/var/run/efs/tunnel-20049.sock".into(),
        restarts: 0,
        unmount_time: None,
        served_by: None,
        also_serves: Vec::new(),
        client_cert: None,
        extra: Default::default(),
    }
}
