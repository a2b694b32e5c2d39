//! `efs-utils`: operator commands: `status [--json]`, `config check [FILE]`,
//! `config import INI_FILE [--output FILE]`.
//!
//! The command line is clap's, read with `args_os`: file arguments are paths and may be
//! any bytes; any other argument that is not UTF-8 is one line on stderr and exit 1, as
//! is every usage error (exit 1, as amazon-efs-utils' tools). `--version` prints the
//! incumbent's `efs-utils Version: X` line, not clap's.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser, Subcommand};
use efs_config::keys::Effect;
use efs_config::Config;

#[derive(Parser)]
#[command(
    name = "efs-utils",
    about = "See EFS mounts' encryption and tunnel health; check and import configuration",
    disable_version_flag = true,
    arg_required_else_help = true
)]
struct Cli {
    /// Print the version
    #[arg(long)]
    version: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Every EFS mount: TLS or plain, tunnel health, TLS version, certificate expiry
    Status {
        /// JSON, for scripts
        #[arg(long)]
        json: bool,
    },
    /// Check or import configuration
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate the configuration and print every effective value and its origin
    Check {
        /// The file to check (default: EFS_UTILS_CONFIG, else /etc/amazon/efs/efs-utils.toml)
        file: Option<PathBuf>,
    },
    /// Convert amazon-efs-utils' efs-utils.conf to efs-utils.toml
    Import {
        /// The incumbent's INI file
        input: PathBuf,
        /// Write the TOML here instead of to stdout
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e, &args),
    };
    if cli.version {
        println!("efs-utils Version: {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    match cli.command {
        Some(Command::Status { json }) => status(json),
        Some(Command::Config(ConfigCommand::Check { file })) => check(file.as_deref()),
        Some(Command::Config(ConfigCommand::Import { input, output })) => {
            import(&input, output.as_deref())
        }
        None => {
            eprint!("{}", Cli::command().render_help());
            ExitCode::from(1)
        }
    }
}

/// Help goes to stdout with success; a usage error to stderr with exit 1, and a
/// non-UTF-8 argument (where text is wanted) as one line naming it.
fn usage_error(e: &clap::Error, args: &[OsString]) -> ExitCode {
    if matches!(e.kind(), ErrorKind::DisplayHelp) {
        print!("{e}");
        return ExitCode::SUCCESS;
    }
    if let Some(bad) = args.iter().skip(1).find(|a| a.to_str().is_none()) {
        eprintln!("efs-utils: argument {bad:?} is not valid UTF-8: see efs-utils --help");
    } else {
        eprint!("{e}");
    }
    ExitCode::from(1)
}

fn status(json: bool) -> ExitCode {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("only root can run efs-utils status (tunnel control sockets are root's)");
        return ExitCode::from(1);
    }
    let cfg = match Config::load() {
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

/// `config check [FILE]`: every effective value, its origin, and whether it does anything.
/// Without FILE, what the programs see (efs-utils.conf and efs-utils.toml over the
/// defaults, and the environment); with FILE, that TOML file alone over the defaults.
fn check(file: Option<&Path>) -> ExitCode {
    let loaded = match file {
        Some(f) => Config::load_from(f),
        None => Config::load(),
    };
    let cfg = match loaded {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    let files: Vec<String> = [&cfg.incumbent_source, &cfg.source]
        .into_iter()
        .flatten()
        .map(|p| p.display().to_string())
        .collect();
    if files.is_empty() {
        println!("# no configuration file: every value is a default");
    } else {
        println!(
            "# effective configuration: the defaults, then {} (a later file wins for what it sets)",
            files.join(", then ")
        );
    }
    let settings = cfg.settings();
    let width = settings
        .iter()
        .map(|s| s.key.len() + s.value.len() + 3)
        .max()
        .unwrap_or(0);
    for s in &settings {
        let note = match s.effect {
            Effect::NoneYet => format!("; {}", s.effect),
            Effect::ReadBy(_) => String::new(),
        };
        println!(
            "{:<width$}  # {}{note}",
            format!("{} = {}", s.key, s.value),
            s.origin
        );
    }
    if let Some(ca) = cfg
        .mount
        .stunnel_cafile
        .as_deref()
        .filter(|ca| !ca.exists())
    {
        println!(
            "# note: mount.stunnel_cafile {} does not exist on this machine",
            ca.display()
        );
    }
    for w in &cfg.warnings {
        println!("# warning: {w}");
    }
    ExitCode::SUCCESS
}

/// `config import INI [--output FILE]`: the TOML to stdout or FILE, the report to stderr.
fn import(input: &Path, output: Option<&Path>) -> ExitCode {
    let text = match std::fs::read_to_string(input) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("cannot read {}: {e}", input.display());
            return ExitCode::from(1);
        }
    };
    let imported = efs_config::import::import_ini(&text, &input.display().to_string());
    match output {
        Some(path) => {
            if let Err(e) = std::fs::write(path, &imported.toml) {
                eprintln!("cannot write {}: {e}", path.display());
                return ExitCode::from(1);
            }
        }
        None => print!("{}", imported.toml),
    }
    for n in &imported.not_carried {
        eprintln!("not carried over: {n}");
    }
    for n in &imported.no_effect {
        eprintln!("{}: {n}", Effect::NoneYet);
    }
    ExitCode::SUCCESS
}
