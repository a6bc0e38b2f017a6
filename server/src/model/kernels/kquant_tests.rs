//! The K-quant and re-laid-out kernels (Q4_K, Q5_0, Q5_1, Q5_K, Q6_K) against candle's dequantization and
//! against plain integer loops, at every ISA present.

use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{Device, Result, Tensor};
use std::borrow::Cow;

use super::q4_1::Q4_1Matrix;
use super::q4k::Q4KMatrix;
use super::q5::{BlockQ5, Q5Matrix};
use super::q5_tiles::{BlockQ5K, Q5_0Matrix, Q5_1Matrix, Q5KMatrix, q5k_blocks as q5k_sub_blocks};
use super::q6k::{Q6Matrix, q6k_blocks};
use super::q8_0::Q8_0Matrix;
use super::relayout::{q4k_blocks, q5k_blocks};
use super::tests::{Rng, isas, q8_0_bytes};
use super::{Acts, Isa, quantize_rows_with};

/// Random bytes with sane f16 scales at `scale_at` (everything else random, as any file may hold).
pub(super) fn random(seed: u64, blocks: usize, size: usize, scale_at: &[usize]) -> Vec<u8> {
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
    let storage = QStorage::from_data(Cow::Borrowed(bytes), &Device::Cpu, dtype).expect("storage");
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
    let got: Vec<f64> = super::q5_tiles::q5_0_blocks(&q50)
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
        .map(<super::q5::Q5 as super::quant::GgufBlocks>::parse)
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
    // Q5_K on file-sized tiles: bit for bit, from either layout
    let q5k16 = random(13, 16 * cols / 256, 176, &[0, 2]);
    let want5k: Vec<f32> = candle_values(&q5k16, GgmlDType::Q5K, rows16, cols)
        .into_iter()
        .map(|v| v as f32)
        .collect();
    for isa in isas() {
        let m = Q5KMatrix::from_q5k_for(isa, &q5k16, rows16, cols).expect("q5_k");
        assert!(m.can_gather());
        assert_eq!(
            m.gather(&ids).expect("gather"),
            want5k,
            "Q5_K values at {isa:?}"
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
    // 48 rows: sixteen-row kernels where AVX-512 VNNI is present
    let (rows, cols) = (48, 512);
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
                "Q5_K (file-sized tiles)",
                &w5k,
                Box::new(|x: &Tensor| {
                    Q5KMatrix::from_q5k_for(isa, &q5k, rows, cols)?.forward_with(isa, x)
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
                    Q5_1Matrix::from_bytes_for(isa, &q51, rows, cols)?.forward_with(isa, x)
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

/// The sixteen-row kernels ([`Isa::Vnni512`]: two row groups' tiles in 512-bit registers) give every
/// tile type the eight-row VNNI kernels' bits, at token counts that take each path (a single token stays on
/// the 8-row kernels; 4 tokens, 13 in groups of 8, 4 and 1, Q5_0/Q5_1/Q5_K unpacked above 8 tokens, Q6_K
/// above 32), with the extreme activations.
#[test]
fn sixteen_row_kernels_equal_the_eight_row_ones_bit_for_bit() {
    use super::q4_0::Q4_0Matrix;
    if !isas().contains(&Isa::Vnni512) {
        eprintln!("no AVX-512 VNNI here: the sixteen-row kernels are not run");
        return;
    }
    let (rows, cols) = (32, 512);
    let q40 = random(21, rows * cols / 32, 18, &[0]);
    let q41 = random(22, rows * cols / 32, 20, &[0, 2]);
    let q80 = random(23, rows * cols / 32, 34, &[0]);
    let q50 = random(24, rows * cols / 32, 22, &[0]);
    let q51 = random(25, rows * cols / 32, 24, &[0, 2]);
    let q4k = random(26, rows * cols / 256, 144, &[0, 2]);
    let q5k = random(27, rows * cols / 256, 176, &[0, 2]);
    let q6k = random(28, rows * cols / 256, 210, &[208]);
    type Run<'a> = Box<dyn Fn(Isa, &Tensor) -> Result<Tensor> + 'a>;
    let v = Isa::Vnni;
    let Q4_0Matrix::Tiles(q40m) = Q4_0Matrix::from_bytes_for(v, &q40, rows, cols).expect("q4_0")
    else {
        panic!("Q4_0 not on tiles")
    };
    let q41m = Q4_1Matrix::from_bytes_for(v, &q41, rows, cols).expect("q4_1");
    let q80m = Q8_0Matrix::from_bytes_for(v, &q80, rows, cols).expect("q8_0");
    let q50m = Q5_0Matrix::from_q5_0_for(v, &q50, rows, cols).expect("q5_0");
    let q51m = Q5_1Matrix::from_bytes_for(v, &q51, rows, cols).expect("q5_1");
    let q4km = Q4KMatrix::from_q4k_for(v, &q4k, rows, cols).expect("q4_k");
    let q5km = Q5KMatrix::from_q5k_for(v, &q5k, rows, cols).expect("q5_k");
    let q6km = Q6Matrix::from_q6k_for(v, &q6k, rows, cols).expect("q6_k");
    let sides: [(&str, Run<'_>); 8] = [
        ("Q4_0", Box::new(|i, x| q40m.forward_with(i, x))),
        ("Q4_1", Box::new(|i, x| q41m.forward_with(i, x))),
        ("Q8_0", Box::new(|i, x| q80m.forward_with(i, x))),
        ("Q5_0", Box::new(|i, x| q50m.forward_with(i, x))),
        ("Q5_1", Box::new(|i, x| q51m.forward_with(i, x))),
        ("Q4_K", Box::new(|i, x| q4km.forward_with(i, x))),
        ("Q5_K", Box::new(|i, x| q5km.forward_with(i, x))),
        ("Q6_K", Box::new(|i, x| q6km.forward_with(i, x))),
    ];
    for m in [1, 4, 13, 40] {
        let x = extreme_acts(31, m, cols);
        for (name, run) in &sides {
            let bits = |isa| {
                run(isa, &x)
                    .and_then(|y| y.flatten_all()?.to_vec1::<f32>())
                    .expect("forward")
                    .iter()
                    .map(|f| f.to_bits())
                    .collect::<Vec<_>>()
            };
            let (narrow, wide) = (bits(Isa::Vnni), bits(Isa::Vnni512));
            assert!(narrow.iter().any(|&b| b != 0), "{name}: all zero");
            assert_eq!(narrow, wide, "{name}, {m} tokens: 16-row kernel differs");
        }
    }
}

/// `[m, cols]` activations for the exact-integer tests: token 0 every value 1.0 and token 1 ±1.0 in turn
/// (each block's activations then quantize to ±127, the largest magnitude), the rest random in −1..1.
fn extreme_acts(seed: u32, m: usize, cols: usize) -> Tensor {
    let mut s = seed;
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
    Tensor::from_vec(xs, (m, cols), &Device::Cpu).expect("x")
}

/// The ISAs present whose kernels run the K-quant and Q5 types on tiles (AVX2 and VNNI).
fn tile_isas() -> Vec<Isa> {
    isas().into_iter().filter(|&i| i != Isa::Scalar).collect()
}

/// Q6_K on the tiles (AVX2 and VNNI) is each super-block's exact integer dot scaled once: bit for bit the
/// plain loop `acc = fma(Σ sc · Σ (q − 32) · a, d · d_a, acc)`, with the extreme scales (−128, 127) and
/// values (0, 63) a file may hold against activations at ±127.
#[test]
fn q6k_tiles_give_exact_integer_dots_scaled_once() {
    for isa in tile_isas() {
        // 13 tokens: tiles unpacked per group of 8; 40: unpacked once for the matmul
        for (rows, m) in [(32, 13), (24, 13), (24, 40)] {
            q6k_tiles_exact(isa, rows, m);
        }
    }
}

fn q6k_tiles_exact(isa: Isa, rows: usize, m: usize) {
    let cols = 1024;
    let mut bytes = random(13, rows * cols / 256, 210, &[208]);
    // the first super-block of row 0: every value 63 (ql, qh all ones) and scale −128; of row 1: every
    // value 0, scale 127
    let sb_row = cols / 256 * 210;
    bytes[..192].fill(0xFF);
    bytes[192..208].fill(0x80);
    bytes[sb_row..sb_row + 192].fill(0);
    bytes[sb_row + 192..sb_row + 208].fill(0x7F);
    let x = extreme_acts(7, m, cols);
    let got = Q6Matrix::from_q6k_for(isa, &bytes, rows, cols)
        .and_then(|w| w.forward_with(isa, &x))
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
                "{isa:?}, {rows} rows, {m} tokens: token {t} row {r}"
            );
        }
    }
}

/// Q4_K on its own kernel: the tiles (AVX2 and VNNI; d and dmin put together from eight tiles' nibbles)
/// give bit for bit what the plain loop of exact integers gives on the row-major blocks, with the extreme
/// scales, minimums and values (63, 63, 15) a file may hold against activations at ±127, in batches
/// and alone.
#[test]
fn q4k_tiles_equal_the_plain_integer_loop_bit_for_bit() {
    for isa in tile_isas() {
        q4k_tiles_exact(isa);
    }
}

fn q4k_tiles_exact(isa: Isa) {
    let (rows, cols, m) = (24, 1024, 13);
    let mut bytes = random(14, rows * cols / 256, 144, &[0, 2]);
    // row 0's first super-block: every scale and minimum 63, every value 15
    bytes[4..144].fill(0xFF);
    let x = extreme_acts(5, m, cols);
    let run = |isa: Isa, x: &Tensor| {
        Q4KMatrix::from_q4k_for(isa, &bytes, rows, cols)
            .and_then(|w| w.forward_with(isa, x))
            .and_then(|y| y.to_vec2::<f32>())
            .expect("forward")
    };
    let want = run(Isa::Scalar, &x);
    let got = run(isa, &x);
    for t in 0..m {
        let alone = run(isa, &x.narrow(0, t, 1).expect("token"));
        for r in 0..rows {
            assert_eq!(
                got[t][r].to_bits(),
                want[t][r].to_bits(),
                "{isa:?}: token {t} row {r}: tiles {} vs loop {}",
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

/// Q5_K on file-sized tiles gives, bit for bit, what a plain loop of exact integers gives on the row-major
/// blocks, for one token and for batches, with the extreme scales and minimums (63) and values (31) a
/// file may hold. The loop is the kernel's formulation at every tile ISA (Q4_K's kernel): the super-block's
/// integers, scaled once each. 24 rows run eight at a time, 32 sixteen at a time with AVX-512 VNNI.
#[test]
fn q5k_file_sized_tiles_equal_the_plain_integer_loop_bit_for_bit() {
    for isa in tile_isas() {
        q5k_tiles_exact(isa);
    }
}

fn q5k_tiles_exact(isa: Isa) {
    for rows in [24, 32] {
        q5k_tiles_exact_rows(isa, rows);
    }
}

fn q5k_tiles_exact_rows(isa: Isa, rows: usize) {
    let cols = 1024;
    let mut bytes = random(16, rows * cols / 256, 176, &[0, 2]);
    // row 0's first super-block: every scale and minimum 63, every value 31
    bytes[4..176].fill(0xFF);
    for m in [1, 4, 8, 13, 16] {
        let x = extreme_acts(21 + m as u32, m, cols);
        let run = |isa: Isa| {
            Q5KMatrix::from_q5k_for(isa, &bytes, rows, cols)
                .and_then(|w| w.forward_with(isa, &x))
                .and_then(|y| y.flatten_all())
                .and_then(|y| y.to_vec1::<f32>())
                .expect("forward")
        };
        let got = run(isa);
        let want: Vec<f32> = {
            let blocks = q5k_sub_blocks(&bytes);
            let (acts, _) = quantize_rows_with(&x, cols, "Q5_K", Acts::Per256).expect("acts");
            let kb = cols / 32;
            (0..m)
                .flat_map(|t| (0..rows).map(move |r| (t, r)))
                .map(|(t, r)| {
                    BlockQ5K::dot_super_blocks(&blocks[r * kb..][..kb], &acts[t * kb..][..kb])
                })
                .collect()
        };
        assert!(
            got.iter()
                .zip(&want)
                .all(|(g, w)| g.to_bits() == w.to_bits()),
            "{isa:?}, {rows} rows, {m} tokens: {:?} vs {:?}",
            &got[..4],
            &want[..4]
        );
    }
}

/// Rows gathered from a Q8_0, Q5_0 or Q5_1 matrix (both layouts each) are, bit for bit, the rows
/// candle's dequantization of the file's blocks gives: a tied head can serve the embedding lookups.
#[test]
fn q8_0_and_q5_rows_gathered_from_either_layout_are_the_files_dequantized_rows() {
    use candle_core::quantized::{GgmlDType, QStorage, QTensor};
    let mut rng = Rng(777);
    let (rows, cols) = (24, 3 * 32);
    let q80 = q8_0_bytes(&mut rng, rows * cols / 32);
    // random weights in −1..1 quantized by candle
    let mut quantized = |dtype| {
        let w: Vec<f32> = (0..rows * cols).map(|_| rng.unit()).collect();
        let w = Tensor::from_vec(w, (rows, cols), &Device::Cpu).expect("w");
        let q = QTensor::quantize(&w, dtype).expect("quantize");
        q.data().expect("bytes").to_vec()
    };
    let q50_bytes = quantized(GgmlDType::Q5_0);
    let q51_bytes = quantized(GgmlDType::Q5_1);
    let dequant = |bytes: &[u8], dtype| -> Vec<f32> {
        let storage = QStorage::from_data(std::borrow::Cow::Borrowed(bytes), &Device::Cpu, dtype)
            .expect("storage");
        QTensor::new(storage, (rows, cols))
            .and_then(|q| q.dequantize(&Device::Cpu))
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .expect("dequantize")
    };
    let ids = [5u32, 0, 23, 5, 16];
    for (name, bytes, dtype) in [
        ("Q8_0", &q80, GgmlDType::Q8_0),
        ("Q5_0", &q50_bytes, GgmlDType::Q5_0),
        ("Q5_1", &q51_bytes, GgmlDType::Q5_1),
    ] {
        let want = dequant(bytes, dtype);
        for isa in isas() {
            let gather = |ids: &[u32]| {
                if dtype == GgmlDType::Q8_0 {
                    let m = Q8_0Matrix::from_bytes_for(isa, bytes, rows, cols).expect("matrix");
                    assert!(m.can_gather());
                    m.gather(ids)
                } else if dtype == GgmlDType::Q5_0 {
                    let m = Q5_0Matrix::from_q5_0_for(isa, bytes, rows, cols).expect("matrix");
                    assert!(m.can_gather());
                    m.gather(ids)
                } else {
                    let m = Q5_1Matrix::from_bytes_for(isa, bytes, rows, cols).expect("matrix");
                    assert!(m.can_gather());
                    m.gather(ids)
                }
            };
            let got = gather(&ids).expect("gather");
            for (j, &id) in ids.iter().enumerate() {
                let row = &want[id as usize * cols..(id as usize + 1) * cols];
                let g = &got[j * cols..(j + 1) * cols];
                assert!(
                    g.iter().zip(row).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{name} {isa:?} row {id}"
                );
            }
            let e = gather(&[rows as u32]).expect_err("outside");
            assert!(e.to_string().contains("outside the vocabulary"), "{e}");
        }
    }
}
