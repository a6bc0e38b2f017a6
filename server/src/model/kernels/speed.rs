//! Speed of our K-quant kernels against candle's `QMatMul` on the same bytes (ignored tests, run by hand:
//! `cargo test --release -p llama-server --lib q6k_speed -- --ignored --nocapture`).

use std::borrow::Cow;

use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{Device, Tensor};

use super::Isa;
use super::kquant_tests::random;
use super::q4_0::Q4_0Matrix;
use super::q4_1::Q4_1Matrix;
use super::q4k::Q4KMatrix;
use super::q5_tiles::{Q5_0Matrix, Q5KMatrix};
use super::q6k::Q6Matrix;

/// Q6_K: our kernel against candle's (`ROWS`, `COLS`, `MS` token counts; rayon's threads). Run with
/// `cargo test --release -p llama-server --lib q6k_speed -- --ignored --nocapture`.
#[test]
#[ignore]
fn q6k_speed() {
    let (rows, cols) = speed_shape();
    let bytes = random(12, rows * cols / 256, 210, &[208]);
    let ours = Q6Matrix::from_q6k(&bytes, rows, cols).expect("ours");
    compare_speed(
        &bytes,
        GgmlDType::Q6K,
        rows,
        cols,
        &[("ours", &|x| ours.forward(x).expect("ours"))],
    );
}

/// Q4_K: our own kernel, the Q4_1 kernel it used to run on, and candle's, as [`q6k_speed`].
#[test]
#[ignore]
fn q4k_speed() {
    let (rows, cols) = speed_shape();
    let bytes = random(15, rows * cols / 256, 144, &[0, 2]);
    let ours = Q4KMatrix::from_q4k(&bytes, rows, cols).expect("ours");
    let q4_1 = Q4_1Matrix::from_q4k(&bytes, rows, cols).expect("q4_1");
    compare_speed(
        &bytes,
        GgmlDType::Q4K,
        rows,
        cols,
        &[
            ("ours", &|x| ours.forward(x).expect("ours")),
            ("as Q4_1", &|x| q4_1.forward(x).expect("q4_1")),
        ],
    );
}

/// Q5_0 and Q5_K on their file-sized tiles, and candle's, as [`q6k_speed`].
#[test]
#[ignore]
fn q5_speed() {
    let (rows, cols) = speed_shape();
    let q5_0 = random(17, rows * cols / 32, 22, &[0]);
    let ours = Q5_0Matrix::from_q5_0(&q5_0, rows, cols).expect("ours");
    compare_speed(
        &q5_0,
        GgmlDType::Q5_0,
        rows,
        cols,
        &[("ours", &|x| ours.forward(x).expect("ours"))],
    );
    let q5k = random(18, rows * cols / 256, 176, &[0, 2]);
    let ours = Q5KMatrix::from_q5k(&q5k, rows, cols).expect("ours");
    compare_speed(
        &q5k,
        GgmlDType::Q5K,
        rows,
        cols,
        &[("ours", &|x| ours.forward(x).expect("ours"))],
    );
}

/// Q4_0 on its tiles and on candle's blocks (`vec_dot`), and candle's `QMatMul`, as [`q6k_speed`].
#[test]
#[ignore]
fn q4_0_speed() {
    let (rows, cols) = speed_shape();
    let bytes = random(19, rows * cols / 32, 18, &[0]);
    let ours = Q4_0Matrix::from_bytes(&bytes, rows, cols).expect("ours");
    let blocks = Q4_0Matrix::from_bytes_for(Isa::Scalar, &bytes, rows, cols).expect("blocks");
    compare_speed(
        &bytes,
        GgmlDType::Q4_0,
        rows,
        cols,
        &[
            ("ours", &|x| ours.forward(x).expect("ours")),
            ("candle vec_dot", &|x| blocks.forward(x).expect("blocks")),
        ],
    );
}

/// A named matmul for [`compare_speed`].
type Side<'a> = (&'a str, &'a dyn Fn(&Tensor) -> Tensor);

fn speed_shape() -> (usize, usize) {
    let env = |k: &str, d: usize| std::env::var(k).map_or(d, |v| v.parse().expect(k));
    (env("ROWS", 2048), env("COLS", 8192))
}

/// Times each side and candle's `QMatMul` on the same bytes for each token count in `MS`: wall time,
/// and the process's CPU time (steadier while other work shares the machine). `WHICH=<side>` runs one
/// side only (for `perf`).
fn compare_speed(bytes: &[u8], dtype: GgmlDType, rows: usize, cols: usize, sides: &[Side<'_>]) {
    use candle_core::Module;
    use candle_core::quantized::QMatMul;
    let storage = QStorage::from_data(Cow::Borrowed(bytes), &Device::Cpu, dtype).expect("st");
    let candle =
        QMatMul::from_qtensor(QTensor::new(storage, (rows, cols)).expect("qt")).expect("candle");
    let cpu = || {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid timespec to write into.
        unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
        ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
    };
    let which = std::env::var("WHICH").unwrap_or_default();
    let ms = std::env::var("MS").unwrap_or_else(|_| "1,4,16,128".into());
    for m in ms.split(',').map(|v| v.parse::<usize>().expect("MS")) {
        let x = Tensor::from_vec(
            (0..m * cols)
                .map(|i| (i as f32 * 0.01).sin())
                .collect::<Vec<_>>(),
            (m, cols),
            &Device::Cpu,
        )
        .expect("x");
        let time = |f: &dyn Fn(&Tensor) -> Tensor| {
            let _ = f(&x);
            let n = if m == 1 { 50 } else { 5 };
            let (t0, c0) = (std::time::Instant::now(), cpu());
            for _ in 0..n {
                let _ = f(&x);
            }
            (
                t0.elapsed().as_secs_f64() / n as f64,
                (cpu() - c0) / n as f64,
            )
        };
        let candle_side: &dyn Fn(&Tensor) -> Tensor = &|x| candle.forward(x).expect("candle");
        let mut line = format!("m={m}:");
        let mut base = None;
        for (name, f) in sides.iter().copied().chain([("candle", candle_side)]) {
            if !which.is_empty() && which != name {
                continue;
            }
            let (wall, cpu) = time(f);
            let base_cpu = *base.get_or_insert(cpu);
            line += &format!(
                " {name} {:.2} ms (CPU {:.2} ms, {:.1} GB/s of file bytes, CPU {:.2}× the first);",
                wall * 1e3,
                cpu * 1e3,
                bytes.len() as f64 / wall / 1e9,
                cpu / base_cpu
            );
        }
        println!("{line}");
    }
}
