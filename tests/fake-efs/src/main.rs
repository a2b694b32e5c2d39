//! `efs-fake-efs`: a fake of EFS's front door for the end-to-end guest, named as such.
//! Real EFS terminates TLS itself and authorizes a client by its certificate alone (the
//! access point, the file system and the SigV4-signed IAM identity in its extensions);
//! none of that can run here. This accepts TLS on `--listen`, lets a client in only if
//! `efs_testkit::efs::FakeEfsVerifier` authorizes its certificate (every extension, the
//! self-signature, the signature recomputed with the secret of a known access key), and
//! forwards the plaintext to `--connect` (knfsd).
//!
//! With `--aws-api ADDR` it also fakes the EFS and EC2 APIs of the mount-target-IP
//! fallback there, listing one mount target (`--mount-target-ip`), and answers only
//! requests signed with the known key.
//!
//! With `--partition-id HEX` it also speaks EFS's partition program (ONC RPC 400123 v1,
//! `bind_client_to_partition`, `efs_testkit::partition`), which knfsd does not: when the
//! first RPC record of a TLS connection is that call, it answers READY on that partition
//! with the scale-up figures of `--max-connections`, `--scale-up-bytes-per-ms`,
//! `--scale-up-breached-ms` and `--scale-up-lookback-ms` (EFS's by default: 5
//! connections, 300 MiB/s for 1 s over 1 s), and does not forward that record; every
//! other byte, and any other first record, goes to `--connect` as without it. Each TLS
//! connection has its own connection to knfsd, so the bound connections of one
//! partition reach knfsd as that many connections carrying one NFSv4.1 session's calls
//! (knfsd takes them: with SP4_NONE state protection a session's SEQUENCE on a new
//! connection binds it to the session). A record that is no bind call (a longer one,
//! one cut short) is forwarded as it was read. Without `--partition-id` no record is
//! looked at.
//!
//! Every verdict is one line on stdout (`allowed AKID=... ap=...` or `denied ...`), and
//! so is every bind answered (`bound partition=HEX conn=N client=HEX incarnation=HEX`,
//! N counting the TLS connections accepted from 1), so a case can check who got in and
//! count the binds. Known keys come from a file of `AKID SECRET [TOKEN]` lines (root's,
//! mode 0600, in the guest).

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use clap::Parser;
use efs_iam::testing::{KnownKey, Verdict};
use efs_testkit::aws_api::{ApiFixture, FakeAwsApi};
use efs_testkit::efs::{FakeEfsPolicy, FakeEfsVerifier};
use efs_testkit::partition::{self, ScaleUpFigures, LAST_FRAGMENT, PARTITION_ID_LEN};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Parser, Debug)]
#[command(
    about = "A fake EFS front door: TLS with EFS-style client certificates, in front of an NFS server (tests only)"
)]
struct Args {
    /// Address to accept TLS on.
    #[arg(long)]
    listen: SocketAddr,
    /// The NFS server to forward to.
    #[arg(long)]
    connect: SocketAddr,
    /// Server certificate (PEM).
    #[arg(long)]
    cert: PathBuf,
    /// Its private key (PEM).
    #[arg(long)]
    key: PathBuf,
    #[arg(long, default_value = "fs-12345678")]
    fs_id: String,
    #[arg(long, default_value = "us-east-1")]
    region: String,
    /// The access point a client must name (none: it must name none).
    #[arg(long)]
    access_point: Option<String>,
    /// The file system policy requires IAM (extension 7.2).
    #[arg(long)]
    require_iam: bool,
    /// Known access keys: lines `AKID SECRET [TOKEN]`.
    #[arg(long)]
    keys: Option<PathBuf>,
    /// Also serve a fake of the EFS and EC2 APIs here (plain HTTP), for the
    /// mount-target-IP fallback: every request's SigV4 signature is checked against the
    /// first known key (`efs_testkit::aws_api`).
    #[arg(long)]
    aws_api: Option<SocketAddr>,
    /// The one mount target the fake API lists (available).
    #[arg(long, default_value = "127.0.0.2")]
    mount_target_ip: String,
    /// Its AZ ID (and `<region>a` its zone name).
    #[arg(long, default_value = "use1-az4")]
    mount_target_az_id: String,
    /// Speak EFS's partition program: answer a connection's first record, if it is a
    /// `bind_client_to_partition` call, READY on this partition (64 bytes, as 128 hex
    /// digits). Off by default: no record is looked at.
    #[arg(long, value_parser = parse_partition_id)]
    partition_id: Option<[u8; PARTITION_ID_LEN]>,
    /// READY's `max_multiplexed_connections` (with `--partition-id`).
    #[arg(long, default_value_t = ScaleUpFigures::EFS.max_multiplexed_connections)]
    max_connections: i32,
    /// READY's `scale_up_bytes_per_ms_threshold` (EFS's: 300 MiB/s).
    #[arg(long, default_value_t = ScaleUpFigures::EFS.scale_up_bytes_per_ms_threshold)]
    scale_up_bytes_per_ms: i32,
    /// READY's `scale_up_threshold_breached_duration_ms`.
    #[arg(long, default_value_t = ScaleUpFigures::EFS.scale_up_threshold_breached_duration_ms)]
    scale_up_breached_ms: i32,
    /// READY's `scale_up_lookback_window_size_ms`.
    #[arg(long, default_value_t = ScaleUpFigures::EFS.scale_up_lookback_window_size_ms)]
    scale_up_lookback_ms: i32,
}

/// A partition id: exactly 128 hex digits.
fn parse_partition_id(s: &str) -> Result<[u8; PARTITION_ID_LEN], String> {
    let digits = s.as_bytes();
    if digits.len() != 2 * PARTITION_ID_LEN {
        return Err(format!(
            "a partition id is {PARTITION_ID_LEN} bytes: {} hex digits, not {}",
            2 * PARTITION_ID_LEN,
            digits.len()
        ));
    }
    if let Some(c) = s.chars().find(|c| !c.is_ascii_hexdigit()) {
        return Err(format!("not a hex digit: {c:?}"));
    }
    let mut id = [0u8; PARTITION_ID_LEN];
    for (byte, pair) in id.iter_mut().zip(digits.chunks_exact(2)) {
        let pair = std::str::from_utf8(pair).map_err(|_| format!("not hex: {s}"))?;
        *byte = u8::from_str_radix(pair, 16).map_err(|_| format!("not hex: {pair:?}"))?;
    }
    Ok(id)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What `--partition-id` makes the fake answer a bind with.
struct Partitioned {
    id: [u8; PARTITION_ID_LEN],
    scale_up: ScaleUpFigures,
}

/// The largest first record looked at: a bind call is 76 bytes; anything longer is no
/// bind call and is forwarded without being looked at.
const MAX_FIRST_RECORD: usize = 4096;

/// Reads from `r` until `buf` holds `want` bytes; false if the stream ended first.
async fn fill<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    want: usize,
) -> std::io::Result<bool> {
    let mut chunk = [0u8; 1024];
    while buf.len() < want {
        let n = r.read(&mut chunk[..(want - buf.len()).min(1024)]).await?;
        if n == 0 {
            return Ok(false);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(true)
}

/// The stream's first RPC record: the bytes read (headers included, to forward as they
/// are) and, if they are the whole record, its body (fragments joined). Reading stops
/// early, with no body, at the end of the stream or once the record is longer than
/// [`MAX_FIRST_RECORD`].
async fn first_record<R: AsyncRead + Unpin>(
    r: &mut R,
) -> std::io::Result<(Vec<u8>, Option<Vec<u8>>)> {
    let (mut raw, mut body) = (Vec::new(), Vec::new());
    loop {
        let at = raw.len();
        if !fill(r, &mut raw, at + 4).await? {
            return Ok((raw, None));
        }
        let mut header = [0u8; 4];
        header.copy_from_slice(&raw[at..at + 4]);
        let header = u32::from_be_bytes(header);
        let end = at + 4 + (header & !LAST_FRAGMENT) as usize;
        if end > MAX_FIRST_RECORD || !fill(r, &mut raw, end).await? {
            return Ok((raw, None));
        }
        body.extend_from_slice(&raw[at + 4..end]);
        if header & LAST_FRAGMENT != 0 {
            return Ok((raw, Some(body)));
        }
    }
}

/// One accepted TLS connection (the `nth`): the bind answered if it is one, then
/// everything else forwarded both ways to `upstream`.
async fn serve<S: AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut tls: S,
    upstream: SocketAddr,
    partitioned: Option<&Partitioned>,
    nth: u64,
) -> std::io::Result<()> {
    let mut forward = Vec::new();
    if let Some(p) = partitioned {
        let (raw, body) = first_record(&mut tls).await?;
        match body.as_deref().and_then(partition::parse_bind_call) {
            Some(call) => {
                let reply = partition::ready_reply(call.xid, &p.id, p.scale_up);
                tls.write_all(&partition::record(&reply)).await?;
                tls.flush().await?;
                println!(
                    "bound partition={} conn={nth} client={} incarnation={}",
                    hex(&p.id),
                    hex(&call.client_id),
                    hex(&call.incarnation)
                );
                let _ = std::io::stdout().flush();
            }
            None => forward = raw,
        }
    }
    let Ok(mut nfs) = TcpStream::connect(upstream).await else {
        println!("cannot reach {upstream}");
        return Ok(());
    };
    nfs.write_all(&forward).await?;
    tokio::io::copy_bidirectional(&mut tls, &mut nfs).await?;
    Ok(())
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(args) {
        eprintln!("efs-fake-efs: {e}");
        std::process::exit(1);
    }
}

fn load_keys(path: &Option<PathBuf>) -> Result<HashMap<String, KnownKey>, String> {
    let Some(path) = path else {
        return Ok(HashMap::new());
    };
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut keys = HashMap::new();
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let mut f = line.split_whitespace();
        match (f.next(), f.next(), f.next()) {
            (Some(id), Some(secret), token) => {
                keys.insert(
                    id.to_string(),
                    KnownKey {
                        secret_access_key: secret.to_string(),
                        session_token: token.map(str::to_string),
                    },
                );
            }
            _ => {
                return Err(format!(
                    "{}: not `AKID SECRET [TOKEN]`: {line}",
                    path.display()
                ))
            }
        }
    }
    Ok(keys)
}

fn run(args: Args) -> Result<(), String> {
    let keys = load_keys(&args.keys)?;
    // serves for the life of the process
    let mut _api = None;
    if let Some(addr) = args.aws_api {
        let (akid, known) = keys
            .iter()
            .min_by_key(|(id, _)| id.as_str())
            .ok_or("--aws-api needs a known key (--keys)")?;
        let listener = std::net::TcpListener::bind(addr).map_err(|e| format!("{addr}: {e}"))?;
        let (ip, az_id, region) = (
            &args.mount_target_ip,
            &args.mount_target_az_id,
            &args.region,
        );
        let fixture = ApiFixture {
            access_key_id: akid.clone(),
            secret: known.secret_access_key.clone(),
            session_token: known.session_token.clone(),
            region: region.clone(),
            fs_id: args.fs_id.clone(),
            mount_targets: format!(
                r#"{{"MountTargets":[{{"MountTargetId":"fsmt-e2e","FileSystemId":"{}","LifeCycleState":"available","IpAddress":"{ip}","AvailabilityZoneId":"{az_id}","AvailabilityZoneName":"{region}a"}}]}}"#,
                args.fs_id
            ),
            zones: vec![(format!("{region}a"), az_id.clone())],
        };
        _api = Some(FakeAwsApi::serve(listener, fixture, true));
        println!("aws api on {addr}");
    }
    let policy = FakeEfsPolicy {
        fs_id: args.fs_id.clone(),
        access_point: args.access_point.clone(),
        region: args.region.clone(),
        require_iam: args.require_iam,
        keys,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&args.cert)
        .map_err(|e| format!("{}: {e}", args.cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", args.cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(&args.key)
        .map_err(|e| format!("{}: {e}", args.key.display()))?;
    let verifier = FakeEfsVerifier::new(policy);
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_client_cert_verifier(verifier.clone())
    .with_single_cert(certs, key)
    .map_err(|e| e.to_string())?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let partitioned = args.partition_id.map(|id| {
        Arc::new(Partitioned {
            id,
            scale_up: ScaleUpFigures {
                max_multiplexed_connections: args.max_connections,
                scale_up_bytes_per_ms_threshold: args.scale_up_bytes_per_ms,
                scale_up_threshold_breached_duration_ms: args.scale_up_breached_ms,
                scale_up_lookback_window_size_ms: args.scale_up_lookback_ms,
            },
        })
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let listener = TcpListener::bind(args.listen)
            .await
            .map_err(|e| format!("{}: {e}", args.listen))?;
        // Every verdict, in order, as it is recorded (one reporter, so none is missed or
        // printed twice however connections interleave).
        let reporter = verifier.clone();
        tokio::spawn(async move {
            let mut printed = 0;
            loop {
                let all = reporter.verdicts();
                all.iter().skip(printed).for_each(report);
                printed = all.len();
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        });
        println!("listening on {}", args.listen);
        if let Some(p) = &partitioned {
            println!("partition {} scale-up {:?}", hex(&p.id), p.scale_up);
        }
        let _ = std::io::stdout().flush();
        let accepted = Arc::new(AtomicU64::new(0));
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, upstream) = (acceptor.clone(), args.connect);
            let (partitioned, accepted) = (partitioned.clone(), accepted.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let nth = accepted.fetch_add(1, Ordering::Relaxed) + 1;
                let _ = serve(tls, upstream, partitioned.as_deref(), nth).await;
            });
        }
    })
}

fn report(v: &Verdict) {
    match v {
        Verdict::Allowed(id) => println!(
            "allowed AKID={} ap={} source={}",
            id.access_key_id.as_deref().unwrap_or("-"),
            id.access_point.as_deref().unwrap_or("-"),
            id.source
        ),
        Verdict::Denied(why) => println!("denied {why:?}"),
    }
    let _ = std::io::stdout().flush();
}
