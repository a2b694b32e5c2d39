//! The client certificate EFS authorizes by (`--client-cert`, `--client-key`, issue #12),
//! against a fake EFS that admits only what EFS would (`FakeEfsVerifier`): the tunnel
//! presents the pair on every connection, is refused without it, takes a new pair on
//! SIGHUP for new connections only while open ones carry on, keeps the old pair when the
//! new one is broken, and refuses to start with a bad pair.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use efs_iam::cert::{ClientCertificate, HostKey};
use efs_iam::testing::{Identity, Verdict};
use efs_testkit::efs::{client_certificate, FakeEfsPolicy, FakeEfsVerifier};
use nix::sys::signal::Signal;

const OLD_KEY: (&str, &str) = (
    "AKIAOLDACCESSKEY0001",
    "old/secret/0123456789abcdefghijklmnopqrs",
);
const NEW_KEY: (&str, &str) = (
    "AKIANEWACCESSKEY0002",
    "new/secret/0123456789abcdefghijklmnopqrs",
);
const ACCESS_POINT: &str = "fsap-0123456789abcdef0";

/// A fake EFS for [`FS_ID`] that requires IAM and [`ACCESS_POINT`], knows `keys`, and
/// echoes what an admitted client sends.
struct FakeEfs {
    ca: TestCa,
    verifier: Arc<FakeEfsVerifier>,
    server: TlsServer,
}

fn policy(keys: &[(&str, &str)]) -> FakeEfsPolicy {
    let mut policy = FakeEfsPolicy {
        access_point: Some(ACCESS_POINT.into()),
        require_iam: true,
        ..FakeEfsPolicy::new()
    };
    for (id, secret) in keys {
        policy = policy.with_key(id, secret, None);
    }
    policy
}

impl FakeEfs {
    async fn start(keys: &[(&str, &str)]) -> FakeEfs {
        let ca = TestCa::new("Fake EFS CA");
        let verifier = FakeEfsVerifier::new(policy(keys));
        let server = TlsServer::start_requiring_client_cert(
            &ca.issue(WILDCARD),
            Behaviour::Echo,
            verifier.clone(),
        )
        .await;
        FakeEfs {
            ca,
            verifier,
            server,
        }
    }

    /// The access key id of each client let in, in order; `None` for a refused one.
    fn admitted(&self) -> Vec<Option<String>> {
        self.verifier
            .verdicts()
            .into_iter()
            .map(|v| match v {
                Verdict::Allowed(Identity { access_key_id, .. }) => access_key_id,
                Verdict::Denied(_) => None,
            })
            .collect()
    }
}

/// The two files a tunnel is given, root's and private as mount.efs writes them.
struct PairFiles {
    _dir: TempDir,
    cert: PathBuf,
    key: PathBuf,
}

impl PairFiles {
    fn write(host_key: &HostKey, cert: &ClientCertificate) -> PairFiles {
        let dir = TempDir::new("client-pair");
        let files = PairFiles {
            cert: dir.path("certificate.pem"),
            key: dir.path("privateKey.pem"),
            _dir: dir,
        };
        files.put_cert(&cert.pem);
        std::fs::write(&files.key, host_key.private_key_pem()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&files.key, std::fs::Permissions::from_mode(0o400)).unwrap();
        files
    }

    fn put_cert(&self, pem: &str) {
        std::fs::write(&self.cert, pem).unwrap();
    }

    fn args(&self) -> Vec<String> {
        vec![
            "--client-cert".into(),
            self.cert.display().to_string(),
            "--client-key".into(),
            self.key.display().to_string(),
        ]
    }
}

fn start_tunnel(efs: &FakeEfs, pair: Option<&PairFiles>) -> Tunnel {
    let args = pair.map(PairFiles::args).unwrap_or_default();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Tunnel::start(efs.server.addr.port(), &efs.ca.pem, &args)
}

/// Sends `msg` through a new connection, half-closes, and returns what came back.
fn round_trip(addr: SocketAddr, msg: &[u8]) -> Vec<u8> {
    let mut s = StdTcpStream::connect(addr).unwrap();
    s.write_all(msg).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    read_all(&mut s, Duration::from_secs(10)).unwrap_or_default()
}

/// Sends `msg` on an open connection and reads its echo.
fn echo_on(s: &mut StdTcpStream, msg: &[u8]) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(msg).unwrap();
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).unwrap();
    back
}

fn wait_for_status(
    tunnel: &Tunnel,
    what: &str,
    f: impl Fn(&efs_tunnel::control::Status) -> bool,
) -> efs_tunnel::control::Status {
    let mut last = None;
    let ok = wait_until(Duration::from_secs(10), || {
        let st = tunnel.status();
        let done = f(&st);
        last = Some(st);
        done
    });
    let st = last.unwrap();
    assert!(ok, "{what}: status {st:?}\nlog:\n{}", tunnel.log_text());
    st
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presents_the_client_certificate_and_forwards_data() {
    let efs = FakeEfs::start(&[OLD_KEY]).await;
    let host_key = HostKey::generate().unwrap();
    let cert = client_certificate(&host_key, Some(OLD_KEY), Some(ACCESS_POINT));
    let pair = PairFiles::write(&host_key, &cert);
    let tunnel = start_tunnel(&efs, Some(&pair));

    assert_eq!(round_trip(tunnel.addr(), b"NFS call"), b"NFS call");
    match efs.verifier.verdicts().as_slice() {
        [Verdict::Allowed(who)] => {
            assert_eq!(who.access_key_id.as_deref(), Some(OLD_KEY.0));
            assert_eq!(who.access_point.as_deref(), Some(ACCESS_POINT));
        }
        other => panic!("verdicts: {other:?}"),
    }

    let st = tunnel.status();
    let cc = st
        .client_cert
        .expect("status reports the client certificate");
    assert_eq!(cc.not_after_unix, cert.not_after.unix_timestamp());
    assert!((cc.loaded_unix - time_now()).abs() < 60, "{cc:?}");
    assert_eq!((cc.reloads, cc.reload_error), (0, None));
    assert_eq!((st.handshakes_full, st.handshakes_failed), (1, 0));

    let log = tunnel.log_text();
    let line = first_line_with(&log, "client certificate").unwrap_or_else(|| panic!("{log}"));
    assert!(
        line.contains("CN=efs-test-client") && line.contains("valid until"),
        "{line}"
    );
    assert!(
        !log.contains("PRIVATE KEY"),
        "key material in the log:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_client_certificate_the_server_refuses_and_sighup_changes_nothing() {
    let efs = FakeEfs::start(&[OLD_KEY]).await;
    let tunnel = start_tunnel(&efs, None);

    assert!(round_trip(tunnel.addr(), b"NFS call").is_empty());
    let st = wait_for_status(&tunnel, "a failed handshake", |st| {
        st.handshakes_failed == 1
    });
    assert_eq!(
        st.handshakes_full, 0,
        "a refused handshake is not a completed one"
    );
    let err = st
        .last_error
        .expect("the refusal is the last error")
        .message;
    assert!(
        err.contains("CertificateRequired") && err.contains("requires a client certificate"),
        "{err}"
    );
    assert_eq!(st.client_cert, None);
    assert!(efs.verifier.verdicts().is_empty(), "nothing to judge");
    assert_eq!(
        efs.server
            .received
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );

    // SIGHUP without a client certificate: still alive, still no client certificate.
    tunnel.signal(Signal::SIGHUP);
    let st = wait_for_status(&tunnel, "alive after SIGHUP", |st| st.client_cert.is_none());
    assert_eq!(st.handshakes_failed, 1);
    let mut tunnel = tunnel;
    assert!(
        tunnel.child.try_wait().unwrap().is_none(),
        "SIGHUP killed the tunnel"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readiness_probe_tells_an_admitted_client_from_a_refused_one() {
    let efs = FakeEfs::start(&[OLD_KEY]).await;
    let host_key = HostKey::generate().unwrap();
    let pair = PairFiles::write(
        &host_key,
        &client_certificate(&host_key, Some(OLD_KEY), Some(ACCESS_POINT)),
    );

    let dir = TempDir::new("probe-admitted");
    let (line, mut child) = start_with_ready_pipe(efs.server.addr, &dir, &efs.ca.pem, &pair.args());
    assert!(line.starts_with("ready port="), "{line:?}");
    assert!(child.try_wait().unwrap().is_none());
    assert_eq!(efs.admitted(), [Some(OLD_KEY.0.to_string())]);

    // TLS 1.3: the refusal comes after the client's side of the handshake; the probe
    // still sees it, and fails the start.
    let dir = TempDir::new("probe-refused");
    let (line, mut child) = start_with_ready_pipe(efs.server.addr, &dir, &efs.ca.pem, &[]);
    assert!(line.starts_with("error "), "{line:?}");
    assert!(
        line.contains("CertificateRequired") && line.contains(FS_ID),
        "{line:?}"
    );
    assert_eq!(child.wait().unwrap().code(), Some(1));

    // A certificate the server refuses (a key it does not know).
    let unknown = PairFiles::write(
        &host_key,
        &client_certificate(&host_key, Some(NEW_KEY), Some(ACCESS_POINT)),
    );
    let dir = TempDir::new("probe-unknown-key");
    let (line, mut child) =
        start_with_ready_pipe(efs.server.addr, &dir, &efs.ca.pem, &unknown.args());
    assert!(
        line.starts_with("error ") && line.contains("refused the client certificate"),
        "{line:?}"
    );
    assert_eq!(child.wait().unwrap().code(), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_presents_a_new_pair_to_new_connections_and_open_ones_carry_on() {
    let efs = FakeEfs::start(&[OLD_KEY, NEW_KEY]).await;
    let host_key = HostKey::generate().unwrap();
    let old = client_certificate(&host_key, Some(OLD_KEY), Some(ACCESS_POINT));
    let pair = PairFiles::write(&host_key, &old);
    let tunnel = start_tunnel(&efs, Some(&pair));

    let mut open = StdTcpStream::connect(tunnel.addr()).unwrap();
    assert_eq!(echo_on(&mut open, b"before"), b"before");
    let before = tunnel.status().client_cert.unwrap();
    assert_eq!(efs.admitted(), [Some(OLD_KEY.0.to_string())]);

    // The watchdog renews: a rotated access key, issued a second later.
    std::thread::sleep(Duration::from_millis(1100));
    let new = client_certificate(&host_key, Some(NEW_KEY), Some(ACCESS_POINT));
    pair.put_cert(&new.pem);
    tunnel.signal(Signal::SIGHUP);
    let st = wait_for_status(&tunnel, "one reload", |st| {
        st.client_cert.as_ref().is_some_and(|c| c.reloads == 1)
    });
    let after = st.client_cert.unwrap();
    assert_eq!(after.reload_error, None);
    assert_eq!(after.not_after_unix, new.not_after.unix_timestamp());
    assert_ne!(after.not_after_unix, before.not_after_unix);
    assert!(
        after.loaded_unix > before.loaded_unix,
        "{before:?} {after:?}"
    );

    // The open connection keeps its session and carries on.
    assert_eq!(echo_on(&mut open, b"after the reload"), b"after the reload");
    // A new one presents the new certificate, in a full handshake (a fresh session
    // store: a resumed session would have carried the old identity).
    assert_eq!(round_trip(tunnel.addr(), b"new"), b"new");
    assert_eq!(
        efs.admitted(),
        [Some(OLD_KEY.0.to_string()), Some(NEW_KEY.0.to_string())]
    );
    let st = tunnel.status();
    assert_eq!((st.handshakes_full, st.handshakes_resumed), (2, 0));
    assert_eq!(echo_on(&mut open, b"still"), b"still");
    assert!(tunnel
        .log_text()
        .contains("SIGHUP: reloaded client certificate"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_pair_on_sighup_keeps_the_old_one_until_a_good_one_comes() {
    let efs = FakeEfs::start(&[OLD_KEY, NEW_KEY]).await;
    let host_key = HostKey::generate().unwrap();
    let pair = PairFiles::write(
        &host_key,
        &client_certificate(&host_key, Some(OLD_KEY), Some(ACCESS_POINT)),
    );
    let mut tunnel = start_tunnel(&efs, Some(&pair));
    assert_eq!(round_trip(tunnel.addr(), b"one"), b"one");

    pair.put_cert("this is not a certificate\n");
    tunnel.signal(Signal::SIGHUP);
    let st = wait_for_status(&tunnel, "a reload error", |st| {
        st.client_cert
            .as_ref()
            .is_some_and(|c| c.reload_error.is_some())
    });
    let cc = st.client_cert.unwrap();
    let err = cc.reload_error.unwrap();
    assert!(
        err.contains("certificate.pem") && err.contains("no PEM certificate"),
        "{err}"
    );
    assert_eq!(cc.reloads, 0);
    assert!(
        tunnel.child.try_wait().unwrap().is_none(),
        "the tunnel died"
    );
    assert_eq!(
        count_lines(
            &tunnel.log_text(),
            "keeping the previous client certificate"
        ),
        1
    );

    // New connections still present the old pair, and are admitted.
    assert_eq!(round_trip(tunnel.addr(), b"two"), b"two");
    let old = Some(OLD_KEY.0.to_string());
    assert_eq!(efs.admitted(), [old.clone(), old.clone()]);

    // A good pair clears the error.
    pair.put_cert(&client_certificate(&host_key, Some(NEW_KEY), Some(ACCESS_POINT)).pem);
    tunnel.signal(Signal::SIGHUP);
    let st = wait_for_status(&tunnel, "a good reload", |st| {
        st.client_cert.as_ref().is_some_and(|c| c.reloads == 1)
    });
    assert_eq!(st.client_cert.unwrap().reload_error, None);
    assert_eq!(round_trip(tunnel.addr(), b"three"), b"three");
    assert_eq!(
        efs.admitted(),
        [old.clone(), old, Some(NEW_KEY.0.to_string())]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_pair_at_start_is_one_line_naming_the_file_and_exit_1() {
    let efs = FakeEfs::start(&[OLD_KEY]).await;
    let host_key = HostKey::generate().unwrap();
    let good = PairFiles::write(
        &host_key,
        &client_certificate(&host_key, Some(OLD_KEY), Some(ACCESS_POINT)),
    );
    let dir = TempDir::new("bad-pair");
    let garbage = dir.path("garbage.pem");
    std::fs::write(&garbage, "not PEM at all\n").unwrap();
    let other_key = dir.path("other-key.pem");
    std::fs::write(
        &other_key,
        rcgen::KeyPair::generate().unwrap().serialize_pem(),
    )
    .unwrap();
    let missing = dir.path("missing.pem");
    std::fs::write(dir.path("ca.pem"), &efs.ca.pem).unwrap();
    let path = |p: &PathBuf| p.display().to_string();

    let cases = [
        (
            path(&missing),
            path(&good.key),
            "missing.pem",
            "cannot read client certificate",
        ),
        (
            path(&garbage),
            path(&good.key),
            "garbage.pem",
            "holds no PEM certificate",
        ),
        (
            path(&good.cert),
            path(&garbage),
            "garbage.pem",
            "holds no PEM private key",
        ),
        (
            path(&good.cert),
            path(&other_key),
            "other-key.pem",
            "does not match",
        ),
    ];
    for (cert, key, names, says) in cases {
        let out = Command::new(tunnel_bin())
            .args(["--listen", "127.0.0.1:0", "--connect"])
            .arg(efs.server.addr.to_string())
            .args(["--check-host", CHECK_HOST, "--cafile"])
            .arg(dir.path("ca.pem"))
            .args(["--client-cert", &cert, "--client-key", &key])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(names) && err.contains(says), "{err}");
    }

    // With a ready pipe, the parent reads why.
    let args = vec![
        "--client-cert".to_string(),
        path(&garbage),
        "--client-key".into(),
        path(&good.key),
    ];
    let (line, mut child) = start_with_ready_pipe(efs.server.addr, &dir, &efs.ca.pem, &args);
    assert!(
        line.starts_with("error ") && line.contains("garbage.pem"),
        "{line:?}"
    );
    assert_eq!(child.wait().unwrap().code(), Some(1));
    assert!(efs.verifier.verdicts().is_empty(), "no handshake was tried");
}

fn time_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_met_by_the_partition_bind_counts_as_one_and_is_not_taken_for_no_multiplexing() {
    let efs = FakeEfs::start(&[OLD_KEY]).await;
    let args = ["--partition-multiplexing", "auto"];
    let tunnel = Tunnel::start(efs.server.addr.port(), &efs.ca.pem, &args);

    assert!(round_trip(tunnel.addr(), b"NFS call").is_empty());
    let st = wait_for_status(&tunnel, "a failed handshake", |st| {
        st.handshakes_failed == 1
    });
    assert_eq!(st.handshakes_full, 0, "{st:?}");
    let err = st.last_error.expect("the refusal").message;
    assert!(err.contains("requires a client certificate"), "{err}");
    // Refused for the certificate: nothing learnt about the program.
    let mux = st.multiplexing.expect("multiplexing status");
    assert_eq!((mux.enabled, mux.server_supports), (true, None));
}
