//! The control channel: a Unix socket per tunnel (mode 0600, next to the mount's state
//! file) that answers "how are you?" for the watchdog's health check and the status
//! command.
//!
//! Protocol: the client connects, writes one request line, and reads one JSON line back;
//! then both sides close. The only request today is `status`. The client half
//! ([`query_status`]) is blocking with a hard timeout, so that a caller can never hang on
//! a stuck tunnel.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::UnixListener;

use crate::shutdown::Shutdown;

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
    pub handshakes_failed: u64,
    /// The most recent successful handshake.
    pub tls: Option<TlsSession>,
    pub last_error: Option<LastError>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsSession {
    /// For example `TLSv1_3`.
    pub version: String,
    /// For example `TLS13_AES_256_GCM_SHA384`.
    pub cipher: String,
    pub peer_subject: Option<String>,
    pub peer_not_after_unix: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastError {
    pub message: String,
    pub unix_time: i64,
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
    let mut stream = StdUnixStream::connect(socket).map_err(ControlError::Connect)?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|_| stream.set_write_timeout(Some(timeout)))
        .map_err(ControlError::Connect)?;
    stream
        .write_all(b"status\n")
        .map_err(ControlError::NoAnswer)?;
    let mut line = String::new();
    BufReader::new(stream)
        .take(1 << 20)
        .read_line(&mut line)
        .map_err(ControlError::NoAnswer)?;
    if line.is_empty() {
        return Err(ControlError::BadAnswer(
            "connection closed without an answer".into(),
        ));
    }
    serde_json::from_str(&line).map_err(|e| ControlError::BadAnswer(e.to_string()))
}

/// The listening side, owned by the tunnel process. Removes its socket file when dropped.
pub struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ControlSocket {
    /// Binds the socket, replacing a stale one left by a dead predecessor.
    pub fn bind(path: &Path) -> std::io::Result<ControlSocket> {
        if std::fs::symlink_metadata(path).is_ok() {
            std::fs::remove_file(path)?;
        }
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        Ok(ControlSocket {
            listener,
            path: path.to_path_buf(),
        })
    }

    /// Answers requests until shutdown. `status` builds a fresh snapshot per request.
    pub async fn serve(
        self,
        status: Arc<dyn Fn() -> Status + Send + Sync>,
        mut shutdown: Shutdown,
    ) {
        loop {
            let stream = tokio::select! {
                r = self.listener.accept() => match r {
                    Ok((stream, _)) => stream,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = shutdown.recv() => return,
            };
            let status = status.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(2), answer(stream, status)).await;
            });
        }
    }
}

async fn answer(
    stream: tokio::net::UnixStream,
    status: Arc<dyn Fn() -> Status + Send + Sync>,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    tokio::io::AsyncReadExt::take(tokio::io::BufReader::new(read), 4096)
        .read_line(&mut line)
        .await?;
    let reply = match line.trim() {
        "status" => serde_json::to_string(&status()).map_err(std::io::Error::other)?,
        other => {
            serde_json::json!({ "error": format!("unknown request {other:?}; try \"status\"") })
                .to_string()
        }
    };
    write.write_all(reply.as_bytes()).await?;
    write.write_all(b"\n").await?;
    write.shutdown().await
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
