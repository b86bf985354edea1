//! `crossbatch-collector serve --dashboard ADDR`: the live page at `/` (its script and
//! styles served here too, no CDN), `GET /api/snapshot` (the figures as JSON), and
//! `GET /events` (server-sent events: the current snapshot at once, then about once a
//! second while it changes). One task computes the snapshot each second however many
//! browsers watch.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::get;
use tokio::sync::watch;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::WatchStream;

use crate::live::{Snapshot, snapshot};
use crate::receiver::Shared;
use crate::report::{Meta, build};

pub const PAGE: &str = include_str!("../assets/dashboard.html");
pub const SCRIPT: &str = include_str!("../assets/dashboard.js");
pub const STYLE: &str = include_str!("../assets/dashboard.css");

/// The snapshot now: the run with records in the store (the newest, when several),
/// else the last run whose report was written, else "waiting".
pub fn current(shared: &Shared, title: &str, expect_drivers: usize) -> Snapshot {
    let run = shared.store().run_ids().into_iter().last();
    if let Some(run_id) = run {
        let data = shared.store().run_data(&run_id);
        if !data.calls.is_empty() {
            let meta = Meta {
                title: title.to_string(),
                description: None,
                partial: None,
                expect_drivers,
                forward: None,
            };
            return snapshot(&build(&data, &meta), true, None);
        }
    }
    shared
        .finished
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .unwrap_or_else(|| Snapshot::waiting(title))
}

/// Recomputes the snapshot each second in which an export or a report arrived, and
/// publishes it (as JSON) when it changed.
pub fn spawn_publisher(
    shared: Arc<Shared>,
    title: String,
    expect_drivers: usize,
) -> watch::Receiver<Arc<String>> {
    let first =
        serde_json::to_string(&current(&shared, &title, expect_drivers)).unwrap_or_default();
    let (tx, rx) = watch::channel(Arc::new(first));
    tokio::spawn(async move {
        let mut seen = shared.generation.load(Ordering::Relaxed);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if tx.is_closed() {
                return;
            }
            // Nothing arrived: the run's figures cannot have moved.
            let now = shared.generation.load(Ordering::Relaxed);
            if now == seen {
                continue;
            }
            seen = now;
            let s = shared.clone();
            let t = title.clone();
            // Building a report copies the run's records: off the async workers.
            let json = tokio::task::spawn_blocking(move || {
                serde_json::to_string(&current(&s, &t, expect_drivers)).unwrap_or_default()
            })
            .await
            .unwrap_or_default();
            tx.send_if_modified(|old| {
                if **old == json {
                    false
                } else {
                    *old = Arc::new(json);
                    true
                }
            });
        }
    });
    rx
}

/// The dashboard's routes over the published snapshots.
pub fn router(snapshots: watch::Receiver<Arc<String>>) -> Router {
    let text = |ct: &'static str, body: &'static str| {
        move || async move { ([(CONTENT_TYPE, ct), (CACHE_CONTROL, "no-cache")], body) }
    };
    let for_api = snapshots.clone();
    let for_page = snapshots.clone();
    Router::new()
        .route(
            "/",
            get(move || {
                // The current snapshot inline: the page shows figures at once.
                let json = for_page.borrow().replace('<', "\\u003c");
                async move {
                    (
                        [
                            (CONTENT_TYPE, "text/html; charset=utf-8"),
                            (CACHE_CONTROL, "no-cache"),
                        ],
                        PAGE.replace(
                            "<!--INITIAL-->",
                            &format!(
                                r#"<script type="application/json" id="initial">{json}</script>"#
                            ),
                        ),
                    )
                }
            }),
        )
        .route(
            "/dashboard.js",
            get(text("text/javascript; charset=utf-8", SCRIPT)),
        )
        .route(
            "/dashboard.css",
            get(text("text/css; charset=utf-8", STYLE)),
        )
        .route(
            "/api/snapshot",
            get(move || {
                let json = for_api.borrow().clone();
                async move {
                    (
                        [
                            (CONTENT_TYPE, "application/json"),
                            (CACHE_CONTROL, "no-cache"),
                        ],
                        (*json).clone(),
                    )
                }
            }),
        )
        .route(
            "/events",
            get(move || {
                // WatchStream yields the current value first: a late browser is up to
                // date at once.
                let stream = WatchStream::new(snapshots.clone()).map(|json| {
                    Ok::<_, Infallible>(Event::default().event("snapshot").data(json.as_str()))
                });
                async move { Sse::new(stream).keep_alive(KeepAlive::default()) }
            }),
        )
}

/// Serves the dashboard on `listener` until the task is aborted.
pub async fn serve(listener: tokio::net::TcpListener, app: Router) {
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "dashboard stopped");
    }
}
