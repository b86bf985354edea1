//! A real server in this process (the stand-in, CPU backend) on a loopback port.

use clap::Parser;
use crossbatch_server::serve::{ServeArgs, serve};

/// One server; `stop` begins its graceful shutdown, `task` ends when it has stopped.
pub struct Local {
    pub url: String,
    pub stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub task: tokio::task::JoinHandle<Result<(), crossbatch_server::serve::StartError>>,
}

pub async fn start(extra: &[&str]) -> Local {
    let dir = crossbatch_model::standin::ensure(&crossbatch_model::standin::default_dir())
        .expect("stand-in");
    let mut argv: Vec<String> = [
        "serve",
        "--model",
        dir.to_str().expect("utf-8"),
        "--backend",
        "cpu",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    argv.extend(extra.iter().map(|s| s.to_string()));
    let args = ServeArgs::try_parse_from(argv).expect("args");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(serve(args, listener, async move {
        let _ = rx.await;
    }));
    Local {
        url,
        stop: Some(tx),
        task,
    }
}
