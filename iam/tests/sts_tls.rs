//! STS over HTTPS: a TLS fake on 127.0.0.1 whose certificate chains to a private CA is
//! trusted only when `AWS_CA_BUNDLE` names that CA (the webpki roots do not know it).

mod common;

use common::{env, Scratch};
use efs_iam::credentials::{obtain, Endpoints, Error, HttpProblem, Request};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

const JWT: &str = "eyJhbGciOiJSUzI1NiJ9.e30.c2ln";

/// A private CA and an HTTPS STS fake with a certificate for 127.0.0.1 from it.
fn tls_sts() -> (String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone()],
        rustls_pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
    )
    .unwrap();
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://{}/", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(tcp) = tcp else { continue };
            let _ = tcp.set_read_timeout(Some(Duration::from_secs(5)));
            let Ok(conn) = rustls::ServerConnection::new(config.clone()) else {
                continue;
            };
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            let mut reader = BufReader::new(&mut tls);
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0; len];
            if reader.read_exact(&mut body).is_err() {
                continue;
            }
            let answer = "<AssumeRoleWithWebIdentityResponse><AssumeRoleWithWebIdentityResult><Credentials><AccessKeyId>ASIATLSEXAMPLE000001</AccessKeyId><SecretAccessKey>s</SecretAccessKey><SessionToken>t</SessionToken><Expiration>2026-12-01T21:38:06Z</Expiration></Credentials></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>";
            let _ = write!(
                tls,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                answer.len()
            );
            tls.conn.send_close_notify();
            let _ = tls.flush();
        }
    });
    (url, ca.pem())
}

fn try_with(bundle: Option<&str>) -> Result<String, Error> {
    let (url, ca_pem) = tls_sts();
    let home = Scratch::new("tls");
    let jwt = home.write("jwt", JWT);
    let mut e = env(&[("HOME", home.path().to_str().unwrap())]);
    if let Some(other) = bundle {
        let pem = if other == "ca" {
            ca_pem
        } else {
            other.to_string()
        };
        let path = home.write("bundle.pem", &pem);
        e.insert("AWS_CA_BUNDLE".into(), path.to_str().unwrap().into());
    }
    let ep = Endpoints {
        ecs: common::closed(),
        imds: common::closed(),
        sts: Some(url),
        sts_timeout: Duration::from_secs(3),
        ..Endpoints::default()
    };
    let req = Request {
        rolearn: Some("arn:aws:iam::123456789012:role/efs"),
        jwtpath: jwt.to_str(),
        region: "eu-west-1",
        ..Request::default()
    };
    obtain(&req, &e, &ep).map(|o| o.credentials.access_key_id.to_string())
}

#[test]
fn sts_over_https_is_trusted_through_aws_ca_bundle() {
    assert_eq!(try_with(Some("ca")).unwrap(), "ASIATLSEXAMPLE000001");
}

#[test]
fn sts_over_https_with_an_unknown_ca_is_refused_and_says_why() {
    let e = try_with(None).unwrap_err();
    assert!(
        matches!(
            &e,
            Error::Endpoint {
                what: "STS",
                problem: HttpProblem::Tls(_),
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("UnknownIssuer"), "{e}");
    assert!(e.to_string().contains("AWS_CA_BUNDLE"), "{e}");
}
