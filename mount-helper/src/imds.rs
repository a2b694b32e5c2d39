//! The EC2 instance metadata service, asked only for the region and only when nothing
//! else names it: IMDSv2 (a session token first, 0.5 s timeouts, three tries), then
//! IMDSv1 if no token can be had. The base URL comes from the config
//! (`instance_metadata_url`), so tests talk to a local fake and never to 169.254.169.254.
//!
//! A dozen lines of HTTP/1.1 over a `TcpStream` are enough for two fixed requests to a
//! link-local service; an HTTP client crate would cost more than it saves.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

const TOKEN_TIMEOUT: Duration = Duration::from_millis(500);
const GET_TIMEOUT: Duration = Duration::from_secs(1);

/// The instance's region from its identity document.
pub fn region(base_url: &str, use_token: bool) -> Result<String, String> {
    let host = base_url
        .strip_prefix("http://")
        .ok_or_else(|| format!("instance_metadata_url {base_url} must start with http://"))?
        .trim_end_matches('/');
    let token = if use_token {
        (0..3).find_map(|i| {
            if i > 0 {
                std::thread::sleep(Duration::from_millis(500));
            }
            request(
                host,
                "PUT",
                "/latest/api/token",
                &[("X-aws-ec2-metadata-token-ttl-seconds", "21600")],
                TOKEN_TIMEOUT,
            )
            .ok()
        })
    } else {
        None
    };
    let headers: Vec<(&str, &str)> = token
        .as_deref()
        .map(|t| vec![("X-aws-ec2-metadata-token", t)])
        .unwrap_or_default();
    let doc = request(
        host,
        "GET",
        "/latest/dynamic/instance-identity/document",
        &headers,
        GET_TIMEOUT,
    )?;
    let json: serde_json::Value =
        serde_json::from_str(&doc).map_err(|e| format!("identity document is not JSON: {e}"))?;
    json.get("region")
        .and_then(|r| r.as_str())
        .map(str::to_string)
        .ok_or_else(|| "identity document has no region".to_string())
}

/// One request; the body of a 200 answer.
fn request(
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Result<String, String> {
    let addr = host
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .or_else(|| {
            format!("{host}:80")
                .to_socket_addrs()
                .ok()
                .and_then(|mut a| a.next())
        })
        .ok_or_else(|| format!("cannot resolve {host}"))?;
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("{addr}: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: 0\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut resp = Vec::new();
    s.take(1 << 20)
        .read_to_end(&mut resp)
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&resp);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("malformed HTTP answer")?;
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        return Err(format!("{method} {path}: HTTP {status}"));
    }
    Ok(body.trim().to_string())
}
