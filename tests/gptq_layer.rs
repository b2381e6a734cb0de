//! GPTQ on one synthetic layer against round-to-nearest: the output error on held-out
//! inputs, `‖W Xᵀ − Q Xᵀ‖`, must be clearly lower than RTN's in the same scheme.
//!
//! Inputs are correlated (`X = Z·A` with a random mixing `A`), channels have unequal
//! magnitudes and a few are outliers, as in an LLM's activations; the Hessian comes from
//! a calibration set, the error from a separate held-out set drawn the same way.

use quantize::format::QuantScheme;
use quantize::model::linear::matmul_xwt;
use quantize::quant::gptq::{gptq_quantize, GptqOptions};
use quantize::quant::linalg::HessianAccumulator;
use quantize::quant::rtn::quantize_rtn;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const ROWS: usize = 256;
const COLS: usize = 512;
const CALIB_TOKENS: usize = 2048;
const HELDOUT_TOKENS: usize = 1024;

/// GPTQ's error as a fraction of RTN's that every configuration must beat. The paper's
/// single-layer gains are 2-4x; on the real model here the reference GPTQ measured
/// 0.28x (q_proj) to 0.72x (down_proj) of RTN's held-out error (REFERENCE.md), so 0.8
/// is a clear margin that a broken error propagation (ratio ≈ 1 or above) cannot meet.
const MAX_RATIO: f64 = 0.8;

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
        let z: Vec<f32> = (0..tokens * COLS).map(|_| gauss(rng)).collect();
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
        ("int4 g128 act-order static", asym(4).group(128).unwrap(), GptqOptions { act_order: true, static_groups: true, ..base }),
        ("int4 g128 mse", asym(4).group(128).unwrap(), GptqOptions { mse: true, ..base }),
        ("int4 g100 act-order", asym(4).group(100).unwrap(), GptqOptions { act_order: true, ..base }),
        ("int4 per-channel", asym(4), base),
        ("int4 per-channel act-order", asym(4), GptqOptions { act_order: true, ..base }),
        ("int3 g128 sym", QuantScheme::int(3).unwrap().group(128).unwrap(), base),
    ];
    let mut failures = Vec::new();
    for (what, scheme, opts) in cases {
        let r = ratio(&l, scheme, opts);
        if !(r < MAX_RATIO) {
            failures.push(format!("{what}: GPTQ/RTN = {r:.3}"));
        }
    }
    assert!(failures.is_empty(), "GPTQ not clearly better than RTN: {failures:?}");
}
