//! Models from the Hugging Face hub through HF's own Rust client (`hf-hub`), into
//! the standard cache that Python tools share (`models--org--name/{blobs,refs,
//! snapshots}` under `$HF_HUB_CACHE`, `$HF_HOME/hub` or `~/.cache/huggingface/hub`).
//!
//! hf-hub writes each file as `blobs/<etag>.part` and renames it only once complete,
//! then links it into the snapshot, so an interrupted download is resumed, never
//! mistaken for a model. Settings follow `huggingface_hub`: `HF_ENDPOINT`,
//! `HF_TOKEN` (else the token file `huggingface-cli login` writes), `HF_HUB_OFFLINE`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};

/// The files a model directory must have, and the one it may have.
pub(crate) const REQUIRED: [&str; 3] = ["config.json", "model.safetensors", "tokenizer.json"];
pub(crate) const OPTIONAL: [&str; 1] = ["tokenizer_config.json"];

const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Where and how to reach the hub; read from the environment as Python tools do.
#[derive(Clone)]
pub struct HubSettings {
    pub endpoint: String,
    pub cache_dir: PathBuf,
    token: Option<String>,
    pub offline: bool,
}

impl std::fmt::Debug for HubSettings {
    // The token is a secret: never printed, only whether there is one.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubSettings")
            .field("endpoint", &self.endpoint)
            .field("cache_dir", &self.cache_dir)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("offline", &self.offline)
            .finish()
    }
}

fn env_nonempty(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.trim().is_empty())
}

/// `huggingface_hub`'s truthy values.
fn env_true(key: &str) -> bool {
    env_nonempty(key).is_some_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "on" | "yes" | "true"
        )
    })
}

/// `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`,
/// else `~/.cache/huggingface/hub`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(p) = env_nonempty("HF_HUB_CACHE") {
        return PathBuf::from(p);
    }
    if let Some(p) = env_nonempty("HF_HOME") {
        return PathBuf::from(p).join("hub");
    }
    let cache = env_nonempty("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            env_nonempty("HOME")
                .map(PathBuf::from)
                .unwrap_or_default()
                .join(".cache")
        });
    cache.join("huggingface").join("hub")
}

impl HubSettings {
    pub fn from_env() -> Self {
        let cache_dir = default_cache_dir();
        let token = env_nonempty("HF_TOKEN")
            .or_else(|| env_nonempty("HUGGING_FACE_HUB_TOKEN"))
            .or_else(|| {
                let path = env_nonempty("HF_TOKEN_PATH")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| Cache::new(cache_dir.clone()).token_path());
                std::fs::read_to_string(path)
                    .ok()
                    .map(|t| t.trim().to_string())
                    .filter(|t| !t.is_empty())
            });
        Self {
            endpoint: env_nonempty("HF_ENDPOINT")
                .map(|e| e.trim_end_matches('/').to_string())
                .unwrap_or_else(|| DEFAULT_ENDPOINT.into()),
            cache_dir,
            token,
            offline: env_true("HF_HUB_OFFLINE"),
        }
    }

    /// Explicit settings (no environment): an endpoint and a cache directory, online,
    /// without a token.
    pub fn new(endpoint: String, cache_dir: PathBuf) -> Self {
        Self {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            cache_dir,
            token: None,
            offline: false,
        }
    }

    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    pub fn offline(mut self, offline: bool) -> Self {
        self.offline = offline;
        self
    }

    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error(
        "{id} at revision {revision} is not in the HF cache ({}) and HF_HUB_OFFLINE is set; \
         unset it to download, or point --model at a model directory", cache.display()
    )]
    NotCached {
        id: String,
        revision: String,
        cache: PathBuf,
    },
    #[error(
        "{url}: 401 Unauthorized: {id} is gated or private; set HF_TOKEN to a token that \
         has access (or log in with `huggingface-cli login`)"
    )]
    NeedsToken { id: String, url: String },
    #[error("{url}: {status}: the hub refused the token for {id} (no access to it?)")]
    TokenRefused {
        id: String,
        url: String,
        status: u16,
    },
    #[error("{url}: 404 Not Found: {id} has no {file} at revision {revision}")]
    NotFound {
        id: String,
        revision: String,
        file: String,
        url: String,
    },
    #[error("{url}: HTTP {status}")]
    Http { url: String, status: u16 },
    #[error("{url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{url}: not a Hugging Face hub answer ({reason})")]
    NotAHub { url: String, reason: String },
    #[error("HF cache {}: {source}", path.display())]
    Cache {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl HubError {
    /// The hub could not be reached or the model is not cached offline: the only
    /// cases where falling back to the stand-in (for the default model) is right.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::Unreachable { .. } | Self::NotCached { .. })
    }
}

/// A model directory (a cache snapshot) and whether anything was downloaded.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub dir: PathBuf,
    pub commit: String,
    pub downloaded: bool,
}

fn repo_dir(cache_dir: &Path, id: &str) -> PathBuf {
    cache_dir.join(format!("models--{}", id.replace('/', "--")))
}

/// The commit a revision points at in the cache: a ref written by an earlier
/// download, or the revision itself when it is a commit hash with a snapshot.
fn cached_commit(cache_dir: &Path, id: &str, revision: &str) -> Option<String> {
    let repo = repo_dir(cache_dir, id);
    if let Ok(commit) = std::fs::read_to_string(repo.join("refs").join(revision)) {
        let commit = commit.trim().to_string();
        if !commit.is_empty() {
            return Some(commit);
        }
    }
    let is_hash = revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit());
    (is_hash && repo.join("snapshots").join(revision).is_dir()).then(|| revision.to_string())
}

fn snapshot_dir(cache_dir: &Path, id: &str, commit: &str) -> PathBuf {
    repo_dir(cache_dir, id).join("snapshots").join(commit)
}

/// Python's marker for "this revision has no such file", so that a cached model
/// without an optional file does not ask the hub again on every start.
fn no_exist_marker(cache_dir: &Path, id: &str, commit: &str, file: &str) -> PathBuf {
    repo_dir(cache_dir, id)
        .join(".no_exist")
        .join(commit)
        .join(file)
}

fn cached_complete(cache_dir: &Path, id: &str, revision: &str) -> Option<Fetched> {
    let commit = cached_commit(cache_dir, id, revision)?;
    let dir = snapshot_dir(cache_dir, id, &commit);
    REQUIRED
        .iter()
        .all(|f| dir.join(f).is_file())
        .then_some(Fetched {
            dir,
            commit,
            downloaded: false,
        })
}

/// The model `id` at `revision`: from the cache when it is complete there, else
/// downloaded (required files first; a missing optional file is remembered).
pub fn fetch(settings: &HubSettings, id: &str, revision: &str) -> Result<Fetched, HubError> {
    if let Some(found) = cached_complete(&settings.cache_dir, id, revision) {
        return Ok(found);
    }
    if settings.offline {
        return Err(HubError::NotCached {
            id: id.into(),
            revision: revision.into(),
            cache: settings.cache_dir.clone(),
        });
    }
    let api = ApiBuilder::from_cache(Cache::new(settings.cache_dir.clone()))
        .with_endpoint(settings.endpoint.clone())
        .with_token(settings.token.clone())
        .with_progress(false)
        .with_retries(3)
        .with_user_agent("crossbatch", env!("CARGO_PKG_VERSION"))
        .build()
        .map_err(|e| HubError::Unreachable {
            url: settings.endpoint.clone(),
            reason: e.to_string(),
        })?;
    let repo = api.repo(Repo::with_revision(
        id.into(),
        RepoType::Model,
        revision.into(),
    ));
    let mut commit = None;
    for file in REQUIRED {
        let snapshot_file = cached_commit(&settings.cache_dir, id, revision)
            .map(|c| snapshot_dir(&settings.cache_dir, id, &c).join(file));
        if snapshot_file.as_deref().is_some_and(Path::is_file) {
            continue;
        }
        let url = repo.url(file);
        tracing::info!(%url, "downloading {file}");
        let started = Instant::now();
        let path = repo
            .download(file)
            .map_err(|e| classify(e, settings, id, revision, file, &url))?;
        let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        tracing::info!(
            "{file}: {:.1} MB in {:.1} s",
            bytes as f64 / 1e6,
            started.elapsed().as_secs_f64()
        );
        commit = path
            .parent()
            .and_then(|p| p.file_name())
            .map(|c| c.to_string_lossy().into_owned());
    }
    let commit = match commit.or_else(|| cached_commit(&settings.cache_dir, id, revision)) {
        Some(c) => c,
        None => {
            return Err(HubError::NotAHub {
                url: settings.endpoint.clone(),
                reason: format!("no commit recorded for revision {revision}"),
            });
        }
    };
    let dir = snapshot_dir(&settings.cache_dir, id, &commit);
    for file in OPTIONAL {
        let marker = no_exist_marker(&settings.cache_dir, id, &commit, file);
        if dir.join(file).is_file() || marker.exists() {
            continue;
        }
        let url = repo.url(file);
        match repo.download(file) {
            Ok(_) => {}
            Err(e) => match classify(e, settings, id, revision, file, &url) {
                HubError::NotFound { .. } => {
                    let made = marker
                        .parent()
                        .map(std::fs::create_dir_all)
                        .transpose()
                        .and_then(|_| std::fs::write(&marker, b""));
                    if let Err(e) = made {
                        tracing::warn!("{}: {e}", marker.display());
                    }
                }
                e => return Err(e),
            },
        }
    }
    Ok(Fetched {
        dir,
        commit,
        downloaded: true,
    })
}

/// hf-hub's error, said in terms of what the user can do about it.
fn classify(
    err: ApiError,
    settings: &HubSettings,
    id: &str,
    revision: &str,
    file: &str,
    url: &str,
) -> HubError {
    let url = url.to_string();
    match err {
        ApiError::RequestError(e) => match *e {
            ureq::Error::Status(401, _) if !settings.has_token() => {
                HubError::NeedsToken { id: id.into(), url }
            }
            ureq::Error::Status(status @ (401 | 403), _) => HubError::TokenRefused {
                id: id.into(),
                url,
                status,
            },
            ureq::Error::Status(404, _) => HubError::NotFound {
                id: id.into(),
                revision: revision.into(),
                file: file.into(),
                url,
            },
            ureq::Error::Status(status, _) => HubError::Http { url, status },
            ureq::Error::Transport(t) => HubError::Unreachable {
                url,
                reason: t.to_string(),
            },
        },
        ApiError::TooManyRetries(inner) => {
            classify(*inner, settings, id, revision, file, url.as_str())
        }
        ApiError::MissingHeader(h) => HubError::NotAHub {
            url,
            reason: format!("no {h} header"),
        },
        ApiError::InvalidHeader(h) => HubError::NotAHub {
            url,
            reason: format!("bad {h} header"),
        },
        ApiError::ParseIntError(e) => HubError::NotAHub {
            url,
            reason: e.to_string(),
        },
        ApiError::IoError(source) => HubError::Cache {
            path: settings.cache_dir.clone(),
            source,
        },
        other => HubError::Unreachable {
            url,
            reason: other.to_string(),
        },
    }
}
