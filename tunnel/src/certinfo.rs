//! Just enough X.509 to report a server certificate's subject and expiry in the tunnel's
//! status (operators ask "how long until this certificate expires?").
//!
//! Verification is rustls' and webpki's job; this module only reads the two fields of a
//! certificate that already passed verification, and returns `None` on anything it does
//! not understand rather than failing. A dependency on a full X.509 parser would cost more
//! than these ~100 lines.

/// What the status reports about the mount target's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSummary {
    /// The subject as `CN=..., O=..., C=...`.
    pub subject: String,
    /// notAfter, seconds since the Unix epoch.
    pub not_after_unix: i64,
}

/// Reads subject and notAfter from a DER certificate.
pub fn summarize(der: &[u8]) -> Option<CertSummary> {
    let (cert, _) = element(der, 0x30)?;
    let (mut tbs, _) = element(cert, 0x30)?;
    if tbs.first() == Some(&0xa0) {
        tbs = any(tbs)?.2; // [0] version
    }
    let (_, _, rest) = any(tbs)?; // serialNumber
    let (_, _, rest) = any(rest)?; // signature algorithm
    let (_, _, rest) = any(rest)?; // issuer
    let (validity, rest) = element(rest, 0x30)?;
    let (_, _, after_not_before) = any(validity)?;
    let (tag, not_after, _) = any(after_not_before)?;
    let (subject, _) = element(rest, 0x30)?;
    Some(CertSummary {
        subject: name_to_string(subject)?,
        not_after_unix: parse_time(tag, not_after)?,
    })
}

/// One DER element: (tag, contents, rest). Only single-byte tags, as in certificates.
fn any(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

fn element(input: &[u8], want: u8) -> Option<(&[u8], &[u8])> {
    let (tag, body, rest) = any(input)?;
    (tag == want).then_some((body, rest))
}

fn name_to_string(mut name: &[u8]) -> Option<String> {
    let mut parts = Vec::new();
    while !name.is_empty() {
        let (mut set, rest) = element(name, 0x31)?;
        name = rest;
        while !set.is_empty() {
            let (atv, rest) = element(set, 0x30)?;
            set = rest;
            let (oid, value_rest) = element(atv, 0x06)?;
            let (_, value, _) = any(value_rest)?;
            let value = String::from_utf8_lossy(value);
            parts.push(format!("{}={}", attribute_name(oid), value));
        }
    }
    Some(parts.join(", "))
}

fn attribute_name(oid: &[u8]) -> String {
    match oid {
        [0x55, 0x04, 0x03] => "CN".into(),
        [0x55, 0x04, 0x06] => "C".into(),
        [0x55, 0x04, 0x07] => "L".into(),
        [0x55, 0x04, 0x08] => "ST".into(),
        [0x55, 0x04, 0x0a] => "O".into(),
        [0x55, 0x04, 0x0b] => "OU".into(),
        other => other
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(""),
    }
}

/// UTCTime (YYMMDDHHMMSSZ) or GeneralizedTime (YYYYMMDDHHMMSSZ) to Unix seconds.
fn parse_time(tag: u8, body: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(body).ok()?.strip_suffix('Z')?;
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let num = |s: &str| s.parse::<i64>().ok();
    let (year, rest) = match (tag, text.len()) {
        (0x17, 12) => {
            let yy = num(&text[..2])?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &text[2..])
        }
        (0x18, 14) => (num(&text[..4])?, &text[4..]),
        _ => return None,
    };
    let month = num(&rest[0..2])?;
    let day = num(&rest[2..4])?;
    let (h, m, s) = (num(&rest[4..6])?, num(&rest[6..8])?, num(&rest[8..10])?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + s)
}

/// Proleptic Gregorian date to days since 1970-01-01 (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_subject_and_expiry_of_a_real_certificate() {
        let mut params =
            rcgen::CertificateParams::new(vec!["*.efs.us-east-1.amazonaws.com".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "*.efs.us-east-1.amazonaws.com");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Test");
        params.not_after = rcgen::date_time_ymd(2031, 7, 4);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let s = summarize(cert.der()).unwrap();
        assert!(
            s.subject.contains("CN=*.efs.us-east-1.amazonaws.com"),
            "{}",
            s.subject
        );
        assert!(s.subject.contains("O=Test"), "{}", s.subject);
        assert_eq!(s.not_after_unix, 1_940_889_600); // 2031-07-04T00:00:00Z
    }

    #[test]
    fn garbage_is_none_not_a_panic() {
        assert_eq!(summarize(&[]), None);
        assert_eq!(summarize(&[0x30]), None);
        assert_eq!(summarize(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for len in 0..300 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = summarize(&bytes);
            let mut seq = vec![0x30, 0x82, (len >> 8) as u8, len as u8];
            seq.extend_from_slice(&bytes);
            let _ = summarize(&seq);
        }
    }

    #[test]
    fn both_time_forms() {
        assert_eq!(parse_time(0x17, b"700101000000Z"), Some(0));
        assert_eq!(parse_time(0x18, b"20000229000000Z"), Some(951_782_400));
        assert_eq!(parse_time(0x17, b"7001010000Z"), None);
        assert_eq!(parse_time(0x17, b"701301000000Z"), None);
    }
}
