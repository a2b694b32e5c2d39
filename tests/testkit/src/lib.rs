//! Real parts for integration tests across the workspace: a throwaway CA, a real TLS
//! server (rustls, or `openssl s_server` for what rustls cannot be made to offer),
//! temporary directories, and child processes that cannot outlive a failed test.
//! Dev-only: no product crate depends on it.

pub mod aws_api;
pub mod efs;
pub mod netns;
pub mod partition;
pub mod root;

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

pub const FS_ID: &str = "fs-12345678";
pub const CHECK_HOST: &str = "fs-12345678.efs.us-east-1.amazonaws.com";
pub const WILDCARD: &str = "*.efs.us-east-1.amazonaws.com";

/// Writes an executable script (a stand-in program) with `mode`, so that it can be run at
/// once. The file is written by a `sh` child, not by this process: a test binary's other
/// threads fork children all the time, and a child forked while this process held the
/// file open for writing keeps it open until it execs, so running the script then fails
/// with "Text file busy" (ETXTBSY). A watchdog unit test failed that way under load.
pub fn write_executable(path: &Path, body: &str, mode: u32) {
    use std::io::Write;
    let mut sh = Command::new("sh")
        .args(["-c", "cat > \"$1\" && chmod \"$2\" \"$1\"", "sh"])
        .arg(path)
        .arg(format!("{mode:o}"))
        .stdin(Stdio::piped())
        .spawn()
        .expect("sh runs");
    let mut stdin = sh.stdin.take().expect("a pipe to sh");
    // A failed write (sh ended early) is reported by its exit status below.
    let _ = stdin.write_all(body.as_bytes());
    drop(stdin);
    let status = sh.wait().expect("sh ends");
    assert!(
        status.success(),
        "cannot write {}: {status}",
        path.display()
    );
}

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "efs-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A certificate authority that lives for one test.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pub pem: String,
}

/// A server certificate and its key, as PEM.
pub struct ServerCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl ServerCert {
    /// A rustls server builder (ring, TLS 1.2 and 1.3) for this certificate, waiting
    /// only for its client-certificate choice.
    pub fn server_builder(
        &self,
    ) -> rustls::ConfigBuilder<rustls::ServerConfig, rustls::WantsVerifier> {
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
    }

    /// The certificate chain and key, parsed.
    pub fn chain_and_key(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let certs = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).unwrap();
        (certs, key)
    }
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for `name`, valid now.
    pub fn issue(&self, name: &str) -> ServerCert {
        self.issue_with(name, |_| {})
    }

    /// A server certificate for `name` that expired yesterday.
    pub fn issue_expired(&self, name: &str) -> ServerCert {
        self.issue_with(name, |p| {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        })
    }

    fn issue_with(&self, name: &str, tweak: impl FnOnce(&mut CertificateParams)) -> ServerCert {
        let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        tweak(&mut params);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        ServerCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// What a test TLS server does with each connection.
#[derive(Clone, Copy, Debug)]
pub enum Behaviour {
    /// Send back every byte, half-close when the client half-closes.
    Echo,
    /// Say "hello", half-close (close_notify), then read until the client's EOF.
    GreetThenHalfClose,
    /// Read until EOF or error, and report the connection's end.
    Sink,
}

/// A rustls server on 127.0.0.1 running inside the test's runtime.
pub struct TlsServer {
    pub addr: SocketAddr,
    /// Application bytes received over all connections.
    pub received: Arc<AtomicU64>,
    pub handshakes: Arc<AtomicU64>,
    /// One message per finished connection: bytes it received.
    pub ended: mpsc::UnboundedReceiver<u64>,
}

impl TlsServer {
    pub async fn start(cert: &ServerCert, behaviour: Behaviour) -> TlsServer {
        TlsServer::start_on("127.0.0.1:0".parse().unwrap(), cert, behaviour).await
    }

    /// Like [`TlsServer::start`], on a given address (for example 127.0.0.7:2049).
    pub async fn start_on(addr: SocketAddr, cert: &ServerCert, behaviour: Behaviour) -> TlsServer {
        TlsServer::start_with(addr, cert, behaviour, None).await
    }

    /// Like [`TlsServer::start`], as a fake EFS: a client must present a certificate
    /// that `verifier` authorizes.
    pub async fn start_requiring_client_cert(
        cert: &ServerCert,
        behaviour: Behaviour,
        verifier: Arc<efs::FakeEfsVerifier>,
    ) -> TlsServer {
        let addr = "127.0.0.1:0".parse().unwrap();
        TlsServer::start_with(addr, cert, behaviour, Some(verifier)).await
    }

    async fn start_with(
        addr: SocketAddr,
        cert: &ServerCert,
        behaviour: Behaviour,
        client_auth: Option<Arc<efs::FakeEfsVerifier>>,
    ) -> TlsServer {
        let (certs, key) = cert.chain_and_key();
        let config = cert.server_builder();
        let config = match client_auth {
            None => config.with_no_client_auth(),
            Some(v) => config.with_client_cert_verifier(v),
        }
        .with_single_cert(certs, key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(AtomicU64::new(0));
        let handshakes = Arc::new(AtomicU64::new(0));
        let (tx, ended) = mpsc::unbounded_channel();
        let (rx_total, hs) = (received.clone(), handshakes.clone());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, total, hs, tx) =
                    (acceptor.clone(), rx_total.clone(), hs.clone(), tx.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    hs.fetch_add(1, Ordering::Relaxed);
                    let n = serve(tls, behaviour, &total).await;
                    let _ = tx.send(n);
                });
            }
        });
        TlsServer {
            addr,
            received,
            handshakes,
            ended,
        }
    }
}

async fn serve(
    tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    behaviour: Behaviour,
    total: &AtomicU64,
) -> u64 {
    let (mut r, mut w) = tokio::io::split(tls);
    let mut buf = vec![0u8; 256 * 1024];
    let mut n_total = 0u64;
    if let Behaviour::GreetThenHalfClose = behaviour {
        let _ = w.write_all(b"hello").await;
        let _ = w.shutdown().await;
    }
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        n_total += n as u64;
        total.fetch_add(n as u64, Ordering::Relaxed);
        if let Behaviour::Echo = behaviour {
            // Flushed: rustls may keep written bytes in its buffer when the socket is
            // full, and the next read would then wait for a client that is waiting for
            // them (seen as a hung data_path test: the last 29 KiB of an 8 MiB echo).
            if w.write_all(&buf[..n]).await.is_err() || w.flush().await.is_err() {
                break;
            }
        }
    }
    if let Behaviour::Echo = behaviour {
        let _ = w.shutdown().await;
    }
    n_total
}

/// `openssl s_server` with extra arguments, for protocol versions and suites rustls
/// refuses to offer.
pub struct OpensslServer {
    pub port: u16,
    child: Child,
}

impl OpensslServer {
    pub fn start(dir: &TempDir, cert: &ServerCert, extra: &[&str]) -> OpensslServer {
        let (c, k) = (dir.path("s_server.pem"), dir.path("s_server.key"));
        std::fs::write(&c, &cert.cert_pem).unwrap();
        std::fs::write(&k, &cert.key_pem).unwrap();
        let port = free_port();
        let child = Command::new("openssl")
            .args(["s_server", "-quiet", "-naccept", "100", "-accept"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("-cert")
            .arg(&c)
            .arg("-key")
            .arg(&k)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl is needed for these tests (apt-get install openssl)");
        wait_until(Duration::from_secs(10), || {
            StdTcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        OpensslServer { port, child }
    }
}

impl Drop for OpensslServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child process that is killed when the test lets go of it, pass or fail, so that a
/// failed assertion never leaves a process holding the test runner's output open.
pub struct KillOnDrop(pub Child);

impl std::ops::Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Stdio for a spawned tunnel: a file in the test's directory, never the runner's pipe.
pub fn stdio_file(dir: &TempDir, name: &str) -> Stdio {
    Stdio::from(std::fs::File::create(dir.path(name)).unwrap())
}

/// A port on 127.0.0.1 that refuses connections for the rest of the test process: a
/// socket is bound to it and never listens. (A port found free and let go again can be
/// taken meanwhile by another test's server, which then answers in its place.)
pub fn refused_port() -> u16 {
    use nix::sys::socket::{
        bind, getsockname, socket, AddressFamily, SockFlag, SockType, SockaddrIn,
    };
    use std::os::fd::AsRawFd;
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    bind(fd.as_raw_fd(), &SockaddrIn::new(127, 0, 0, 1, 0)).unwrap();
    let addr: SockaddrIn = getsockname(fd.as_raw_fd()).unwrap();
    std::mem::forget(fd); // kept for the rest of the process: the port stays this one's
    addr.port()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// Reads everything a (blocking) connection sends until EOF or `limit`.
pub fn read_all(stream: &mut StdTcpStream, limit: Duration) -> std::io::Result<Vec<u8>> {
    stream.set_read_timeout(Some(limit))?;
    let mut out = Vec::new();
    stream.read_to_end(&mut out)?;
    Ok(out)
}

/// Deterministic pseudo-random bytes (xorshift), fast enough for hundreds of MiB.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn sha256(data: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .to_vec()
}

/// Lines of the log that contain `needle`.
pub fn count_lines(text: &str, needle: &str) -> usize {
    text.lines().filter(|l| l.contains(needle)).count()
}

pub fn first_line_with<'a>(text: &'a str, needle: &str) -> Option<&'a str> {
    text.lines().find(|l| l.contains(needle))
}

pub fn read_line_from(r: impl Read) -> String {
    let mut line = String::new();
    let _ = BufReader::new(r).read_line(&mut line);
    line
}

pub fn exists(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}
