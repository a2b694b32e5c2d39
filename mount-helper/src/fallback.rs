//! Where to connect when the file system's DNS name does not resolve: amazon-efs-utils'
//! mount-target-IP fallback (`[mount] fall_back_to_mount_target_ip_address_enabled`,
//! on by default). The EFS API names the mount target in this client's AZ
//! ([`efs_iam::mount_target`]); the mount then connects to its IP address, and the
//! tunnel still checks the certificate against the DNS name.
//!
//! Decisions worth keeping:
//! * The name is resolved here only when the fallback could follow (on, no
//!   `mounttargetip`, no `crossaccount`, which the incumbent never falls back for).
//!   Otherwise the name is resolved where it is used: by the tunnel, which waits out a
//!   name that does not resolve yet, and by `mount.nfs4` for a mount without TLS.
//! * A name that does not exist (`EAI_NONAME`) and no mount target found ends the mount
//!   at once with the incumbent's "Failed to resolve" error (exit 1) and why the
//!   fallback found nothing. A resolver that cannot answer yet (`EAI_AGAIN`: at boot,
//!   before the network is up) is not such a verdict: when the fallback finds nothing
//!   either, the mount goes on by name and the tunnel's readiness retries decide.
//! * Credentials for the API come from the same chain as `-o iam` (the mount's
//!   `awsprofile`, `awscredsuri`, `rolearn`/`jwtpath`, then the environment's sources
//!   and the instance role), as botocore's default chain does for the incumbent.
//! * The client's AZ is its AZ ID from instance metadata, which needs no EC2 call and
//!   no `ec2:DescribeAvailabilityZones` permission; only an `az=` option (a zone name)
//!   is mapped to its ID through EC2, as the incumbent does.

use std::path::PathBuf;
use std::time::Duration;

use efs_config::Config;
use efs_iam::credentials::{self, ProcessEnv, Request};
use efs_iam::mount_target::{self, Api, ClientAz};
use log::{info, warn};

use crate::options::EfsOptions;
use crate::target::Device;
use crate::{client_cert, imds, MountError};

/// Deadline of each EFS or EC2 API request.
const API_TIMEOUT: Duration = Duration::from_secs(5);

/// What the resolver said of a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    Resolves,
    /// The name does not exist (`EAI_NONAME`, `EAI_NODATA`).
    NoSuchName,
    /// No verdict yet (`EAI_AGAIN` and the like): the resolver could not be asked.
    NotYet(String),
}

/// Resolves `name` as the incumbent does: as given, then with a trailing `.` (a VPC's
/// search domains must not turn it into another name).
pub fn resolve(name: &str) -> Resolution {
    let once = |n: &str| {
        let hints = dns_lookup::AddrInfoHints {
            socktype: nix::libc::SOCK_STREAM,
            ..dns_lookup::AddrInfoHints::default()
        };
        match dns_lookup::getaddrinfo(Some(n), None, Some(hints)) {
            Ok(answers) => {
                if answers.flatten().next().is_some() {
                    Resolution::Resolves
                } else {
                    Resolution::NoSuchName
                }
            }
            Err(e) => match e.kind() {
                dns_lookup::LookupErrorKind::NoName | dns_lookup::LookupErrorKind::NoData => {
                    Resolution::NoSuchName
                }
                _ => Resolution::NotYet(std::io::Error::from(e).to_string()),
            },
        }
    };
    match once(name) {
        Resolution::Resolves => Resolution::Resolves,
        _ if name.ends_with('.') => once(name),
        _ => once(&format!("{name}.")),
    }
}

/// The IP address to connect to instead of `dns_name`, if the fallback finds one;
/// `None`: connect by name.
pub fn mount_target_ip(
    cfg: &Config,
    opts: &EfsOptions,
    device: &Device,
    region: &str,
    dns_name: &str,
    az: Option<&str>,
) -> Result<Option<String>, MountError> {
    if opts.mounttargetip.is_some()
        || opts.crossaccount
        || !cfg.mount.fall_back_to_mount_target_ip_address_enabled
    {
        return Ok(None);
    }
    let failure = match resolve(dns_name) {
        Resolution::Resolves => return Ok(None),
        other => other,
    };
    info!("Failed to resolve {dns_name}, attempting to lookup mount target ip address using the EFS API.");
    let fs_id = device.fs_id.as_str();
    let why = match lookup(cfg, opts, device, region, az) {
        Ok(ip) => {
            info!("Found fall back mount target ip address {ip} for file system {fs_id}");
            return Ok(Some(ip));
        }
        Err(why) => why,
    };
    match failure {
        Resolution::NotYet(resolver) => {
            warn!(
                "{dns_name} does not resolve yet ({resolver}) and no mount target address was found ({why}); the tunnel keeps trying the name"
            );
            Ok(None)
        }
        _ => Err(MountError::Invalid(format!(
            "Failed to resolve \"{dns_name}\" - check that your file system ID is correct, and ensure that the VPC has an EFS mount target for this file system ID. See https://docs.aws.amazon.com/console/efs/mount-dns-name for more detail. Attempting to lookup mount target ip address using the EFS API: {why}"
        ))),
    }
}

/// The EFS API's answer for this client, or the incumbent's reason why there is none.
fn lookup(
    cfg: &Config,
    opts: &EfsOptions,
    device: &Device,
    region: &str,
    az: Option<&str>,
) -> Result<String, String> {
    let fs_id = device.fs_id.as_str();
    const OP: &str = "DescribeMountTargets";
    let region = if region.is_empty() {
        crate::target::resolve_region(opts.region.as_deref(), device, cfg)?
    } else {
        region.to_string()
    };
    let req = Request {
        awscredsuri: opts.awscredsuri.as_deref(),
        awsprofile: opts.awsprofile.as_deref(),
        rolearn: opts.rolearn.as_deref(),
        jwtpath: opts.jwtpath.as_deref(),
        region: &region,
    };
    let got = credentials::obtain(&req, &ProcessEnv, &client_cert::endpoints(cfg, &region))
        .map_err(|e| {
            format!("{e} when performing operation {OP}, please confirm your aws credentials are properly configured.")
        })?;
    let client_az = match az {
        Some(name) => ClientAz::Name(name.to_string()),
        None => match imds::az_id(
            &cfg.mount.instance_metadata_url,
            !cfg.mount.disable_fetch_ec2_metadata_token,
        ) {
            Ok(id) => ClientAz::Id(id),
            Err(why) => {
                warn!("Get AZ via metadata service call failed, {why}");
                info!("No az info passed via options, randomly pick one available mount target.");
                ClientAz::Unknown
            }
        },
    };
    let (efs_default, ec2_default) = mount_target::default_urls(
        &region,
        cfg.dns_name_suffix(&region),
        cfg.mount.fips_mode_enabled,
    );
    let ca_bundle = std::env::var_os("AWS_CA_BUNDLE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    let api = Api {
        credentials: &got.credentials,
        region: &region,
        efs_url: cfg
            .mount
            .efs_endpoint_url
            .as_deref()
            .unwrap_or(&efs_default),
        ec2_url: cfg
            .mount
            .ec2_endpoint_url
            .as_deref()
            .unwrap_or(&ec2_default),
        timeout: API_TIMEOUT,
        ca_bundle: ca_bundle.as_deref(),
    };
    mount_target::lookup(&api, fs_id, &client_az).map_err(|f| f.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_with_an_overlong_label_does_not_exist_and_asks_no_server() {
        // glibc refuses to build the query (a label of 64 octets), so nothing is sent:
        // the same name the integration tests use for a file system whose name does not
        // resolve.
        let name = format!("{}.fs-12345678.efs.us-east-1.amazonaws.com", "a".repeat(64));
        assert_eq!(resolve(&name), Resolution::NoSuchName);
        assert_eq!(resolve("localhost"), Resolution::Resolves);
        assert_eq!(resolve("127.0.0.1"), Resolution::Resolves);
    }
}
