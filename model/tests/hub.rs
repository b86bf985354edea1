//! Hub downloads against a fake hub on loopback: the stand-in's files served in the
//! hub's layout (`/{org}/{name}/resolve/{revision}/{file}`, ranged GETs with
//! `x-repo-commit` and `etag`), as `HF_ENDPOINT` would point hf-hub at it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::Response;
use crossbatch_model::hub::{HubError, HubSettings};
use crossbatch_model::source::{self, Origin, SourceError};

const COMMIT_MAIN: &str = "1111111111111111111111111111111111111111";
const COMMIT_V1: &str = "2222222222222222222222222222222222222222";
const TOKEN: &str = "hf_test_token";

/// One repo at one commit: file name → bytes.
#[derive(Clone, Default)]
struct Snapshot {
    commit: String,
    files: HashMap<String, Vec<u8>>,
}

#[derive(Default)]
struct Hub {
    /// (repo id, revision) → snapshot.
    repos: Mutex<HashMap<(String, String), Snapshot>>,
    gated: Mutex<Vec<String>>,
    requests: AtomicUsize,
}

struct FakeHub {
    state: Arc<Hub>,
    addr: SocketAddr,
    _rt: tokio::runtime::Runtime,
}

impl FakeHub {
    fn start() -> Self {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let state = Arc::new(Hub::default());
        let app = Router::new()
            .fallback(serve_file)
            .with_state(Arc::clone(&state));
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind loopback");
        let addr = listener.local_addr().expect("addr");
        rt.spawn(async move { axum::serve(listener, app).await });
        Self {
            state,
            addr,
            _rt: rt,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn publish(&self, id: &str, revision: &str, snapshot: Snapshot) {
        self.state
            .repos
            .lock()
            .unwrap()
            .insert((id.into(), revision.into()), snapshot);
    }

    fn gate(&self, id: &str) {
        self.state.gated.lock().unwrap().push(id.into());
    }

    fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }
}

/// `GET /{org}/{name}/resolve/{revision}/{file}` with `Range: bytes=a-[b]`, as the
/// hub answers it: 206 with the commit and etag, 401 for a gated repo without the
/// token, 404 for a file or revision it lacks.
async fn serve_file(State(hub): State<Arc<Hub>>, uri: Uri, headers: HeaderMap) -> Response {
    hub.requests.fetch_add(1, Ordering::SeqCst);
    let status = |code: StatusCode| {
        Response::builder()
            .status(code)
            .body(Body::empty())
            .unwrap()
    };
    let parts: Vec<&str> = uri.path().trim_start_matches('/').split('/').collect();
    let [org, name, "resolve", revision, file] = parts[..] else {
        return status(StatusCode::NOT_FOUND);
    };
    let id = format!("{org}/{name}");
    let revision = revision.replace("%2F", "/");
    if hub.gated.lock().unwrap().contains(&id) {
        let auth = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        match auth {
            None => return status(StatusCode::UNAUTHORIZED),
            Some(a) if a != format!("Bearer {TOKEN}") => return status(StatusCode::FORBIDDEN),
            Some(_) => {}
        }
    }
    let snapshot = hub.repos.lock().unwrap().get(&(id, revision)).cloned();
    let Some(snapshot) = snapshot else {
        return status(StatusCode::NOT_FOUND);
    };
    let Some(bytes) = snapshot.files.get(file) else {
        return status(StatusCode::NOT_FOUND);
    };
    let size = bytes.len();
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split_once('-'))
        .map(|(a, b)| {
            let start: usize = a.parse().unwrap_or(0);
            let end: usize = b.parse().unwrap_or(size.saturating_sub(1));
            (start, end.min(size.saturating_sub(1)))
        })
        .unwrap_or((0, size.saturating_sub(1)));
    let (start, end) = range;
    let body = if start < size {
        bytes[start..=end].to_vec()
    } else {
        Vec::new()
    };
    let etag = format!("\"{}\"", sha256_hex(bytes));
    Response::builder()
        .status(StatusCode::PARTIAL_CONTENT)
        .header("x-repo-commit", &snapshot.commit)
        .header(header::ETAG, etag)
        .header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{size}"))
        .body(Body::from(body))
        .unwrap()
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(bytes))
}

/// The stand-in's files (a real model, so the download can be loaded and scored).
fn standin_snapshot(commit: &str) -> Snapshot {
    let dir = crossbatch_model::standin::ensure_default().expect("offline stand-in");
    let files = [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    .into_iter()
    .map(|f| {
        let bytes = std::fs::read(dir.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        (f.to_string(), bytes)
    })
    .collect();
    Snapshot {
        commit: commit.into(),
        files,
    }
}

fn settings(hub: &FakeHub, cache: &Path) -> HubSettings {
    HubSettings::new(hub.endpoint(), cache.to_path_buf())
}

fn assert_same_files(dir: &Path, snapshot: &Snapshot) {
    for (name, bytes) in &snapshot.files {
        let got = std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(got == *bytes, "{name} differs from what the hub served");
    }
}

fn repo_cache(cache: &Path, id: &str) -> PathBuf {
    cache.join(format!("models--{}", id.replace('/', "--")))
}

#[test]
fn downloads_into_the_hf_cache_layout_then_reuses_it_without_asking() {
    let hub = FakeHub::start();
    let snap = standin_snapshot(COMMIT_MAIN);
    hub.publish("acme/reranker", "main", snap.clone());
    let cache = tempfile::tempdir().unwrap();
    let set = settings(&hub, cache.path());

    let src = source::resolve_with("acme/reranker", "main", &set).expect("download");
    assert_eq!(src.origin, Origin::Hub);
    let repo = repo_cache(cache.path(), "acme/reranker");
    assert_eq!(src.dir, repo.join("snapshots").join(COMMIT_MAIN));
    assert_same_files(&src.dir, &snap);
    let main_ref = std::fs::read_to_string(repo.join("refs/main")).unwrap();
    assert_eq!(main_ref.trim(), COMMIT_MAIN);
    // Snapshot files point at content-addressed blobs; no partial file is left
    // (hf-hub keeps an empty `<blob>.lock` beside each, as Python keeps `.locks/`).
    let blobs: Vec<String> = std::fs::read_dir(repo.join("blobs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".lock"))
        .collect();
    assert_eq!(blobs.len(), 4, "one blob per file: {blobs:?}");
    assert!(blobs.iter().all(|b| !b.ends_with(".part")), "{blobs:?}");

    // The download is a model: it loads and scores.
    let device = crossbatch_model::backend::select(crossbatch_model::backend::BackendChoice::Cpu)
        .expect("cpu");
    let enc = crossbatch_model::CrossEncoder::load(&src.dir, device).expect("load the download");
    let scores = enc
        .score_pairs(&[("what is rust".into(), "Rust is a language.".into())], 1)
        .expect("score");
    assert!(scores[0].is_finite());

    let before = hub.requests();
    let again = source::resolve_with("acme/reranker", "main", &set).expect("from cache");
    assert_eq!(again.origin, Origin::HfCache);
    assert_eq!(again.dir, src.dir);
    assert_eq!(
        hub.requests(),
        before,
        "a cached model asks the hub nothing"
    );
}

#[test]
fn revision_selects_the_commit() {
    let hub = FakeHub::start();
    let main = standin_snapshot(COMMIT_MAIN);
    let mut v1 = standin_snapshot(COMMIT_V1);
    v1.files
        .get_mut("config.json")
        .unwrap()
        .extend_from_slice(b"\n");
    hub.publish("acme/reranker", "main", main);
    hub.publish("acme/reranker", "v1", v1.clone());
    hub.publish("acme/reranker", COMMIT_V1, v1.clone());
    let cache = tempfile::tempdir().unwrap();
    let set = settings(&hub, cache.path());

    let src = source::resolve_with("acme/reranker", "v1", &set).expect("v1");
    assert!(src.dir.ends_with(COMMIT_V1), "{}", src.dir.display());
    assert_same_files(&src.dir, &v1);
    // A commit hash already in the cache is found offline, as Python finds it.
    let offline = HubSettings::new("http://127.0.0.1:9".into(), cache.path().into()).offline(true);
    let by_hash = source::resolve_with("acme/reranker", COMMIT_V1, &offline).expect("by hash");
    assert_eq!(by_hash.dir, src.dir);
    assert_eq!(by_hash.origin, Origin::HfCache);
}

#[test]
fn a_missing_file_is_named_and_nothing_is_taken_for_a_model() {
    let hub = FakeHub::start();
    let mut snap = standin_snapshot(COMMIT_MAIN);
    snap.files.remove("tokenizer.json");
    hub.publish("acme/broken", "main", snap);
    let cache = tempfile::tempdir().unwrap();
    let set = settings(&hub, cache.path());

    let err = source::resolve_with("acme/broken", "main", &set).unwrap_err();
    match &err {
        SourceError::Hub {
            source: HubError::NotFound { file, .. },
            ..
        } => assert_eq!(file, "tokenizer.json"),
        other => panic!("want NotFound(tokenizer.json), got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("404") && msg.contains("tokenizer.json"),
        "{msg}"
    );
    // Offline afterwards: the incomplete snapshot is not a model.
    let offline = set.clone().offline(true);
    let err = source::resolve_with("acme/broken", "main", &offline).unwrap_err();
    assert!(
        matches!(
            err,
            SourceError::Hub {
                source: HubError::NotCached { .. },
                ..
            }
        ),
        "{err:?}"
    );
    // An unknown repo is a 404 too, not the stand-in.
    let err = source::resolve_with("acme/nothing-here", "main", &set).unwrap_err();
    assert!(err.to_string().contains("404"), "{err}");
}

#[test]
fn a_missing_optional_file_is_remembered() {
    let hub = FakeHub::start();
    let mut snap = standin_snapshot(COMMIT_MAIN);
    snap.files.remove("tokenizer_config.json");
    hub.publish("acme/lean", "main", snap);
    let cache = tempfile::tempdir().unwrap();
    let set = settings(&hub, cache.path());

    let src = source::resolve_with("acme/lean", "main", &set).expect("optional file may lack");
    assert!(!src.dir.join("tokenizer_config.json").exists());
    let marker = repo_cache(cache.path(), "acme/lean")
        .join(".no_exist")
        .join(COMMIT_MAIN)
        .join("tokenizer_config.json");
    assert!(marker.is_file(), "no .no_exist marker");
    let before = hub.requests();
    source::resolve_with("acme/lean", "main", &set).expect("again");
    assert_eq!(hub.requests(), before);
}

#[test]
fn gated_model_needs_a_token() {
    let hub = FakeHub::start();
    hub.publish("acme/gated", "main", standin_snapshot(COMMIT_MAIN));
    hub.gate("acme/gated");
    let cache = tempfile::tempdir().unwrap();

    let err =
        source::resolve_with("acme/gated", "main", &settings(&hub, cache.path())).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("401") && msg.contains("HF_TOKEN"), "{msg}");

    let wrong = settings(&hub, cache.path()).with_token(Some("hf_wrong".into()));
    let err = source::resolve_with("acme/gated", "main", &wrong).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("refused the token"), "{msg}");
    assert!(
        !msg.contains("hf_wrong"),
        "the token must never be printed: {msg}"
    );

    let right = settings(&hub, cache.path()).with_token(Some(TOKEN.into()));
    let src = source::resolve_with("acme/gated", "main", &right).expect("with the token");
    assert_eq!(src.origin, Origin::Hub);
}

#[test]
fn offline_mode_uses_only_the_cache() {
    let hub = FakeHub::start();
    hub.publish("acme/reranker", "main", standin_snapshot(COMMIT_MAIN));
    let cache = tempfile::tempdir().unwrap();
    let offline = settings(&hub, cache.path()).offline(true);

    let err = source::resolve_with("acme/reranker", "main", &offline).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("HF_HUB_OFFLINE"), "{msg}");
    assert_eq!(hub.requests(), 0, "offline must not touch the network");

    source::resolve_with("acme/reranker", "main", &settings(&hub, cache.path())).expect("online");
    let served = hub.requests();
    let src = source::resolve_with("acme/reranker", "main", &offline).expect("offline, cached");
    assert_eq!(src.origin, Origin::HfCache);
    assert_eq!(hub.requests(), served);
}

#[test]
fn an_interrupted_download_resumes_and_is_never_a_model() {
    let hub = FakeHub::start();
    let snap = standin_snapshot(COMMIT_MAIN);
    hub.publish("acme/reranker", "main", snap.clone());
    let cache = tempfile::tempdir().unwrap();
    // What an interrupted run leaves: half of the weights' blob as `.part`.
    let weights = &snap.files["model.safetensors"];
    let blobs = repo_cache(cache.path(), "acme/reranker").join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    let part = blobs.join(format!("{}.part", sha256_hex(weights)));
    std::fs::write(&part, &weights[..weights.len() / 2]).unwrap();

    let offline = settings(&hub, cache.path()).offline(true);
    assert!(source::resolve_with("acme/reranker", "main", &offline).is_err());

    let src = source::resolve_with("acme/reranker", "main", &settings(&hub, cache.path()))
        .expect("resume");
    assert_same_files(&src.dir, &snap);
    assert!(!part.exists(), "the .part file was completed and renamed");
}

#[test]
fn unreachable_hub_is_an_error_except_for_the_default_model() {
    // Port 9 (discard) on loopback: nothing listens, the connection is refused.
    let cache = tempfile::tempdir().unwrap();
    let set = HubSettings::new("http://127.0.0.1:9".into(), cache.path().into());
    let err = source::resolve_with("acme/reranker", "main", &set).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("127.0.0.1:9"), "{msg}");
    // The default model falls back to the stand-in, as `make bench` relies on.
    crossbatch_model::standin::ensure_default().expect("offline stand-in");
    let src = source::resolve_with(source::DEFAULT_MODEL_ID, "main", &set).expect("stand-in");
    assert_eq!(src.origin, Origin::StandIn);
}

#[test]
fn settings_come_from_the_environment_as_in_python() {
    let home = tempfile::tempdir().unwrap();
    std::fs::write(home.path().join("token"), "hf_from_file\n").unwrap();
    let vars = [
        ("HF_HOME", Some(home.path().to_str().unwrap())),
        ("HF_ENDPOINT", Some("http://127.0.0.1:1234/")),
        ("HF_HUB_OFFLINE", Some("TRUE")),
        ("HF_HUB_CACHE", None),
        ("HF_TOKEN", None),
        ("HUGGING_FACE_HUB_TOKEN", None),
        ("HF_TOKEN_PATH", None),
    ];
    // SAFETY: the only test in this binary that reads or writes these variables
    // (every other test passes its settings explicitly).
    unsafe {
        for (k, v) in vars {
            match v {
                Some(v) => std::env::set_var(k, v),
                None => std::env::remove_var(k),
            }
        }
    }
    let set = HubSettings::from_env();
    assert_eq!(set.endpoint, "http://127.0.0.1:1234");
    assert_eq!(set.cache_dir, home.path().join("hub"));
    assert!(set.offline);
    assert!(set.has_token(), "the token file under HF_HOME");
    let shown = format!("{set:?}");
    assert!(!shown.contains("hf_from_file"), "{shown}");

    unsafe {
        std::env::set_var("HF_TOKEN", "hf_env");
        std::env::set_var("HF_HUB_OFFLINE", "0");
        std::env::set_var("HF_HUB_CACHE", home.path().join("elsewhere"));
    }
    let set = HubSettings::from_env();
    assert!(!set.offline);
    assert!(set.has_token());
    assert_eq!(set.cache_dir, home.path().join("elsewhere"));
}
