//! Where Burn's GPU runtime (CubeCL) keeps what it learns about a device between runs:
//! autotune decisions and compiled kernels. Left to itself it writes under the nearest
//! Cargo workspace's `target/` or the user cache, depending on the working directory;
//! a server should not serve at full speed only when started from the right folder.
//! `--kernel-cache DIR` (or `CROSSBATCH_KERNEL_CACHE`) names the directory; the default
//! is `~/.cache/crossbatch/kernels` (`$CROSSBATCH_CACHE_DIR/kernels`).

use std::path::{Path, PathBuf};

use cubecl_environment::config::RuntimeConfig;
use cubecl_runtime::config::CubeClRuntimeConfig;
use cubecl_runtime::config::cache::CacheConfig;

/// The default cache directory.
pub fn default_dir() -> PathBuf {
    crate::standin::cache_root().join("kernels")
}

#[derive(Debug, thiserror::Error)]
pub enum KernelCacheError {
    #[error("--kernel-cache {path}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Points the cache at `explicit`, or at [`default_dir`] when none was given. A default
/// that cannot be created (a read-only home in a container, say) costs only the reuse
/// between runs: it is logged and the runtime keeps its own location. A directory the
/// user named and that cannot be created is an error.
pub fn init_or_default(explicit: Option<&Path>) -> Result<Option<PathBuf>, KernelCacheError> {
    match explicit {
        Some(dir) => init(dir).map(Some),
        None => match init(&default_dir()) {
            Ok(dir) => Ok(Some(dir)),
            Err(KernelCacheError::Create { path, source }) => {
                tracing::warn!(
                    dir = %path.display(),
                    error = %source,
                    "no kernel cache of ours: kernels are compiled and tuned again on each start"
                );
                Ok(None)
            }
        },
    }
}

/// Points CubeCL's persistent cache at `dir` (created if missing). Must run before the
/// first GPU device is used; later it changes nothing and says so. `cubecl.toml` and the
/// `CUBECL_*` variables still apply to everything else.
pub fn init(dir: &Path) -> Result<PathBuf, KernelCacheError> {
    std::fs::create_dir_all(dir).map_err(|source| KernelCacheError::Create {
        path: dir.to_path_buf(),
        source,
    })?;
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let mut cfg = CubeClRuntimeConfig::from_current_dir().override_from_env();
    cfg.environment.path = CacheConfig::Directory(dir.clone());
    if CubeClRuntimeConfig::try_set(cfg) {
        tracing::debug!(dir = %dir.display(), "kernel and autotune cache");
    } else {
        tracing::warn!(
            dir = %dir.display(),
            "the GPU runtime was configured before the kernel cache could be set; it keeps its own location"
        );
    }
    Ok(dir)
}
