//! The EC2 instance metadata service, asked only for the region and only when nothing
//! else names it: IMDSv2 (a session token first, 0.5 s timeouts, three tries), then
//! IMDSv1 if no token can be had. The base URL comes from the config
//! (`instance_metadata_url`), so tests talk to a local fake and never to 169.254.169.254.
//!
//! The IMDSv2 protocol itself (token request, retries, token header) is
//! [`efs_iam::imds`], shared with the instance-role credential source; what is here is
//! the region lookup's own policy (every failed token request is asked again, then
//! IMDSv1) and the identity document.

use std::time::Duration;

use efs_iam::imds::{Imds, Retry, TOKEN_TRIES};

use crate::options::is_region_name;

const TOKEN_TIMEOUT: Duration = Duration::from_millis(500);
const GET_TIMEOUT: Duration = Duration::from_secs(1);

const DOCUMENT_PATH: &str = "/latest/dynamic/instance-identity/document";

/// The instance's region from its identity document.
pub fn region(base_url: &str, use_token: bool) -> Result<String, String> {
    let answer = get(base_url, use_token, DOCUMENT_PATH)?;
    region_of_answer(answer.status, &answer.body)
}

/// One GET of instance metadata: IMDSv2 (a session token first, three tries), IMDSv1
/// when no token can be had or `use_token` is off.
fn get(base_url: &str, use_token: bool, path: &str) -> Result<efs_iam::imds::Answer, String> {
    if !base_url.starts_with("http://") {
        return Err(format!(
            "instance_metadata_url {base_url} must start with http://"
        ));
    }
    let token = if use_token {
        Imds::new(base_url, TOKEN_TIMEOUT)?
            .token(TOKEN_TRIES, Retry::Always)
            .ok()
    } else {
        None
    };
    Imds::new(base_url, GET_TIMEOUT)?
        .get(path, token.as_deref())
        .map_err(|problem| format!("GET {path}: {problem}"))
}

const AZ_ID_PATH: &str = "/latest/meta-data/placement/availability-zone-id";

/// The instance's availability zone ID (`use1-az1`), for `crossaccount`: AZ names differ
/// between accounts, AZ IDs do not.
pub fn az_id(base_url: &str, use_token: bool) -> Result<String, String> {
    let answer = get(base_url, use_token, AZ_ID_PATH)?;
    az_id_of_answer(answer.status, &answer.body)
}

/// The AZ ID in the service's answer: `<region code><digit>-az<digits>` (`use1-az1`,
/// `euw2-az3`), which goes into a DNS name.
pub fn az_id_of_answer(status: u16, body: &str) -> Result<String, String> {
    if status != 200 {
        return Err(format!("GET {AZ_ID_PATH}: HTTP {status}"));
    }
    let id = body.trim();
    let valid = id.split_once("-az").is_some_and(|(code, n)| {
        (3..=12).contains(&code.len())
            && code
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && !n.is_empty()
            && n.len() <= 3
            && n.bytes().all(|b| b.is_ascii_digit())
    });
    if valid {
        Ok(id.to_string())
    } else {
        Err(format!(
            "{AZ_ID_PATH} is not an AZ ID: {:?}",
            id.chars().take(64).collect::<String>()
        ))
    }
}

/// The region in the service's answer (status and body) to the identity document
/// request. Public so that the fuzz target `imds_answer` reaches what the service says
/// without a socket.
pub fn region_of_answer(status: u16, doc: &str) -> Result<String, String> {
    if status != 200 {
        return Err(format!("GET {DOCUMENT_PATH}: HTTP {status}"));
    }
    let json: serde_json::Value =
        serde_json::from_str(doc).map_err(|e| format!("identity document is not JSON: {e}"))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn az_id_answers() {
        assert_eq!(az_id_of_answer(200, "use1-az4\n").unwrap(), "use1-az4");
        assert_eq!(az_id_of_answer(200, "cnn1-az12").unwrap(), "cnn1-az12");
        for bad in [
            "",
            "us-east-1a",
            "use1-az",
            "USE1-az1",
            "use1-az1.evil.com",
            "a-az1",
        ] {
            assert!(az_id_of_answer(200, bad).is_err(), "{bad:?}");
        }
        assert!(az_id_of_answer(404, "use1-az1").is_err());
    }

    #[test]
    fn identity_document_answers() {
        let doc = r#"{ "availabilityZone" : "eu-west-1b", "region" : "eu-west-1" }"#;
        assert_eq!(region_of_answer(200, doc).unwrap(), "eu-west-1");
        assert!(region_of_answer(401, "").unwrap_err().contains("HTTP 401"));
        assert!(region_of_answer(200, "{}")
            .unwrap_err()
            .contains("no region"));
        // Found by fuzzing: the region goes into DNS names.
        let odd = r#"{"region": "us-east-1.evil.example/x"}"#;
        assert!(region_of_answer(200, odd)
            .unwrap_err()
            .contains("invalid region"));
    }
}
