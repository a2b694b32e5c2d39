//! Fuzz target `control_request`: what a client writes to a tunnel's control socket, as
//! the tunnel's server reads it (tunnel/src/control.rs, `ControlSocket::serve`, over a
//! real Unix socket, on a tokio runtime as in the tunnel).
//!
//! Each input is written on a fresh connection, which is then half-closed. Checks: no
//! panic, no hang; the server answers with at most one line, and that line is JSON: a
//! status, or an error naming the request.

#![no_main]

use std::io::{Read, Write};
use std::net::Shutdown as Half;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use efs_tunnel::control::{ControlSocket, Status};
use efs_tunnel::shutdown::ShutdownTrigger;
use libfuzzer_sys::fuzz_target;

/// The control socket of a tunnel that answers a fixed status.
fn tunnel() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        efs_fuzz::ignore_sigpipe();
        let path = efs_fuzz::scratch_dir().join("tunnel-20050.sock");
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let bind_path = path.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            rt.block_on(async move {
                let socket = ControlSocket::bind(&bind_path).expect("bind the control socket");
                let trigger = ShutdownTrigger::default();
                let status = Arc::new(|| Status {
                    pid: 42,
                    listen_port: 20050,
                    ..Status::default()
                });
                ready_tx.send(()).expect("ready");
                socket.serve(status, trigger.subscribe()).await;
                drop(trigger);
            });
        });
        ready_rx.recv().expect("control socket ready");
        path
    })
}

fuzz_target!(|data: &[u8]| {
    let mut s = UnixStream::connect(tunnel()).expect("connect to the control socket");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.set_write_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    // The server stops reading after a line or 4096 bytes and closes: a longer input's
    // write may fail, which is no finding.
    let _ = s.write_all(data);
    let _ = s.shutdown(Half::Write);
    let mut reply = Vec::new();
    if let Err(e) = (&s).take(1 << 20).read_to_end(&mut reply) {
        assert!(
            e.kind() == std::io::ErrorKind::ConnectionReset,
            "no answer in time: {e}"
        );
    }
    if reply.is_empty() {
        return; // not UTF-8, or the connection went away: closed without an answer
    }
    let text = std::str::from_utf8(&reply).expect("the answer is UTF-8");
    let line = text.strip_suffix('\n').expect("the answer is one line");
    assert!(!line.contains('\n'), "more than one line: {text:?}");
    let json: serde_json::Value = serde_json::from_str(line).expect("the answer is JSON");
    if json.get("error").is_none() {
        let status: Status = serde_json::from_value(json).expect("a status");
        assert_eq!(status.pid, 42);
    }
});
