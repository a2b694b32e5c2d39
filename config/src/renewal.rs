//! The contract between the watchdog and `efs-renew-cert`, the program it runs to renew a
//! mount's client certificate (`iam`, `accesspoint`; crate `efs-client-cert`).
//!
//! It lives here, in the crate every program links, because the two sides must agree on
//! one definition and the watchdog must not link `efs-iam` (TLS, crypto, HTTP): the
//! watchdog builds a [`Job`] from the state file's record and its own loaded
//! configuration, writes it as one JSON document to the renewer's stdin, and reads one
//! [`Answer`] line from its stdout:
//!
//! ```text
//! stdin:  {"fs_id":"fs-…","state_dir":"/var/run/efs","record":{…ClientCertRecord…},
//!          "client_source":null,"endpoints":{"ecs":"http://169.254.170.2",…}}
//! stdout: {"ok":{"issued":1800000000.0,"not_after":1800010800.0,"credentials_expire":…}}
//!     or  {"error":"AWS profile [x] not found in …"}
//! ```
//!
//! The renewer writes the certificate file itself: the PEM never passes through the
//! watchdog, so the answer carries only what the state file records. The job carries the
//! endpoint values the watchdog has loaded (a SIGHUP changes them, as it always did), so
//! the renewer reads no configuration: the watchdog's loaded config is the one home of
//! those facts. Fields are only ever added, each with a default, so a watchdog and a
//! renewer of neighbouring versions (during a package upgrade) still understand each
//! other. [`inside_state_dir`] and [`TEMP_NAME`] are here too: the renewer writes only
//! where they allow, and the watchdog's teardown removes only what they name.

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::state::ClientCertRecord;
use crate::Config;

/// The start of the temporary name a new certificate is written under, in its own
/// directory: each writer adds `.<pid>`, since a renewer a restarted watchdog left running
/// may write while the next watchdog's does; a teardown removes every such file.
pub const TEMP_NAME: &str = ".certificate.pem.new";
/// The largest job a renewer reads from stdin.
pub const MAX_JOB: usize = 64 * 1024;
/// The largest answer the watchdog reads from a renewer's stdout.
pub const MAX_ANSWER: usize = 16 * 1024;
/// The longest error an answer may carry into a state file (`renewal_error`).
pub const MAX_ERROR_CHARS: usize = 1000;

/// The credential endpoints of one renewal, from the watchdog's configuration
/// ([`Endpoints::from_config`], the one mapping `mount.efs` uses too).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoints {
    /// `[mount] ecs_credentials_url`.
    pub ecs: String,
    /// `[mount] instance_metadata_url`.
    pub imds: String,
    /// Not `[mount] disable_fetch_ec2_metadata_token`.
    pub imds_token: bool,
    /// `[mount] sts_endpoint_url`; `None`: the region's.
    #[serde(default)]
    pub sts: Option<String>,
    /// The region's `dns_name_suffix`.
    pub dns_name_suffix: String,
}

impl Endpoints {
    /// The endpoints `cfg` names for a mount in `region`.
    pub fn from_config(cfg: &Config, region: &str) -> Endpoints {
        let m = &cfg.mount;
        Endpoints {
            ecs: m.ecs_credentials_url.clone(),
            imds: m.instance_metadata_url.clone(),
            imds_token: !m.disable_fetch_ec2_metadata_token,
            sts: m.sts_endpoint_url.clone(),
            dns_name_suffix: cfg.dns_name_suffix(region).to_string(),
        }
    }
}

/// What a renewer is asked to do: issue a new certificate for the mount `record`
/// describes, with the same identity, and write it over `record.certificate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub fs_id: String,
    /// The state directory: the certificate must be in a `NAME+` directory directly in
    /// it ([`inside_state_dir`]).
    pub state_dir: PathBuf,
    /// The state file's `client_cert`: certificate, key, common name, region, access
    /// point, credential source.
    pub record: ClientCertRecord,
    /// `[client-info] source`.
    #[serde(default)]
    pub client_source: Option<String>,
    pub endpoints: Endpoints,
    /// The certificate's directory as it was when the renewal was asked for: the
    /// renewer writes only into that very directory, never into one a new mount of the
    /// same name made meanwhile (an unmount and a mount while the renewal waited).
    #[serde(default)]
    pub directory: Option<DirId>,
}

/// Which directory, by device and inode number: a directory removed and made again by
/// the same name is another one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirId {
    pub dev: u64,
    pub ino: u64,
}

impl DirId {
    /// The directory at `dir` (not through a symlink), if there is one.
    pub fn of(dir: &Path) -> Option<DirId> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::symlink_metadata(dir).ok()?;
        meta.is_dir().then(|| DirId {
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }
}

impl Job {
    /// The job for the mount of `fs_id` whose record is `record`, under `cfg`.
    pub fn new(fs_id: &str, record: &ClientCertRecord, cfg: &Config) -> Job {
        Job {
            fs_id: fs_id.to_string(),
            state_dir: cfg.paths.state_dir.clone(),
            record: record.clone(),
            client_source: cfg.client_info.source.clone(),
            endpoints: Endpoints::from_config(cfg, &record.region),
            directory: record.certificate.parent().and_then(DirId::of),
        }
    }

    /// The job as the renewer reads it.
    pub fn to_json(&self) -> Vec<u8> {
        // A struct of strings, numbers and paths: serde_json cannot fail on it, but an
        // error would still be an empty job the renewer refuses, never a panic.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// A job from the renewer's stdin (at most [`MAX_JOB`] bytes, checked by the caller
    /// that reads them).
    pub fn parse(bytes: &[u8]) -> Result<Job, String> {
        if bytes.len() > MAX_JOB {
            return Err(format!("the job is larger than {} KiB", MAX_JOB / 1024));
        }
        serde_json::from_slice(bytes).map_err(|e| format!("the job is not valid: {e}"))
    }
}

/// A renewal that succeeded: what the state file records of the new certificate, which
/// the renewer has written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Renewed {
    /// Seconds since the epoch.
    pub issued: f64,
    pub not_after: f64,
    /// When the credentials in it expire, if the source said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_expire: Option<f64>,
}

/// A renewer's one line on stdout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    Ok(Renewed),
    /// One line, never a secret.
    Error(String),
}

impl Answer {
    /// The answer as the renewer prints it: one JSON line.
    pub fn to_line(&self) -> String {
        let json = serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"error":"the renewal's answer could not be written"}"#.to_string()
        });
        format!("{json}\n")
    }

    /// What the watchdog makes of a renewer's stdout: the renewal, or why there is none
    /// (the renewer's own error, or what is wrong with its answer), one line.
    pub fn parse(stdout: &[u8]) -> Result<Renewed, String> {
        if stdout.len() > MAX_ANSWER {
            return Err(format!(
                "efs-renew-cert's answer is larger than {} KiB",
                MAX_ANSWER / 1024
            ));
        }
        let text = std::str::from_utf8(stdout)
            .map_err(|_| "efs-renew-cert's answer is not UTF-8".to_string())?
            .trim();
        if text.is_empty() {
            return Err("efs-renew-cert gave no answer".into());
        }
        match serde_json::from_str::<Answer>(text) {
            Ok(Answer::Ok(r)) => check_times(&r).map(|()| r),
            Ok(Answer::Error(e)) => Err(bounded_line(&e)),
            Err(e) => Err(format!("efs-renew-cert's answer is not valid: {e}")),
        }
    }
}

/// The times of a renewal must be times, or the next look would renew again at once.
fn check_times(r: &Renewed) -> Result<(), String> {
    let valid = |t: f64| t.is_finite() && (0.0..=1e11).contains(&t);
    if valid(r.issued)
        && valid(r.not_after)
        && r.not_after > r.issued
        && r.credentials_expire.is_none_or(valid)
    {
        Ok(())
    } else {
        Err(format!(
            "efs-renew-cert answered times that are not valid (issued {}, not_after {}, credentials_expire {:?})",
            r.issued, r.not_after, r.credentials_expire
        ))
    }
}

/// One line of text from an error, whatever it contained.
pub fn one_line(s: &str) -> String {
    s.split(['\n', '\r'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
        // other control characters (an ESC of a renewer's stderr) never reach a log
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// [`one_line`], at most [`MAX_ERROR_CHARS`] characters.
fn bounded_line(s: &str) -> String {
    let line = one_line(s);
    match line.char_indices().nth(MAX_ERROR_CHARS) {
        Some((at, _)) => format!("{}...", &line[..at]),
        None => line,
    }
}

/// Whether a state file may have `certificate` written or removed: only a file in a
/// `NAME+` directory directly in the state directory, named without `.` or `..` (a
/// state file is not trusted to name arbitrary files).
pub fn inside_state_dir(state_dir: &Path, certificate: &Path) -> bool {
    let plain = certificate
        .components()
        .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    let Some(dir) = certificate.parent() else {
        return false;
    };
    plain
        && certificate.file_name().is_some()
        && dir
            .file_name()
            .is_some_and(|n| n.to_string_lossy().ends_with('+'))
        && dir.parent() == Some(state_dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> Job {
        let record = ClientCertRecord {
            certificate: "/run/efs/fs-1.mnt.20049+/certificate.pem".into(),
            private_key: "/etc/amazon/efs/privateKey.pem".into(),
            common_name: "host".into(),
            region: "cn-north-1".into(),
            access_point: Some("fsap-0123456789abcdef0".into()),
            iam_source: Some("credentials:default".into()),
            issued: 1_800_000_000.0,
            not_after: 1_800_010_800.0,
            credentials_expire: Some(1_800_003_600.5),
            renewed: None,
            renewal_error: None,
        };
        Job::new("fs-1", &record, &Config::default())
    }

    #[test]
    fn a_job_goes_over_the_pipe_and_back_unchanged() {
        let job = job();
        assert_eq!(job.endpoints.dns_name_suffix, "amazonaws.com.cn");
        assert_eq!(job.endpoints.imds, "http://169.254.169.254");
        assert!(job.endpoints.imds_token);
        assert_eq!(Job::parse(&job.to_json()).unwrap(), job);
        assert!(Job::parse(b"{")
            .unwrap_err()
            .starts_with("the job is not valid"));
        assert!(Job::parse(&vec![b' '; MAX_JOB + 1])
            .unwrap_err()
            .contains("larger"));
        // A field added later, unknown here, does not break an older reader.
        let mut v: serde_json::Value = serde_json::from_slice(&job.to_json()).unwrap();
        v["later"] = serde_json::json!(1);
        assert_eq!(Job::parse(v.to_string().as_bytes()).unwrap(), job);
    }

    #[test]
    fn answers_round_trip_and_bad_ones_are_one_line_errors() {
        let ok = Renewed {
            issued: 1_800_000_000.0,
            not_after: 1_800_010_800.0,
            credentials_expire: Some(1_800_003_600.25),
        };
        let line = Answer::Ok(ok.clone()).to_line();
        assert!(
            line.starts_with(r#"{"ok":{"issued":"#) && line.ends_with("}\n"),
            "{line}"
        );
        assert_eq!(Answer::parse(line.as_bytes()).unwrap(), ok);
        let no_creds = Renewed {
            credentials_expire: None,
            ..ok.clone()
        };
        assert_eq!(
            Answer::parse(Answer::Ok(no_creds.clone()).to_line().as_bytes()).unwrap(),
            no_creds
        );
        let err = Answer::Error("AWS profile [x] not found\nin /root/.aws".into()).to_line();
        assert_eq!(err.lines().count(), 1);
        assert_eq!(
            Answer::parse(err.as_bytes()).unwrap_err(),
            "AWS profile [x] not found in /root/.aws"
        );
        let long = Answer::Error("x".repeat(5000)).to_line();
        assert!(Answer::parse(long.as_bytes()).unwrap_err().len() <= MAX_ERROR_CHARS + 3);
        for (bad, says) in [
            (&b""[..], "gave no answer"),
            (b"\n", "gave no answer"),
            (b"{\"ok\":", "not valid"),
            (b"{\"ok\":{}}", "not valid"),
            (b"{\"maybe\":1}", "not valid"),
            (b"[1,2]", "not valid"),
            (b"{\"error\":\"a\"} trailing", "not valid"),
            (b"\xff\xfe", "not UTF-8"),
            (
                br#"{"ok":{"issued":-1.0,"not_after":5.0}}"#,
                "times that are not valid",
            ),
            (
                br#"{"ok":{"issued":10.0,"not_after":5.0}}"#,
                "times that are not valid",
            ),
            (
                br#"{"ok":{"issued":1.0,"not_after":1e300}}"#,
                "times that are not valid",
            ),
        ] {
            let e = Answer::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad:?}: {e}");
            assert_eq!(e.lines().count(), 1, "{e}");
        }
        assert!(Answer::parse(&vec![b' '; MAX_ANSWER + 1])
            .unwrap_err()
            .contains("larger"));
    }

    #[test]
    fn only_certificates_in_the_state_directory_are_written_or_removed() {
        let dir = Path::new("/run/efs");
        assert!(inside_state_dir(
            dir,
            Path::new("/run/efs/fs-1.mnt.20049+/certificate.pem")
        ));
        for bad in [
            "/etc/shadow",
            "/run/efs/certificate.pem",
            "/run/efs/fs-1.mnt.20049/certificate.pem",
            "/run/efs/fs-1+/../../etc/passwd",
            "fs-1+/certificate.pem",
            "/run/efs/fs-1+/",
        ] {
            assert!(!inside_state_dir(dir, Path::new(bad)), "{bad}");
        }
    }

    #[test]
    fn errors_become_one_line() {
        assert_eq!(one_line("a\nb\r\n  c "), "a b c");
    }
}
