//! `efs-utils`: operator commands. Today: `efs-utils status [--json]`.

use std::process::ExitCode;

const USAGE: &str = "Usage: efs-utils status [--json]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let json = args.iter().any(|a| a == "--json");
    match args.first().map(String::as_str) {
        Some("status") => {}
        Some("--version") => {
            println!("efs-utils Version: {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Some("-h" | "--help") => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(1);
        }
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("only root can run efs-utils status (tunnel control sockets are root's)");
        return ExitCode::from(1);
    }
    let cfg = match efs_config::Config::load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("efs-utils: {e}");
            return ExitCode::from(1);
        }
    };
    let report = efs_utils::report(&cfg);
    if json {
        match serde_json::to_string_pretty(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("efs-utils: {e}");
                return ExitCode::from(1);
            }
        }
    } else {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        print!("{}", efs_utils::render(&report, now));
    }
    ExitCode::SUCCESS
}
