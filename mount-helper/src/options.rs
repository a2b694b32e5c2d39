//! Mount options: where every `-o` option is parsed, validated and turned into the
//! options `mount.nfs4` gets.
//!
//! Names, meanings, checks and error texts follow amazon-efs-utils (the reference
//! behaviour's sections 1.2, 1.4 and 1.5), with these deliberate differences: a value that
//! contains `=` is kept whole instead of crashing the parser; `ocsp` (not built yet) is
//! validated as the incumbent does and then refused with a clear "not supported yet";
//! `verify=0` (no
//! certificate verification at all) is refused; and with `iam`, `rolearn` and `jwtpath`
//! must come together (the incumbent ignores one alone and mounts with whatever identity
//! the rest of the credential chain finds). The IAM and access-point options themselves
//! (`iam`, `accesspoint`, `awsprofile`, `awscredsuri`, `rolearn`, `jwtpath`) become
//! [`EfsOptions`] fields; [`crate::client_cert`] acts on them.

use std::fmt;

/// Options that `mount.efs` consumes; they never reach `mount.nfs4`.
pub const EFS_OPTIONS: &[&str] = &[
    "accesspoint",
    "awscredsuri",
    "awsprofile",
    "az",
    "azid",
    "cafile",
    "iam",
    "mounttargetip",
    "netns",
    "noocsp",
    "notls",
    "ocsp",
    "region",
    "tls",
    "tlsport",
    "verify",
    "rolearn",
    "jwtpath",
    "crossaccount",
    "stunnel",
    "nodirects3read",
    "nos3readcache",
];

/// Rejected outright, as the incumbent does.
const UNSUPPORTED: &[&str] = &["capath", "azid"];

/// Validated, then refused until they are built.
const NOT_YET: &[&str] = &["ocsp"];

/// The option string, in the order given: `(key, Some(value))` or `(key, None)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options(Vec<(String, Option<String>)>);

impl Options {
    /// Splits `a,b=c,d=e=f` into options. A value may contain `=`; empty items are skipped.
    pub fn parse(text: &str) -> Options {
        let mut out: Vec<(String, Option<String>)> = Vec::new();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (k, v) = match item.split_once('=') {
                Some((k, v)) => (k.to_string(), Some(v.to_string())),
                None => (item.to_string(), None),
            };
            // A later duplicate replaces the earlier value but keeps its position.
            match out.iter_mut().find(|(key, _)| *key == k) {
                Some(slot) => slot.1 = v,
                None => out.push((k, v)),
            }
        }
        Options(out)
    }

    /// Adds the options of a further `-o`.
    pub fn extend(&mut self, more: Options) {
        for (k, v) in more.0 {
            match self.0.iter_mut().find(|(key, _)| *key == k) {
                Some(slot) => slot.1 = v,
                None => self.0.push((k, v)),
            }
        }
    }

    pub fn has(&self, key: &str) -> bool {
        self.0.iter().any(|(k, _)| k == key)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.as_deref())
    }

    pub fn iter(&self) -> impl Iterator<Item = &(String, Option<String>)> {
        self.0.iter()
    }
}

impl fmt::Display for Options {
    /// As an `-o` string: `rw,tls,tlsport=20049`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match v {
                Some(v) => write!(f, "{k}={v}")?,
                None => f.write_str(k)?,
            }
        }
        Ok(())
    }
}

/// An invalid option, with the incumbent's wording where it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionError(pub String);

impl fmt::Display for OptionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for OptionError {}

fn err<T>(msg: impl Into<String>) -> Result<T, OptionError> {
    Err(OptionError(msg.into()))
}

/// The options `mount.efs` acts on, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EfsOptions {
    pub tls: bool,
    pub tlsport: Option<u16>,
    pub cafile: Option<String>,
    pub region: Option<String>,
    pub az: Option<String>,
    pub mounttargetip: Option<String>,
    /// `crossaccount`: the mount target is named by the client's AZ ID
    /// (`<az-id>.<fs_id>.efs.<region>.<suffix>`), for a file system of another account.
    pub crossaccount: bool,
    pub netns: Option<String>,
    /// `stunnel` was given: accepted for compatibility, with a notice.
    pub stunnel: bool,
    /// `iam`: the client certificate carries a SigV4 signature of AWS credentials.
    pub iam: bool,
    /// `accesspoint=fsap-...`, checked against `^fsap-[0-9a-f]{17}$`.
    pub accesspoint: Option<String>,
    /// `awsprofile=NAME` (only with `iam`).
    pub awsprofile: Option<String>,
    /// `awscredsuri=/...` (only with `iam`; starts with `/`).
    pub awscredsuri: Option<String>,
    /// `rolearn=ARN` (with `jwtpath`, only with `iam`).
    pub rolearn: Option<String>,
    /// `jwtpath=PATH` (with `rolearn`, only with `iam`).
    pub jwtpath: Option<String>,
}

impl EfsOptions {
    /// The mount presents a client certificate: `iam` or `accesspoint`.
    pub fn client_cert(&self) -> bool {
        self.iam || self.accesspoint.is_some()
    }
}

/// Checks the options in the incumbent's order and extracts ours.
pub fn validate(o: &Options) -> Result<EfsOptions, OptionError> {
    let unsupported: Vec<String> = UNSUPPORTED
        .iter()
        .filter(|k| o.has(k))
        .map(|k| format!("\"{k}\""))
        .collect();
    if !unsupported.is_empty() {
        return err(format!(
            "Unsupported mount options detected: {}",
            unsupported.join(", ")
        ));
    }

    let tls = o.has("tls");
    let mut tlsport = None;
    if tls {
        if o.has("port") {
            return err("The \"port\" and \"tls\" options are mutually exclusive");
        }
        if o.has("tlsport") {
            let v = o.get("tlsport").unwrap_or("");
            match v.parse::<u16>() {
                Ok(p) if p > 0 => tlsport = Some(p),
                _ => return err(format!("tlsport option [{v}] is not an integer")),
            }
        }
        if o.has("ocsp") && o.has("noocsp") {
            return err("The \"ocsp\" and \"noocsp\" options are mutually exclusive");
        }
    }
    if tls && o.has("notls") {
        return err("The \"tls\" and \"notls\" options are mutually exclusive");
    }
    if o.has("accesspoint") {
        if !tls {
            return err("The \"tls\" option is required when mounting via \"accesspoint\"");
        }
        let ap = o.get("accesspoint").unwrap_or("");
        if !is_access_point_id(ap) {
            return err(format!("Access Point ID {ap} is malformed"));
        }
    }
    if o.has("iam") && !tls {
        return err("The \"tls\" option is required when mounting via \"iam\"");
    }
    if o.has("awsprofile") && !o.has("iam") {
        return err("The \"iam\" option is required when mounting with named profile option, \"awsprofile\"");
    }
    if o.has("awscredsuri") && !o.has("iam") {
        return err("The \"iam\" option is required when mounting with \"awscredsuri\"");
    }
    if o.has("awscredsuri") && o.has("awsprofile") {
        return err("The \"awscredsuri\" and \"awsprofile\" options are mutually exclusive");
    }
    if o.has("awscredsuri") {
        let uri = o.get("awscredsuri").unwrap_or("");
        if !uri.starts_with('/') {
            return err(format!("awscredsuri {uri} is malformed"));
        }
    }
    let region = o.get("region").map(str::to_string);
    if let Some(r) = &region {
        if !is_region_name(r) {
            return err(format!("Invalid \"region\" mount option specified: '{r}'"));
        }
    }
    if o.has("mounttargetip") && o.has("crossaccount") {
        return err("mounttargetip option is incompatible with crossaccount option.");
    }

    // Our own rules, after the incumbent's.
    if let Some(not_yet) = NOT_YET.iter().find(|k| o.has(k)) {
        return err(format!(
            "The \"{not_yet}\" option is not supported yet by this efs-utils; mount without it, or use amazon-efs-utils for this file system"
        ));
    }
    if o.has("verify") {
        match o.get("verify").map(str::parse::<u32>) {
            Some(Ok(0)) => {
                return err("verify=0 would turn off certificate verification, which this efs-utils never does; remove the verify option")
            }
            Some(Ok(_)) => {}
            _ => return err(format!("verify option [{}] is not an integer", o.get("verify").unwrap_or(""))),
        }
    }
    for key in [
        "cafile",
        "region",
        "az",
        "mounttargetip",
        "netns",
        "tlsport",
        "awsprofile",
        "rolearn",
        "jwtpath",
    ] {
        if o.has(key) && o.get(key).is_none_or(str::is_empty) {
            return err(format!(
                "The \"{key}\" option needs a value, for example {key}=..."
            ));
        }
    }
    let mounttargetip = o.get("mounttargetip").map(str::to_string);
    if let Some(ip) = &mounttargetip {
        if ip.parse::<std::net::IpAddr>().is_err() {
            return err(format!("mounttargetip {ip} is not an IP address"));
        }
    }
    let iam = o.has("iam");
    if iam && o.has("rolearn") != o.has("jwtpath") {
        return err("The \"rolearn\" and \"jwtpath\" options go together: give both (web identity), or neither");
    }
    let value = |key: &str| o.get(key).map(str::to_string);
    Ok(EfsOptions {
        tls,
        tlsport,
        cafile: o.get("cafile").map(str::to_string),
        region,
        az: o.get("az").map(str::to_string),
        mounttargetip,
        crossaccount: o.has("crossaccount"),
        netns: o.get("netns").map(str::to_string),
        stunnel: o.has("stunnel"),
        iam,
        accesspoint: value("accesspoint"),
        awsprofile: value("awsprofile").filter(|_| iam),
        awscredsuri: value("awscredsuri").filter(|_| iam),
        rolearn: value("rolearn").filter(|_| iam),
        jwtpath: value("jwtpath").filter(|_| iam),
    })
}

/// `^fsap-[0-9a-f]{17}$`.
fn is_access_point_id(s: &str) -> bool {
    s.strip_prefix("fsap-").is_some_and(|h| {
        h.len() == 17
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// `[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?`
pub fn is_region_name(s: &str) -> bool {
    let b = s.as_bytes();
    let ok = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty()
        && b.len() <= 32
        && ok(&b[0])
        && ok(&b[b.len() - 1])
        && b.iter().all(|c| ok(c) || *c == b'-')
}

/// The option string for `mount.nfs4`: the user's options first, in their order, minus
/// ours; then each default the user did not set; `port=` last for TLS mounts.
pub fn nfs_options(o: &Options, tls_port: Option<u16>) -> String {
    let mut parts: Vec<String> = o
        .iter()
        .filter(|(k, _)| !EFS_OPTIONS.contains(&k.as_str()))
        .filter(|(k, _)| !(tls_port.is_some() && k == "port"))
        .map(|(k, v)| match v {
            Some(v) => format!("{k}={v}"),
            None => k.clone(),
        })
        .collect();
    let mut default = |present: bool, text: &str| {
        if !present {
            parts.push(text.to_string());
        }
    };
    default(o.has("nfsvers") || o.has("vers"), "nfsvers=4.1");
    default(o.has("rsize"), "rsize=1048576");
    default(o.has("wsize"), "wsize=1048576");
    default(o.has("hard") || o.has("soft"), "hard");
    default(o.has("timeo"), "timeo=600");
    default(o.has("retrans"), "retrans=2");
    default(o.has("noresvport"), "noresvport");
    if let Some(p) = tls_port {
        parts.push(format!("port={p}"));
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(opts: &str) -> Result<EfsOptions, String> {
        validate(&Options::parse(opts)).map_err(|e| e.0)
    }

    #[test]
    fn values_with_equals_signs_and_odd_commas_do_not_crash() {
        let o = Options::parse("rw,,tls,cafile=/a=b/c.pem,=x,y=,");
        assert_eq!(o.get("cafile"), Some("/a=b/c.pem"));
        assert!(o.has("rw") && o.has("tls"));
        assert_eq!(o.get("y"), Some(""));
        assert!(validate(&o).is_ok());
    }

    #[test]
    fn default_nfs_options_follow_the_user_options() {
        let o = Options::parse("rw,tls,_netdev");
        assert_eq!(
            nfs_options(&o, Some(20123)),
            "rw,_netdev,nfsvers=4.1,rsize=1048576,wsize=1048576,hard,timeo=600,retrans=2,noresvport,port=20123"
        );
    }

    #[test]
    fn user_nfs_options_win_and_keep_their_order() {
        let o = Options::parse(
            "soft,vers=4.0,rsize=65536,tls,noac,timeo=30,noresvport,retrans=5,wsize=4096",
        );
        assert_eq!(
            nfs_options(&o, Some(20049)),
            "soft,vers=4.0,rsize=65536,noac,timeo=30,noresvport,retrans=5,wsize=4096,port=20049"
        );
        // Without TLS there is no port, and a user port is the user's.
        let o = Options::parse("port=2050");
        assert_eq!(
            nfs_options(&o, None),
            "port=2050,nfsvers=4.1,rsize=1048576,wsize=1048576,hard,timeo=600,retrans=2,noresvport"
        );
    }

    #[test]
    fn our_options_never_reach_mount_nfs() {
        let all = EFS_OPTIONS
            .iter()
            .map(|k| format!("{k}=1"))
            .collect::<Vec<_>>()
            .join(",");
        let text = nfs_options(&Options::parse(&all), Some(1));
        for k in EFS_OPTIONS {
            assert!(
                !text.split(',').any(|p| p.starts_with(&format!("{k}="))),
                "{k} leaked: {text}"
            );
        }
    }

    #[test]
    fn incumbent_error_texts() {
        let cases = [
            ("tls,capath=/x", "Unsupported mount options detected: \"capath\""),
            ("azid=use1-az1", "Unsupported mount options detected: \"azid\""),
            ("tls,port=2049", "The \"port\" and \"tls\" options are mutually exclusive"),
            ("tls,tlsport=abc", "tlsport option [abc] is not an integer"),
            ("tls,ocsp,noocsp", "The \"ocsp\" and \"noocsp\" options are mutually exclusive"),
            ("tls,notls", "The \"tls\" and \"notls\" options are mutually exclusive"),
            ("accesspoint=fsap-0123456789abcdef0", "The \"tls\" option is required when mounting via \"accesspoint\""),
            ("tls,accesspoint=fsap-123", "Access Point ID fsap-123 is malformed"),
            ("iam", "The \"tls\" option is required when mounting via \"iam\""),
            ("tls,awsprofile=p", "The \"iam\" option is required when mounting with named profile option, \"awsprofile\""),
            ("tls,awscredsuri=/x", "The \"iam\" option is required when mounting with \"awscredsuri\""),
            ("tls,iam,awscredsuri=/x,awsprofile=p", "The \"awscredsuri\" and \"awsprofile\" options are mutually exclusive"),
            ("tls,iam,awscredsuri=x", "awscredsuri x is malformed"),
            ("region=US_EAST", "Invalid \"region\" mount option specified: 'US_EAST'"),
            ("mounttargetip=10.0.0.1,crossaccount", "mounttargetip option is incompatible with crossaccount option."),
        ];
        for (opts, want) in cases {
            assert_eq!(check(opts).unwrap_err(), want, "for -o {opts}");
        }
    }

    #[test]
    fn features_not_built_yet_are_refused_after_validation() {
        for opts in ["tls,ocsp", "ocsp"] {
            let e = check(opts).unwrap_err();
            assert!(e.contains("is not supported yet"), "{opts}: {e}");
        }
    }

    #[test]
    fn iam_and_access_point_options_are_extracted() {
        let e = check("tls,iam,accesspoint=fsap-0123456789abcdef0,awsprofile=dev").unwrap();
        assert!(e.iam && e.client_cert());
        assert_eq!(e.accesspoint.as_deref(), Some("fsap-0123456789abcdef0"));
        assert_eq!(e.awsprofile.as_deref(), Some("dev"));
        assert_eq!(e.awscredsuri, None);

        let e = check("tls,iam,awscredsuri=/v2/credentials/abc").unwrap();
        assert_eq!(e.awscredsuri.as_deref(), Some("/v2/credentials/abc"));

        let e =
            check("tls,iam,rolearn=arn:aws:iam::123456789012:role/r,jwtpath=/var/run/jwt").unwrap();
        assert_eq!(
            e.rolearn.as_deref(),
            Some("arn:aws:iam::123456789012:role/r")
        );
        assert_eq!(e.jwtpath.as_deref(), Some("/var/run/jwt"));

        let e = check("tls,accesspoint=fsap-0123456789abcdef0").unwrap();
        assert!(!e.iam && e.client_cert());
        assert!(!check("tls").unwrap().client_cert());
    }

    #[test]
    fn web_identity_options_come_together_and_everything_needs_a_value() {
        for opts in [
            "tls,iam,rolearn=arn:aws:iam::1:role/r",
            "tls,iam,jwtpath=/t",
        ] {
            let e = check(opts).unwrap_err();
            assert!(e.contains("go together"), "{opts}: {e}");
        }
        for opts in [
            "tls,iam,awsprofile",
            "tls,iam,rolearn,jwtpath=/t",
            "tls,iam,rolearn=arn:aws:iam::1:role/r,jwtpath=",
        ] {
            let e = check(opts).unwrap_err();
            assert!(e.contains("needs a value"), "{opts}: {e}");
        }
        assert_eq!(
            check("tls,iam,accesspoint").unwrap_err(),
            "Access Point ID  is malformed"
        );
    }

    #[test]
    fn verification_cannot_be_turned_off() {
        assert!(check("tls,verify=0").unwrap_err().contains("never does"));
        assert!(check("tls,verify=2").is_ok());
        assert!(check("tls,verify=x")
            .unwrap_err()
            .contains("not an integer"));
    }

    #[test]
    fn region_names() {
        assert!(is_region_name("us-east-1"));
        assert!(is_region_name("cn-northwest-1"));
        assert!(!is_region_name("-us"));
        assert!(!is_region_name("us-"));
        assert!(!is_region_name("Us-east-1"));
        assert!(!is_region_name(&"a".repeat(33)));
    }

    #[test]
    fn extracts_our_options() {
        let e = check("rw,tls,tlsport=20500,cafile=/ca.pem,region=eu-west-1,az=eu-west-1a,mounttargetip=10.1.2.3,stunnel").unwrap();
        assert!(e.tls && e.stunnel);
        assert_eq!(e.tlsport, Some(20500));
        assert_eq!(e.cafile.as_deref(), Some("/ca.pem"));
        assert_eq!(e.mounttargetip.as_deref(), Some("10.1.2.3"));
        assert!(check("tls,mounttargetip=not-an-ip")
            .unwrap_err()
            .contains("not an IP address"));
        assert!(check("tls,cafile").unwrap_err().contains("needs a value"));
    }
}
