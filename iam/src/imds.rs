//! The EC2 instance metadata service (IMDS), spoken in one place for both programs that
//! ask it: the instance role's credentials ([`crate::credentials::from_instance_metadata`])
//! and `mount.efs`'s region lookup (`mount-helper/src/imds.rs`). What lives here is the
//! IMDSv2 protocol: the session token (a PUT of [`TOKEN_PATH`] with a TTL of 21600 s,
//! asked for again 0.5 s apart), what counts as a token, and GETs that carry it (none:
//! IMDSv1). What each caller does when no token can be had, its timeouts and its error
//! texts stay with the caller.
//!
//! Requests go through the credential sources' HTTP client (ureq, a total deadline per
//! request, answers bounded to [`crate::credentials::MAX_ANSWER`], no proxy from the
//! environment), so the base URL can point at a fake on 127.0.0.1 in tests.

use std::time::Duration;

pub use crate::credentials::http::Answer;
use crate::credentials::http::Client;
use crate::credentials::HttpProblem;

/// Where the session token is asked for (PUT).
pub const TOKEN_PATH: &str = "/latest/api/token";
/// How long a token lives (the incumbent's 6 hours).
const TOKEN_TTL_HEADER: (&str, &str) = ("X-aws-ec2-metadata-token-ttl-seconds", "21600");
/// The header that carries the token on every other request.
const TOKEN_HEADER: &str = "X-aws-ec2-metadata-token";
/// How many times the incumbent asks for a token (IMDS can be slow early at boot).
pub const TOKEN_TRIES: u32 = 3;
/// The pause between two token requests.
pub const TOKEN_RETRY_PAUSE: Duration = Duration::from_millis(500);

/// Which failed token requests are asked again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Only those IMDS did not answer (the credential source: a refusal is final).
    Unanswered,
    /// Every one (the region lookup, as the incumbent does).
    Always,
}

/// Why no session token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// IMDS did not answer (the last try's problem).
    Unanswered(HttpProblem),
    /// IMDS answered with this HTTP error status.
    Refused(u16),
    /// IMDS answered 2xx with something that is not a token.
    NotAToken,
}

/// One IMDS at a base URL (`http://169.254.169.254`, or a fake), with a deadline per
/// request.
#[derive(Clone)]
pub struct Imds {
    client: Client,
    base: String,
}

impl Imds {
    /// `timeout`: the deadline of each request, start to end. The error is the TLS
    /// configuration's (the client is the one HTTPS sources use too).
    pub fn new(base: &str, timeout: Duration) -> Result<Imds, String> {
        Ok(Imds {
            client: Client::new(timeout, None)?,
            base: base.trim_end_matches('/').to_string(),
        })
    }

    /// The URL of `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A session token: up to `tries` PUTs of [`TOKEN_PATH`], [`TOKEN_RETRY_PAUSE`]
    /// apart, again after each failure that `retry` names; the last failure otherwise.
    pub fn token(&self, tries: u32, retry: Retry) -> Result<String, TokenError> {
        let url = self.url(TOKEN_PATH);
        let mut tried = 0;
        loop {
            tried += 1;
            let got = match self.client.call("PUT", &url, &[TOKEN_TTL_HEADER], None) {
                Err(problem) => Err(TokenError::Unanswered(problem)),
                Ok(answer) if !answer.ok() => Err(TokenError::Refused(answer.status)),
                Ok(answer) => token_of_body(&answer.body).ok_or(TokenError::NotAToken),
            };
            let again = match &got {
                Ok(_) => false,
                Err(TokenError::Unanswered(_)) => true,
                Err(_) => retry == Retry::Always,
            };
            if !again || tried >= tries {
                return got;
            }
            std::thread::sleep(TOKEN_RETRY_PAUSE);
        }
    }

    /// GET `path`, with the token if there is one (IMDSv1 without); the answer whatever
    /// its status.
    pub fn get(&self, path: &str, token: Option<&str>) -> Result<Answer, HttpProblem> {
        let headers: Vec<(&str, &str)> = token.map(|t| (TOKEN_HEADER, t)).into_iter().collect();
        self.client.call("GET", &self.url(path), &headers, None)
    }
}

/// The token in the body of a 2xx answer to the token request, trimmed. Public so that
/// the fuzz target `imds_answer` reaches it without a socket. The token is sent back as
/// a header value, so it must be one: visible ASCII only (a CR or LF in it would write
/// headers of its own into the next request).
pub fn token_of_body(body: &str) -> Option<String> {
    let token = body.trim();
    (!token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic())).then(|| token.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::time::Instant;

    /// An IMDS on 127.0.0.1 that reads the request, then answers one byte every
    /// `pause`: a whole answer would take `answer.len() * pause`.
    fn trickling_imds(answer: &'static [u8], pause: Duration) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(&stream);
                    let mut line = String::new();
                    while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                        line.clear();
                    }
                    for b in answer {
                        std::thread::sleep(pause);
                        if (&stream).write_all(&[*b]).is_err() {
                            return; // the client gave up
                        }
                    }
                });
            }
        });
        base
    }

    #[test]
    fn a_trickling_answer_fails_at_the_total_deadline_not_one_per_read() {
        let answer: &[u8] =
            b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\nConnection: close\r\n\r\nuse1-az4";
        let pause = Duration::from_millis(200);
        let base = trickling_imds(answer, pause);
        let deadline = Duration::from_secs(1);
        let imds = Imds::new(&base, deadline).unwrap();
        let t0 = Instant::now();
        let got = imds.get("/latest/meta-data/placement/availability-zone-id", None);
        let took = t0.elapsed();
        // The 66 bytes take 13 s, each well within the deadline: a deadline per read
        // would wait for all of them and return the answer.
        assert_eq!(got.map(|a| a.status), Err(HttpProblem::TimedOut(deadline)));
        assert!(
            took >= deadline - Duration::from_millis(50)
                && took < deadline + Duration::from_millis(500),
            "the error came after {took:?}, the deadline is {deadline:?}"
        );
    }

    #[test]
    fn token_bodies() {
        assert_eq!(
            token_of_body("AQAEAGk2ZbG8ZJ2Q==\n").as_deref(),
            Some("AQAEAGk2ZbG8ZJ2Q==")
        );
        // Found by fuzzing: a token is sent back as a header, so it must be one.
        for bad in ["", "abc\r\nX-Injected: 1", "t\u{e9}", "a b"] {
            assert_eq!(token_of_body(bad), None, "{bad:?}");
        }
    }
}
