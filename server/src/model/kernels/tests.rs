use candle_core::{Device, Tensor};

use super::q4_1::{BlockQ4_1, Q4_1};
use super::q8_0::{BlockQ8, Q8_0};
use super::quant::QuantType;
use super::*;

/// Deterministic pseudo-random numbers (xorshift).
pub(super) struct Rng(pub(super) u32);
impl Rng {
    fn next(&mut self) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 17;
        self.0 ^= self.0 << 5;
        self.0
    }
    pub(super) fn unit(&mut self) -> f32 {
        (self.next() % 2000) as f32 / 1000.0 - 1.0
    }
}

/// Every instruction set this CPU can run (the scalar one always).
pub(super) fn isas() -> Vec<Isa> {
    let mut v = vec![Isa::Scalar];
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            v.push(Isa::Avx2);
            if is_x86_feature_detected!("avx512vnni")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("f16c")
            {
                v.push(Isa::Vnni);
                v.push(Isa::Vnni512);
            }
        }
    }
    v
}

fn q4_1_bytes(rng: &mut Rng, blocks: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(blocks * 20);
    for _ in 0..blocks {
        let d = half::f16::from_f32(0.01 + (rng.next() % 100) as f32 * 1e-4);
        let m = half::f16::from_f32(-0.05 + (rng.next() % 100) as f32 * 1e-3);
        bytes.extend_from_slice(&d.to_le_bytes());
        bytes.extend_from_slice(&m.to_le_bytes());
        bytes.extend((0..16).map(|_| rng.next() as u8));
    }
    bytes
}

pub(super) fn q8_0_bytes(rng: &mut Rng, blocks: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(blocks * 34);
    for _ in 0..blocks {
        let d = half::f16::from_f32(0.001 + (rng.next() % 100) as f32 * 1e-4);
        bytes.extend_from_slice(&d.to_le_bytes());
        // symmetric quantization never produces -128
        bytes.extend((0..32).map(|_| ((rng.next() % 255) as i32 - 127) as i8 as u8));
    }
    bytes
}

fn q4_0_bytes(rng: &mut Rng, blocks: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(blocks * 18);
    for _ in 0..blocks {
        let d = half::f16::from_f32(0.01 + (rng.next() % 100) as f32 * 1e-4);
        bytes.extend_from_slice(&d.to_le_bytes());
        bytes.extend((0..16).map(|_| rng.next() as u8));
    }
    bytes
}

fn dequant_q4_0(bytes: &[u8]) -> Vec<f64> {
    bytes
        .chunks_exact(18)
        .flat_map(|b| {
            let d = f64::from(half::f16::from_le_bytes([b[0], b[1]]).to_f32());
            let q = &b[2..18];
            (0..32).map(move |j| {
                let v = if j < 16 { q[j] & 15 } else { q[j - 16] >> 4 };
                d * (f64::from(v) - 8.0)
            })
        })
        .collect()
}

/// Dequantized weights `[rows, cols]` straight from the GGUF block layouts.
fn dequant_q4_1(bytes: &[u8]) -> Vec<f64> {
    bytes
        .chunks_exact(20)
        .flat_map(|b| {
            let d = f64::from(half::f16::from_le_bytes([b[0], b[1]]).to_f32());
            let m = f64::from(half::f16::from_le_bytes([b[2], b[3]]).to_f32());
            let q = &b[4..20];
            (0..32).map(move |j| {
                let v = if j < 16 { q[j] & 15 } else { q[j - 16] >> 4 };
                d * f64::from(v) + m
            })
        })
        .collect()
}

fn dequant_q8_0(bytes: &[u8]) -> Vec<f64> {
    bytes
        .chunks_exact(34)
        .flat_map(|b| {
            let d = f64::from(half::f16::from_le_bytes([b[0], b[1]]).to_f32());
            b[2..]
                .iter()
                .map(move |&q| d * f64::from(q as i8))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn reference(w: &[f64], x: &[f32], rows: usize, cols: usize) -> Vec<f64> {
    let m = x.len() / cols;
    let mut out = vec![0f64; m * rows];
    for t in 0..m {
        for r in 0..rows {
            out[t * rows + r] = (0..cols)
                .map(|c| w[r * cols + c] * f64::from(x[t * cols + c]))
                .sum();
        }
    }
    out
}

/// Each kernel, at every instruction set and for token counts that exercise the 8/4/1 groups and a row
/// count that is not a multiple of the 16-row chunk: within activation-quantization error of exact f64
/// math on the dequantized weights, and the SIMD paths equal to the scalar reference kernel.
#[test]
fn quantized_matmuls_match_dequantized_math_at_every_isa_and_token_count() {
    let mut rng = Rng(12345);
    let (rows, cols) = (37, 6 * 32);
    let q41 = q4_1_bytes(&mut rng, rows * cols / 32);
    let q80 = q8_0_bytes(&mut rng, rows * cols / 32);
    // rows for the VNNI tile layout (a multiple of 8) and not a multiple of the 16-row chunk
    let rows41 = 40;
    let q41t = q4_1_bytes(&mut rng, rows41 * cols / 32);
    let q80t = q8_0_bytes(&mut rng, rows41 * cols / 32);
    let w80t = dequant_q8_0(&q80t);
    let q40t = q4_0_bytes(&mut rng, rows41 * cols / 32);
    let w40t = dequant_q4_0(&q40t);
    let m80 = Q8_0Matrix::from_bytes_for(Isa::Scalar, &q80, rows, cols).expect("q8_0");
    let (w41, w41t, w80) = (dequant_q4_1(&q41), dequant_q4_1(&q41t), dequant_q8_0(&q80));
    for m in [1usize, 3, 4, 5, 8, 13, 16] {
        let xs: Vec<f32> = (0..m * cols).map(|_| rng.unit()).collect();
        let x = Tensor::from_vec(xs.clone(), (m, cols), &Device::Cpu).expect("x");
        for (name, want, got_at) in [
            (
                "Q4_1",
                reference(&w41, &xs, rows, cols),
                Box::new(|isa| {
                    Q4_1Matrix::from_bytes_for(isa, &q41, rows, cols)?.forward_with(isa, &x)
                }) as Box<dyn Fn(Isa) -> _>,
            ),
            (
                "Q4_1 tiles",
                reference(&w41t, &xs, rows41, cols),
                Box::new(|isa| {
                    Q4_1Matrix::from_bytes_for(isa, &q41t, rows41, cols)?.forward_with(isa, &x)
                }),
            ),
            (
                "Q8_0",
                reference(&w80, &xs, rows, cols),
                Box::new(|isa| m80.forward_with(isa, &x)),
            ),
            (
                "Q4_0 (tiles on AVX2 and VNNI)",
                reference(&w40t, &xs, rows41, cols),
                Box::new(|isa| Q4_0Matrix::from_bytes_for(isa, &q40t, rows41, cols)?.forward(&x)),
            ),
            (
                "Q8_0 tiles",
                reference(&w80t, &xs, rows41, cols),
                Box::new(|isa| {
                    Q8_0Matrix::from_bytes_for(isa, &q80t, rows41, cols)?.forward_with(isa, &x)
                }),
            ),
        ] {
            let mut scalar: Option<Vec<f32>> = None;
            for isa in isas() {
                let got = got_at(isa)
                    .expect("forward")
                    .flatten_all()
                    .expect("flat")
                    .to_vec1::<f32>()
                    .expect("vec");
                assert_eq!(got.len(), want.len());
                let scale = want.iter().fold(0f64, |a, v| a.max(v.abs()));
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (f64::from(*g) - w).abs() < 2e-2 * scale,
                        "{name} {isa:?} m={m} output {i}: {g} vs exact {w}"
                    );
                }
                match &scalar {
                    None => scalar = Some(got),
                    Some(s) => {
                        for (i, (a, b)) in got.iter().zip(s).enumerate() {
                            assert!(
                                (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                                "{name} {isa:?} m={m} output {i}: {a} vs scalar {b}"
                            );
                        }
                    }
                }
            }
        }
    }
}

/// The multi-token entry points give each token exactly what the one-token path gives it (batch
/// invariance of the server rests on this).
#[test]
fn token_groups_equal_single_token_dots_bit_for_bit() {
    let mut rng = Rng(777);
    let kb = 18;
    let w41: Vec<BlockQ4_1> = (0..kb)
        .map(|_| {
            let mut qs = [0u8; 16];
            qs.iter_mut().for_each(|q| *q = rng.next() as u8);
            BlockQ4_1 {
                d: 0.01,
                m: -0.02,
                qs,
            }
        })
        .collect();
    let w80: Vec<BlockQ8> = (0..kb)
        .map(|_| {
            let mut qs = [0i8; 32];
            qs.iter_mut().for_each(|q| *q = (rng.next() % 255) as i8);
            BlockQ8 { d: 0.003, qs }
        })
        .collect();
    let acts: Vec<Vec<BlockQ8_1>> = (0..8)
        .map(|_| {
            let xs: Vec<f32> = (0..kb * 32).map(|_| rng.unit()).collect();
            xs.chunks_exact(32).map(quantize_q8_1).collect()
        })
        .collect();
    for isa in isas() {
        let one41: Vec<f32> = acts
            .iter()
            .map(|a| Q4_1::dot::<1>(isa, &w41, [a])[0])
            .collect();
        let one80: Vec<f32> = acts
            .iter()
            .map(|a| Q8_0::dot::<1>(isa, &w80, [a])[0])
            .collect();
        let a8: [&[BlockQ8_1]; 8] = std::array::from_fn(|i| acts[i].as_slice());
        let a4: [&[BlockQ8_1]; 4] = std::array::from_fn(|i| acts[i].as_slice());
        assert_eq!(Q4_1::dot::<8>(isa, &w41, a8).to_vec(), one41, "{isa:?}");
        assert_eq!(
            Q4_1::dot::<4>(isa, &w41, a4).to_vec(),
            one41[..4],
            "{isa:?}"
        );
        assert_eq!(Q8_0::dot::<8>(isa, &w80, a8).to_vec(), one80, "{isa:?}");
        assert_eq!(
            Q8_0::dot::<4>(isa, &w80, a4).to_vec(),
            one80[..4],
            "{isa:?}"
        );
        if isa == Isa::Scalar {
            assert_eq!(Q4_1::dot::<1>(Isa::Scalar, &w41, [&acts[0]])[0], one41[0]);
            assert_eq!(Q8_0::dot::<1>(Isa::Scalar, &w80, [&acts[0]])[0], one80[0]);
        }
    }
}

#[test]
fn vector_helpers_agree_with_plain_loops() {
    let mut rng = Rng(99);
    for n in [1usize, 7, 8, 16, 64, 67] {
        let a: Vec<f32> = (0..n).map(|_| rng.unit()).collect();
        let b: Vec<f32> = (0..n).map(|_| rng.unit()).collect();
        let h: Vec<half::f16> = a.iter().map(|&x| half::f16::from_f32(x)).collect();
        let exact: f64 = a.iter().zip(&b).map(|(x, y)| f64::from(x * y)).sum();
        for ops in [VecOps::detect(), VecOps::portable()] {
            assert!((f64::from((ops.dot)(&a, &b)) - exact).abs() < 1e-5);
            let mut y = b.clone();
            (ops.axpy)(0.5, &a, &mut y);
            for i in 0..n {
                assert!((y[i] - (b[i] + 0.5 * a[i])).abs() < 1e-6);
            }
            // three query heads sharing one f16 key/value row (GQA)
            let q3: Vec<f32> = (0..3 * n).map(|_| rng.unit()).collect();
            let mut dots = [0f32; 3];
            (ops.dots_f16)(&q3, &h, &mut dots);
            let p = [0.25f32, -0.5, 1.0];
            let mut o3 = q3.clone();
            (ops.axpys_f16)(&p, &h, &mut o3);
            for i in 0..3 {
                let qh = &q3[i * n..(i + 1) * n];
                let want: f64 = qh
                    .iter()
                    .zip(&h)
                    .map(|(a, b)| f64::from(a * b.to_f32()))
                    .sum();
                assert!(
                    (f64::from(dots[i]) - want).abs() < 1e-5,
                    "head {i}: {} vs {want}",
                    dots[i]
                );
                for c in 0..n {
                    let want = qh[c] + p[i] * h[c].to_f32();
                    assert!((o3[i * n + c] - want).abs() < 1e-6);
                }
            }
        }
    }
}

/// The fused SwiGLU gives, bit for bit, candle's `silu(gate) * up` on the same rows, for one token and for
/// a prompt split over the pool (chunks that straddle rows), and reads a non-contiguous input too.
#[test]
fn fused_silu_mul_equals_candles_ops_bit_for_bit() {
    let mut rng = Rng(0x5EED);
    for (m, h) in [(1usize, 40usize), (1, 8192), (7, 3000)] {
        let vals: Vec<f32> = (0..m * 2 * h).map(|_| 6.0 * rng.unit()).collect();
        let gate_up = Tensor::from_vec(vals, (m, 2 * h), &Device::Cpu).expect("t");
        let want = (candle_nn::ops::silu(&gate_up.narrow(1, 0, h).expect("gate")).expect("silu")
            * gate_up.narrow(1, h, h).expect("up"))
        .expect("mul");
        let want = want
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .expect("w");
        for input in [
            gate_up.clone(),
            gate_up
                .t()
                .expect("t")
                .contiguous()
                .expect("c")
                .t()
                .expect("t"),
        ] {
            let got = super::silu_mul(&input)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1::<f32>())
                .expect("fused");
            assert!(
                got.iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{m} x {h}"
            );
        }
    }
}

/// A batch of tokens gets, token by token, bit-for-bit what each token gets alone, at every instruction
/// set and layout (13 tokens: groups of 8, 4 and 1).
#[test]
fn batched_matmul_rows_equal_single_token_matmuls_bit_for_bit() {
    let mut rng = Rng(4242);
    // 48 rows: the sixteen-row kernels where AVX-512 VNNI is present
    let (rows, cols, m) = (48, 4 * 32, 13);
    let q41 = q4_1_bytes(&mut rng, rows * cols / 32);
    let q80 = q8_0_bytes(&mut rng, rows * cols / 32);
    let q40 = q4_0_bytes(&mut rng, rows * cols / 32);
    let xs: Vec<f32> = (0..m * cols).map(|_| rng.unit()).collect();
    let x = Tensor::from_vec(xs.clone(), (m, cols), &Device::Cpu).expect("x");
    for isa in isas() {
        let m41 = Q4_1Matrix::from_bytes_for(isa, &q41, rows, cols).expect("q4_1");
        let m80 = Q8_0Matrix::from_bytes_for(isa, &q80, rows, cols).expect("q8_0");
        let m40 = Q4_0Matrix::from_bytes_for(isa, &q40, rows, cols).expect("q4_0");
        let run = |t: &Tensor| -> (Vec<f32>, Vec<f32>, Vec<f32>) {
            let f = |r: candle_core::Result<Tensor>| {
                r.expect("forward")
                    .flatten_all()
                    .expect("flat")
                    .to_vec1::<f32>()
                    .expect("vec")
            };
            (
                f(m41.forward_with(isa, t)),
                f(m80.forward_with(isa, t)),
                f(m40.forward(t)),
            )
        };
        let (all41, all80, all40) = run(&x);
        for t in 0..m {
            let one = Tensor::from_vec(
                xs[t * cols..(t + 1) * cols].to_vec(),
                (1, cols),
                &Device::Cpu,
            )
            .expect("one");
            let (o41, o80, o40) = run(&one);
            assert_eq!(
                o40,
                all40[t * rows..(t + 1) * rows],
                "Q4_0 {isa:?} token {t}"
            );
            assert_eq!(
                o41,
                all41[t * rows..(t + 1) * rows],
                "Q4_1 {isa:?} token {t}"
            );
            assert_eq!(
                o80,
                all80[t * rows..(t + 1) * rows],
                "Q8_0 {isa:?} token {t}"
            );
        }
    }
}

/// The SIMD quantizer equals the portable one bit for bit (ties included) and matches its definition.
#[test]
fn activation_quantizer_rounds_half_to_even_like_llama_cpp_on_every_isa() {
    let mut rng = Rng(31337);
    let mut blocks: Vec<Vec<f32>> = (0..200)
        .map(|_| (0..32).map(|_| rng.unit() * 3.0).collect())
        .collect();
    // exact ties: amax 127 makes id = 1, so x.5 values must round to even
    blocks.push(
        (0..32)
            .map(|i| if i == 0 { 127.0 } else { i as f32 - 15.5 })
            .collect(),
    );
    blocks.push(vec![0.0; 32]);
    for x in &blocks {
        let got = quantize_q8_1(x);
        let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let want: Vec<i8> = x.iter().map(|v| (v * id).round_ties_even() as i8).collect();
        assert_eq!(got.qs.to_vec(), want);
        assert_eq!(got.sum, want.iter().map(|&q| i32::from(q)).sum::<i32>());
        assert_eq!(
            got.half_sums(),
            (
                want[..16].iter().map(|&q| i32::from(q)).sum::<i32>(),
                want[16..].iter().map(|&q| i32::from(q)).sum::<i32>()
            )
        );
        assert_eq!(got.d, half::f16::from_f32(amax / 127.0).to_f32());
    }
    let tie = quantize_q8_1(&blocks[200]);
    assert_eq!(
        &tie.qs[1..5],
        &[-14, -14, -12, -12],
        "-14.5 → -14, -13.5 → -14, -12.5 → -12, -11.5 → -12"
    );
}

/// The many-row attention helpers equal the per-row ones within float reordering, for group sizes that
/// exercise every head split (1..8 heads) and scattered rows.
#[test]
fn many_row_attention_helpers_match_the_per_row_ones() {
    let mut rng = Rng(2024);
    let hd = 64;
    let cache: Vec<half::f16> = (0..40 * hd)
        .map(|_| half::f16::from_f32(rng.unit()))
        .collect();
    let offs: Vec<usize> = (0..23).map(|j| ((j * 17) % 40) * hd).collect();
    for g in 1..=8 {
        let q: Vec<f32> = (0..g * hd).map(|_| rng.unit()).collect();
        let p: Vec<f32> = (0..offs.len() * g).map(|_| rng.unit()).collect();
        for ops in [VecOps::detect(), VecOps::portable()] {
            let mut scores = vec![0f32; offs.len() * g];
            (ops.scores_f16)(&q, &cache, &offs, hd, &mut scores);
            let mut o = vec![0.5f32; g * hd];
            (ops.weighted_rows_f16)(&p, &cache, &offs, hd, &mut o);
            for (j, &off) in offs.iter().enumerate() {
                let row = &cache[off..off + hd];
                for i in 0..g {
                    let want: f32 = q[i * hd..(i + 1) * hd]
                        .iter()
                        .zip(row)
                        .map(|(a, b)| a * b.to_f32())
                        .sum();
                    assert!((scores[j * g + i] - want).abs() < 1e-4, "g={g} j={j} i={i}");
                }
            }
            for i in 0..g {
                for c in 0..hd {
                    let want: f32 = 0.5
                        + offs
                            .iter()
                            .enumerate()
                            .map(|(j, &off)| p[j * g + i] * cache[off + c].to_f32())
                            .sum::<f32>();
                    assert!(
                        (o[i * hd + c] - want).abs() < 1e-4,
                        "g={g} head {i} dim {c}"
                    );
                }
            }
        }
    }
}

/// The Q8_K activation quantizer gives the same blocks at every instruction set: random chunks, an all-zero
/// one, one whose largest magnitude occurs with both signs (the first occurrence sets the sign), one with a
/// NaN, and one of exact halves (round half to even).
#[test]
fn k_quant_activation_quantizer_gives_the_same_blocks_at_every_isa() {
    let mut rng = Rng(4242);
    let mut xs: Vec<f32> = (0..256 * 6).map(|_| rng.unit() * 3.0).collect();
    xs[256..512].fill(0.0);
    xs[512 + 10] = -5.0;
    xs[512 + 200] = 5.0;
    xs[768 + 3] = f32::NAN;
    for (j, v) in xs[1024..1280].iter_mut().enumerate() {
        // the largest magnitude 127 gives the scale −1: every product is an exact half
        *v = if j == 7 {
            127.0
        } else {
            (j % 120) as f32 - 60.5
        };
    }
    let blocks = |isa: Isa| {
        let mut out = Vec::new();
        quantize_row_q8k(&xs, isa, &mut out);
        out
    };
    let want = blocks(Isa::Scalar);
    assert_eq!(want.len(), 6 * 8);
    assert_eq!(want[32].qs[0], 60, "−60.5 · −1 rounds half to even");
    assert_eq!(want[32].qs[1], 60, "−59.5 · −1 rounds half to even");
    for isa in isas() {
        for (i, (g, w)) in blocks(isa).iter().zip(&want).enumerate() {
            assert_eq!(
                (g.d.to_bits(), g.s.to_bits(), g.sum, g.halves, g.qs),
                (w.d.to_bits(), w.s.to_bits(), w.sum, w.halves, w.qs),
                "block {i} at {isa:?}"
            );
        }
    }
}

/// K-quant activations are quantized as llama.cpp's Q8_K: one scale per 256 values (`max / −127`, `max` the
/// value of largest magnitude, so it becomes exactly −127), shared by the eight blocks, every value within
/// half a step, and `s = d · Σ q` kept exact.
#[test]
fn k_quant_activations_share_one_scale_per_256_values_like_q8_k() {
    let mut rng = Rng(777);
    let mut xs: Vec<f32> = (0..512).map(|_| rng.unit()).collect();
    xs[300] = 3.5; // the second chunk's largest magnitude, positive
    xs[17] = -2.0; // the first chunk's, negative
    let x = Tensor::from_vec(xs.clone(), (1, 512), &Device::Cpu).expect("x");
    let (blocks, m) = quantize_rows_with(&x, 512, "test", Acts::Per256).expect("quantize");
    assert_eq!((m, blocks.len()), (1, 16));
    for (c, chunk) in blocks.chunks(8).enumerate() {
        let d = chunk[0].d;
        assert!(chunk.iter().all(|b| b.d == d), "one scale per 256 values");
        let max = if c == 0 { -2.0f32 } else { 3.5 };
        assert_eq!(d, 1.0 / (-127.0 / max), "d = max / -127 unrounded");
        for (i, b) in chunk.iter().enumerate() {
            assert_eq!(b.sum, b.qs.iter().map(|&q| i32::from(q)).sum::<i32>());
            assert_eq!(
                b.half_sums(),
                (
                    b.qs[..16].iter().map(|&q| i32::from(q)).sum::<i32>(),
                    b.qs[16..].iter().map(|&q| i32::from(q)).sum::<i32>()
                )
            );
            assert_eq!(b.s, d * b.sum as f32);
            for (j, &q) in b.qs.iter().enumerate() {
                let v = xs[c * 256 + i * 32 + j];
                assert!(
                    (f32::from(q) * d - v).abs() <= d.abs() * 0.5 + 1e-6,
                    "{v} as {q}"
                );
            }
        }
    }
    // the value of largest magnitude becomes exactly −127 whatever its sign (d carries the sign)
    assert_eq!(blocks[0].qs[17], -127);
    assert_eq!(blocks[9].qs[12], -127);
}
