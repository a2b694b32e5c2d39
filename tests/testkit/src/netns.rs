//! A network namespace of a test's own (loopback only, so nothing in it reaches
//! anything outside) and a TLS "mount target" served inside it, for the tests of
//! `-o netns=` mounts and of their tunnels' restarts.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{wait_until, Behaviour, KillOnDrop, ServerCert, TlsServer};

/// A network namespace of the test's own, held by a sleeping process: loopback only (up),
/// so nothing in it can reach anything outside.
pub struct Netns {
    holder: KillOnDrop,
}

impl Netns {
    /// Err (the reason, for the test to print and skip) only when the kernel refuses to
    /// make a network namespace here.
    pub fn new() -> Result<Netns, String> {
        let probe = Command::new("unshare")
            .args(["--net", "true"])
            .output()
            .expect("unshare (util-linux) runs");
        if !probe.status.success() {
            return Err(format!(
                "the kernel refuses a network namespace: {}",
                String::from_utf8_lossy(&probe.stderr).trim()
            ));
        }
        let child = Command::new("unshare")
            .args(["--net", "sh", "-c", "ip link set lo up && exec sleep 120"])
            .stdin(Stdio::null())
            .spawn()
            .expect("unshare (util-linux) runs");
        let holder = KillOnDrop(child);
        let pid = holder.id();
        // Until it is in its own namespace with lo up (sleep has replaced sh).
        assert!(
            wait_until(Duration::from_secs(5), || {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim() == "sleep")
            }),
            "the namespace's holder did not come up"
        );
        Ok(Netns { holder })
    }

    /// The namespace file, as `-o netns=` takes it.
    pub fn path(&self) -> String {
        format!("/proc/{}/ns/net", self.holder.id())
    }

    /// What `readlink /proc/PID/ns/net` says for a process in it: `net:[INODE]`.
    pub fn id(&self) -> String {
        use std::os::unix::fs::MetadataExt;
        let ino = std::fs::metadata(self.path()).unwrap().ino();
        format!("net:[{ino}]")
    }

    /// Runs `f` on a thread of its own inside the namespace (namespaces are per thread).
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = self.path();
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).unwrap();
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            f()
        })
        .join()
        .unwrap()
    }

    /// A TLS echo server (the "mount target", certificate `cert`) on `addr` inside the
    /// namespace, until the returned guard is dropped.
    pub fn serve_tls(&self, addr: std::net::SocketAddr, cert: ServerCert) -> NetnsServer {
        let path = self.path();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (up_tx, up) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).unwrap();
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            // One thread: the listening socket is made in it, so in the namespace.
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let _server = TlsServer::start_on(addr, &cert, Behaviour::Echo).await;
                let _ = up_tx.send(());
                let _ = stopped.await;
            });
        });
        up.recv_timeout(Duration::from_secs(10))
            .expect("the TLS server in the namespace did not come up");
        NetnsServer {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

/// A server running in a [`Netns`]; stopped when dropped.
pub struct NetnsServer {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for NetnsServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `readlink /proc/PID/ns/net`.
pub fn netns_of(pid: i32) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/net"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}
