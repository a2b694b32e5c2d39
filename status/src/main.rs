//! `efs-utils`: operator commands: `status [--json]`, `config check [FILE]`,
//! `config import INI_FILE [--output FILE]`.

use std::process::ExitCode;

const USAGE: &str = "Usage: efs-utils status [--json]
       efs-utils config check [FILE]
       efs-utils config import INI_FILE [--output FILE]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let json = args.iter().any(|a| a == "--json");
    match args.first().map(String::as_str) {
        Some("status") => {}
        Some("config") => return config(&args[1..]),
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

/// `config check [FILE]` and `config import INI [--output FILE]`.
fn config(args: &[String]) -> ExitCode {
    match (args.first().map(String::as_str), args.get(1)) {
        (Some("check"), file) => {
            let loaded = match file {
                Some(f) => efs_config::Config::load_from(std::path::Path::new(f)),
                None => efs_config::Config::load(),
            };
            let cfg = match loaded {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(1);
                }
            };
            match &cfg.source {
                Some(p) => println!("# effective configuration from {}", p.display()),
                None => println!("# no configuration file: every value is a default"),
            }
            let width = cfg
                .settings()
                .iter()
                .map(|s| s.key.len() + s.value.len() + 3)
                .max()
                .unwrap_or(0);
            for s in cfg.settings() {
                println!(
                    "{:<width$}  # {}",
                    format!("{} = {}", s.key, s.value),
                    s.source
                );
            }
            for ca in [cfg.mount.stunnel_cafile.as_deref()].into_iter().flatten() {
                if !ca.exists() {
                    println!(
                        "# note: mount.stunnel_cafile {} does not exist on this machine",
                        ca.display()
                    );
                }
            }
            for w in &cfg.warnings {
                println!("# warning: {w}");
            }
            ExitCode::SUCCESS
        }
        (Some("import"), Some(input)) => {
            let text = match std::fs::read_to_string(input) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("cannot read {input}: {e}");
                    return ExitCode::from(1);
                }
            };
            let imported = efs_config::import::import_ini(&text, input);
            let output = args
                .iter()
                .position(|a| a == "--output")
                .and_then(|i| args.get(i + 1));
            match output {
                Some(path) => {
                    if let Err(e) = std::fs::write(path, &imported.toml) {
                        eprintln!("cannot write {path}: {e}");
                        return ExitCode::from(1);
                    }
                }
                None => print!("{}", imported.toml),
            }
            for n in &imported.not_carried {
                eprintln!("not carried over: {n}");
            }
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(1)
        }
    }
}
