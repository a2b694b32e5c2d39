//! `efs-utils config import` and `config check` on amazon-efs-utils' shipped config.

use std::process::Command;

use efs_testkit::root::workspace_bin;
use efs_testkit::TempDir;

const INCUMBENT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/incumbent-efs-utils.conf"
);

#[test]
fn the_incumbents_config_converts_to_one_check_accepts_with_the_same_values() {
    let dir = TempDir::new("import");
    let out_path = dir.path("efs-utils.toml");
    let out = Command::new(workspace_bin("efs-utils"))
        .args(["config", "import", INCUMBENT, "--output"])
        .arg(&out_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let left = String::from_utf8_lossy(&out.stderr);
    assert!(
        left.contains("not carried over: [mount] stunnel_debug_enabled"),
        "{left}"
    );
    assert!(
        left.contains("not carried over: [cloudwatch-log] log_group_name"),
        "{left}"
    );

    let cfg = efs_config::Config::load_from(&out_path).unwrap();
    assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
    // The incumbent's values, region sections included.
    assert_eq!(cfg.logging_max_bytes, 1_048_576);
    assert_eq!(cfg.logging_file_count, 10);
    assert_eq!(cfg.state_file_dir_mode, 0o750);
    assert_eq!(
        cfg.mount.dns_name_format,
        "{az}.{fs_id}.efs.{region}.{dns_name_suffix}"
    );
    assert_eq!(
        cfg.mount.stunnel_cafile.as_deref(),
        Some(std::path::Path::new("/etc/amazon/efs/efs-utils.crt"))
    );
    assert!(cfg.mount.stunnel_check_cert_hostname && !cfg.mount.stunnel_check_cert_validity);
    assert_eq!(cfg.mount.port_range, 20049..21049);
    assert!(cfg.mount.optimize_readahead);
    assert_eq!(cfg.mount.retry_nfs_mount_command_timeout_sec, 15);
    assert_eq!(cfg.dns_name_suffix("cn-northwest-1"), "amazonaws.com.cn");
    assert_eq!(cfg.dns_name_suffix("eu-isoe-west-1"), "cloud.adc-e.uk");
    assert_eq!(
        cfg.cafile("us-isof-south-1").unwrap().to_str().unwrap(),
        "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem"
    );
    assert_eq!(cfg.watchdog.unmount_grace_period_sec, 30);
    assert_eq!(cfg.watchdog.stunnel_health_check_command_timeout_sec, 30);
    // Comments came along.
    let text = std::fs::read_to_string(&out_path).unwrap();
    assert!(
        text.contains("# Define the port range that the TLS tunnel will choose from"),
        "{text}"
    );

    let check = Command::new(workspace_bin("efs-utils"))
        .args(["config", "check"])
        .arg(&out_path)
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(
        shown.contains("mount.port_range_lower_bound = 20049") && shown.contains("# file"),
        "{shown}"
    );
    assert!(
        shown.contains("mount.instance_metadata_url = \"http://169.254.169.254\""),
        "{shown}"
    );
    assert!(shown.contains("# default"), "{shown}");
}

#[test]
fn check_names_the_key_and_reason_and_fails() {
    let dir = TempDir::new("check");
    let bad = dir.path("bad.toml");
    std::fs::write(&bad, "[mount]\nport_range_upper_bound = \"lots\"\n").unwrap();
    let out = Command::new(workspace_bin("efs-utils"))
        .args(["config", "check"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("mount.port_range_upper_bound")
            && err.contains("\"lots\"")
            && err.contains("bad.toml"),
        "{err}"
    );
}
