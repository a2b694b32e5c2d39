//! Pure parsers of the credential endpoints' answers: the JSON of IMDS, ECS and Pod
//! Identity, IMDS's role name, and STS's XML (`AssumeRoleWithWebIdentity`, `AssumeRole`,
//! and `ErrorResponse`). Each is `fn(&str) -> Result<..>`, never panics, and is meant to
//! be fuzzed.

use super::{AccessKeyId, Credentials, InvalidCredential, SecretAccessKey, SessionToken};
use time::OffsetDateTime;

/// Why an answer is not credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    NotJson(String),
    NotXml(String),
    /// A field that must be there is not (its name).
    Missing(&'static str),
    /// IMDS's `Code` is not `Success` (its value).
    NotSuccess(String),
    BadExpiration(String),
    Invalid(InvalidCredential),
    BadRoleName,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParseError::NotJson(e) => write!(f, "answer is not JSON ({e})"),
            ParseError::NotXml(e) => write!(f, "answer is not XML ({e})"),
            ParseError::Missing(field) => write!(f, "answer has no {field}"),
            ParseError::NotSuccess(code) => write!(f, "answer's Code is {code:?}, not Success"),
            ParseError::BadExpiration(v) => write!(f, "answer's Expiration {v:?} is not a date"),
            ParseError::Invalid(e) => write!(f, "answer's {e}"),
            ParseError::BadRoleName => write!(f, "answer is not an IAM role name"),
        }
    }
}

impl From<InvalidCredential> for ParseError {
    fn from(e: InvalidCredential) -> Self {
        ParseError::Invalid(e)
    }
}

/// A parser's message as one bounded line (it becomes part of the mount's one-line
/// error, and an XML parser's message may quote the answer, control characters and all:
/// found by fuzzing, `regressions/aws_credentials/`).
fn one_line(message: String) -> String {
    crate::one_line(&message, 200)
}

/// `2019-10-25T21:17:24Z` (RFC 3339, fractions allowed).
pub fn parse_expiration(s: &str) -> Result<OffsetDateTime, ParseError> {
    OffsetDateTime::parse(s.trim(), &time::format_description::well_known::Rfc3339)
        .map_err(|_| ParseError::BadExpiration(s.chars().take(40).collect()))
}

/// The credentials JSON of IMDS, ECS and Pod Identity:
/// `{"Code": "Success", "AccessKeyId": .., "SecretAccessKey": .., "Token": .., "Expiration": ..}`
/// (`Code` only from IMDS).
pub fn parse_credentials_json(body: &str) -> Result<Credentials, ParseError> {
    let v: serde_json::Value =
        serde_json::from_str(body).map_err(|e| ParseError::NotJson(one_line(e.to_string())))?;
    let field = |name: &'static str| v.get(name).and_then(serde_json::Value::as_str);
    if let Some(code) = field("Code") {
        if code != "Success" {
            return Err(ParseError::NotSuccess(code.chars().take(64).collect()));
        }
    }
    let akid = field("AccessKeyId").ok_or(ParseError::Missing("AccessKeyId"))?;
    let secret = field("SecretAccessKey").ok_or(ParseError::Missing("SecretAccessKey"))?;
    let token = field("Token").ok_or(ParseError::Missing("Token"))?;
    let expiration = field("Expiration").map(parse_expiration).transpose()?;
    Ok(Credentials::new(
        AccessKeyId::new(akid)?,
        SecretAccessKey::new(secret)?,
        Some(SessionToken::new(token)?),
        expiration,
    ))
}

/// IMDS `iam/security-credentials/`: the role name on the first line.
pub fn parse_role_name(body: &str) -> Result<String, ParseError> {
    let name = body.lines().next().unwrap_or("").trim();
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b));
    if ok {
        Ok(name.to_string())
    } else {
        Err(ParseError::BadRoleName)
    }
}

/// What STS answered.
#[derive(Debug, PartialEq, Eq)]
pub enum StsAnswer {
    Credentials(Credentials),
    /// `<ErrorResponse><Error><Code>..</Code><Message>..</Message>`.
    Refused {
        code: String,
        message: String,
    },
}

fn child_text<'a>(node: roxmltree::Node<'a, 'a>, name: &str) -> Option<&'a str> {
    node.children()
        .find(|c| c.is_element() && c.tag_name().name() == name)
        .and_then(|c| c.text())
        .map(str::trim)
}

/// STS's XML answer to `AssumeRoleWithWebIdentity` or `AssumeRole` (the `Credentials`
/// element, wherever it is), or its `ErrorResponse`.
pub fn parse_sts_answer(body: &str) -> Result<StsAnswer, ParseError> {
    let doc = roxmltree::Document::parse(body)
        .map_err(|e| ParseError::NotXml(one_line(e.to_string())))?;
    let find = |name: &str| {
        doc.descendants()
            .find(|n| n.is_element() && n.tag_name().name() == name)
    };
    if let Some(error) = find("Error") {
        // Shown in the mount's one-line error: control characters (a newline in a
        // message) become spaces.
        let clip = |s: Option<&str>| crate::one_line(s.unwrap_or(""), 200);
        return Ok(StsAnswer::Refused {
            code: clip(child_text(error, "Code")),
            message: clip(child_text(error, "Message")),
        });
    }
    let creds = find("Credentials").ok_or(ParseError::Missing("Credentials"))?;
    let get = |name: &'static str| child_text(creds, name).ok_or(ParseError::Missing(name));
    Ok(StsAnswer::Credentials(Credentials::new(
        AccessKeyId::new(get("AccessKeyId")?)?,
        SecretAccessKey::new(get("SecretAccessKey")?)?,
        Some(SessionToken::new(get("SessionToken")?)?),
        Some(parse_expiration(get("Expiration")?)?),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    const IMDS: &str = r#"{"Code":"Success","LastUpdated":"2026-12-01T20:00:00Z","Type":"AWS-HMAC",
        "AccessKeyId":"ASIAIMDSEXAMPLE00001","SecretAccessKey":"c2VjcmV0","Token":"dG9rZW4=",
        "Expiration":"2026-12-02T02:00:00Z"}"#;

    #[test]
    fn imds_json() {
        let c = parse_credentials_json(IMDS).unwrap();
        assert_eq!(c.access_key_id.as_str(), "ASIAIMDSEXAMPLE00001");
        assert_eq!(c.secret_access_key().expose(), "c2VjcmV0");
        assert_eq!(c.session_token().unwrap().expose(), "dG9rZW4=");
        assert_eq!(c.expiration.unwrap().hour(), 2);
    }

    #[test]
    fn json_refusals_name_what_is_wrong() {
        assert_eq!(
            parse_credentials_json(r#"{"Code":"AssumeRoleUnauthorizedAccess"}"#),
            Err(ParseError::NotSuccess(
                "AssumeRoleUnauthorizedAccess".into()
            ))
        );
        assert_eq!(
            parse_credentials_json(r#"{"AccessKeyId":"ASIAIMDSEXAMPLE00001","Token":"x"}"#),
            Err(ParseError::Missing("SecretAccessKey"))
        );
        assert!(matches!(
            parse_credentials_json("<html>"),
            Err(ParseError::NotJson(_))
        ));
        assert!(matches!(
            parse_credentials_json(r#"{"AccessKeyId":"short","SecretAccessKey":"s","Token":"t"}"#),
            Err(ParseError::Invalid(_))
        ));
        assert!(matches!(
            parse_credentials_json(
                r#"{"AccessKeyId":"ASIAIMDSEXAMPLE00001","SecretAccessKey":"s","Token":"t","Expiration":"soon"}"#
            ),
            Err(ParseError::BadExpiration(_))
        ));
        // a token with a newline would end the certificate field early
        assert!(matches!(
            parse_credentials_json(
                r#"{"AccessKeyId":"ASIAIMDSEXAMPLE00001","SecretAccessKey":"s","Token":"a\nb"}"#
            ),
            Err(ParseError::Invalid(_))
        ));
    }

    #[test]
    fn no_prefix_of_an_answer_panics_or_passes() {
        let sts = "<AssumeRoleWithWebIdentityResponse><AssumeRoleWithWebIdentityResult><Credentials><SessionToken>FwoG</SessionToken><SecretAccessKey>s</SecretAccessKey><Expiration>2026-12-01T21:38:06Z</Expiration><AccessKeyId>ASIASTSEXAMPLE000001</AccessKeyId></Credentials></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>";
        assert!(parse_sts_answer(sts).is_ok());
        for cut in (0..sts.len()).filter(|i| sts.is_char_boundary(*i)) {
            assert!(parse_sts_answer(&sts[..cut]).is_err(), "{cut}");
        }
        for cut in (0..IMDS.len()).filter(|i| IMDS.is_char_boundary(*i)) {
            assert!(parse_credentials_json(&IMDS[..cut]).is_err(), "{cut}");
        }
    }

    #[test]
    fn role_name() {
        assert_eq!(parse_role_name("my-role\n").unwrap(), "my-role");
        assert_eq!(parse_role_name("").unwrap_err(), ParseError::BadRoleName);
        assert_eq!(
            parse_role_name("../../x").unwrap_err(),
            ParseError::BadRoleName
        );
    }

    #[test]
    fn sts_answers() {
        let ok = r#"<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <Credentials>
      <SessionToken>FwoGZXIvYXdzEXAMPLE/token+=</SessionToken>
      <SecretAccessKey>wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY</SecretAccessKey>
      <Expiration>2026-12-01T21:38:06Z</Expiration>
      <AccessKeyId>ASIASTSEXAMPLE000001</AccessKeyId>
    </Credentials>
  </AssumeRoleWithWebIdentityResult>
</AssumeRoleWithWebIdentityResponse>"#;
        let StsAnswer::Credentials(c) = parse_sts_answer(ok).unwrap() else {
            panic!("not credentials")
        };
        assert_eq!(c.access_key_id.as_str(), "ASIASTSEXAMPLE000001");
        assert_eq!(
            c.session_token().unwrap().expose(),
            "FwoGZXIvYXdzEXAMPLE/token+="
        );
        assert_eq!(c.expiration.unwrap().minute(), 38);

        let refused = r#"<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <Error><Type>Sender</Type><Code>InvalidIdentityToken</Code>
  <Message>Couldn&apos;t retrieve verification key</Message></Error>
  <RequestId>x</RequestId></ErrorResponse>"#;
        assert_eq!(
            parse_sts_answer(refused).unwrap(),
            StsAnswer::Refused {
                code: "InvalidIdentityToken".into(),
                message: "Couldn't retrieve verification key".into()
            }
        );
        // STS's message goes into a one-line error: no line breaks get through.
        let multiline = "<ErrorResponse><Error><Code>X</Code><Message>one\ntwo\r\n</Message></Error></ErrorResponse>";
        assert_eq!(
            parse_sts_answer(multiline).unwrap(),
            StsAnswer::Refused {
                code: "X".into(),
                message: "one two".into()
            }
        );
        assert_eq!(
            parse_sts_answer("<a/>").unwrap_err(),
            ParseError::Missing("Credentials")
        );
        assert!(matches!(
            parse_sts_answer("<a>"),
            Err(ParseError::NotXml(_))
        ));
    }
}
