//! A mount's client certificate (`-o iam`, `-o accesspoint=`): made by `mount.efs`,
//! renewed by `efs-renew-cert`, which the watchdog runs. EFS authorizes a TLS client by
//! that certificate alone, so one code path makes every one of them:
//!
//! * [`issue()`]: the one function that issues a certificate, from who the client is
//!   ([`Identity`]: from a mount's options, or from the state file's record at a
//!   renewal), the credentials and the time;
//! * [`mod@write`]: the one writer of the certificate file, atomic (a temporary file
//!   `O_EXCL|O_NOFOLLOW` 0600 in the mount's 0700 `<state>/<name>+/` directory, fsync,
//!   rename, fsync of the directory), and only inside the state directory;
//! * [`mount`]: `mount.efs`'s part: the host key (made once), the credentials in the
//!   incumbent's order, the certificate and what the state file records of it;
//! * [`renew`]: `efs-renew-cert`'s part: an [`efs_config::renewal::Job`] in, the new
//!   certificate written, an [`efs_config::renewal::Renewed`] out.
//!
//! Why renewal is a program of its own, not a library call in the watchdog: the watchdog
//! then links no TLS, HTTP or crypto (issue #11: `cargo tree -p efs-watchdog -e normal`
//! has neither tokio nor rustls), and a renewal, which waits seconds on IMDS, ECS, STS or
//! a `credential_process`, runs in a process that cannot stall or bloat the supervisor:
//! the watchdog kills it at a deadline and counts that as a failed renewal.
//!
//! Why `efs-renew-cert` writes the certificate file itself rather than answer with the
//! PEM: the certificate (and the signed credentials in it) never passes through the
//! watchdog, and the one writer lives here, next to the one issuer, for the mount and the
//! renewal alike. The watchdog still decides when a certificate is due, checks the state
//! file before it asks (the same checks as before a restart), and afterwards signals the
//! tunnel and records the new times; the renewer checks where it writes itself
//! ([`efs_config::renewal::inside_state_dir`], a root-only directory it never creates).
//! A renewal that races the mount's teardown writes into a directory the teardown
//! removes, or finds none and fails.

pub mod issue;
pub mod mount;
pub mod renew;
pub mod write;

use efs_config::renewal;
use efs_iam::{credentials, CertError};

pub use issue::{issue, Identity, Issued};
pub use mount::{common_name, endpoints, prepare, MountRequest, Prepared};
pub use write::{write_certificate, write_new, WriteError};

/// The version the certificate's client-info extension (7.4) names: the amazon-efs-utils
/// release whose behaviour this one reproduces (what EFS sees from its clients).
pub const EFS_UTILS_VERSION: &str = efs_iam::cert::EFS_UTILS_VERSION;

/// Why no certificate. Each `Display` is one line and never holds a secret (`efs_iam`'s
/// errors never do).
#[derive(Debug)]
pub enum Error {
    /// The host key: not there, unreadable, not made.
    Key(CertError),
    /// With `iam`: no credentials from the source(s) tried.
    Credentials(credentials::Error),
    /// The clock is outside the years a certificate's UTCTime can carry.
    Clock,
    /// What the certificate would carry is not valid, or signing failed.
    Certificate(CertError),
    /// The certificate file.
    Write(WriteError),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Key(e) | Error::Certificate(e) => write!(f, "{e}"),
            Error::Credentials(e) => write!(f, "{e}"),
            Error::Clock => f.write_str(
                "the system clock is outside 2000-2049, so no client certificate can be dated: set the clock",
            ),
            Error::Write(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for Error {}

impl Error {
    /// The line a failed mount of `fs_id` says (`mount.efs`'s texts).
    pub fn mount_message(&self, fs_id: &str) -> String {
        match self {
            Error::Credentials(e) => format!("cannot mount {fs_id} with iam: {e}"),
            Error::Clock => self.to_string(),
            Error::Key(e) | Error::Certificate(e) => {
                format!("cannot make the client certificate for {fs_id}: {e}")
            }
            Error::Write(e) => format!("cannot write the client certificate for {fs_id}: {e}"),
        }
    }
}

/// `efs_iam`'s endpoints for the configured ones (the deadlines are `efs_iam`'s).
pub fn iam_endpoints(e: &renewal::Endpoints) -> credentials::Endpoints {
    credentials::Endpoints {
        ecs: e.ecs.clone(),
        imds: e.imds.clone(),
        imds_token: e.imds_token,
        sts: e.sts.clone(),
        dns_name_suffix: e.dns_name_suffix.clone(),
        ..credentials::Endpoints::default()
    }
}
