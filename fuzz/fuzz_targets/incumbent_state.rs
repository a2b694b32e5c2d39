//! Fuzz target `incumbent_state`: what the watchdog reads of amazon-efs-utils' own state
//! when it takes an upgraded host's mounts over (config/src/incumbent.rs): its JSON state
//! file (`IncumbentState::parse`), its stunnel-syntax tunnel config
//! (`TunnelConfig::parse`), a `/proc/PID/net/tcp` text (`listening_inode`), and the state
//! file's name (`name_parts`); the first byte picks one.
//!
//! Checks: no panic; every error is one bounded line; an accepted state names a tunnel
//! config; an accepted tunnel config accepts on a port other than 0 and connects to a
//! host; a name's port is never 0 and its id starts with `fs-`.

#![no_main]

use efs_config::incumbent::{self, IncumbentState, TunnelConfig};
use libfuzzer_sys::fuzz_target;

fn one_line(e: impl std::fmt::Display) {
    let s = e.to_string();
    assert!(!s.contains('\n'), "{s:?}");
    assert!(s.len() <= 1024, "{} bytes", s.len());
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    match pick % 4 {
        0 => match IncumbentState::parse(rest) {
            Ok(st) => assert!(!st.tunnel_config.as_os_str().is_empty()),
            Err(e) => one_line(e),
        },
        1 => match TunnelConfig::parse(&String::from_utf8_lossy(rest)) {
            Ok(tc) => {
                assert_ne!(tc.accept_port, 0);
                assert!(!tc.connect_host().is_empty());
            }
            Err(e) => one_line(e),
        },
        2 => {
            let (port, text) = match rest.split_first_chunk::<2>() {
                Some((p, t)) => (u16::from_le_bytes(*p), t),
                None => (20049, rest),
            };
            let text = String::from_utf8_lossy(text);
            if let Some(inode) = incumbent::listening_inode(&text, port) {
                assert_ne!(inode, 0);
                let links = [(3, format!("socket:[{inode}]"))];
                assert_eq!(incumbent::socket_fd(links, inode), Some(3));
            }
        }
        _ => {
            let name = String::from_utf8_lossy(rest);
            if let Some((fs_id, port)) = incumbent::name_parts(&name) {
                assert_ne!(port, 0);
                assert!(fs_id.starts_with("fs-"));
            }
            let config = incumbent::tunnel_config_name(&name);
            let dir = std::path::Path::new("/var/run/efs");
            let _ = incumbent::inside(dir, &dir.join(config));
        }
    }
});
