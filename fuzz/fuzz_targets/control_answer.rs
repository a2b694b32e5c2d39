//! Fuzz target `control_answer`: what a tunnel answers on its control socket, as the
//! status command and the watchdog's health check read it (tunnel/src/control.rs,
//! `query_status`, over a real Unix socket), then the status command's table of it
//! (status/src/lib.rs, `render`).
//!
//! A thread of the harness plays the tunnel: it reads the request line and writes the
//! input as the answer; the input's first 8 bytes are also an expiry date, so that the
//! table sees the whole range of i64. Checks: no panic, no hang (the query has a timeout, the answer's
//! size a limit).

#![no_main]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use efs_config::state::ClientCertRecord;
use efs_tunnel::control::{query_status, ClientCertStatus, Status, TlsSession};
use efs_utils::{render, ClientCert, Health, Report, Row};
use libfuzzer_sys::fuzz_target;

/// The fake tunnel's socket, and where to send the next answer.
fn fake_tunnel() -> &'static (PathBuf, Mutex<SyncSender<Vec<u8>>>) {
    static FAKE: OnceLock<(PathBuf, Mutex<SyncSender<Vec<u8>>>)> = OnceLock::new();
    FAKE.get_or_init(|| {
        efs_fuzz::ignore_sigpipe();
        let path = efs_fuzz::scratch_dir().join("tunnel-20049.sock");
        let listener = UnixListener::bind(&path).expect("bind the fake tunnel");
        let (tx, rx) = sync_channel::<Vec<u8>>(1);
        std::thread::spawn(move || {
            for answer in rx {
                let Ok((stream, _)) = listener.accept() else {
                    continue;
                };
                let mut reader = BufReader::new(&stream);
                let mut request = String::new();
                let _ = reader.read_line(&mut request);
                let _ = (&stream).write_all(&answer);
            }
        });
        (path, Mutex::new(tx))
    })
}

fuzz_target!(|data: &[u8]| {
    // Mutating JSON text seldom lands an extreme number in the right field: the input's
    // first 8 bytes are also the certificate's expiry of a well-formed answer, as they are
    // and as an offset from either end of i64.
    if let Some(bits) = data.first_chunk::<8>() {
        let raw = i64::from_le_bytes(*bits);
        let near = raw & 0xffff_ffff;
        for not_after in [raw, i64::MIN + near, i64::MAX - near] {
            show(Status {
                client_cert: Some(ClientCertStatus {
                    not_after_unix: not_after,
                    loaded_unix: raw,
                    reloads: raw as u64,
                    reload_error: None,
                }),
                tls: Some(TlsSession {
                    version: "TLSv1_3".into(),
                    cipher: "TLS13_AES_256_GCM_SHA384".into(),
                    peer_subject: Some("CN=*.efs.us-east-1.amazonaws.com".into()),
                    peer_not_after_unix: Some(not_after),
                }),
                ..Status::default()
            });
        }
    }
    let (path, tx) = fake_tunnel();
    tx.lock()
        .expect("fake tunnel channel")
        .send(data.to_vec())
        .expect("fake tunnel thread");
    let Ok(status) = query_status(path, Duration::from_secs(5)) else {
        return;
    };
    show(status);
});

/// The status command's table for one healthy TLS mount with this tunnel status, and a
/// client certificate whose recorded times are the answer's (the tunnel's certificate
/// against the state's: every comparison the table makes sees extremes).
fn show(status: Status) {
    let now = efs_fuzz::unix_now();
    let t = status
        .client_cert
        .as_ref()
        .map_or(now as f64, |c| c.not_after_unix as f64);
    let record = ClientCertRecord {
        certificate: "/var/run/efs/fs-12345678.mnt.efs.20049+/certificate.pem".into(),
        private_key: "/etc/amazon/efs/privateKey.pem".into(),
        common_name: "host".into(),
        region: "us-east-1".into(),
        access_point: Some("fsap-0123456789abcdef0".into()),
        iam_source: Some("metadata:".into()),
        issued: -t,
        not_after: t,
        credentials_expire: Some(t * 2.0),
        renewed: Some(f64::NAN),
        renewal_error: None,
    };
    let client_cert = Some(ClientCert::new(&record, Some(&status), now));
    let report = Report {
        watchdog_pid: Some(1),
        mounts: vec![Row {
            fs_id: "fs-12345678".into(),
            mountpoint: "/mnt/efs".into(),
            transport: "tls",
            port: Some(status.listen_port),
            pid: Some(1),
            kernel_port: Some(status.listen_port),
            state: Health::Healthy,
            restarts: 0,
            mounted: true,
            served_by: None,
            also_serves: Vec::new(),
            client_cert,
            tunnel: Some(status),
        }],
        problems: Vec::new(),
    };
    let _ = render(&report, now);
    let _ = serde_json::to_string(&report).expect("the report serialises");
}
