//! GGUF types whose values are exactly representable in the blocks of one of our kernels, re-laid out at load
//! so that they run on it (multi-token tiles, rows over the rayon pool, exact integer dots):
//!
//! - **Q4_K → Q4_1 blocks** (on CPUs without AVX-512 VNNI, and for row counts not in eights; elsewhere Q4_K
//!   has its own kernel, [`super::q4k`]). A Q4_K super-block (256 values) is eight sub-blocks of 32 with
//!   6-bit scale and minimum: value = `d·sc·q − dmin·m`, `q` 4-bit. Each sub-block is a Q4_1 block with
//!   scale `d·sc` and minimum `−dmin·m`; both products are exact in f32 (an f16 times a 6-bit integer needs
//!   17 bits).
//! - **Q5_K → 5-bit blocks** ([`super::q5`], also Q5_1's kernel): as Q4_K, with a fifth bit per value.
//!
//! Memory: 24 bytes per 32 Q4_K values instead of 18, 40 per 32 Q5_K values instead of 22. (Q5_0 has its
//! own tiles, [`super::q5_0`].)

use candle_core::Result;

use super::q4_1::{BlockQ4_1, Q4_1Matrix};
use super::q5::{BlockQ5, Q5Matrix};
use super::{Acts, Isa};

const Q5K_BYTES: usize = 176;

fn f16(b: &[u8]) -> f32 {
    half::f16::from_le_bytes([b[0], b[1]]).to_f32()
}

/// The 6-bit scale and minimum of sub-block `j` (0..8) from Q4_K's 12 packed bytes (GGML's
/// `get_scale_min_k4`).
pub(super) fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Q4_K super-blocks as Q4_1 blocks (eight per super-block, in order), from [`super::q4k`]'s parse.
pub(super) fn q4k_blocks(bytes: &[u8]) -> Vec<BlockQ4_1> {
    super::q4k::q4k_blocks(bytes)
        .iter()
        .map(super::q4k::BlockQ4K::as_q4_1)
        .collect()
}

/// Q5_K super-blocks as 5-bit blocks with minimum (eight per super-block, in order).
pub(super) fn q5k_blocks(bytes: &[u8]) -> Vec<BlockQ5> {
    let mut out = Vec::with_capacity(bytes.len() / Q5K_BYTES * 8);
    for sb in bytes.chunks_exact(Q5K_BYTES) {
        let (d, dmin) = (f16(&sb[0..2]), f16(&sb[2..4]));
        let scales = &sb[4..16];
        let qh = &sb[16..48];
        let qs = &sb[48..176];
        for j in 0..8 {
            let (sc, m) = scale_min_k4(j, scales);
            let ql = &qs[32 * (j / 2)..32 * (j / 2) + 32];
            let mut v = [0u8; 32];
            for (l, x) in v.iter_mut().enumerate() {
                let lo = if j % 2 == 0 { ql[l] & 0x0F } else { ql[l] >> 4 };
                *x = lo | (((qh[l] >> j) & 1) << 4);
            }
            out.push(BlockQ5 {
                d: d * f32::from(sc),
                m: -(dmin * f32::from(m)),
                qs: v,
            });
        }
    }
    out
}

impl Q4_1Matrix {
    /// A `[rows, cols]` Q4_K tensor's GGUF bytes, run by the Q4_1 kernel.
    pub fn from_q4k(bytes: &[u8], rows: usize, cols: usize) -> Result<Self> {
        Self::from_q4k_for(Isa::detect(), bytes, rows, cols)
    }

    pub(super) fn from_q4k_for(isa: Isa, bytes: &[u8], rows: usize, cols: usize) -> Result<Self> {
        if !cols.is_multiple_of(256) || bytes.len() != rows * cols / 256 * super::q4k::Q4K_BYTES {
            candle_core::bail!("Q4_K matrix [{rows}, {cols}]: {} bytes", bytes.len());
        }
        Self::from_blocks_for(isa, q4k_blocks(bytes), rows, cols, "Q4_K", Acts::Per256)
    }
}

impl Q5Matrix {
    /// A `[rows, cols]` Q5_K tensor's GGUF bytes, run by the 5-bit kernel.
    pub fn from_q5k(bytes: &[u8], rows: usize, cols: usize) -> Result<Self> {
        Self::from_q5k_for(Isa::detect(), bytes, rows, cols)
    }

    pub(super) fn from_q5k_for(isa: Isa, bytes: &[u8], rows: usize, cols: usize) -> Result<Self> {
        if !cols.is_multiple_of(256) || bytes.len() != rows * cols / 256 * Q5K_BYTES {
            candle_core::bail!("Q5_K matrix [{rows}, {cols}]: {} bytes", bytes.len());
        }
        Self::from_blocks_for(isa, q5k_blocks(bytes), rows, cols, "Q5_K", Acts::Per256)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::quantized::{GgmlDType, QStorage, QTensor};
    use candle_core::{Device, Tensor};
    use std::borrow::Cow;

    use super::super::q4k::Q4KMatrix;
    use super::super::q5_0::Q5_0Matrix;
    use super::super::q6k::{Q6Matrix, q6k_blocks};
    use super::super::quantize_rows_with;
    use super::super::tests::isas;
    use super::*;

    /// Random bytes with sane f16 scales at `scale_at` (everything else random, as any file may hold).
    fn random(seed: u64, blocks: usize, size: usize, scale_at: &[usize]) -> Vec<u8> {
        let mut s = seed;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let mut out = Vec::with_capacity(blocks * size);
        for _ in 0..blocks {
            let mut b: Vec<u8> = (0..size).map(|_| next() as u8).collect();
            for &at in scale_at {
                let d = half::f16::from_f32(0.002 + (next() % 100) as f32 * 1e-4);
                b[at..at + 2].copy_from_slice(&d.to_le_bytes());
            }
            out.extend(b);
        }
        out
    }

    /// candle's own dequantization: the independent definition of the values.
    fn candle_values(bytes: &[u8], dtype: GgmlDType, rows: usize, cols: usize) -> Vec<f64> {
        let storage =
            QStorage::from_data(Cow::Borrowed(bytes), &Device::Cpu, dtype).expect("storage");
        let t = QTensor::new(storage, (rows, cols)).expect("qtensor");
        let w = t.dequantize(&Device::Cpu).expect("dequantize");
        w.flatten_all()
            .and_then(|w| w.to_vec1::<f32>())
            .expect("values")
            .into_iter()
            .map(f64::from)
            .collect()
    }

    #[test]
    fn relaid_blocks_hold_exactly_the_values_candle_dequantizes() {
        let (rows, cols) = (3, 512);
        let q4k = random(1, rows * cols / 256, 144, &[0, 2]);
        let want = candle_values(&q4k, GgmlDType::Q4K, rows, cols);
        let got: Vec<f64> = q4k_blocks(&q4k)
            .iter()
            .flat_map(|b| {
                (0..32).map(move |j| {
                    let q = if j < 16 {
                        b.qs[j] & 15
                    } else {
                        b.qs[j - 16] >> 4
                    };
                    f64::from(b.d * f32::from(q) + b.m)
                })
            })
            .collect();
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-6 * w.abs().max(1e-3),
                "Q4_K value {i}: {g} vs {w}"
            );
        }
        let q50 = random(2, rows * cols / 32, 22, &[0]);
        let want = candle_values(&q50, GgmlDType::Q5_0, rows, cols);
        let got: Vec<f64> = super::super::q5_0::q5_0_blocks(&q50)
            .iter()
            .flat_map(|b| b.qs.iter().map(move |&q| f64::from(b.d * f32::from(q))))
            .collect();
        assert_eq!(got, want, "Q5_0 values");
        let five = |blocks: Vec<BlockQ5>| -> Vec<f64> {
            blocks
                .iter()
                .flat_map(|b| {
                    b.qs.iter()
                        .map(move |&q| f64::from(b.d * f32::from(q) + b.m))
                })
                .collect()
        };
        let q5k = random(5, rows * cols / 256, 176, &[0, 2]);
        let want = candle_values(&q5k, GgmlDType::Q5K, rows, cols);
        for (i, (g, w)) in five(q5k_blocks(&q5k)).iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-6 * w.abs().max(1e-3),
                "Q5_K value {i}: {g} vs {w}"
            );
        }
        let q51 = random(6, rows * cols / 32, 24, &[0, 2]);
        let want = candle_values(&q51, GgmlDType::Q5_1, rows, cols);
        let parsed: Vec<BlockQ5> = q51
            .chunks_exact(24)
            .map(<super::super::q5::Q5 as super::super::quant::GgufBlocks>::parse)
            .collect();
        for (i, (g, w)) in five(parsed).iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-6 * w.abs().max(1e-3),
                "Q5_1 value {i}: {g} vs {w}"
            );
        }
        // Q4_K on its own kernel: bit for bit, from the row-major blocks and from the VNNI tiles (16 rows:
        // two row groups)
        let (rows16, q4k) = (16, random(12, 16 * cols / 256, 144, &[0, 2]));
        let ids: Vec<u32> = (0..rows16 as u32).collect();
        let want4k: Vec<f32> = candle_values(&q4k, GgmlDType::Q4K, rows16, cols)
            .into_iter()
            .map(|v| v as f32)
            .collect();
        for isa in isas() {
            let m = Q4KMatrix::from_q4k_for(isa, &q4k, rows16, cols).expect("q4_k");
            assert!(m.can_gather());
            assert_eq!(
                m.gather(&ids).expect("gather"),
                want4k,
                "Q4_K values at {isa:?}"
            );
        }
        // Q6_K: bit for bit, from the row-major blocks and from the VNNI tiles (gather reads either)
        let (rows8, q6k) = (8, random(9, 8 * cols / 256, 210, &[208]));
        let want: Vec<f32> = candle_values(&q6k, GgmlDType::Q6K, rows8, cols)
            .into_iter()
            .map(|v| v as f32)
            .collect();
        let ids: Vec<u32> = (0..rows8 as u32).collect();
        for isa in isas() {
            let m = Q6Matrix::from_q6k_for(isa, &q6k, rows8, cols).expect("q6_k");
            assert!(m.can_gather());
            assert_eq!(
                m.gather(&ids).expect("gather"),
                want,
                "Q6_K values at {isa:?}"
            );
        }
    }

    /// Within activation-quantization error of f64 math on candle's dequantized weights at every ISA, and
    /// a batch of 13 tokens equal, bit for bit, to each token alone.
    #[test]
    fn relaid_matmuls_match_dequantized_math_and_are_batch_invariant() {
        let (rows, cols) = (40, 512);
        let q4k = random(3, rows * cols / 256, 144, &[0, 2]);
        let q50 = random(4, rows * cols / 32, 22, &[0]);
        let q5k = random(7, rows * cols / 256, 176, &[0, 2]);
        let q51 = random(8, rows * cols / 32, 24, &[0, 2]);
        let q6k = random(10, rows * cols / 256, 210, &[208]);
        let q6k_odd = random(11, 13 * cols / 256, 210, &[208]);
        let w6k = candle_values(&q6k, GgmlDType::Q6K, rows, cols);
        let w6k_odd = candle_values(&q6k_odd, GgmlDType::Q6K, 13, cols);
        let w4k = candle_values(&q4k, GgmlDType::Q4K, rows, cols);
        let w50 = candle_values(&q50, GgmlDType::Q5_0, rows, cols);
        let w5k = candle_values(&q5k, GgmlDType::Q5K, rows, cols);
        let w51 = candle_values(&q51, GgmlDType::Q5_1, rows, cols);
        let m = 13;
        let mut s = 99u32;
        let xs: Vec<f32> = (0..m * cols)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (s >> 8) as f32 / (1u32 << 23) as f32 - 1.0
            })
            .collect();
        let x = Tensor::from_vec(xs.clone(), (m, cols), &Device::Cpu).expect("x");
        for isa in isas() {
            for (name, w, run) in [
                (
                    "Q4_K",
                    &w4k,
                    Box::new(|x: &Tensor| {
                        Q4_1Matrix::from_q4k_for(isa, &q4k, rows, cols)?.forward_with(isa, x)
                    }) as Box<dyn Fn(&Tensor) -> Result<Tensor>>,
                ),
                (
                    "Q4_K (own kernel)",
                    &w4k,
                    Box::new(|x: &Tensor| {
                        Q4KMatrix::from_q4k_for(isa, &q4k, rows, cols)?.forward_with(isa, x)
                    }),
                ),
                (
                    "Q5_0",
                    &w50,
                    Box::new(|x: &Tensor| {
                        Q5_0Matrix::from_q5_0_for(isa, &q50, rows, cols)?.forward_with(isa, x)
                    }),
                ),
                (
                    "Q5_K",
                    &w5k,
                    Box::new(|x: &Tensor| {
                        Q5Matrix::from_q5k_for(isa, &q5k, rows, cols)?.forward_with(isa, x)
                    }),
                ),
                (
                    "Q6_K",
                    &w6k,
                    Box::new(|x: &Tensor| {
                        Q6Matrix::from_q6k_for(isa, &q6k, rows, cols)?.forward_with(isa, x)
                    }),
                ),
                (
                    "Q6_K, 13 rows (blocks, not tiles)",
                    &w6k_odd,
                    Box::new(|x: &Tensor| {
                        Q6Matrix::from_q6k_for(isa, &q6k_odd, 13, cols)?.forward_with(isa, x)
                    }),
                ),
                (
                    "Q5_1",
                    &w51,
                    Box::new(|x: &Tensor| {
                        Q5Matrix::from_bytes_for(isa, &q51, rows, cols)?.forward_with(isa, x)
                    }),
                ),
            ] {
                let got = run(&x).and_then(|y| y.to_vec2::<f32>()).expect("forward");
                for t in 0..m {
                    let want: Vec<f64> = (0..w.len() / cols)
                        .map(|r| {
                            (0..cols)
                                .map(|c| w[r * cols + c] * f64::from(xs[t * cols + c]))
                                .sum()
                        })
                        .collect();
                    let scale = want.iter().fold(0f64, |a, v| a.max(v.abs()));
                    assert_eq!(got[t].len(), want.len(), "{name}: rows");
                    for (r, (g, e)) in got[t].iter().zip(&want).enumerate() {
                        assert!(
                            (f64::from(*g) - e).abs() < 2e-2 * scale,
                            "{name} {isa:?} token {t} row {r}: {g} vs exact {e}"
                        );
                    }
                    let alone = x
                        .narrow(0, t, 1)
                        .and_then(|xt| run(&xt))
                        .and_then(|y| y.to_vec2::<f32>())
                        .expect("one token");
                    assert_eq!(
                        alone[0], got[t],
                        "{name} {isa:?}: token {t} in a batch of {m} differs"
                    );
                }
            }
        }
    }

    /// Q6_K on the VNNI tiles is each super-block's exact integer dot scaled once: bit for bit the plain
    /// loop `acc = fma(Σ sc · Σ (q − 32) · a, d · d_a, acc)`, with the extreme scales (−128, 127) and
    /// values (0, 63) a file may hold against activations at ±127.
    #[test]
    fn q6k_tiles_give_exact_integer_dots_scaled_once() {
        if !isas().contains(&Isa::Vnni) {
            return;
        }
        for rows in [32, 24] {
            q6k_tiles_exact(rows);
        }
    }

    fn q6k_tiles_exact(rows: usize) {
        let (cols, m) = (1024, 13);
        let mut bytes = random(13, rows * cols / 256, 210, &[208]);
        // the first super-block of row 0: every value 63 (ql, qh all ones) and scale −128; of row 1: every
        // value 0, scale 127
        let sb_row = cols / 256 * 210;
        bytes[..192].fill(0xFF);
        bytes[192..208].fill(0x80);
        bytes[sb_row..sb_row + 192].fill(0);
        bytes[sb_row + 192..sb_row + 208].fill(0x7F);
        let mut s = 7u32;
        let xs: Vec<f32> = (0..m * cols)
            .map(|i| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                // tokens 0 and 1: every activation at the scale's maximum magnitude (then alternating in
                // sign)
                if i < cols {
                    1.0
                } else if i < 2 * cols {
                    if i % 2 == 0 { 1.0 } else { -1.0 }
                } else {
                    (s >> 8) as f32 / (1u32 << 23) as f32 - 1.0
                }
            })
            .collect();
        let x = Tensor::from_vec(xs, (m, cols), &Device::Cpu).expect("x");
        let got = Q6Matrix::from_q6k_for(Isa::Vnni, &bytes, rows, cols)
            .and_then(|w| w.forward_with(Isa::Vnni, &x))
            .and_then(|y| y.to_vec2::<f32>())
            .expect("forward");
        let blocks = q6k_blocks(&bytes);
        let (acts, _) = quantize_rows_with(&x, cols, "Q6_K", Acts::Per256).expect("acts");
        let kb = cols / 32;
        for t in 0..m {
            for r in 0..rows {
                let (w, a) = (&blocks[r * kb..][..kb], &acts[t * kb..][..kb]);
                let mut acc = 0f32;
                for (w, a) in w.chunks(8).zip(a.chunks(8)) {
                    let mut isum = 0i64;
                    for (w, a) in w.iter().zip(a) {
                        for j in 0..32 {
                            isum += i64::from(w.sc[j / 16])
                                * (i64::from(w.qs[j]) - 32)
                                * i64::from(a.qs[j]);
                        }
                    }
                    acc = (isum as f32).mul_add(w[0].d * a[0].d, acc);
                }
                assert_eq!(
                    got[t][r].to_bits(),
                    acc.to_bits(),
                    "{rows} rows: token {t} row {r}"
                );
            }
        }
    }

    /// Q4_K on its own kernel: the VNNI tiles (d and dmin put together from eight tiles' nibbles) give
    /// bit for bit what the plain loop of exact integers gives on the row-major blocks, with the extreme
    /// scales, minimums and values (63, 63, 15) a file may hold against activations at ±127, in batches
    /// and alone.
    #[test]
    fn q4k_tiles_equal_the_plain_integer_loop_bit_for_bit() {
        if !isas().contains(&Isa::Vnni) {
            return;
        }
        let (rows, cols, m) = (24, 1024, 13);
        let mut bytes = random(14, rows * cols / 256, 144, &[0, 2]);
        // row 0's first super-block: every scale and minimum 63, every value 15
        bytes[4..144].fill(0xFF);
        let mut s = 5u32;
        let xs: Vec<f32> = (0..m * cols)
            .map(|i| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                if i < cols {
                    1.0
                } else if i < 2 * cols {
                    if i % 2 == 0 { 1.0 } else { -1.0 }
                } else {
                    (s >> 8) as f32 / (1u32 << 23) as f32 - 1.0
                }
            })
            .collect();
        let x = Tensor::from_vec(xs, (m, cols), &Device::Cpu).expect("x");
        let run = |isa: Isa, x: &Tensor| {
            Q4KMatrix::from_q4k_for(isa, &bytes, rows, cols)
                .and_then(|w| w.forward_with(isa, x))
                .and_then(|y| y.to_vec2::<f32>())
                .expect("forward")
        };
        let want = run(Isa::Scalar, &x);
        let got = run(Isa::Vnni, &x);
        for t in 0..m {
            let alone = run(Isa::Vnni, &x.narrow(0, t, 1).expect("token"));
            for r in 0..rows {
                assert_eq!(
                    got[t][r].to_bits(),
                    want[t][r].to_bits(),
                    "token {t} row {r}: tiles {} vs loop {}",
                    got[t][r],
                    want[t][r]
                );
                assert_eq!(
                    alone[0][r].to_bits(),
                    got[t][r].to_bits(),
                    "token {t} alone"
                );
            }
        }
    }

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
        let candle = QMatMul::from_qtensor(QTensor::new(storage, (rows, cols)).expect("qt"))
            .expect("candle");
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
}
