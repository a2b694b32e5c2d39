//! The HTTP requests the credential sources make: a total deadline per request, a
//! bounded answer, no redirects, no proxy from the environment, and for HTTPS (STS)
//! the webpki roots plus `AWS_CA_BUNDLE`.
//!
//! ureq 2 because it lets us hand it our own rustls `ClientConfig` (ring provider, the
//! workspace's rustls), which is what "webpki roots *plus* a bundle" needs.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Largest answer read from any credential endpoint (credential JSON is ~1.5 KiB, STS
/// XML ~3 KiB).
pub const MAX_ANSWER: usize = 64 * 1024;

/// Why a request got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpProblem {
    /// Connection refused, no route, name not resolved...
    Unreachable(String),
    /// The TLS handshake failed (an untrusted certificate...).
    Tls(String),
    TimedOut(Duration),
    /// More than [`MAX_ANSWER`] bytes.
    TooLarge,
    NotText,
}

impl std::fmt::Display for HttpProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpProblem::Unreachable(why) | HttpProblem::Tls(why) => write!(f, "{why}"),
            HttpProblem::TimedOut(d) => write!(f, "no answer within {} ms", d.as_millis()),
            HttpProblem::TooLarge => write!(f, "answer larger than {MAX_ANSWER} bytes"),
            HttpProblem::NotText => write!(f, "answer is not UTF-8 text"),
        }
    }
}

/// An answer of any status.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl Answer {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
    timeout: Duration,
}

fn tls_config(ca_bundle: Option<&[u8]>) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(pem) = ca_bundle {
        use rustls_pki_types::pem::PemObject;
        let mut added = 0;
        for cert in rustls_pki_types::CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| format!("not a PEM certificate bundle ({e})"))?;
            roots
                .add(cert)
                .map_err(|e| format!("a certificate in it is unusable ({e})"))?;
            added += 1;
        }
        if added == 0 {
            return Err("no PEM certificate in it".to_string());
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The CA bundle file's bytes, bounded.
pub fn read_ca_bundle(path: &Path) -> Result<Vec<u8>, String> {
    let f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    f.take(16 * 1024 * 1024 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() > 16 * 1024 * 1024 {
        return Err("larger than 16 MiB".to_string());
    }
    Ok(bytes)
}

impl Client {
    /// A client whose every request must be answered within `timeout`, start to end.
    /// `ca_bundle`: PEM certificates trusted for HTTPS besides the webpki roots.
    pub fn new(timeout: Duration, ca_bundle: Option<&[u8]>) -> Result<Client, String> {
        let agent = ureq::AgentBuilder::new()
            .timeout(timeout)
            .redirects(0)
            .try_proxy_from_env(false)
            .tls_config(tls_config(ca_bundle)?)
            .build();
        Ok(Client { agent, timeout })
    }

    /// One request; the answer whatever its status.
    pub fn call(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Result<Answer, HttpProblem> {
        let mut req = self.agent.request(method, url);
        for (k, v) in headers {
            req = req.set(k, v);
        }
        let result = match body {
            Some(b) => req.send_string(b),
            // a PUT without a body still says so (IMDS wants Content-Length: 0)
            None if method == "PUT" => req.send_bytes(&[]),
            None => req.call(),
        };
        let resp = match result {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(ureq::Error::Transport(t)) => return Err(self.transport_problem(&t)),
        };
        let status = resp.status();
        let mut bytes = Vec::new();
        resp.into_reader()
            .take(MAX_ANSWER as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| self.io_problem(&e))?;
        if bytes.len() > MAX_ANSWER {
            return Err(HttpProblem::TooLarge);
        }
        let body = String::from_utf8(bytes).map_err(|_| HttpProblem::NotText)?;
        Ok(Answer { status, body })
    }

    fn io_problem(&self, e: &std::io::Error) -> HttpProblem {
        match e.kind() {
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => {
                HttpProblem::TimedOut(self.timeout)
            }
            _ => HttpProblem::Unreachable(e.to_string()),
        }
    }

    fn transport_problem(&self, t: &ureq::Transport) -> HttpProblem {
        let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(t);
        while let Some(s) = source {
            if let Some(io) = s.downcast_ref::<std::io::Error>() {
                if let Some(tls) = io.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
                    return HttpProblem::Tls(tls.to_string());
                }
                if matches!(
                    io.kind(),
                    std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
                ) {
                    return HttpProblem::TimedOut(self.timeout);
                }
            }
            source = s.source();
        }
        let text = t.to_string();
        if text.contains("timed out") {
            return HttpProblem::TimedOut(self.timeout);
        }
        // ureq's text starts with the URL, which the caller names already
        let why = std::error::Error::source(t)
            .map(|s| s.to_string())
            .or_else(|| t.message().map(str::to_string))
            .unwrap_or(text);
        HttpProblem::Unreachable(why)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_without_certificates_is_refused() {
        assert!(tls_config(Some(b"not a pem")).is_err());
        assert!(tls_config(None).is_ok());
    }
}
