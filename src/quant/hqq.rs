//! Half-Quadratic Quantization (HQQ), calibration-free: refines RTN's parameters group by
//! group towards `min Σ |w - ŵ|^p` (`p < 1`: sparse error, exact bulk over exact outliers).
//! Badri & Shaji 2023, "Half-Quadratic Quantization of Large Machine Learning Models";
//! reference mobiusml/hqq `hqq/core/optimize.py` `optimize_weights_proximal_legacy`.
//!
//! Shapes as [`quantize_rtn`]: `weight` `[out_features, in_features]` row-major, groups
//! along the input dimension (per tensor, per channel, or `n` columns, the last shorter).
//! Integer schemes only. From RTN's min/max parameters, per group:
//! `W_q = clamp(round(W/s) + z)`, `W_r = s·(W_q - z)`, `W_e = shrink_p(W - W_r, β)`,
//! `z = mean(W_q - (W - W_e)/s)`, `β *= κ`; keep the iterate of lowest `Σ|W - W_r|` (the
//! reference's L1; `Σ|·|^p` measured a little worse), stop at the first not improving.
//!
//! Deviations for the stored format (u8 zeros, f16 scales), measured on the test weights:
//! - Constraints in the loop: `z` rounded to an integer in `[1, maxq]` (gptq cannot hold
//!   a zero of 0), `s` to f16, so the loop selects on the stored error. The reference's
//!   float `z` rounded at the end measured 1.000x RTN (rounding undoes its grid shift).
//! - The scale moves too: with `s` fixed and `z` integer the grid `s·ℤ` stays, only its
//!   window moves (zero-only measured exactly RTN's error). After each `z` step, `s` takes
//!   the closed form `Σ (W - W_e)(W_q - z) / Σ (W_q - z)²`. Symmetric schemes (zero at the
//!   midpoint) run the `s` step alone: never worse than RTN in L1 (RTN is the first
//!   iterate), squared error 0.46-1.004x RTN's, so they are not refused.
//! - Error and early stop per group, not per tensor: each row depends on that row only
//!   (per tensor: row partials summed in order), bit-identical for any thread count.

use crate::error::{Error, Result};
use crate::format::scheme::f16_round;
use crate::format::{Granularity, IntParams, QuantScheme, QuantizedTensor};
use crate::quant::rtn::quantize_rtn;
use rayon::prelude::*;

/// HQQ's proximal solver settings (the reference's `opt_params`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HqqOptions {
    /// `p` of the error `Σ |w - ŵ|^p` (reference 0.7).
    pub lp_norm: f32,
    /// Initial half-quadratic penalty `β` (reference 1e1).
    pub beta: f32,
    /// Growth of `β` per iteration (reference 1.01).
    pub kappa: f32,
    /// Most parameter updates per group (reference 20).
    pub iters: usize,
}

impl Default for HqqOptions {
    fn default() -> Self {
        Self { lp_norm: 0.7, beta: 1e1, kappa: 1.01, iters: 20 }
    }
}

/// Generalised soft threshold, the proximal operator of `|x|^p`:
/// `sign(x)·relu(|x| - |x|^(p-1)/β)` (with the reference's `1e-8` guard).
#[inline]
fn shrink_lp(x: f32, beta: f32, p: f32) -> f32 {
    let a = x.abs();
    x.signum() * (a - (a + 1e-8).powf(p - 1.0) / beta).max(0.0)
}

/// One sweep's sums `[err, n, Σq, Σt, Σq², Σqt]`: the L1 error of the current parameters,
/// and what the next step needs (`q` the codes, `t = W - W_e` the shrunk target).
type Sums = [f64; 6];

/// Per tensor (several chunks): rows in parallel, then summed in order.
fn sweep(chunks: &[&[f32]], p: IntParams, maxq: u32, beta: f32, lp: f32) -> Sums {
    let one = |values: &[f32]| {
        let mut s = [0.0; 6];
        for &w in values {
            let q = p.quantize(w, maxq);
            let d = w - p.dequantize(q);
            let (q, t) = (q as f64, (w - shrink_lp(d, beta, lp)) as f64);
            s.iter_mut().zip([d.abs() as f64, 1.0, q, t, q * q, q * t]).for_each(|(acc, v)| *acc += v);
        }
        s
    };
    match chunks {
        [c] => one(c),
        _ => {
            let rows: Vec<Sums> = chunks.par_iter().map(|c| one(c)).collect();
            rows.iter().fold([0.0; 6], |a, b| std::array::from_fn(|i| a[i] + b[i]))
        }
    }
}

/// The proximal step on integer/f16 parameters: `z` (asymmetric only), then `s` given `z`.
/// `None` when the new scale is not a positive finite f16.
fn step(&[_, n, sq, st, sqq, sqt]: &Sums, p: IntParams, scheme: QuantScheme) -> Option<IntParams> {
    let z = if scheme.symmetric || n == 0.0 {
        p.zero as f64
    } else {
        ((sq - st / p.scale as f64) / n).round().clamp(1.0, scheme.maxq() as f64)
    };
    let den = sqq - 2.0 * z * sq + n * z * z; // Σ (q - z)²
    let scale = if den > 0.0 { f16_round(((sqt - z * st) / den) as f32) } else { p.scale };
    (scale > 0.0 && scale.is_finite()).then_some(IntParams { scale, zero: z as u8 })
}

/// HQQ parameters of one group (several chunks for per-tensor), starting from `start`.
fn refine(chunks: &[&[f32]], start: IntParams, scheme: QuantScheme, opts: HqqOptions) -> IntParams {
    let maxq = scheme.maxq();
    let (mut cur, mut best, mut best_err, mut beta) = (start, start, f64::INFINITY, opts.beta);
    for i in 0..=opts.iters {
        let sums = sweep(chunks, cur, maxq, beta, opts.lp_norm);
        if sums[0] >= best_err {
            break;
        }
        (best, best_err) = (cur, sums[0]);
        match step(&sums, cur, scheme) {
            Some(next) if i < opts.iters => cur = next,
            _ => break,
        }
        beta *= opts.kappa;
    }
    best
}

/// HQQ quantization of `weight` (`[out_features, in_features]` row-major) in the integer
/// `scheme`; validation, and the starting parameters, are [`quantize_rtn`]'s.
pub fn quantize_hqq(
    name: &str,
    weight: &[f32],
    out_features: usize,
    in_features: usize,
    scheme: QuantScheme,
    opts: HqqOptions,
) -> Result<QuantizedTensor> {
    if scheme.is_fp8() {
        return Err(Error::option("--method", format!("hqq quantizes integer schemes only, not {scheme}; use rtn")));
    }
    let HqqOptions { lp_norm, beta, kappa, .. } = opts;
    if !(lp_norm > 0.0 && lp_norm.is_finite() && beta > 0.0 && beta.is_finite() && kappa > 0.0 && kappa.is_finite()) {
        return Err(Error::option("--method", format!("hqq needs finite lp_norm, beta, kappa > 0, got {opts:?}")));
    }
    let mut q = quantize_rtn(name, weight, out_features, in_features, scheme, None)?;
    let cols = in_features;
    if weight.is_empty() {
        return Ok(q);
    }
    let zeros = q.zeros.as_ref().expect("integer tensors carry zero points");
    let start: Vec<IntParams> = q.scales.iter().zip(zeros).map(|(&scale, &zero)| IntParams { scale, zero }).collect();
    let (maxq, width, gpr) = (scheme.maxq(), scheme.group_width(cols), scheme.groups_per_row(cols));
    let global = (scheme.granularity == Granularity::PerTensor)
        .then(|| refine(&weight.chunks(cols).collect::<Vec<_>>(), start[0], scheme, opts));
    // Each row's groups refined and coded together, rows in parallel, collected in order.
    let rows = q.codes.par_chunks_mut(cols).zip(weight.par_chunks(cols)).enumerate();
    let per_group: Vec<IntParams> = rows
        .flat_map_iter(|(r, (codes, row))| {
            let groups = codes.chunks_mut(width).zip(row.chunks(width)).enumerate();
            let params = groups.map(|(g, (qs, ws))| {
                let p = global.unwrap_or_else(|| refine(&[ws], start[r * gpr + g], scheme, opts));
                qs.iter_mut().zip(ws).for_each(|(c, &w)| *c = p.quantize(w, maxq));
                p
            });
            params.collect::<Vec<_>>()
        })
        .collect();
    let params = global.map_or(per_group, |p| vec![p]);
    q.scales = params.iter().map(|p| p.scale).collect();
    q.zeros = Some(params.iter().map(|p| p.zero).collect());
    Ok(q)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// HQQ does not minimise squared error: measured 0.86-0.94x RTN's on the weights
    /// asserted on, 1.004x on int2 per-tensor symmetric; 5% is the brief's bound.
    const MSE_SLACK: f64 = 1.05;
    /// HQQ selects on per-group f64 sums; `compare` re-sums the terms over the matrix.
    const SUM_ORDER_SLACK: f64 = 1e-9;

    fn asym(bits: u8, group: usize) -> QuantScheme {
        QuantScheme::int(bits).unwrap().group(group).unwrap().asymmetric().unwrap()
    }

    fn hqq(w: &[f32], rows: usize, cols: usize, scheme: QuantScheme) -> QuantizedTensor {
        quantize_hqq("w", w, rows, cols, scheme, HqqOptions::default()).unwrap()
    }

    /// `[rows, cols]` of N(0, 0.02²) with `outliers` entries of ±(20..50)σ (Box-Muller).
    fn gaussian(seed: u64, rows: usize, cols: usize, outliers: usize) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut normal = || {
            let (u, v) = (rng.random_range(f32::EPSILON..1.0), rng.random_range(0.0..1.0f32));
            (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
        };
        let mut w: Vec<f32> = (0..rows * cols).map(|_| 0.02 * normal()).collect();
        for _ in 0..outliers {
            let i = rng.random_range(0..w.len());
            w[i] = if rng.random_bool(0.5) { 1.0 } else { -1.0 } * 0.02 * rng.random_range(20.0..50.0);
        }
        w
    }

    /// HQQ's errors over RTN's, `[Σ|e|, Σ|e|^0.7, Σe²]` (printed with `--nocapture`).
    fn compare(w: &[f32], rows: usize, cols: usize, scheme: QuantScheme) -> [f64; 3] {
        let errors = |q: &QuantizedTensor| {
            let d: Vec<f64> = q.dequantize().iter().zip(w).map(|(a, b)| (a - b).abs() as f64).collect();
            [d.iter().sum::<f64>(), d.iter().map(|e| e.powf(0.7)).sum(), d.iter().map(|e| e * e).sum()]
        };
        let h = errors(&hqq(w, rows, cols, scheme));
        let r = errors(&quantize_rtn("w", w, rows, cols, scheme, None).unwrap());
        let x = [0, 1, 2].map(|i| h[i] / r[i]);
        eprintln!("{scheme}: hqq/rtn l1 {:.3}x, lp0.7 {:.3}x, squared {:.3}x", x[0], x[1], x[2]);
        x
    }

    #[test]
    fn beats_rtn_in_lp_on_gaussian_with_outliers() {
        let (rows, cols) = (256, 512);
        let w = gaussian(7, rows, cols, 24);
        for scheme in [asym(4, 128), asym(3, 64)] {
            let [_, lp, sq] = compare(&w, rows, cols, scheme);
            assert!(lp < 1.0 && sq <= MSE_SLACK, "{scheme}: hqq/rtn lp0.7 {lp}, squared {sq}");
        }
    }

    #[test]
    fn never_worse_than_rtn_in_l1_for_any_integer_scheme() {
        let (rows, cols) = (24, 200);
        let w = gaussian(3, rows, cols, 6);
        for bits in [2u8, 3, 4, 8] {
            let base = QuantScheme::int(bits).unwrap();
            for s in [base.per_tensor(), base.per_channel(), base.group(64).unwrap()] {
                for scheme in [s, s.asymmetric().unwrap()] {
                    // RTN's parameters are each group's first iterate; the loop keeps the best.
                    let [l1, ..] = compare(&w, rows, cols, scheme);
                    assert!(l1 <= 1.0 + SUM_ORDER_SLACK, "{scheme}: hqq/rtn l1 = {l1}");
                }
            }
        }
    }

    #[test]
    fn zero_row_and_odd_width_match_rtn_on_the_zero_row() {
        let (rows, cols) = (5, 200); // group 64: 64, 64, 64, 8
        let mut w = gaussian(5, rows, cols, 2);
        w[2 * cols..3 * cols].fill(0.0);
        for scheme in [asym(4, 64), QuantScheme::int(3).unwrap().group(64).unwrap()] {
            let (h, r) = (hqq(&w, rows, cols, scheme), quantize_rtn("w", &w, rows, cols, scheme, None).unwrap());
            let (hz, rz) = (h.zeros.as_ref().unwrap(), r.zeros.as_ref().unwrap());
            assert!(h.scales.len() == rows * 4 && h.dequantize().iter().all(|v| v.is_finite()));
            assert!(h.scales.iter().all(|s| *s > 0.0 && s.is_finite() && f16_round(*s) == *s));
            assert!(hz.iter().all(|&z| z >= 1 && z as u32 <= scheme.maxq()));
            assert_eq!(
                (&h.codes[2 * cols..3 * cols], &h.scales[8..12], &hz[8..12]),
                (&r.codes[2 * cols..3 * cols], &r.scales[8..12], &rz[8..12])
            );
            assert!(h.dequantize()[2 * cols..3 * cols].iter().all(|v| *v == 0.0));
            assert_ne!(h, r, "{scheme}: HQQ changed nothing on the Gaussian rows");
        }
    }

    #[test]
    fn deterministic_across_thread_counts() {
        let (rows, cols) = (33, 257);
        let w = gaussian(11, rows, cols, 4);
        for scheme in [QuantScheme::int(3).unwrap().per_tensor().asymmetric().unwrap(), asym(4, 32)] {
            let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
            assert_eq!(one.install(|| hqq(&w, rows, cols, scheme)), hqq(&w, rows, cols, scheme));
        }
    }

    #[test]
    fn fp8_and_bad_options_are_refused() {
        let run = |s, o| quantize_hqq("w", &[0.5; 8], 2, 4, s, o).map_err(|e| e.to_string());
        let e = run(QuantScheme::fp8_e4m3(), HqqOptions::default()).unwrap_err();
        assert!(e.contains("--method") && e.contains("hqq") && e.contains("fp8"), "{e}");
        assert!(run(QuantScheme::int(4).unwrap(), HqqOptions { beta: 0.0, ..Default::default() }).is_err());
        assert!(quantize_hqq("w", &[f32::NAN; 8], 2, 4, QuantScheme::int(4).unwrap(), HqqOptions::default()).is_err());
    }
}
