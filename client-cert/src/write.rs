//! The one writer of a client certificate file, for `mount.efs` ([`write_new`], which
//! first makes the mount's directory) and every renewal ([`CertDir`], which writes in
//! the directory it opened before the renewal fetched anything).
//!
//! The file is `<state dir>/<state name>+/certificate.pem` (`state::client_cert_path`,
//! the incumbent's layout), and it is always replaced whole: a temporary
//! ([`efs_config::renewal::TEMP_NAME`] and the pid, 0600, `O_EXCL|O_NOFOLLOW`: never through a
//! symlink) in the same directory, fsync, rename over the certificate, fsync of the
//! directory. A tunnel reading it on SIGHUP sees the old certificate or the new one,
//! never half of one. A state file is not trusted to name arbitrary files: only a
//! certificate in a `NAME+` directory directly in the state directory is written
//! ([`efs_config::renewal::inside_state_dir`]), and only if that directory is this
//! user's alone (`state::check_trusted`: no symlink, not group- or world-writable).

use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use efs_config::renewal::{inside_state_dir, DirId, TEMP_NAME};

/// This process's temporary name in a certificate's directory.
fn temp_name() -> String {
    format!("{TEMP_NAME}.{}", std::process::id())
}
use efs_config::state;

/// Why a certificate was not written. Nothing was replaced.
#[derive(Debug)]
pub enum WriteError {
    /// Not a certificate in a `NAME+` directory of the state directory.
    OutsideStateDir {
        certificate: PathBuf,
        state_dir: PathBuf,
    },
    /// Something other than a directory is where the certificate's directory must be.
    NotADirectory(PathBuf),
    /// The directory is not this user's alone (`state::check_trusted`'s reason).
    Untrusted(String),
    /// The directory is not the one the renewal was asked for: its mount was unmounted
    /// and a new mount of the same name made it again meanwhile.
    Replaced(PathBuf),
    Io {
        path: PathBuf,
        error: io::Error,
    },
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteError::OutsideStateDir {
                certificate,
                state_dir,
            } => write!(
                f,
                "{} is not a certificate in the state directory {}; not writing it",
                certificate.display(),
                state_dir.display()
            ),
            WriteError::NotADirectory(dir) => {
                write!(f, "{} exists and is not a directory", dir.display())
            }
            WriteError::Untrusted(why) => write!(f, "{why}"),
            WriteError::Replaced(dir) => write!(
                f,
                "{} belongs to a newer mount than the one this renewal was for; not writing in it",
                dir.display()
            ),
            WriteError::Io { path, error } => write!(f, "cannot write {}: {error}", path.display()),
        }
    }
}

impl std::error::Error for WriteError {}

/// The directory `certificate` would be written in, if it may be: in the state
/// directory, and this user's alone. It is never created here.
pub fn check_target<'a>(state_dir: &Path, certificate: &'a Path) -> Result<&'a Path, WriteError> {
    let outside = || WriteError::OutsideStateDir {
        certificate: certificate.to_path_buf(),
        state_dir: state_dir.to_path_buf(),
    };
    if !inside_state_dir(state_dir, certificate) {
        return Err(outside());
    }
    let dir = certificate.parent().ok_or_else(outside)?;
    state::check_trusted(dir, nix::unistd::geteuid().as_raw()).map_err(WriteError::Untrusted)?;
    Ok(dir)
}

/// Writes `pem` over `certificate` atomically (see the module doc). Its directory must
/// exist, in the state directory, and be this user's alone.
pub fn write_certificate(
    state_dir: &Path,
    certificate: &Path,
    pem: &str,
) -> Result<(), WriteError> {
    CertDir::open(state_dir, certificate, None)?.write(pem)
}

/// A renewal's certificate directory, opened once before anything is fetched: the
/// certificate is then written relative to this open directory, so a renewal whose
/// mount was torn down meanwhile writes nowhere (a removed directory takes no new
/// file), and never into a new mount's directory of the same name.
#[derive(Debug)]
pub struct CertDir {
    fd: std::os::fd::OwnedFd,
    certificate: PathBuf,
}

impl CertDir {
    /// Opens the directory of `certificate` (as [`check_target`] allows it), and checks
    /// that it is `expected`, the one the renewal was asked for, when that is known.
    pub fn open(
        state_dir: &Path,
        certificate: &Path,
        expected: Option<DirId>,
    ) -> Result<CertDir, WriteError> {
        use nix::fcntl::OFlag;
        let dir = check_target(state_dir, certificate)?;
        let io_err = |e: nix::errno::Errno| WriteError::Io {
            path: dir.to_path_buf(),
            error: e.into(),
        };
        let fd = nix::fcntl::open(
            dir,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(io_err)?;
        let st = nix::sys::stat::fstat(&fd).map_err(io_err)?;
        let here = DirId {
            dev: st.st_dev as u64,
            ino: st.st_ino as u64,
        };
        if expected.is_some_and(|e| e != here) {
            return Err(WriteError::Replaced(dir.to_path_buf()));
        }
        Ok(CertDir {
            fd,
            certificate: certificate.to_path_buf(),
        })
    }

    /// Writes `pem` over the certificate, atomically (see the module doc), in this
    /// directory.
    pub fn write(&self, pem: &str) -> Result<(), WriteError> {
        use nix::fcntl::{openat, renameat, OFlag};
        use nix::sys::stat::Mode;
        use nix::unistd::{unlinkat, UnlinkatFlags};
        let io_err = |error: io::Error| WriteError::Io {
            path: self.certificate.clone(),
            error,
        };
        let name = self
            .certificate
            .file_name()
            .ok_or_else(|| io_err(io::ErrorKind::InvalidInput.into()))?;
        // One temporary per writer (a renewer left running by a restarted watchdog may
        // write at the same time as the next one's): `TEMP_NAME.<pid>`.
        let tmp = temp_name();
        let _ = unlinkat(&self.fd, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
        let written = (|| -> io::Result<()> {
            let fd = openat(
                &self.fd,
                tmp.as_str(),
                OFlag::O_WRONLY
                    | OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o600),
            )?;
            let mut f = std::fs::File::from(fd);
            // The umask cannot widen 0600, but a narrower one is fine; be explicit anyway.
            f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            f.write_all(pem.as_bytes())?;
            f.sync_all()?;
            renameat(&self.fd, tmp.as_str(), &self.fd, name)?;
            nix::unistd::fsync(&self.fd)?;
            Ok(())
        })();
        if written.is_err() {
            let _ = unlinkat(&self.fd, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
        }
        written.map_err(io_err)
    }
}

/// `mount.efs`: makes the certificate's directory (0700; a leftover real directory of a
/// mount that was never torn down is reused, its stale certificate replaced; anything
/// else there fails), then writes as [`write_certificate`]. On failure, a directory made
/// here is removed again.
pub fn write_new(state_dir: &Path, certificate: &Path, pem: &str) -> Result<(), WriteError> {
    if !inside_state_dir(state_dir, certificate) {
        return Err(WriteError::OutsideStateDir {
            certificate: certificate.to_path_buf(),
            state_dir: state_dir.to_path_buf(),
        });
    }
    let Some(dir) = certificate.parent() else {
        return Err(WriteError::NotADirectory(certificate.to_path_buf()));
    };
    let io_err = |error| WriteError::Io {
        path: dir.to_path_buf(),
        error,
    };
    let made_dir = match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let meta = std::fs::symlink_metadata(dir).map_err(io_err)?;
            if !meta.file_type().is_dir() {
                return Err(WriteError::NotADirectory(dir.to_path_buf()));
            }
            false
        }
        Err(e) => return Err(io_err(e)),
    };
    let written = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(io_err)
        .and_then(|()| write_certificate(state_dir, certificate, pem));
    if written.is_err() && made_dir {
        let _ = std::fs::remove_dir(dir);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("efs-client-cert-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o750)).unwrap();
        d
    }

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().mode() & 0o777
    }

    #[test]
    fn a_mount_makes_its_private_directory_and_replaces_only_its_own_leftover() {
        let d = scratch("write");
        let path = d.join("fs-1.mnt.20049+").join("certificate.pem");
        write_new(&d, &path, "PEM 1").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "PEM 1");
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        // a leftover of a mount never torn down is replaced
        write_new(&d, &path, "PEM 2").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "PEM 2");
        efs_config::state::remove_client_cert(&path).unwrap();
        assert!(!path.parent().unwrap().exists());
        // outside the state directory: nothing is made
        let outside = d.join("elsewhere").join("x+").join("certificate.pem");
        assert!(matches!(
            write_new(&d, &outside, "PEM"),
            Err(WriteError::OutsideStateDir { .. })
        ));
        assert!(!d.join("elsewhere").exists());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn never_through_a_symlink() {
        let d = scratch("symlink");
        let elsewhere = d.join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        // the directory is a symlink
        let linked_dir = d.join("a+");
        std::os::unix::fs::symlink(&elsewhere, &linked_dir).unwrap();
        let e = write_new(&d, &linked_dir.join("certificate.pem"), "PEM").unwrap_err();
        assert!(e.to_string().contains("is not a directory"), "{e}");
        assert!(write_certificate(&d, &linked_dir.join("certificate.pem"), "PEM").is_err());
        assert!(!elsewhere.join("certificate.pem").exists());
        // the file is a symlink (a real leftover directory holding one): it is replaced,
        // not followed
        let dir = d.join("b+");
        std::fs::create_dir(&dir).unwrap();
        let target = d.join("target");
        std::fs::write(&target, "keep").unwrap();
        std::os::unix::fs::symlink(&target, dir.join("certificate.pem")).unwrap();
        write_new(&d, &dir.join("certificate.pem"), "PEM").unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        assert!(!std::fs::symlink_metadata(dir.join("certificate.pem"))
            .unwrap()
            .file_type()
            .is_symlink());
        // a symlink where the temporary goes is not followed either
        std::os::unix::fs::symlink(&target, dir.join(temp_name())).unwrap();
        write_certificate(&d, &dir.join("certificate.pem"), "PEM 2").unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        assert_eq!(
            std::fs::read_to_string(dir.join("certificate.pem")).unwrap(),
            "PEM 2"
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_renewal_replaces_the_certificate_whole_and_private() {
        let base = scratch("renew");
        let cert_dir = base.join("fs-1.mnt.20049+");
        std::fs::create_dir_all(&cert_dir).unwrap();
        std::fs::set_permissions(&cert_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let cert = cert_dir.join("certificate.pem");
        std::fs::write(&cert, "old").unwrap();
        std::fs::write(cert_dir.join(temp_name()), "a leftover").unwrap();
        write_certificate(&base, &cert, "new").unwrap();
        assert_eq!(std::fs::read_to_string(&cert).unwrap(), "new");
        assert_eq!(mode(&cert), 0o600);
        let names: Vec<_> = std::fs::read_dir(&cert_dir).unwrap().flatten().collect();
        assert_eq!(names.len(), 1, "only the certificate is left");
        // A directory others may write to is refused, and nothing is written.
        std::fs::set_permissions(&cert_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = write_certificate(&base, &cert, "newer").unwrap_err();
        assert!(e.to_string().contains("writable by group or others"), "{e}");
        assert_eq!(std::fs::read_to_string(&cert).unwrap(), "new");
        let e = write_certificate(&base, Path::new("/tmp/x+/c.pem"), "x").unwrap_err();
        assert!(
            e.to_string()
                .contains("is not a certificate in the state directory"),
            "{e}"
        );
        // A renewal never makes the directory: gone (torn down), nothing is written.
        std::fs::remove_dir_all(&cert_dir).unwrap();
        assert!(write_certificate(&base, &cert, "late").is_err());
        assert!(!cert_dir.exists());
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn a_renewal_whose_directory_was_torn_down_meanwhile_writes_nowhere() {
        let d = scratch("torn-down");
        let path = d.join("fs-1.mnt.20049+").join("certificate.pem");
        write_new(&d, &path, "PEM 1").unwrap();
        let id = DirId::of(path.parent().unwrap());
        let dir = CertDir::open(&d, &path, id).unwrap();
        // The watchdog tears the mount down; a new mount of the same name follows.
        efs_config::state::remove_client_cert(&path).unwrap();
        write_new(&d, &path, "the new mount's").unwrap();
        assert!(dir.write("PEM 2").is_err());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "the new mount's");
        // Opened afresh with the old directory's identity: refused.
        assert!(matches!(
            CertDir::open(&d, &path, id),
            Err(WriteError::Replaced(_))
        ));
        // The same directory: written, whole, and nothing else left in it.
        let now = DirId::of(path.parent().unwrap());
        CertDir::open(&d, &path, now)
            .unwrap()
            .write("PEM 3")
            .unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "PEM 3");
        assert_eq!(mode(&path), 0o600);
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
        let _ = std::fs::remove_dir_all(&d);
    }
}
