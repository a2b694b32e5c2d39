//! The mount-target-IP fallback: when a file system's DNS name does not resolve (a VPC
//! without DNS hostnames, a resolver that does not serve the EFS zone), amazon-efs-utils
//! asks the EFS API for the mount target in the client's Availability Zone and mounts
//! its IP address. This is that lookup, with the incumbent's choices and messages:
//!
//! 1. `DescribeMountTargets` for the file system (EFS REST-JSON, SigV4 for
//!    `elasticfilesystem`), every page;
//! 2. only targets whose `LifeCycleState` is `available`;
//! 3. the client's AZ: by its AZ **ID** (AZ names differ between accounts, so a shared
//!    VPC's mount target is matched by ID). The ID comes from instance metadata
//!    directly; only an `az=` option (a name) needs EC2 `DescribeAvailabilityZones` to
//!    map it, as the incumbent does for every mount. With neither, any available
//!    target, as the incumbent picks one;
//! 4. its IPv4 address, else its IPv6 address.
//!
//! The caller still checks the server's certificate against the file system's DNS name:
//! the IP address only says where to connect. Every call blocks for at most its client's
//! deadline. Nothing here reads the environment or a fixed path.

use std::path::Path;
use std::time::Duration;

use crate::credentials::{http, Credentials};
use crate::sigv4::{canonical_query, sign_http, HttpRequest, SigningTime};

/// EFS's API version in the REST path.
const EFS_API_PATH: &str = "2015-02-01/mount-targets";
/// EC2 Query API version.
const EC2_API_VERSION: &str = "2016-11-15";
/// More pages than any file system has mount targets (one per AZ) would fill.
const MAX_PAGES: usize = 20;

/// One mount target, as `DescribeMountTargets` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountTarget {
    pub id: String,
    pub az_id: Option<String>,
    pub az_name: Option<String>,
    pub state: String,
    pub ipv4: Option<String>,
    pub ipv6: Option<String>,
}

impl MountTarget {
    /// The address to connect to: IPv4 first, as the incumbent prefers it.
    pub fn address(&self) -> Option<&str> {
        self.ipv4.as_deref().or(self.ipv6.as_deref())
    }
}

/// Which Availability Zone the client is in, as far as it is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAz {
    /// From instance metadata (`placement/availability-zone-id`).
    Id(String),
    /// From the `az` option: mapped to its ID with EC2.
    Name(String),
    /// Neither: any available mount target will do.
    Unknown,
}

/// Why no mount target address was found: the incumbent's message (one line), which
/// `mount.efs` appends to its "Failed to resolve" error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fallback(pub String);

impl std::fmt::Display for Fallback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where the two APIs are and who asks.
pub struct Api<'a> {
    pub credentials: &'a Credentials,
    pub region: &'a str,
    /// EFS API base URL (`https://elasticfilesystem.<region>.<suffix>/`).
    pub efs_url: &'a str,
    /// EC2 API base URL (`https://ec2.<region>.<suffix>/`).
    pub ec2_url: &'a str,
    /// Deadline of each request, start to end.
    pub timeout: Duration,
    /// PEM certificates trusted besides the webpki roots (`AWS_CA_BUNDLE`).
    pub ca_bundle: Option<&'a Path>,
}

impl Api<'_> {
    fn client(&self) -> Result<http::Client, Fallback> {
        let bundle = match self.ca_bundle {
            Some(p) => Some(http::read_ca_bundle(p).map_err(|why| {
                Fallback(format!("Cannot use the CA bundle {}: {why}", p.display()))
            })?),
            None => None,
        };
        http::Client::new(self.timeout, bundle.as_deref())
            .map_err(|why| Fallback(format!("Cannot set up HTTPS: {why}")))
    }
}

/// The EFS and EC2 API base URLs of `region`; FIPS mode uses their `-fips` endpoints.
pub fn default_urls(region: &str, dns_name_suffix: &str, fips: bool) -> (String, String) {
    let f = if fips { "-fips" } else { "" };
    (
        format!("https://elasticfilesystem{f}.{region}.{dns_name_suffix}/"),
        format!("https://ec2{f}.{region}.{dns_name_suffix}/"),
    )
}

/// The address of the mount target of `fs_id` this client should use.
pub fn lookup(api: &Api, fs_id: &str, az: &ClientAz) -> Result<String, Fallback> {
    let client = api.client()?;
    let targets = describe_mount_targets(api, &client, fs_id)?;
    let mapped = match az {
        ClientAz::Name(name) => az_id_of_name(api, &client, name)?,
        ClientAz::Id(id) => Some(id.clone()),
        ClientAz::Unknown => None,
    };
    let az_id = match (az, mapped.as_deref()) {
        (ClientAz::Unknown, _) => AzId::Unknown,
        (_, None) => AzId::Unmapped,
        (_, Some(id)) => AzId::Id(id),
    };
    let target = choose(&targets, fs_id, az, az_id)?;
    target.address().map(str::to_string).ok_or_else(|| {
        Fallback(format!(
            "The mount target {} of the file system {fs_id} has no IP address.",
            target.id
        ))
    })
}

/// The client's AZ ID, as far as it is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AzId<'a> {
    /// The client's AZ is unknown: any available mount target will do.
    Unknown,
    /// The AZ name given maps to no ID in this region.
    Unmapped,
    Id(&'a str),
}

/// The target in the client's AZ, with the incumbent's message for each way there is
/// none.
pub fn choose<'t>(
    targets: &'t [MountTarget],
    fs_id: &str,
    az: &ClientAz,
    az_id: AzId<'_>,
) -> Result<&'t MountTarget, Fallback> {
    let shown = match az {
        ClientAz::Id(id) => id.as_str(),
        ClientAz::Name(name) => name.as_str(),
        ClientAz::Unknown => "",
    };
    if targets.is_empty() {
        let where_ = if shown.is_empty() {
            "any availability zone"
        } else {
            shown
        };
        return Err(Fallback(format!(
            "Cannot find mount target for the file system {fs_id}, please create a mount target in {where_}."
        )));
    }
    let available: Vec<&MountTarget> = targets.iter().filter(|t| t.state == "available").collect();
    if available.is_empty() {
        return Err(Fallback(format!(
            "No mount target created for the file system {fs_id} is in available state yet, please retry in 5 minutes."
        )));
    }
    if az_id == AzId::Unknown {
        return Ok(available[random_index(available.len())]);
    }
    let zones: Vec<&str> = available
        .iter()
        .map(|t| t.az_name.as_deref().or(t.az_id.as_deref()).unwrap_or("?"))
        .collect();
    let listed = format!("Available mount target(s) are in az {zones:?}");
    let AzId::Id(az_id) = az_id else {
        return Err(Fallback(format!(
            "No matching az id for the az {shown}. Please check the az option passed. {listed}"
        )));
    };
    match targets.iter().find(|t| t.az_id.as_deref() == Some(az_id)) {
        Some(t) if t.state == "available" => Ok(t),
        Some(t) => Err(Fallback(match t.state.as_str() {
            "creating" | "updating" | "error" => format!(
                "Mount target in the az {shown} is {}, please retry in 5 minutes, or use the mount target in the other az by passing the availability zone name option. {listed}",
                t.state
            ),
            "deleted" | "deleting" => format!(
                "Mount target in the availability zone {shown} is {}, please create a new one in {shown}, or use the mount target in the other az by passing the availability zone name option. {listed}",
                t.state
            ),
            _ => "Unknown mount target state".to_string(),
        })),
        None => Err(Fallback(format!(
            "No matching mount target in the az {shown}. Please create one mount target in {shown}, or try the mount target in another AZ by passing the availability zone name option. {listed}"
        ))),
    }
}

/// A uniformly chosen index below `n` (n > 0), from the system's random source.
fn random_index(n: usize) -> usize {
    let mut b = [0u8; 8];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    (u64::from_le_bytes(b) % n as u64) as usize
}

/// `scheme://authority` and the base path (ending in `/`) of a base URL.
fn split_url(url: &str) -> Option<(&str, String)> {
    let (scheme, rest) = url.split_once("://")?;
    if scheme != "https" && scheme != "http" {
        return None;
    }
    let cut = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(cut);
    if authority.is_empty() || path.contains(['?', '#']) {
        return None;
    }
    let origin = &url[..scheme.len() + 3 + authority.len()];
    let mut base = if path.is_empty() {
        "/".to_string()
    } else {
        path.to_string()
    };
    if !base.ends_with('/') {
        base.push('/');
    }
    Some((origin, base))
}

/// A signed GET of `path` with `params`; the answer whatever its status.
fn signed_get(
    api: &Api,
    client: &http::Client,
    base_url: &str,
    service: &str,
    path: &str,
    params: &[(&str, &str)],
    operation: &str,
) -> Result<http::Answer, Fallback> {
    let (origin, base) = split_url(base_url).ok_or_else(|| {
        Fallback(format!(
            "The endpoint {base_url:?} for {operation} is not an http(s) URL."
        ))
    })?;
    let host = origin.split_once("://").map(|(_, h)| h).unwrap_or(origin);
    let full_path = format!("{base}{path}");
    let query = canonical_query(params);
    let time = SigningTime::now()
        .ok_or_else(|| Fallback("The system clock is outside 2000-2049.".into()))?;
    let req = HttpRequest {
        method: "GET",
        host,
        path: &full_path,
        query: &query,
        content_type: None,
        body: "",
    };
    let headers = sign_http(&req, api.credentials, api.region, service, time);
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let url = if query.is_empty() {
        format!("{origin}{full_path}")
    } else {
        format!("{origin}{full_path}?{query}")
    };
    client.call("GET", &url, &headers, None).map_err(|problem| {
        Fallback(format!(
            "Could not connect to the endpoint when performing operation {operation}, {problem}"
        ))
    })
}

/// Every mount target of `fs_id` (all pages).
fn describe_mount_targets(
    api: &Api,
    client: &http::Client,
    fs_id: &str,
) -> Result<Vec<MountTarget>, Fallback> {
    const OP: &str = "DescribeMountTargets";
    let mut targets = Vec::new();
    let mut marker: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let mut params = vec![("FileSystemId", fs_id)];
        if let Some(m) = &marker {
            params.push(("Marker", m.as_str()));
        }
        let answer = signed_get(
            api,
            client,
            api.efs_url,
            crate::EFS_SERVICE,
            EFS_API_PATH,
            &params,
            OP,
        )?;
        if !answer.ok() {
            let (code, message) = json_error(&answer.body);
            return Err(Fallback(match code.as_deref() {
                Some("FileSystemNotFound") => format!("The file system {fs_id} is not found"),
                Some("ServiceUnavailableException") => {
                    format!("The elasticfilesystem service cannot complete the request, {message}")
                }
                Some(c) if c.contains("AccessDenied") => message,
                _ => format!("Unexpected error: HTTP {} {message}", answer.status),
            }));
        }
        let page = parse_mount_targets(&answer.body).map_err(|why| {
            Fallback(format!(
                "Unknown error when performing operation {OP}, {why}."
            ))
        })?;
        targets.extend(page.targets);
        match page.next_marker {
            Some(m) if !m.is_empty() => marker = Some(m),
            _ => return Ok(targets),
        }
    }
    Ok(targets)
}

/// One page of `DescribeMountTargets`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub targets: Vec<MountTarget>,
    pub next_marker: Option<String>,
}

/// Longest value taken from an answer (ids, states, addresses, markers are short).
const MAX_FIELD: usize = 1024;

/// Parses a `DescribeMountTargets` answer. Public for the fuzz target.
pub fn parse_mount_targets(body: &str) -> Result<Page, String> {
    let v: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("the answer is not JSON ({e})"))?;
    let text = |o: &serde_json::Value, k: &str| {
        o.get(k)
            .and_then(|x| x.as_str())
            .filter(|s| !s.is_empty() && s.len() <= MAX_FIELD)
            .map(|s| crate::one_line(s, MAX_FIELD))
    };
    let list = v
        .get("MountTargets")
        .and_then(|m| m.as_array())
        .ok_or("the answer has no MountTargets list")?;
    let mut targets = Vec::with_capacity(list.len().min(64));
    for t in list {
        targets.push(MountTarget {
            id: text(t, "MountTargetId").unwrap_or_else(|| "?".into()),
            az_id: text(t, "AvailabilityZoneId"),
            az_name: text(t, "AvailabilityZoneName"),
            state: text(t, "LifeCycleState").unwrap_or_default(),
            ipv4: text(t, "IpAddress").filter(|a| a.parse::<std::net::Ipv4Addr>().is_ok()),
            ipv6: text(t, "Ipv6Address").filter(|a| a.parse::<std::net::Ipv6Addr>().is_ok()),
        });
    }
    Ok(Page {
        targets,
        next_marker: text(&v, "NextMarker"),
    })
}

/// An AWS JSON error body: its code and message, each one line.
fn json_error(body: &str) -> (Option<String>, String) {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let get = |keys: &[&str]| {
        keys.iter()
            .find_map(|k| v.get(*k).and_then(|x| x.as_str()))
            .map(|s| crate::one_line(s, 300))
    };
    let code = get(&["ErrorCode", "__type", "code", "Code"])
        .map(|c| c.rsplit('#').next().unwrap_or(&c).to_string());
    (code, get(&["Message", "message"]).unwrap_or_default())
}

/// EC2 `DescribeAvailabilityZones` for one zone name: its zone ID, `None` if EC2 knows no
/// such zone.
fn az_id_of_name(api: &Api, client: &http::Client, name: &str) -> Result<Option<String>, Fallback> {
    const OP: &str = "DescribeAvailabilityZones";
    let params = [
        ("Action", OP),
        ("Version", EC2_API_VERSION),
        ("ZoneName.1", name),
    ];
    let answer = signed_get(api, client, api.ec2_url, "ec2", "", &params, OP)?;
    match parse_availability_zones(&answer.body, name) {
        Ok(Ec2Answer::ZoneId(id)) if answer.ok() => Ok(id),
        Ok(Ec2Answer::Error { code, message }) => Err(Fallback(match code.as_str() {
            "UnauthorizedOperation" => format!("Unauthorized to perform operation {OP}."),
            "InvalidParameterValue" => format!("Invalid availability zone {name}"),
            "ServiceUnavailableException" | "Unavailable" => {
                format!("The ec2 service cannot complete the request, {message}")
            }
            c if c.contains("AccessDenied") => message,
            _ => format!("Unexpected error: {message}"),
        })),
        Ok(Ec2Answer::ZoneId(_)) => Err(Fallback(format!(
            "Unexpected error: HTTP {} from {OP}",
            answer.status
        ))),
        Err(why) => Err(Fallback(format!(
            "Unknown error when performing operation {OP}, {why}."
        ))),
    }
}

/// What an EC2 `DescribeAvailabilityZones` answer says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ec2Answer {
    /// The zone ID of the zone asked for, if listed.
    ZoneId(Option<String>),
    Error {
        code: String,
        message: String,
    },
}

/// Parses an EC2 `DescribeAvailabilityZones` answer (XML) for zone `name`. Public for
/// the fuzz target.
pub fn parse_availability_zones(body: &str, name: &str) -> Result<Ec2Answer, String> {
    let doc = roxmltree::Document::parse(body).map_err(|e| {
        format!(
            "the answer is not XML ({})",
            crate::one_line(&e.to_string(), 200)
        )
    })?;
    let child_text = |n: roxmltree::Node, tag: &str| {
        n.children()
            .find(|c| c.is_element() && c.tag_name().name() == tag)
            .and_then(|c| c.text())
            .map(|t| crate::one_line(t.trim(), 300))
    };
    if let Some(e) = doc
        .descendants()
        .find(|n| n.is_element() && n.tag_name().name() == "Error")
    {
        return Ok(Ec2Answer::Error {
            code: child_text(e, "Code").unwrap_or_default(),
            message: child_text(e, "Message").unwrap_or_default(),
        });
    }
    let zone = doc
        .descendants()
        .filter(|n| n.is_element() && n.tag_name().name() == "item")
        .find(|item| child_text(*item, "zoneName").as_deref() == Some(name))
        .and_then(|item| child_text(item, "zoneId"))
        .filter(|id| !id.is_empty());
    Ok(Ec2Answer::ZoneId(zone))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(id: &str, az_id: &str, az: &str, state: &str, ip: Option<&str>) -> MountTarget {
        MountTarget {
            id: id.into(),
            az_id: Some(az_id.into()),
            az_name: Some(az.into()),
            state: state.into(),
            ipv4: ip.map(str::to_string),
            ipv6: None,
        }
    }

    /// An answer in the shape of the EFS API reference's example.
    const PAGE: &str = r#"{"MountTargets":[
        {"OwnerId":"123456789012","MountTargetId":"fsmt-1","FileSystemId":"fs-12345678",
         "SubnetId":"subnet-1","LifeCycleState":"available","IpAddress":"10.0.1.25",
         "NetworkInterfaceId":"eni-1","AvailabilityZoneId":"use1-az6",
         "AvailabilityZoneName":"us-east-1a","VpcId":"vpc-1"},
        {"MountTargetId":"fsmt-2","LifeCycleState":"creating","AvailabilityZoneId":"use1-az1",
         "AvailabilityZoneName":"us-east-1b","Ipv6Address":"fd00::7"}],
        "NextMarker":"m2"}"#;

    #[test]
    fn parses_a_page_of_mount_targets() {
        let p = parse_mount_targets(PAGE).unwrap();
        assert_eq!(p.next_marker.as_deref(), Some("m2"));
        assert_eq!(p.targets.len(), 2);
        assert_eq!(
            p.targets[0],
            target(
                "fsmt-1",
                "use1-az6",
                "us-east-1a",
                "available",
                Some("10.0.1.25")
            )
        );
        assert_eq!(p.targets[1].address(), Some("fd00::7"));
        assert!(parse_mount_targets("{}").is_err());
        assert!(parse_mount_targets("[").is_err());
        // an address that is not one is not taken
        let odd = r#"{"MountTargets":[{"MountTargetId":"x","LifeCycleState":"available","IpAddress":"10.0.0.1; rm -rf /"}]}"#;
        assert_eq!(parse_mount_targets(odd).unwrap().targets[0].address(), None);
    }

    #[test]
    fn chooses_the_target_in_the_clients_az_as_the_incumbent_does() {
        let t = vec![
            target(
                "fsmt-1",
                "use1-az6",
                "us-east-1a",
                "available",
                Some("10.0.1.25"),
            ),
            target(
                "fsmt-2",
                "use1-az1",
                "us-east-1b",
                "creating",
                Some("10.0.2.25"),
            ),
            target(
                "fsmt-3",
                "use1-az2",
                "us-east-1c",
                "deleting",
                Some("10.0.3.25"),
            ),
        ];
        let id = |s: &str| ClientAz::Id(s.into());
        assert_eq!(
            choose(&t, "fs-1", &id("use1-az6"), AzId::Id("use1-az6"))
                .unwrap()
                .id,
            "fsmt-1"
        );
        let e = choose(&t, "fs-1", &id("use1-az1"), AzId::Id("use1-az1")).unwrap_err();
        assert!(
            e.0.starts_with(
                "Mount target in the az use1-az1 is creating, please retry in 5 minutes"
            ),
            "{e}"
        );
        assert!(
            e.0.ends_with("Available mount target(s) are in az [\"us-east-1a\"]"),
            "{e}"
        );
        let e = choose(&t, "fs-1", &id("use1-az2"), AzId::Id("use1-az2")).unwrap_err();
        assert!(
            e.0.contains("is deleting, please create a new one in use1-az2"),
            "{e}"
        );
        let e = choose(&t, "fs-1", &id("use1-az9"), AzId::Id("use1-az9")).unwrap_err();
        assert!(
            e.0.starts_with("No matching mount target in the az use1-az9."),
            "{e}"
        );
        let name = ClientAz::Name("us-east-1z".into());
        let e = choose(&t, "fs-1", &name, AzId::Unmapped).unwrap_err();
        assert!(
            e.0.starts_with("No matching az id for the az us-east-1z."),
            "{e}"
        );
        // AZ unknown: an available one
        assert_eq!(
            choose(&t, "fs-1", &ClientAz::Unknown, AzId::Unknown)
                .unwrap()
                .id,
            "fsmt-1"
        );
        let e = choose(&[], "fs-1", &ClientAz::Unknown, AzId::Unknown).unwrap_err();
        assert_eq!(e.0, "Cannot find mount target for the file system fs-1, please create a mount target in any availability zone.");
        let e = choose(&t[1..], "fs-1", &id("use1-az1"), AzId::Id("use1-az1")).unwrap_err();
        assert_eq!(e.0, "No mount target created for the file system fs-1 is in available state yet, please retry in 5 minutes.");
    }

    #[test]
    fn reads_the_zone_id_or_the_error_of_ec2() {
        let ok = r#"<?xml version="1.0" encoding="UTF-8"?>
<DescribeAvailabilityZonesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
  <requestId>r-1</requestId>
  <availabilityZoneInfo>
    <item><zoneName>us-east-1a</zoneName><zoneState>available</zoneState><regionName>us-east-1</regionName><zoneId>use1-az6</zoneId></item>
  </availabilityZoneInfo>
</DescribeAvailabilityZonesResponse>"#;
        assert_eq!(
            parse_availability_zones(ok, "us-east-1a").unwrap(),
            Ec2Answer::ZoneId(Some("use1-az6".into()))
        );
        assert_eq!(
            parse_availability_zones(ok, "us-east-1b").unwrap(),
            Ec2Answer::ZoneId(None)
        );
        let refused = "<Response><Errors><Error><Code>UnauthorizedOperation</Code><Message>You are not\nauthorized</Message></Error></Errors><RequestID>x</RequestID></Response>";
        assert_eq!(
            parse_availability_zones(refused, "us-east-1a").unwrap(),
            Ec2Answer::Error {
                code: "UnauthorizedOperation".into(),
                message: "You are not authorized".into()
            }
        );
        assert!(parse_availability_zones("<a", "x").is_err());
    }

    #[test]
    fn urls() {
        assert_eq!(
            default_urls("eu-west-1", "amazonaws.com", false),
            (
                "https://elasticfilesystem.eu-west-1.amazonaws.com/".into(),
                "https://ec2.eu-west-1.amazonaws.com/".into()
            )
        );
        assert_eq!(
            default_urls("us-gov-west-1", "amazonaws.com", true).0,
            "https://elasticfilesystem-fips.us-gov-west-1.amazonaws.com/"
        );
        assert_eq!(
            split_url("http://127.0.0.1:8080").unwrap(),
            ("http://127.0.0.1:8080", "/".into())
        );
        assert_eq!(
            split_url("https://h/base").unwrap(),
            ("https://h", "/base/".into())
        );
        assert!(split_url("ftp://h/").is_none());
        assert!(split_url("https:///x").is_none());
        let (code, msg) = json_error(
            r#"{"ErrorCode":"FileSystemNotFound","Message":"File system 'fs-1' does not exist."}"#,
        );
        assert_eq!(
            (code.as_deref(), msg.as_str()),
            (
                Some("FileSystemNotFound"),
                "File system 'fs-1' does not exist."
            )
        );
        let (code, _) =
            json_error(r#"{"__type":"com.amazon#AccessDeniedException","message":"no"}"#);
        assert_eq!(code.as_deref(), Some("AccessDeniedException"));
    }
}
