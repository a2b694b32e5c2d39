//! The state directory: one JSON file per TLS mount, read and written by `mount.efs`,
//! the watchdog and the status command. This module is the only place that knows a state
//! file's name, the mountpoint mangling inside it, and its schema (the incumbent copied
//! its mangling into two programs and shipped bug #218 when the copies drifted).
//!
//! * Name: `<fs_id>.<mangled mountpoint>.<port>`, as amazon-efs-utils names it, so that
//!   operators' and tools' habits carry over. Mangling: the absolute, lexically normalised
//!   path with `/` replaced by `.` and leading dots stripped (`/mnt/efs` -> `mnt.efs`,
//!   `/.efs` -> `efs`); spaces are kept.
//! * Written atomically: a temporary file in the same directory, fsync, rename, fsync of
//!   the directory. Files are 0640 in a 0750 directory.
//! * Fields another version wrote that this one does not know are kept on rewrite.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

/// `service_type` of EFS mounts (the incumbent also has S3 Files).
pub const SERVICE_TYPE_EFS: &str = "elasticfilesystem";

/// One TLS mount, as recorded in its state file. `Default` is only for the fields a new
/// record starts without (`..MountState::default()`): every writer sets the rest.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MountState {
    /// The tunnel's pid.
    pub pid: i32,
    /// The tunnel's command line, without the descriptors it inherits: whoever starts
    /// it appends `--listen-fd N` (and may add `--ready-fd N`).
    pub cmd: Vec<String>,
    /// Files to delete when the mount's tunnel is torn down.
    pub files: Vec<PathBuf>,
    /// Seconds since the epoch.
    pub mount_time: f64,
    /// As given to `mount.efs`.
    pub mountpoint: String,
    pub service_type: String,
    pub fs_id: String,
    /// The local port the tunnel listens on (127.0.0.1).
    pub port: u16,
    /// The file system's DNS name.
    pub dns_name: String,
    /// The name the server certificate must match.
    pub check_host: String,
    /// What the tunnel dials: `host:2049`.
    pub connect: String,
    /// The tunnel's control socket.
    pub control_socket: PathBuf,
    /// How many times the watchdog has restarted this mount's tunnel.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub restarts: u64,
    /// Set by the watchdog when the mount is gone, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unmount_time: Option<f64>,
    /// Set by `mount.efs` when the kernel's NFS client put this mount on the connection
    /// of another mount's tunnel (NFSv4.1 trunking: same server, same client): the port
    /// of that tunnel. Such a mount has no tunnel of its own (`pid` 0): the one it
    /// started was idle for good and was stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_by: Option<u16>,
    /// Kept by the watchdog on a mount whose tunnel also carries other mounts (those
    /// whose `served_by` is this port): their mountpoints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub also_serves: Vec<String>,
    /// With `iam` or `accesspoint`: the client certificate the tunnel presents, and what
    /// the watchdog needs to renew it. `None`: the tunnel presents none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<ClientCertRecord>,
    /// Anything else (fields of other versions), kept as it was.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// A mount's client certificate (`iam`, `accesspoint`): written by `mount.efs`, renewed
/// by the watchdog, shown by `efs-utils status`. The certificate is a file of its own,
/// [`client_cert_path`], mode 0600; the key is the host's (`[paths] private_key`).
/// Secrets are never recorded: renewal fetches credentials again from `iam_source`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientCertRecord {
    /// The PEM certificate the tunnel presents (`--client-cert`).
    pub certificate: PathBuf,
    /// The host's private key (`--client-key`).
    pub private_key: PathBuf,
    /// The certificate's subject CN (the host name, at most 64 characters).
    pub common_name: String,
    /// The region the IAM signature is scoped to.
    pub region: String,
    /// The access point (extension 7.1), if the mount has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_point: Option<String>,
    /// With `iam`: where the credentials came from, as `efs_iam::Source::method` writes
    /// it (the incumbent's `awsCredentialsMethod`, e.g. `metadata:`,
    /// `credentials:default`); the watchdog renews from the same source. `None`: no IAM
    /// extension (access point only), nothing to renew but the validity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iam_source: Option<String>,
    /// When the current certificate was issued, seconds since the epoch.
    pub issued: f64,
    /// When it stops being valid, seconds since the epoch.
    pub not_after: f64,
    /// When the credentials in it expire, if the source said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_expire: Option<f64>,
    /// Set by the watchdog: the last renewal that succeeded, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewed: Option<f64>,
    /// Set by the watchdog while renewal fails: the one-line error (never a secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_error: Option<String>,
}

/// Where a mount's client certificate lives: `<state file name>+/certificate.pem`, the
/// incumbent's layout. The directory is 0700 and holds nothing else; whoever removes
/// the certificate removes the directory too ([`remove_client_cert`]).
pub fn client_cert_path(state_dir: &Path, state_name: &str) -> PathBuf {
    state_dir
        .join(format!("{state_name}+"))
        .join("certificate.pem")
}

/// Removes a client certificate written at [`client_cert_path`] and its directory;
/// missing is fine.
pub fn remove_client_cert(certificate: &Path) -> io::Result<()> {
    match fs::remove_file(certificate) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if let Some(dir) = certificate.parent() {
        if dir
            .file_name()
            .is_some_and(|n| n.to_string_lossy().ends_with('+'))
        {
            match fs::remove_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// Atomically exchanges two existing names: `renameat2(a, b, RENAME_EXCHANGE)`, made as
/// the system call itself. glibc has a `renameat2` wrapper only since 2.28, and the
/// release binaries are built to run on glibc 2.17 and later (Amazon Linux 2 has 2.26;
/// docs/portability.md); the system call is in every kernel since 3.15.
fn exchange(a: &Path, b: &Path) -> Result<(), nix::errno::Errno> {
    use nix::libc;
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes());
    let (a, b) = match (c(a), c(b)) {
        (Ok(a), Ok(b)) => (a, b),
        _ => return Err(nix::errno::Errno::EINVAL),
    };
    // SAFETY: the two pointers are NUL-terminated strings that outlive the call, which
    // reads nothing else of this process's memory and writes none of it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    nix::errno::Errno::result(rc).map(drop)
}

/// Now, as state files record times: seconds since the epoch, with fractions.
pub fn unix_time() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// `/mnt/efs` -> `mnt.efs`, the incumbent's `get_file_safe_mountpoint_name`.
pub fn mangle_mountpoint(mountpoint: &Path) -> String {
    let abs = absolute(mountpoint);
    let text = abs.to_string_lossy().replace('/', ".");
    text.trim_start_matches('.').to_string()
}

/// The absolute path with `.` and `..` resolved lexically (Python's `os.path.abspath`).
fn absolute(p: &Path) -> PathBuf {
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .unwrap_or_else(|_| PathBuf::from("/"))
            .join(p)
    };
    let mut out = PathBuf::from("/");
    for c in joined.components() {
        match c {
            Component::Normal(s) => out.push(s),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// `<fs_id>.<mangled mountpoint>.<port>`.
pub fn state_file_name(fs_id: &str, mountpoint: &Path, port: u16) -> String {
    format!("{fs_id}.{}.{port}", mangle_mountpoint(mountpoint))
}

/// A tunnel's control socket: short and unique per port (a Unix socket path is limited to
/// 108 bytes, which a mangled mountpoint could exceed).
pub fn control_socket_path(state_dir: &Path, port: u16) -> PathBuf {
    state_dir.join(format!("tunnel-{port}.sock"))
}

/// Creates the state directory with `mode` if it does not exist.
pub fn ensure_state_dir(dir: &Path, mode: u32) -> io::Result<()> {
    match fs::DirBuilder::new().recursive(true).mode(mode).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    // The umask may have narrowed the mode; state must not be world-accessible either way.
    let current = fs::metadata(dir)?.permissions().mode() & 0o777;
    if current & 0o002 != 0 || current != mode {
        fs::set_permissions(dir, fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

impl MountState {
    /// Writes the state atomically as `dir/name`, mode 0640.
    pub fn write(&self, dir: &Path, name: &str) -> io::Result<PathBuf> {
        let path = dir.join(name);
        let tmp = dir.join(temp_name(name, "tmp"));
        let result = self.write_temp(&tmp).and_then(|()| {
            fs::rename(&tmp, &path)?;
            File::open(dir)?.sync_all()
        });
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map(|()| path)
    }

    /// Rewrites an existing state file atomically, and only if it still exists: the new
    /// text is written to a temporary file that is then *exchanged* with the state file
    /// (`renameat2(RENAME_EXCHANGE)`, which fails if either is missing). So a program
    /// that updates a state file (the watchdog) can never bring back one that another
    /// removed meanwhile (`mount.efs` undoing a failed mount, a teardown). Ok(false):
    /// it was gone; nothing is left behind either way.
    pub fn rewrite(&self, dir: &Path, name: &str) -> io::Result<bool> {
        let path = dir.join(name);
        let tmp = dir.join(temp_name(name, "new"));
        let result = self
            .write_temp(&tmp)
            .and_then(|()| match exchange(&tmp, &path) {
                Ok(()) => File::open(dir)?.sync_all().map(|()| true),
                Err(nix::errno::Errno::ENOENT) => Ok(false),
                Err(e) => Err(io::Error::from(e)),
            });
        // After the exchange the temporary name holds the old text; remove it either way.
        let _ = fs::remove_file(&tmp);
        result
    }

    /// The JSON in a new temporary file, mode 0640, flushed to disk. Created exclusively
    /// and never through a symlink (`O_EXCL|O_NOFOLLOW`): a name someone placed in the
    /// state directory is removed, not written through.
    fn write_temp(&self, tmp: &Path) -> io::Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        let _ = fs::remove_file(tmp); // a leftover of a crashed writer with our pid
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o640)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(tmp)?;
        f.write_all(&json)?;
        f.write_all(b"\n")?;
        f.sync_all()
    }

    /// Reads one state file.
    pub fn read(path: &Path) -> Result<MountState, StateError> {
        let text = fs::read(path)
            .map_err(|e| StateError::Unreadable(path.to_path_buf(), e.to_string()))?;
        let st: MountState = serde_json::from_slice(&text)
            .map_err(|e| StateError::Corrupt(path.to_path_buf(), e.to_string()))?;
        st.check()
            .map_err(|e| StateError::Corrupt(path.to_path_buf(), e))?;
        Ok(st)
    }

    /// What JSON can say but a state file cannot mean: every reader may then use the
    /// numbers as they are (a time of -1e20 s once made the watchdog panic).
    fn check(&self) -> Result<(), String> {
        let time = |name: &str, t: f64| {
            if t.is_finite() && (0.0..=1e11).contains(&t) {
                Ok(())
            } else {
                Err(format!("{name} {t} is not a time in seconds since 1970"))
            }
        };
        time("mount_time", self.mount_time)?;
        if let Some(t) = self.unmount_time {
            time("unmount_time", t)?;
        }
        if self.pid < 0 {
            return Err(format!("pid {} is negative", self.pid));
        }
        if self.port == 0 {
            return Err("port 0 is not a tunnel port".into());
        }
        Ok(())
    }
}

/// Whether a state file (or the state directory) may be acted on by root: a program that
/// executes a state file's `cmd` and deletes its `files` must only believe what root
/// wrote. It must be a regular file (no symlink), owned by `owner` (root: the watchdog's
/// own euid), and not writable by group or others; the same holds for the directory
/// (which must be a directory). The reason is one line for the log.
pub fn check_trusted(path: &Path, owner: u32) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let m = fs::symlink_metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if m.file_type().is_symlink() {
        // Said as such: a link is never followed, whatever it points to.
        return Err(format!(
            "{} is a symbolic link, not a regular file",
            path.display()
        ));
    }
    let kind_ok = m.file_type().is_file() || m.file_type().is_dir();
    if !kind_ok {
        return Err(format!(
            "{} is not a regular file or directory",
            path.display()
        ));
    }
    if m.uid() != owner {
        return Err(format!(
            "{} is owned by uid {}, not by root",
            path.display(),
            m.uid()
        ));
    }
    if m.mode() & 0o022 != 0 {
        return Err(format!(
            "{} is writable by group or others (mode {:o})",
            path.display(),
            m.mode() & 0o777
        ));
    }
    Ok(())
}

/// The temporary file a writer of `name` uses: `.NAME.KINDPID`, hidden and with the
/// writer's pid, so that one left by a writer that was killed can be told and removed.
fn temp_name(name: &str, kind: &str) -> String {
    format!(".{name}.{kind}{}", std::process::id())
}

/// The pid of the writer of a temporary state file name, if it is one.
pub fn temp_writer_pid(file_name: &str) -> Option<i32> {
    let rest = file_name.strip_prefix('.')?;
    ["tmp", "new"].iter().find_map(|kind| {
        let (_, pid) = rest.rsplit_once(&format!(".{kind}"))?;
        pid.parse().ok().filter(|p| *p > 0)
    })
}

/// The temporary files among `entries` (a listing of the state directory) whose writer
/// is gone (killed mid-write, driver issue #1940's way): never a state, only clutter;
/// whoever keeps the directory removes them. It takes the listing, not the directory, so
/// that the watchdog's rescan reads the directory once for state files and these.
pub fn stale_temp_files<'a>(entries: impl IntoIterator<Item = &'a fs::DirEntry>) -> Vec<PathBuf> {
    entries
        .into_iter()
        .filter_map(|e| {
            let pid = temp_writer_pid(&e.file_name().to_string_lossy())?;
            let gone = !Path::new(&format!("/proc/{pid}")).exists();
            (gone && e.file_type().is_ok_and(|t| t.is_file())).then(|| e.path())
        })
        .collect()
}

/// Why a state file could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateError {
    Unreadable(PathBuf, String),
    Corrupt(PathBuf, String),
}

impl std::fmt::Display for StateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StateError::Unreadable(p, e) => {
                write!(f, "cannot read state file {}: {e}", p.display())
            }
            StateError::Corrupt(p, e) => write!(
                f,
                "state file {} is not a valid mount state: {e}",
                p.display()
            ),
        }
    }
}

impl std::error::Error for StateError {}

/// True if `name` looks like a state file: `fs-…`. Temporary files start with a dot and
/// control sockets with `tunnel-`, so neither matches; a mountpoint under `/tmp` mangles
/// to `…tmp…` and must still match.
pub fn is_state_file_name(name: &str) -> bool {
    // `NAME+` is a mount's certificate directory ([`client_cert_path`]).
    name.starts_with("fs-") && !name.ends_with('+')
}

/// True if any state file in `dir` records this port (a second guard, next to the bound
/// socket itself, against reusing the port of a mount whose tunnel is down).
pub fn port_in_use_by_state(dir: &Path, port: u16) -> bool {
    let suffix = format!(".{port}");
    fs::read_dir(dir)
        .map(|entries| {
            entries.flatten().any(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                is_state_file_name(&name) && name.ends_with(&suffix)
            })
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mangles_like_the_incumbent() {
        assert_eq!(mangle_mountpoint(Path::new("/mnt/efs")), "mnt.efs");
        assert_eq!(mangle_mountpoint(Path::new("/.efs")), "efs");
        assert_eq!(mangle_mountpoint(Path::new("/")), "");
        assert_eq!(
            mangle_mountpoint(Path::new("/.hidden/.secret/data")),
            "hidden..secret.data"
        );
        assert_eq!(mangle_mountpoint(Path::new("/mnt/my efs")), "mnt.my efs");
        assert_eq!(mangle_mountpoint(Path::new("/mnt/./a/../efs/")), "mnt.efs");
        assert_eq!(
            state_file_name("fs-deadbeef", Path::new("/mnt/efs"), 20123),
            "fs-deadbeef.mnt.efs.20123"
        );
    }

    fn sample() -> MountState {
        MountState {
            pid: 1234,
            cmd: vec![
                "/usr/bin/efs-tunnel".into(),
                "--connect".into(),
                "x:2049".into(),
            ],
            files: vec![],
            mount_time: 1_700_000_000.5,
            mountpoint: "/mnt/efs".into(),
            service_type: SERVICE_TYPE_EFS.into(),
            fs_id: "fs-deadbeef".into(),
            port: 20123,
            dns_name: "fs-deadbeef.efs.us-east-1.amazonaws.com".into(),
            check_host: "fs-deadbeef.efs.us-east-1.amazonaws.com".into(),
            connect: "fs-deadbeef.efs.us-east-1.amazonaws.com:2049".into(),
            control_socket: "/var/run/efs/tunnel-20123.sock".into(),
            restarts: 0,
            unmount_time: None,
            served_by: None,
            also_serves: Vec::new(),
            client_cert: None,
            extra: Default::default(),
        }
    }

    #[test]
    fn writes_atomically_privately_and_round_trips_unknown_fields() {
        let dir = std::env::temp_dir().join(format!("efs-state-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        ensure_state_dir(&dir, 0o750).unwrap();
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o750
        );

        let mut st = sample();
        st.extra
            .insert("certificate".into(), serde_json::json!("/x/cert.pem"));
        let path = st.write(&dir, "fs-deadbeef.mnt.efs.20123").unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o640
        );
        let back = MountState::read(&path).unwrap();
        assert_eq!(back, st);
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"certificate\""), "{text}");
        // Only the state file is left: no temporary.
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        assert!(port_in_use_by_state(&dir, 20123));
        assert!(
            is_state_file_name("fs-1.tmp.mnt.efs.20049"),
            "a mountpoint under /tmp"
        );
        assert!(!is_state_file_name(".fs-1.mnt.20049.tmp42"));
        assert!(!is_state_file_name("tunnel-20049.sock"));
        assert!(!is_state_file_name("fs-1.mnt.efs.20049+"));
        assert!(!port_in_use_by_state(&dir, 20124));
        // A rewrite replaces the file in place, and never brings back a removed one.
        st.restarts = 7;
        assert!(st.rewrite(&dir, "fs-deadbeef.mnt.efs.20123").unwrap());
        assert_eq!(MountState::read(&path).unwrap().restarts, 7);
        fs::remove_file(&path).unwrap();
        assert!(!st.rewrite(&dir, "fs-deadbeef.mnt.efs.20123").unwrap());
        assert!(!path.exists());
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0, "no temporary left");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_files_and_directories_only_their_owner_may_write_are_trusted() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("efs-state-trust-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        ensure_state_dir(&dir, 0o750).unwrap();
        let me = nix::unistd::geteuid().as_raw();
        let p = dir.join("fs-1.mnt.20049");
        fs::write(&p, "{}").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(check_trusted(&p, me), Ok(()));
        assert_eq!(check_trusted(&dir, me), Ok(()));
        assert!(check_trusted(&p, me + 1)
            .unwrap_err()
            .contains("not by root"));
        fs::set_permissions(&p, fs::Permissions::from_mode(0o660)).unwrap();
        assert!(check_trusted(&p, me).unwrap_err().contains("mode 660"));
        // Group-writable only (0757 would be world-writable too).
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o770)).unwrap();
        assert!(check_trusted(&dir, me)
            .unwrap_err()
            .contains("writable by group or others (mode 770)"));
        let link = dir.join("fs-2.mnt.20050");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        let why = check_trusted(&link, me).unwrap_err();
        assert!(
            why.contains("is a symbolic link, not a regular file"),
            "{why}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn temporaries_of_writers_that_died_are_found_and_only_those() {
        let dir = std::env::temp_dir().join(format!("efs-state-stale-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        assert_eq!(temp_writer_pid(".fs-1.mnt.efs.20049.tmp1234"), Some(1234));
        assert_eq!(temp_writer_pid(".fs-1.mnt.efs.20049.new77"), Some(77));
        assert_eq!(temp_writer_pid("fs-1.mnt.efs.20049"), None);
        assert_eq!(temp_writer_pid(".fs-1.mnt.efs.20049.tmpx"), None);
        // A pid that cannot be running (above the kernel's pid_max limit).
        let dead = dir.join(".fs-1.mnt.a.20049.tmp999999999");
        let alive = dir.join(format!(".fs-1.mnt.b.20050.tmp{}", std::process::id()));
        let state = dir.join("fs-1.mnt.c.20051");
        for p in [&dead, &alive, &state] {
            fs::write(p, "{").unwrap();
        }
        let listing: Vec<fs::DirEntry> = fs::read_dir(&dir).unwrap().flatten().collect();
        assert_eq!(stale_temp_files(&listing), vec![dead]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn corrupt_files_are_errors_not_panics() {
        let dir = std::env::temp_dir().join(format!("efs-state-corrupt-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("fs-1.mnt.20049");
        fs::write(&p, "{not json").unwrap();
        assert!(matches!(MountState::read(&p), Err(StateError::Corrupt(..))));
        fs::write(&p, "{\"pid\": 1}").unwrap();
        assert!(matches!(MountState::read(&p), Err(StateError::Corrupt(..))));
        for (field, value) in [
            ("mount_time", "-1e20"),
            ("mount_time", "1e300"),
            ("pid", "-5"),
            ("port", "0"),
        ] {
            let mut v = serde_json::to_value(sample()).unwrap();
            v[field] = serde_json::from_str(value).unwrap();
            fs::write(&p, v.to_string()).unwrap();
            match MountState::read(&p) {
                Err(StateError::Corrupt(_, why)) => assert!(why.contains(field), "{why}"),
                other => panic!("{field} = {value}: {other:?}"),
            }
        }
        assert!(matches!(
            MountState::read(&dir.join("missing")),
            Err(StateError::Unreadable(..))
        ));
        fs::remove_dir_all(&dir).unwrap();
    }
}
