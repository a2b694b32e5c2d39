//! A fake of the two AWS APIs the mount-target-IP fallback asks: EFS
//! `DescribeMountTargets` and EC2 `DescribeAvailabilityZones` (a fake: the real ones are
//! AWS's and unreachable here). Like them, it answers only a request whose SigV4
//! signature it recomputes from the secret it knows: its own canonicalisation of what
//! arrived (query decoded, re-encoded and sorted; the signed headers as received), its
//! own key derivation with ring, separate from the client's code. Plain HTTP on
//! 127.0.0.1.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ring::{digest, hmac};

/// What the fake knows and serves.
#[derive(Debug, Clone)]
pub struct ApiFixture {
    pub access_key_id: String,
    pub secret: String,
    pub session_token: Option<String>,
    pub region: String,
    pub fs_id: String,
    /// The `DescribeMountTargets` answer for `fs_id` (JSON).
    pub mount_targets: String,
    /// Zone name to zone ID, for `DescribeAvailabilityZones`.
    pub zones: Vec<(String, String)>,
}

/// One request the fake saw, and what it made of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiCall {
    /// `DescribeMountTargets` or `DescribeAvailabilityZones` (or the path).
    pub operation: String,
    /// `Ok` when the signature was right, else why not.
    pub verdict: Result<(), String>,
}

pub struct FakeAwsApi {
    /// `http://127.0.0.1:PORT/`
    pub base: String,
    calls: Arc<Mutex<Vec<ApiCall>>>,
}

impl FakeAwsApi {
    /// On a free port of 127.0.0.1.
    pub fn start(fixture: ApiFixture) -> FakeAwsApi {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fake AWS API");
        FakeAwsApi::serve(listener, fixture, false)
    }

    /// On `listener`; with `print`, each call is also a line on stdout
    /// (`api OPERATION ok` or `api OPERATION denied: WHY`), for the e2e guest's log.
    pub fn serve(listener: TcpListener, fixture: ApiFixture, print: bool) -> FakeAwsApi {
        let base = format!("http://{}/", listener.local_addr().expect("its address"));
        let calls = Arc::new(Mutex::new(Vec::new()));
        let log = calls.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let Ok(clone) = stream.try_clone() else {
                    continue;
                };
                let mut r = BufReader::new(clone);
                let mut first = String::new();
                let _ = r.read_line(&mut first);
                let mut headers = BTreeMap::new();
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                    if let Some((k, v)) = h.trim_end().split_once(':') {
                        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                    }
                }
                let mut parts = first.split_whitespace();
                let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                let (status, body, call) = answer(&fixture, method, target, &headers);
                if print {
                    match &call.verdict {
                        Ok(()) => println!("api {} ok", call.operation),
                        Err(why) => println!("api {} denied: {why}", call.operation),
                    }
                }
                if let Ok(mut l) = log.lock() {
                    l.push(call);
                }
                let mut s = stream;
                let _ = write!(
                    s,
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        FakeAwsApi { base, calls }
    }

    pub fn calls(&self) -> Vec<ApiCall> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

fn answer(
    fx: &ApiFixture,
    method: &str,
    target: &str,
    headers: &BTreeMap<String, String>,
) -> (u16, String, ApiCall) {
    let (path, raw_query) = target.split_once('?').unwrap_or((target, ""));
    let params = decode_query(raw_query);
    let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let (operation, service) = if path.ends_with("/2015-02-01/mount-targets") {
        ("DescribeMountTargets", "elasticfilesystem")
    } else if param("Action") == Some("DescribeAvailabilityZones") {
        ("DescribeAvailabilityZones", "ec2")
    } else {
        return (
            404,
            "{}".into(),
            ApiCall {
                operation: path.to_string(),
                verdict: Err("unknown operation".into()),
            },
        );
    };
    let verdict = verify(fx, method, path, &params, headers, service);
    let call = ApiCall {
        operation: operation.to_string(),
        verdict: verdict.clone(),
    };
    if let Err(why) = verdict {
        return if service == "ec2" {
            (
                401,
                format!("<Response><Errors><Error><Code>AuthFailure</Code><Message>{why}</Message></Error></Errors></Response>"),
                call,
            )
        } else {
            (
                403,
                format!(r#"{{"__type":"InvalidSignatureException","message":"{why}"}}"#),
                call,
            )
        };
    }
    if service == "elasticfilesystem" {
        if param("FileSystemId") == Some(fx.fs_id.as_str()) {
            (200, fx.mount_targets.clone(), call)
        } else {
            let id = param("FileSystemId").unwrap_or("");
            (
                404,
                format!(
                    r#"{{"ErrorCode":"FileSystemNotFound","Message":"File system '{id}' does not exist."}}"#
                ),
                call,
            )
        }
    } else {
        let name = param("ZoneName.1").unwrap_or("");
        match fx.zones.iter().find(|(n, _)| n == name) {
            Some((n, id)) => (
                200,
                format!(
                    r#"<?xml version="1.0" encoding="UTF-8"?>
<DescribeAvailabilityZonesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"><requestId>r</requestId><availabilityZoneInfo><item><zoneName>{n}</zoneName><zoneState>available</zoneState><regionName>{}</regionName><zoneId>{id}</zoneId></item></availabilityZoneInfo></DescribeAvailabilityZonesResponse>"#,
                    fx.region
                ),
                call,
            ),
            None => (
                400,
                format!("<Response><Errors><Error><Code>InvalidParameterValue</Code><Message>Invalid availability zone: [{name}]</Message></Error></Errors></Response>"),
                call,
            ),
        }
    }
}

/// What AWS checks of a header-signed request, recomputed here.
fn verify(
    fx: &ApiFixture,
    method: &str,
    path: &str,
    params: &[(String, String)],
    headers: &BTreeMap<String, String>,
    service: &str,
) -> Result<(), String> {
    let auth = headers
        .get("authorization")
        .ok_or("no Authorization header")?;
    let rest = auth
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or("not AWS4-HMAC-SHA256")?;
    let field = |name: &str| {
        rest.split(',')
            .map(str::trim)
            .find_map(|f| f.strip_prefix(name))
            .ok_or(format!("no {name} in Authorization"))
    };
    let credential = field("Credential=")?;
    let signed = field("SignedHeaders=")?;
    let signature = field("Signature=")?;
    let scope: Vec<&str> = credential.split('/').collect();
    let [akid, date, region, svc, "aws4_request"] = scope[..] else {
        return Err(format!("malformed credential scope {credential}"));
    };
    if akid != fx.access_key_id {
        return Err(format!("unknown access key {akid}"));
    }
    if region != fx.region || svc != service {
        return Err(format!(
            "scope {region}/{svc} is not {}/{service}",
            fx.region
        ));
    }
    let amz_date = headers.get("x-amz-date").ok_or("no X-Amz-Date")?;
    if !amz_date.starts_with(date) {
        return Err("X-Amz-Date is not the scope's date".into());
    }
    let signed_list: Vec<&str> = signed.split(';').collect();
    for must in ["host", "x-amz-date"] {
        if !signed_list.contains(&must) {
            return Err(format!("{must} is not signed"));
        }
    }
    if let Some(token) = &fx.session_token {
        if headers.get("x-amz-security-token") != Some(token)
            || !signed_list.contains(&"x-amz-security-token")
        {
            return Err("the security token is missing or wrong".into());
        }
    }
    let mut canonical_headers = String::new();
    for h in &signed_list {
        let v = headers
            .get(*h)
            .ok_or(format!("signed header {h} is absent"))?;
        canonical_headers.push_str(&format!("{h}:{}\n", v.trim()));
    }
    let mut encoded: Vec<(String, String)> =
        params.iter().map(|(k, v)| (encode(k), encode(v))).collect();
    encoded.sort();
    let query: Vec<String> = encoded.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let canonical = format!(
        "{method}\n{path}\n{}\n{canonical_headers}\n{signed}\n{}",
        query.join("&"),
        hex(digest::digest(&digest::SHA256, b"").as_ref())
    );
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{date}/{region}/{svc}/aws4_request\n{}",
        hex(digest::digest(&digest::SHA256, canonical.as_bytes()).as_ref())
    );
    let mac = |key: &[u8], data: &str| {
        hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data.as_bytes())
    };
    let k = mac(format!("AWS4{}", fx.secret).as_bytes(), date);
    let k = mac(k.as_ref(), region);
    let k = mac(k.as_ref(), svc);
    let k = mac(k.as_ref(), "aws4_request");
    let want = hex(mac(k.as_ref(), &to_sign).as_ref());
    if want != signature {
        return Err(
            "The request signature we calculated does not match the signature you provided.".into(),
        );
    }
    Ok(())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn decode_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(hex, 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
