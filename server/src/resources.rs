//! Resource samples exported as OTel metrics every `--sample-interval-ms`: process CPU
//! (percent of one core, as `top` shows it), memory in use and, on NVIDIA, GPU
//! utilisation. Memory is what NVML says the GPU has in use (as nvidia-smi shows it)
//! where NVML is there, else Burn's device pool on wgpu, else the process RSS
//! (labelled host memory) on the CPU backend. burn-wgpu reports no utilisation, so
//! without NVML none is sampled: no figure is better than a 0.

use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;

use crossbatch_model::backend::{BackendKind, SelectedDevice};
use crossbatch_model::gpu_monitor::GpuMonitor;

/// CPU time (user + system) this process has used.
pub fn process_cpu_time() -> Option<Duration> {
    // SAFETY: getrusage only writes into the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    if rc != 0 {
        return None;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Some(tv(ru.ru_utime) + tv(ru.ru_stime))
}

/// Resident set size of this process, where the platform tells it.
pub fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * page.max(1) as u64)
}

/// One sample of what the memory gauge reports, and under which label.
pub fn memory_in_use(device: &SelectedDevice) -> Option<(u64, &'static str)> {
    match device.backend {
        BackendKind::Wgpu => device
            .device
            .memory_pool_usage()
            .map(|u| (u.bytes_in_use, "device")),
        BackendKind::Cpu => rss_bytes().map(|b| (b, "host")),
    }
}

/// Samples until the returned handle is aborted.
pub fn spawn_sampler(device: Arc<SelectedDevice>, every: Duration) -> tokio::task::JoinHandle<()> {
    let gpu = match (device.backend, device.software) {
        (BackendKind::Wgpu, false) => GpuMonitor::open(&device.name),
        _ => None,
    };
    let meter = opentelemetry::global::meter("crossbatch-server");
    let cpu = meter
        .f64_gauge("process.cpu.percent")
        .with_unit("%")
        .with_description("process CPU use, percent of one core")
        .build();
    let mem = meter
        .f64_gauge("crossbatch.memory.used")
        .with_unit("MB")
        .with_description(
            "memory in use: the GPU's (NVML), Burn's device pool (wgpu), or host RSS (cpu backend)",
        )
        .build();
    let util = meter
        .f64_gauge("crossbatch.device.utilization")
        .with_unit("%")
        .with_description("GPU utilisation: percent of the sample period a kernel ran (NVML)")
        .build();
    let attrs = [
        KeyValue::new("crossbatch.backend", device.backend.to_string()),
        KeyValue::new("crossbatch.device", device.name.clone()),
    ];
    tokio::spawn(async move {
        let mut last = (Instant::now(), process_cpu_time());
        let mut tick = tokio::time::interval(every.max(Duration::from_millis(50)));
        loop {
            tick.tick().await;
            let now = (Instant::now(), process_cpu_time());
            if let (Some(c0), Some(c1)) = (last.1, now.1) {
                let wall = now.0.duration_since(last.0).as_secs_f64();
                if wall > 0.0 {
                    let pct = 100.0 * c1.saturating_sub(c0).as_secs_f64() / wall;
                    cpu.record(pct, &attrs);
                }
            }
            last = now;
            let reading = gpu.as_ref().and_then(GpuMonitor::sample);
            if let Some(r) = reading {
                util.record(r.utilization_pct, &attrs);
            }
            let memory = match reading {
                Some(r) => Some((r.memory_used_mb, "device", "nvml")),
                None => memory_in_use(&device).map(|(bytes, kind)| {
                    let source = if kind == "device" { "burn-pool" } else { "rss" };
                    (bytes as f64 / (1024.0 * 1024.0), kind, source)
                }),
            };
            if let Some((mb, kind, source)) = memory {
                let mut a = attrs.to_vec();
                a.push(KeyValue::new("memory.kind", kind));
                a.push(KeyValue::new("memory.source", source));
                mem.record(mb, &a);
            }
        }
    })
}
