//! The `efs-renew-cert` program as the watchdog runs it: a job on stdin, one answer line
//! on stdout, exit 0 only when the certificate was written; a malformed job or any
//! argument is an error, never a panic.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use efs_config::renewal::{Answer, Job};
use efs_config::state::ClientCertRecord;
use efs_config::Config;

const KEY_PEM: &[u8] = include_bytes!("../../iam/tests/data/host-key.pem");

fn run(stdin: &[u8], args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_efs-renew-cert"))
        .args(args)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A child that refuses its arguments may exit before reading: a broken pipe is fine.
    let _ = child.stdin.take().unwrap().write_all(stdin);
    child.wait_with_output().unwrap()
}

struct Dir(PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An access-point-only job (no credentials needed) in a fresh state directory.
fn job(name: &str) -> (Dir, Job) {
    let dir = std::env::temp_dir().join(format!("efs-renew-cert-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cert_dir = dir.join("run").join("fs-deadbeef.mnt.20049+");
    std::fs::create_dir_all(&cert_dir).unwrap();
    std::fs::set_permissions(&cert_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(cert_dir.join("certificate.pem"), "old").unwrap();
    std::fs::write(dir.join("privateKey.pem"), KEY_PEM).unwrap();
    let record = ClientCertRecord {
        certificate: cert_dir.join("certificate.pem"),
        private_key: dir.join("privateKey.pem"),
        common_name: "test-host".into(),
        region: "us-east-1".into(),
        access_point: Some("fsap-0123456789abcdef0".into()),
        iam_source: None,
        issued: 0.0,
        not_after: 0.0,
        credentials_expire: None,
        renewed: None,
        renewal_error: None,
    };
    let mut cfg = Config::default();
    cfg.paths.state_dir = dir.join("run");
    let job = Job::new("fs-deadbeef", &record, &cfg);
    (Dir(dir), job)
}

#[test]
fn a_job_in_a_written_certificate_and_its_times_out() {
    let (_dir, job) = job("ok");
    let out = run(&job.to_json(), &[]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let renewed = Answer::parse(stdout.as_bytes()).unwrap();
    assert!((renewed.not_after - renewed.issued - 10800.0).abs() < 1.0);
    let pem = std::fs::read_to_string(&job.record.certificate).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    assert!(
        !stdout.contains("CERTIFICATE"),
        "the PEM is not in the answer"
    );
    assert!(
        out.stderr.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_bad_job_is_an_error_answer_and_exit_1() {
    let (_dir, mut job) = job("bad");
    job.record.private_key = "/nonexistent/key.pem".into();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            job.to_json(),
            "cannot read the client key /nonexistent/key.pem",
        ),
        (b"".to_vec(), "the job is not valid"),
        (b"{\"fs_id\":".to_vec(), "the job is not valid"),
        (b"\xff\xfe\x00".to_vec(), "the job is not valid"),
        (vec![b' '; 65 * 1024], "larger than 64 KiB"),
    ];
    for (stdin, says) in cases {
        let out = run(&stdin, &[]);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let e = Answer::parse(&out.stdout).unwrap_err();
        assert!(e.contains(says), "{e}");
        assert_eq!(
            std::fs::read_to_string(&job.record.certificate).unwrap(),
            "old"
        );
    }
    let out = run(b"", &["--bogus"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    assert!(run(b"", &["--version"]).status.success());
}
