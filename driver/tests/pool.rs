//! The driver's endpoint pool against real servers in this process: replicas that a
//! name resolves to come and go (a resolver the test controls stands in for DNS), a
//! replica shut down mid-run loses no call, and an endpoint that never answers never
//! holds a call up.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Local, start};
use crossbatch_driver::balance::{Balance, Pool, PoolConfig, Resolver, Target, parse_targets};
use crossbatch_driver::load::{Mode, StepConfig};
use crossbatch_driver::{sweep, workload};
use crossbatch_proto::v1::{Pair, ScoreRequest};
use tonic::Code;
use tonic::metadata::MetadataMap;

fn config(balance: Balance, resolver: Resolver) -> PoolConfig {
    PoolConfig {
        balance,
        retries: 2,
        resolve_every: Duration::from_millis(100),
        seed: 5,
        resolver,
    }
}

/// A pool over a `--target` list of URLs.
async fn url_pool(list: &str, balance: Balance) -> Pool {
    Pool::start(
        parse_targets(list).expect("targets"),
        Default::default(),
        config(balance, Resolver::default()),
    )
    .await
    .expect("pool")
}

fn addr(server: &Local) -> SocketAddr {
    server
        .url
        .trim_start_matches("http://")
        .parse()
        .expect("ip:port")
}

fn request() -> ScoreRequest {
    ScoreRequest {
        pairs: vec![Pair {
            query: "what is a replica".into(),
            passage: "a copy of a server that takes its share of the calls".into(),
        }],
        raw_scores: false,
    }
}

/// The replica that answered each of `n` calls (one at a time); every call must succeed.
async fn answered_by(pool: &Pool, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        let o = pool
            .score(request(), MetadataMap::new(), Some(Duration::from_secs(30)))
            .await;
        if let Err(e) = &o.result {
            panic!("call failed at {}: {e}", o.endpoint);
        }
        out.push(o.instance);
    }
    out
}

/// Polls the pool until `pred` holds of its snapshot (the state, not a sleep).
async fn until(
    pool: &Pool,
    what: &str,
    pred: impl Fn(&[crossbatch_driver::balance::pool::MemberSnapshot]) -> bool,
) {
    let give_up = Instant::now() + Duration::from_secs(60);
    while !pred(&pool.snapshot()) {
        assert!(Instant::now() < give_up, "{what}: {:?}", pool.snapshot());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn in_rotation(snap: &[crossbatch_driver::balance::pool::MemberSnapshot], a: SocketAddr) -> bool {
    snap.iter()
        .any(|m| m.endpoint == a.to_string() && m.in_rotation)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_a_name_gains_get_calls_and_those_it_loses_get_none() {
    let a = start(&["--instance-id", "a", "--batch-timeout-ms", "1"]).await;
    let b = start(&["--instance-id", "b", "--batch-timeout-ms", "1"]).await;
    let (addr_a, addr_b) = (addr(&a), addr(&b));
    let dns: Arc<Mutex<Vec<SocketAddr>>> = Arc::new(Mutex::new(vec![addr_a]));
    let resolver = {
        let dns = Arc::clone(&dns);
        Resolver::new(move |_, _| {
            let now = dns.lock().expect("lock").clone();
            Box::pin(async move { Ok(now) })
        })
    };
    let pool = Pool::start(
        vec![Target::Dns {
            host: "replicas".into(),
            port: 50051,
        }],
        Default::default(),
        config(Balance::P2c, resolver),
    )
    .await
    .expect("pool");
    pool.wait_ready(Duration::from_secs(120))
        .await
        .expect("a serving");
    assert!(answered_by(&pool, 10).await.iter().all(|i| i == "a"));

    // b appears: it is checked, then takes calls.
    dns.lock().expect("lock").push(addr_b);
    until(&pool, "b comes into rotation", |s| in_rotation(s, addr_b)).await;
    // One at a time both have no call in flight, so p2c's tie goes to its first pick:
    // random, so each gets some of 40 (chance of none: 2^-40).
    let by = answered_by(&pool, 40).await;
    let to_b = by.iter().filter(|i| *i == "b").count();
    assert!(to_b > 0 && to_b < 40, "calls to b: {to_b} of 40");

    // a vanishes from the name: no call goes to it any more, though it still serves.
    *dns.lock().expect("lock") = vec![addr_b];
    until(&pool, "a leaves rotation", |s| !in_rotation(s, addr_a)).await;
    assert!(answered_by(&pool, 20).await.iter().all(|i| i == "b"));
    // The records keep the replica that left.
    assert!(
        pool.snapshot()
            .iter()
            .any(|m| m.endpoint == addr_a.to_string())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_shut_down_mid_run_loses_no_call() {
    let a = start(&["--instance-id", "a", "--batch-timeout-ms", "1"]).await;
    let mut b = start(&["--instance-id", "b", "--batch-timeout-ms", "1"]).await;
    let pool = url_pool(&format!("{},{}", a.url, b.url), Balance::RoundRobin).await;
    pool.wait_ready(Duration::from_secs(120))
        .await
        .expect("both serving");
    let pairs = 400;
    let cfg = sweep::SweepConfig {
        template: StepConfig {
            step: 0,
            batch: 2,
            concurrency: 3,
            pairs,
            warmup_calls: 0,
            deadline: Some(Duration::from_secs(60)),
            mode: Mode::Closed,
            run_id: "shutdown".into(),
            driver_id: "d0".into(),
            api_key: None,
        },
        batches: vec![2],
        concurrencies: vec![3],
        progress_every: Duration::ZERO,
    };
    let run = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let (_tx, stop) = tokio::sync::watch::channel(false);
            sweep::run(
                pool,
                Arc::new(workload::synthetic(100, 2)),
                &cfg,
                stop,
                None,
                Default::default(),
                None,
            )
            .await
        })
    };
    // Once b has answered, it begins its graceful shutdown (NOT_SERVING, drain, exit).
    let b_key = addr(&b).to_string();
    until(&pool, "b answers a call", |s| {
        s.iter()
            .any(|m| m.endpoint == b_key && m.last_ok_unix_nano > 0)
    })
    .await;
    let _ = b.stop.take().map(|t| t.send(()));
    let r = run.await.expect("sweep task");
    let _ = (&mut b.task).await;

    let s = &r.summaries[0];
    assert_eq!(s.pairs_ok, pairs, "errors: {:?}", s.errors);
    assert!(s.errors.is_empty(), "{:?}", s.errors);
    let by_b = r.samples.iter().filter(|c| c.instance == "b").count();
    let by_a = r.samples.iter().filter(|c| c.instance == "a").count();
    assert!(by_b > 0 && by_a > by_b, "a {by_a}, b {by_b}");
    let end = r
        .endpoints
        .iter()
        .find(|e| e.endpoint == b_key)
        .expect("b's record");
    assert!(end.ejected_at_end, "{end:?}");
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_never_answers_holds_no_call_up() {
    // A port that refuses connections: bound, then closed.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let only_dead = url_pool(&format!("http://{dead}"), Balance::P2c).await;
    let e = only_dead
        .wait_ready(Duration::from_millis(500))
        .await
        .expect_err("nothing is serving");
    assert!(e.contains(&dead.to_string()), "{e}");
    let o = only_dead
        .score(
            request(),
            MetadataMap::new(),
            Some(Duration::from_millis(300)),
        )
        .await;
    let code = o.result.expect_err("no endpoint").code();
    assert!(
        matches!(code, Code::DeadlineExceeded | Code::Unavailable),
        "{code:?}"
    );

    let a = start(&["--instance-id", "a", "--batch-timeout-ms", "1"]).await;
    let pool = url_pool(&format!("{},http://{dead}", a.url), Balance::RoundRobin).await;
    // Waits for a, gives up on the dead one after the timeout and goes on without it.
    pool.wait_ready(Duration::from_secs(120))
        .await
        .expect("going on with a");
    assert!(answered_by(&pool, 20).await.iter().all(|i| i == "a"));
    let snap = pool.snapshot();
    let d = snap
        .iter()
        .find(|m| m.endpoint == dead.to_string())
        .expect("dead endpoint known");
    assert!(!d.in_rotation);
}
