//! Client certificate renewal (issue #12) by the real watchdog, on real tunnels started
//! by the real `mount.efs`. mount.efs does not make client certificates on this branch
//! yet, so each test gives a mount one as mount.efs will (the host key, the certificate in
//! the state file's `+` directory, the `client_cert` record), issued long enough ago that
//! the watchdog's first look renews it. Credentials come from a profile in a credentials
//! file in the test's directory; every credential endpoint (IMDS, ECS, STS) is an unused
//! loopback port, so nothing here can reach 169.254.169.254 or 169.254.170.2.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use efs_config::state::{self, ClientCertRecord, MountState};
use efs_iam::testing::{authorize, Expect, KnownKey, Verdict};
use efs_testkit::efs::{FakeEfsPolicy, FakeEfsVerifier};
use efs_testkit::root::*;
use efs_testkit::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

mod common;
use common::*;

const AP: &str = "fsap-0123456789abcdef0";
const PROFILE: &str = "efs-mount";
/// The keys before and after rotation.
const OLD: (&str, &str) = (
    "AKIAOLDOLDOLDOLD0001",
    "old/Secret+Key0000000000000000000000000",
);
const NEW: (&str, &str) = (
    "AKIANEWNEWNEWNEW0002",
    "new/Secret+Key1111111111111111111111111",
);
/// Nothing listens on the discard port of loopback: every credential endpoint.
const NOWHERE: &str = "http://127.0.0.1:9";
const HOUR: f64 = 3600.0;

/// The test config, with every credential endpoint on an unused loopback port; the
/// watchdog renews with the built `efs-renew-cert`.
fn root() -> Root {
    assert!(renew_cert_bin().exists());
    Root::with_sections(
        &format!(
            "instance_metadata_url = \"{NOWHERE}\"\necs_credentials_url = \"{NOWHERE}\"\nsts_endpoint_url = \"{NOWHERE}/\""
        ),
        WATCHDOG_CONFIG,
    )
}

/// One RSA key for all tests of this binary (making one takes seconds).
fn host_key() -> &'static efs_iam::HostKey {
    static KEY: OnceLock<efs_iam::HostKey> = OnceLock::new();
    KEY.get_or_init(|| efs_iam::HostKey::generate().unwrap())
}

fn credentials((id, secret): (&str, &str)) -> efs_iam::Credentials {
    efs_iam::Credentials::new(
        efs_iam::credentials::AccessKeyId::new(id).unwrap(),
        efs_iam::credentials::SecretAccessKey::new(secret).unwrap(),
        None,
        None,
    )
}

/// The credentials file with `[PROFILE]` holding `keys`, or without it.
fn write_profile(root: &Root, keys: Option<(&str, &str)>) {
    let text = match keys {
        Some((id, secret)) => format!(
            "[other]\naws_access_key_id = AKIAOTHEROTHEROTH999\naws_secret_access_key = x\n\n[{PROFILE}]\naws_access_key_id = {id}\naws_secret_access_key = {secret}\n"
        ),
        None => "[other]\naws_access_key_id = AKIAOTHEROTHEROTH999\naws_secret_access_key = x\n"
            .into(),
    };
    std::fs::create_dir_all(root.dir.path("aws")).unwrap();
    std::fs::write(root.dir.path("aws").join("credentials"), text).unwrap();
}

/// The watchdog's environment: its home and AWS files in the test's directory.
fn aws_env(root: &Root) -> Vec<(&'static str, PathBuf)> {
    std::fs::create_dir_all(root.dir.path("home")).unwrap();
    vec![
        ("HOME", root.dir.path("home")),
        (
            "AWS_SHARED_CREDENTIALS_FILE",
            root.dir.path("aws").join("credentials"),
        ),
        ("AWS_CONFIG_FILE", root.dir.path("aws").join("config")),
    ]
}

fn start(root: &Root, env: &[(&'static str, PathBuf)]) -> KillOnDrop {
    let env: Vec<(&str, &Path)> = env.iter().map(|(k, v)| (*k, v.as_path())).collect();
    start_watchdog_env(root, &env)
}

/// Gives mount `m` a client certificate as mount.efs will: the host key file, a
/// certificate (with `keys`: IAM from `[PROFILE]`) in `<state>+/certificate.pem`, and the
/// record, which says it was issued `age` seconds ago and expires in `left`.
fn give_certificate(
    root: &Root,
    m: &Mounted,
    keys: Option<(&str, &str)>,
    age: f64,
    left: f64,
) -> ClientCertRecord {
    use std::os::unix::fs::PermissionsExt;
    let key_path = root.dir.path("privateKey.pem");
    if !key_path.exists() {
        std::fs::write(&key_path, host_key().private_key_pem()).unwrap();
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o400)).unwrap();
    }
    let name = m
        .state_path
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let certificate = state::client_cert_path(&root.state_dir(), &name);
    let dir = certificate.parent().unwrap();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let creds = keys.map(credentials);
    let issued = efs_iam::cert::issue(
        host_key(),
        &efs_iam::CertificateRequest {
            common_name: "test-host",
            fs_id: FS_ID,
            access_point: Some(AP),
            iam: creds.as_ref().map(|c| efs_iam::Iam {
                credentials: c,
                region: "us-east-1",
                service: efs_iam::EFS_SERVICE,
            }),
            client_source: None,
            efs_utils_version: "0.1.0",
            now: efs_iam::SigningTime::now().unwrap(),
        },
    )
    .unwrap();
    std::fs::write(&certificate, &issued.pem).unwrap();
    std::fs::set_permissions(&certificate, std::fs::Permissions::from_mode(0o600)).unwrap();
    let now = state::unix_time();
    let rec = ClientCertRecord {
        certificate,
        private_key: key_path,
        common_name: "test-host".into(),
        region: "us-east-1".into(),
        access_point: Some(AP.into()),
        iam_source: keys.map(|_| format!("credentials:{PROFILE}")),
        issued: now - age,
        not_after: now + left,
        credentials_expire: None,
        renewed: None,
        renewal_error: None,
    };
    let mut st = m.state();
    st.client_cert = Some(rec.clone());
    st.write(&root.state_dir(), &name).unwrap();
    rec
}

fn record(m: &Mounted) -> ClientCertRecord {
    m.state()
        .client_cert
        .expect("the state has its client_cert")
}

/// What the fake EFS says of a PEM certificate, knowing `keys`.
fn verdict(pem: &[u8], keys: &[(&str, &str)], require_iam: bool) -> Verdict {
    let der = CertificateDer::from_pem_slice(pem).unwrap();
    let known = |id: &str| {
        keys.iter().find(|(k, _)| *k == id).map(|(_, s)| KnownKey {
            secret_access_key: s.to_string(),
            session_token: None,
        })
    };
    authorize(
        der.as_ref(),
        &Expect {
            fs_id: FS_ID,
            access_point: Some(AP),
            region: "us-east-1",
            service: efs_iam::EFS_SERVICE,
            require_iam,
            known_key: &known,
            now: time::OffsetDateTime::now_utc(),
        },
    )
}

fn renewed(m: &Mounted) -> bool {
    m.state().client_cert.is_some_and(|c| c.renewed.is_some())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_access_point_certificate_is_renewed_in_place_and_removed_with_its_mount() {
    let scene = Scene::on(root()).await;
    let root = &scene.root;
    let m = scene.mount("ap");
    set_mounts(root, &[(&m.mountpoint, m.port)]);
    let old = give_certificate(root, &m, None, 2.0 * HOUR, HOUR);
    let old_pem = std::fs::read(&old.certificate).unwrap();
    let pid = m.pid();
    let _wd = start(root, &[]);

    assert!(
        wait_until(Duration::from_secs(15), || renewed(&m)),
        "{}",
        watchdog_log(root)
    );
    let rec = record(&m);
    let now = state::unix_time();
    assert_eq!(rec.renewal_error, None);
    assert!(
        (now - rec.issued).abs() < 60.0,
        "issued {} now {now}",
        rec.issued
    );
    assert!(
        (rec.not_after - rec.issued - 3.0 * HOUR).abs() < 2.0,
        "{rec:?}"
    );
    assert!(rec.renewed.is_some_and(|r| r >= rec.issued));
    assert_eq!(rec.credentials_expire, None);
    // The same file, renewed: a valid certificate for the access point, private.
    assert_eq!(rec.certificate, old.certificate);
    let pem = std::fs::read(&rec.certificate).unwrap();
    assert_ne!(pem, old_pem);
    assert_eq!(file_mode(&rec.certificate), 0o600);
    match verdict(&pem, &[], false) {
        Verdict::Allowed(who) => {
            assert_eq!(who.access_point.as_deref(), Some(AP));
            assert_eq!(who.access_key_id, None);
        }
        other => panic!("{other:?}"),
    }
    // Nothing but the certificate in its directory; the tunnel was told, not replaced.
    let names: Vec<_> = std::fs::read_dir(rec.certificate.parent().unwrap())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(names, ["certificate.pem"]);
    assert_eq!(m.pid(), pid);
    assert!(alive(pid));
    let log = watchdog_log(root);
    assert!(
        log.contains(&format!(
            "renewed the client certificate of {FS_ID} at {}",
            m.mountpoint
        )) && log.contains(&format!("told its tunnel (pid {pid})")),
        "{log}"
    );
    assert_eq!(round_trip(m.port, b"still up").unwrap(), b"still up");

    // Unmounted: the certificate and its directory go with the state.
    set_mounts(root, &[]);
    assert!(
        wait_until(Duration::from_secs(10), || !m.state_path.exists()),
        "{}",
        watchdog_log(root)
    );
    assert!(
        !rec.certificate.parent().unwrap().exists(),
        "{:?}",
        root.state_files()
    );
    assert!(root.state_files().is_empty(), "{:?}", root.state_files());
    assert!(
        root.dir.path("privateKey.pem").exists(),
        "the host key stays"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_iam_certificate_is_renewed_with_the_rotated_keys_of_its_profile() {
    let scene = Scene::on(root()).await;
    let root = &scene.root;
    let m = scene.mount("iam");
    set_mounts(root, &[(&m.mountpoint, m.port)]);
    write_profile(root, Some(OLD));
    let old = give_certificate(root, &m, Some(OLD), 2.0 * HOUR, HOUR);
    assert!(matches!(
        verdict(&std::fs::read(&old.certificate).unwrap(), &[OLD], true),
        Verdict::Allowed(_)
    ));
    // The keys are rotated before the renewal.
    write_profile(root, Some(NEW));
    let _wd = start(root, &aws_env(root));

    assert!(
        wait_until(Duration::from_secs(15), || renewed(&m)),
        "{}",
        watchdog_log(root)
    );
    let rec = record(&m);
    assert_eq!(rec.renewal_error, None);
    assert_eq!(rec.iam_source.as_deref(), Some("credentials:efs-mount"));
    let pem = std::fs::read(&rec.certificate).unwrap();
    match verdict(&pem, &[NEW], true) {
        Verdict::Allowed(who) => {
            assert_eq!(who.access_key_id.as_deref(), Some(NEW.0));
            assert_eq!(who.access_point.as_deref(), Some(AP));
        }
        other => panic!("{other:?}"),
    }
    // The old keys are no longer in it: EFS knowing only those refuses it.
    assert!(matches!(verdict(&pem, &[OLD], true), Verdict::Denied(_)));
    // No secret reaches the state or the log.
    let state_text = std::fs::read_to_string(&m.state_path).unwrap();
    let log = watchdog_log(root);
    for secret in [OLD.1, NEW.1] {
        assert!(!state_text.contains(secret) && !log.contains(secret));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_renewal_keeps_the_certificate_and_the_tunnel_and_says_so_once() {
    let scene = Scene::on(root()).await;
    let root = &scene.root;
    let m = scene.mount("failing");
    set_mounts(root, &[(&m.mountpoint, m.port)]);
    let old = give_certificate(root, &m, Some(OLD), 2.0 * HOUR, HOUR);
    let old_pem = std::fs::read(&old.certificate).unwrap();
    // The profile is gone.
    write_profile(root, None);
    let pid = m.pid();
    let wd = start(root, &aws_env(root));

    assert!(
        wait_until(Duration::from_secs(15), || record(&m)
            .renewal_error
            .is_some()),
        "{}",
        watchdog_log(root)
    );
    let rec = record(&m);
    let error = rec.renewal_error.clone().unwrap();
    assert!(
        error.contains("AWS profile [efs-mount] not found"),
        "{error}"
    );
    assert_eq!(error.lines().count(), 1, "{error}");
    assert_eq!(rec.renewed, None);
    assert_eq!((rec.issued, rec.not_after), (old.issued, old.not_after));
    // Polls go on (every second), the watchdog re-reads its config: said once.
    std::thread::sleep(Duration::from_secs(3));
    kill(Pid::from_raw(wd.id() as i32), Signal::SIGHUP).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let log = watchdog_log(root);
    assert_eq!(
        count_lines(&log, "cannot renew the client certificate of"),
        1,
        "{log}"
    );
    assert!(log.contains("keeping the current one (valid for"), "{log}");
    assert_eq!(
        std::fs::read(&old.certificate).unwrap(),
        old_pem,
        "byte for byte"
    );
    assert_eq!(m.pid(), pid);
    assert!(alive(pid));
    assert_eq!(round_trip(m.port, b"still up").unwrap(), b"still up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_tunnel_with_an_expired_certificate_is_restarted_after_its_renewal() {
    let scene = Scene::on(root()).await;
    let root = &scene.root;
    let m = scene.mount("expired");
    set_mounts(root, &[(&m.mountpoint, m.port)]);
    give_certificate(root, &m, None, 3.5 * HOUR, -600.0);
    let pid = m.pid();
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    assert!(wait_until(Duration::from_secs(5), || !alive(pid)));
    let _wd = start(root, &[]);

    assert!(
        wait_until(Duration::from_secs(15), || m.pid() != pid && alive(m.pid())),
        "{}",
        watchdog_log(root)
    );
    let rec = record(&m);
    assert!(rec.not_after > state::unix_time() + 2.0 * HOUR, "{rec:?}");
    let log = watchdog_log(root);
    let renewed_at = log.find("renewed the client certificate").expect(&log);
    let started_at = log.find("started the tunnel of").expect(&log);
    assert!(renewed_at < started_at, "renewed after the restart:\n{log}");
    assert!(log.contains("its tunnel starts with it"), "{log}");
    assert_eq!(round_trip(m.port, b"back").unwrap(), b"back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_certificate_outside_the_state_directory_is_neither_written_nor_removed() {
    let scene = Scene::on(root()).await;
    let root = &scene.root;
    let m = scene.mount("outside");
    set_mounts(root, &[(&m.mountpoint, m.port)]);
    give_certificate(root, &m, None, 2.0 * HOUR, HOUR);
    let victim = root.dir.path("victim+").join("certificate.pem");
    std::fs::create_dir_all(victim.parent().unwrap()).unwrap();
    std::fs::write(&victim, "keep me").unwrap();
    let mut st: MountState = m.state();
    if let Some(c) = st.client_cert.as_mut() {
        c.certificate = victim.clone();
    }
    st.write(
        &root.state_dir(),
        &m.state_path.file_name().unwrap().to_string_lossy(),
    )
    .unwrap();
    let _wd = start(root, &[]);

    assert!(
        wait_until(Duration::from_secs(15), || record(&m)
            .renewal_error
            .is_some()),
        "{}",
        watchdog_log(root)
    );
    let error = record(&m).renewal_error.unwrap();
    assert!(
        error.contains("is not a certificate in the state directory"),
        "{error}"
    );
    set_mounts(root, &[]);
    assert!(wait_until(Duration::from_secs(10), || !m
        .state_path
        .exists()));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");
    assert!(
        watchdog_log(root).contains("it is not in the state directory"),
        "{}",
        watchdog_log(root)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shorter_renewal_interval_applies_on_sighup() {
    let scene = Scene::on(root()).await;
    let root = &scene.root;
    let m = scene.mount("interval");
    set_mounts(root, &[(&m.mountpoint, m.port)]);
    // Issued 30 min ago: not due with the default 60 min interval.
    give_certificate(root, &m, None, 1800.0, 2.5 * HOUR);
    let wd = start(root, &[]);
    std::thread::sleep(Duration::from_secs(2));
    assert!(!renewed(&m), "{}", watchdog_log(root));
    let text = std::fs::read_to_string(&root.config).unwrap();
    let text = text.replace(
        "poll_interval_sec = 1\n",
        "poll_interval_sec = 1\ntls_cert_renewal_interval_min = 10\n",
    );
    std::fs::write(&root.config, text).unwrap();
    kill(Pid::from_raw(wd.id() as i32), Signal::SIGHUP).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || renewed(&m)),
        "{}",
        watchdog_log(root)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_tunnel_presents_the_renewed_certificate_to_new_connections() {
    let scene = Scene::on(root()).await;
    let root = &scene.root;
    let m = scene.mount("reload");
    set_mounts(root, &[(&m.mountpoint, m.port)]);
    write_profile(root, Some(OLD));
    let old = give_certificate(root, &m, Some(OLD), 2.0 * HOUR, HOUR);
    // A fake EFS that knows both keys and requires IAM and the access point.
    let verifier = FakeEfsVerifier::new(FakeEfsPolicy {
        access_point: Some(AP.into()),
        require_iam: true,
        ..FakeEfsPolicy::new()
            .with_key(OLD.0, OLD.1, None)
            .with_key(NEW.0, NEW.1, None)
    });
    let efs = TlsServer::start_requiring_client_cert(
        &root.ca.issue(WILDCARD),
        Behaviour::Echo,
        verifier.clone(),
    )
    .await;
    // The tunnel as mount.efs will start it for this mount: to the fake EFS, presenting
    // the certificate. The watchdog restarts it so (the one mount.efs started is killed).
    let mut st = m.state();
    let at = st.cmd.iter().position(|a| a == "--connect").unwrap();
    st.cmd[at + 1] = format!("127.0.0.1:{}", efs.addr.port());
    st.cmd.extend([
        "--client-cert".to_string(),
        old.certificate.display().to_string(),
        "--client-key".to_string(),
        old.private_key.display().to_string(),
    ]);
    st.write(
        &root.state_dir(),
        &m.state_path.file_name().unwrap().to_string_lossy(),
    )
    .unwrap();
    let pid = m.pid();
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    assert!(wait_until(Duration::from_secs(5), || !alive(pid)));
    write_profile(root, Some(NEW));
    let _wd = start(root, &aws_env(root));

    assert!(
        wait_until(Duration::from_secs(15), || renewed(&m)),
        "{}",
        watchdog_log(root)
    );
    let rec = record(&m);
    let control = m.state().control_socket;
    let reloaded = wait_until(Duration::from_secs(10), || {
        efs_tunnel_contract::query_status(&control, Duration::from_secs(1))
            .ok()
            .and_then(|s| s.client_cert)
            .is_some_and(|c| c.reloads >= 1 && c.not_after_unix == rec.not_after as i64)
    });
    assert!(
        reloaded,
        "the tunnel did not reload the renewed certificate: {:?}\n{}",
        efs_tunnel_contract::query_status(&control, Duration::from_secs(1)).map(|s| s.client_cert),
        watchdog_log(root)
    );
    let tunnel_pid = m.pid();
    assert_eq!(round_trip(m.port, b"through EFS").unwrap(), b"through EFS");
    match verifier.verdicts().last() {
        Some(Verdict::Allowed(who)) => assert_eq!(
            who.access_key_id.as_deref(),
            Some(NEW.0),
            "{:?}\n{:?}\n{}",
            verifier.verdicts(),
            efs_tunnel_contract::query_status(&control, Duration::from_secs(1)),
            watchdog_log(root)
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(m.pid(), tunnel_pid, "reloaded, not restarted");
    let status = efs_tunnel_contract::query_status(&control, Duration::from_secs(1)).unwrap();
    assert_eq!(status.client_cert.and_then(|c| c.reload_error), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_renewer_that_hangs_is_killed_at_the_deadline_and_the_watchdog_carries_on() {
    let scene = Scene::on(root()).await;
    let root = &scene.root;
    // A renewer that never answers, and starts a process that would outlive it.
    let d = root.dir.0.display();
    let hang = root.dir.path("bin").join("renewer-that-hangs");
    efs_testkit::write_executable(
        &hang,
        &format!("#!/bin/sh\nsleep 600 &\necho $! > {d}/renewer-child.pid\necho $$ > {d}/renewer.pid\nwait\n"),
        0o755,
    );
    let text = std::fs::read_to_string(&root.config).unwrap();
    let real = format!("renew_cert = \"{}\"", renew_cert_bin().display());
    assert!(text.contains(&real), "{text}");
    let text = text.replace(&real, &format!("renew_cert = \"{}\"", hang.display()));
    std::fs::write(&root.config, text).unwrap();
    let m = scene.mount("hang");
    set_mounts(root, &[(&m.mountpoint, m.port)]);
    let old = give_certificate(root, &m, None, 2.0 * HOUR, HOUR);
    let old_pem = std::fs::read(&old.certificate).unwrap();
    let pid = m.pid();
    let wd = start(root, &[]);

    let pid_file = |name: &str| -> Option<i32> {
        std::fs::read_to_string(root.dir.path(name))
            .ok()
            .and_then(|t| t.trim().parse().ok())
    };
    assert!(
        wait_until(Duration::from_secs(10), || pid_file("renewer.pid")
            .is_some()),
        "{}",
        watchdog_log(root)
    );
    let started = Instant::now();
    let (renewer, child) = (
        pid_file("renewer.pid").unwrap(),
        pid_file("renewer-child.pid").unwrap(),
    );
    // While the renewal hangs, the watchdog supervises as ever: a dead tunnel is back
    // at once, and answers.
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || m.pid() != pid && alive(m.pid())),
        "{}",
        watchdog_log(root)
    );
    assert_eq!(round_trip(m.port, b"meanwhile").unwrap(), b"meanwhile");
    assert!(alive(renewer), "still hanging");

    // At the deadline the renewer, and what it started, are killed: a failed renewal.
    assert!(
        wait_until(Duration::from_secs(80), || record(&m)
            .renewal_error
            .is_some()),
        "{}",
        watchdog_log(root)
    );
    assert!(
        started.elapsed() >= Duration::from_secs(55),
        "{:?}",
        started.elapsed()
    );
    let error = record(&m).renewal_error.unwrap();
    assert!(
        error.contains("did not finish within 60 s; killed it"),
        "{error}"
    );
    assert!(!alive(renewer));
    assert!(wait_until(Duration::from_secs(5), || !alive(child)));
    assert_eq!(record(&m).renewed, None);
    assert_eq!(std::fs::read(&old.certificate).unwrap(), old_pem);
    let log = watchdog_log(root);
    assert_eq!(
        count_lines(&log, "cannot renew the client certificate of"),
        1,
        "{log}"
    );
    // And the watchdog is still there: it re-reads its config, and the tunnel serves.
    kill(Pid::from_raw(wd.id() as i32), Signal::SIGHUP).unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || watchdog_log(root)
            .contains("SIGHUP: configuration re-read")),
        "{}",
        watchdog_log(root)
    );
    assert_eq!(round_trip(m.port, b"after").unwrap(), b"after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_renewal_that_outlives_its_mount_leaves_the_next_mount_of_that_name_alone() {
    let scene = Scene::on(root()).await;
    let root = &scene.root;
    // The real renewer, after a wait long enough for an unmount and a new mount.
    let d = root.dir.0.display();
    let slow = root.dir.path("bin").join("slow-renewer");
    efs_testkit::write_executable(
        &slow,
        &format!(
            "#!/bin/sh\ntouch {d}/renewer.started\nsleep 6\n{}\nrc=$?\ntouch {d}/renewer.done\nexit $rc\n",
            renew_cert_bin().display()
        ),
        0o755,
    );
    let text = std::fs::read_to_string(&root.config).unwrap();
    let real = format!("renew_cert = \"{}\"", renew_cert_bin().display());
    assert!(text.contains(&real), "{text}");
    std::fs::write(
        &root.config,
        text.replace(&real, &format!("renew_cert = \"{}\"", slow.display())),
    )
    .unwrap();
    let first = scene.mount("again");
    set_mounts(root, &[(&first.mountpoint, first.port)]);
    give_certificate(root, &first, None, 2.0 * HOUR, HOUR);
    let _wd = start(root, &[]);
    assert!(
        wait_until(Duration::from_secs(10), || root
            .dir
            .path("renewer.started")
            .exists()),
        "{}",
        watchdog_log(root)
    );

    // Unmounted while the renewal waits: torn down, certificate directory and all.
    set_mounts(root, &[]);
    assert!(
        wait_until(Duration::from_secs(5), || !first.state_path.exists()),
        "{}",
        watchdog_log(root)
    );
    // Mounted again at once on the same port (as the lowest free port often is), so
    // with the same state file name, and a fresh certificate of its own.
    let second = mount_with(
        root,
        "again",
        &scene.ip,
        &format!(",tlsport={}", first.port),
    );
    assert_eq!(second.state_path, first.state_path);
    let fresh = give_certificate(root, &second, None, 0.0, 3.0 * HOUR);
    let fresh_pem = std::fs::read(&fresh.certificate).unwrap();
    set_mounts(root, &[(&second.mountpoint, second.port)]);

    // The first mount's renewal ends: nothing of it reaches the second mount.
    assert!(
        wait_until(Duration::from_secs(20), || root
            .dir
            .path("renewer.done")
            .exists()),
        "{}",
        watchdog_log(root)
    );
    std::thread::sleep(Duration::from_secs(2)); // the watchdog's look at the answer
    let rec = record(&second);
    assert_eq!(rec.renewal_error, None);
    assert_eq!(rec.renewed, None);
    assert_eq!(rec.issued, fresh.issued);
    assert!(
        std::fs::read(&fresh.certificate).unwrap() == fresh_pem,
        "the new mount's certificate was replaced by the earlier mount's renewal"
    );
    assert_eq!(round_trip(second.port, b"still").unwrap(), b"still");
}
