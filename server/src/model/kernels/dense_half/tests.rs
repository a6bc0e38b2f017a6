use super::*;
use candle_core::Device;

/// Deterministic values in [-1, 1) (xorshift).
fn values(seed: u32, n: usize) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s % 2000) as f32 / 1000.0 - 1.0
        })
        .collect()
}

fn encode(kind: HalfType, w: &[f32]) -> Vec<u8> {
    w.iter()
        .flat_map(|&v| match kind {
            HalfType::F16 => half::f16::from_f32(v).to_le_bytes(),
            HalfType::Bf16 => half::bf16::from_f32(v).to_le_bytes(),
        })
        .collect()
}

fn run(mat: &HalfMatrix, isa: HalfIsa, x: &[f32], m: usize) -> Vec<f32> {
    let x = Tensor::from_vec(x.to_vec(), (m, mat.cols), &Device::Cpu).expect("x");
    mat.forward_with(isa, &x)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .expect("forward")
}

/// Every group shape (64, 32 and 16 rows, and rows padded up to 16), token counts that exercise every
/// tile width, matrices one and several column blocks wide, both formats, at every instruction set: within
/// f32 rounding of exact f64 math on the stored weights (within bf16 rounding of the activations on the
/// `vdpbf16ps` path), and the weights held at two bytes each.
#[test]
fn half_matmuls_match_f64_math_on_the_stored_weights_at_every_isa() {
    let few: &[usize] = &[1, 7, 13];
    let many: &[usize] = &[1, 2, 3, 5, 8, 13, 345];
    for (rows, cols, kind, ms) in [
        (48, 96, HalfType::F16, many),
        (40, 96, HalfType::Bf16, many),
        (37, 96, HalfType::F16, many),
        (48, 96, HalfType::Bf16, many),
        (1024, 2080, HalfType::F16, few),
        (1024, 2080, HalfType::Bf16, few),
        (512, 2144, HalfType::Bf16, few),
        (512, 2144, HalfType::F16, few),
    ] {
        let bytes = encode(kind, &values(rows as u32, rows * cols));
        let mat = HalfMatrix::from_bytes(kind, &bytes, rows, cols).expect("matrix");
        assert_eq!(
            mat.bytes(),
            rows.next_multiple_of(16) * cols * 2,
            "held in half precision (rows padded to a multiple of 16)"
        );
        let stored: Vec<f64> = bytes
            .chunks_exact(2)
            .map(|b| f64::from(kind.widen(u16::from_le_bytes([b[0], b[1]]))))
            .collect();
        for &m in ms {
            let x = values(7 + m as u32, m * cols);
            for isa in HalfIsa::available() {
                let got = run(&mat, isa, &x, m);
                let lossy = isa == HalfIsa::Avx512Bf16 && kind == HalfType::Bf16;
                for t in 0..m {
                    for r in 0..rows {
                        let terms =
                            (0..cols).map(|c| stored[r * cols + c] * f64::from(x[t * cols + c]));
                        let exact: f64 = terms.clone().sum();
                        let mass: f64 = terms.map(f64::abs).sum();
                        let bound = if lossy { mass / 128.0 } else { mass * 1e-6 };
                        let g = f64::from(got[t * rows + r]);
                        assert!(
                            (g - exact).abs() <= bound,
                            "{kind:?} {rows}x{cols} {isa:?} m={m} token {t} row {r}: {g} vs exact {exact}"
                        );
                    }
                }
            }
        }
    }
}

/// A token gets, bit for bit, in a batch of 13 (tiles of 4/2/1) what it gets alone, at every instruction
/// set, for both formats and every row-group shape.
#[test]
fn a_token_gets_the_same_bits_alone_or_in_a_batch() {
    let m = 13;
    for (rows, cols, kind) in [
        (32, 64, HalfType::F16),
        (12, 64, HalfType::Bf16),
        (7, 64, HalfType::Bf16),
        (7, 64, HalfType::F16),
        (1024, 2080, HalfType::F16),
        (1024, 2080, HalfType::Bf16),
        (512, 2144, HalfType::Bf16),
    ] {
        let mat = HalfMatrix::from_bytes(kind, &encode(kind, &values(3, rows * cols)), rows, cols)
            .expect("matrix");
        let x = values(11, m * cols);
        for isa in HalfIsa::available() {
            let all = run(&mat, isa, &x, m);
            for t in 0..m {
                let one = run(&mat, isa, &x[t * cols..(t + 1) * cols], 1);
                assert_eq!(
                    one,
                    all[t * rows..(t + 1) * rows],
                    "{kind:?} {rows} rows {isa:?} token {t}"
                );
            }
        }
    }
}

/// Gathered rows are the stored values of those rows, widened (every group shape, both formats).
#[test]
fn gathered_rows_are_the_stored_rows() {
    let cols = 64;
    for (rows, kind) in [
        (8, HalfType::F16),
        (7, HalfType::Bf16),
        (1024, HalfType::F16),
        (1024, HalfType::Bf16),
        (512, HalfType::Bf16),
    ] {
        let vals = values(5, rows * cols);
        let mat = HalfMatrix::from_bytes(kind, &encode(kind, &vals), rows, cols).expect("matrix");
        let ids = [3u32, 0, (rows - 1) as u32, 3, (rows / 2 + 1) as u32];
        let got = mat.gather(&ids).expect("gather");
        for (j, &id) in ids.iter().enumerate() {
            let want: Vec<f32> = vals[id as usize * cols..][..cols]
                .iter()
                .map(|&v| match kind {
                    HalfType::F16 => half::f16::from_f32(v).to_f32(),
                    HalfType::Bf16 => half::bf16::from_f32(v).to_f32(),
                })
                .collect();
            assert_eq!(
                got[j * cols..(j + 1) * cols],
                want[..],
                "{kind:?} {rows} rows, id {id}"
            );
        }
        let e = mat.gather(&[rows as u32]).expect_err("outside");
        assert!(e.to_string().contains("outside the vocabulary"), "{e}");
    }
}

#[test]
fn bf16_rounding_is_nearest_even_like_the_instruction() {
    let cases = [
        (1.0f32, 0x3F80u16),
        (f32::from_bits(0x3F80_8000), 0x3F80), // halfway, even stays
        (f32::from_bits(0x3F81_8000), 0x3F82), // halfway, odd rounds up
        (f32::from_bits(0x3F80_8001), 0x3F81),
        (-2.5, 0xC020),
        (f32::INFINITY, 0x7F80),
    ];
    for (v, want) in cases {
        assert_eq!(round_to_bf16(&[v]), vec![want], "{v:e}");
        assert_eq!(
            half::bf16::from_f32(v).to_bits(),
            want,
            "half agrees for {v:e}"
        );
    }
    assert!(f32::from_bits(u32::from(round_to_bf16(&[f32::NAN])[0]) << 16).is_nan());
}

#[test]
fn bad_shapes_are_refused() {
    let e = HalfMatrix::from_bytes(HalfType::F16, &[0; 2 * 4 * 48], 4, 48).expect_err("48 columns");
    assert!(e.to_string().contains("48 columns"), "{e}");
    let e = HalfMatrix::from_bytes(HalfType::Bf16, &[0; 10], 4, 32).expect_err("short");
    assert!(e.to_string().contains("needs 256 bytes, got 10"), "{e}");
    let mat = HalfMatrix::from_bytes(HalfType::F16, &[0; 2 * 4 * 32], 4, 32).expect("ok");
    let x = Tensor::zeros((1, 64), candle_core::DType::F32, &Device::Cpu).expect("x");
    assert!(
        mat.forward(&x).is_err(),
        "64 features into a 32-column matrix"
    );
}

#[test]
#[ignore]
fn speed() {
    let (rows, cols) = (
        std::env::var("ROWS").map_or(2048, |v| v.parse().unwrap()),
        std::env::var("COLS").map_or(2048, |v| v.parse().unwrap()),
    );
    let bytes: Vec<u8> = (0..rows * cols)
        .flat_map(|i| half::f16::from_f32(((i * 37 % 101) as f32 - 50.0) / 640.0).to_le_bytes())
        .collect();
    let mat = HalfMatrix::from_bytes(HalfType::F16, &bytes, rows, cols).unwrap();
    for m in std::env::var("MS").map_or(vec![1usize, 4, 16, 128], |v| {
        v.split(',').map(|x| x.parse().unwrap()).collect()
    }) {
        let x = Tensor::from_vec(
            (0..m * cols)
                .map(|i| (i as f32 * 0.01).sin())
                .collect::<Vec<_>>(),
            (m, cols),
            &Device::Cpu,
        )
        .unwrap();
        for isa in HalfIsa::available() {
            let _ = mat.forward_with(isa, &x).unwrap();
            let n = if m == 1 { 50 } else { 5 };
            let t0 = std::time::Instant::now();
            for _ in 0..n {
                let _ = mat.forward_with(isa, &x).unwrap();
            }
            let s = t0.elapsed().as_secs_f64() / n as f64;
            println!(
                "m={m} {isa:?}: {:.2} ms, {:.1} GFLOP/s, {:.1} GB/s weights",
                s * 1e3,
                2.0 * (rows * cols * m) as f64 / s / 1e9,
                (rows * cols * 2) as f64 / s / 1e9
            );
        }
    }
}
