//! IAM authorization and access points for EFS mounts (issue #12): everything
//! `mount.efs`, the tunnel and the watchdog need to present the client certificate EFS
//! authorizes, and nothing of how they run (no tokio, no process environment, no fixed
//! paths: all of those are parameters).
//!
//! * [`credentials`]: AWS credentials in amazon-efs-utils' order (`awscredsuri`, profile,
//!   ECS, Pod Identity, web identity, instance role), each source a function, the winner
//!   named by [`credentials::Source`] so the watchdog renews from the same one;
//! * [`imds`]: the instance metadata service's IMDSv2 token and requests, for the
//!   instance role here and for `mount.efs`'s region lookup;
//! * [`sigv4`]: the SigV4 signature of EFS's `Connect` action, byte for byte as the
//!   service recomputes it, and standard SigV4 for the AWS APIs called here;
//! * [`mount_target`]: the mount-target-IP fallback (EFS `DescribeMountTargets`, EC2
//!   `DescribeAvailabilityZones`) for a file system whose DNS name does not resolve;
//! * [`cert`]: the host's RSA-3072 key and each mount's self-signed certificate with the
//!   EFS extensions (access point, IAM signature, file system id, client info);
//! * [`testing`] (feature `testing`): a fake EFS authorizer that checks a certificate as
//!   the service would, for tests here, the e2e "EFS" terminator and host tests.
//!
//! Decisions worth keeping:
//! * Nothing travels but the certificate: the SigV4 signature is never sent as HTTP, so
//!   its canonical request keeps the incumbent's shape (no blank line after the header).
//! * Credential values are validated on entry (access key id `[A-Za-z0-9_]{16,128}`,
//!   token `[A-Za-z0-9+/=_-]+`, as the incumbent does), so a malformed value never reaches
//!   a certificate; secrets and tokens are redacted from every `Debug` and `Display`.
//! * Web identity from the `rolearn`/`jwtpath` options is fatal on failure (the incumbent
//!   falls through to the instance role, mounting as another identity); from the
//!   environment it is not, and the final error lists what every source said.
//! * STS is called with POST (the token stays out of URLs and proxy logs), trusting the
//!   webpki roots plus `AWS_CA_BUNDLE`.
//! * HTTP is ureq 2 (rustls on ring, no proxy from the environment, no redirects), with
//!   a total deadline per request and answers bounded to 64 KiB. ureq's own `debug` log
//!   writes request headers and redacts only `Authorization`: a program that logs at
//!   debug must cap the `ureq` target at `info`, or the IMDS token and
//!   `X-Amz-Security-Token` of an `AssumeRole` would reach its log.
//! * Every call blocks (at most its deadline per request, a few requests per source):
//!   an event loop calls it from a thread of its own.
//! * Profiles with `role_arn` + `source_profile` use STS `AssumeRole` (SigV4-signed),
//!   `role_arn` + `web_identity_token_file` web identity; `credential_source` is not
//!   supported and says so ([`credentials::Error::Unsupported`]). `credential_process`
//!   runs only from a file owned by root or the invoking user and not writable by
//!   others, without a shell.
//! * The key is generated with the pure-Rust `rsa` crate (ring cannot generate RSA, and
//!   aws-lc-rs stays out of the default build); ring signs, through rcgen.
//!
//! A mount with `-o tls,iam,accesspoint=...`, as `mount.efs` does it
//! (`client-cert/src/mount.rs`, with the endpoints from the config):
//!
//! ```no_run
//! use efs_iam::{cert, credentials, CertificateRequest, HostKey, Iam, ProcessEnv, SigningTime};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let key = HostKey::load_or_create("/etc/amazon/efs/privateKey.pem".as_ref())?;
//! let req = credentials::Request { region: "eu-west-1", ..Default::default() };
//! let got = credentials::obtain(&req, &ProcessEnv, &credentials::Endpoints::default())?;
//! let now = SigningTime::now().ok_or("clock outside 2000-2049")?;
//! let issued = cert::issue(&key, &CertificateRequest {
//!     common_name: "ip-10-0-1-5",
//!     fs_id: "fs-deadbeef",
//!     access_point: Some("fsap-0123456789abcdef0"),
//!     iam: Some(Iam { credentials: &got.credentials, region: "eu-west-1", service: efs_iam::EFS_SERVICE }),
//!     client_source: None,
//!     efs_utils_version: cert::EFS_UTILS_VERSION,
//!     now,
//! })?;
//! // state file: awsCredentialsMethod = got.source.method(),
//! //             certificateCreationTime = now.utc_time(); the tunnel presents issued.pem
//! # let _ = issued; Ok(()) }
//! ```

pub mod cert;
pub mod credentials;
pub mod der;
pub mod imds;
pub mod mount_target;
pub mod sigv4;
#[cfg(feature = "testing")]
pub mod testing;

pub use cert::{CertError, CertificateRequest, ClientCertificate, HostKey, Iam};
pub use credentials::{
    obtain, renew, Credentials, Endpoints, Env, Error, Obtained, ProcessEnv, Request, Source,
};
pub use sigv4::{ConnectRequest, SigningTime, EFS_SERVICE};

/// At most `max` characters of a text from outside (a server's error message, a
/// parser's complaint that quotes it) as one line: control characters, line breaks
/// among them, become spaces. Such text ends up in a mount's one-line error.
pub fn one_line(s: &str, max: usize) -> String {
    s.chars()
        .take(max)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}
