//! GPTQ on one synthetic layer against round-to-nearest: the output error on held-out
//! inputs, `‖W Xᵀ − Q Xᵀ‖`, must be clearly lower than RTN's in the same scheme.
//!
//! Inputs are correlated (`X = Z·A` with a random mixing `A`), channels have unequal
//! magnitudes and a few are outliers, as in an LLM's activations; the Hessian comes from
//! a calibration set, the error from a separate held-out set drawn the same way.

use faer::{Mat, MatRef};
use quantize::calib::hessian::HessianAccumulator;
use quantize::format::{Granularity, IntParams, QuantScheme};
use quantize::model::linear::matmul_xwt;
use quantize::quant::gptq::{gptq_quantize, GptqOptions};
use quantize::quant::linalg::cholesky_inverse_upper;
use quantize::quant::rtn::{group_params, quantize_rtn};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const ROWS: usize = 256;
const COLS: usize = 512;
const CALIB_TOKENS: usize = 2048;
const HELDOUT_TOKENS: usize = 1024;
/// Latent factor `k` of the inputs has standard deviation `1 / (1 + DECAY·k)`: a
/// spectrum falling 27x over the width, so the inputs have a low effective rank, as
/// LLM activations do (white inputs would leave GPTQ nothing to exploit).
const SPECTRUM_DECAY: f32 = 0.05;

/// GPTQ's error as a fraction of RTN's that every configuration must beat. On this
/// layer GPTQ measures 0.24-0.35x; on the real model here the reference GPTQ measured
/// 0.28x (q_proj) to 0.72x (down_proj) of RTN's held-out error (REFERENCE.md). 0.5 is a
/// clear margin that a broken error propagation (ratio near 1) cannot meet.
const MAX_RATIO: f64 = 0.5;

fn gauss(rng: &mut ChaCha8Rng) -> f32 {
    // Box-Muller
    let u1: f32 = rng.random_range(f32::EPSILON..1.0);
    let u2: f32 = rng.random_range(0.0..1.0);
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

struct Inputs {
    mix: Vec<f32>,     // [COLS, COLS] row-major: x = z · mix
    channel: Vec<f32>, // per-channel magnitude
}

impl Inputs {
    fn new(rng: &mut ChaCha8Rng) -> Self {
        let k = 1.0 / (COLS as f32).sqrt();
        let mut mix: Vec<f32> = (0..COLS * COLS).map(|_| gauss(rng) * k).collect();
        for i in 0..COLS {
            mix[i * COLS + i] += 1.0;
        }
        let mut channel: Vec<f32> = (0..COLS).map(|_| (0.5 * gauss(rng)).exp()).collect();
        for c in [3, 100, 257, 411] {
            channel[c] *= 20.0; // outlier channels
        }
        Self { mix, channel }
    }

    /// `[tokens, COLS]` row-major.
    fn sample(&self, rng: &mut ChaCha8Rng, tokens: usize) -> Vec<f32> {
        let z: Vec<f32> = (0..tokens * COLS).map(|k| gauss(rng) / (1.0 + SPECTRUM_DECAY * (k % COLS) as f32)).collect();
        let mut x = vec![0.0f32; tokens * COLS];
        // x = z · mix = z · (mixᵀ)ᵀ: matmul_xwt takes the right factor as [n, k].
        let mix_t: Vec<f32> = (0..COLS * COLS).map(|k| self.mix[(k % COLS) * COLS + k / COLS]).collect();
        matmul_xwt(&z, tokens, &mix_t, COLS, COLS, &mut x);
        for row in x.chunks_exact_mut(COLS) {
            row.iter_mut().zip(&self.channel).for_each(|(v, s)| *v *= s);
        }
        x
    }
}

struct Layer {
    w: Vec<f32>,
    h: Vec<f32>,
    heldout: Vec<f32>,
}

fn layer(seed: u64) -> Layer {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let inputs = Inputs::new(&mut rng);
    let mut w: Vec<f32> = (0..ROWS * COLS).map(|_| 0.02 * gauss(&mut rng)).collect();
    for _ in 0..20 {
        let k = rng.random_range(0..ROWS * COLS);
        w[k] *= 8.0; // outlier weights
    }
    let mut acc = HessianAccumulator::new(COLS);
    for _ in 0..CALIB_TOKENS / 512 {
        acc.add_batch(&inputs.sample(&mut rng, 512), 512);
    }
    let heldout = inputs.sample(&mut rng, HELDOUT_TOKENS);
    Layer { w, h: acc.hessian(), heldout }
}

/// `‖(W − Q) Xᵀ‖_F` over the held-out inputs.
fn output_error(l: &Layer, q: &[f32]) -> f64 {
    let d: Vec<f32> = l.w.iter().zip(q).map(|(a, b)| a - b).collect();
    let mut y = vec![0.0f32; HELDOUT_TOKENS * ROWS];
    matmul_xwt(&l.heldout, HELDOUT_TOKENS, &d, ROWS, COLS, &mut y);
    y.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt()
}

fn ratio(l: &Layer, scheme: QuantScheme, opts: GptqOptions) -> f64 {
    let g = gptq_quantize("layer", &l.w, ROWS, COLS, &l.h, scheme, &opts).unwrap();
    let r = quantize_rtn("layer", &l.w, ROWS, COLS, scheme, None).unwrap();
    let (eg, er) = (output_error(l, &g.tensor.dequantize()), output_error(l, &r.dequantize()));
    eprintln!("{scheme} {opts:?}: GPTQ {eg:.4} RTN {er:.4} ratio {:.3} ({:.2}s)", eg / er, g.seconds);
    eg / er
}

fn asym(bits: u8) -> QuantScheme {
    QuantScheme::int(bits).unwrap().asymmetric().unwrap()
}

#[test]
fn gptq_beats_rtn_on_held_out_inputs() {
    let l = layer(11);
    let base = GptqOptions::default();
    let cases = [
        ("int4 g128", asym(4).group(128).unwrap(), base),
        ("int4 g128 act-order", asym(4).group(128).unwrap(), GptqOptions { act_order: true, ..base }),
        (
            "int4 g128 act-order static",
            asym(4).group(128).unwrap(),
            GptqOptions { act_order: true, static_groups: true, ..base },
        ),
        ("int4 g128 mse", asym(4).group(128).unwrap(), GptqOptions { mse: true, ..base }),
        ("int4 g100 act-order", asym(4).group(100).unwrap(), GptqOptions { act_order: true, ..base }),
        ("int4 per-channel", asym(4), base),
        ("int4 per-channel act-order", asym(4), GptqOptions { act_order: true, ..base }),
        ("int3 g128 sym", QuantScheme::int(3).unwrap().group(128).unwrap(), base),
    ];
    let mut failures = Vec::new();
    let mut ratios = Vec::new();
    for (what, scheme, opts) in cases {
        let r = ratio(&l, scheme, opts);
        if r.is_nan() || r >= MAX_RATIO {
            failures.push(format!("{what}: GPTQ/RTN = {r:.3}"));
        }
        ratios.push(r);
    }
    assert!(failures.is_empty(), "GPTQ not clearly better than RTN: {failures:?}");
    // With outlier channels, visiting the columns by descending H[i,i] helps.
    assert!(ratios[1] < ratios[0], "act-order {:.3} vs plain {:.3}", ratios[1], ratios[0]);
    assert!(ratios[6] < ratios[5], "act-order {:.3} vs plain {:.3} per channel", ratios[6], ratios[5]);
}

/// The least-squares scale refit after the sweep lowers the held-out output error too
/// (the calibration error it minimizes can only fall), in every grouping.
#[test]
fn scale_refit_lowers_held_out_error() {
    let l = layer(12);
    let base = GptqOptions::default();
    for (scheme, opts) in [
        (asym(4).group(128).unwrap(), base),
        (asym(4).group(128).unwrap(), GptqOptions { act_order: true, ..base }),
        (asym(4), base),
        (
            QuantScheme::int(3).unwrap().group(128).unwrap(),
            GptqOptions { act_order: true, static_groups: true, ..base },
        ),
    ] {
        let plain = gptq_quantize("layer", &l.w, ROWS, COLS, &l.h, scheme, &opts).unwrap();
        let refit = gptq_quantize("layer", &l.w, ROWS, COLS, &l.h, scheme, &GptqOptions { refit_scales: true, ..opts })
            .unwrap();
        assert_eq!(plain.tensor.codes, refit.tensor.codes, "{scheme}: the refit keeps the codes");
        let stats = refit.refit.expect("refit ran");
        assert!(stats.error_after < stats.error_before, "{scheme}: {stats:?}");
        let (ep, er) = (output_error(&l, &plain.tensor.dequantize()), output_error(&l, &refit.tensor.dequantize()));
        eprintln!("{scheme} {opts:?}: held-out error {ep:.4} -> {er:.4} with the refit; {stats:?}");
        assert!(er < ep, "{scheme}: held-out error {ep} -> {er} with the refit");
    }
}

/// FP8 weights through the same sweep: the error feedback works on any grid
/// (measured 0.27-0.36x RTN's error here).
#[test]
fn gptq_fp8_beats_rtn_fp8_on_held_out_inputs() {
    let l = layer(12);
    let base = GptqOptions::default();
    for (scheme, opts) in [
        (QuantScheme::fp8_e4m3(), base),
        (QuantScheme::fp8_e4m3(), GptqOptions { act_order: true, ..base }),
        (QuantScheme::fp8_e5m2(), base),
        (QuantScheme::fp8_e4m3().per_tensor(), base),
    ] {
        let r = ratio(&l, scheme, opts);
        assert!(r < MAX_RATIO, "{scheme} {opts:?}: GPTQ/RTN = {r:.3}");
    }
}

/// A line-by-line translation of `gptq.py`'s `fasterquant` in f64 (plain loops, no
/// chunking, no transposition), sharing only `cholesky_inverse_upper` and the group
/// parameter search. Returns codes `[rows, cols]` in the original column order and the
/// loss.
#[allow(clippy::needless_range_loop)] // index loops mirror the Python
fn reference_fasterquant(
    w: &[f32],
    rows: usize,
    cols: usize,
    h: &[f32],
    scheme: QuantScheme,
    bs: usize,
    act_order: bool,
) -> (Vec<u8>, f64) {
    let gs = match scheme.granularity {
        Granularity::Group(n) => Some(n),
        _ => None,
    };
    let dead: Vec<bool> = (0..cols).map(|i| h[i * cols + i] == 0.0).collect();
    let mut wm: Vec<Vec<f64>> =
        (0..rows).map(|r| (0..cols).map(|c| if dead[c] { 0.0 } else { w[r * cols + c] as f64 }).collect()).collect();
    let as_f32 = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
    let mut params: Vec<IntParams> = wm.iter().map(|row| group_params(&as_f32(row), scheme, None)).collect();
    let diag: Vec<f32> = (0..cols).map(|i| if dead[i] { 1.0 } else { h[i * cols + i] }).collect();
    let mut perm: Vec<usize> = (0..cols).collect();
    if act_order {
        perm.sort_by(|&a, &b| diag[b].total_cmp(&diag[a]));
    }
    wm = wm.iter().map(|row| perm.iter().map(|&c| row[c]).collect()).collect();
    let hp = Mat::<f32>::from_fn(cols, cols, |a, b| if a == b { diag[perm[a]] } else { h[perm[a] * cols + perm[b]] });
    let mean = diag.iter().map(|&d| d as f64).sum::<f64>() / cols as f64;
    let hinv = cholesky_inverse_upper(hp.as_ref(), 0.01 * mean).unwrap();
    let u = |i: usize, j: usize| hinv[(i, j)] as f64;
    let maxq = scheme.maxq();
    let mut codes = vec![0u8; rows * cols];
    let mut loss = 0.0;
    for i1 in (0..cols).step_by(bs) {
        let i2 = (i1 + bs).min(cols);
        let mut w1: Vec<Vec<f64>> = wm.iter().map(|row| row[i1..i2].to_vec()).collect();
        let mut err1 = vec![vec![0.0f64; i2 - i1]; rows];
        for i in 0..i2 - i1 {
            if let Some(gs) = gs {
                if (i1 + i) % gs == 0 {
                    let end = (i1 + i + gs).min(cols);
                    params = wm.iter().map(|row| group_params(&as_f32(&row[i1 + i..end]), scheme, None)).collect();
                }
            }
            let d = u(i1 + i, i1 + i);
            for r in 0..rows {
                let x = w1[r][i];
                let code = params[r].quantize(x as f32, maxq);
                codes[r * cols + perm[i1 + i]] = code;
                let e = (x - params[r].dequantize(code) as f64) / d;
                loss += e * e / 2.0;
                for j in i..i2 - i1 {
                    w1[r][j] -= e * u(i1 + i, i1 + j);
                }
                err1[r][i] = e;
            }
        }
        for r in 0..rows {
            for j in i2..cols {
                wm[r][j] -= (0..i2 - i1).map(|i| err1[r][i] * u(i1 + i, j)).sum::<f64>();
            }
        }
    }
    (codes, loss)
}

/// Codes the fast path may round differently from the f64 translation: a value within
/// f32 rounding of a decision boundary (about 1e-6 of a step) is rare, and a flip
/// perturbs only the columns after it.
const MAX_CODE_MISMATCH: f64 = 0.01;
/// Loss of the fast path against the f64 translation, relative.
const LOSS_REL_TOL: f64 = 1e-4;

#[test]
fn fast_path_matches_line_by_line_translation_of_fasterquant() {
    let (rows, cols, tokens) = (48, 96, 400);
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    let w: Vec<f32> = (0..rows * cols).map(|_| gauss(&mut rng)).collect();
    let mut x: Vec<f32> = (0..tokens * cols).map(|_| gauss(&mut rng)).collect();
    for t in 0..tokens {
        let common = x[t * cols];
        for c in 0..cols {
            x[t * cols + c] = (x[t * cols + c] + common) * (1.0 + (c % 7) as f32);
        }
        x[t * cols + 13] = 0.0; // dead input channel
    }
    let mut acc = HessianAccumulator::new(cols);
    acc.add_batch(&x, tokens);
    let h = acc.hessian();
    for scheme in [asym(4).group(24).unwrap(), asym(4), QuantScheme::int(3).unwrap().group(32).unwrap()] {
        for act_order in [false, true] {
            let opts = GptqOptions { block_size: 32, act_order, ..Default::default() };
            let fast = gptq_quantize("t", &w, rows, cols, &h, scheme, &opts).unwrap();
            let (codes, loss) = reference_fasterquant(&w, rows, cols, &h, scheme, 32, act_order);
            let mismatch = codes.iter().zip(&fast.tensor.codes).filter(|(a, b)| a != b).count();
            let what = format!("{scheme} act_order={act_order}");
            assert!((mismatch as f64) <= MAX_CODE_MISMATCH * codes.len() as f64, "{what}: {mismatch} codes differ");
            assert!((fast.loss - loss).abs() <= LOSS_REL_TOL * loss, "{what}: loss {} vs {loss}", fast.loss);
        }
    }
}

// Edge cases on small layers.

/// A layer `[rows, cols]` and the Hessian of `tokens` correlated inputs with an
/// outlier channel and, if `dead`, an input channel that is always zero.
fn small_layer(seed: u64, rows: usize, cols: usize, tokens: usize, dead: Option<usize>) -> (Vec<f32>, Vec<f32>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let w: Vec<f32> = (0..rows * cols).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let mut x: Vec<f32> = (0..tokens * cols).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    for t in 0..tokens {
        let base = x[t * cols];
        for c in 0..cols {
            x[t * cols + c] += 0.5 * base; // correlation
        }
        x[t * cols + 1] *= 10.0; // outlier channel
        if let Some(d) = dead {
            x[t * cols + d] = 0.0;
        }
    }
    let mut acc = HessianAccumulator::new(cols);
    acc.add_batch(&x, tokens);
    (w, acc.hessian())
}

#[test]
fn non_finite_inputs_are_refused_with_position() {
    let (rows, cols) = (8, 16);
    let (mut w, mut h) = small_layer(4, rows, cols, 64, None);
    h[3 * cols + 2] = f32::NAN;
    let e = gptq_quantize("blk.0.q", &w, rows, cols, &h, asym(4), &GptqOptions::default()).unwrap_err().to_string();
    assert!(e.contains("blk.0.q") && e.contains("Hessian") && e.contains("NaN") && e.contains("[3, 2]"), "{e}");
    h[3 * cols + 2] = 0.0;
    w[17] = f32::INFINITY;
    let e = gptq_quantize("blk.0.q", &w, rows, cols, &h, asym(4), &GptqOptions::default()).unwrap_err().to_string();
    assert!(e.contains("weight") && e.contains("inf") && e.contains("[1, 1]"), "{e}");
    let e = gptq_quantize("x", &w[..8], rows, cols, &h, asym(4), &GptqOptions::default()).unwrap_err().to_string();
    assert!(e.contains("expected [8, 16]"), "{e}");
    assert!(gptq_quantize("x", &w, rows, cols, &h, QuantScheme::fp8_e4m3(), &GptqOptions::default()).is_err());
}

#[test]
fn all_zero_weight_gives_zero_output() {
    let (rows, cols) = (10, 48);
    let (_, h) = small_layer(5, rows, cols, 100, Some(0));
    let w = vec![0.0f32; rows * cols];
    for scheme in [asym(4).group(16).unwrap(), QuantScheme::int(4).unwrap()] {
        let opts = GptqOptions { act_order: true, ..Default::default() };
        let r = gptq_quantize("z", &w, rows, cols, &h, scheme, &opts).unwrap();
        assert!(r.tensor.dequantize().iter().all(|&v| v == 0.0));
        assert!(r.tensor.scales.iter().all(|s| s.is_finite() && *s > 0.0));
        assert_eq!(r.loss, 0.0);
    }
}

#[test]
fn indefinite_hessian_is_damped_until_it_factors() {
    let (rows, cols) = (16, 64);
    // Rank-deficient: 20 tokens for 64 columns, no damping.
    let (w, h) = small_layer(6, rows, cols, 20, None);
    let opts = GptqOptions { damp: 0.0, ..Default::default() };
    let r = gptq_quantize("rank", &w, rows, cols, &h, asym(4), &opts).unwrap();
    assert!(r.damp_retries > 0 && r.damp_used > 0.0, "retries {} damp {}", r.damp_retries, r.damp_used);
    // Smallest eigenvalue moved to -0.05·mean(diag): the default damping 0.01 fails.
    let (w, mut h) = small_layer(7, rows, cols, 500, None);
    let m = MatRef::from_column_major_slice(&h, cols, cols);
    let lmin = m.self_adjoint_eigenvalues(faer::Side::Lower).unwrap()[0];
    let mean = (0..cols).map(|i| h[i * cols + i]).sum::<f32>() / cols as f32;
    (0..cols).for_each(|i| h[i * cols + i] -= lmin + 0.05 * mean);
    let r = gptq_quantize("neg", &w, rows, cols, &h, asym(4), &GptqOptions::default()).unwrap();
    assert!(r.damp_retries > 0 && r.damp_used > 0.05, "retries {} damp {}", r.damp_retries, r.damp_used);
    assert!(r.tensor.dequantize().iter().all(|v| v.is_finite()));
    // Hopeless: a negative diagonal is refused outright.
    h[0] = -1.0;
    let e = gptq_quantize("neg", &w, rows, cols, &h, asym(4), &GptqOptions::default()).unwrap_err().to_string();
    assert!(e.contains("negative at column 0"), "{e}");
}

#[test]
fn same_bits_with_one_and_two_threads() {
    let (rows, cols) = (200, 160); // four row chunks, a partial last block
    let (w, h) = small_layer(8, rows, cols, 400, Some(9));
    let opts = GptqOptions { act_order: true, block_size: 64, ..Default::default() };
    let run = |n: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(n).build().unwrap();
        pool.install(|| gptq_quantize("d", &w, rows, cols, &h, asym(4).group(32).unwrap(), &opts).unwrap())
    };
    let (a, b) = (run(1), run(2));
    assert_eq!(a.tensor, b.tensor);
    assert_eq!(a.loss.to_bits(), b.loss.to_bits());
}

#[test]
fn empty_layers_are_fine() {
    for (rows, cols) in [(0, 16), (4, 0), (0, 0)] {
        let h = vec![0.0f32; cols * cols];
        for scheme in [asym(4).group(8).unwrap(), asym(4)] {
            let opts = GptqOptions { act_order: true, ..Default::default() };
            let r = gptq_quantize("e", &vec![0.0; rows * cols], rows, cols, &h, scheme, &opts).unwrap();
            assert_eq!(r.tensor.codes.len(), rows * cols);
            assert_eq!(r.tensor.dequantize().len(), rows * cols);
        }
    }
}
