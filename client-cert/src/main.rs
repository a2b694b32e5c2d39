//! `efs-renew-cert`: renews one mount's client certificate for the watchdog, which runs
//! it (no shell, no arguments) with an [`efs_config::renewal::Job`] as JSON on stdin and
//! reads one [`efs_config::renewal::Answer`] line from stdout. It writes the certificate
//! file itself ([`efs_client_cert::renew`]); it exits 0 when it did, 1 when not (the
//! answer says why), and it is killed if it takes longer than the watchdog waits (it
//! also ends itself after `OWN_DEADLINE_SECS`, should the watchdog be gone).
//!
//! It reads no configuration (the job carries what the watchdog has loaded), logs
//! nothing (the answer is the one line the watchdog logs and records), and takes its
//! environment from the watchdog: `HOME`, `AWS_SHARED_CREDENTIALS_FILE` and
//! `AWS_CONFIG_FILE` for profiles.

use std::io::{Read, Write};
use std::process::ExitCode;

use efs_config::renewal::{Answer, Job, MAX_JOB};
use efs_iam::ProcessEnv;

const USAGE: &str = "Usage: efs-renew-cert [--version] [-h|--help] < JOB";
/// Its own limit, past the watchdog's (60 s, `renew::RENEWER_DEADLINE`): should the
/// watchdog be gone while it runs, nothing is left running for long. SIGALRM's default
/// action ends it.
const OWN_DEADLINE_SECS: u32 = 120;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!(
            "{USAGE}\nRenews the client certificate of one EFS mount (iam, accesspoint): amazon-efs-mount-watchdog runs it with the job as JSON on stdin, and reads one JSON answer from stdout."
        );
        return ExitCode::SUCCESS;
    }
    if args.iter().any(|a| a == "--version") {
        println!("efs-renew-cert Version: {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    if let Some(other) = args.first() {
        eprintln!("unexpected argument \"{other}\"\n{USAGE}");
        return ExitCode::from(2);
    }
    let _ = nix::unistd::alarm::set(OWN_DEADLINE_SECS);
    let answer = match read_job()
        .and_then(|job| efs_client_cert::renew::renew(&job, &ProcessEnv).map_err(|e| e.to_string()))
    {
        Ok(renewed) => Answer::Ok(renewed),
        Err(e) => Answer::Error(e),
    };
    let mut out = std::io::stdout().lock();
    let said = out
        .write_all(answer.to_line().as_bytes())
        .and_then(|()| out.flush());
    match (answer, said) {
        (Answer::Ok(_), Ok(())) => ExitCode::SUCCESS,
        _ => ExitCode::from(1),
    }
}

/// The job on stdin, at most [`MAX_JOB`] bytes.
fn read_job() -> Result<Job, String> {
    let mut buf = Vec::new();
    std::io::stdin()
        .lock()
        .take(MAX_JOB as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot read the job: {e}"))?;
    Job::parse(&buf)
}
