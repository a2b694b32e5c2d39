//! Fuzz target `mount_target_answer`: what the AWS APIs of the mount-target-IP fallback
//! answer (iam/src/mount_target.rs): EFS `DescribeMountTargets` JSON, EC2
//! `DescribeAvailabilityZones` XML, then the choice of a mount target from the parsed
//! list.
//!
//! Input: one selector byte, then the answer.
//! Checks: no panic; every parsed address is an IP address (it becomes the tunnel's
//! `--connect` and mount.nfs4's source), every value one line; a chosen target is one of
//! the available ones, in the client's AZ when that is known; every error and every
//! refusal message is one bounded line (it ends the mount's one-line error).

#![no_main]

use efs_iam::mount_target::{
    choose, parse_availability_zones, parse_mount_targets, AzId, ClientAz, Ec2Answer,
};
use libfuzzer_sys::fuzz_target;

fn one_line(e: &str) {
    assert!(!e.contains('\n') && !e.contains('\r'), "two lines: {e:?}");
    assert!(e.len() < 4096, "{} bytes", e.len());
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    if which % 2 == 0 {
        match parse_mount_targets(&text) {
            Ok(page) => {
                for t in &page.targets {
                    for v in [&t.id, &t.state] {
                        one_line(v);
                    }
                    if let Some(a) = t.address() {
                        assert!(a.parse::<std::net::IpAddr>().is_ok(), "address {a:?}");
                    }
                }
                let az = ClientAz::Id("use1-az4".into());
                match choose(&page.targets, "fs-12345678", &az, AzId::Id("use1-az4")) {
                    Ok(t) => {
                        assert_eq!(t.state, "available");
                        assert_eq!(t.az_id.as_deref(), Some("use1-az4"));
                    }
                    Err(why) => one_line(&why.0),
                }
                match choose(
                    &page.targets,
                    "fs-12345678",
                    &ClientAz::Unknown,
                    AzId::Unknown,
                ) {
                    Ok(t) => assert_eq!(t.state, "available"),
                    Err(why) => one_line(&why.0),
                }
            }
            Err(e) => one_line(&e),
        }
    } else {
        match parse_availability_zones(&text, "us-east-1a") {
            Ok(Ec2Answer::ZoneId(Some(id))) => one_line(&id),
            Ok(Ec2Answer::ZoneId(None)) => {}
            Ok(Ec2Answer::Error { code, message }) => {
                one_line(&code);
                one_line(&message);
            }
            Err(e) => one_line(&e),
        }
    }
});
