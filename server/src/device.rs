//! Where the engine computes, chosen once (`--device`) and passed down: no other module names a device.
//!
//! `auto` takes the first CUDA device when this binary was built with the `cuda` feature and one is present,
//! else the CPU. Asking for CUDA from a CPU-only build, or for a GPU that is not there, is an error that says
//! what to do, before anything is loaded.

use std::fmt;
use std::str::FromStr;

use candle_core::Device;

/// The `--device` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceArg {
    /// CUDA when compiled in and present, else the CPU.
    #[default]
    Auto,
    Cpu,
    /// `cuda` (= `cuda:0`) or `cuda:N`.
    Cuda(usize),
}

impl FromStr for DeviceArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(Self::Cuda(n)),
                _ => Err(format!(
                    "unknown device {s:?}: expected auto, cpu, cuda or cuda:N (N = 0, 1, ...)"
                )),
            },
        }
    }
}

impl fmt::Display for DeviceArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Why a device cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    #[error(
        "--device {0}: this llama-server was built without CUDA support (the `cuda` Cargo feature); use a \
         CUDA build of the server (`cargo build --release --features cuda`) or --device cpu"
    )]
    NotCompiled(DeviceArg),
    #[error("--device {arg}: {why}")]
    Unavailable { arg: DeviceArg, why: String },
}

/// Whether this binary was built with the `cuda` feature.
pub const CUDA_COMPILED: bool = cfg!(feature = "cuda");

/// Resolves `--device` to the device the engine uses.
pub fn choose(arg: DeviceArg) -> Result<Device, DeviceError> {
    match arg {
        DeviceArg::Cpu => Ok(Device::Cpu),
        DeviceArg::Auto if !CUDA_COMPILED => Ok(Device::Cpu),
        DeviceArg::Auto => Ok(cuda(0).unwrap_or(Device::Cpu)),
        DeviceArg::Cuda(_) if !CUDA_COMPILED => Err(DeviceError::NotCompiled(arg)),
        DeviceArg::Cuda(n) => cuda(n).map_err(|why| DeviceError::Unavailable { arg, why }),
    }
}

/// One device per tensor-parallel rank: all the CPU (ranks are threads sharing its cores and memory), or
/// `size` GPUs from the one `--device` names (`cuda:N` → cuda:N … cuda:N+size−1; `auto` → cuda:0 … when
/// CUDA is compiled in and present). Fewer GPUs than ranks is an error that names both counts.
pub fn choose_ranks(arg: DeviceArg, size: usize) -> Result<Vec<Device>, DeviceError> {
    let size = size.max(1);
    let first = choose(arg)?;
    if first.is_cpu() || size == 1 {
        return Ok(vec![first; size]);
    }
    let base = match first.location() {
        candle_core::DeviceLocation::Cuda { gpu_id } => gpu_id,
        _ => 0,
    };
    let mut devices = vec![first];
    for n in base + 1..base + size {
        let d = cuda(n).map_err(|why| DeviceError::Unavailable {
            arg,
            why: format!(
                "--tensor-parallel-size {size} needs one GPU per rank (cuda:{base} … cuda:{}), and cuda:{n} \
                 is not usable: {why}",
                base + size - 1
            ),
        })?;
        devices.push(d);
    }
    Ok(devices)
}

/// CUDA device `n`, or why not.
#[cfg(feature = "cuda")]
fn cuda(n: usize) -> Result<Device, String> {
    // candle panics inside cudarc when the driver library is missing: look for it first.
    if !driver_present() {
        return Err(
            "no NVIDIA driver library (libcuda.so.1) on this machine: run on a GPU node with the NVIDIA \
             container runtime, or use --device cpu"
                .to_owned(),
        );
    }
    use candle_core::cuda::cudarc::driver::CudaContext;
    let count = match std::panic::catch_unwind(CudaContext::device_count) {
        Ok(Ok(c)) => usize::try_from(c).unwrap_or(0),
        Ok(Err(e)) => return Err(format!("the CUDA driver failed to initialise: {e:?}")),
        Err(_) => return Err("the CUDA driver failed to initialise".to_owned()),
    };
    if n >= count {
        return Err(match count {
            0 => "the CUDA driver sees no GPU on this machine: use --device cpu".to_owned(),
            1 => "this machine has 1 CUDA device (cuda:0)".to_owned(),
            c => format!(
                "this machine has {c} CUDA devices (cuda:0 … cuda:{})",
                c - 1
            ),
        });
    }
    match std::panic::catch_unwind(|| Device::new_cuda(n)) {
        Ok(Ok(d)) => Ok(d),
        Ok(Err(e)) => Err(format!(
            "cannot open CUDA device {n}: {}",
            without_backtrace(e)
        )),
        Err(_) => Err(format!(
            "cannot open CUDA device {n}: the CUDA driver failed to initialise"
        )),
    }
}

/// candle attaches a backtrace to errors when RUST_BACKTRACE is set: clients and startup errors get the
/// cause only.
pub fn without_backtrace(e: candle_core::Error) -> candle_core::Error {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => without_backtrace(*inner),
        candle_core::Error::Context { inner, context } => candle_core::Error::Context {
            inner: Box::new(without_backtrace(*inner)),
            context,
        },
        other => other,
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda(_n: usize) -> Result<Device, String> {
    Err("not compiled with CUDA".to_owned())
}

/// Whether the CUDA driver library is where the dynamic loader would find it.
#[cfg(feature = "cuda")]
fn driver_present() -> bool {
    let dirs = std::env::var("LD_LIBRARY_PATH").unwrap_or_default();
    dirs.split(':')
        .filter(|d| !d.is_empty())
        .chain([
            "/usr/lib/x86_64-linux-gnu",
            "/usr/lib64",
            "/usr/lib",
            "/usr/local/nvidia/lib64",
            "/usr/local/cuda/lib64",
            "/usr/local/cuda/compat",
        ])
        .any(|d| std::path::Path::new(d).join("libcuda.so.1").exists())
}

/// Free and total bytes of a device's memory: the GPU's own (`cuMemGetInfo`), or the host's `MemAvailable` /
/// `MemTotal` for the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    pub free: u64,
    pub total: u64,
}

/// What `device` reports, if it can say.
pub fn memory(device: &Device) -> Option<Memory> {
    if device.is_cpu() {
        return host_memory();
    }
    gpu_memory(device)
}

/// The host's `MemAvailable` / `MemTotal` (the node's, inside a container: see [`host_budget`]).
pub fn host_memory() -> Option<Memory> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    };
    Some(Memory {
        free: field("MemAvailable:")?,
        total: field("MemTotal:")?,
    })
}

#[cfg(feature = "cuda")]
fn gpu_memory(device: &Device) -> Option<Memory> {
    let Device::Cuda(d) = device else {
        return None;
    };
    let (free, total) = d.cuda_stream().context().mem_get_info().ok()?;
    Some(Memory {
        free: free as u64,
        total: total as u64,
    })
}

#[cfg(not(feature = "cuda"))]
fn gpu_memory(_: &Device) -> Option<Memory> {
    None
}

/// The KV cache's default share of the GPU memory left after the weights and the reserve (a GPU holds little
/// else). The host's shares are in `llama_contract::memory`.
pub const GPU_KV_FRACTION: f64 = 0.9;

/// What sizing a GPU's KV cache needs to know.
#[derive(Debug, Clone, Copy)]
pub struct KvSizing {
    /// `--kv-cache-memory`, if given.
    pub explicit: Option<u64>,
    /// Share of the memory left after the weights and the reserve when not given.
    pub fraction: f64,
    /// What `--max-batch-size` full-length sequences need: more would never be used.
    pub enough: u64,
    /// Bytes the weights take on the device.
    pub weights: u64,
}

/// The KV cache budget in bytes on the GPU `name` (`cuda:0`), or why the model and cache do not fit, with
/// the arithmetic. 5 % of its memory (at least 256 MiB) stays free for activations and cuBLAS. (A CPU
/// replica's budget is `llama_contract::memory::host_kv_budget`, from its container's limit.)
pub fn gpu_kv_budget(name: &str, mem: Option<Memory>, s: &KvSizing) -> Result<u64, String> {
    let gib = |b: u64| format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64);
    let Some(mem) = mem else {
        // Nothing to check against: an explicit size, else what the batch needs.
        return Ok(s.explicit.unwrap_or(s.enough));
    };
    let reserve = (mem.total / 20).max(256 << 20);
    let Some(room) = mem.free.checked_sub(s.weights + reserve) else {
        return Err(format!(
            "the model's weights need {} on {name}, which has {} free of {} (and {} stays free for \
             activations)",
            gib(s.weights),
            gib(mem.free),
            gib(mem.total),
            gib(reserve)
        ));
    };
    match s.explicit {
        Some(b) if b > room => Err(format!(
            "--kv-cache-memory {b} ({}) does not fit on {name}: {} free − {} weights − {} reserve = {} left",
            gib(b),
            gib(mem.free),
            gib(s.weights),
            gib(reserve),
            gib(room)
        )),
        Some(b) => Ok(b),
        None => Ok(((room as f64 * s.fraction.clamp(0.0, 1.0)) as u64).min(s.enough)),
    }
}

/// The memory a CPU replica may use, and where that figure comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct HostMemory {
    /// Bytes the server may take: the container's limit less what other processes in the container hold,
    /// or the host's available memory, whichever is smaller.
    pub available: u64,
    /// The container's memory limit, if it has one.
    pub limit: Option<u64>,
    /// True when the container limit (not the host) bounds `available`.
    pub limited: bool,
    /// How `available` was found, for messages.
    pub source: String,
}

/// What this process may use of the host's memory: min(container limit − memory other processes of the
/// container cannot give back, host `MemAvailable`). `own_resident` is this process's resident anonymous
/// memory now (the headroom covers it, so it is not subtracted twice). `None` when nothing can be read.
pub fn host_budget(
    host: Option<Memory>,
    cgroup: Option<crate::cgroup::MemoryLimit>,
    own_resident: u64,
) -> Option<HostMemory> {
    use llama_contract::memory::human;
    let host_text = |m: &Memory| format!("the host's available memory {}", human(m.free));
    let container = cgroup.and_then(|c| {
        let limit = c.limit?;
        let others = c.unreclaimable.saturating_sub(own_resident);
        let text = if others > 0 {
            format!(
                "container memory limit {} (cgroup {}) − {} held by other processes",
                human(limit),
                c.version.as_str(),
                human(others)
            )
        } else {
            format!(
                "container memory limit {} (cgroup {})",
                human(limit),
                c.version.as_str()
            )
        };
        Some((limit, limit.saturating_sub(others), text))
    });
    match (container, host) {
        (Some((limit, avail, text)), Some(h)) if avail <= h.free => Some(HostMemory {
            available: avail,
            limit: Some(limit),
            limited: true,
            source: text,
        }),
        (Some((limit, _, _)), Some(h)) => Some(HostMemory {
            available: h.free,
            limit: Some(limit),
            limited: false,
            source: format!(
                "{} (less than the container memory limit {})",
                host_text(&h),
                human(limit)
            ),
        }),
        (Some((limit, avail, text)), None) => Some(HostMemory {
            available: avail,
            limit: Some(limit),
            limited: true,
            source: text,
        }),
        (None, Some(h)) => Some(HostMemory {
            available: h.free,
            limit: None,
            limited: false,
            source: host_text(&h),
        }),
        (None, None) => None,
    }
}

/// This process's resident anonymous memory (`RssAnon` in `/proc/self/status`), 0 if unknown.
pub fn own_resident_anon() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("RssAnon:"))?;
            let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kb * 1024)
        })
        .unwrap_or(0)
}

/// A short name for logs and metrics: `cpu` or `cuda:N`.
pub fn describe(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".to_owned(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_flags_parse_and_print_back() {
        for (s, d) in [
            ("auto", DeviceArg::Auto),
            ("cpu", DeviceArg::Cpu),
            ("cuda", DeviceArg::Cuda(0)),
            ("cuda:3", DeviceArg::Cuda(3)),
        ] {
            assert_eq!(s.parse::<DeviceArg>(), Ok(d));
        }
        assert_eq!(DeviceArg::Cuda(3).to_string(), "cuda:3");
        for bad in ["gpu", "cuda:", "cuda:-1", "cuda:x", "CPU", ""] {
            let err = bad.parse::<DeviceArg>().expect_err(bad);
            assert!(err.contains("expected auto, cpu, cuda or cuda:N"), "{err}");
        }
    }

    #[test]
    fn the_cpu_is_always_there_and_auto_falls_back_to_it() {
        assert_eq!(describe(&choose(DeviceArg::Cpu).expect("cpu")), "cpu");
        if !CUDA_COMPILED {
            assert_eq!(describe(&choose(DeviceArg::Auto).expect("auto")), "cpu");
        }
    }

    #[test]
    fn cpu_ranks_share_the_cpu_and_gpu_ranks_need_a_cuda_build() {
        let ranks = choose_ranks(DeviceArg::Cpu, 3).expect("3 CPU ranks");
        assert_eq!(ranks.len(), 3);
        assert!(ranks.iter().all(Device::is_cpu));
        if !CUDA_COMPILED {
            let err = choose_ranks(DeviceArg::Cuda(0), 2).expect_err("no CUDA in this build");
            assert!(
                err.to_string().contains("built without CUDA support"),
                "{err}"
            );
        }
    }

    const GIB: u64 = 1 << 30;

    fn sizing(explicit: Option<u64>, weights: u64) -> KvSizing {
        KvSizing {
            explicit,
            fraction: 0.9,
            enough: 100 * GIB,
            weights,
        }
    }

    #[test]
    fn a_gpu_budget_is_the_fraction_of_what_the_weights_and_reserve_leave() {
        let h100 = Memory {
            free: 79 * GIB,
            total: 80 * GIB,
        };
        // 79 free − 15 weights − 4 reserve (5 % of 80) = 60; 90 % of that.
        let b = gpu_kv_budget("cuda:0", Some(h100), &sizing(None, 15 * GIB)).expect("fits");
        assert_eq!(b, (60.0 * GIB as f64 * 0.9) as u64);
        // Never more than max-batch-size full sequences need, and no 1 GiB host cap on a GPU.
        let s = KvSizing {
            enough: 3 * GIB,
            ..sizing(None, 15 * GIB)
        };
        assert_eq!(gpu_kv_budget("cuda:0", Some(h100), &s), Ok(3 * GIB));
        assert_eq!(
            gpu_kv_budget("cuda:0", Some(h100), &sizing(Some(60 * GIB), 15 * GIB)),
            Ok(60 * GIB)
        );
    }

    #[test]
    fn weights_or_a_kv_budget_that_do_not_fit_are_refused_with_the_arithmetic() {
        let small = Memory {
            free: 7 * GIB,
            total: 8 * GIB,
        };
        let err =
            gpu_kv_budget("cuda:0", Some(small), &sizing(None, 14 * GIB)).expect_err("too big");
        assert_eq!(
            err,
            "the model's weights need 14.00 GiB on cuda:0, which has 7.00 GiB free of 8.00 GiB \
             (and 0.40 GiB stays free for activations)"
        );
        let err =
            gpu_kv_budget("cuda:0", Some(small), &sizing(Some(5 * GIB), 2 * GIB)).expect_err("kv");
        assert_eq!(
            err,
            "--kv-cache-memory 5368709120 (5.00 GiB) does not fit on cuda:0: 7.00 GiB free − 2.00 GiB \
             weights − 0.40 GiB reserve = 4.60 GiB left"
        );
    }

    #[test]
    fn a_container_limit_bounds_the_host_budget_when_it_is_the_smaller() {
        use crate::cgroup::{MemoryLimit, Version};
        const MIB: u64 = 1 << 20;
        let host = Memory {
            free: 20 * GIB,
            total: 24 * GIB,
        };
        let pod = MemoryLimit {
            version: Version::V1,
            limit: Some(512 * MIB),
            unreclaimable: 30 * MIB,
        };
        // 30 MiB held in the container, 10 MiB of it by this process: 20 MiB belongs to others.
        let b = host_budget(Some(host), Some(pod), 10 * MIB).expect("known");
        assert_eq!(b.available, 492 * MIB);
        assert_eq!((b.limit, b.limited), (Some(512 * MIB), true));
        assert_eq!(
            b.source,
            "container memory limit 512 MiB (cgroup v1) − 20 MiB held by other processes"
        );
        // The process alone in its container: nothing is subtracted.
        let b = host_budget(Some(host), Some(pod), 40 * MIB).expect("known");
        assert_eq!(b.available, 512 * MIB);
        assert_eq!(b.source, "container memory limit 512 MiB (cgroup v1)");
        // A limit above what the host has free: the host bounds it, and the defaults stay the host's.
        let big = MemoryLimit {
            limit: Some(64 * GIB),
            ..pod
        };
        let b = host_budget(Some(host), Some(big), 0).expect("known");
        assert_eq!((b.available, b.limited), (20 * GIB, false));
        assert!(b.source.starts_with("the host's available memory 20.00 GiB (less than the container memory limit 64.00 GiB)"), "{}", b.source);
        // No limit: the host's available memory, as before.
        let none = MemoryLimit { limit: None, ..pod };
        let b = host_budget(Some(host), Some(none), 0).expect("known");
        assert_eq!((b.available, b.limit, b.limited), (20 * GIB, None, false));
        assert_eq!(host_budget(None, None, 0), None);
        assert!(host_memory().is_some_and(|m| m.free > 0 && m.total >= m.free));
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_from_a_cpu_build_names_the_feature() {
        let err = choose(DeviceArg::Cuda(7)).expect_err("no cuda here");
        assert_eq!(err, DeviceError::NotCompiled(DeviceArg::Cuda(7)));
        let text = err.to_string();
        assert!(text.starts_with("--device cuda:7: this llama-server was built without CUDA support (the `cuda` Cargo feature)"), "{text}");
    }
}
