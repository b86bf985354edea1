//! Where the model comes from: a local directory, the HuggingFace cache, the hub,
//! or — when the default model cannot be had — the offline stand-in.

use std::path::{Path, PathBuf};

use crate::hub::{self, HubSettings, REQUIRED};
use crate::standin;

pub const DEFAULT_MODEL_ID: &str = "cross-encoder/ms-marco-MiniLM-L-6-v2";
/// `--model stand-in` asks for the stand-in directly.
pub const STANDIN_SPEC: &str = "stand-in";
/// The hub's default branch, as `--revision` defaults to.
pub const DEFAULT_REVISION: &str = "main";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    LocalDir,
    HfCache,
    Hub,
    /// The stand-in, used in place of `requested`.
    StandIn,
}

#[derive(Debug, Clone)]
pub struct ModelSource {
    /// The model asked for (hub id or path).
    pub id: String,
    pub dir: PathBuf,
    pub origin: Origin,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{0} is neither a model directory nor a hub id (org/name)")]
    NotFound(String),
    #[error("{dir}: not a model directory (missing {missing})")]
    Incomplete { dir: PathBuf, missing: String },
    #[error("model {id}: {source}")]
    Hub {
        id: String,
        #[source]
        source: hub::HubError,
    },
    #[error("offline stand-in: {0}")]
    Standin(#[from] standin::StandinError),
}

fn check_dir(dir: &Path) -> Result<(), SourceError> {
    let missing: Vec<&str> = REQUIRED
        .iter()
        .copied()
        .filter(|f| !dir.join(f).is_file())
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(SourceError::Incomplete {
            dir: dir.to_path_buf(),
            missing: missing.join(", "),
        })
    }
}

/// Resolves `--model` at `--revision` (a branch, tag or commit; hub ids only). The
/// default model falls back to the stand-in when neither the HF cache nor the hub
/// has it.
pub fn resolve(spec: &str, revision: &str) -> Result<ModelSource, SourceError> {
    resolve_with(spec, revision, &HubSettings::from_env())
}

/// [`resolve`] with the hub settings given rather than read from the environment.
pub fn resolve_with(
    spec: &str,
    revision: &str,
    hub_settings: &HubSettings,
) -> Result<ModelSource, SourceError> {
    if spec == STANDIN_SPEC {
        let dir = standin::ensure(&standin::default_dir())?;
        return Ok(ModelSource {
            id: DEFAULT_MODEL_ID.into(),
            dir,
            origin: Origin::StandIn,
        });
    }
    let path = Path::new(spec);
    if path.is_dir() {
        check_dir(path)?;
        return Ok(ModelSource {
            id: spec.to_string(),
            dir: path.to_path_buf(),
            origin: Origin::LocalDir,
        });
    }
    let Some((org, name)) = spec.split_once('/') else {
        return Err(SourceError::NotFound(spec.into()));
    };
    if org.is_empty() || name.is_empty() || name.contains('/') || spec.starts_with('.') {
        return Err(SourceError::NotFound(spec.into()));
    }
    match hub::fetch(hub_settings, spec, revision) {
        Ok(fetched) => {
            check_dir(&fetched.dir)?;
            Ok(ModelSource {
                id: spec.into(),
                dir: fetched.dir,
                origin: if fetched.downloaded {
                    Origin::Hub
                } else {
                    Origin::HfCache
                },
            })
        }
        Err(e) if spec == DEFAULT_MODEL_ID && e.is_unreachable() => {
            tracing::warn!(
                "{spec} is not in the HuggingFace cache and the hub cannot be reached ({e}); using the offline stand-in (same architecture, scores not relevance-trained)"
            );
            let dir = standin::ensure(&standin::default_dir())?;
            Ok(ModelSource {
                id: spec.into(),
                dir,
                origin: Origin::StandIn,
            })
        }
        Err(source) => Err(SourceError::Hub {
            id: spec.into(),
            source,
        }),
    }
}
