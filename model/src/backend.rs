//! Choosing the Burn device: wgpu on a hardware adapter, the CPU backend (burn-flex)
//! otherwise. Software rasterizers (llvmpipe/lavapipe) are ~30x slower than the
//! CPU backend, so `auto` never picks them; `wgpu` forces wgpu whatever it finds.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use burn::tensor::wgpu::wgpu as wgpu_api;
use burn::tensor::{Device, DeviceKind, Distribution, FloatDType, Tensor};

use crate::scorer::{Layout, ModelError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendChoice {
    /// wgpu on a hardware GPU adapter, else the CPU backend
    Auto,
    /// burn-wgpu (Metal on Apple silicon, Vulkan elsewhere), even on a software adapter
    Wgpu,
    /// the CPU: fused kernels (model/src/cpu), burn-flex for Burn's ops
    Cpu,
}

impl FromStr for BackendChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "wgpu" => Ok(Self::Wgpu),
            "cpu" => Ok(Self::Cpu),
            other => Err(format!("unknown backend {other:?} (auto, wgpu, cpu)")),
        }
    }
}

/// The float type the model computes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Precision {
    /// 32-bit floats everywhere (bit-for-bit the reference's function, to ~1e-7).
    #[default]
    F32,
    /// 16-bit floats on the GPU (wgpu only): half the memory traffic; logits within
    /// ~1e-3 of f32 (see the README).
    F16,
    /// 8-bit integer linear layers on the CPU backend (weights per output column,
    /// activations per row; attention, norms and GELU in f32). Its accuracy on your
    /// data: `crossbatch-server eval`.
    Int8,
    /// bf16 linear layers on the CPU backend (weights and activations rounded to bf16,
    /// products summed in f32; the rest in f32): AVX-512 BF16's `vdpbf16ps` where the
    /// CPU has it, emulated at f32's speed where not.
    Bf16,
}

impl Precision {
    /// The formats only the fused CPU forward computes (its own matmul kernels; Burn's
    /// ops and the wgpu backend have none for them).
    pub fn fused_cpu_only(self) -> bool {
        matches!(self, Self::Int8 | Self::Bf16)
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Int8 => "int8",
            Self::Bf16 => "bf16",
        })
    }
}

impl FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            "int8" => Ok(Self::Int8),
            "bf16" => Ok(Self::Bf16),
            other => Err(format!("unknown dtype {other:?} (f32, f16, int8, bf16)")),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Wgpu,
    Cpu,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Wgpu => "wgpu",
            Self::Cpu => "cpu",
        })
    }
}

/// The device that actually runs, with the names the logs, `Info` and the report use.
#[derive(Debug, Clone)]
pub struct SelectedDevice {
    pub device: Device,
    pub backend: BackendKind,
    /// e.g. "NVIDIA H200 (Vulkan, discrete)" or "AMD EPYC 7B13 (2 threads, avx512)"
    pub name: String,
    /// A software rasterizer: correct but slow.
    pub software: bool,
    /// The float type every model tensor on this device has.
    pub precision: Precision,
}

impl SelectedDevice {
    /// Row blocks for element-wise activations run on the host (CPU backend only).
    pub fn activation_parallelism(&self) -> usize {
        match self.backend {
            BackendKind::Cpu => rayon::current_num_threads(),
            BackendKind::Wgpu => 1,
        }
    }

    /// Best of `reps` square `n`×`n` matmuls on this device, in GFLOP/s (int8 GOP/s
    /// where the model computes in int8): what its matmuls reach, to set a forward's
    /// achieved rate beside.
    pub fn matmul_gflops(&self, n: usize, reps: usize) -> Result<f64, ModelError> {
        // The products that run in int8 and bf16 are the fused kernels', not Burn's.
        match self.precision {
            Precision::Int8 => return Ok(crate::cpu::qgemm::peak_gops(n, reps)),
            Precision::Bf16 => return Ok(crate::cpu::bgemm::peak_gflops(n, reps)),
            Precision::F32 | Precision::F16 => {}
        }
        let device = &self.device;
        let a: Tensor<2> = Tensor::random([n, n], Distribution::Default, device);
        let b: Tensor<2> = Tensor::random([n, n], Distribution::Default, device);
        let sync = || {
            device
                .sync()
                .map_err(|e| ModelError::Inference(format!("{e:?}")))
        };
        // Warm-up (and autotune on wgpu).
        let _ = a.clone().matmul(b.clone());
        sync()?;
        let mut best = Duration::MAX;
        for _ in 0..reps.max(1) {
            let t = Instant::now();
            let c = a.clone().matmul(b.clone());
            sync()?;
            best = best.min(t.elapsed());
            drop(c);
        }
        Ok(2.0 * (n as f64).powi(3) / best.as_secs_f64() / 1e9)
    }

    /// The batch layout that suits this device (see `model::bert`).
    pub fn preferred_layout(&self) -> Layout {
        match self.backend {
            BackendKind::Cpu => Layout::Packed,
            BackendKind::Wgpu => Layout::Padded,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("no wgpu adapter found (install a Vulkan driver, or use --backend cpu)")]
    NoAdapter,
    #[error(
        "--dtype f16 needs the wgpu backend: burn-flex has no fast f16 kernels on this CPU, so the CPU backend computes in f32 only"
    )]
    F16OnCpu,
    #[error("--dtype {precision} is not available on {device}: {reason}")]
    Precision {
        precision: Precision,
        device: String,
        reason: String,
    },
}

/// What wgpu can see, without starting Burn's runtime.
#[derive(Debug, Clone)]
pub struct AdapterSummary {
    pub name: String,
    pub backend: String,
    pub kind: wgpu_api::DeviceType,
    pub driver: String,
}

impl AdapterSummary {
    pub fn is_software(&self) -> bool {
        self.kind == wgpu_api::DeviceType::Cpu
    }
    fn describe(&self) -> String {
        let kind = match self.kind {
            wgpu_api::DeviceType::DiscreteGpu => "discrete GPU",
            wgpu_api::DeviceType::IntegratedGpu => "integrated GPU",
            wgpu_api::DeviceType::VirtualGpu => "virtual GPU",
            wgpu_api::DeviceType::Cpu => "software rasterizer",
            wgpu_api::DeviceType::Other => "other",
        };
        format!("{} ({}, {kind})", self.name, self.backend)
    }
}

/// Every adapter wgpu finds on this machine.
pub fn adapters() -> Vec<AdapterSummary> {
    let instance = wgpu_api::Instance::default();
    let found = block_on(instance.enumerate_adapters(wgpu_api::Backends::all()));
    found
        .into_iter()
        .map(|a| {
            let info = a.get_info();
            AdapterSummary {
                name: info.name,
                backend: format!("{:?}", info.backend),
                kind: info.device_type,
                driver: info.driver,
            }
        })
        .collect()
}

/// Native wgpu resolves adapter enumeration without waiting; poll until it does.
fn block_on<F: Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::yield_now();
    }
}

fn cpu_device() -> SelectedDevice {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    SelectedDevice {
        device: Device::flex(),
        backend: BackendKind::Cpu,
        // The instruction set the CPU kernels run with: what a CPU figure depends on.
        name: format!(
            "{} ({threads} threads, {})",
            cpu_model(),
            crate::cpu::simd::isa().name()
        ),
        software: false,
        precision: Precision::F32,
    }
}

/// The processor's marketing name, where the platform tells it.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// Picks the f32 device for `choice` (see [`select_with`]).
pub fn select(choice: BackendChoice) -> Result<SelectedDevice, BackendError> {
    select_with(choice, Precision::F32)
}

/// Picks the device for `choice` computing in `precision`, logging what was found and
/// what runs. f16 is a wgpu feature: asked for with `auto` on a machine that falls back
/// to the CPU, it is an error rather than a silent f32.
pub fn select_with(
    choice: BackendChoice,
    precision: Precision,
) -> Result<SelectedDevice, BackendError> {
    let d = select_device(choice)?;
    match (d.backend, precision) {
        (_, Precision::F32) => {
            // Only a process that asked for f16 earlier can have changed the default.
            if d.backend == BackendKind::Wgpu {
                configure_precision(&d, Precision::F32)?;
            }
            Ok(d)
        }
        (BackendKind::Cpu, Precision::F16) => Err(BackendError::F16OnCpu),
        (BackendKind::Wgpu, Precision::Int8 | Precision::Bf16) => Err(BackendError::Precision {
            precision,
            device: d.name,
            reason: format!(
                "{precision} runs on the CPU backend's fused kernels only (use --backend cpu)"
            ),
        }),
        (BackendKind::Cpu, Precision::Bf16) => {
            let isa = crate::cpu::bgemm::Bf16Isa::detect();
            if isa == crate::cpu::bgemm::Bf16Isa::Emulated {
                tracing::warn!(
                    device = %d.name,
                    "this CPU has no AVX-512 BF16: bf16 is emulated on the f32 kernels \
                     (the same numbers, no faster than f32)"
                );
            }
            tracing::info!(device = %d.name, kernels = isa.name(), "linear layers in bf16");
            let kernels = match isa {
                crate::cpu::bgemm::Bf16Isa::Avx512Bf16 => isa.name(),
                crate::cpu::bgemm::Bf16Isa::Emulated => "emulated",
            };
            Ok(SelectedDevice {
                precision: Precision::Bf16,
                name: format!("{}, bf16 {kernels}", d.name),
                ..d
            })
        }
        (BackendKind::Cpu, Precision::Int8) => {
            let isa = crate::cpu::qgemm::Int8Isa::detect();
            tracing::info!(device = %d.name, kernels = isa.name(), "linear layers in int8");
            Ok(SelectedDevice {
                precision: Precision::Int8,
                name: format!("{}, int8 {}", d.name, isa.name()),
                ..d
            })
        }
        (BackendKind::Wgpu, Precision::F16) => {
            configure_precision(&d, Precision::F16)?;
            tracing::info!(device = %d.name, "computing in f16");
            Ok(SelectedDevice {
                precision: Precision::F16,
                // The name travels to Info, logs and reports: say what computes.
                name: format!("{}, f16", d.name),
                ..d
            })
        }
    }
}

/// Sets the device's default float type before any tensor exists on it. Burn allows
/// this once per device and process: asking again for the same type is fine, asking
/// for the other one is an error that names both.
fn configure_precision(d: &SelectedDevice, precision: Precision) -> Result<(), BackendError> {
    let want = match precision {
        // Int8 and bf16 never reach a wgpu device (refused above); their other parts
        // are f32.
        Precision::F32 | Precision::Int8 | Precision::Bf16 => FloatDType::F32,
        Precision::F16 => FloatDType::F16,
    };
    let mut device = d.device.clone();
    let err = match device.configure(want) {
        Ok(()) => return Ok(()),
        Err(e) => e,
    };
    let have = d.device.settings().float_dtype;
    if have == want {
        return Ok(());
    }
    Err(BackendError::Precision {
        precision,
        device: d.name.clone(),
        reason: format!("{err} (this process already computes in {have:?} there)"),
    })
}

fn select_device(choice: BackendChoice) -> Result<SelectedDevice, BackendError> {
    if choice == BackendChoice::Cpu {
        let d = cpu_device();
        tracing::info!(backend = "cpu", device = %d.name, "backend selected");
        return Ok(d);
    }
    let found = adapters();
    for a in &found {
        tracing::debug!(adapter = %a.describe(), driver = %a.driver, "wgpu adapter");
    }
    let hardware = found.iter().find(|a| !a.is_software());
    let chosen = match (choice, hardware) {
        (_, Some(hw)) => Some((hw.clone(), device_kind(hw))),
        (BackendChoice::Wgpu, None) => found.first().map(|a| (a.clone(), DeviceKind::Cpu)),
        _ => None,
    };
    match chosen {
        Some((adapter, kind)) => {
            let d = SelectedDevice {
                device: Device::wgpu(kind),
                backend: BackendKind::Wgpu,
                name: adapter.describe(),
                software: adapter.is_software(),
                precision: Precision::F32,
            };
            if d.software {
                tracing::warn!(device = %d.name, "wgpu runs on a software rasterizer: correct but far slower than --backend cpu");
            }
            tracing::info!(backend = "wgpu", device = %d.name, "backend selected");
            Ok(d)
        }
        None if choice == BackendChoice::Wgpu => Err(BackendError::NoAdapter),
        None => {
            let d = cpu_device();
            let why = if found.is_empty() {
                "no wgpu adapter".to_string()
            } else {
                format!(
                    "only software adapters ({})",
                    found
                        .iter()
                        .map(|a| a.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            tracing::info!(backend = "cpu", device = %d.name, reason = %why, "backend selected");
            Ok(d)
        }
    }
}

fn device_kind(a: &AdapterSummary) -> DeviceKind {
    match a.kind {
        wgpu_api::DeviceType::DiscreteGpu => DeviceKind::DiscreteGpu(0),
        wgpu_api::DeviceType::IntegratedGpu => DeviceKind::IntegratedGpu(0),
        wgpu_api::DeviceType::VirtualGpu => DeviceKind::VirtualGpu(0),
        wgpu_api::DeviceType::Cpu => DeviceKind::Cpu,
        wgpu_api::DeviceType::Other => DeviceKind::DefaultDevice,
    }
}
