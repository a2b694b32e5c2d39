//! `mount.efs -o tls,iam` and `-o tls,accesspoint=`: the real binary in a temporary root,
//! AWS credentials from fakes on 127.0.0.1 (instance metadata, the ECS endpoint, a
//! credentials file; mocks, named as such: the real services exist only on EC2/ECS). The
//! certificate it writes is checked by the fake EFS authorizer
//! (`efs_iam::testing::authorize`) with the fake's own secret.
//!
//! Nothing here can reach 169.254.169.254 or 169.254.170.2: every root's config points
//! instance metadata, ECS and STS at 127.0.0.1, `HOME` and the `~/.aws` files are in the
//! root, and every AWS credential variable of the environment is cleared.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::*;
use efs_config::state::{self, ClientCertRecord, MountState};
use efs_iam::testing::{authorize, Expect, Identity, KnownKey, Verdict};
use efs_testkit::efs::{FakeEfsPolicy, FakeEfsVerifier};

const AP: &str = "fsap-0123456789abcdef0";
const AP2: &str = "fsap-0123456789abcdef1";
const IMDS_AKID: &str = "ASIAFAKEIMDS00000001";
const ECS_AKID: &str = "ASIAFAKEECS000000001";
const PROFILE_AKID: &str = "AKIAFAKEPROFILE00001";
/// Markers that must never reach a log.
const SECRET: &str = "fakeSecret/SECRETMARKER+abcdefghij";
const TOKEN: &str = "FakeToken+TOKENMARKER/0123456789=";
const IMDS_TOKEN: &str = "fake-imds-session-IMDSTOKENMARKER";
/// 2030-01-01T00:00:00Z
const EXPIRATION: &str = "2030-01-01T00:00:00Z";
const EXPIRATION_SECS: f64 = 1_893_456_000.0;

// --- the fake credential endpoints (mocks) ---------------------------------------------

/// How the fake answers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// IMDS (token, role, credentials) and ECS (`/v2/credentials/task`) answer.
    Serve,
    /// Every request: HTTP 403.
    Refuse,
    /// Every request: silence, the connection held open.
    Hang,
}

struct FakeAws {
    base: String,
    /// Request lines seen ("GET /path").
    seen: Arc<Mutex<Vec<String>>>,
}

fn creds_json(akid: &str) -> String {
    format!(
        r#"{{"Code":"Success","AccessKeyId":"{akid}","SecretAccessKey":"{SECRET}","Token":"{TOKEN}","Expiration":"{EXPIRATION}"}}"#
    )
}

fn answer(mode: Mode, method: &str, path: &str, imds_token: bool) -> (u16, String) {
    if mode == Mode::Refuse {
        return (403, "no".into());
    }
    match (method, path) {
        ("PUT", "/latest/api/token") => (200, IMDS_TOKEN.into()),
        ("GET", "/latest/meta-data/iam/security-credentials/") if imds_token => {
            (200, "fake-role\n".into())
        }
        ("GET", "/latest/meta-data/iam/security-credentials/fake-role") if imds_token => {
            (200, creds_json(IMDS_AKID))
        }
        ("GET", "/v2/credentials/task") => (200, creds_json(ECS_AKID)),
        ("GET", "/latest/meta-data/placement/availability-zone-id") => (200, "use1-az4".into()),
        _ => (404, "not found".into()),
    }
}

/// A fake AWS credential endpoint on 127.0.0.1 (instance metadata and ECS in one).
fn fake_aws(mode: Mode) -> FakeAws {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut r = BufReader::new(stream.try_clone().unwrap());
            let mut first = String::new();
            let _ = r.read_line(&mut first);
            let mut token = false;
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
                token |= h
                    .to_ascii_lowercase()
                    .starts_with("x-aws-ec2-metadata-token:")
                    && h.contains(IMDS_TOKEN);
            }
            let mut parts = first.split_whitespace();
            let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            log.lock().unwrap().push(format!("{method} {path}"));
            if mode == Mode::Hang {
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_secs(10));
                    drop(stream);
                });
                continue;
            }
            let (status, body) = answer(mode, method, path, token);
            let mut s = stream;
            let _ = write!(
                s,
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    FakeAws { base, seen }
}

/// A base URL on 127.0.0.1 where nothing listens.
fn closed() -> String {
    format!("http://127.0.0.1:{}", refused_port())
}

// --- the root --------------------------------------------------------------------------

/// A test host key (made once per test process; mount.efs makes its own where a test
/// lets it: RSA-3072 generation costs seconds).
fn test_key_pem() -> &'static str {
    static KEY: OnceLock<String> = OnceLock::new();
    KEY.get_or_init(|| efs_iam::HostKey::generate().unwrap().private_key_pem())
}

/// A root whose config sends instance metadata and ECS to `aws` (STS to a closed port),
/// with the host key at `<root>/privateKey.pem` (made beforehand unless `fresh_key`).
fn iam_root(aws: &str, fresh_key: bool, extra_mount: &str) -> Root {
    let root = Root::new(&format!(
        "instance_metadata_url = \"{aws}\"\necs_credentials_url = \"{aws}\"\nsts_endpoint_url = \"{}/\"\n{extra_mount}",
        closed()
    ));
    let key = key_path(&root);
    let text = std::fs::read_to_string(&root.config).unwrap();
    let text = text.replacen(
        "[paths]\n",
        &format!("[paths]\nprivate_key = \"{}\"\n", key.display()),
        1,
    );
    std::fs::write(&root.config, text).unwrap();
    std::fs::create_dir_all(root.dir.path("home")).unwrap();
    if !fresh_key {
        std::fs::write(&key, test_key_pem()).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o400)).unwrap();
    }
    root
}

fn key_path(root: &Root) -> PathBuf {
    root.dir.path("privateKey.pem")
}

/// Runs mount.efs with an environment that names no credentials but those in the root.
fn mount(root: &Root, args: &[&str], env: &[(&str, &str)]) -> Run {
    let home = root.dir.path("home");
    let creds = root.dir.path("home/credentials");
    let config = root.dir.path("home/config");
    let (home, creds, config) = (
        home.to_str().unwrap(),
        creds.to_str().unwrap(),
        config.to_str().unwrap(),
    );
    let mut all: Vec<(&str, &str)> = vec![
        ("AWS_REGION", "us-east-1"),
        ("HOME", home),
        ("AWS_SHARED_CREDENTIALS_FILE", creds),
        ("AWS_CONFIG_FILE", config),
    ];
    // empty is unset for the credential chain
    for var in [
        "AWS_PROFILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CA_BUNDLE",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
    ] {
        all.push((var, ""));
    }
    all.extend_from_slice(env);
    root.mount_env(args, &all)
}

/// A free loopback address for a "mount target" on port 2049, in a block of this process
/// (testkit's `target_addr` hands out the same few addresses in every test process, and
/// other test runs on the machine may hold them).
fn mount_target_addr() -> SocketAddr {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let block = 100 + (std::process::id() % 100) as u8;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let addr = SocketAddr::from(([127, block, (n / 250) as u8, (n % 250) as u8 + 1], 2049));
        if TcpListener::bind(addr).is_ok() {
            return addr;
        }
    }
}

async fn server(root: &Root) -> (TlsServer, String) {
    let addr = mount_target_addr();
    let s = TlsServer::start_on(addr, &root.ca.issue(WILDCARD), Behaviour::Echo).await;
    (s, addr.ip().to_string())
}

/// The state of the mount at `mp` (its port from the mount.nfs4 call).
fn state_of(root: &Root, mp: &str) -> (String, MountState) {
    let (_, path) = root.state_of_mount(mp);
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    (name, MountState::read(&path).unwrap())
}

/// The DER of a PEM certificate file.
fn cert_der(path: &Path) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    let pem = std::fs::read(path).unwrap();
    rustls_pki_types::CertificateDer::from_pem_slice(&pem)
        .unwrap()
        .to_vec()
}

/// What the fake EFS says of the certificate at `path`.
fn verdict(path: &Path, akid: Option<&str>, ap: Option<&str>) -> Verdict {
    let known = |id: &str| {
        (Some(id) == akid).then(|| KnownKey {
            secret_access_key: SECRET.into(),
            session_token: (id != PROFILE_AKID).then(|| TOKEN.into()),
        })
    };
    authorize(
        &cert_der(path),
        &Expect {
            fs_id: FS_ID,
            access_point: ap,
            region: "us-east-1",
            service: efs_iam::EFS_SERVICE,
            require_iam: akid.is_some(),
            known_key: &known,
            now: time::OffsetDateTime::now_utc(),
        },
    )
}

fn mode_of(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
}

/// Every log file of the root, concatenated.
fn all_logs(root: &Root) -> String {
    let mut text = String::new();
    for e in std::fs::read_dir(root.dir.path("log")).unwrap().flatten() {
        text.push_str(&String::from_utf8_lossy(&std::fs::read(e.path()).unwrap()));
    }
    text
}

fn assert_no_secret_logged(root: &Root) {
    let logs = all_logs(root);
    for secret in [SECRET, TOKEN, IMDS_TOKEN, "SECRETMARKER", "TOKENMARKER"] {
        assert!(!logs.contains(secret), "{secret} logged:\n{logs}");
    }
}

/// Checks what a successful client-certificate mount at `mp` left: its state records
/// the certificate, the file is private, the tunnel is told, and the fake EFS lets it in
/// as `akid` (with `ap`). The record, for more checks.
fn assert_certified(
    root: &Root,
    mp: &str,
    akid: Option<&str>,
    ap: Option<&str>,
    method: Option<&str>,
    source: &str,
) -> ClientCertRecord {
    let (name, st) = state_of(root, mp);
    let rec = st.client_cert.clone().expect("client_cert in the state");
    assert_eq!(
        rec.certificate,
        state::client_cert_path(&root.state_dir(), &name)
    );
    assert_eq!(rec.private_key, key_path(root));
    assert_eq!(rec.access_point.as_deref(), ap);
    assert_eq!(rec.iam_source.as_deref(), method);
    assert_eq!(rec.region, "us-east-1");
    assert!(!rec.common_name.is_empty() && rec.common_name.chars().count() <= 64);
    let now = state::unix_time();
    assert!((now - 60.0..=now).contains(&rec.issued), "{rec:?}");
    assert!(
        (rec.not_after - rec.issued - 3.0 * 3600.0).abs() < 1.0,
        "{rec:?}"
    );
    let expect_expiry = akid.filter(|a| *a != PROFILE_AKID).map(|_| EXPIRATION_SECS);
    assert_eq!(rec.credentials_expire, expect_expiry);
    assert!(rec.renewed.is_none() && rec.renewal_error.is_none());
    // not a file the watchdog deletes with the state: it removes the certificate itself
    assert!(!st.files.contains(&rec.certificate));

    assert_eq!(mode_of(&rec.certificate), 0o600);
    assert_eq!(mode_of(rec.certificate.parent().unwrap()), 0o700);
    let dir_entries: Vec<_> = std::fs::read_dir(rec.certificate.parent().unwrap())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        dir_entries,
        vec![std::ffi::OsString::from("certificate.pem")]
    );

    let cmd = st.cmd.join(" ");
    assert!(
        cmd.contains(&format!(
            "--client-cert {} --client-key {}",
            rec.certificate.display(),
            key_path(root).display()
        )),
        "{cmd}"
    );
    let expected_source = source;
    match verdict(&rec.certificate, akid, ap) {
        Verdict::Allowed(Identity {
            access_key_id,
            access_point,
            source,
            efs_utils_version,
        }) => {
            assert_eq!(access_key_id.as_deref(), akid);
            assert_eq!(access_point.as_deref(), ap);
            assert_eq!(source, expected_source);
            assert_eq!(efs_utils_version, "3.2.0");
        }
        Verdict::Denied(why) => panic!("the fake EFS refused the certificate: {why:?}"),
    }
    // signed by the host key
    let key = efs_iam::HostKey::from_pem(&std::fs::read(key_path(root)).unwrap()).unwrap();
    let der = cert_der(&rec.certificate);
    assert!(der
        .windows(key.public_key().len())
        .any(|w| w == key.public_key()));
    rec
}

// --- mounts that work ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn iam_with_the_instance_role_makes_the_host_key_once_and_a_certificate_per_mount() {
    let aws = fake_aws(Mode::Serve);
    let root = iam_root(&aws.base, true, "");
    let (_server, ip) = server(&root).await;
    let mp = root.mountpoint("iam");
    let run = mount(
        &root,
        &[
            "fs-12345678",
            &mp,
            "-o",
            &format!("tls,iam,mounttargetip={ip}"),
        ],
        &[],
    );
    run.assert_ok();
    assert_certified(
        &root,
        &mp,
        Some(IMDS_AKID),
        None,
        Some("metadata:"),
        "unknown",
    );
    // IMDSv2: a token first, then the role and its credentials with it
    let seen = aws.seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        [
            "PUT /latest/api/token",
            "GET /latest/meta-data/iam/security-credentials/",
            "GET /latest/meta-data/iam/security-credentials/fake-role"
        ]
    );

    // The host key was made, read-only for root, and the next mount uses it again.
    let key = key_path(&root);
    assert_eq!(mode_of(&key), 0o400);
    let first_key = std::fs::read(&key).unwrap();
    let mp2 = root.mountpoint("iam2");
    mount(
        &root,
        &[
            "fs-12345678",
            &mp2,
            "-o",
            &format!("tls,iam,mounttargetip={ip}"),
        ],
        &[],
    )
    .assert_ok();
    assert_eq!(std::fs::read(&key).unwrap(), first_key);
    let second = assert_certified(
        &root,
        &mp2,
        Some(IMDS_AKID),
        None,
        Some("metadata:"),
        "unknown",
    );
    assert_ne!(
        second.certificate,
        state_of(&root, &mp).1.client_cert.unwrap().certificate
    );
    assert_eq!(root.tunnel_pids().len(), 2);

    let log = root.log();
    assert!(
        log.contains(&format!(
            "IAM credentials for {FS_ID}: access key id {IMDS_AKID} from metadata:"
        )),
        "{log}"
    );
    assert_no_secret_logged(&root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn iam_with_a_named_profile_from_the_credentials_file() {
    let aws = fake_aws(Mode::Serve);
    let root = iam_root(&aws.base, false, "");
    std::fs::write(
        root.dir.path("home/credentials"),
        format!("[default]\naws_access_key_id = AKIAFAKEDEFAULT00001\naws_secret_access_key = other\n\n[p]\naws_access_key_id = {PROFILE_AKID}\naws_secret_access_key = {SECRET}\n"),
    )
    .unwrap();
    let (_server, ip) = server(&root).await;
    let mp = root.mountpoint("profile");
    mount(
        &root,
        &[
            "fs-12345678:/",
            &mp,
            "-o",
            &format!("tls,iam,awsprofile=p,mounttargetip={ip}"),
        ],
        &[],
    )
    .assert_ok();
    assert_certified(
        &root,
        &mp,
        Some(PROFILE_AKID),
        None,
        Some("credentials:p"),
        "unknown",
    );
    assert!(
        aws.seen.lock().unwrap().is_empty(),
        "no endpoint asked for a profile"
    );
    assert_no_secret_logged(&root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn iam_with_awscredsuri_from_the_ecs_endpoint_and_an_access_point() {
    let aws = fake_aws(Mode::Serve);
    let root = iam_root(&aws.base, false, "");
    // [client-info] source goes into the certificate (the EFS CSI driver writes k8s)
    let mut config = std::fs::OpenOptions::new()
        .append(true)
        .open(&root.config)
        .unwrap();
    writeln!(config, "\n[client-info]\nsource = \"k8s\"").unwrap();
    let (_server, ip) = server(&root).await;
    let mp = root.mountpoint("ecs");
    let run = mount(
        &root,
        &[
            "fs-12345678",
            &mp,
            "-o",
            &format!(
                "tls,iam,awscredsuri=/v2/credentials/task,accesspoint={AP},mounttargetip={ip}"
            ),
        ],
        &[],
    );
    run.assert_ok();
    assert_certified(
        &root,
        &mp,
        Some(ECS_AKID),
        Some(AP),
        Some("ecs:/v2/credentials/task"),
        "k8s",
    );
    assert_eq!(
        aws.seen.lock().unwrap().clone(),
        ["GET /v2/credentials/task"]
    );
    // our options never reach mount.nfs4
    let nfs = &root.nfs_calls()[0][3];
    assert!(
        !nfs.contains("iam") && !nfs.contains("awscredsuri") && !nfs.contains("accesspoint"),
        "{nfs}"
    );
    assert_no_secret_logged(&root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_access_point_without_iam_asks_for_no_credentials() {
    let aws = fake_aws(Mode::Serve);
    let root = iam_root(&aws.base, false, "");
    let (_server, ip) = server(&root).await;
    let mp = root.mountpoint("ap");
    mount(
        &root,
        &[
            "fs-12345678",
            &mp,
            "-o",
            &format!("tls,accesspoint={AP},mounttargetip={ip}"),
        ],
        &[],
    )
    .assert_ok();
    assert_certified(&root, &mp, None, Some(AP), None, "unknown");
    assert!(aws.seen.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_plain_tls_mount_has_no_client_certificate() {
    let root = iam_root(&closed(), false, "");
    let (_server, ip) = server(&root).await;
    let mp = root.mountpoint("plain");
    mount(
        &root,
        &["fs-12345678", &mp, "-o", &format!("tls,mounttargetip={ip}")],
        &[],
    )
    .assert_ok();
    let (_, st) = state_of(&root, &mp);
    assert!(st.client_cert.is_none());
    assert!(!st.cmd.iter().any(|a| a == "--client-cert"));
    assert!(!root.state_files().iter().any(|n| n.ends_with('+')));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failure_after_the_certificate_was_written_removes_it() {
    let aws = fake_aws(Mode::Serve);
    let root = iam_root(&aws.base, false, "");
    let (_server, ip) = server(&root).await;
    root.script_nfs(&["32 mount.nfs4: access denied by server while mounting 127.0.0.1:/"]);
    let mp = root.mountpoint("denied");
    let run = mount(
        &root,
        &[
            "fs-12345678",
            &mp,
            "-o",
            &format!("tls,iam,accesspoint={AP},mounttargetip={ip}"),
        ],
        &[],
    );
    assert_eq!(run.code(), Some(32), "{}", run.stderr());
    assert!(run.stderr().contains("access denied by server"));
    root.assert_nothing_left();
    assert_no_secret_logged(&root);
}

// --- refusals --------------------------------------------------------------------------

/// A refused `-o OPTS` mount: exit 32, one line containing each of `want`, no
/// mount.nfs4, nothing in the state dir, no tunnel, no secret in the logs.
fn assert_refused(root: &Root, opts: &str, env: &[(&str, &str)], want: &[&str]) -> Run {
    let mp = root.mountpoint("refused");
    let run = mount(root, &["fs-12345678", &mp, "-o", opts], env);
    let err = run.stderr();
    eprintln!("-o {opts}: {err}");
    assert_eq!(run.code(), Some(32), "-o {opts}: {err}");
    assert_eq!(err.trim().lines().count(), 1, "-o {opts}: {err}");
    for w in want {
        assert!(err.contains(w), "-o {opts}: {w:?} not in {err}");
    }
    assert!(root.nfs_calls().is_empty(), "mount.nfs4 must not run");
    root.assert_nothing_left();
    assert!(
        !root.state_dir().exists() || root.state_files().is_empty(),
        "{:?}",
        root.state_files()
    );
    assert!(
        root.log().contains(err.trim()),
        "the reason is in mount.log"
    );
    assert_no_secret_logged(root);
    run
}

#[test]
fn no_credentials_anywhere_says_where_it_looked() {
    let imds = closed();
    let root = iam_root(&imds, false, "");
    let creds = root.dir.path("home/credentials");
    assert_refused(
        &root,
        "tls,iam,mounttargetip=127.0.0.1",
        &[],
        &[
            &format!("cannot mount {FS_ID} with iam: no AWS credentials for iam"),
            &format!("no [default] aws_access_key_id in {}", creds.display()),
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI unset",
            &format!("instance metadata at {imds}/latest/api/token"),
            "attach an IAM role to the instance",
        ],
    );
}

#[test]
fn an_unknown_profile_is_named() {
    let aws = fake_aws(Mode::Serve);
    let root = iam_root(&aws.base, false, "");
    std::fs::write(
        root.dir.path("home/credentials"),
        format!("[other]\naws_access_key_id = {PROFILE_AKID}\naws_secret_access_key = {SECRET}\n"),
    )
    .unwrap();
    assert_refused(
        &root,
        "tls,iam,awsprofile=nope,mounttargetip=127.0.0.1",
        &[],
        &["AWS profile [nope] not found in", "--profile nope"],
    );
    // nor does the instance role stand in for a profile that was asked for
    assert!(aws.seen.lock().unwrap().is_empty());
}

#[test]
fn a_credential_endpoint_that_refuses_is_named() {
    let aws = fake_aws(Mode::Refuse);
    let root = iam_root(&aws.base, false, "");
    assert_refused(
        &root,
        "tls,iam,awscredsuri=/v2/credentials/task,mounttargetip=127.0.0.1",
        &[],
        &[&format!(
            "ECS at {}/v2/credentials/task refused to give AWS credentials: HTTP 403",
            aws.base
        )],
    );
}

#[test]
fn a_credential_endpoint_that_does_not_answer_is_named() {
    let aws = fake_aws(Mode::Hang);
    let root = iam_root(&aws.base, false, "");
    let run = assert_refused(
        &root,
        "tls,iam,awscredsuri=/v2/credentials/task,mounttargetip=127.0.0.1",
        &[],
        &[&format!(
            "cannot get AWS credentials from ECS at {}/v2/credentials/task: no answer within",
            aws.base
        )],
    );
    assert!(run.took < Duration::from_secs(8), "took {:?}", run.took);
}

#[test]
fn an_unreadable_web_identity_token_file_is_named() {
    let aws = fake_aws(Mode::Serve);
    let root = iam_root(&aws.base, false, "");
    let jwt = root.dir.path("no-such-token");
    assert_refused(
        &root,
        &format!(
            "tls,iam,rolearn=arn:aws:iam::123456789012:role/efs,jwtpath={},mounttargetip=127.0.0.1",
            jwt.display()
        ),
        &[],
        &[&format!(
            "cannot read the web identity token file {}",
            jwt.display()
        )],
    );
    // not the instance role instead
    assert!(aws.seen.lock().unwrap().is_empty());
}

#[test]
fn a_host_key_that_cannot_be_made_is_named() {
    let root = iam_root(&closed(), true, "");
    let key = root.dir.path("no-such-dir/privateKey.pem");
    let text = std::fs::read_to_string(&root.config).unwrap();
    let text = text.replace(
        &format!("private_key = \"{}\"", key_path(&root).display()),
        &format!("private_key = \"{}\"", key.display()),
    );
    std::fs::write(&root.config, text).unwrap();
    assert_refused(
        &root,
        &format!("tls,accesspoint={AP},mounttargetip=127.0.0.1"),
        &[],
        &[
            &format!(
                "cannot make the client certificate for {FS_ID}: cannot create the client key {}",
                key.display()
            ),
            "[paths] private_key",
        ],
    );
}

#[test]
fn web_identity_options_alone_are_a_usage_error() {
    let root = iam_root(&closed(), false, "");
    let mp = root.mountpoint("x");
    let run = mount(
        &root,
        &[
            "fs-12345678",
            &mp,
            "-o",
            "tls,iam,rolearn=arn:aws:iam::1:role/r",
        ],
        &[],
    );
    assert_eq!(run.code(), Some(1), "{}", run.stderr());
    assert!(run.stderr().contains("go together"), "{}", run.stderr());
    root.assert_nothing_left();
}

// --- sharing a connection --------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mount_of_another_access_point_on_the_same_connection_is_refused() {
    let aws = fake_aws(Mode::Serve);
    let root = iam_root(&aws.base, false, "");
    let (_server, ip) = server(&root).await;
    let first = root.mountpoint("first");
    mount(
        &root,
        &[
            "fs-12345678",
            &first,
            "-o",
            &format!("tls,accesspoint={AP},mounttargetip={ip}"),
        ],
        &[],
    )
    .assert_ok();
    let (_, first_state) = state_of(&root, &first);
    // The stand-in kernel puts every further mount on the first one's connection.
    std::fs::write(
        root.dir.path("kernel.trunk-to"),
        first_state.port.to_string(),
    )
    .unwrap();

    // The same access point rides on it (and keeps its certificate for teardown).
    let same = root.mountpoint("same");
    mount(
        &root,
        &[
            "fs-12345678",
            &same,
            "-o",
            &format!("tls,accesspoint={AP},mounttargetip={ip}"),
        ],
        &[],
    )
    .assert_ok();
    let (_, rider) = state_of(&root, &same);
    assert_eq!(rider.served_by, Some(first_state.port));
    assert!(rider.client_cert.unwrap().certificate.exists());

    // Another one would be authorized as the first: refused, nothing of it left.
    let before = root.state_files();
    let other = root.mountpoint("other");
    let run = mount(
        &root,
        &[
            "fs-12345678",
            &other,
            "-o",
            &format!("tls,accesspoint={AP2},mounttargetip={ip}"),
        ],
        &[],
    );
    assert_eq!(run.code(), Some(32), "{}", run.stderr());
    let err = run.stderr();
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!(
            "{FS_ID} is already mounted at {first} as another client (access point (accesspoint): {AP2} here, {AP} there)"
        )) && err.contains("-o netns="),
        "{err}"
    );
    assert_eq!(root.state_files(), before);
    assert_eq!(root.tunnel_pids(), vec![first_state.pid]);
}

// --- end to end through the tunnel -----------------------------------------------------

/// Forwards connections to `listen` (a "mount target" on port 2049) to `to`: the fake
/// EFS with client authentication listens on a port of its own.
fn forward(listen: SocketAddr, to: SocketAddr) {
    let l = TcpListener::bind(listen).unwrap();
    std::thread::spawn(move || {
        for client in l.incoming().flatten() {
            let Ok(server) = TcpStream::connect(to) else {
                continue;
            };
            for (mut a, mut b) in [
                (client.try_clone().unwrap(), server.try_clone().unwrap()),
                (server, client),
            ] {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut a, &mut b);
                    let _ = b.shutdown(std::net::Shutdown::Write);
                });
            }
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_iam_mount_is_let_in_by_a_fake_efs_that_requires_the_certificate() {
    let aws = fake_aws(Mode::Serve);
    let root = iam_root(&aws.base, false, "");
    let verifier = FakeEfsVerifier::new(FakeEfsPolicy {
        access_point: Some(AP.into()),
        require_iam: true,
        ..FakeEfsPolicy::new().with_key(IMDS_AKID, SECRET, Some(TOKEN))
    });
    let efs = TlsServer::start_requiring_client_cert(
        &root.ca.issue(WILDCARD),
        Behaviour::Echo,
        verifier.clone(),
    )
    .await;
    let target = mount_target_addr();
    forward(target, efs.addr);
    let mp = root.mountpoint("e2e");
    mount(
        &root,
        &[
            "fs-12345678",
            &mp,
            "-o",
            &format!("tls,iam,accesspoint={AP},mounttargetip={}", target.ip()),
        ],
        &[],
    )
    .assert_ok();
    // The tunnel's first handshake, at mount, was the fake EFS's to judge.
    assert!(
        !verifier.verdicts().is_empty(),
        "no client certificate was presented"
    );
    let (_, st) = state_of(&root, &mp);
    let mut s = TcpStream::connect(("127.0.0.1", st.port)).unwrap();
    s.write_all(b"NULL RPC").unwrap();
    let mut back = [0u8; 8];
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"NULL RPC");
    let verdicts = verifier.verdicts();
    assert!(!verdicts.is_empty());
    for v in verdicts {
        match v {
            Verdict::Allowed(who) => {
                assert_eq!(who.access_key_id.as_deref(), Some(IMDS_AKID));
                assert_eq!(who.access_point.as_deref(), Some(AP));
            }
            Verdict::Denied(why) => panic!("refused: {why:?}"),
        }
    }
    assert_no_secret_logged(&root);
}

// --- crossaccount ------------------------------------------------------------------------

#[test]
fn crossaccount_without_an_az_id_from_instance_metadata_is_refused_as_the_incumbent_does() {
    let imds = closed();
    let root = iam_root(&imds, false, "");
    let mp = root.mountpoint("cross");
    let run = mount(&root, &["fs-12345678", &mp, "-o", "tls,crossaccount"], &[]);
    assert_eq!(run.code(), Some(1), "{}", run.stderr());
    assert_eq!(
        run.stderr().trim(),
        "Cannot retrieve AZ-ID from metadata service. This is required for the crossaccount mount option."
    );
    assert!(root.nfs_calls().is_empty());
    root.assert_nothing_left();
}

#[test]
fn crossaccount_asks_instance_metadata_for_the_az_id_only() {
    // The name it builds (use1-az4.fs-12345678.efs.us-east-1.amazonaws.com) cannot be
    // resolved here without a packet beyond loopback, so the mount is stopped right
    // after the AZ ID by a CA file that does not exist; the name itself is unit-tested
    // (target::cross_account_dns_name) and mounted in the e2e guest.
    let aws = fake_aws(Mode::Serve);
    let root = iam_root(&aws.base, false, "");
    let mp = root.mountpoint("cross");
    let run = mount(
        &root,
        &[
            "fs-12345678",
            &mp,
            "-o",
            "tls,crossaccount,cafile=/nonexistent/ca.pem",
        ],
        &[],
    );
    assert_ne!(run.code(), Some(0), "{}", run.stderr());
    let seen = aws.seen.lock().unwrap().clone();
    assert!(
        seen.iter()
            .any(|r| r == "GET /latest/meta-data/placement/availability-zone-id"),
        "{seen:?}"
    );
    assert!(root.nfs_calls().is_empty());
    root.assert_nothing_left();
}

// --- the mount-target-IP fallback ------------------------------------------------------
//
// A file system whose DNS name does not resolve: the name has a first label of 64
// octets, which glibc refuses to put in a query (EAI_NONAME, no packet sent; checked in
// `fallback.rs`), and which the certificate name leaves out as it leaves out an AZ.
// The EFS and EC2 APIs are a fake that verifies the SigV4 signature
// (`efs_testkit::aws_api`); the credentials come from the fake instance metadata.

use efs_testkit::aws_api::{ApiFixture, FakeAwsApi};

fn unresolvable_format() -> String {
    format!("{}.{{fs_id}}.efs.{{region}}.amazonaws.com", "a".repeat(64))
}

fn fixture(ip: &str, secret: &str) -> ApiFixture {
    ApiFixture {
        access_key_id: IMDS_AKID.into(),
        secret: secret.into(),
        session_token: Some(TOKEN.into()),
        region: "us-east-1".into(),
        fs_id: FS_ID.into(),
        // use1-az4 is the fake instance metadata's AZ ID; the other target is elsewhere
        mount_targets: format!(
            r#"{{"MountTargets":[
              {{"MountTargetId":"fsmt-1","LifeCycleState":"available","IpAddress":"192.0.2.9","AvailabilityZoneId":"use1-az1","AvailabilityZoneName":"us-east-1a"}},
              {{"MountTargetId":"fsmt-2","LifeCycleState":"available","IpAddress":"{ip}","AvailabilityZoneId":"use1-az4","AvailabilityZoneName":"us-east-1b"}}]}}"#
        ),
        zones: vec![("us-east-1b".into(), "use1-az4".into())],
    }
}

fn fallback_root(aws: &str, api: &FakeAwsApi) -> Root {
    iam_root(
        aws,
        false,
        &format!(
            "fall_back_to_mount_target_ip_address_enabled = true\ndns_name_format = \"{}\"\nefs_endpoint_url = \"{}\"\nec2_endpoint_url = \"{}\"\n",
            unresolvable_format(),
            api.base,
            api.base
        ),
    )
}

/// A fallback root, the fake APIs naming `target`'s address (with `secret` as the
/// instance role's), and the mount target's TLS server there.
async fn fallback_setup(aws: &FakeAws, secret: &str) -> (Root, FakeAwsApi, TlsServer, String) {
    let addr = mount_target_addr();
    let ip = addr.ip().to_string();
    let api = FakeAwsApi::start(fixture(&ip, secret));
    let root = fallback_root(&aws.base, &api);
    let server = TlsServer::start_on(addr, &root.ca.issue(WILDCARD), Behaviour::Echo).await;
    (root, api, server, ip)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_name_that_does_not_resolve_is_mounted_through_the_mount_target_in_this_az() {
    let aws = fake_aws(Mode::Serve);
    let (root, api, _server, ip) = fallback_setup(&aws, SECRET).await;
    let mp = root.mountpoint("fallback");
    let run = mount(&root, &["fs-12345678", &mp, "-o", "tls"], &[]);
    run.assert_ok();
    // the tunnel connects to the address the API named, and checks the DNS name
    let (_, st) = state_of(&root, &mp);
    let cmd = st.cmd.join(" ");
    assert!(cmd.contains(&format!("{ip}:2049")), "{cmd}");
    assert!(cmd.contains(CHECK_HOST), "{cmd}");
    // one signed DescribeMountTargets; the AZ ID came from instance metadata, so no EC2
    let calls = api.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].operation, "DescribeMountTargets");
    assert_eq!(calls[0].verdict, Ok(()));
    assert!(aws
        .seen
        .lock()
        .unwrap()
        .contains(&"GET /latest/meta-data/placement/availability-zone-id".to_string()));
    let log = root.log();
    assert!(
        log.contains(&format!(
            "Found fall back mount target ip address {ip} for file system {FS_ID}"
        )),
        "{log}"
    );
    assert!(log.contains("Successfully mounted"), "{log}");
    assert_no_secret_logged(&root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_az_option_is_mapped_to_its_zone_id_through_ec2_and_a_mount_without_tls_uses_the_address(
) {
    let aws = fake_aws(Mode::Serve);
    let (root, api, _server, ip) = fallback_setup(&aws, SECRET).await;
    let mp = root.mountpoint("plain");
    mount(
        &root,
        &["fs-12345678:/sub", &mp, "-o", "az=us-east-1b"],
        &[],
    )
    .assert_ok();
    let calls = root.nfs_calls();
    assert_eq!(calls.last().unwrap()[0], format!("{ip}:/sub"), "{calls:?}");
    let ops: Vec<(String, bool)> = api
        .calls()
        .into_iter()
        .map(|c| (c.operation, c.verdict.is_ok()))
        .collect();
    assert_eq!(
        ops,
        [
            ("DescribeMountTargets".to_string(), true),
            ("DescribeAvailabilityZones".to_string(), true)
        ]
    );
}

/// A fallback that finds nothing: the incumbent's "Failed to resolve" and why, one line,
/// exit 1, nothing started.
fn assert_not_resolved(root: &Root, opts: &str, why: &str) {
    let mp = root.mountpoint("nothing");
    let run = mount(root, &["fs-12345678", &mp, "-o", opts], &[]);
    let err = run.stderr();
    assert_eq!(run.code(), Some(1), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("Failed to resolve \"aaaa")
            && err.contains("check that your file system ID is correct"),
        "{err}"
    );
    assert!(
        err.trim_end().ends_with(why),
        "{why:?} not at the end of {err}"
    );
    assert!(root.nfs_calls().is_empty());
    root.assert_nothing_left();
    assert_no_secret_logged(root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fallback_that_finds_no_mount_target_says_why_and_leaves_nothing() {
    let aws = fake_aws(Mode::Serve);
    // signed with a secret the fake does not know: refused by signature
    let (root, api, _server, _) = fallback_setup(&aws, "anotherSecret/0123456789abcdefghij").await;
    assert_not_resolved(
        &root,
        "tls",
        "Unexpected error: HTTP 403 The request signature we calculated does not match the signature you provided.",
    );
    assert!(api.calls()[0].verdict.is_err());

    // an AZ with no mount target, named by the option
    let (root, _api, _server, _) = fallback_setup(&aws, SECRET).await;
    assert_not_resolved(
        &root,
        "tls,az=us-east-1z",
        "Invalid availability zone us-east-1z",
    );
}
