//! The log format every efs-utils program writes, and its size-rotated log files.
//!
//! Lines look like the incumbent's, so that operators' `grep`s keep working:
//! `2024-05-20 12:37:54 UTC - INFO - Successfully mounted ... at /mnt/efs`.
//! A file target rotates by size (`logging_max_bytes`, `logging_file_count`) the way
//! Python's `RotatingFileHandler` does: `mount.log`, `mount.log.1`, ... `mount.log.N`.
//! Files are created with mode 0640: logs may name hosts and paths, and are never
//! world-writable.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use log::{LevelFilter, Log, Metadata, Record};

/// A log file that is rotated once it would grow past `max_bytes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotatingFile {
    pub path: PathBuf,
    /// Rotate before a write would take the file past this size; 0 never rotates.
    pub max_bytes: u64,
    /// How many rotated files (`.1` .. `.N`) to keep.
    pub file_count: u32,
}

/// Where log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSpec {
    pub level: LevelFilter,
    pub file: Option<RotatingFile>,
    /// Also write every line to stderr (foreground tools, and the journal under systemd).
    pub stderr: bool,
}

/// Formats one log line, without the trailing newline.
pub fn format_line(now: SystemTime, level: log::Level, message: &str) -> String {
    let secs = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("{} - {} - {}", format_utc(secs), level, message)
}

/// `YYYY-MM-DD HH:MM:SS UTC` for a Unix time in seconds.
pub fn format_utc(unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let rem = unix_secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

struct FileSink {
    spec: RotatingFile,
    file: Option<File>,
    size: u64,
}

impl FileSink {
    fn open(spec: RotatingFile) -> io::Result<FileSink> {
        if let Some(dir) = spec.path.parent() {
            fs::create_dir_all(dir)?;
        }
        let file = open_append(&spec.path)?;
        let size = file.metadata()?.len();
        Ok(FileSink {
            spec,
            file: Some(file),
            size,
        })
    }

    fn write_line(&mut self, line: &str) {
        self.follow_rotation();
        let len = line.len() as u64 + 1;
        if self.spec.max_bytes > 0 && self.size > 0 && self.size + len > self.spec.max_bytes {
            self.rotate();
        }
        if let Some(file) = self.file.as_mut() {
            // O_APPEND and one write per line keep lines whole when several processes
            // (parallel mounts) share one log file.
            let mut buf = String::with_capacity(line.len() + 1);
            buf.push_str(line);
            buf.push('\n');
            if file.write_all(buf.as_bytes()).is_ok() {
                self.size += len;
            }
        }
    }

    /// Several processes share one log file (parallel mounts, every tunnel). When another
    /// one has rotated it, our descriptor points at `name.1`: reopen `name`.
    fn follow_rotation(&mut self) {
        use std::os::unix::fs::MetadataExt;
        let ours = self
            .file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map(|m| (m.dev(), m.ino()));
        let on_disk = fs::metadata(&self.spec.path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        if ours.is_none() || ours != on_disk {
            if let Ok(f) = open_append(&self.spec.path) {
                self.size = f.metadata().map(|m| m.len()).unwrap_or(0);
                self.file = Some(f);
            }
        }
    }

    fn rotate(&mut self) {
        self.file = None;
        let path = &self.spec.path;
        if self.spec.file_count == 0 {
            let _ = fs::remove_file(path);
        } else {
            for n in (1..self.spec.file_count).rev() {
                let _ = fs::rename(numbered(path, n), numbered(path, n + 1));
            }
            let _ = fs::rename(path, numbered(path, 1));
        }
        self.file = open_append(path).ok();
        self.size = 0;
    }
}

fn numbered(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// Opens a log file for appending, never through a symlink (`O_NOFOLLOW`): the log
/// directory is root's, but a link planted there must not make root append to another
/// file.
fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
}

struct Logger {
    stderr: bool,
    file: Option<Mutex<FileSink>>,
}

impl Log for Logger {
    /// The level is the `log` crate's global one, so that a program may change it while
    /// it runs (the watchdog does on SIGHUP). The HTTP client's own debug lines are never
    /// written: they carry request headers (an IMDS token, an STS session token), and
    /// secrets are never logged.
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
            && !(metadata.level() > log::Level::Info && metadata.target().starts_with("ureq"))
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = format_line(
            SystemTime::now(),
            record.level(),
            &record.args().to_string(),
        );
        if let Some(file) = &self.file {
            if let Ok(mut sink) = file.lock() {
                sink.write_line(&line);
            }
        }
        if self.stderr {
            let _ = writeln!(io::stderr().lock(), "{line}");
        }
    }

    fn flush(&self) {}
}

/// Installs the process-wide logger. Fails only if the log file cannot be opened; the
/// caller decides whether that is fatal (a mount should still work without its log).
pub fn init(spec: LogSpec) -> io::Result<()> {
    let file = match spec.file {
        Some(f) => Some(Mutex::new(FileSink::open(f)?)),
        None => None,
    };
    let logger = Logger {
        stderr: spec.stderr,
        file,
    };
    log::set_max_level(spec.level);
    // A second init in one process (tests) keeps the first logger; that is harmless.
    let _ = log::set_boxed_logger(Box::new(logger));
    Ok(())
}

/// Parses a `logging_level` value the way the incumbent does (case-insensitive).
pub fn parse_level(value: &str) -> Option<LevelFilter> {
    match value.to_ascii_lowercase().as_str() {
        "debug" => Some(LevelFilter::Debug),
        "info" => Some(LevelFilter::Info),
        "warning" | "warn" => Some(LevelFilter::Warn),
        "error" | "critical" => Some(LevelFilter::Error),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_like_the_incumbent() {
        let t = UNIX_EPOCH + Duration::from_secs(1_716_208_674);
        assert_eq!(
            format_line(t, log::Level::Info, "hello"),
            "2024-05-20 12:37:54 UTC - INFO - hello"
        );
        assert_eq!(format_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_utc(4_102_444_799), "2099-12-31 23:59:59 UTC");
    }

    #[test]
    fn rotates_by_size_and_keeps_file_count() {
        let dir = std::env::temp_dir().join(format!("efs-log-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let path = dir.join("mount.log");
        let mut sink = FileSink::open(RotatingFile {
            path: path.clone(),
            max_bytes: 100,
            file_count: 2,
        })
        .unwrap();
        for i in 0..10 {
            sink.write_line(&format!("{i:040}"));
        }
        assert!(path.exists());
        assert!(numbered(&path, 1).exists());
        assert!(numbered(&path, 2).exists());
        assert!(!numbered(&path, 3).exists());
        for p in [path.clone(), numbered(&path, 1)] {
            assert!(fs::metadata(&p).unwrap().len() <= 100);
        }
        let last = fs::read_to_string(&path).unwrap();
        assert!(last.ends_with(&format!("{:040}\n", 9)));

        // Another process rotates the file under us: we follow to the new file.
        fs::rename(&path, numbered(&path, 1)).unwrap();
        sink.write_line("after someone else rotated");
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "after someone else rotated\n"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o002, 0, "log file must not be world-writable");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_log_file_is_never_opened_through_a_symlink() {
        let dir = std::env::temp_dir().join(format!("efs-log-link-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let target = dir.join("elsewhere");
        fs::write(&target, "untouched").unwrap();
        std::os::unix::fs::symlink(&target, dir.join("mount.log")).unwrap();
        assert!(open_append(&dir.join("mount.log")).is_err());
        assert_eq!(fs::read_to_string(&target).unwrap(), "untouched");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_http_clients_debug_lines_are_never_enabled() {
        let logger = Logger {
            stderr: false,
            file: None,
        };
        log::set_max_level(LevelFilter::Trace);
        let meta = |level, target| Metadata::builder().level(level).target(target).build();
        assert!(!logger.enabled(&meta(log::Level::Debug, "ureq::unit")));
        assert!(logger.enabled(&meta(log::Level::Warn, "ureq::unit")));
        assert!(logger.enabled(&meta(log::Level::Debug, "efs_watchdog::daemon")));
    }

    #[test]
    fn levels_parse_case_insensitively() {
        assert_eq!(parse_level("INFO"), Some(LevelFilter::Info));
        assert_eq!(parse_level("Warning"), Some(LevelFilter::Warn));
        assert_eq!(parse_level("critical"), Some(LevelFilter::Error));
        assert_eq!(parse_level("loud"), None);
    }
}
