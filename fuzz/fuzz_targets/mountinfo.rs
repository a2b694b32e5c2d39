//! Fuzz target `mountinfo`: the kernel's view of NFS mounts (config/src/mounts.rs): the
//! mount table (/proc/self/mountinfo) and the NFS client's tables
//! (/proc/fs/nfsfs/servers, volumes), which the watchdog, the status command and
//! `mount.efs` read to decide which tunnels are in use. The input is the three files
//! joined by 0x01 bytes.
//!
//! Checks: no panic; every local NFS mount with a port keeps that port in use; every
//! local client or volume port is in use; a mount's transport is one of the ports in use.

#![no_main]

use efs_config::mounts::KernelView;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.splitn(3, '\u{1}');
    let (mountinfo, servers, volumes) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let view = KernelView::parse(mountinfo, servers, volumes);
    let ports = view.ports_in_use();
    for m in &view.mounts {
        if let (true, Some(port)) = (m.local, m.port) {
            assert!(ports.contains_key(&port), "{m:?}");
        }
        if let Some(t) = view.transport_port(m) {
            assert!(ports[&t].contains(&m.mountpoint), "{m:?}");
        }
        let _ = view.local_mount_at(&m.mountpoint);
    }
    for t in view
        .clients
        .iter()
        .chain(view.volumes.iter().map(|v| &v.transport))
    {
        if t.local() {
            assert!(ports.contains_key(&t.port));
        }
    }
});
