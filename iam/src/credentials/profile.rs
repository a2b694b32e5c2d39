//! Named profiles: `~/.aws/credentials` and `~/.aws/config` (or `AWS_SHARED_CREDENTIALS_FILE`
//! and `AWS_CONFIG_FILE`), which profile is meant, and `credential_process`.
//!
//! The INI parser and the command-line splitter are pure functions (fuzzed later). A
//! `credential_process` runs only if the file that names it is owned by root or the
//! invoking user and is not group- or world-writable: nothing is executed because a file
//! said so unless someone who could run it anyway wrote it. It runs without a shell
//! (its command line is split here, POSIX-shell style, quotes but no expansions), with a
//! deadline and a bounded output.

use super::{
    AccessKeyId, Credentials, Env, Error, InvalidCredential, SecretAccessKey, SessionToken,
};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Largest `~/.aws` file read.
const MAX_FILE: u64 = 1024 * 1024;
/// Largest `credential_process` output read.
const MAX_PROCESS_OUTPUT: u64 = 64 * 1024;

/// One `[section]` of an INI file, keys lower-cased as Python's configparser does.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Section {
    pub name: String,
    pub entries: Vec<(String, String)>,
}

/// An AWS shared config or credentials file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ini {
    pub sections: Vec<Section>,
}

impl Ini {
    /// The value of `key` in section `section` (the last one if repeated).
    pub fn get(&self, section: &str, key: &str) -> Option<&str> {
        self.sections
            .iter()
            .filter(|s| s.name == section)
            .flat_map(|s| s.entries.iter())
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .next_back()
            .filter(|v| !v.is_empty())
    }

    pub fn has_section(&self, section: &str) -> bool {
        self.sections.iter().any(|s| s.name == section)
    }
}

/// Why an INI file is not one (1-based line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IniError {
    pub line: usize,
    pub what: &'static str,
}

impl std::fmt::Display for IniError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.what)
    }
}

/// Parses the AWS shared file format: `[name]` headers, `key = value` lines, `#`/`;`
/// comment lines; indented lines (nested settings such as `s3 =`) are skipped.
pub fn parse_ini(text: &str) -> Result<Ini, IniError> {
    let mut ini = Ini::default();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if raw.starts_with([' ', '\t']) && !ini.sections.is_empty() {
            continue; // a nested setting's continuation
        }
        let err = |what| IniError { line: i + 1, what };
        if let Some(header) = line.strip_prefix('[') {
            let name = header
                .strip_suffix(']')
                .ok_or_else(|| err("section header without ]"))?;
            ini.sections.push(Section {
                name: name.trim().to_string(),
                entries: Vec::new(),
            });
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| err("neither a [section] nor key = value"))?;
        let section = ini
            .sections
            .last_mut()
            .ok_or_else(|| err("key = value before any [section]"))?;
        section
            .entries
            .push((key.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    Ok(ini)
}

/// Where the two files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsFiles {
    pub credentials: PathBuf,
    pub config: PathBuf,
}

fn expand_home(p: &str, home: Option<&Path>) -> Option<PathBuf> {
    match p.strip_prefix("~/") {
        Some(rest) => home.map(|h| h.join(rest)),
        None => Some(PathBuf::from(p)),
    }
}

impl AwsFiles {
    /// `AWS_SHARED_CREDENTIALS_FILE` / `AWS_CONFIG_FILE`, else `~/.aws/credentials` and
    /// `~/.aws/config` of the invoking user.
    pub fn locate(env: &dyn Env) -> Result<AwsFiles, Error> {
        let home = env.home_dir();
        let pick = |var: &str, default: &str| match env.var(var) {
            Some(p) => expand_home(&p, home.as_deref()).ok_or(Error::NoHome),
            None => home
                .as_ref()
                .map(|h| h.join(".aws").join(default))
                .ok_or(Error::NoHome),
        };
        Ok(AwsFiles {
            credentials: pick("AWS_SHARED_CREDENTIALS_FILE", "credentials")?,
            config: pick("AWS_CONFIG_FILE", "config")?,
        })
    }
}

/// A file that was read (`ini` is empty when it does not exist).
#[derive(Debug, Clone)]
pub struct Loaded {
    pub path: PathBuf,
    pub exists: bool,
    pub ini: Ini,
}

/// Reads and parses one file; a missing file is an empty one.
pub fn load(path: &Path) -> Result<Loaded, Error> {
    let file_err = |reason: String| Error::File {
        path: path.to_path_buf(),
        reason,
    };
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Loaded {
                path: path.to_path_buf(),
                exists: false,
                ini: Ini::default(),
            })
        }
        Err(e) => return Err(file_err(e.to_string())),
    };
    let mut bytes = Vec::new();
    f.take(MAX_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| file_err(e.to_string()))?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(file_err("larger than 1 MiB".into()));
    }
    let text = String::from_utf8(bytes).map_err(|_| file_err("not UTF-8".into()))?;
    let ini = parse_ini(&text).map_err(|e| file_err(e.to_string()))?;
    Ok(Loaded {
        path: path.to_path_buf(),
        exists: true,
        ini,
    })
}

/// The section names a profile may have: in the credentials file `[NAME]`; in the
/// config file `[profile NAME]` (the AWS CLI's form) or `[NAME]` (which the incumbent
/// reads), and `[default]`.
pub fn section_names(profile: &str, config_file: bool) -> Vec<String> {
    if config_file && profile != "default" {
        vec![format!("profile {profile}"), profile.to_string()]
    } else {
        vec![profile.to_string()]
    }
}

/// The first of `names` with `key` set.
pub fn lookup<'a>(ini: &'a Ini, names: &[String], key: &str) -> Option<&'a str> {
    names.iter().find_map(|n| ini.get(n, key))
}

/// Static keys of a profile in one file, if it has them.
pub fn static_keys(
    loaded: &Loaded,
    profile: &str,
    config_file: bool,
) -> Option<Result<Credentials, InvalidCredential>> {
    let names = section_names(profile, config_file);
    let names = names.iter().find(|n| {
        loaded.ini.get(n, "aws_access_key_id").is_some()
            && loaded.ini.get(n, "aws_secret_access_key").is_some()
    })?;
    let ini = &loaded.ini;
    let get = |k| ini.get(names, k);
    Some((|| {
        Ok(Credentials::new(
            AccessKeyId::new(get("aws_access_key_id").unwrap_or_default())?,
            SecretAccessKey::new(get("aws_secret_access_key").unwrap_or_default())?,
            get("aws_session_token")
                .map(SessionToken::new)
                .transpose()?,
            None,
        ))
    })())
}

/// POSIX-shell-style word splitting without expansions: whitespace separates words,
/// `'...'` is literal, `"..."` keeps `\"`, `\\`, `\$` and `` \` `` escapes, `\` outside
/// quotes escapes the next character. `None` on an unclosed quote or a trailing `\`.
pub fn split_command_line(line: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next()? {
                        '\'' => break,
                        c => word.push(c),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next()? {
                        '"' => break,
                        '\\' => match chars.next()? {
                            c @ ('"' | '\\' | '$' | '`') => word.push(c),
                            '\n' => {}
                            c => {
                                word.push('\\');
                                word.push(c);
                            }
                        },
                        c => word.push(c),
                    }
                }
            }
            '\\' => {
                in_word = true;
                word.push(chars.next()?);
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Some(words)
}

/// A `credential_process`'s output:
/// `{"Version": 1, "AccessKeyId", "SecretAccessKey", "SessionToken"?, "Expiration"?}`.
pub fn parse_process_output(out: &str) -> Result<Credentials, String> {
    let v: serde_json::Value = serde_json::from_str(out).map_err(|e| format!("not JSON ({e})"))?;
    if v.get("Version").and_then(serde_json::Value::as_u64) != Some(1) {
        return Err("its output's Version is not 1".into());
    }
    let field = |name: &str| v.get(name).and_then(serde_json::Value::as_str);
    let need = |name: &'static str| field(name).ok_or(format!("its output has no {name}"));
    let invalid = |e: InvalidCredential| format!("its output's {e}");
    Ok(Credentials::new(
        AccessKeyId::new(need("AccessKeyId")?).map_err(invalid)?,
        SecretAccessKey::new(need("SecretAccessKey")?).map_err(invalid)?,
        field("SessionToken")
            .map(SessionToken::new)
            .transpose()
            .map_err(invalid)?,
        field("Expiration")
            .map(super::parse::parse_expiration)
            .transpose()
            .map_err(|e| e.to_string())?,
    ))
}

/// Is `path` safe to take a command from: owned by root or `uid`, not group- or
/// world-writable. `Err` says why not.
pub fn check_trusted(meta: &std::fs::Metadata, uid: u32) -> Result<(), String> {
    if meta.uid() != 0 && meta.uid() != uid {
        return Err(format!(
            "it is owned by uid {}, neither root nor the invoking user",
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "it is group- or world-writable (mode {:o})",
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

/// Runs a profile's `credential_process` taken from `file`, within `deadline`.
pub fn run_credential_process(
    profile: &str,
    file: &Path,
    command: &str,
    deadline: Duration,
) -> Result<Credentials, Error> {
    let fail = |reason: String| Error::CredentialProcess {
        profile: profile.to_string(),
        reason,
    };
    let meta = std::fs::metadata(file).map_err(|e| Error::File {
        path: file.to_path_buf(),
        reason: e.to_string(),
    })?;
    check_trusted(&meta, nix::unistd::getuid().as_raw()).map_err(|reason| {
        Error::UntrustedFile {
            path: file.to_path_buf(),
            reason,
        }
    })?;
    let argv = split_command_line(command).ok_or_else(|| fail("unclosed quote".into()))?;
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| fail("empty command".into()))?;
    let mut child = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| fail(format!("cannot start {program}: {e}")))?;
    let stdout = child.stdout.take();
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        if let Some(s) = stdout {
            // bounded; what is past the bound is drained so the child never blocks
            let mut s = s;
            let _ = (&mut s).take(MAX_PROCESS_OUTPUT + 1).read_to_end(&mut out);
            let _ = std::io::copy(&mut s, &mut std::io::sink());
        }
        out
    });
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if start.elapsed() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail(format!(
                    "{program} did not finish within {} ms",
                    deadline.as_millis()
                )));
            }
            Err(e) => return Err(fail(e.to_string())),
        }
    };
    let out = reader
        .join()
        .map_err(|_| fail("reading its output failed".into()))?;
    if !status.success() {
        return Err(fail(format!("{program} exited with {status}")));
    }
    if out.len() as u64 > MAX_PROCESS_OUTPUT {
        return Err(fail("its output is larger than 64 KiB".into()));
    }
    let text = String::from_utf8(out).map_err(|_| fail("its output is not UTF-8".into()))?;
    parse_process_output(&text).map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ini_as_the_aws_cli_writes_it() {
        let ini = parse_ini(
            "# comment\n[default]\naws_access_key_id = AKIA\nAWS_Secret_Access_Key=s=x\n\n; c\n[profile dev]\nregion = eu-west-1\ns3 =\n  max_concurrent_requests = 20\nrole_arn = arn\n",
        )
        .unwrap();
        assert_eq!(ini.get("default", "aws_access_key_id"), Some("AKIA"));
        assert_eq!(ini.get("default", "aws_secret_access_key"), Some("s=x"));
        assert_eq!(ini.get("profile dev", "role_arn"), Some("arn"));
        assert_eq!(ini.get("profile dev", "max_concurrent_requests"), None);
        assert_eq!(ini.get("dev", "role_arn"), None);
    }

    #[test]
    fn ini_errors_name_the_line() {
        assert_eq!(
            parse_ini("key = v\n").unwrap_err(),
            IniError {
                line: 1,
                what: "key = value before any [section]"
            }
        );
        assert_eq!(parse_ini("[a]\n[b\n").unwrap_err().line, 2);
        assert_eq!(parse_ini("[a]\njunk\n").unwrap_err().line, 2);
    }

    #[test]
    fn command_line_splitting() {
        let s = |l| split_command_line(l);
        assert_eq!(
            s(r#"/usr/bin/get-creds --profile "my dev" 'a b' c\ d"#).unwrap(),
            ["/usr/bin/get-creds", "--profile", "my dev", "a b", "c d"]
        );
        assert_eq!(s(r#""a\"b\\c\n""#).unwrap(), [r#"a"b\c\n"#]);
        assert_eq!(s("  ").unwrap(), Vec::<String>::new());
        assert_eq!(s("''").unwrap(), [""]);
        assert_eq!(s("$HOME;rm").unwrap(), ["$HOME;rm"]);
        assert!(s("'open").is_none());
        assert!(s("\"open").is_none());
        assert!(s("trailing\\").is_none());
    }

    #[test]
    fn process_output() {
        let c = parse_process_output(
            r#"{"Version":1,"AccessKeyId":"AKIAPROCESSEXAMPLE01","SecretAccessKey":"s"}"#,
        )
        .unwrap();
        assert_eq!(c.access_key_id.as_str(), "AKIAPROCESSEXAMPLE01");
        assert!(c.session_token().is_none());
        assert!(parse_process_output(
            r#"{"Version":2,"AccessKeyId":"AKIAPROCESSEXAMPLE01","SecretAccessKey":"s"}"#
        )
        .is_err());
    }

    #[test]
    fn home_expansion() {
        assert_eq!(
            expand_home("~/c", Some(Path::new("/root"))),
            Some(PathBuf::from("/root/c"))
        );
        assert_eq!(expand_home("/etc/c", None), Some(PathBuf::from("/etc/c")));
        assert_eq!(expand_home("~/c", None), None);
    }
}
