//! Each credential source against a fake on 127.0.0.1, the order between them, and the
//! refusals as the operator reads them. Every endpoint is overridden: the defaults
//! (169.254.169.254, 169.254.170.2, sts.*) are never contacted.

mod common;

use common::{closed, creds_json, env, serve, Fake, Reply, Scratch};
use efs_iam::credentials::assume::sign_sts_post;
use efs_iam::credentials::{
    self, obtain, renew, AccessKeyId, Credentials, Endpoints, Error, HttpProblem, ProfileKind,
    Request, SecretAccessKey, Source,
};
use efs_iam::SigningTime;
use std::collections::HashMap;
use std::time::{Duration, Instant};

const IMDS_AKID: &str = "ASIAIMDSEXAMPLE00001";
const ECS_AKID: &str = "ASIAECSEXAMPLE000001";
const POD_AKID: &str = "ASIAPODEXAMPLE000001";
const STS_AKID: &str = "ASIASTSEXAMPLE000001";
const FILE_AKID: &str = "AKIAFILEEXAMPLE00001";
const JWT: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2EifQ.c2ln";

struct World {
    home: Scratch,
    env: HashMap<String, String>,
    ep: Endpoints,
}

/// No source anywhere: empty home, every endpoint a closed port on 127.0.0.1.
fn world() -> World {
    let home = Scratch::new("home");
    let env = env(&[("HOME", home.path().to_str().unwrap())]);
    let ep = Endpoints {
        ecs: closed(),
        imds: closed(),
        imds_token: true,
        imds_token_tries: 1,
        sts: Some(closed()),
        dns_name_suffix: "amazonaws.com".into(),
        timeout: Duration::from_millis(500),
        sts_timeout: Duration::from_millis(1000),
    };
    World { home, env, ep }
}

impl World {
    fn set(&mut self, k: &str, v: &str) {
        self.env.insert(k.into(), v.into());
    }

    fn obtain(&self, req: Request) -> Result<credentials::Obtained, Error> {
        obtain(&req, &self.env, &self.ep)
    }

    /// With `-o awscredsuri=URI`.
    fn ecs_uri(&self, uri: &str) -> Result<credentials::Obtained, Error> {
        self.obtain(Request {
            awscredsuri: Some(uri),
            ..region()
        })
    }

    /// With `-o awsprofile=NAME`.
    fn profile(&self, name: &str) -> Result<credentials::Obtained, Error> {
        self.obtain(Request {
            awsprofile: Some(name),
            ..region()
        })
    }

    /// With `-o rolearn=ROLE,jwtpath=PATH`.
    fn web_identity(&self, jwtpath: Option<&str>) -> Result<credentials::Obtained, Error> {
        self.obtain(Request {
            rolearn: Some(ROLE),
            jwtpath,
            ..region()
        })
    }
}

fn region() -> Request<'static> {
    Request {
        region: "eu-west-1",
        ..Request::default()
    }
}

/// IMDSv2: a token for a PUT with the TTL header, then the role and its credentials
/// only with that token.
fn imds_answer(r: &common::Seen) -> Reply {
    let token_ok = r
        .headers
        .get("x-aws-ec2-metadata-token")
        .map(String::as_str)
        == Some("T0KEN");
    match (r.method.as_str(), r.path.as_str()) {
        ("PUT", "/latest/api/token")
            if r.headers
                .get("x-aws-ec2-metadata-token-ttl-seconds")
                .map(String::as_str)
                == Some("21600") =>
        {
            Reply::Answer(200, "T0KEN".into())
        }
        _ if !token_ok => Reply::Answer(401, String::new()),
        ("GET", "/latest/meta-data/iam/security-credentials/") => {
            Reply::Answer(200, "efs-role\n".into())
        }
        ("GET", "/latest/meta-data/iam/security-credentials/efs-role") => {
            Reply::Answer(200, creds_json(IMDS_AKID))
        }
        _ => Reply::Answer(404, String::new()),
    }
}

fn imds() -> Fake {
    serve(imds_answer)
}

/// ECS and Pod Identity: credentials at `path` (Pod Identity: with `auth` as Authorization).
fn container(path: &'static str, akid: &'static str, auth: Option<&'static str>) -> Fake {
    serve(move |r| {
        if r.path != path {
            return Reply::Answer(404, String::new());
        }
        if auth.is_some() && r.headers.get("authorization").map(String::as_str) != auth {
            return Reply::Answer(403, String::new());
        }
        Reply::Answer(200, creds_json(akid))
    })
}

fn sts() -> Fake {
    serve(|r| {
        let form: HashMap<&str, &str> = r
            .body
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .collect();
        let good = r.method == "POST"
            && form.get("Action") == Some(&"AssumeRoleWithWebIdentity")
            && form.get("Version") == Some(&"2011-06-15")
            && form.get("RoleSessionName") == Some(&"efs-mount-helper")
            && form.get("RoleArn") == Some(&"arn%3Aaws%3Aiam%3A%3A123456789012%3Arole%2Fefs")
            && form.get("WebIdentityToken") == Some(&JWT);
        if good {
            Reply::Answer(200, format!(
                "<AssumeRoleWithWebIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><AssumeRoleWithWebIdentityResult><Credentials><AccessKeyId>{STS_AKID}</AccessKeyId><SecretAccessKey>sts/secret</SecretAccessKey><SessionToken>sts+token=</SessionToken><Expiration>2026-12-01T21:38:06Z</Expiration></Credentials></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>"
            ))
        } else {
            Reply::Answer(400, "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error><Type>Sender</Type><Code>InvalidIdentityToken</Code><Message>Incorrect token audience</Message></Error><RequestId>1</RequestId></ErrorResponse>".into())
        }
    })
}

const ROLE: &str = "arn:aws:iam::123456789012:role/efs";

fn keys_ini(section: &str, akid: &str) -> String {
    format!("[{section}]\naws_access_key_id = {akid}\naws_secret_access_key = file/secret\n")
}

// --- each source ---------------------------------------------------------------

#[test]
fn instance_role_through_imdsv2() {
    let mut w = world();
    let fake = imds();
    w.ep.imds = fake.base.clone();
    let got = w.obtain(region()).unwrap();
    assert_eq!(got.source, Source::InstanceMetadata);
    assert_eq!(got.credentials.access_key_id.as_str(), IMDS_AKID);
    assert_eq!(
        got.credentials.session_token().unwrap().expose(),
        format!("token+{IMDS_AKID}=")
    );
    assert!(got.credentials.expiration.is_some());
    let paths: Vec<String> = fake
        .seen()
        .iter()
        .map(|s| format!("{} {}", s.method, s.path))
        .collect();
    assert_eq!(
        paths,
        [
            "PUT /latest/api/token",
            "GET /latest/meta-data/iam/security-credentials/",
            "GET /latest/meta-data/iam/security-credentials/efs-role"
        ]
    );
}

#[test]
fn imdsv1_when_imds_gives_no_token() {
    let mut w = world();
    let fake = serve(|r| match (r.method.as_str(), r.path.as_str()) {
        ("PUT", _) => Reply::Answer(403, String::new()),
        ("GET", "/latest/meta-data/iam/security-credentials/") => Reply::Answer(200, "r".into()),
        ("GET", "/latest/meta-data/iam/security-credentials/r") => {
            Reply::Answer(200, creds_json(IMDS_AKID))
        }
        _ => Reply::Answer(404, String::new()),
    });
    w.ep.imds = fake.base.clone();
    assert_eq!(w.obtain(region()).unwrap().source, Source::InstanceMetadata);
    assert!(!fake.seen()[1]
        .headers
        .contains_key("x-aws-ec2-metadata-token"));
}

#[test]
fn the_imds_token_is_asked_for_again_when_imds_does_not_answer() {
    let mut w = world();
    let first = std::sync::atomic::AtomicBool::new(true);
    // the first token request goes unanswered
    let fake = serve(move |r| {
        if r.method == "PUT" && first.swap(false, std::sync::atomic::Ordering::SeqCst) {
            return Reply::Hang;
        }
        imds_answer(r)
    });
    w.ep.imds = fake.base.clone();
    w.ep.timeout = Duration::from_millis(300);
    w.ep.imds_token_tries = 2;
    assert_eq!(w.obtain(region()).unwrap().source, Source::InstanceMetadata);
    assert_eq!(fake.seen().iter().filter(|s| s.method == "PUT").count(), 2);
}

#[test]
fn awscredsuri_option() {
    let mut w = world();
    let fake = container("/v2/credentials/task-1", ECS_AKID, None);
    w.ep.ecs = fake.base.clone();
    let got = w.ecs_uri("/v2/credentials/task-1").unwrap();
    assert_eq!(got.source.method(), "ecs:/v2/credentials/task-1");
    assert_eq!(got.credentials.access_key_id.as_str(), ECS_AKID);
}

#[test]
fn ecs_relative_uri_from_the_environment() {
    let mut w = world();
    let fake = container("/v2/credentials/env", ECS_AKID, None);
    w.ep.ecs = fake.base.clone();
    w.set(
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "/v2/credentials/env",
    );
    let got = w.obtain(region()).unwrap();
    assert_eq!(
        got.source,
        Source::Ecs {
            relative_uri: "/v2/credentials/env".into()
        }
    );
}

#[test]
fn pod_identity_sends_the_token_file_as_authorization() {
    let mut w = world();
    let fake = container("/v1/credentials", POD_AKID, Some("pod-token-123"));
    let token = w.home.write("eks/token", "pod-token-123\n");
    let uri = format!("{}/v1/credentials", fake.base);
    w.set("AWS_CONTAINER_CREDENTIALS_FULL_URI", &uri);
    w.set(
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
        token.to_str().unwrap(),
    );
    let got = w.obtain(region()).unwrap();
    assert_eq!(got.credentials.access_key_id.as_str(), POD_AKID);
    assert_eq!(
        got.source.method(),
        format!("podidentity:{uri},{}", token.display())
    );
    assert_eq!(fake.seen()[0].headers["authorization"], "pod-token-123");
}

#[test]
fn web_identity_from_the_options() {
    let mut w = world();
    let fake = sts();
    w.ep.sts = Some(format!("{}/", fake.base));
    let jwt = w.home.write("jwt", &format!("{JWT}\n"));
    let got = w.web_identity(jwt.to_str()).unwrap();
    assert_eq!(got.credentials.access_key_id.as_str(), STS_AKID);
    assert_eq!(
        got.credentials.session_token().unwrap().expose(),
        "sts+token="
    );
    assert_eq!(got.credentials.expiration.unwrap().hour(), 21);
    assert_eq!(
        got.source,
        Source::WebIdentity {
            role_arn: ROLE.into(),
            token_file: jwt.clone()
        }
    );
    assert_eq!(
        fake.seen()[0].headers["content-type"],
        "application/x-www-form-urlencoded"
    );
}

#[test]
fn web_identity_from_the_environment() {
    let mut w = world();
    let fake = sts();
    w.ep.sts = Some(format!("{}/", fake.base));
    let jwt = w.home.write("jwt", JWT);
    w.set("AWS_ROLE_ARN", ROLE);
    w.set("AWS_WEB_IDENTITY_TOKEN_FILE", jwt.to_str().unwrap());
    let got = w.obtain(region()).unwrap();
    assert_eq!(
        got.source.method(),
        format!("webidentity:{ROLE},{}", jwt.display())
    );
}

#[test]
fn named_profile_from_the_credentials_file_then_the_config_file() {
    let mut w = world();
    w.home
        .write(".aws/credentials", &keys_ini("other", FILE_AKID));
    w.home.write(
        ".aws/config",
        &format!("[profile dev]\nregion = eu-west-1\naws_access_key_id = {FILE_AKID}\naws_secret_access_key = s\naws_session_token = tok=\n"),
    );
    let got = w.profile("dev").unwrap();
    assert_eq!(got.source.method(), "config:dev");
    assert_eq!(got.credentials.session_token().unwrap().expose(), "tok=");
    let got = w.profile("other").unwrap();
    assert_eq!(
        got.source,
        Source::Profile {
            profile: "other".into(),
            kind: ProfileKind::CredentialsFile
        }
    );
    // AWS_PROFILE when the option is not given; the option wins over it
    w.set("AWS_PROFILE", "dev");
    assert_eq!(w.obtain(region()).unwrap().source.method(), "config:dev");
    assert_eq!(
        w.profile("other").unwrap().source.method(),
        "credentials:other"
    );
}

#[test]
fn default_profile_only_when_it_has_keys() {
    let mut w = world();
    let fake = imds();
    w.ep.imds = fake.base.clone();
    w.home
        .write(".aws/credentials", "[default]\nregion = eu-west-1\n");
    assert_eq!(w.obtain(region()).unwrap().source, Source::InstanceMetadata);
    w.home
        .write(".aws/credentials", &keys_ini("default", FILE_AKID));
    assert_eq!(
        w.obtain(region()).unwrap().source.method(),
        "credentials:default"
    );
}

#[test]
fn aws_shared_credentials_file_and_aws_config_file_are_honoured() {
    let mut w = world();
    let c = w
        .home
        .write("elsewhere/creds", &keys_ini("default", FILE_AKID));
    w.home.write(
        ".aws/credentials",
        &keys_ini("default", "AKIAWRONGFILE0000001"),
    );
    w.set("AWS_SHARED_CREDENTIALS_FILE", c.to_str().unwrap());
    let got = w.obtain(region()).unwrap();
    assert_eq!(got.credentials.access_key_id.as_str(), FILE_AKID);

    let mut w = world();
    let cfg = w
        .home
        .write("elsewhere/cfg", &keys_ini("profile p", FILE_AKID));
    w.set("AWS_CONFIG_FILE", cfg.to_str().unwrap());
    let got = w.profile("p").unwrap();
    assert_eq!(got.source.method(), "config:p");
}

#[test]
fn credential_process_runs_from_a_trusted_file_only() {
    use std::os::unix::fs::PermissionsExt;
    let mut w = world();
    let marker = w.home.path().join("ran");
    let script = w.home.write(
        "bin/get creds",
        &format!(
            "#!/bin/sh\ntouch '{}'\necho '{{\"Version\": 1, \"AccessKeyId\": \"{FILE_AKID}\", \"SecretAccessKey\": \"p/s\", \"SessionToken\": \"'\"$1\"'\"}}'\n",
            marker.display()
        ),
    );
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o700)).unwrap();
    let config = w.home.write(
        ".aws/config",
        &format!(
            "[profile proc]\ncredential_process = \"{}\" tok3n=\n",
            script.display()
        ),
    );
    w.set("AWS_PROFILE", "proc");
    let got = w.obtain(region()).unwrap();
    assert_eq!(got.source.method(), "named_profile:proc");
    assert_eq!(got.credentials.session_token().unwrap().expose(), "tok3n=");
    assert!(marker.exists());

    // the same file, group-writable: nothing is run
    std::fs::remove_file(&marker).unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o620)).unwrap();
    let e = w.obtain(region()).unwrap_err();
    assert!(matches!(e, Error::UntrustedFile { .. }), "{e}");
    assert!(e.to_string().contains("group- or world-writable"), "{e}");
    assert!(!marker.exists(), "the command ran");
}

/// STS answering AssumeRole, checking the SigV4 signature made with `source`'s keys
/// over the Host it was sent to.
fn sts_assume_role() -> Fake {
    serve(|r| {
        let source = Credentials::new(
            AccessKeyId::new(FILE_AKID).unwrap(),
            SecretAccessKey::new("file/secret").unwrap(),
            None,
            None,
        );
        let amz = r.headers.get("x-amz-date").cloned().unwrap_or_default();
        let time = (amz.len() == 16)
            .then(|| SigningTime::from_utc_time(&format!("{}{}Z", &amz[2..8], &amz[9..15])))
            .flatten();
        let host = r.headers.get("host").cloned().unwrap_or_default();
        let expected = time.map(|t| {
            sign_sts_post(&source, "eu-west-1", &host, t, &r.body)
                .pop()
                .unwrap()
                .1
        });
        let good = r.body.starts_with("Action=AssumeRole&Version=2011-06-15&RoleArn=arn%3Aaws%3Aiam%3A%3A123456789012%3Arole%2Fcross&RoleSessionName=efs-mount-helper&ExternalId=ext-1")
            && expected.as_ref() == r.headers.get("authorization");
        if good {
            Reply::Answer(200, format!("<AssumeRoleResponse><AssumeRoleResult><Credentials><AccessKeyId>{STS_AKID}</AccessKeyId><SecretAccessKey>a/s</SecretAccessKey><SessionToken>a+t=</SessionToken><Expiration>2026-12-01T21:38:06Z</Expiration></Credentials></AssumeRoleResult></AssumeRoleResponse>"))
        } else {
            Reply::Answer(403, "<ErrorResponse><Error><Type>Sender</Type><Code>SignatureDoesNotMatch</Code><Message>no</Message></Error></ErrorResponse>".into())
        }
    })
}

#[test]
fn role_arn_with_source_profile_assumes_the_role_through_sts() {
    let mut w = world();
    let fake = sts_assume_role();
    w.ep.sts = Some(format!("{}/", fake.base));
    w.home
        .write(".aws/credentials", &keys_ini("base", FILE_AKID));
    w.home.write(
        ".aws/config",
        "[profile cross]\nrole_arn = arn:aws:iam::123456789012:role/cross\nsource_profile = base\nexternal_id = ext-1\n",
    );
    let got = w.profile("cross").unwrap();
    assert_eq!(got.credentials.access_key_id.as_str(), STS_AKID);
    assert_eq!(got.source.method(), "named_profile:cross");
    assert!(fake.seen()[0].headers["authorization"].contains(&format!("Credential={FILE_AKID}/")));

    // the same with the wrong source keys: STS's code is shown
    w.home.write(
        ".aws/credentials",
        &keys_ini("base", "AKIAWRONGFILE0000001"),
    );
    let e = w.profile("cross").unwrap_err();
    assert!(
        e.to_string()
            .contains("refused AssumeRole: SignatureDoesNotMatch"),
        "{e}"
    );
}

#[test]
fn role_arn_profiles_without_a_usable_source_say_so() {
    let w = world();
    w.home.write(
        ".aws/config",
        "[profile ec2]\nrole_arn = arn:aws:iam::1:role/x\ncredential_source = Ec2InstanceMetadata\n[profile a]\nrole_arn = r\nsource_profile = b\n[profile b]\nrole_arn = r\nsource_profile = a\n",
    );
    let e = w.profile("ec2").unwrap_err();
    assert!(matches!(e, Error::Unsupported { .. }));
    assert!(
        e.to_string()
            .contains("[ec2] uses role_arn with credential_source"),
        "{e}"
    );
    let e = w.profile("a").unwrap_err();
    assert!(e.to_string().contains("in a loop"), "{e}");
}

// --- the order -------------------------------------------------------------------

#[test]
fn awscredsuri_wins_over_everything_and_is_fatal() {
    let mut w = world();
    let imds = imds();
    w.ep.imds = imds.base.clone();
    w.home
        .write(".aws/credentials", &keys_ini("default", FILE_AKID));
    let req = Request {
        awscredsuri: Some("/v2/credentials/gone"),
        ..region()
    };
    // ECS is a closed port: the error names it, and nothing else is tried
    let e = w.obtain(req).unwrap_err();
    assert!(matches!(e, Error::Endpoint { what: "ECS", .. }), "{e}");
    assert!(e.to_string().contains("/v2/credentials/gone"), "{e}");
    assert!(imds.seen().is_empty());
}

#[test]
fn a_chosen_profile_is_fatal_when_missing() {
    let mut w = world();
    let imds = imds();
    w.ep.imds = imds.base.clone();
    w.home
        .write(".aws/credentials", &keys_ini("default", FILE_AKID));
    let e = w.profile("nope").unwrap_err();
    assert!(matches!(e, Error::ProfileNotFound { .. }));
    let text = e.to_string();
    assert!(
        text.contains("[nope]")
            && text.contains(".aws/credentials")
            && text.contains(".aws/config"),
        "{text}"
    );
    assert!(imds.seen().is_empty());
}

#[test]
fn profiles_are_skipped_when_rolearn_and_jwtpath_are_given() {
    let mut w = world();
    let fake = sts();
    w.ep.sts = Some(format!("{}/", fake.base));
    w.home
        .write(".aws/credentials", &keys_ini("default", FILE_AKID));
    w.set("AWS_PROFILE", "default");
    let jwt = w.home.write("jwt", JWT);
    let got = w.web_identity(jwt.to_str()).unwrap();
    assert_eq!(got.credentials.access_key_id.as_str(), STS_AKID);
    // only one of the two: the profile is used
    let got = w
        .obtain(Request {
            rolearn: Some(ROLE),
            ..region()
        })
        .unwrap();
    assert_eq!(got.credentials.access_key_id.as_str(), FILE_AKID);
}

#[test]
fn web_identity_options_win_over_the_environment() {
    let mut w = world();
    let fake = sts();
    w.ep.sts = Some(format!("{}/", fake.base));
    let good = w.home.write("jwt", JWT);
    let other = w.home.write("other-jwt", "other");
    w.set("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/env");
    w.set("AWS_WEB_IDENTITY_TOKEN_FILE", other.to_str().unwrap());
    let got = w.web_identity(good.to_str()).unwrap();
    assert_eq!(
        got.source,
        Source::WebIdentity {
            role_arn: ROLE.into(),
            token_file: good
        }
    );
    assert_eq!(fake.seen().len(), 1);
}

#[test]
fn ecs_then_pod_identity_then_web_identity_then_instance_role() {
    let mut w = world();
    let ecs = container("/ecs", ECS_AKID, None);
    let pod = container("/pod", POD_AKID, Some("pt"));
    let sts = sts();
    let imds = imds();
    w.ep.ecs = ecs.base.clone();
    w.ep.sts = Some(format!("{}/", sts.base));
    w.ep.imds = imds.base.clone();
    let token = w.home.write("pod-token", "pt");
    let jwt = w.home.write("jwt", JWT);
    w.set("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "/ecs");
    w.set(
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        &format!("{}/pod", pod.base),
    );
    w.set(
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
        token.to_str().unwrap(),
    );
    w.set("AWS_ROLE_ARN", ROLE);
    w.set("AWS_WEB_IDENTITY_TOKEN_FILE", jwt.to_str().unwrap());
    let akid = |w: &World| {
        w.obtain(region())
            .unwrap()
            .credentials
            .access_key_id
            .to_string()
    };
    assert_eq!(akid(&w), ECS_AKID);
    w.env.remove("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI");
    assert_eq!(akid(&w), POD_AKID);
    w.env.remove("AWS_CONTAINER_CREDENTIALS_FULL_URI");
    assert_eq!(akid(&w), STS_AKID);
    w.env.remove("AWS_ROLE_ARN");
    assert_eq!(akid(&w), IMDS_AKID);
}

#[test]
fn a_failing_environment_source_falls_through_to_the_next() {
    let mut w = world();
    let imds = imds();
    w.ep.imds = imds.base.clone();
    // ECS env set but ECS is down; Pod Identity's token file is missing
    w.set("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "/ecs");
    w.set(
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "http://127.0.0.1:1/pod",
    );
    w.set(
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
        "/nonexistent/token",
    );
    assert_eq!(w.obtain(region()).unwrap().source, Source::InstanceMetadata);
}

// --- refusals ----------------------------------------------------------------------

#[test]
fn nothing_anywhere_says_where_it_looked() {
    let mut w = world();
    w.set(
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
        "/nonexistent/pod-token",
    );
    w.set("AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://127.0.0.1:1/x");
    let e = w.obtain(region()).unwrap_err();
    let Error::NoCredentials { tried } = &e else {
        panic!("{e}")
    };
    let text = e.to_string();
    assert!(!text.contains('\n'));
    assert_eq!(tried.len(), 5, "{text}");
    assert!(
        text.contains(&format!("{}/.aws/credentials", w.home.path().display())),
        "{text}"
    );
    assert!(
        text.contains("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI unset"),
        "{text}"
    );
    assert!(
        text.contains("Pod Identity token file /nonexistent/pod-token"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "instance metadata at {}/latest/api/token",
            w.ep.imds
        )),
        "{text}"
    );
    assert!(text.contains("attach an IAM role"), "{text}");
}

#[test]
fn an_instance_without_a_role_says_so() {
    let mut w = world();
    let fake = serve(|r| match r.method.as_str() {
        "PUT" => Reply::Answer(200, "T".into()),
        _ => Reply::Answer(404, String::new()),
    });
    w.ep.imds = fake.base.clone();
    let text = w.obtain(region()).unwrap_err().to_string();
    assert!(text.contains("the instance has no IAM role"), "{text}");
}

#[test]
fn an_endpoint_that_does_not_answer_is_named_within_the_deadline() {
    let mut w = world();
    let fake = serve(|_| Reply::Hang);
    w.ep.ecs = fake.base.clone();
    w.ep.timeout = Duration::from_millis(300);
    let start = Instant::now();
    let e = w.ecs_uri("/slow").unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert!(
        matches!(
            &e,
            Error::Endpoint {
                problem: HttpProblem::TimedOut(_),
                ..
            }
        ),
        "{e}"
    );
    assert!(
        e.to_string().contains(&format!(
            "ECS at {}/slow: no answer within 300 ms",
            fake.base
        )),
        "{e}"
    );
}

#[test]
fn an_endpoint_that_refuses_is_named_with_its_status() {
    let mut w = world();
    let fake = container("/right", ECS_AKID, None);
    w.ep.ecs = fake.base.clone();
    let e = w.ecs_uri("/wrong").unwrap_err();
    assert_eq!(
        e,
        Error::Status {
            what: "ECS",
            url: format!("{}/wrong", fake.base),
            status: 404
        }
    );
}

#[test]
fn an_oversized_answer_is_not_read_whole() {
    let mut w = world();
    let fake = serve(|_| Reply::Answer(200, "x".repeat(credentials::MAX_ANSWER + 1)));
    w.ep.ecs = fake.base.clone();
    let e = w.ecs_uri("/big").unwrap_err();
    assert!(
        matches!(
            e,
            Error::Endpoint {
                problem: HttpProblem::TooLarge,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn sts_refusing_the_token_shows_its_error_code_and_is_fatal_for_the_options() {
    let mut w = world();
    let fake = sts();
    let imds = imds();
    w.ep.sts = Some(format!("{}/", fake.base));
    w.ep.imds = imds.base.clone();
    let jwt = w.home.write("jwt", "not-the-right-token");
    let e = w.web_identity(jwt.to_str()).unwrap_err();
    assert!(matches!(e, Error::StsRefused { .. }), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("InvalidIdentityToken: Incorrect token audience"),
        "{text}"
    );
    assert!(imds.seen().is_empty(), "fell through to the instance role");
    assert!(
        !text.contains("not-the-right-token"),
        "token in the message"
    );
}

#[test]
fn an_unreadable_token_file_is_named() {
    let w = world();
    let e = w.web_identity(Some("/nonexistent/jwt")).unwrap_err();
    assert!(matches!(e, Error::TokenFile { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("web identity token file /nonexistent/jwt"),
        "{e}"
    );
}

#[test]
fn pod_identity_refuses_a_plain_http_uri_off_the_host() {
    let mut w = world();
    let token = w.home.write("t", "pt");
    w.set(
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "http://10.1.2.3/creds",
    );
    w.set(
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
        token.to_str().unwrap(),
    );
    let text = w.obtain(region()).unwrap_err().to_string();
    assert!(text.contains("is neither https nor a loopback"), "{text}");
}

#[test]
fn a_bad_aws_ca_bundle_is_named() {
    let mut w = world();
    w.ep.sts = None; // https://sts.eu-west-1.amazonaws.com/, never reached: the bundle fails first
    let bundle = w.home.write("bundle.pem", "no certificates here");
    w.set("AWS_CA_BUNDLE", bundle.to_str().unwrap());
    let jwt = w.home.write("jwt", JWT);
    let e = w.web_identity(jwt.to_str()).unwrap_err();
    assert!(matches!(e, Error::CaBundle { .. }), "{e}");
    assert!(e.to_string().contains("bundle.pem"), "{e}");
}

#[test]
fn a_malformed_answer_is_refused_with_the_reason() {
    let mut w = world();
    let fake = serve(|_| {
        Reply::Answer(
            200,
            r#"{"AccessKeyId":"ASIAECSEXAMPLE000001","SecretAccessKey":"s","Token":"bad token"}"#
                .into(),
        )
    });
    w.ep.ecs = fake.base.clone();
    let text = w.ecs_uri("/x").unwrap_err().to_string();
    assert!(
        text.contains("did not answer with AWS credentials: answer's session token"),
        "{text}"
    );
}

// --- renewal -------------------------------------------------------------------------

#[test]
fn renewal_asks_the_same_source_again() {
    let mut w = world();
    let ecs = container("/v2/credentials/task-1", ECS_AKID, None);
    let imds = imds();
    w.ep.ecs = ecs.base.clone();
    w.ep.imds = imds.base.clone();
    let source = Source::from_method("ecs:/v2/credentials/task-1").unwrap();
    let c = renew(&source, "eu-west-1", &w.env, &w.ep).unwrap();
    assert_eq!(c.access_key_id.as_str(), ECS_AKID);
    assert!(imds.seen().is_empty());
    let c = renew(&Source::InstanceMetadata, "eu-west-1", &w.env, &w.ep).unwrap();
    assert_eq!(c.access_key_id.as_str(), IMDS_AKID);
}
