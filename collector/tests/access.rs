//! Who may send to the collector: with `--api-key`, every export and coordination
//! call on its port needs `authorization: Bearer KEY` (UNAUTHENTICATED otherwise,
//! before anything is stored); with TLS, only TLS clients that trust its certificate
//! get through. Real gRPC over loopback, certificates made here with rcgen; the
//! clients dial as the server and the drivers do (`CollectorAccess`).

mod otlp;

use std::time::Duration;

use crossbatch_collector::serve::{CollectConfig, CollectorError, serve};
use crossbatch_proto::client::Secret;
use crossbatch_proto::collector_access::CollectorAccess;
use crossbatch_proto::v1::JoinRequest;
use crossbatch_proto::v1::coordinator_client::CoordinatorClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use otlp::{Peer, export, whole_run};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use tonic::Code;

type Task = tokio::task::JoinHandle<Result<Vec<std::path::PathBuf>, CollectorError>>;

/// A collector on loopback that writes the first whole run's report and exits.
async fn collector(
    out: &std::path::Path,
    key: Option<&str>,
    tls: Option<tonic::transport::ServerTlsConfig>,
) -> (std::net::SocketAddr, Task) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let cfg = CollectConfig {
        once: true,
        grace: Duration::from_millis(200),
        join_timeout: Duration::from_secs(60),
        api_key: key.map(|k| Secret::new(k).expect("key")),
        tls,
        ..CollectConfig::new(out, "access")
    };
    (
        addr,
        tokio::spawn(serve(cfg, listener, std::future::pending())),
    )
}

/// Exports a whole run of `run_id` to `url` as `access` dials; the gRPC status.
async fn send(access: &CollectorAccess, url: &str, run_id: &str) -> Result<(), tonic::Status> {
    let channel = access
        .channel(url, Duration::from_secs(10))
        .expect("channel");
    let peer = Peer {
        run_id: run_id.into(),
        ..Peer::benign()
    };
    let mut request = tonic::Request::new(export(whole_run(&peer, 3)));
    access.authorize(&mut request);
    TraceServiceClient::new(channel)
        .export(request)
        .await
        .map(|_| ())
}

/// The runs in the report the collector wrote.
async fn reported_run(task: Task) -> String {
    let paths = tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("report in time")
        .expect("task")
        .expect("collector");
    assert_eq!(paths.len(), 1, "{paths:?}");
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(paths[0].with_extension("json")).expect("json"),
    )
    .expect("json");
    json["run_id"].as_str().expect("run id").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_and_joins_need_the_api_key() {
    let dir = tempfile::tempdir().expect("tmp");
    let (addr, task) = collector(dir.path(), Some("s3cret-key"), None).await;
    let url = format!("http://{addr}");
    let keyed = |k: &str| CollectorAccess::default().with_key(Some(Secret::new(k).expect("key")));

    let missing = send(&CollectorAccess::default(), &url, "no-key")
        .await
        .expect_err("refused");
    assert_eq!(missing.code(), Code::Unauthenticated, "{missing}");
    assert!(missing.message().contains("missing API key"), "{missing}");
    let wrong = send(&keyed("s3cret-kez"), &url, "wrong-key")
        .await
        .expect_err("refused");
    assert_eq!(wrong.code(), Code::Unauthenticated, "{wrong}");
    assert_eq!(wrong.message(), "invalid API key");

    // The coordinator on the same port: refused without the key too.
    let channel = CollectorAccess::default()
        .channel(&url, Duration::from_secs(10))
        .expect("channel");
    let join = CoordinatorClient::new(channel)
        .join(JoinRequest {
            run_id: "r".into(),
            driver_id: "d".into(),
            host: "h".into(),
            steps: 1,
        })
        .await
        .expect_err("refused");
    assert_eq!(join.code(), Code::Unauthenticated, "{join}");

    // With the key: accepted, and the report is of that run only (the refused
    // exports stored nothing).
    send(&keyed("s3cret-key"), &url, "with-key")
        .await
        .expect("accepted");
    assert_eq!(reported_run(task).await, "with-key");
}

/// A CA, and a certificate for 127.0.0.1 signed by it, in `dir`: (ca.pem, TLS config).
fn pki(dir: &std::path::Path) -> (std::path::PathBuf, tonic::transport::ServerTlsConfig) {
    let ca_key = KeyPair::generate().expect("key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "collector test CA");
    let ca_pem = ca.self_signed(&ca_key).expect("ca").pem();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().expect("key");
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .expect("params")
        .signed_by(&key, &issuer)
        .expect("signed");
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, ca_pem).expect("write");
    let tls = tonic::transport::ServerTlsConfig::new().identity(
        tonic::transport::Identity::from_pem(cert.pem(), key.serialize_pem()),
    );
    (ca_path, tls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_key_serves_only_trusting_clients_that_send_it() {
    let dir = tempfile::tempdir().expect("tmp");
    let (ca, tls) = pki(dir.path());
    let (addr, task) = collector(&dir.path().join("out"), Some("k3y"), Some(tls)).await;
    let key = Some(Secret::new("k3y").expect("key"));

    // Plaintext to a TLS port: no gRPC exchange at all.
    let plain = send(
        &CollectorAccess::default().with_key(key.clone()),
        &format!("http://{addr}"),
        "plain",
    )
    .await
    .expect_err("plaintext refused");
    // Refused at the transport, never reaching the key check: a broken pipe or a
    // failed connect, or the server's TLS alert read as a malformed HTTP/2 frame
    // (hyper's GOAWAY FRAME_SIZE_ERROR, which tonic reports as INTERNAL); which of
    // these the client sees depends on how the bytes interleave.
    assert!(
        matches!(
            plain.code(),
            Code::Unavailable | Code::Unknown | Code::Internal
        ),
        "{plain}"
    );
    assert!(
        plain.code() != Code::Internal || plain.message().contains("h2 protocol error"),
        "{plain}"
    );
    // TLS without trusting the collector's CA: the handshake fails.
    let untrusted = send(
        &CollectorAccess::default().with_key(key.clone()),
        &format!("https://{addr}"),
        "untrusted",
    )
    .await
    .expect_err("unknown CA refused");
    assert!(
        matches!(untrusted.code(), Code::Unavailable | Code::Unknown),
        "{untrusted}"
    );
    let trusting = CollectorAccess::default().with_ca(Some(ca));
    // Trusted, but no key.
    let no_key = send(&trusting, &format!("https://{addr}"), "tls-no-key")
        .await
        .expect_err("refused");
    assert_eq!(no_key.code(), Code::Unauthenticated, "{no_key}");
    // Trusted, with the key.
    send(
        &trusting.with_key(key),
        &format!("https://{addr}"),
        "tls-run",
    )
    .await
    .expect("accepted over TLS");
    assert_eq!(reported_run(task).await, "tls-run");
}

#[tokio::test]
async fn a_bad_certificate_fails_before_listening() {
    let dir = tempfile::tempdir().expect("tmp");
    let tls = tonic::transport::ServerTlsConfig::new().identity(
        tonic::transport::Identity::from_pem("not a certificate", "not a key"),
    );
    let (_, task) = collector(dir.path(), None, Some(tls)).await;
    let err = task.await.expect("task").expect_err("refused");
    assert!(matches!(err, CollectorError::Tls(_)), "{err}");
}
