//! GPU utilisation and memory from the vendor's counters: NVML on NVIDIA, loaded at run
//! time (`libnvidia-ml.so.1` ships with the driver). burn-wgpu reports neither figure,
//! so where NVML is absent (another vendor, a software adapter, the CPU backend) the
//! figures stay absent and the report says why, rather than showing a made-up 0.

use nvml_wrapper::Nvml;

/// One NVIDIA GPU, found by the name the wgpu adapter gave.
pub struct GpuMonitor {
    nvml: Nvml,
    index: u32,
    /// e.g. "NVIDIA H200"
    pub name: String,
}

/// One reading.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GpuSample {
    /// Percent of the last sample period in which a kernel ran.
    pub utilization_pct: f64,
    /// Memory in use on the whole device, every process, MiB.
    pub memory_used_mb: f64,
}

impl GpuMonitor {
    /// The NVML device whose name the adapter name starts with (wgpu names NVIDIA
    /// adapters as NVML does), or the only device if there is just one. `None` when
    /// NVML cannot be loaded or nothing matches; the reason is logged at debug level.
    pub fn open(adapter_name: &str) -> Option<Self> {
        let nvml = match Nvml::init() {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(error = %e, "NVML not available: GPU utilisation stays n/a");
                return None;
            }
        };
        let count = nvml.device_count().ok()?;
        let names: Vec<(u32, String)> = (0..count)
            .filter_map(|i| Some((i, nvml.device_by_index(i).ok()?.name().ok()?)))
            .collect();
        let found = names
            .iter()
            .find(|(_, n)| adapter_name.starts_with(n.as_str()))
            .or(if names.len() == 1 {
                names.first()
            } else {
                None
            })
            .cloned();
        match found {
            Some((index, name)) => {
                tracing::info!(gpu = %name, index, "GPU utilisation and memory read through NVML");
                Some(Self { nvml, index, name })
            }
            None => {
                tracing::debug!(
                    adapter = adapter_name,
                    ?names,
                    "no NVML device matches the adapter"
                );
                None
            }
        }
    }

    pub fn sample(&self) -> Option<GpuSample> {
        let dev = self.nvml.device_by_index(self.index).ok()?;
        let util = dev.utilization_rates().ok()?;
        let mem = dev.memory_info().ok()?;
        Some(GpuSample {
            utilization_pct: util.gpu as f64,
            memory_used_mb: mem.used as f64 / (1024.0 * 1024.0),
        })
    }
}
