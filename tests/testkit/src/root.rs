//! A temporary root for running the real `mount.efs`, `efs-tunnel` and watchdog as an
//! operator would: its config points every path into the root; `mount.nfs4` and
//! `systemctl` are recording stand-ins (mocks: the kernel mount itself is tested in the
//! end-to-end guest); the tunnel is the real `efs-tunnel`, talking to a real TLS server
//! with a throwaway CA.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use crate::{TempDir, TestCa};

/// The file system's DNS name in region us-east-1 (also the tunnel's check-host name).
pub const DNS_NAME: &str = crate::CHECK_HOST;

/// Where a binary of the workspace is, in the target directory the running test lives
/// in (`target/<profile>/deps/<test>` -> `target/<profile>/<name>`), built or not.
pub fn target_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .and_then(Path::parent)
        .map(|d| d.join(name))
        .unwrap_or_default()
}

/// A binary of the workspace ([`target_bin`]), which must be built.
pub fn workspace_bin(name: &str) -> PathBuf {
    let p = target_bin(name);
    assert!(
        p.exists(),
        "{} is missing: run the tests from the workspace (tests/run-all.sh)",
        p.display()
    );
    p
}

pub fn mount_efs_bin() -> PathBuf {
    workspace_bin("mount-efs")
}

pub fn tunnel_bin() -> PathBuf {
    workspace_bin("efs-tunnel")
}

pub fn watchdog_bin() -> PathBuf {
    workspace_bin("amazon-efs-mount-watchdog")
}

/// `efs-renew-cert`, which the watchdog runs to renew a client certificate.
pub fn renew_cert_bin() -> PathBuf {
    workspace_bin("efs-renew-cert")
}

/// A loopback address of its own for each test's "mount target" on port 2049.
pub fn target_addr() -> SocketAddr {
    static NEXT: AtomicU8 = AtomicU8::new(20);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    SocketAddr::from(([127, 0, 0, n], 2049))
}

pub struct Root {
    pub dir: TempDir,
    pub config: PathBuf,
    pub ca: TestCa,
}

impl Root {
    /// A root whose config trusts `ca`; `extra_mount` goes into `[mount]`.
    pub fn new(extra_mount: &str) -> Root {
        Root::with_sections(extra_mount, "")
    }

    /// Like [`Root::new`], with more config after the `[paths]` table (e.g. a
    /// `[mount-watchdog]` table).
    pub fn with_sections(extra_mount: &str, extra_sections: &str) -> Root {
        let dir = TempDir::new("mount");
        for d in ["run", "log", "bin", "systemd", "mnt", "bdi"] {
            std::fs::create_dir_all(dir.path(d)).unwrap();
        }
        let ca = TestCa::new("Mount test CA");
        std::fs::write(dir.path("ca.pem"), &ca.pem).unwrap();
        let stand_in = |name: &str, body: &str| {
            let p = dir.path("bin").join(name);
            crate::write_executable(&p, body, 0o755);
            p
        };
        let d = dir.0.display();
        // Stand-in for mount.nfs4 (a mock, named as such): records its argv, one call per
        // file, and answers with the next line of `mount-nfs.script` ("CODE MESSAGE").
        // With a port in `kernel.trunk-to`, it also plays the kernel's trunking: it adds
        // the mount to `mountinfo` with its own `port=` and to `nfsfs/volumes` as sent
        // through that port's tunnel, as Linux does for a second mount of one server.
        // Each call's mount namespace goes to `mount-nfs.ns` (for `-N`).
        let mount_nfs = stand_in(
            "mount.nfs4-stand-in",
            &format!(
                "#!/bin/sh\n[ -f {d}/mount-nfs.delay ] && sleep $(cat {d}/mount-nfs.delay)\nmkdir -p {d}/calls\nprintf '%s\\n' \"$@\" > {d}/calls/$(date +%s%N)-$$\nreadlink /proc/$$/ns/mnt >> {d}/mount-nfs.ns\n\
                 if [ -s {d}/mount-nfs.script ]; then\n  line=$(head -n1 {d}/mount-nfs.script)\n  sed -i 1d {d}/mount-nfs.script\n  \
                 code=${{line%% *}}\n  msg=${{line#* }}\n  echo \"$msg\" >&2\n  exit $code\nfi\n\
                 if [ -f {d}/kernel.trunk-to ]; then\n  via=$(cat {d}/kernel.trunk-to)\n  \
                 port=$(printf '%s\\n' \"$4\" | tr , '\\n' | sed -n 's/^port=//p')\n  \
                 n=$(( $(cat {d}/mountinfo 2>/dev/null | wc -l) + 100 ))\n  \
                 echo \"$n 22 0:$n / $2 rw - nfs4 $1 rw,vers=4.1,port=$port,addr=127.0.0.1\" >> {d}/mountinfo\n  \
                 mkdir -p {d}/nfsfs\n  printf 'v4 7f000001 %x 0:%s 0:0 no\\n' \"$via\" \"$n\" >> {d}/nfsfs/volumes\nfi\nexit 0\n"
            ),
        );
        // Stand-in for systemctl: records its argv; the watchdog is never active.
        let systemctl = stand_in(
            "systemctl-stand-in",
            &format!("#!/bin/sh\necho \"$@\" >> {d}/systemctl.calls\ncase \"$1\" in is-active) exit 3;; esac\nexit 0\n"),
        );
        let config = dir.path("efs-utils.toml");
        std::fs::write(
            &config,
            format!(
                "logging_level = \"debug\"\n[mount]\nstunnel_cafile = \"{ca}\"\nretry_nfs_mount_command_timeout_sec = 5\n{fallback}{extra_mount}\n\
                 [paths]\nstate_dir = \"{d}/run\"\nlog_dir = \"{d}/log\"\nmount_nfs = \"{mn}\"\nsystemctl = \"{sc}\"\n\
                 systemd_run_dir = \"{d}/systemd\"\nmountinfo = \"{d}/mountinfo\"\nnfsfs = \"{d}/nfsfs\"\ntunnel = \"{t}\"\n\
                 renew_cert = \"{rc}\"\nsysfs_bdi = \"{d}/bdi\"\n{extra_sections}\n",
                ca = dir.path("ca.pem").display(),
                // The mount-target-IP fallback resolves the file system's DNS name, a
                // query a test must not send; the tests of the fallback turn it on with
                // a name glibc refuses without asking a server.
                fallback = if extra_mount.contains("fall_back_to_mount_target_ip_address_enabled") {
                    ""
                } else {
                    "fall_back_to_mount_target_ip_address_enabled = false\n"
                },
                mn = mount_nfs.display(),
                sc = systemctl.display(),
                t = tunnel_bin().display(),
                // Not required to be built: only tests that renew run it.
                rc = target_bin("efs-renew-cert").display(),
            ),
        )
        .unwrap();
        Root { dir, config, ca }
    }

    pub fn mountpoint(&self, name: &str) -> String {
        let p = self.dir.path("mnt").join(name);
        std::fs::create_dir_all(&p).unwrap();
        p.to_string_lossy().into_owned()
    }

    /// Runs the real mount.efs with this root's config and region us-east-1.
    pub fn mount(&self, args: &[&str]) -> Run {
        self.mount_env(args, &[("AWS_REGION", "us-east-1")])
    }

    pub fn mount_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let start = Instant::now();
        let mut cmd = Command::new(mount_efs_bin());
        cmd.args(args)
            .env("EFS_UTILS_CONFIG", &self.config)
            .env_remove("AWS_REGION")
            .env_remove("AWS_DEFAULT_REGION");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        Run {
            out,
            took: start.elapsed(),
        }
    }

    /// argv of each mount.nfs4 call, in order.
    pub fn nfs_calls(&self) -> Vec<Vec<String>> {
        // Records are named <nanoseconds>-<pid>: sorting by name is call order.
        let mut names: Vec<PathBuf> = std::fs::read_dir(self.dir.path("calls"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        names.sort();
        names
            .iter()
            .map(|p| {
                std::fs::read_to_string(p)
                    .unwrap()
                    .lines()
                    .map(str::to_string)
                    .collect()
            })
            .collect()
    }

    /// Makes the next mount.nfs4 calls fail: one "CODE MESSAGE" per call.
    pub fn script_nfs(&self, lines: &[&str]) {
        let mut f = std::fs::File::create(self.dir.path("mount-nfs.script")).unwrap();
        for l in lines {
            writeln!(f, "{l}").unwrap();
        }
    }

    pub fn systemctl_calls(&self) -> String {
        std::fs::read_to_string(self.dir.path("systemctl.calls")).unwrap_or_default()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path("log").join("mount.log")).unwrap_or_default()
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path("run")
    }

    /// Names in the state directory.
    pub fn state_files(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.state_dir())
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// The port and state file of the mount at `mp`, from its (last) mount.nfs4 call.
    pub fn state_of_mount(&self, mp: &str) -> (u16, PathBuf) {
        let calls = self.nfs_calls();
        let call = calls
            .iter()
            .rev()
            .find(|c| c[1] == mp)
            .expect("mount.nfs4 was called");
        let port = port_of(&call[3]);
        let name = efs_config::state::state_file_name(crate::FS_ID, Path::new(mp), port);
        (port, self.state_dir().join(name))
    }

    /// Tunnel processes started for this root (their command line names its state dir).
    pub fn tunnel_pids(&self) -> Vec<i32> {
        let needle = self.state_dir().to_string_lossy().into_owned();
        let mut pids = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let zombie = state
                .rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'));
            if cmdline.contains("efs-tunnel") && cmdline.contains(&needle) && !zombie {
                pids.push(pid);
            }
        }
        pids
    }

    /// Asserts a failed mount left nothing: no state, no socket, no tunnel.
    pub fn assert_nothing_left(&self) {
        assert!(
            self.state_files().is_empty(),
            "left in the state dir: {:?}",
            self.state_files()
        );
        assert!(
            self.tunnel_pids().is_empty(),
            "tunnel still running: {:?}",
            self.tunnel_pids()
        );
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        for pid in self.tunnel_pids() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

pub struct Run {
    pub out: Output,
    pub took: Duration,
}

impl Run {
    pub fn code(&self) -> Option<i32> {
        self.out.status.code()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).into_owned()
    }
    pub fn assert_ok(&self) {
        assert_eq!(self.code(), Some(0), "stderr: {}", self.stderr());
    }
}

/// The port= value of a mount.nfs4 option string.
pub fn port_of(options: &str) -> u16 {
    options
        .split(',')
        .find_map(|o| o.strip_prefix("port="))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {options}"))
}

/// A fake instance metadata service (a mock: the real one is only reachable on EC2).
/// Answers IMDSv2 token requests and the identity document with `region`.
pub fn fake_imds(region: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut first = String::new();
            let _ = reader.read_line(&mut first);
            let mut has_token = false;
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
                has_token |= h
                    .to_ascii_lowercase()
                    .starts_with("x-aws-ec2-metadata-token:");
            }
            let body = if first.starts_with("PUT /latest/api/token") {
                "token-123".to_string()
            } else if first.starts_with("GET /latest/dynamic/instance-identity/document")
                && has_token
            {
                format!("{{\"region\": \"{region}\", \"availabilityZone\": \"{region}a\"}}")
            } else {
                String::new()
            };
            let status = if body.is_empty() {
                "401 Unauthorized"
            } else {
                "200 OK"
            };
            let mut s = stream;
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

pub fn file_mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}
