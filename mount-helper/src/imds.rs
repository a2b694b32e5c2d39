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

use crate::options::is_region_name;

const TOKEN_TIMEOUT: Duration = Duration::from_millis(500);
const GET_TIMEOUT: Duration = Duration::from_secs(1);

const TOKEN_PATH: &str = "/latest/api/token";
const DOCUMENT_PATH: &str = "/latest/dynamic/instance-identity/document";

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
                TOKEN_PATH,
                &[("X-aws-ec2-metadata-token-ttl-seconds", "21600")],
                TOKEN_TIMEOUT,
            )
            .and_then(|raw| token_of_answer(&raw))
            .ok()
        })
    } else {
        None
    };
    let headers: Vec<(&str, &str)> = token
        .as_deref()
        .map(|t| vec![("X-aws-ec2-metadata-token", t)])
        .unwrap_or_default();
    let raw = request(host, "GET", DOCUMENT_PATH, &headers, GET_TIMEOUT)?;
    region_of_answer(&raw)
}

/// The session token in the service's raw answer to the token request (status line,
/// headers, body). Public, like [`region_of_answer`], so that the fuzz target
/// `imds_answer` reaches what the service says without a socket.
/// The token is sent back as a header value, so it must be one: visible ASCII only (a CR
/// or LF in it would write headers of its own into the next request).
pub fn token_of_answer(raw: &[u8]) -> Result<String, String> {
    let token = body_of("PUT", TOKEN_PATH, raw)?;
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("PUT {TOKEN_PATH}: the answer is not a token"));
    }
    Ok(token)
}

/// The region in the service's raw answer to the identity document request.
pub fn region_of_answer(raw: &[u8]) -> Result<String, String> {
    let doc = body_of("GET", DOCUMENT_PATH, raw)?;
    let json: serde_json::Value =
        serde_json::from_str(&doc).map_err(|e| format!("identity document is not JSON: {e}"))?;
    let region = json
        .get("region")
        .and_then(|r| r.as_str())
        .ok_or("identity document has no region")?;
    // It goes into DNS names and the certificate name: a region name, or nothing.
    if !is_region_name(region) {
        return Err(format!(
            "identity document names an invalid region {:?}",
            region.chars().take(64).collect::<String>()
        ));
    }
    Ok(region.to_string())
}

/// The body of a 200 answer to `method path`.
fn body_of(method: &str, path: &str, raw: &[u8]) -> Result<String, String> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("malformed HTTP answer")?;
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        return Err(format!("{method} {path}: HTTP {status}"));
    }
    Ok(body.trim().to_string())
}

/// One request; the raw answer.
fn request(
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Result<Vec<u8>, String> {
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
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: &str, body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    #[test]
    fn token_answers() {
        assert_eq!(
            token_of_answer(&answer("200 OK", "AQAEAGk2ZbG8ZJ2Q==\n")).unwrap(),
            "AQAEAGk2ZbG8ZJ2Q=="
        );
        assert!(token_of_answer(&answer("403 Forbidden", "")).is_err());
        assert!(token_of_answer(b"garbage").is_err());
        // Found by fuzzing: a token is sent back as a header, so it must be one.
        for bad in ["", "abc\r\nX-Injected: 1", "t\u{e9}", "a b"] {
            assert!(token_of_answer(&answer("200 OK", bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn identity_document_answers() {
        let doc = r#"{ "availabilityZone" : "eu-west-1b", "region" : "eu-west-1" }"#;
        assert_eq!(
            region_of_answer(&answer("200 OK", doc)).unwrap(),
            "eu-west-1"
        );
        assert!(region_of_answer(&answer("401 Unauthorized", ""))
            .unwrap_err()
            .contains("HTTP 401"));
        assert!(region_of_answer(&answer("200 OK", "{}"))
            .unwrap_err()
            .contains("no region"));
        // Found by fuzzing: the region goes into DNS names.
        let odd = r#"{"region": "us-east-1.evil.example/x"}"#;
        assert!(region_of_answer(&answer("200 OK", odd))
            .unwrap_err()
            .contains("invalid region"));
    }
}
