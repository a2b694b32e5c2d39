//! Profiles with `role_arn` and `source_profile`: STS `AssumeRole` with the source
//! profile's credentials, signed with standard SigV4 (service `sts`), as botocore does
//! for the incumbent. POST with a form body, so nothing secret is in the URL.

use super::{sts_client, sts_result, Context, Credentials, Error};
use crate::sigv4::{quote_plus, sign_http, HttpRequest, SigningTime};

pub const CONTENT_TYPE: &str = "application/x-www-form-urlencoded; charset=utf-8";

/// The `host[:port]` of an `http(s)://` URL, as the Host header carries it.
pub fn authority(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let host = rest.split(['/', '?', '#']).next()?;
    (!host.is_empty()).then_some(host)
}

/// The headers that sign a POST of `body` to STS at `host`: `Host`, `X-Amz-Date`,
/// `X-Amz-Security-Token` (with temporary credentials) and `Authorization`.
pub fn sign_sts_post(
    credentials: &Credentials,
    region: &str,
    host: &str,
    time: SigningTime,
    body: &str,
) -> Vec<(&'static str, String)> {
    let req = HttpRequest {
        method: "POST",
        host,
        path: "/",
        query: "",
        content_type: Some(CONTENT_TYPE),
        body,
    };
    sign_http(&req, credentials, region, "sts", time)
}

/// What the profile asks of `AssumeRole`.
#[derive(Debug, Clone, Copy)]
pub struct AssumeRole<'a> {
    pub role_arn: &'a str,
    pub session_name: &'a str,
    pub external_id: Option<&'a str>,
    pub duration_seconds: Option<u32>,
}

/// The form body of an `AssumeRole` request.
pub fn assume_role_body(a: &AssumeRole) -> String {
    let mut body = format!(
        "Action=AssumeRole&Version=2011-06-15&RoleArn={}&RoleSessionName={}",
        quote_plus(a.role_arn),
        quote_plus(a.session_name)
    );
    if let Some(id) = a.external_id {
        body.push_str(&format!("&ExternalId={}", quote_plus(id)));
    }
    if let Some(d) = a.duration_seconds {
        body.push_str(&format!("&DurationSeconds={d}"));
    }
    body
}

/// STS `AssumeRole` with `source`'s credentials.
pub fn assume_role(
    ctx: &Context,
    source: &Credentials,
    request: &AssumeRole,
) -> Result<Credentials, Error> {
    let url = ctx.endpoints.sts_url(ctx.region)?;
    let host = authority(&url).ok_or_else(|| Error::InvalidOption {
        what: "STS endpoint",
        reason: format!("{url:?} is not an http(s) URL"),
    })?;
    let time = SigningTime::now().ok_or_else(|| Error::InvalidOption {
        what: "clock",
        reason: "the system time is outside 2000-2049".into(),
    })?;
    let body = assume_role_body(request);
    let headers = sign_sts_post(source, ctx.region, host, time, &body);
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let answer = sts_client(ctx)?
        .call("POST", &url, &headers, Some(&body))
        .map_err(|problem| Error::Endpoint {
            what: "STS",
            url: url.clone(),
            problem,
        })?;
    sts_result("AssumeRole", url, &answer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::{AccessKeyId, SecretAccessKey, SessionToken};

    // Computed once by hand with the shell and OpenSSL, as in sigv4.rs: the canonical
    // request `POST\n/\n\ncontent-type:...\nhost:sts.eu-west-1.amazonaws.com\n
    // x-amz-date:20261201T203806Z\n[x-amz-security-token:tok+/=\n]\n<signed headers>\n
    // <sha256 of the body>`, its sha256 in the string to sign with scope
    // 20261201/eu-west-1/sts/aws4_request, and the HMAC chain with `-macopt hexkey:`.
    const SIG: &str = "c83da12ec20ed21ee07f6df2a3695f92963a0996a9aab219e991fd0d6de16ae2";
    const SIG_TOKEN: &str = "3cc6b83391ff15beeb91796d8b4dc4eda0ebcdc49f59703be54b217a657d81c8";

    fn creds(token: Option<&str>) -> Credentials {
        Credentials::new(
            AccessKeyId::new("AKIAIOSFODNN7EXAMPLE").unwrap(),
            SecretAccessKey::new("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY").unwrap(),
            token.map(|t| SessionToken::new(t).unwrap()),
            None,
        )
    }

    fn signed(token: Option<&str>) -> Vec<(&'static str, String)> {
        let body = assume_role_body(&AssumeRole {
            role_arn: "arn:aws:iam::123456789012:role/x",
            session_name: "efs-mount-helper",
            external_id: None,
            duration_seconds: None,
        });
        assert_eq!(body, "Action=AssumeRole&Version=2011-06-15&RoleArn=arn%3Aaws%3Aiam%3A%3A123456789012%3Arole%2Fx&RoleSessionName=efs-mount-helper");
        sign_sts_post(
            &creds(token),
            "eu-west-1",
            "sts.eu-west-1.amazonaws.com",
            SigningTime::from_utc_time("261201203806Z").unwrap(),
            &body,
        )
    }

    #[test]
    fn assume_role_signature_matches_one_computed_by_hand() {
        let h = signed(None);
        assert_eq!(h.last().unwrap().1, format!("AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20261201/eu-west-1/sts/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature={SIG}"));
        let h = signed(Some("tok+/="));
        assert!(h.contains(&("x-amz-security-token", "tok+/=".to_string())));
        assert!(h.last().unwrap().1.ends_with(&format!(
            "SignedHeaders=content-type;host;x-amz-date;x-amz-security-token, Signature={SIG_TOKEN}"
        )));
    }

    #[test]
    fn authorities() {
        assert_eq!(
            authority("https://sts.eu-west-1.amazonaws.com/"),
            Some("sts.eu-west-1.amazonaws.com")
        );
        assert_eq!(authority("http://127.0.0.1:8080/x"), Some("127.0.0.1:8080"));
        assert_eq!(authority("nope"), None);
    }
}
