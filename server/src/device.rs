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
    match std::panic::catch_unwind(|| Device::new_cuda(n)) {
        Ok(Ok(d)) => Ok(d),
        Ok(Err(e)) => Err(format!("cannot open CUDA device {n}: {e}")),
        Err(_) => Err(format!(
            "cannot open CUDA device {n}: the CUDA driver failed to initialise"
        )),
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

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_from_a_cpu_build_names_the_feature() {
        let err = choose(DeviceArg::Cuda(7)).expect_err("no cuda here");
        assert_eq!(err, DeviceError::NotCompiled(DeviceArg::Cuda(7)));
        let text = err.to_string();
        assert!(text.starts_with("--device cuda:7: this llama-server was built without CUDA support (the `cuda` Cargo feature)"), "{text}");
    }
}
