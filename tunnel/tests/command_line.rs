//! The command line's edges, on the real binary: descriptors named twice, and text that
//! is not UTF-8. (The flags themselves are `efs_tunnel_contract::command`'s, tested there.)

mod common;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::process::Command;

use common::*;

#[test]
fn one_descriptor_named_twice_is_a_clear_error_not_a_double_close() {
    // The shell gives the tunnel an open descriptor 3; the tunnel is told it is both its
    // listener and its ready pipe.
    let out = Command::new("/bin/sh")
        .arg("-c")
        .arg(format!(
            "exec {} --listen-fd 3 --ready-fd 3 --connect 127.0.0.1:2049 --check-host {CHECK_HOST} 3</dev/null",
            tunnel_bin()
        ))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("descriptor 3 is already in use") && err.contains("--listen-fd"),
        "{err}"
    );
}

#[test]
fn an_argument_that_is_not_utf8_gets_one_line_and_exit_2() {
    let out = Command::new(tunnel_bin())
        .args(["--listen", "127.0.0.1:0", "--connect", "127.0.0.1:2049"])
        .args(["--check-host", CHECK_HOST, "--fs-id"])
        .arg(OsStr::from_bytes(b"fs-\xff"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("argument 8 is not valid UTF-8"), "{err}");
}
