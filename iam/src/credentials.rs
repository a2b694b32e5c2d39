//! AWS credentials for `-o iam`, found in amazon-efs-utils' order, each source a function:
//!
//! 1. `awscredsuri` (ECS task role at the ECS endpoint + the given URI); fatal on failure;
//! 2. a profile: `awsprofile`, else `AWS_PROFILE`, else `default` when `[default]` has
//!    `aws_access_key_id` in `~/.aws/credentials` or `~/.aws/config`; fatal on failure
//!    once chosen; the whole step is skipped when `rolearn` and `jwtpath` are both given;
//! 3. `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` (ECS);
//! 4. Pod Identity: `AWS_CONTAINER_CREDENTIALS_FULL_URI` with the token of
//!    `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE` as `Authorization`;
//! 5. web identity: `rolearn`/`jwtpath` (fatal on failure: the operator asked for that
//!    role, and a silent fall-through to the instance role would mount with another
//!    identity), then env `AWS_ROLE_ARN`/`AWS_WEB_IDENTITY_TOKEN_FILE`, through STS
//!    `AssumeRoleWithWebIdentity` (`RoleSessionName=efs-mount-helper`);
//! 6. the instance role from IMDSv2 (token PUT, role name, credentials).
//!
//! The winner is named by [`Source`], whose [`Source::method`] string is the
//! incumbent's `awsCredentialsMethod`, so the watchdog can [`renew`] from the same
//! source, including for mounts the incumbent made. Nothing here reads the process
//! environment or a fixed path: the environment is an [`Env`], every endpoint a base URL
//! in [`Endpoints`], so tests run against fakes on 127.0.0.1. Secrets never reach a
//! `Debug` or `Display`: only the access key id may be shown.

pub mod assume;
pub(crate) mod http;
pub mod parse;
pub mod profile;

use crate::imds::{self, Imds, Retry, TokenError};
pub use http::{HttpProblem, MAX_ANSWER};
use parse::{parse_credentials_json, parse_role_name, parse_sts_answer, StsAnswer};
use profile::{AwsFiles, Loaded};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;
use time::OffsetDateTime;

/// Why a credential value is refused before it goes into a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InvalidCredential {
    AccessKeyId,
    SecretAccessKey,
    SessionToken,
}

impl std::fmt::Display for InvalidCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            InvalidCredential::AccessKeyId => "access key id is not 16-128 of [A-Za-z0-9_]",
            InvalidCredential::SecretAccessKey => {
                "secret access key is empty, too long or not printable ASCII"
            }
            InvalidCredential::SessionToken => {
                "session token is empty, too long or not of [A-Za-z0-9+/=_-]"
            }
        })
    }
}

/// An access key id: `[A-Za-z0-9_]{16,128}` (the STS grammar the incumbent checks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessKeyId(String);

impl AccessKeyId {
    pub fn new(s: &str) -> Result<Self, InvalidCredential> {
        let ok = (16..=128).contains(&s.len())
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        ok.then(|| AccessKeyId(s.to_string()))
            .ok_or(InvalidCredential::AccessKeyId)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for AccessKeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A secret access key; `Debug` shows nothing of it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretAccessKey(String);

impl SecretAccessKey {
    pub fn new(s: &str) -> Result<Self, InvalidCredential> {
        let ok = (1..=1024).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic());
        ok.then(|| SecretAccessKey(s.to_string()))
            .ok_or(InvalidCredential::SecretAccessKey)
    }

    /// The secret itself, for signing only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretAccessKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretAccessKey(<redacted>)")
    }
}

/// A session token: `[A-Za-z0-9+/=_-]+`, at most 16 KiB; `Debug` shows nothing of it.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionToken(String);

impl SessionToken {
    pub fn new(s: &str) -> Result<Self, InvalidCredential> {
        let ok = (1..=16 * 1024).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+/=_-".contains(&b));
        ok.then(|| SessionToken(s.to_string()))
            .ok_or(InvalidCredential::SessionToken)
    }

    /// The token itself, for the signature and the certificate only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionToken(<redacted>)")
    }
}

/// A set of AWS credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key_id: AccessKeyId,
    secret_access_key: SecretAccessKey,
    session_token: Option<SessionToken>,
    /// When temporary credentials stop working (none for static keys).
    pub expiration: Option<OffsetDateTime>,
}

impl Credentials {
    pub fn new(
        access_key_id: AccessKeyId,
        secret_access_key: SecretAccessKey,
        session_token: Option<SessionToken>,
        expiration: Option<OffsetDateTime>,
    ) -> Self {
        Credentials {
            access_key_id,
            secret_access_key,
            session_token,
            expiration,
        }
    }

    pub fn secret_access_key(&self) -> &SecretAccessKey {
        &self.secret_access_key
    }

    pub fn session_token(&self) -> Option<&SessionToken> {
        self.session_token.as_ref()
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id.0)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .field("expiration", &self.expiration)
            .finish()
    }
}

/// The environment the sources read: the process's in production ([`ProcessEnv`]), a
/// map in tests.
pub trait Env {
    /// A variable's value; empty counts as unset.
    fn var(&self, name: &str) -> Option<String>;
    /// The invoking user's home directory (for `~/.aws`).
    fn home_dir(&self) -> Option<PathBuf>;
}

impl Env for HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).filter(|v| !v.is_empty()).cloned()
    }

    fn home_dir(&self) -> Option<PathBuf> {
        self.var("HOME").map(PathBuf::from)
    }
}

/// The real process environment; the home directory is `HOME`, else the password
/// entry of the real uid (mount(8) at boot may run without `HOME`).
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }

    fn home_dir(&self) -> Option<PathBuf> {
        self.var("HOME").map(PathBuf::from).or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::getuid())
                .ok()
                .flatten()
                .map(|u| u.dir)
        })
    }
}

/// Where each endpoint is. [`Endpoints::default`] is the real one; tests override all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// ECS credentials endpoint, base for the relative URIs.
    pub ecs: String,
    /// Instance metadata service, base for `/latest/...`.
    pub imds: String,
    /// Ask IMDS for a v2 token first (`[mount] disable_fetch_ec2_metadata_token` = false).
    pub imds_token: bool,
    /// How many times to ask for the IMDSv2 token when IMDS does not answer (0.5 s
    /// apart; the incumbent's 3: IMDS can be slow early at boot).
    pub imds_token_tries: u32,
    /// STS base URL; `None`: `https://sts.<region>.<dns_name_suffix>/`.
    pub sts: Option<String>,
    /// `[mount] dns_name_suffix` (the S3 Files `on.aws` suffixes map to STS's own).
    pub dns_name_suffix: String,
    /// Deadline of one request to a link-local endpoint, start to end.
    pub timeout: Duration,
    /// Deadline of one STS request.
    pub sts_timeout: Duration,
}

impl Default for Endpoints {
    fn default() -> Self {
        Endpoints {
            ecs: "http://169.254.170.2".into(),
            imds: "http://169.254.169.254".into(),
            imds_token: true,
            imds_token_tries: imds::TOKEN_TRIES,
            sts: None,
            dns_name_suffix: "amazonaws.com".into(),
            timeout: Duration::from_secs(1),
            sts_timeout: Duration::from_secs(5),
        }
    }
}

impl Endpoints {
    /// The STS URL for `region`.
    pub fn sts_url(&self, region: &str) -> Result<String, Error> {
        if let Some(url) = &self.sts {
            return Ok(url.clone());
        }
        let valid = !region.is_empty()
            && region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid {
            return Err(Error::InvalidOption {
                what: "region",
                reason: format!("{region:?} is not a region name"),
            });
        }
        let suffix = match self.dns_name_suffix.as_str() {
            "on.aws" => "amazonaws.com",
            "on.amazonwebservices.com.cn" => "amazonaws.com.cn",
            s => s,
        };
        Ok(format!("https://sts.{region}.{suffix}/"))
    }
}

/// What the mount asked for (its options) and where it is.
#[derive(Debug, Clone, Copy, Default)]
pub struct Request<'a> {
    pub awscredsuri: Option<&'a str>,
    pub awsprofile: Option<&'a str>,
    pub rolearn: Option<&'a str>,
    pub jwtpath: Option<&'a str>,
    /// The mount's region (for STS).
    pub region: &'a str,
}

/// How a profile yielded its credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProfileKind {
    /// Static keys in the credentials file.
    CredentialsFile,
    /// Static keys in the config file.
    ConfigFile,
    /// `credential_process`, or `role_arn` (the incumbent's botocore `named_profile`);
    /// resolved again on renewal.
    NamedProfile,
}

/// Which source won; enough to fetch from it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// ECS, from `awscredsuri` or `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`.
    Ecs {
        relative_uri: String,
    },
    Profile {
        profile: String,
        kind: ProfileKind,
    },
    PodIdentity {
        full_uri: String,
        token_file: PathBuf,
    },
    WebIdentity {
        role_arn: String,
        token_file: PathBuf,
    },
    InstanceMetadata,
}

impl Source {
    /// The incumbent's `awsCredentialsMethod` string for the state file.
    pub fn method(&self) -> String {
        match self {
            Source::Ecs { relative_uri } => format!("ecs:{relative_uri}"),
            Source::Profile { profile, kind } => match kind {
                ProfileKind::CredentialsFile => format!("credentials:{profile}"),
                ProfileKind::ConfigFile => format!("config:{profile}"),
                ProfileKind::NamedProfile => format!("named_profile:{profile}"),
            },
            Source::PodIdentity {
                full_uri,
                token_file,
            } => format!("podidentity:{full_uri},{}", token_file.display()),
            Source::WebIdentity {
                role_arn,
                token_file,
            } => format!("webidentity:{role_arn},{}", token_file.display()),
            Source::InstanceMetadata => "metadata:".into(),
        }
    }

    /// Reads [`Source::method`] back, also as the incumbent wrote it.
    pub fn from_method(s: &str) -> Option<Source> {
        let (kind, rest) = s.split_once(':')?;
        let pair = |rest: &str| {
            // the URI or ARN has no ',', the path may
            let (a, b) = rest.split_once(',')?;
            (!a.is_empty() && !b.is_empty()).then(|| (a.to_string(), PathBuf::from(b)))
        };
        let profile = |kind| {
            (!rest.is_empty()).then(|| Source::Profile {
                profile: rest.to_string(),
                kind,
            })
        };
        match kind {
            "ecs" if rest.starts_with('/') => Some(Source::Ecs {
                relative_uri: rest.to_string(),
            }),
            "credentials" => profile(ProfileKind::CredentialsFile),
            "config" => profile(ProfileKind::ConfigFile),
            "named_profile" => profile(ProfileKind::NamedProfile),
            "podidentity" => pair(rest).map(|(full_uri, token_file)| Source::PodIdentity {
                full_uri,
                token_file,
            }),
            "webidentity" => pair(rest).map(|(role_arn, token_file)| Source::WebIdentity {
                role_arn,
                token_file,
            }),
            "metadata" => Some(Source::InstanceMetadata),
            _ => None,
        }
    }
}

/// Credentials and where they came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Obtained {
    pub credentials: Credentials,
    pub source: Source,
}

/// Why no credentials. Each `Display` is one line: what failed, and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// Every source was tried; each entry says what it found.
    NoCredentials {
        tried: Vec<String>,
    },
    ProfileNotFound {
        profile: String,
        files: AwsFiles,
    },
    /// The profile exists but yields nothing this helper can use.
    ProfileIncomplete {
        profile: String,
        files: AwsFiles,
    },
    /// The profile needs what is not implemented (`role_arn` with `credential_source`).
    Unsupported {
        profile: String,
        feature: &'static str,
    },
    /// `what` at `url` did not answer.
    Endpoint {
        what: &'static str,
        url: String,
        problem: HttpProblem,
    },
    /// `what` at `url` answered with an HTTP error.
    Status {
        what: &'static str,
        url: String,
        status: u16,
    },
    /// `what` at `url` answered, but not with credentials.
    BadAnswer {
        what: &'static str,
        url: String,
        problem: parse::ParseError,
    },
    /// The instance has no IAM role.
    NoInstanceRole {
        url: String,
    },
    /// STS said no; its error code and message.
    StsRefused {
        action: &'static str,
        url: String,
        code: String,
        message: String,
    },
    TokenFile {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    File {
        path: PathBuf,
        reason: String,
    },
    UntrustedFile {
        path: PathBuf,
        reason: String,
    },
    CredentialProcess {
        profile: String,
        reason: String,
    },
    InvalidCredential {
        what: String,
        reason: InvalidCredential,
    },
    InvalidOption {
        what: &'static str,
        reason: String,
    },
    NoHome,
    CaBundle {
        path: PathBuf,
        reason: String,
    },
    UnknownMethod(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::NoCredentials { tried } => write!(
                f,
                "no AWS credentials for iam: {}; give -o awsprofile=, -o awscredsuri= or -o rolearn=,jwtpath=, or attach an IAM role to the instance",
                tried.join("; ")
            ),
            Error::ProfileNotFound { profile, files } => write!(
                f,
                "AWS profile [{profile}] not found in {} or {}: add it (aws configure --profile {profile}) or correct -o awsprofile / AWS_PROFILE",
                files.credentials.display(),
                files.config.display()
            ),
            Error::ProfileIncomplete { profile, files } => write!(
                f,
                "AWS profile [{profile}] in {} / {} has no aws_access_key_id with aws_secret_access_key, no credential_process and no role_arn: add keys to it",
                files.credentials.display(),
                files.config.display()
            ),
            Error::Unsupported { profile, feature } => write!(
                f,
                "AWS profile [{profile}] uses {feature}, which this mount helper does not support yet: use static keys or credential_process in the profile, or another credential source"
            ),
            Error::Endpoint { what, url, problem } => write!(
                f,
                "cannot get AWS credentials from {what} at {url}: {problem}: {}",
                match problem {
                    HttpProblem::Tls(_) => "if a proxy or private CA signs it, name that CA in AWS_CA_BUNDLE",
                    _ => "check that it is reachable from this host",
                }
            ),
            Error::Status { what, url, status } => write!(
                f,
                "{what} at {url} refused to give AWS credentials: HTTP {status}: check the role or token it expects"
            ),
            Error::BadAnswer { what, url, problem } => write!(
                f,
                "{what} at {url} did not answer with AWS credentials: {problem}"
            ),
            Error::NoInstanceRole { url } => write!(
                f,
                "the instance has no IAM role ({url} answered 404): attach an instance profile or use another credential source"
            ),
            Error::StsRefused {
                action,
                url,
                code,
                message,
            } => write!(
                f,
                "STS at {url} refused {action}: {code}: {message}: check the role ARN, its trust policy and the credentials or token it was given"
            ),
            Error::TokenFile { what, path, reason } => write!(
                f,
                "cannot read the {what} token file {}: {reason}: {}",
                path.display(),
                match *what {
                    "web identity" => "fix -o jwtpath (or AWS_WEB_IDENTITY_TOKEN_FILE, or the profile's web_identity_token_file), or let the token be written there first",
                    _ => "fix AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE, or let the token be written there first",
                }
            ),
            Error::File { path, reason } => write!(f, "cannot read {}: {reason}", path.display()),
            Error::UntrustedFile { path, reason } => write!(
                f,
                "not running the credential_process named in {}: {reason}: make it owned by root (or you) and not writable by others",
                path.display()
            ),
            Error::CredentialProcess { profile, reason } => write!(
                f,
                "credential_process of AWS profile [{profile}] failed: {reason}"
            ),
            Error::InvalidCredential { what, reason } => {
                write!(f, "{what} gave a malformed credential: {reason}")
            }
            Error::InvalidOption { what, reason } => write!(f, "invalid {what}: {reason}"),
            Error::NoHome => write!(
                f,
                "no home directory to find ~/.aws in: set HOME, or AWS_SHARED_CREDENTIALS_FILE and AWS_CONFIG_FILE"
            ),
            Error::CaBundle { path, reason } => write!(
                f,
                "cannot use AWS_CA_BUNDLE {}: {reason}: point it at a PEM file of CA certificates",
                path.display()
            ),
            Error::UnknownMethod(m) => write!(
                f,
                "unknown awsCredentialsMethod {m:?} in the state file: remount to choose a credential source again"
            ),
        }
    }
}

impl std::error::Error for Error {}

/// What every source needs: the environment, the endpoints, the region.
#[derive(Clone, Copy)]
pub struct Context<'a> {
    pub env: &'a dyn Env,
    pub endpoints: &'a Endpoints,
    pub region: &'a str,
}

fn link_local_client(ctx: &Context) -> Result<http::Client, Error> {
    http::Client::new(ctx.endpoints.timeout, None).map_err(|reason| Error::InvalidOption {
        what: "TLS configuration",
        reason,
    })
}

/// GET/PUT that must answer 2xx; the body.
fn fetch(
    client: &http::Client,
    what: &'static str,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<String, Error> {
    answered(what, url, client.call(method, url, headers, None))
}

/// The body of an answer that must be 2xx.
fn answered(
    what: &'static str,
    url: &str,
    answer: Result<http::Answer, HttpProblem>,
) -> Result<String, Error> {
    let answer = answer.map_err(|problem| Error::Endpoint {
        what,
        url: url.to_string(),
        problem,
    })?;
    if !answer.ok() {
        return Err(Error::Status {
            what,
            url: url.to_string(),
            status: answer.status,
        });
    }
    Ok(answer.body)
}

fn credentials_from_json(what: &'static str, url: &str, body: &str) -> Result<Credentials, Error> {
    parse_credentials_json(body).map_err(|problem| Error::BadAnswer {
        what,
        url: url.to_string(),
        problem,
    })
}

/// ECS: `<ecs base><relative_uri>`.
pub fn from_ecs(ctx: &Context, relative_uri: &str) -> Result<Credentials, Error> {
    if !relative_uri.starts_with('/') {
        return Err(Error::InvalidOption {
            what: "ECS credentials relative URI",
            reason: format!("{relative_uri:?} does not start with /"),
        });
    }
    let url = format!("{}{relative_uri}", ctx.endpoints.ecs.trim_end_matches('/'));
    let body = fetch(&link_local_client(ctx)?, "ECS", "GET", &url, &[])?;
    credentials_from_json("ECS", &url, &body)
}

/// A small secret file (token), trimmed; `max` bytes at most.
fn read_token_file(what: &'static str, path: &Path, max: u64) -> Result<String, Error> {
    let err = |reason: String| Error::TokenFile {
        what,
        path: path.to_path_buf(),
        reason,
    };
    let f = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
    let mut bytes = Vec::new();
    f.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| err(e.to_string()))?;
    if bytes.len() as u64 > max {
        return Err(err(format!("larger than {max} bytes")));
    }
    let text = String::from_utf8(bytes).map_err(|_| err("not UTF-8".into()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(err("empty".into()));
    }
    if token.chars().any(char::is_control) {
        return Err(err("holds a line break or control character".into()));
    }
    Ok(token.to_string())
}

/// May a Pod Identity URI be asked for credentials (with our token)? HTTPS anywhere; plain
/// HTTP only to loopback or the ECS/EKS agents' link-local addresses, as the AWS SDKs
/// allow.
pub fn pod_identity_uri_allowed(uri: &str) -> bool {
    if uri.starts_with("https://") {
        return true;
    }
    let Some(rest) = uri.strip_prefix("http://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return false;
    }
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        authority.split(':').next().unwrap_or("")
    };
    if host == "localhost" {
        return true;
    }
    match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(a)) => {
            a.is_loopback() || a.octets() == [169, 254, 170, 2] || a.octets() == [169, 254, 170, 23]
        }
        Ok(std::net::IpAddr::V6(a)) => {
            a.is_loopback() || a == std::net::Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x23)
        }
        Err(_) => false,
    }
}

/// Pod Identity: GET `full_uri` with the token file's content as `Authorization`.
pub fn from_pod_identity(
    ctx: &Context,
    full_uri: &str,
    token_file: &Path,
) -> Result<Credentials, Error> {
    if !pod_identity_uri_allowed(full_uri) {
        return Err(Error::InvalidOption {
            what: "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            reason: format!(
                "{full_uri:?} is neither https nor a loopback or EKS/ECS agent address"
            ),
        });
    }
    let token = read_token_file("Pod Identity", token_file, 16 * 1024)?;
    let body = fetch(
        &link_local_client(ctx)?,
        "Pod Identity",
        "GET",
        full_uri,
        &[("Authorization", &token)],
    )?;
    credentials_from_json("Pod Identity", full_uri, &body)
}

fn sts_client(ctx: &Context) -> Result<http::Client, Error> {
    let bundle = match ctx.env.var("AWS_CA_BUNDLE") {
        Some(p) => {
            let path = PathBuf::from(p);
            Some((
                http::read_ca_bundle(&path).map_err(|reason| Error::CaBundle {
                    path: path.clone(),
                    reason,
                })?,
                path,
            ))
        }
        None => None,
    };
    http::Client::new(ctx.endpoints.sts_timeout, bundle.as_ref().map(|b| &b.0[..])).map_err(
        |reason| Error::CaBundle {
            path: bundle.map(|b| b.1).unwrap_or_default(),
            reason,
        },
    )
}

/// Web identity: STS `AssumeRoleWithWebIdentity` with the token in `token_file`.
/// (POST, so that the token is in no URL.)
pub fn from_web_identity(
    ctx: &Context,
    role_arn: &str,
    token_file: &Path,
) -> Result<Credentials, Error> {
    let token = read_token_file("web identity", token_file, 64 * 1024)?;
    let url = ctx.endpoints.sts_url(ctx.region)?;
    let q = crate::sigv4::quote_plus;
    let form = format!(
        "Action=AssumeRoleWithWebIdentity&Version=2011-06-15&RoleArn={}&RoleSessionName=efs-mount-helper&WebIdentityToken={}",
        q(role_arn),
        q(&token)
    );
    let answer = sts_client(ctx)?
        .call(
            "POST",
            &url,
            &[("Content-Type", "application/x-www-form-urlencoded")],
            Some(&form),
        )
        .map_err(|problem| Error::Endpoint {
            what: "STS",
            url: url.clone(),
            problem,
        })?;
    sts_result("AssumeRoleWithWebIdentity", url, &answer)
}

/// STS's answer to `action`: its credentials, or its refusal with STS's error code.
fn sts_result(
    action: &'static str,
    url: String,
    answer: &http::Answer,
) -> Result<Credentials, Error> {
    match (parse_sts_answer(&answer.body), answer.ok()) {
        (Ok(StsAnswer::Refused { code, message }), _) => Err(Error::StsRefused {
            action,
            url,
            code,
            message,
        }),
        (_, false) => Err(Error::Status {
            what: "STS",
            url,
            status: answer.status,
        }),
        (Ok(StsAnswer::Credentials(c)), true) => Ok(c),
        (Err(problem), true) => Err(Error::BadAnswer {
            what: "STS",
            url,
            problem,
        }),
    }
}

/// The instance role: IMDSv2 token (unless disabled; IMDSv1 when IMDS refuses to give
/// one), the role name, then its credentials. The token is asked for again only while
/// IMDS does not answer; if it never does, that is this source's failure.
pub fn from_instance_metadata(ctx: &Context) -> Result<Credentials, Error> {
    let what = "instance metadata";
    let imds = Imds::new(&ctx.endpoints.imds, ctx.endpoints.timeout).map_err(|reason| {
        Error::InvalidOption {
            what: "TLS configuration",
            reason,
        }
    })?;
    let token = if ctx.endpoints.imds_token {
        match imds.token(ctx.endpoints.imds_token_tries, Retry::Unanswered) {
            Ok(token) => Some(token),
            Err(TokenError::Refused(_) | TokenError::NotAToken) => None,
            Err(TokenError::Unanswered(problem)) => {
                return Err(Error::Endpoint {
                    what,
                    url: imds.url(imds::TOKEN_PATH),
                    problem,
                })
            }
        }
    } else {
        None
    };
    let get = |path: &str| {
        let url = imds.url(path);
        let answer = imds.get(path, token.as_deref());
        answered(what, &url, answer).map(|body| (url, body))
    };
    let roles_path = "/latest/meta-data/iam/security-credentials/";
    let (roles_url, roles) = match get(roles_path) {
        Err(Error::Status {
            status: 404, url, ..
        }) => return Err(Error::NoInstanceRole { url }),
        other => other?,
    };
    let role = parse_role_name(&roles).map_err(|problem| Error::BadAnswer {
        what,
        url: roles_url,
        problem,
    })?;
    let (url, body) = get(&format!("{roles_path}{role}"))?;
    credentials_from_json(what, &url, &body)
}

/// How deep `source_profile` may chain (botocore has no limit but detects loops).
const MAX_SOURCE_PROFILE_DEPTH: usize = 4;

/// The named profile's credentials: static keys in the credentials file, then in the
/// config file, then `credential_process`, then `role_arn` with `source_profile` (STS
/// `AssumeRole`) or `web_identity_token_file`.
pub fn from_profile(
    ctx: &Context,
    files: &AwsFiles,
    profile: &str,
) -> Result<(Credentials, ProfileKind), Error> {
    from_profile_at(ctx, files, profile, 0)
}

fn from_profile_at(
    ctx: &Context,
    files: &AwsFiles,
    profile: &str,
    depth: usize,
) -> Result<(Credentials, ProfileKind), Error> {
    let creds = profile::load(&files.credentials)?;
    let config = profile::load(&files.config)?;
    let invalid = |loaded: &Loaded, reason| Error::InvalidCredential {
        what: format!("AWS profile [{profile}] in {}", loaded.path.display()),
        reason,
    };
    for (loaded, is_config, kind) in [
        (&creds, false, ProfileKind::CredentialsFile),
        (&config, true, ProfileKind::ConfigFile),
    ] {
        if let Some(keys) = profile::static_keys(loaded, profile, is_config) {
            return keys.map(|c| (c, kind)).map_err(|e| invalid(loaded, e));
        }
    }
    let unsupported = |feature| Error::Unsupported {
        profile: profile.to_string(),
        feature,
    };
    for (loaded, is_config) in [(&config, true), (&creds, false)] {
        let names = profile::section_names(profile, is_config);
        let get = |key| profile::lookup(&loaded.ini, &names, key);
        if let Some(cmd) = get("credential_process") {
            let c = profile::run_credential_process(
                profile,
                &loaded.path,
                cmd,
                ctx.endpoints.sts_timeout,
            )?;
            return Ok((c, ProfileKind::NamedProfile));
        }
        let Some(role_arn) = get("role_arn") else {
            continue;
        };
        if let Some(source) = get("source_profile") {
            if depth >= MAX_SOURCE_PROFILE_DEPTH {
                return Err(unsupported(
                    "source_profile chained more than 4 deep (or in a loop)",
                ));
            }
            let (source, _) = from_profile_at(ctx, files, source, depth + 1)?;
            let duration_seconds = match get("duration_seconds") {
                Some(d) => Some(d.parse().map_err(|_| Error::InvalidOption {
                    what: "duration_seconds",
                    reason: format!("{d:?} in AWS profile [{profile}] is not a number"),
                })?),
                None => None,
            };
            let request = assume::AssumeRole {
                role_arn,
                session_name: get("role_session_name").unwrap_or("efs-mount-helper"),
                external_id: get("external_id"),
                duration_seconds,
            };
            let c = assume::assume_role(ctx, &source, &request)?;
            return Ok((c, ProfileKind::NamedProfile));
        }
        if let Some(token_file) = get("web_identity_token_file") {
            let c = from_web_identity(ctx, role_arn, Path::new(token_file))?;
            return Ok((c, ProfileKind::NamedProfile));
        }
        return Err(unsupported(if get("credential_source").is_some() {
            "role_arn with credential_source"
        } else {
            "role_arn without source_profile"
        }));
    }
    let exists = |loaded: &Loaded, is_config| {
        profile::section_names(profile, is_config)
            .iter()
            .any(|n| loaded.ini.has_section(n))
    };
    if exists(&creds, false) || exists(&config, true) {
        Err(Error::ProfileIncomplete {
            profile: profile.to_string(),
            files: files.clone(),
        })
    } else {
        Err(Error::ProfileNotFound {
            profile: profile.to_string(),
            files: files.clone(),
        })
    }
}

/// `default` when `[default]` has `aws_access_key_id` in either file.
fn default_profile_has_keys(files: &AwsFiles) -> Result<bool, Error> {
    for path in [&files.credentials, &files.config] {
        if profile::load(path)?
            .ini
            .get("default", "aws_access_key_id")
            .is_some()
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Credentials from the first source that has them, in the incumbent's order (see the
/// module doc).
pub fn obtain(req: &Request, env: &dyn Env, endpoints: &Endpoints) -> Result<Obtained, Error> {
    let ctx = Context {
        env,
        endpoints,
        region: req.region,
    };
    let won = |credentials, source| {
        Ok(Obtained {
            credentials,
            source,
        })
    };
    let mut tried = Vec::new();

    if let Some(uri) = req.awscredsuri {
        let c = from_ecs(&ctx, uri)?;
        return won(
            c,
            Source::Ecs {
                relative_uri: uri.to_string(),
            },
        );
    }

    let web_identity_options = req.rolearn.zip(req.jwtpath);
    if web_identity_options.is_some() {
        tried.push("profiles skipped (rolearn and jwtpath given)".to_string());
    } else {
        let chosen = req
            .awsprofile
            .map(str::to_string)
            .or_else(|| env.var("AWS_PROFILE"));
        match (chosen, AwsFiles::locate(env)) {
            (Some(_), Err(e)) => return Err(e),
            (Some(p), Ok(files)) => {
                let (c, kind) = from_profile(&ctx, &files, &p)?;
                return won(c, Source::Profile { profile: p, kind });
            }
            (None, Ok(files)) => {
                if default_profile_has_keys(&files)? {
                    let (c, kind) = from_profile(&ctx, &files, "default")?;
                    return won(
                        c,
                        Source::Profile {
                            profile: "default".into(),
                            kind,
                        },
                    );
                }
                tried.push(format!(
                    "no [default] aws_access_key_id in {} or {}",
                    files.credentials.display(),
                    files.config.display()
                ));
            }
            (None, Err(e)) => tried.push(e.to_string()),
        }
    }

    match env.var("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") {
        Some(uri) => match from_ecs(&ctx, &uri) {
            Ok(c) => return won(c, Source::Ecs { relative_uri: uri }),
            Err(e) => tried.push(e.to_string()),
        },
        None => tried.push("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI unset".into()),
    }

    match (
        env.var("AWS_CONTAINER_CREDENTIALS_FULL_URI"),
        env.var("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"),
    ) {
        (Some(full_uri), Some(token_file)) => {
            let token_file = PathBuf::from(token_file);
            match from_pod_identity(&ctx, &full_uri, &token_file) {
                Ok(c) => {
                    return won(c, Source::PodIdentity {
                        full_uri,
                        token_file,
                    })
                }
                Err(e) => tried.push(e.to_string()),
            }
        }
        _ => tried.push(
            "no Pod Identity (AWS_CONTAINER_CREDENTIALS_FULL_URI or AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE unset)"
                .into(),
        ),
    }

    if let Some((role_arn, jwtpath)) = web_identity_options {
        let token_file = PathBuf::from(jwtpath);
        let c = from_web_identity(&ctx, role_arn, &token_file)?;
        return won(
            c,
            Source::WebIdentity {
                role_arn: role_arn.to_string(),
                token_file,
            },
        );
    }
    match (
        env.var("AWS_ROLE_ARN"),
        env.var("AWS_WEB_IDENTITY_TOKEN_FILE"),
    ) {
        (Some(role_arn), Some(token_file)) => {
            let token_file = PathBuf::from(token_file);
            match from_web_identity(&ctx, &role_arn, &token_file) {
                Ok(c) => {
                    return won(
                        c,
                        Source::WebIdentity {
                            role_arn,
                            token_file,
                        },
                    )
                }
                Err(e) => tried.push(e.to_string()),
            }
        }
        _ => {
            tried.push("no web identity (AWS_ROLE_ARN or AWS_WEB_IDENTITY_TOKEN_FILE unset)".into())
        }
    }

    match from_instance_metadata(&ctx) {
        Ok(c) => won(c, Source::InstanceMetadata),
        Err(e) => {
            tried.push(e.to_string());
            Err(Error::NoCredentials { tried })
        }
    }
}

/// Fresh credentials from the source that won before (the watchdog's renewal).
pub fn renew(
    source: &Source,
    region: &str,
    env: &dyn Env,
    endpoints: &Endpoints,
) -> Result<Credentials, Error> {
    let ctx = Context {
        env,
        endpoints,
        region,
    };
    match source {
        Source::Ecs { relative_uri } => from_ecs(&ctx, relative_uri),
        Source::Profile { profile, .. } => {
            from_profile(&ctx, &AwsFiles::locate(env)?, profile).map(|(c, _)| c)
        }
        Source::PodIdentity {
            full_uri,
            token_file,
        } => from_pod_identity(&ctx, full_uri, token_file),
        Source::WebIdentity {
            role_arn,
            token_file,
        } => from_web_identity(&ctx, role_arn, token_file),
        Source::InstanceMetadata => from_instance_metadata(&ctx),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_secrets() {
        let c = Credentials::new(
            AccessKeyId::new("AKIAIOSFODNN7EXAMPLE").unwrap(),
            SecretAccessKey::new("SECRETSECRET").unwrap(),
            Some(SessionToken::new("TOKENTOKEN").unwrap()),
            None,
        );
        let d = format!("{c:?} {:?} {:?}", c.secret_access_key(), c.session_token());
        assert!(d.contains("AKIAIOSFODNN7EXAMPLE"));
        assert!(!d.contains("SECRET") && !d.contains("TOKEN"), "{d}");
    }

    #[test]
    fn credential_values_are_checked() {
        assert!(AccessKeyId::new("AKIA").is_err());
        assert!(AccessKeyId::new("AKIAIOSFODNN7EXAMPL\n").is_err());
        assert!(SecretAccessKey::new("").is_err());
        assert!(SecretAccessKey::new("a b").is_err());
        assert!(SessionToken::new("a\nb").is_err());
        assert!(SessionToken::new("abc+/=_-").is_ok());
    }

    #[test]
    fn method_strings_round_trip_and_read_the_incumbents() {
        for s in [
            Source::Ecs {
                relative_uri: "/v2/credentials/x".into(),
            },
            Source::Profile {
                profile: "dev".into(),
                kind: ProfileKind::CredentialsFile,
            },
            Source::Profile {
                profile: "dev".into(),
                kind: ProfileKind::ConfigFile,
            },
            Source::Profile {
                profile: "dev".into(),
                kind: ProfileKind::NamedProfile,
            },
            Source::PodIdentity {
                full_uri: "http://169.254.170.23/v1/credentials".into(),
                token_file: "/var/run/t".into(),
            },
            Source::WebIdentity {
                role_arn: "arn:aws:iam::123456789012:role/r".into(),
                token_file: "/var/run/jwt".into(),
            },
            Source::InstanceMetadata,
        ] {
            assert_eq!(Source::from_method(&s.method()), Some(s.clone()), "{s:?}");
        }
        assert_eq!(
            Source::from_method("webidentity:arn:aws:iam::1:role/r,/t").unwrap(),
            Source::WebIdentity {
                role_arn: "arn:aws:iam::1:role/r".into(),
                token_file: "/t".into()
            }
        );
        assert_eq!(
            Source::from_method("metadata:").unwrap().method(),
            "metadata:"
        );
        assert_eq!(Source::from_method("environment:"), None);
        assert_eq!(Source::from_method("ecs:relative"), None);
    }

    #[test]
    fn sts_url_per_region_and_suffix() {
        let mut ep = Endpoints::default();
        assert_eq!(
            ep.sts_url("eu-west-1").unwrap(),
            "https://sts.eu-west-1.amazonaws.com/"
        );
        ep.dns_name_suffix = "on.amazonwebservices.com.cn".into();
        assert_eq!(
            ep.sts_url("cn-north-1").unwrap(),
            "https://sts.cn-north-1.amazonaws.com.cn/"
        );
        assert!(ep.sts_url("evil.com/x?").is_err());
    }

    #[test]
    fn pod_identity_uris() {
        for ok in [
            "http://169.254.170.23/v1/credentials",
            "http://[fd00:ec2::23]/v1/credentials",
            "http://127.0.0.1:8080/creds",
            "http://localhost/x",
            "https://creds.example.com/x",
        ] {
            assert!(pod_identity_uri_allowed(ok), "{ok}");
        }
        for bad in [
            "http://10.0.0.1/x",
            "http://169.254.170.23.evil.com/x",
            "http://127.0.0.1@evil.com/x",
            "ftp://127.0.0.1/",
            "",
        ] {
            assert!(!pod_identity_uri_allowed(bad), "{bad}");
        }
    }
}
