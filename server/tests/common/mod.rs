//! The server harness shared by the gRPC tests: the stand-in on the CPU backend,
//! listening on loopback, stopped cleanly at the end.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use crossbatch_proto::client::ClientTls;
use crossbatch_proto::v1::cross_encoder_client::CrossEncoderClient;
use crossbatch_server::serve::{ServeArgs, serve};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

pub struct Server {
    pub addr: String,
    pub tls: ClientTls,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), crossbatch_server::serve::StartError>>,
}

impl Server {
    pub async fn start(extra: &[&str]) -> Server {
        Self::start_with(extra, "http", ClientTls::default()).await
    }

    /// A server with `extra` flags, reached over `scheme` (`https` with `tls`).
    pub async fn start_with(extra: &[&str], scheme: &str, tls: ClientTls) -> Server {
        let dir = crossbatch_model::standin::ensure_default().expect("offline stand-in");
        let mut argv = vec![
            "serve".to_string(),
            "--model".into(),
            dir.to_string_lossy().into_owned(),
            "--backend".into(),
            "cpu".into(),
            "--tokenizer-workers".into(),
            "1".into(),
        ];
        argv.extend(extra.iter().map(|s| s.to_string()));
        let args = ServeArgs::try_parse_from(argv).expect("valid args");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = format!("{scheme}://{}", listener.local_addr().expect("addr"));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(serve(args, listener, async move {
            let _ = rx.await;
        }));
        let server = Server {
            addr,
            tls,
            stop: Some(tx),
            task,
        };
        server.wait_serving().await;
        server
    }

    pub fn endpoint(&self) -> tonic::transport::Endpoint {
        crossbatch_proto::client::endpoint(&self.addr, &self.tls).expect("endpoint")
    }

    pub async fn channel(&self) -> Channel {
        self.endpoint().connect().await.expect("connect")
    }

    pub async fn client(&self) -> CrossEncoderClient<Channel> {
        CrossEncoderClient::new(self.channel().await)
    }

    pub async fn wait_serving(&self) {
        let until = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(ch) = self.endpoint().connect().await {
                let mut h = HealthClient::new(ch);
                let r = h
                    .check(HealthCheckRequest {
                        service: "crossbatch.v1.CrossEncoder".into(),
                    })
                    .await;
                if let Ok(r) = r
                    && r.into_inner().status == ServingStatus::Serving as i32
                {
                    return;
                }
            }
            assert!(Instant::now() < until, "server never became SERVING");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn stop(self) {
        self.stop_result().await.expect("server exits cleanly");
    }

    /// Asks the server to stop and returns how its drain ended.
    pub async fn stop_result(mut self) -> Result<(), crossbatch_server::serve::StartError> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(120), &mut self.task)
            .await
            .expect("server stops within 120 s")
            .expect("server task")
    }
}

/// Polls `Info` until `done` holds for it, and returns it. The limit only turns a
/// hang into a failure; no test depends on how fast the state arrives.
pub async fn wait_info(
    client: &mut CrossEncoderClient<Channel>,
    what: &str,
    done: impl Fn(&crossbatch_proto::v1::InfoResponse) -> bool,
) -> crossbatch_proto::v1::InfoResponse {
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        let info = client
            .info(crossbatch_proto::v1::InfoRequest {})
            .await
            .expect("info")
            .into_inner();
        if done(&info) {
            return info;
        }
        assert!(Instant::now() < until, "never saw: {what} (last {info:?})");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Reads `/metrics` from `addr` (status line, headers and body).
pub async fn scrape(addr: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("metrics");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    out
}

/// A loopback address nothing listens on yet.
pub fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").to_string()
}

/// `serve` with the stand-in on the CPU and `extra` flags must fail to start: its error.
pub async fn start_error(extra: &[&str]) -> crossbatch_server::serve::StartError {
    let mut argv = vec!["serve", "--model", "stand-in", "--backend", "cpu"];
    argv.extend_from_slice(extra);
    let args = ServeArgs::try_parse_from(argv).expect("args parse");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    tokio::time::timeout(
        Duration::from_secs(60),
        serve(args, listener, std::future::pending()),
    )
    .await
    .expect("fails, not hangs")
    .expect_err("must not start")
}

/// The server binary on loopback, killed when dropped.
pub struct Process {
    pub child: Child,
    pub url: String,
    pub metrics: String,
}

impl Process {
    pub fn start(extra: &[&str]) -> Self {
        let dir = crossbatch_model::standin::ensure_default().expect("offline stand-in");
        let addr = free_addr();
        let metrics = free_addr();
        let child = Command::new(env!("CARGO_BIN_EXE_crossbatch-server"))
            .args(["serve", "--backend", "cpu", "--tokenizer-workers", "1"])
            .arg("--model")
            .arg(&dir)
            .args(["--listen", &addr, "--metrics-addr", &metrics])
            .args(extra)
            .stdout(Stdio::null())
            .env("RUST_LOG", "warn")
            .stderr(Stdio::inherit())
            .spawn()
            .expect("server binary");
        Self {
            child,
            url: format!("http://{addr}"),
            metrics,
        }
    }

    /// `(current, peak)` resident memory in bytes, from the kernel's own accounting.
    pub fn rss(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("/proc status");
        let kib = |key: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{key} in /proc status"))
        };
        (kib("VmRSS:") * 1024, kib("VmHWM:") * 1024)
    }

    /// Sends `sig` to the server process (SIGSTOP to freeze it, say).
    pub fn signal(&self, sig: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) takes any pid and signal number and reports misuse through
        // its return value; the pid is our own child, not yet reaped.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(
            rc,
            0,
            "kill({pid}, {sig}): {}",
            std::io::Error::last_os_error()
        );
    }

    pub async fn metric(&self, name: &str) -> f64 {
        let body = scrape(&self.metrics).await;
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing in\n{body}"))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
