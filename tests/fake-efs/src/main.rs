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
//! Every verdict is one line on stdout (`allowed AKID=... ap=...` or `denied ...`), so a
//! case can check who got in. Known keys come from a file of `AKID SECRET [TOKEN]` lines
//! (root's, mode 0600, in the guest).

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use efs_iam::testing::{KnownKey, Verdict};
use efs_testkit::aws_api::{ApiFixture, FakeAwsApi};
use efs_testkit::efs::{FakeEfsPolicy, FakeEfsVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
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
        let _ = std::io::stdout().flush();
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, upstream) = (acceptor.clone(), args.connect);
            tokio::spawn(async move {
                let tls = acceptor.accept(tcp).await;
                let Ok(mut tls) = tls else {
                    return;
                };
                let Ok(mut nfs) = TcpStream::connect(upstream).await else {
                    println!("cannot reach {upstream}");
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut nfs).await;
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
