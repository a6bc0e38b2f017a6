//! Shared helpers of the engine tests: locating the model, the python env and the generated test models.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// `server/`, read at run time: a shared target dir can hold a test binary compiled in another checkout.
pub fn package_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())
        .into()
}

pub fn repo_root() -> PathBuf {
    package_dir()
        .parent()
        .expect("server/ has a parent")
        .to_path_buf()
}

fn script_output(script: &str) -> PathBuf {
    let out = Command::new("bash")
        .arg(repo_root().join(script))
        .output()
        .unwrap_or_else(|e| panic!("running {script}: {e}"));
    assert!(
        out.status.success(),
        "{script} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// The default SmolLM2 Q4_1 model (`LLAMA_OP_MODEL`, else `scripts/fetch-model.sh`).
pub fn smollm2() -> PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| match std::env::var_os("LLAMA_OP_MODEL") {
        Some(p) => PathBuf::from(p),
        None => script_output("scripts/fetch-model.sh"),
    })
    .clone()
}

/// The venv's python (`LLAMA_OP_VENV`, else `scripts/pyenv.sh`).
pub fn python() -> PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let venv = match std::env::var_os("LLAMA_OP_VENV") {
            Some(p) => PathBuf::from(p),
            None => script_output("scripts/pyenv.sh"),
        };
        venv.join("bin/python")
    })
    .clone()
}

/// Directory of the generated test models; `which` is `tiny`, `tp`, `smollm2` or `llamacpp` (SmolLM2 in
/// llama.cpp's quantization presets, by its own quantizer; created on demand, cached).
/// `LLAMA_OP_TEST_MODELS` names a directory that already holds them (a machine without the python env,
/// such as the GPU machine scripts/gpu-check.sh runs on).
pub fn test_models(which: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("LLAMA_OP_TEST_MODELS") {
        return PathBuf::from(dir);
    }
    static TINY: OnceLock<PathBuf> = OnceLock::new();
    static TP: OnceLock<PathBuf> = OnceLock::new();
    static SMOL: OnceLock<PathBuf> = OnceLock::new();
    static LLAMACPP: OnceLock<PathBuf> = OnceLock::new();
    let cell = match which {
        "tiny" => &TINY,
        "tp" => &TP,
        "llamacpp" => &LLAMACPP,
        _ => &SMOL,
    };
    cell.get_or_init(|| make_models(which)).clone()
}

/// The device the engine tests compute on: `LLAMA_TEST_DEVICE` (`cpu`, `cuda`, `cuda:N`, `auto`; default
/// `cpu`), resolved by the server's own `--device` logic. scripts/gpu-check.sh sets it to `cuda`.
pub fn device() -> candle_core::Device {
    let arg = std::env::var("LLAMA_TEST_DEVICE").unwrap_or_else(|_| "cpu".into());
    let arg: llama_server::device::DeviceArg = arg
        .parse()
        .unwrap_or_else(|e| panic!("LLAMA_TEST_DEVICE: {e}"));
    llama_server::device::choose(arg).unwrap_or_else(|e| panic!("LLAMA_TEST_DEVICE: {e}"))
}

/// [`device`]'s `--device` value (for loaders that take the flag, such as `cli::Loaded`).
#[allow(dead_code)] // not every engine test loads through the CLI's loader
pub fn device_arg() -> llama_server::device::DeviceArg {
    let arg = std::env::var("LLAMA_TEST_DEVICE").unwrap_or_else(|_| "cpu".into());
    arg.parse()
        .unwrap_or_else(|e| panic!("LLAMA_TEST_DEVICE: {e}"))
}

fn make_models(which: &str) -> PathBuf {
    let _ = smollm2(); // the smollm2 re-encodings need the original next to them
    let dir = smollm2()
        .parent()
        .expect("model has a directory")
        .to_path_buf();
    let out = Command::new(python())
        .arg(repo_root().join("scripts/reference/make_models.py"))
        .arg("--dir")
        .arg(&dir)
        .arg("--only")
        .arg(which)
        .env("OPENBLAS_NUM_THREADS", "1")
        .output()
        .expect("running make_models.py");
    assert!(
        out.status.success(),
        "make_models.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

/// The largest element-wise |a − b|.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
