//! The SigV4 signature EFS checks in the client certificate (extension 1.3.6.1.4.1.4843.7.2):
//! a presigned `GET /?Action=Connect&...` for service `elasticfilesystem`, never sent as
//! an HTTP request, only recomputed by the server from the certificate.
//!
//! It differs from standard SigV4 in one place that matters: the canonical request has
//! **no blank line after the canonical headers** (`host:<fs_id>\nhost\n<payload hash>`),
//! and the host header is the bare file system id. Everything else is standard: the
//! query is sorted by key (so `X-Amz-Security-Token` sorts before
//! `X-Amz-SignedHeaders`), values are `quote_plus`-encoded (`/` → `%2F`, `+` → `%2B`,
//! `=` → `%3D`), the string to sign is `AWS4-HMAC-SHA256\n<amz date>\n<scope>\n<sha256 hex
//! of the canonical request>`, and the key is derived from `AWS4<secret>` through date,
//! region, service and `aws4_request`. Byte-exactness matters: the server recomputes it.
//!
//! [`sign_http`] is standard SigV4 for the few API calls made here (STS `AssumeRole`,
//! EFS `DescribeMountTargets`, EC2 `DescribeAvailabilityZones`): header signing of one
//! request, pinned by AWS's own test suite (`aws-sig-v4-test-suite` vectors below).
//! Not the `aws-sigv4` crate: it brings the AWS SDK's runtime crates (smithy types,
//! http, credential providers) for what is forty lines on the HMAC and SHA-256 already
//! here, and it could not sign `Connect` anyway (its canonical request is not standard).

use crate::credentials::Credentials;
use ring::{digest, hmac};
use time::OffsetDateTime;

/// The EFS service name in the scope (S3 Files would be `s3files`).
pub const EFS_SERVICE: &str = "elasticfilesystem";
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// `X-Amz-Expires` of the Connect request, seconds.
pub const EXPIRES_SECS: u32 = 86400;
/// sha256 of the empty payload.
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// A signing instant in UTC, whole seconds, in the years a certificate's UTCTime can
/// carry (2000-2049), so every format below exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SigningTime(OffsetDateTime);

impl SigningTime {
    pub fn new(t: OffsetDateTime) -> Option<Self> {
        let t = t
            .to_offset(time::UtcOffset::UTC)
            .replace_nanosecond(0)
            .ok()?;
        (2000..=2049).contains(&t.year()).then_some(SigningTime(t))
    }

    pub fn now() -> Option<Self> {
        Self::new(OffsetDateTime::now_utc())
    }

    /// From a certificate's UTCTime `YYMMDDHHMMSSZ` (years 2000-2049).
    pub fn from_utc_time(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        if b.len() != 13 || b[12] != b'Z' || !b[..12].iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = |i: usize| (b[i] - b'0') * 10 + (b[i + 1] - b'0');
        let date = time::Date::from_calendar_date(
            2000 + i32::from(n(0)),
            time::Month::try_from(n(2)).ok()?,
            n(4),
        )
        .ok()?;
        let t = time::Time::from_hms(n(6), n(8), n(10)).ok()?;
        Self::new(date.with_time(t).assume_utc())
    }

    pub fn datetime(&self) -> OffsetDateTime {
        self.0
    }

    /// `YYYYMMDD`, the scope's date.
    pub fn date(&self) -> String {
        let t = self.0;
        format!("{:04}{:02}{:02}", t.year(), u8::from(t.month()), t.day())
    }

    /// `YYYYMMDDTHHMMSSZ`, `X-Amz-Date`.
    pub fn amz_date(&self) -> String {
        let t = self.0;
        format!(
            "{}T{:02}{:02}{:02}Z",
            self.date(),
            t.hour(),
            t.minute(),
            t.second()
        )
    }

    /// `YYMMDDHHMMSSZ`, the certificate's `sigv4DateTime` UTCTime.
    pub fn utc_time(&self) -> String {
        let t = self.0;
        format!(
            "{:02}{:02}{:02}{:02}{:02}{:02}Z",
            t.year() % 100,
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        )
    }
}

/// What the Connect signature covers.
#[derive(Debug, Clone, Copy)]
pub struct ConnectRequest<'a> {
    pub credentials: &'a Credentials,
    pub region: &'a str,
    pub service: &'a str,
    pub fs_id: &'a str,
    /// SHA-1 hex of the client key's PKCS#1 RSAPublicKey (see `cert::HostKey::public_key_hash`).
    pub public_key_hash: &'a str,
    pub time: SigningTime,
}

/// Python's `urllib.parse.quote_plus`: keeps `A-Za-z0-9_.-~`, space becomes `+`,
/// every other byte `%XX` (upper-case hex).
pub fn quote_plus(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-' | b'~' => {
                out.push(char::from(b))
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn sha256_hex(data: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, data).as_ref())
}

pub(crate) fn hmac_sha256(key: &[u8], data: &[u8]) -> hmac::Tag {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data)
}

/// The standard SigV4 key: `AWS4<secret>` through date, region, service, `aws4_request`.
pub(crate) fn signing_key(
    credentials: &Credentials,
    time: SigningTime,
    region: &str,
    service: &str,
) -> hmac::Tag {
    let secret = format!("AWS4{}", credentials.secret_access_key().expose());
    let k_date = hmac_sha256(secret.as_bytes(), time.date().as_bytes());
    let k_region = hmac_sha256(k_date.as_ref(), region.as_bytes());
    let k_service = hmac_sha256(k_region.as_ref(), service.as_bytes());
    hmac_sha256(k_service.as_ref(), b"aws4_request")
}

/// RFC 3986 encoding as standard SigV4 wants it for query keys and values: keeps
/// `A-Za-z0-9-_.~`, every other byte `%XX` (upper-case hex; a space is `%20`).
pub fn uri_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-' | b'~' => {
                out.push(char::from(b))
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A query string in canonical form: each key and value [`uri_encode`]d, sorted, joined
/// with `&`. The same string is sent, so what is signed is what the service sees.
pub fn canonical_query(params: &[(&str, &str)]) -> String {
    let mut encoded: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| (uri_encode(k), uri_encode(v)))
        .collect();
    encoded.sort();
    encoded
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// An HTTP request to an AWS API (STS, EFS, EC2), as standard SigV4 signs it in the
/// `Authorization` header.
#[derive(Debug, Clone, Copy)]
pub struct HttpRequest<'a> {
    pub method: &'a str,
    /// The `Host` header: `host[:port]` of the URL.
    pub host: &'a str,
    /// The path as sent (already encoded), `/` at least.
    pub path: &'a str,
    /// The query as sent: [`canonical_query`]'s output, or empty.
    pub query: &'a str,
    pub content_type: Option<&'static str>,
    pub body: &'a str,
}

/// The headers that sign `req` for `service` in `region`: `content-type` (when given),
/// `host`, `x-amz-date`, `x-amz-security-token` (with temporary credentials) and
/// `authorization`, in that (sorted) order.
pub fn sign_http(
    req: &HttpRequest,
    credentials: &Credentials,
    region: &str,
    service: &str,
    time: SigningTime,
) -> Vec<(&'static str, String)> {
    let amz_date = time.amz_date();
    let mut headers = Vec::new();
    if let Some(ct) = req.content_type {
        headers.push(("content-type", ct.to_string()));
    }
    headers.push(("host", req.host.to_string()));
    headers.push(("x-amz-date", amz_date.clone()));
    if let Some(t) = credentials.session_token() {
        headers.push(("x-amz-security-token", t.expose().to_string()));
    }
    let canonical_headers: String = headers.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let signed = headers
        .iter()
        .map(|(k, _)| *k)
        .collect::<Vec<_>>()
        .join(";");
    let canonical = format!(
        "{}\n{}\n{}\n{canonical_headers}\n{signed}\n{}",
        req.method,
        req.path,
        req.query,
        sha256_hex(req.body.as_bytes())
    );
    let scope = format!("{}/{region}/{service}/aws4_request", time.date());
    let to_sign = format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical.as_bytes())
    );
    let key = signing_key(credentials, time, region, service);
    let signature = hex(hmac_sha256(key.as_ref(), to_sign.as_bytes()).as_ref());
    headers.push((
        "authorization",
        format!(
            "{ALGORITHM} Credential={}/{scope}, SignedHeaders={signed}, Signature={signature}",
            credentials.access_key_id
        ),
    ));
    headers
}

impl ConnectRequest<'_> {
    /// `YYYYMMDD/<region>/<service>/aws4_request`.
    pub fn scope(&self) -> String {
        format!(
            "{}/{}/{}/aws4_request",
            self.time.date(),
            self.region,
            self.service
        )
    }

    /// The query, sorted by key, joined with `&`.
    pub fn canonical_query(&self) -> String {
        let akid = self.credentials.access_key_id.as_str();
        let mut params: Vec<(&str, String)> = vec![
            ("Action", "Connect".to_string()),
            ("PublicKeyHash", quote_plus(self.public_key_hash)),
            ("X-Amz-Algorithm", ALGORITHM.to_string()),
            (
                "X-Amz-Credential",
                quote_plus(&format!("{akid}/{}", self.scope())),
            ),
            ("X-Amz-Date", quote_plus(&self.time.amz_date())),
            ("X-Amz-Expires", EXPIRES_SECS.to_string()),
            ("X-Amz-SignedHeaders", "host".to_string()),
        ];
        if let Some(token) = self.credentials.session_token() {
            params.push(("X-Amz-Security-Token", quote_plus(token.expose())));
        }
        params.sort_by(|a, b| a.0.cmp(b.0));
        params
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&")
    }

    /// `GET\n/\n<query>\nhost:<fs_id>\nhost\n<sha256("")>`: no blank line after the header.
    pub fn canonical_request(&self) -> String {
        format!(
            "GET\n/\n{}\nhost:{}\nhost\n{EMPTY_SHA256}",
            self.canonical_query(),
            self.fs_id
        )
    }

    pub fn string_to_sign(&self) -> String {
        format!(
            "{ALGORITHM}\n{}\n{}\n{}",
            self.time.amz_date(),
            self.scope(),
            sha256_hex(self.canonical_request().as_bytes())
        )
    }

    /// The signature: 64 lower-case hex characters.
    pub fn signature(&self) -> String {
        let key = signing_key(self.credentials, self.time, self.region, self.service);
        hex(hmac_sha256(key.as_ref(), self.string_to_sign().as_bytes()).as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::{AccessKeyId, SecretAccessKey, SessionToken};

    // The expected values were computed once, independently of this code, with the shell
    // and OpenSSL 3, and pasted here:
    //   printf 'GET\n/\n%s\nhost:fs-deadbeef\nhost\ne3b0...b855' "$QUERY" > creq
    //   CR=$(openssl dgst -sha256 -r creq)                       # canonical sha256
    //   printf 'AWS4-HMAC-SHA256\n20261201T203806Z\n20261201/us-east-1/elasticfilesystem/aws4_request\n%s' "$CR" > sts
    //   K1=$(printf 20261201 | openssl dgst -sha256 -mac HMAC -macopt "key:AWS4$SECRET" -r)
    //   K2=$(printf us-east-1 | openssl dgst -sha256 -mac HMAC -macopt "hexkey:$K1" -r)
    //   K3=$(printf elasticfilesystem | openssl dgst -sha256 -mac HMAC -macopt "hexkey:$K2" -r)
    //   K4=$(printf aws4_request | openssl dgst -sha256 -mac HMAC -macopt "hexkey:$K3" -r)
    //   openssl dgst -sha256 -mac HMAC -macopt "hexkey:$K4" -r < sts    # signature
    // with the query strings below typed by hand from the incumbent's rules (and the
    // `quote_plus` values checked with Python's urllib.parse.quote_plus).
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    const TOKEN: &str = "IQoJb3JpZ2luX2VjEXAMPLE+token/with=chars";
    const PKH: &str = "2fd4e1c67a2d28fced849ee1bb76e7391b93eb12";
    const QUERY: &str = "Action=Connect&PublicKeyHash=2fd4e1c67a2d28fced849ee1bb76e7391b93eb12&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20261201%2Fus-east-1%2Felasticfilesystem%2Faws4_request&X-Amz-Date=20261201T203806Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host";
    const QUERY_TOKEN: &str = "Action=Connect&PublicKeyHash=2fd4e1c67a2d28fced849ee1bb76e7391b93eb12&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20261201%2Fus-east-1%2Felasticfilesystem%2Faws4_request&X-Amz-Date=20261201T203806Z&X-Amz-Expires=86400&X-Amz-Security-Token=IQoJb3JpZ2luX2VjEXAMPLE%2Btoken%2Fwith%3Dchars&X-Amz-SignedHeaders=host";
    const CANONICAL_SHA256: &str =
        "7037b6f828fbd0316080807dd02e12ffd69f6efa85100656dacbf6ed6dcb49cb";
    const SIGNATURE: &str = "71cf2b602a4a4ac6be2985f2981241f3fe730f100ba02d9c6e3fdb69e4b87cd9";
    const CANONICAL_SHA256_TOKEN: &str =
        "e2d314024947aeb5ab1c730e030c9975820701c9a60a1e283af88a823522ef1f";
    const SIGNATURE_TOKEN: &str =
        "bf230add203274923596884b4d333a5491659f21749625ef8168c8635547cf0b";

    fn creds(token: Option<&str>) -> Credentials {
        Credentials::new(
            AccessKeyId::new("AKIAIOSFODNN7EXAMPLE").unwrap(),
            SecretAccessKey::new(SECRET).unwrap(),
            token.map(|t| SessionToken::new(t).unwrap()),
            None,
        )
    }

    fn at() -> SigningTime {
        SigningTime::from_utc_time("261201203806Z").unwrap()
    }

    fn request(c: &Credentials) -> ConnectRequest<'_> {
        ConnectRequest {
            credentials: c,
            region: "us-east-1",
            service: EFS_SERVICE,
            fs_id: "fs-deadbeef",
            public_key_hash: PKH,
            time: at(),
        }
    }

    #[test]
    fn signature_matches_one_computed_by_hand() {
        let c = creds(None);
        let r = request(&c);
        assert_eq!(r.canonical_query(), QUERY);
        assert_eq!(
            sha256_hex(r.canonical_request().as_bytes()),
            CANONICAL_SHA256
        );
        assert_eq!(r.signature(), SIGNATURE);
    }

    #[test]
    fn session_token_sorts_before_signed_headers_and_is_quote_plus_encoded() {
        let c = creds(Some(TOKEN));
        let r = request(&c);
        assert_eq!(r.canonical_query(), QUERY_TOKEN);
        assert_eq!(
            sha256_hex(r.canonical_request().as_bytes()),
            CANONICAL_SHA256_TOKEN
        );
        assert_eq!(r.signature(), SIGNATURE_TOKEN);
    }

    #[test]
    fn canonical_request_has_no_blank_line_after_the_header() {
        let c = creds(None);
        let cr = request(&c).canonical_request();
        assert!(cr.starts_with("GET\n/\nAction=Connect&"));
        assert!(cr.ends_with(&format!("\nhost:fs-deadbeef\nhost\n{EMPTY_SHA256}")));
        assert!(!cr.contains("\n\n"));
    }

    #[test]
    fn time_formats() {
        let t = at();
        assert_eq!(t.date(), "20261201");
        assert_eq!(t.amz_date(), "20261201T203806Z");
        assert_eq!(t.utc_time(), "261201203806Z");
        for bad in [
            "2612012038Z",
            "261301203806Z",
            "261201203806",
            "26120120380aZ",
            "",
        ] {
            assert!(SigningTime::from_utc_time(bad).is_none(), "{bad}");
        }
        let y2050 = time::Date::from_calendar_date(2050, time::Month::January, 1)
            .unwrap()
            .midnight()
            .assume_utc();
        assert!(SigningTime::new(y2050).is_none());
    }

    /// AWS's published SigV4 test suite (`aws-sig-v4-test-suite`): get-vanilla,
    /// get-vanilla-query-order-key-case and post-vanilla, with its example key.
    #[test]
    fn standard_signing_matches_the_aws_test_suite() {
        let c = Credentials::new(
            AccessKeyId::new("AKIDEXAMPLE_00000").unwrap(),
            SecretAccessKey::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY").unwrap(),
            None,
            None,
        );
        // the suite's key id is shorter than STS issues; it is not in what is signed
        let t = SigningTime::new(
            time::Date::from_calendar_date(2015, time::Month::August, 30)
                .unwrap()
                .with_hms(12, 36, 0)
                .unwrap()
                .assume_utc(),
        )
        .unwrap();
        let query = canonical_query(&[("Param2", "value2"), ("Param1", "value1")]);
        assert_eq!(query, "Param1=value1&Param2=value2");
        for (method, query, want) in [
            (
                "GET",
                "",
                "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
            ),
            (
                "GET",
                query.as_str(),
                "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500",
            ),
            (
                "POST",
                "",
                "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
            ),
        ] {
            let req = HttpRequest {
                method,
                host: "example.amazonaws.com",
                path: "/",
                query,
                content_type: None,
                body: "",
            };
            let headers = sign_http(&req, &c, "us-east-1", "service", t);
            let auth = &headers.last().unwrap().1;
            assert!(
                auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE_00000/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature="),
                "{auth}"
            );
            assert!(auth.ends_with(want), "{method} {query}: {auth}");
        }
        assert_eq!(uri_encode("a b/c+d=e~"), "a%20b%2Fc%2Bd%3De~");
    }

    #[test]
    fn quote_plus_as_python() {
        assert_eq!(quote_plus("a b/c+d=e~f_g.h-i"), "a+b%2Fc%2Bd%3De~f_g.h-i");
        assert_eq!(quote_plus("é"), "%C3%A9");
    }
}
