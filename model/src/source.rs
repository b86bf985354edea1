//! Where the model comes from: a local directory, the HuggingFace cache, the hub,
//! or — when the default model cannot be had — the offline stand-in.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::standin;

pub const DEFAULT_MODEL_ID: &str = "cross-encoder/ms-marco-MiniLM-L-6-v2";
/// `--model stand-in` asks for the stand-in directly.
pub const STANDIN_SPEC: &str = "stand-in";
const REQUIRED: [&str; 3] = ["config.json", "model.safetensors", "tokenizer.json"];
const OPTIONAL: [&str; 3] = [
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
];

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
    #[error("model {id} could not be fetched from the hub: {reason}")]
    Unreachable { id: String, reason: String },
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

/// Resolves `--model`. `allow_standin`: fall back to the stand-in when the
/// default model cannot be fetched.
pub fn resolve(spec: &str) -> Result<ModelSource, SourceError> {
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
    if let Some(dir) = hf_cache_snapshot(org, name) {
        return Ok(ModelSource {
            id: spec.into(),
            dir,
            origin: Origin::HfCache,
        });
    }
    match download(org, name) {
        Ok(dir) => Ok(ModelSource {
            id: spec.into(),
            dir,
            origin: Origin::Hub,
        }),
        Err(reason) if spec == DEFAULT_MODEL_ID => {
            tracing::warn!(
                "{spec} is not in the HuggingFace cache and the hub cannot be reached ({reason}); using the offline stand-in (same architecture, scores not relevance-trained)"
            );
            let dir = standin::ensure(&standin::default_dir())?;
            Ok(ModelSource {
                id: spec.into(),
                dir,
                origin: Origin::StandIn,
            })
        }
        Err(reason) => Err(SourceError::Unreachable {
            id: spec.into(),
            reason,
        }),
    }
}

fn hf_hub_cache() -> PathBuf {
    if let Some(p) = std::env::var_os("HF_HUB_CACHE") {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("HF_HOME") {
        return PathBuf::from(p).join("hub");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    home.join(".cache").join("huggingface").join("hub")
}

/// `models--org--name/snapshots/<refs/main>` of the HuggingFace cache, if complete.
fn hf_cache_snapshot(org: &str, name: &str) -> Option<PathBuf> {
    let repo = hf_hub_cache().join(format!("models--{org}--{name}"));
    let rev = std::fs::read_to_string(repo.join("refs").join("main")).ok()?;
    let dir = repo.join("snapshots").join(rev.trim());
    check_dir(&dir).ok().map(|_| dir)
}

/// Fetches the model files into crossbatch's cache (`curl`, so no TLS stack is
/// compiled in). Honours `HF_HUB_OFFLINE` and `HF_ENDPOINT`.
fn download(org: &str, name: &str) -> Result<PathBuf, String> {
    let dir = standin::cache_root()
        .join("hub")
        .join(format!("{org}--{name}"));
    if check_dir(&dir).is_ok() {
        return Ok(dir);
    }
    if std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| v == "1" || v == "true") {
        return Err("HF_HUB_OFFLINE is set".into());
    }
    let endpoint = std::env::var("HF_ENDPOINT").unwrap_or_else(|_| "https://huggingface.co".into());
    let tmp = dir.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let fetch = |file: &str| -> Result<(), String> {
        let url = format!("{endpoint}/{org}/{name}/resolve/main/{file}");
        let out = Command::new("curl")
            .args(["-fsSL", "--connect-timeout", "5", "--max-time", "900", "-o"])
            .arg(tmp.join(file))
            .arg(&url)
            .output()
            .map_err(|e| format!("cannot run curl: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    };
    let result = REQUIRED.iter().try_for_each(|f| fetch(f));
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    for f in OPTIONAL {
        // Not every repo has them; the tokenizer.json is what matters.
        let _ = fetch(f);
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir)
}
