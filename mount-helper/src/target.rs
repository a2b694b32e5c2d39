//! What to mount: the file system id and path from the device spec, the region, the file
//! system's DNS name, and the name its TLS certificate must match.

use efs_config::Config;

use crate::imds;
use crate::options::is_region_name;

/// The parsed device spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub fs_id: String,
    /// The path inside the file system, `/` by default.
    pub path: String,
    /// From an AZ-specific DNS name (`us-east-1a.fs-…`).
    pub az: Option<String>,
    /// From a full DNS name given as the spec.
    pub region: Option<String>,
}

/// `fs-id`, `fs-id:/path`, or an EFS DNS name (optionally AZ-specific) with `:/path`.
pub fn parse_device(spec: &str) -> Result<Device, String> {
    parse_device_with(spec, canonical_names)
}

/// [`parse_device`] with the DNS look-up given: `canonical_names(host)` returns the
/// canonical names of a spec that is neither a file system id nor an EFS DNS name. Public
/// so that the fuzz target `device_spec` can check the whole parse without DNS.
pub fn parse_device_with(
    spec: &str,
    canonical_names: impl Fn(&str) -> Result<Vec<String>, String>,
) -> Result<Device, String> {
    let (remote, path) = match spec.split_once(':') {
        Some((r, p)) => (r, if p.is_empty() { "/" } else { p }),
        None => (spec, "/"),
    };
    if !path.starts_with('/') {
        return Err(format!(
            "The path \"{path}\" in \"{spec}\" must start with \"/\", for example {remote}:/{path}"
        ));
    }
    if is_fs_id(remote) {
        return Ok(Device {
            fs_id: remote.to_string(),
            path: path.to_string(),
            az: None,
            region: None,
        });
    }
    // A full EFS DNS name, or a name (CNAME, /etc/hosts alias) whose canonical name is one.
    let parsed = match parse_efs_dns_name(remote) {
        Some(p) => Some(p),
        None => canonical_names(remote)?
            .iter()
            .find_map(|n| parse_efs_dns_name(n)),
    };
    match parsed {
        Some((az, fs_id, region)) => Ok(Device {
            fs_id,
            path: path.to_string(),
            az,
            region: Some(region),
        }),
        None => Err(format!(
            "The specified CNAME \"{remote}\" did not resolve to a valid DNS name for an EFS mount target. \
             Please refer to the EFS documentation for mounting with DNS names for examples: \
             https://docs.aws.amazon.com/efs/latest/ug/mounting-fs-mount-cmd-dns-name.html"
        )),
    }
}

/// The canonical names `getaddrinfo(AI_CANONNAME)` gives for `host`.
fn canonical_names(host: &str) -> Result<Vec<String>, String> {
    let hints = dns_lookup::AddrInfoHints {
        flags: nix::libc::AI_CANONNAME,
        socktype: nix::libc::SOCK_STREAM,
        ..dns_lookup::AddrInfoHints::default()
    };
    let answers = dns_lookup::getaddrinfo(Some(host), None, Some(hints)).map_err(|_| {
        format!(
            "Failed to resolve \"{host}\" - check that the specified DNS name is a CNAME record resolving to a valid EFS DNS name"
        )
    })?;
    Ok(answers.flatten().filter_map(|a| a.canonname).collect())
}

/// `^fs-[0-9a-f]+$`
pub fn is_fs_id(s: &str) -> bool {
    s.strip_prefix("fs-").is_some_and(|h| {
        !h.is_empty()
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// `[<az>.]fs-<hex>.<label>+.<region>.<suffix>`: (az, fs_id, region).
fn parse_efs_dns_name(name: &str) -> Option<(Option<String>, String, String)> {
    let labels: Vec<&str> = name.trim_end_matches('.').split('.').collect();
    let fs_at = labels.iter().position(|l| is_fs_id(l))?;
    if fs_at > 1 {
        return None;
    }
    let az = (fs_at == 1).then(|| labels[0].to_string());
    let mut i = fs_at + 1;
    let start = i;
    while i < labels.len()
        && !labels[i].is_empty()
        && labels[i]
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b == b'-')
    {
        i += 1;
    }
    // At least one service label (`efs`), then the region, then a non-empty suffix.
    if i == start || i + 1 >= labels.len() || !is_region_name(labels[i]) {
        return None;
    }
    Some((az, labels[fs_at].to_string(), labels[i].to_string()))
}

/// The region, in the incumbent's order: the `region` option, `AWS_REGION`,
/// `AWS_DEFAULT_REGION`, the config file, the region in a DNS-name spec, then instance
/// metadata.
pub fn resolve_region(
    option: Option<&str>,
    device: &Device,
    cfg: &Config,
) -> Result<String, String> {
    if let Some(r) = option {
        return Ok(r.to_string());
    }
    for var in ["AWS_REGION", "AWS_DEFAULT_REGION"] {
        if let Ok(r) = std::env::var(var) {
            if is_region_name(&r) {
                return Ok(r);
            }
        }
    }
    if let Some(r) = cfg.mount.region.as_deref().or(device.region.as_deref()) {
        return Ok(r.to_string());
    }
    imds::region(&cfg.mount.instance_metadata_url, !cfg.mount.disable_fetch_ec2_metadata_token).map_err(|why| {
        log::warn!("instance metadata: {why}");
        "Error retrieving region. Please set the \"region\" parameter in the efs-utils configuration file or specify it as a mount option.".to_string()
    })
}

/// The file system's DNS name from `dns_name_format`.
pub fn dns_name(
    cfg: &Config,
    fs_id: &str,
    region: &str,
    az: Option<&str>,
) -> Result<String, String> {
    let mut name = cfg.mount.dns_name_format.clone();
    match az {
        Some(az) => name = name.replace("{az}", az),
        None => name = name.replace("{az}.", "").replace("{az}", ""),
    }
    name = name
        .replace("{fs_id}", fs_id)
        .replace("{region}", region)
        .replace("{dns_name_suffix}", cfg.dns_name_suffix(region));
    if name.contains('{') || name.contains('}') {
        return Err(format!(
            "DNS name format has an incorrect number of replacement fields: {} (check dns_name_format in the config)",
            cfg.mount.dns_name_format
        ));
    }
    Ok(name)
}

/// `crossaccount`'s DNS name: `<az-id>.<fs_id>.efs.<region>.<suffix>`, as the incumbent
/// builds it (`dns_name_format` does not apply).
pub fn cross_account_dns_name(cfg: &Config, fs_id: &str, region: &str, az_id: &str) -> String {
    format!(
        "{az_id}.{fs_id}.efs.{region}.{}",
        cfg.dns_name_suffix(region)
    )
}

/// The name the certificate must match: the DNS name from the file system id on, with
/// any AZ label stripped (EFS certificates are `*.efs.<region>.<suffix>`).
pub fn check_host(dns_name: &str, fs_id: &str) -> String {
    match dns_name.find(fs_id) {
        Some(i) => dns_name[i..].to_string(),
        None => dns_name.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_forms() {
        let d = parse_device("fs-12345678").unwrap();
        assert_eq!((d.fs_id.as_str(), d.path.as_str()), ("fs-12345678", "/"));
        let d = parse_device("fs-12345678:/sub/dir").unwrap();
        assert_eq!(d.path, "/sub/dir");
        assert_eq!(parse_device("fs-12345678:").unwrap().path, "/");
        let d = parse_device("us-east-1a.fs-12345678.efs.us-east-1.amazonaws.com:/x").unwrap();
        assert_eq!(d.az.as_deref(), Some("us-east-1a"));
        assert_eq!(d.region.as_deref(), Some("us-east-1"));
        assert_eq!(d.fs_id, "fs-12345678");
        let d = parse_device("fs-abc.efs.cn-north-1.amazonaws.com.cn").unwrap();
        assert_eq!(d.region.as_deref(), Some("cn-north-1"));
        assert!(parse_device("fs-12345678:sub")
            .unwrap_err()
            .contains("must start with"));
        assert!(parse_device("10.0.0.1:/")
            .unwrap_err()
            .contains("did not resolve to a valid DNS name"));
        assert!(parse_device("fs-XYZ:/").is_err());
        assert!(parse_device("").is_err());
        let cname = |_: &str| Ok(vec!["fs-1.efs.eu-west-1.amazonaws.com.".to_string()]);
        let d = parse_device_with("efs.example.com:/data", cname).unwrap();
        assert_eq!((d.fs_id.as_str(), d.path.as_str()), ("fs-1", "/data"));
        assert_eq!(d.region.as_deref(), Some("eu-west-1"));
    }

    #[test]
    fn dns_names_and_check_hosts() {
        let cfg = Config::default();
        assert_eq!(
            dns_name(&cfg, "fs-1", "us-east-1", None).unwrap(),
            "fs-1.efs.us-east-1.amazonaws.com"
        );
        let az = dns_name(&cfg, "fs-1", "us-east-1", Some("us-east-1b")).unwrap();
        assert_eq!(az, "us-east-1b.fs-1.efs.us-east-1.amazonaws.com");
        assert_eq!(check_host(&az, "fs-1"), "fs-1.efs.us-east-1.amazonaws.com");
        assert_eq!(
            dns_name(&cfg, "fs-1", "cn-north-1", None).unwrap(),
            "fs-1.efs.cn-north-1.amazonaws.com.cn"
        );
        let mut odd = Config::default();
        odd.mount.dns_name_format = "{fs_id}.{bogus}.example".into();
        assert!(dns_name(&odd, "fs-1", "us-east-1", None)
            .unwrap_err()
            .contains("replacement fields"));
        // crossaccount: the AZ ID, whatever the format; the certificate name stays.
        let cross = cross_account_dns_name(&odd, "fs-1", "cn-north-1", "cnn1-az1");
        assert_eq!(cross, "cnn1-az1.fs-1.efs.cn-north-1.amazonaws.com.cn");
        assert_eq!(
            check_host(&cross, "fs-1"),
            "fs-1.efs.cn-north-1.amazonaws.com.cn"
        );
    }
}
