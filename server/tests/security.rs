//! TLS, mutual TLS and API keys, and the calls refused before any handler runs
//! (malformed bodies, oversize messages), over loopback with certificates made here.

mod common;

use std::path::{Path, PathBuf};

use common::{Server, free_addr, scrape};
use crossbatch_proto::client::{ClientTls, Secret, authorize};
use crossbatch_proto::v1::cross_encoder_client::CrossEncoderClient;
use crossbatch_proto::v1::{InfoRequest, Pair, ScoreRequest};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// A CA and a certificate it signed, as PEM files in a temp dir.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn path_str(&self, name: &str) -> String {
        self.path(name).to_string_lossy().into_owned()
    }
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).expect("write pem");
}

/// `ca.pem`, `server.pem`/`server.key` for 127.0.0.1 and localhost, and
/// `client.pem`/`client.key`, all signed by the CA; `other-ca.pem` signed nothing.
fn make_pki() -> Pki {
    let dir = tempfile::tempdir().expect("tmp");
    let ca = |name: &str| {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("self-signed");
        (cert.pem(), Issuer::new(params, key))
    };
    let (ca_pem, issuer) = ca("crossbatch test CA");
    write(dir.path(), "ca.pem", &ca_pem);
    let (other_pem, _) = ca("someone else");
    write(dir.path(), "other-ca.pem", &other_pem);
    for (name, sans) in [
        (
            "server",
            vec!["127.0.0.1".to_string(), "localhost".to_string()],
        ),
        ("client", vec!["driver.test".to_string()]),
    ] {
        let key = KeyPair::generate().expect("key");
        let params = CertificateParams::new(sans).expect("params");
        let cert = params.signed_by(&key, &issuer).expect("signed");
        write(dir.path(), &format!("{name}.pem"), &cert.pem());
        write(dir.path(), &format!("{name}.key"), &key.serialize_pem());
    }
    Pki { dir }
}

fn score_request() -> ScoreRequest {
    ScoreRequest {
        pairs: vec![Pair {
            query: "what is tls".into(),
            passage: "TLS encrypts connections.".into(),
        }],
        raw_scores: true,
    }
}

fn trusting(pki: &Pki) -> ClientTls {
    ClientTls {
        ca: Some(pki.path("ca.pem")),
        ..Default::default()
    }
}

/// A server on https with `server.pem` (127.0.0.1 and localhost), trusted by `pki`'s CA.
async fn tls_server(pki: &Pki) -> Server {
    Server::start_with(
        &[
            "--tls-cert",
            &pki.path_str("server.pem"),
            "--tls-key",
            &pki.path_str("server.key"),
        ],
        "https",
        trusting(pki),
    )
    .await
}

/// One Score call over a fresh connection to `url` with `tls`.
async fn score_once(url: &str, tls: &ClientTls) -> Result<(), String> {
    let endpoint = crossbatch_proto::client::endpoint(url, tls)?;
    let channel = endpoint.connect().await.map_err(|e| format!("{e:?}"))?;
    CrossEncoderClient::new(channel)
        .score(score_request())
        .await
        .map(|_| ())
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_https_and_refuses_plaintext_and_unknown_cas() {
    let pki = make_pki();
    let server = tls_server(&pki).await;
    score_once(&server.addr, &trusting(&pki))
        .await
        .expect("a call over TLS with the CA trusted");

    let plain = server.addr.replacen("https://", "http://", 1);
    let err = score_once(&plain, &ClientTls::default())
        .await
        .expect_err("plaintext must be refused");
    eprintln!("plaintext: {err}");

    let stranger = ClientTls {
        ca: Some(pki.path("other-ca.pem")),
        ..Default::default()
    };
    let err = score_once(&server.addr, &stranger)
        .await
        .expect_err("a certificate from an untrusted CA must be refused");
    eprintln!("untrusted CA: {err}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_needs_a_client_certificate_from_the_ca() {
    let pki = make_pki();
    let with_cert = ClientTls {
        ca: Some(pki.path("ca.pem")),
        cert: Some(pki.path("client.pem")),
        key: Some(pki.path("client.key")),
        domain: None,
    };
    let server = Server::start_with(
        &[
            "--tls-cert",
            &pki.path_str("server.pem"),
            "--tls-key",
            &pki.path_str("server.key"),
            "--tls-client-ca",
            &pki.path_str("ca.pem"),
        ],
        "https",
        with_cert.clone(),
    )
    .await;
    score_once(&server.addr, &with_cert)
        .await
        .expect("a client certificate signed by the CA");
    let err = score_once(&server.addr, &trusting(&pki))
        .await
        .expect_err("no client certificate must be refused");
    eprintln!("no client certificate: {err}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tls_files_stop_the_start_with_a_message() {
    let pki = make_pki();
    std::fs::write(pki.path("garbage.pem"), "not a certificate").unwrap();
    for (cert, key, want) in [
        ("nope.pem", "server.key", "--tls-cert"),
        ("server.pem", "nope.key", "--tls-key"),
        ("garbage.pem", "server.key", "--tls-cert/--tls-key"),
    ] {
        let err = common::start_error(&[
            "--tls-cert",
            &pki.path_str(cert),
            "--tls-key",
            &pki.path_str(key),
        ])
        .await;
        assert!(err.to_string().contains(want), "{want}: {err}");
    }
}

fn has_line(body: &str, line: &str) -> bool {
    body.lines().any(|l| l == line)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_is_required_on_the_api_but_not_on_health() {
    let metrics = free_addr();
    let dir = tempfile::tempdir().expect("tmp");
    let key_file = dir.path().join("api-key");
    std::fs::write(&key_file, "s3cret-key\n").expect("key file");
    let server = Server::start(&[
        "--metrics-addr",
        &metrics,
        "--api-key-file",
        key_file.to_str().unwrap(),
    ])
    .await;
    let mut client = server.client().await;

    let missing = client.score(score_request()).await.expect_err("no key");
    assert_eq!(missing.code(), Code::Unauthenticated);
    assert!(
        missing.message().contains("authorization: Bearer"),
        "{}",
        missing.message()
    );

    let mut wrong = tonic::Request::new(score_request());
    authorize(&mut wrong, Some(&Secret::new("guess").unwrap()));
    let wrong = client.score(wrong).await.expect_err("wrong key");
    assert_eq!(wrong.code(), Code::Unauthenticated);
    assert_eq!(wrong.message(), "invalid API key");
    assert!(!wrong.message().contains("s3cret"));

    let key = Secret::new("s3cret-key").unwrap();
    let mut right = tonic::Request::new(score_request());
    authorize(&mut right, Some(&key));
    client.score(right).await.expect("the right key");
    let mut info = tonic::Request::new(InfoRequest {});
    authorize(&mut info, Some(&key));
    client.info(info).await.expect("Info with the key");
    assert_eq!(
        client.info(InfoRequest {}).await.unwrap_err().code(),
        Code::Unauthenticated
    );

    // Orchestrators probe health without a key.
    let health = HealthClient::new(server.channel().await)
        .check(HealthCheckRequest {
            service: "crossbatch.v1.CrossEncoder".into(),
        })
        .await
        .expect("health is open");
    assert_eq!(health.into_inner().status, 1, "SERVING");

    let body = scrape(&metrics).await;
    assert!(
        has_line(
            &body,
            "crossbatch_requests_total{outcome=\"unauthenticated\"} 3"
        ),
        "{body}"
    );
    assert!(
        has_line(&body, "crossbatch_requests_total{outcome=\"ok\"} 1"),
        "{body}"
    );
    server.stop().await;
}

/// Sends `body` as the Score request's protobuf bytes, whatever they are.
async fn score_raw(server: &Server, body: Vec<u8>) -> tonic::Status {
    let channel = server.channel().await;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let path =
        tonic::codegen::http::uri::PathAndQuery::from_static("/crossbatch.v1.CrossEncoder/Score");
    grpc.unary::<Vec<u8>, Vec<u8>, RawCodec>(tonic::Request::new(body), path, RawCodec)
        .await
        .expect_err("the server must refuse this body")
}

/// Bytes in, bytes out: a client that can send what no protobuf encoder would.
#[derive(Clone, Copy)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf;
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversize_requests_get_invalid_argument_and_are_counted() {
    let metrics = free_addr();
    // 2 pairs of 100-byte texts: the transport accepts 2 × (2 × 100 + 32) + 64 = 528
    // bytes.
    let server = Server::start(&[
        "--metrics-addr",
        &metrics,
        "--max-client-batch",
        "2",
        "--max-text-bytes",
        "100",
    ])
    .await;
    // ScoreRequest.pairs[0].query holding bytes that are not UTF-8.
    let bad_utf8 = vec![0x0a, 0x04, 0x0a, 0x02, 0xff, 0xfe];
    let s = score_raw(&server, bad_utf8).await;
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert!(
        s.message().starts_with("malformed request:"),
        "{}",
        s.message()
    );
    assert!(
        s.message().contains("UTF-8") || s.message().contains("utf-8"),
        "{}",
        s.message()
    );
    // A length prefix that runs past the end of the message.
    let truncated = vec![0x0a, 0x7f, 0x0a];
    let s = score_raw(&server, truncated).await;
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert!(
        s.message().starts_with("malformed request:"),
        "{}",
        s.message()
    );

    // A well-formed message over the limit is refused from its length prefix.
    let big = ScoreRequest {
        pairs: vec![
            Pair {
                query: "q".repeat(100),
                passage: "p".repeat(600),
            };
            1
        ],
        raw_scores: true,
    };
    let s = server
        .client()
        .await
        .score(big)
        .await
        .expect_err("over the transport limit");
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert!(
        s.message().starts_with("request too large"),
        "{}",
        s.message()
    );

    // Still serving, and every refusal counted under its own outcome.
    server
        .client()
        .await
        .score(score_request())
        .await
        .expect("a good call after the bad ones");
    let body = scrape(&metrics).await;
    for line in [
        "crossbatch_requests_total{outcome=\"malformed\"} 2",
        "crossbatch_requests_total{outcome=\"too_large\"} 1",
        "crossbatch_requests_total{outcome=\"ok\"} 1",
        "crossbatch_requests_total{outcome=\"internal\"} 0",
    ] {
        assert!(has_line(&body, line), "missing {line:?} in\n{body}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_names_the_replica_refusals_included() {
    let server = Server::start(&["--instance-id", "replica-7", "--api-key", "k3y"]).await;
    let mut client = server.client().await;
    let named = |md: &tonic::metadata::MetadataMap| {
        md.get(crossbatch_proto::attrs::INSTANCE_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };

    let key = Secret::new("k3y").unwrap();
    let mut info = tonic::Request::new(InfoRequest {});
    authorize(&mut info, Some(&key));
    let info = client.info(info).await.expect("Info");
    assert_eq!(named(info.metadata()).as_deref(), Some("replica-7"));
    assert_eq!(info.into_inner().instance_id, "replica-7");

    let mut score = tonic::Request::new(score_request());
    authorize(&mut score, Some(&key));
    let ok = client.score(score).await.expect("scored");
    assert_eq!(named(ok.metadata()).as_deref(), Some("replica-7"));

    // Refused before any handler (no key): still named.
    let refused = client.score(score_request()).await.expect_err("no key");
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert_eq!(named(refused.metadata()).as_deref(), Some("replica-7"));

    // A name that cannot go in a header is refused on the command line, with why.
    let e = <crossbatch_server::serve::ServeArgs as clap::Parser>::try_parse_from([
        "serve",
        "--instance-id",
        "two words",
    ])
    .expect_err("refused");
    assert!(e.to_string().contains("--instance-id"), "{e}");
    server.stop().await;
}

/// A pool over `dns:///NAME:port`, NAME resolved (by a resolver the test controls) to
/// the TLS server's loopback address; true when a call through it succeeds.
async fn pool_via_name(server: &Server, name: &str, pki: &Pki) -> Result<(), String> {
    use crossbatch_driver::balance::{Balance, Pool, PoolConfig, Resolver, Target};
    let addr: std::net::SocketAddr = server
        .addr
        .trim_start_matches("https://")
        .parse()
        .expect("ip:port");
    let pool = Pool::start(
        vec![Target::Dns {
            host: name.into(),
            port: addr.port(),
        }],
        trusting(pki),
        PoolConfig {
            balance: Balance::P2c,
            retries: 0,
            resolve_every: std::time::Duration::from_millis(200),
            seed: 1,
            resolver: Resolver::new(move |_, _| Box::pin(async move { Ok(vec![addr]) })),
        },
    )
    .await?;
    pool.wait_ready(std::time::Duration::from_secs(3)).await?;
    pool.score(
        score_request(),
        tonic::metadata::MetadataMap::new(),
        Some(std::time::Duration::from_secs(30)),
    )
    .await
    .result
    .map(|_| ())
    .map_err(|s| s.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_the_replicas_of_a_name_verifies_that_name_not_the_address() {
    let pki = make_pki();
    let server = tls_server(&pki).await;
    // The certificate names localhost (and 127.0.0.1): dialled as a replica of
    // "localhost" it verifies.
    pool_via_name(&server, "localhost", &pki)
        .await
        .expect("the certificate names localhost");
    // The same address as a replica of a name the certificate does not hold is
    // refused, though the certificate holds the address itself.
    let e = pool_via_name(&server, "replicas.example", &pki)
        .await
        .expect_err("the certificate does not name replicas.example");
    assert!(e.contains("SERVING"), "{e}");
    server.stop().await;
}
