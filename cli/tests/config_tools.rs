//! `efs-utils config import` and `config check` on amazon-efs-utils' shipped config, and
//! the command line's handling of bad arguments.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::process::{Command, Output};

mod common;

use common::succeeded;
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
    // --output before the input file: the input is still the input.
    let out = succeeded(
        Command::new(workspace_bin("efs-utils"))
            .args(["config", "import", "--output"])
            .arg(&out_path)
            .arg(INCUMBENT)
            .output()
            .unwrap(),
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
    assert!(
        left.contains("accepted, no effect: [mount-watchdog] unmount_count_for_consistency\n"),
        "{left}"
    );
    // Read by mount.efs since it falls back to the mount target's IP address.
    assert!(
        !left.contains("accepted, no effect: [mount] fall_back_to_mount_target_ip_address_enabled"),
        "{left}"
    );
    // Read by the watchdog since it renews client certificates.
    assert!(
        !left.contains("accepted, no effect: [mount-watchdog] tls_cert_renewal_interval_min"),
        "{left}"
    );
    assert_eq!(left.matches("accepted, no effect").count(), 1, "{left}");

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

    let check = succeeded(
        Command::new(workspace_bin("efs-utils"))
            .args(["config", "check"])
            .arg(&out_path)
            .output()
            .unwrap(),
    );
    let shown = String::from_utf8_lossy(&check.stdout);
    assert!(
        shown.contains("mount.port_range_lower_bound = 20049")
            && shown.contains("# efs-utils.toml"),
        "{shown}"
    );
    assert_rows(
        &shown,
        &[
            "mount-watchdog.tls_cert_renewal_interval_min = 60 # efs-utils.toml",
            "mount-watchdog.unmount_grace_period_sec = 30 # efs-utils.toml",
        ],
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

fn efs_utils(args: &[&OsStr]) -> Output {
    Command::new(workspace_bin("efs-utils"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn import_reads_the_input_wherever_output_stands() {
    let dir = TempDir::new("import-order");
    let ini = dir.path("in.conf");
    std::fs::write(&ini, "[mount]\nregion = eu-west-1\n").unwrap();
    for output_first in [true, false] {
        let toml = dir.path(&format!("out-{output_first}.toml"));
        let (o, i) = (toml.as_os_str(), ini.as_os_str());
        let args: Vec<&OsStr> = if output_first {
            vec![
                "config".as_ref(),
                "import".as_ref(),
                "--output".as_ref(),
                o,
                i,
            ]
        } else {
            vec![
                "config".as_ref(),
                "import".as_ref(),
                i,
                "--output".as_ref(),
                o,
            ]
        };
        let out = succeeded(efs_utils(&args));
        assert!(
            out.stdout.is_empty(),
            "the TOML went to the file, not stdout"
        );
        let cfg = efs_config::Config::load_from(&toml).unwrap();
        assert_eq!(cfg.mount.region.as_deref(), Some("eu-west-1"));
    }
}

#[test]
fn a_state_dir_mode_others_could_write_is_a_config_error() {
    let dir = TempDir::new("mode");
    let cfg = dir.path("efs-utils.toml");
    std::fs::write(&cfg, "state_file_dir_mode = 777\n").unwrap();
    let out = efs_utils(&["config".as_ref(), "check".as_ref(), cfg.as_os_str()]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "config file {}: state_file_dir_mode = 777 would make the state directory writable by other users; use 750 (the default) or stricter\n",
            cfg.display()
        )
    );
}

#[test]
fn a_non_utf8_argument_is_one_line_and_exit_1() {
    let bad = OsStr::from_bytes(b"--js\xffon");
    for args in [
        vec![bad],
        vec!["status".as_ref(), bad],
        vec!["config".as_ref(), bad],
    ] {
        let out = efs_utils(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            err, "efs-utils: argument \"--js\\xFFon\" is not valid UTF-8: see efs-utils --help\n",
            "{args:?}"
        );
    }
    // A file name is a path, and any bytes make one.
    succeeded(efs_utils(&[
        "config".as_ref(),
        "check".as_ref(),
        OsStr::from_bytes(b"/nonexistent/\xff.toml"),
    ]));
}

#[test]
fn usage_errors_exit_1_and_version_is_the_incumbents_line() {
    let out = efs_utils(&[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("config"));
    let out = efs_utils(&["status".as_ref(), "--jsn".as_ref()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--jsn"));
    let out = succeeded(efs_utils(&["--version".as_ref()]));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("efs-utils Version: {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn check_shows_efs_utils_conf_under_efs_utils_toml_and_each_values_origin() {
    let dir = TempDir::new("layers");
    let toml = dir.path("efs-utils.toml");
    std::fs::write(&toml, "[mount]\nregion = \"us-west-2\"\n").unwrap();
    std::fs::write(
        dir.path("efs-utils.conf"),
        "[mount]\nregion = eu-west-1\nport_range_lower_bound = 20100\n",
    )
    .unwrap();
    let check = |env: &[(&str, &OsStr)]| {
        let mut cmd = Command::new(workspace_bin("efs-utils"));
        cmd.args(["config", "check"])
            .env("EFS_UTILS_CONFIG", &toml)
            .env_remove("EFS_UTILS_INCUMBENT_CONFIG")
            .env_remove("AWS_USE_FIPS_ENDPOINT")
            .envs(env.iter().copied());
        let out = succeeded(cmd.output().unwrap());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    // efs-utils.conf next to the TOML is read under it.
    let shown = check(&[]);
    assert!(
        shown.starts_with(&format!(
            "# effective configuration: the defaults, then {}, then {} ",
            dir.path("efs-utils.conf").display(),
            toml.display()
        )),
        "{shown}"
    );
    assert_rows(
        &shown,
        &[
            "mount.region = \"us-west-2\" # efs-utils.toml",
            "mount.port_range_lower_bound = 20100 # efs-utils.conf",
            "mount.port_range_upper_bound = 21049 # default",
            "mount.fips_mode_enabled = false # default",
        ],
    );

    // AWS_USE_FIPS_ENDPOINT=true, as for the incumbent.
    let shown = check(&[("AWS_USE_FIPS_ENDPOINT", "true".as_ref())]);
    assert_rows(
        &shown,
        &["mount.fips_mode_enabled = true # AWS_USE_FIPS_ENDPOINT"],
    );

    // EFS_UTILS_INCUMBENT_CONFIG names another INI file.
    let other = dir.path("other.conf");
    std::fs::write(&other, "[mount-watchdog]\npoll_interval_sec = 9\n").unwrap();
    let shown = check(&[("EFS_UTILS_INCUMBENT_CONFIG", other.as_os_str())]);
    assert_rows(
        &shown,
        &[
            "mount-watchdog.poll_interval_sec = 9 # efs-utils.conf",
            "mount.port_range_lower_bound = 20049 # default",
        ],
    );
}

/// Each `want` row ("key = value # origin", spaces squeezed) is in `config check`'s output.
fn assert_rows(shown: &str, want: &[&str]) {
    for w in want {
        let key = w.split(" = ").next().unwrap_or(w);
        let row = shown
            .lines()
            .find(|l| l.starts_with(&format!("{key} = ")))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "));
        assert_eq!(row.as_deref(), Some(*w), "{shown}");
    }
}
