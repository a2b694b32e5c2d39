//! The control socket's protocol: a Unix socket per tunnel (`--control PATH`, mode 0600,
//! next to the mount's state file) that answers "how are you?" for the watchdog's health
//! check and `efs-utils status`. The tunnel serves it (`efs_tunnel::control`); this is
//! the request, the answer and the blocking client.
//!
//! Protocol: the client connects, writes one request line ([`STATUS_REQUEST`]), and
//! reads one JSON line back ([`Status`], or `{"error": "..."}` for an unknown request);
//! then both sides close. [`query_status`] is blocking with a hard timeout, so that a
//! caller can never hang on a stuck tunnel.
//!
//! Compatibility: tunnels outlive upgrades, so a newer status command reads an older
//! tunnel's answer. A field added to [`Status`] is `#[serde(default)]`, and unknown
//! fields are ignored.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The one request: "send me your [`Status`]".
pub const STATUS_REQUEST: &str = "status";
/// The longest request line a tunnel reads.
pub const MAX_REQUEST: u64 = 4096;
/// The longest answer a client reads.
pub const MAX_ANSWER: u64 = 1 << 20;

/// What a tunnel says about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub pid: u32,
    pub uptime_secs: u64,
    pub listen_port: u16,
    pub upstream_host: String,
    pub upstream_port: u16,
    /// The name the server certificate must match (also sent as SNI).
    pub check_host: String,
    pub fs_id: Option<String>,
    pub hostname_check: bool,
    pub fips: bool,
    pub connections_open: u64,
    pub connections_total: u64,
    /// Plaintext bytes forwarded from the NFS client to the mount target.
    pub bytes_to_server: u64,
    /// Plaintext bytes forwarded from the mount target to the NFS client.
    pub bytes_from_server: u64,
    pub handshakes_full: u64,
    pub handshakes_resumed: u64,
    /// TLS handshakes that failed (a certificate refused, no common version or suite, an
    /// alert, a handshake timeout). Failures before TLS are [`Status::connects_failed`].
    pub handshakes_failed: u64,
    /// Attempts that never reached a TLS handshake: DNS lookup or TCP connect failed or
    /// timed out. (Absent from the answers of tunnels older than this field.)
    #[serde(default)]
    pub connects_failed: u64,
    /// Local connections refused because their socket is not root's: not the kernel's
    /// NFS client (the tunnel's peer check). (Absent from older tunnels' answers.)
    #[serde(default)]
    pub peer_refused: u64,
    /// The client certificate the tunnel presents (`--client-cert`), if any. (Absent
    /// from older tunnels' answers.)
    #[serde(default)]
    pub client_cert: Option<ClientCertStatus>,
    /// EFS partition multiplexing (`--partition-multiplexing`). (Absent from older
    /// tunnels' answers.)
    #[serde(default)]
    pub multiplexing: Option<MultiplexStatus>,
    /// Kernel TLS (`--kernel-tls`). (Absent from older tunnels' answers.)
    #[serde(default)]
    pub kernel_tls: Option<KernelTlsStatus>,
    /// The most recent successful handshake.
    pub tls: Option<TlsSession>,
    pub last_error: Option<LastError>,
}

/// A tunnel's partition multiplexing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MultiplexStatus {
    /// `--partition-multiplexing auto`: connections are bound when the server allows.
    pub enabled: bool,
    /// Whether the mount target answered the bind call; absent until it was asked.
    pub server_supports: Option<bool>,
    /// The partition the last bound connection is on, as hex.
    pub partition_id: Option<String>,
    /// Upstream connections bound to a partition and open now (over all NFS
    /// connections of the tunnel).
    pub bound_connections: u64,
}

/// A tunnel's kernel TLS: which connections' records the kernel encrypts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelTlsStatus {
    /// `--kernel-tls auto` or `on`: upstream connections (bound or not) go to kernel TLS
    /// when the kernel offers it.
    pub enabled: bool,
    /// Whether the kernel took a connection's keys; absent until one was offered.
    pub available: Option<bool>,
    /// Why kernel TLS is not used, once the kernel refused it (one line).
    pub unavailable_reason: Option<String>,
    /// Upstream connections on kernel TLS now, and since start.
    pub connections_open: u64,
    pub connections_total: u64,
    /// Kernel TLS connections closed cleanly because the kernel cannot update keys (a
    /// KeyUpdate from the mount target, or the cipher's record limit); each cost the
    /// NFS client a reconnect.
    pub connections_closed_for_rekey: u64,
}

/// The client certificate a tunnel presents to new connections.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientCertStatus {
    /// The certificate's notAfter, seconds since the epoch.
    pub not_after_unix: i64,
    /// When the tunnel loaded it (at start or on SIGHUP), seconds since the epoch.
    pub loaded_unix: i64,
    /// Successful reloads since start.
    pub reloads: u64,
    /// The last reload that failed, one line (the tunnel kept the pair it had).
    pub reload_error: Option<String>,
}

/// The most recent handshake's parameters. The names are efs-utils' own, stable across
/// TLS library versions (the tunnel maps the library's values to them in one table,
/// `efs_tunnel::control::tls_version_name` and `cipher_suite_name`); a value the table
/// does not know is shown as its IANA code point, e.g. `0x1304`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsSession {
    /// `TLSv1.3` or `TLSv1.2`.
    pub version: String,
    /// The IANA name, for example `TLS_AES_256_GCM_SHA384` or
    /// `TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256`.
    pub cipher: String,
    pub peer_subject: Option<String>,
    pub peer_not_after_unix: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastError {
    pub message: String,
    pub unix_time: i64,
}

/// The tunnel's answer to one request line: the JSON line to send back, newline
/// included. `status` is only called for a status request.
pub fn answer(request: &str, status: impl FnOnce() -> Status) -> String {
    let reply = match request.trim() {
        STATUS_REQUEST => serde_json::to_string(&status()),
        other => serde_json::to_string(&serde_json::json!({
            "error": format!("unknown request {other:?}; try {STATUS_REQUEST:?}")
        })),
    };
    // Serialising these types cannot fail (no maps with non-string keys, no I/O).
    let mut line =
        reply.unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }).to_string());
    line.push('\n');
    line
}

/// Why a status query failed.
#[derive(Debug)]
pub enum ControlError {
    Connect(std::io::Error),
    /// No complete answer within the timeout: the tunnel is alive but not answering.
    NoAnswer(std::io::Error),
    BadAnswer(String),
}

impl std::fmt::Display for ControlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ControlError::Connect(e) => write!(f, "cannot reach the tunnel's control socket: {e}"),
            ControlError::NoAnswer(e) => write!(f, "the tunnel did not answer: {e}"),
            ControlError::BadAnswer(s) => {
                write!(f, "the tunnel answered something unexpected: {s}")
            }
        }
    }
}

impl std::error::Error for ControlError {}

/// Asks the tunnel behind `socket` for its status, giving up after `timeout`.
pub fn query_status(socket: &Path, timeout: Duration) -> Result<Status, ControlError> {
    let mut stream = UnixStream::connect(socket).map_err(ControlError::Connect)?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|_| stream.set_write_timeout(Some(timeout)))
        .map_err(ControlError::Connect)?;
    stream
        .write_all(format!("{STATUS_REQUEST}\n").as_bytes())
        .map_err(ControlError::NoAnswer)?;
    let mut line = String::new();
    BufReader::new(stream)
        .take(MAX_ANSWER)
        .read_line(&mut line)
        .map_err(ControlError::NoAnswer)?;
    if line.is_empty() {
        return Err(ControlError::BadAnswer(
            "connection closed without an answer".into(),
        ));
    }
    serde_json::from_str(&line).map_err(|e| ControlError::BadAnswer(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn answers_are_one_json_line() {
        let status = Status {
            pid: 7,
            connects_failed: 2,
            ..Status::default()
        };
        let line = answer("status\n", || status.clone());
        assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
        assert_eq!(serde_json::from_str::<Status>(&line).unwrap(), status);
        let line = answer("hello", || unreachable!("not a status request"));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert!(v["error"].as_str().unwrap().contains("\"hello\""), "{v}");
    }

    #[test]
    fn an_older_tunnel_s_answer_still_reads() {
        let mut v = serde_json::to_value(Status::default()).unwrap();
        v.as_object_mut().unwrap().remove("connects_failed");
        v["some_future_field"] = serde_json::json!(1);
        let st: Status = serde_json::from_value(v).unwrap();
        assert_eq!(st.connects_failed, 0);
    }

    #[test]
    fn the_client_gives_up_on_a_silent_tunnel_and_reads_a_real_answer() {
        let dir = std::env::temp_dir().join(format!("efs-contract-ctl-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            // First client: never answered. Second: answered.
            let (_silent, _) = listener.accept().unwrap();
            let (mut s, _) = listener.accept().unwrap();
            let mut req = String::new();
            BufReader::new(s.try_clone().unwrap())
                .read_line(&mut req)
                .unwrap();
            let reply = answer(&req, || Status {
                pid: 42,
                ..Status::default()
            });
            s.write_all(reply.as_bytes()).unwrap();
            std::thread::sleep(Duration::from_millis(300));
        });
        let t0 = std::time::Instant::now();
        let err = query_status(&path, Duration::from_millis(200)).unwrap_err();
        assert!(matches!(err, ControlError::NoAnswer(_)), "{err}");
        assert!(t0.elapsed() < Duration::from_secs(2));
        assert_eq!(query_status(&path, Duration::from_secs(2)).unwrap().pid, 42);
        server.join().unwrap();
        assert!(matches!(
            query_status(&dir.join("missing.sock"), Duration::from_secs(1)),
            Err(ControlError::Connect(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
