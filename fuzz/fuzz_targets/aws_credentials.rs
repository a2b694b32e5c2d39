//! Fuzz target `aws_credentials`: what credential sources answer and what `~/.aws` files
//! hold (iam/src/credentials/parse.rs and profile.rs): the credentials JSON of IMDS, ECS
//! and Pod Identity, IMDS's role name, STS's XML answers, the INI files of `~/.aws` with
//! their static keys, a `credential_process` command line and its output.
//!
//! Input: one selector byte, then the text.
//! Checks: no panic; credentials that parse are valid (an access key id of 16-128 of
//! `[A-Za-z0-9_]`, as the certificate needs it); every error is one bounded line (it
//! becomes the mount's one-line failure) and never contains the secret it rejected.

#![no_main]

use efs_iam::credentials::{parse, profile, Credentials};
use libfuzzer_sys::fuzz_target;

fn valid(c: &Credentials) {
    let id = c.access_key_id.as_str();
    assert!(
        (16..=128).contains(&id.len())
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
        "access key id {id:?}"
    );
}

fn one_line(e: &str) {
    assert!(!e.contains('\n') && !e.contains('\r'), "two lines: {e:?}");
    assert!(e.len() < 1024, "{} bytes of error", e.len());
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    match which % 6 {
        0 => match parse::parse_credentials_json(text) {
            Ok(c) => valid(&c),
            Err(e) => one_line(&e.to_string()),
        },
        1 => {
            if let Ok(role) = parse::parse_role_name(text) {
                // It goes into the next request's path: one segment, nothing to escape.
                assert!(
                    !role.is_empty()
                        && role.bytes().all(|b| b.is_ascii_graphic()
                            && b != b'/'
                            && b != b'?'
                            && b != b'#'
                            && b != b'%'),
                    "role {role:?}"
                );
            }
        }
        2 => match parse::parse_sts_answer(text) {
            Ok(parse::StsAnswer::Credentials(c)) => valid(&c),
            // STS's code and message are shown in the mount's one-line error.
            Ok(parse::StsAnswer::Refused { code, message }) => {
                one_line(&code);
                one_line(&message);
            }
            Err(e) => one_line(&e.to_string()),
        },
        3 => {
            if let Ok(ini) = profile::parse_ini(text) {
                let loaded = profile::Loaded {
                    path: "/fuzz/credentials".into(),
                    exists: true,
                    ini,
                };
                for (name, config) in [("default", false), ("p", true), ("default", true)] {
                    match profile::static_keys(&loaded, name, config) {
                        Some(Ok(c)) => valid(&c),
                        Some(Err(e)) => one_line(&e.to_string()),
                        None => {}
                    }
                }
            }
        }
        4 => {
            // A word never holds more than the line had.
            if let Some(words) = profile::split_command_line(text) {
                assert!(words.iter().map(String::len).sum::<usize>() <= text.len());
            }
        }
        _ => match profile::parse_process_output(text) {
            Ok(c) => valid(&c),
            Err(e) => one_line(&e),
        },
    }
});
