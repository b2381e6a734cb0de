//! Round-to-nearest (RTN) quantization: the reference implementation every other
//! quantizer and every fast path is checked against.
//!
//! Three pure steps per group (burn's pipeline): range (min/max, or the best shrunk range
//! of a clipping search) -> parameters ([`QuantScheme::int_params`], scales rounded to f16)
//! -> codes ([`IntParams::quantize`]). FP8: `scale = amax / fp8_max` (f32), codes
//! `fp8::encode(w / scale)`.
//!
//! The clipping search mirrors GPTQ's `quant.py` `Quantizer.find_params` with `mse=True`
//! (github.com/IST-DASLab/gptq): candidates `p·[min, max]` for `p = 1 - i/grid`,
//! `i = 0 .. max_shrink·grid`, error `Σ |w - ŵ|^norm`, strict improvement only, so the
//! plain min/max parameters (`p = 1`) win every tie. GPTQ reuses [`group_params`] so both
//! quantizers search parameters identically.

use crate::error::{Error, Result};
use crate::format::fp8;
use crate::format::{Granularity, IntParams, NumberFormat, QuantScheme, QuantizedTensor};
use rayon::prelude::*;

/// Clipping search over shrunk ranges (GPTQ `find_params`, `mse=True`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClipSearch {
    /// Candidates are `p = 1 - i / grid`.
    pub grid: usize,
    /// Candidates `i < max_shrink · grid`: with the defaults `p` runs 1.00, 0.99, ..., 0.21.
    pub max_shrink: f32,
    /// Exponent of the error `Σ |w - ŵ|^norm` (GPTQ: 2.4; 2.0 minimises the MSE).
    pub norm: f32,
}

impl Default for ClipSearch {
    /// GPTQ's defaults: `grid=100, maxshrink=.8, norm=2.4`.
    fn default() -> Self {
        Self { grid: 100, max_shrink: 0.8, norm: 2.4 }
    }
}

impl ClipSearch {
    /// The shrink factors tried, `1.0` first.
    pub fn factors(&self) -> impl Iterator<Item = f32> + '_ {
        (0..self.steps()).map(move |i| self.factor(i))
    }

    /// How many factors are tried.
    pub fn steps(&self) -> usize {
        ((self.max_shrink * self.grid as f32) as usize).max(1)
    }

    /// The `i`-th factor, `1 - i / grid`.
    pub fn factor(&self, i: usize) -> f32 {
        1.0 - i as f32 / self.grid.max(1) as f32
    }
}

#[inline]
fn err_term(d: f32, norm: f32) -> f64 {
    let d = d.abs();
    if norm == 2.0 {
        (d * d) as f64
    } else {
        d.powf(norm) as f64
    }
}

/// `Σ |w - ŵ|^norm` of a group under integer parameters; stops once it reaches `bound`
/// (terms are non-negative, so a partial sum ≥ bound means the full sum is too).
fn int_error(values: &[f32], p: IntParams, maxq: u32, norm: f32, bound: f64) -> f64 {
    let mut err = 0.0f64;
    for &w in values {
        err += err_term(p.dequantize(p.quantize(w, maxq)) - w, norm);
        if err >= bound {
            break;
        }
    }
    err
}

fn fp8_error(values: &[f32], format: NumberFormat, scale: f32, norm: f32, bound: f64) -> f64 {
    let table = fp8::decode_table(format);
    let mut err = 0.0f64;
    for &w in values {
        err += err_term(scale * table[fp8::encode(format, w / scale) as usize] - w, norm);
        if err >= bound {
            break;
        }
    }
    err
}

/// `(min, max)` of `values` with 0 included: `min ≤ 0 ≤ max`.
pub(crate) fn min_max(values: &[f32]) -> (f32, f32) {
    values.iter().fold((0.0f32, 0.0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)))
}

/// Integer parameters of one group (`values` finite): min/max, or with `clip` the
/// best shrunk range. A group of zeros gets scale 1 (see [`QuantScheme::int_params`]).
///
/// With GPTQ's norm 2.4 the search is screened first ([`screen`]): every factor's error
/// is estimated within a proven relative bound at a fraction of `powf`'s cost, and only the
/// factors that can still be the best (usually one) are summed exactly, so the result is
/// the plain search's, bit for bit.
pub fn group_params(values: &[f32], scheme: QuantScheme, clip: Option<ClipSearch>) -> IntParams {
    let (lo, hi) = min_max(values);
    let Some(clip) = clip else {
        return scheme.int_params(lo, hi);
    };
    let maxq = scheme.maxq();
    let cand = |i: usize| scheme.int_params(clip.factor(i) * lo, clip.factor(i) * hi);
    let mut candidates: Vec<usize> = (0..clip.steps()).collect();
    if clip.norm == screen::NORM {
        let estimates: Vec<f64> = candidates.iter().map(|&i| screen::error(values, cand(i), maxq)).collect();
        let least = estimates.iter().copied().fold(f64::INFINITY, f64::min);
        if least.is_finite() && least >= screen::SMALLEST {
            // Exact sums lie within REL of the estimates (plus underflowed terms), so a
            // factor estimated above `cut` is beaten by the one estimated at `least`.
            let cut = least * (1.0 + screen::REL) / (1.0 - screen::REL) + values.len() as f64 * screen::UNDERFLOW;
            candidates.retain(|&i| estimates[i] <= cut);
            if let [only] = candidates[..] {
                return cand(only);
            }
        }
    }
    // The plain search over what is left (in order: the first least error wins).
    let mut best = (f64::INFINITY, scheme.int_params(lo, hi));
    for i in candidates {
        let p = cand(i);
        let err = int_error(values, p, maxq, clip.norm, best.0);
        if err < best.0 {
            best = (err, p);
        }
    }
    best.1
}

/// A fast estimate of the clipping search's error `Σ |w - ŵ|^2.4` of one group, within a
/// relative [`REL`](screen::REL) of the exact sum (f32 `powf` of each term, summed in f64).
///
/// `|d|^2.4` with `d = 2^e·m`, `m ∈ [1, 2)`, `e = 5a + r`: `2^(2e + 2a) · 2^(0.4r) · m^2.4`,
/// `m^2.4` by a degree-6 polynomial (Chebyshev interpolation on [1, 2], evaluated in f32:
/// ≤ 2.9e-7 relative), `2^(0.4r)` one of five constants (6e-8), the power of two exact,
/// times the first-order factor of the f32 exponent's excess over 2.4 (≤ 1e-7 with its
/// rounding); terms summed in 8 f32 lanes of at most 16 terms (≤ 9e-7) then in f64.
/// Against the exact f32 `powf` (< 1 ulp, 1.2e-7) that is under 1.7e-6: `REL` is 12x
/// that (the test measures the worst case). Terms below 2^-126 count as 0 (`UNDERFLOW`
/// each); `d` is computed exactly as the plain search computes it.
mod screen {
    use crate::format::scheme::IntParams;

    /// The norm the screen estimates (GPTQ's `quant.py` default).
    pub(super) const NORM: f32 = 2.4;
    /// Relative error bound of [`error`] against the exact sum (see the module).
    pub(super) const REL: f64 = 2e-5;
    /// Largest term the estimate drops (as 0) or the exact `powf` may round to a subnormal.
    pub(super) const UNDERFLOW: f64 = 2.0e-37;
    /// Below this least error (groups of zeros, tiny weights) the plain search runs.
    pub(super) const SMALLEST: f64 = 1e-30;

    /// `m^2.4` on `m ∈ [1, 2)` in `t = 2m - 3`, lowest degree first.
    const POLY: [f32; 7] =
        [2.646_177_8, 2.116_942_6, 0.493_953_1, 0.021_950_763, -0.001_097_148_9, 0.000_122_425_98, -1.794_382e-5];
    /// `(2.4f32 - 2.4)·ln 2`: the exact search's exponent is the f32 nearest 2.4,
    /// 2.4 + 9.54e-8, which moves `x^2.4` by up to 7e-6 relative over the f32 range.
    const DELTA_LN2: f32 = 6.610_367e-8;
    /// `2^(0.4 r)`, r = 0..5.
    const TWO_POW_04R: [f32; 5] = [1.0, 1.319_508, 1.741_101_1, 2.297_396_7, 3.031_433];

    #[inline(always)]
    fn pow24(x: f32) -> f32 {
        let bits = x.to_bits() & 0x7fff_ffff;
        let biased = bits >> 23;
        let m = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000);
        let t = 2.0 * m - 3.0;
        let mut p = POLY[6];
        for k in (0..6).rev() {
            p = p * t + POLY[k];
        }
        // e + 130 = biased + 3 ∈ [3, 258]; /5 by multiply-shift (exact in this range).
        let eb = biased + 3;
        let a5 = (eb * 52_429) >> 18;
        let r = eb - 5 * a5;
        let c = if r == 0 {
            TWO_POW_04R[0]
        } else if r == 1 {
            TWO_POW_04R[1]
        } else if r == 2 {
            TWO_POW_04R[2]
        } else if r == 3 {
            TWO_POW_04R[3]
        } else {
            TWO_POW_04R[4]
        };
        // K = 2e + 2a with e = biased - 127, a = a5 - 26.
        let k = 2 * (biased as i32 - 127) + 2 * (a5 as i32 - 26);
        let two_k = if k < -126 {
            0.0
        } else if k > 127 {
            f32::INFINITY
        } else {
            f32::from_bits(((k + 127) as u32) << 23)
        };
        // The norm is the f32 2.4 = 2.4 + δ: times x^δ = 2^(δ·log2 x) ≈ 1 + δ·ln2·(e + m - 1).
        let log2_x = (biased as i32 - 127) as f32 + (m - 1.0);
        let excess = 1.0 + DELTA_LN2 * log2_x;
        if biased == 0 {
            0.0
        } else {
            p * c * excess * two_k
        }
    }

    /// `v.round()` (half away from zero) for every f32, as `trunc(v ± pred(0.5))`, which
    /// vectorizes where `round` does not: the sum rounds up exactly when `|v|`'s fraction is
    /// at least 0.5 (tested against `round` on every f32 bit pattern's neighbourhood).
    #[inline(always)]
    pub(super) fn round_half_away(v: f32) -> f32 {
        (v + 0.499_999_97f32.copysign(v)).trunc()
    }

    simd_kernel! {
        /// The estimate of `Σ |ŵ - w|^2.4` under `p` (the same value on every target: the
        /// lanes and the order of the sums are fixed, and no product is fused).
        pub(super) fn error(values: &[f32], p: IntParams, maxq: u32) -> f64 {
            let (s, z, top) = (p.scale, p.zero as f32, maxq as f32);
            let term = |w: f32| {
                // = p.dequantize(p.quantize(w, maxq)) - w: the code is an integer in [0, maxq].
                let q = (round_half_away(w / s) + z).clamp(0.0, top);
                pow24(s * (q - z) - w)
            };
            let mut total = 0.0f64;
            let mut terms = [0.0f32; 128];
            // Terms of a piece of 128 values (one straight loop: vectorized), summed in 8 f32
            // lanes of at most 16 terms, then in f64.
            for piece in values.chunks(128) {
                let t = &mut terms[..piece.len()];
                for (ti, &w) in t.iter_mut().zip(piece) {
                    *ti = term(w);
                }
                let mut lanes = [0.0f32; 8];
                let chunks = t.chunks_exact(8);
                let rest = chunks.remainder();
                for ch in chunks {
                    for k in 0..8 {
                        lanes[k] += ch[k];
                    }
                }
                total += lanes.iter().map(|&v| v as f64).sum::<f64>() + rest.iter().map(|&v| v as f64).sum::<f64>();
            }
            total
        }
    }
}

/// FP8 scale of one group: `amax / fp8_max` (1 for a group of zeros), or with `clip` the
/// best of `p · amax / fp8_max`.
pub fn fp8_group_scale(values: &[f32], format: NumberFormat, clip: Option<ClipSearch>) -> f32 {
    let (lo, hi) = min_max(values);
    let amax = (-lo).max(hi);
    if amax == 0.0 {
        return 1.0; // amax ≥ 0 by construction (the fold starts at 0); values are finite
    }
    let scale_of = |p: f32| (p * amax) / fp8::fp8_max(format);
    let Some(clip) = clip else {
        return scale_of(1.0);
    };
    let mut best = (f64::INFINITY, scale_of(1.0));
    for p in clip.factors() {
        let s = scale_of(p);
        if s <= 0.0 {
            continue; // p · amax / fp8_max underflowed
        }
        let err = fp8_error(values, format, s, clip.norm, best.0);
        if err < best.0 {
            best = (err, s);
        }
    }
    best.1
}

/// Refuse NaN/Inf weights, naming the first (row-major) offender.
pub fn check_finite(name: &str, weight: &[f32], cols: usize) -> Result<()> {
    match crate::model::layers::first_non_finite(weight) {
        None => Ok(()),
        Some(i) => Err(Error::tensor(
            name,
            format!("non-finite weight {} at row {} col {}", weight[i], i / cols.max(1), i % cols.max(1)),
        )),
    }
}

/// Per-tensor parameters: one "group" spanning the matrix. The clipping error is summed
/// per row in parallel, then over rows in order, so the result does not depend on threads.
fn per_tensor_int(weight: &[f32], cols: usize, scheme: QuantScheme, clip: Option<ClipSearch>) -> IntParams {
    let (lo, hi) =
        weight.par_chunks(cols.max(1)).map(min_max).reduce(|| (0.0, 0.0), |a, b| (a.0.min(b.0), a.1.max(b.1)));
    let Some(clip) = clip else {
        return scheme.int_params(lo, hi);
    };
    let mut best = (f64::INFINITY, scheme.int_params(lo, hi));
    for p in clip.factors() {
        let cand = scheme.int_params(p * lo, p * hi);
        let parts: Vec<f64> = weight
            .par_chunks(cols.max(1))
            .map(|row| int_error(row, cand, scheme.maxq(), clip.norm, f64::INFINITY))
            .collect();
        let err: f64 = parts.iter().sum();
        if err < best.0 {
            best = (err, cand);
        }
    }
    best.1
}

/// Round-to-nearest quantization of `weight` (`[rows, cols]` row-major, `rows` = output
/// features) in `scheme`. Integer schemes: per tensor, per channel, or groups of `n` input
/// columns (the last group of a row may be shorter), symmetric or not. FP8: per tensor or
/// per channel, f32 scales. Deterministic for any number of threads.
pub fn quantize_rtn(
    name: &str,
    weight: &[f32],
    rows: usize,
    cols: usize,
    scheme: QuantScheme,
    clip: Option<ClipSearch>,
) -> Result<QuantizedTensor> {
    if weight.len() != rows * cols {
        return Err(Error::tensor(name, format!("{} values for shape [{rows}, {cols}]", weight.len())));
    }
    if let NumberFormat::Int { bits } = scheme.format {
        if !matches!(bits, 2 | 3 | 4 | 8) {
            return Err(Error::option("--bits", format!("{bits} is not supported; use 2, 3, 4 or 8")));
        }
    }
    if let Granularity::Group(n) = scheme.granularity {
        if n == 0 || scheme.is_fp8() {
            return Err(Error::option("--group-size", format!("{scheme}: FP8 takes no groups and groups need n > 0")));
        }
    }
    if let NumberFormat::Ggml(ty) = scheme.format {
        return super::ggml::quantize_tensor(name, weight, rows, cols, ty, None);
    }
    check_finite(name, weight, cols)?;
    let width = scheme.group_width(cols);
    let gpr = scheme.groups_per_row(cols);
    // By index, not `par_chunks`, so that `cols == 0` still yields `rows` (empty) rows.
    let row_chunks = || (0..rows).into_par_iter().map(|r| &weight[r * cols..(r + 1) * cols]);

    if scheme.is_fp8() {
        let format = scheme.format;
        let scales: Vec<f32> = match scheme.granularity {
            Granularity::PerTensor => vec![fp8_group_scale(weight, format, clip)],
            _ => row_chunks().map(|row| fp8_group_scale(row, format, clip)).collect(),
        };
        let mut codes = vec![0u8; rows * cols];
        codes.par_chunks_mut(cols.max(1)).enumerate().for_each(|(r, out)| {
            let s = scales[if scales.len() == 1 { 0 } else { r }];
            for (q, &w) in out.iter_mut().zip(&weight[r * cols..(r + 1) * cols]) {
                *q = fp8::encode(format, w / s);
            }
        });
        return Ok(QuantizedTensor { scheme, rows, cols, codes, scales, zeros: None, g_idx: None, ggml: None });
    }

    let params: Vec<IntParams> = match scheme.granularity {
        Granularity::PerTensor => vec![per_tensor_int(weight, cols, scheme, clip)],
        Granularity::PerChannel => row_chunks().map(|row| group_params(row, scheme, clip)).collect(),
        Granularity::Group(_) => row_chunks()
            .flat_map_iter(|row| row.chunks(width).map(|g| group_params(g, scheme, clip)).collect::<Vec<_>>())
            .collect(),
    };
    debug_assert!(params.len() == rows * gpr || params.len() == 1);
    let maxq = scheme.maxq();
    let mut codes = vec![0u8; rows * cols];
    codes.par_chunks_mut(cols.max(1)).enumerate().for_each(|(r, out)| {
        let row = &weight[r * cols..(r + 1) * cols];
        for (g, (qs, ws)) in out.chunks_mut(width).zip(row.chunks(width)).enumerate() {
            let p = params[if params.len() == 1 { 0 } else { r * gpr + g }];
            for (q, &w) in qs.iter_mut().zip(ws) {
                *q = p.quantize(w, maxq);
            }
        }
    });
    let scales = params.iter().map(|p| p.scale).collect();
    let zeros = Some(params.iter().map(|p| p.zero).collect());
    Ok(QuantizedTensor { scheme, rows, cols, codes, scales, zeros, g_idx: None, ggml: None })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};

    /// The clipping search in its plain order (`quant.py`'s loop), every sum in full: the
    /// reference the screened search must equal.
    fn plain_group_params(values: &[f32], scheme: QuantScheme, clip: ClipSearch) -> IntParams {
        let (lo, hi) = min_max(values);
        let mut best = (f64::INFINITY, scheme.int_params(lo, hi));
        for p in clip.factors() {
            let cand = scheme.int_params(p * lo, p * hi);
            let err: f64 =
                values.iter().map(|&w| err_term(cand.dequantize(cand.quantize(w, scheme.maxq())) - w, clip.norm)).sum();
            if err < best.0 {
                best = (err, cand);
            }
        }
        best.1
    }

    fn test_groups() -> Vec<Vec<f32>> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let mut groups: Vec<Vec<f32>> = vec![vec![0.0; 128], vec![0.5; 128], vec![-2.0; 32], vec![1e-20; 128]];
        groups.push((0..64).map(|k| if k % 2 == 0 { 1.0 } else { -1.0 }).collect());
        groups.push((0..128).map(|k| if k == 3 { 1.0 } else { 0.0 }).collect());
        for scale in [1e-12f32, 1e-3, 0.05, 1.0, 1e6] {
            for _ in 0..25 {
                // Laplace values, some with an outlier.
                let mut g: Vec<f32> = (0..128)
                    .map(|_| {
                        let u = rng.random::<f32>().max(1e-7);
                        if rng.random::<bool>() {
                            -u.ln() * scale
                        } else {
                            u.ln() * scale
                        }
                    })
                    .collect();
                if rng.random::<bool>() {
                    g[rng.random_range(0..128)] = 40.0 * scale * (rng.random::<f32>() - 0.5);
                }
                groups.push(g);
            }
        }
        // A whole row as one group (per-channel), and odd lengths.
        groups.push((0..5000).map(|_| rng.random::<f32>() - 0.5).collect());
        groups.push((0..37).map(|_| rng.random::<f32>() - 0.5).collect());
        groups
    }

    /// The screened search gives the plain search's parameters, bit for bit: Laplace
    /// groups of many magnitudes (1e-12 to 1e6) with outliers, zeros, tiny and constant
    /// groups, two-valued groups where factors tie, a 5000-wide row, odd lengths; 2, 3, 4
    /// and 8 bits, symmetric or not, GPTQ's norm and the MSE.
    #[test]
    fn screened_clipping_search_equals_the_plain_search() {
        for g in test_groups() {
            for bits in [2u8, 3, 4, 8] {
                for symmetric in [true, false] {
                    let scheme = QuantScheme { symmetric, ..QuantScheme::int(bits).unwrap() };
                    for norm in [2.4f32, 2.0] {
                        let clip = ClipSearch { norm, ..ClipSearch::default() };
                        let (got, want) = (group_params(&g, scheme, Some(clip)), plain_group_params(&g, scheme, clip));
                        assert_eq!(
                            (got.scale.to_bits(), got.zero),
                            (want.scale.to_bits(), want.zero),
                            "{} values, bits {bits}, sym {symmetric}, norm {norm}",
                            g.len()
                        );
                    }
                }
            }
        }
    }

    /// The vectorizable rounding equals `f32::round` on a sweep of the bit patterns (every
    /// 97th, plus each half-integer and its neighbours up to 2^24).
    #[test]
    fn screen_rounding_is_round_half_away() {
        for bits in (0..u32::MAX).step_by(97) {
            let v = f32::from_bits(bits);
            if v.is_finite() {
                assert_eq!(screen::round_half_away(v).to_bits(), v.round().to_bits(), "{v:e}");
            }
        }
        for k in 0..(1u32 << 12) {
            let h = k as f32 * 4097.0 + 0.5;
            for v in [h, h.next_up(), h.next_down(), -h, -h.next_up(), -h.next_down()] {
                assert_eq!(screen::round_half_away(v).to_bits(), v.round().to_bits(), "{v:e}");
            }
        }
    }

    /// The estimate is within a tenth of its stated bound of the exact sum, for terms from
    /// 1e-30 to 1e15 and every exponent residue.
    #[test]
    fn screen_estimate_is_within_its_bound() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let maxq = 15;
        let mut worst = 0.0f64;
        for _ in 0..4000 {
            let mag = 10f32.powf(rng.random_range(-12.0..6.0));
            let g: Vec<f32> = (0..128).map(|_| (rng.random::<f32>() - 0.5) * mag).collect();
            let (lo, hi) = min_max(&g);
            let p = QuantScheme::int(4).unwrap().asymmetric().unwrap().int_params(0.9 * lo, 0.9 * hi);
            let exact: f64 = g.iter().map(|&w| err_term(p.dequantize(p.quantize(w, maxq)) - w, 2.4)).sum();
            let est = screen::error(&g, p, maxq);
            if exact > screen::SMALLEST {
                worst = worst.max((est - exact).abs() / exact);
            }
        }
        eprintln!("screen: worst relative error {worst:e}");
        assert!(worst < screen::REL / 10.0, "relative error {worst}");
        // Single terms across the exponent range.
        for e in -40..15 {
            for m in [1.0f32, 1.1, 1.5, 1.9999] {
                let x = m * 10f32.powi(e) / 3.0;
                let p = IntParams { scale: 1e30, zero: 0 }; // every w rounds to 0: d = -w
                let (est, exact) = (screen::error(&[x], p, 15), err_term(x, 2.4));
                assert!((est - exact).abs() <= screen::REL / 10.0 * exact + screen::UNDERFLOW, "{x}: {est} vs {exact}");
            }
        }
    }

    /// Relative slack on the half-step bound: `w / scale` and `scale * (q - z)` are each
    /// rounded once in f32 (≤ 2 ulp of the value, far below 1e-5 of a step at these sizes).
    const HALF_STEP_SLACK: f32 = 1e-5;
    /// The search compares per-group sums; the test re-sums all terms in another order, which
    /// can move an f64 sum by a few ulp (~1e-16 relative), far below this.
    const SUM_ORDER_SLACK: f64 = 1e-12;

    fn schemes() -> Vec<QuantScheme> {
        let mut v = vec![];
        for bits in [2u8, 3, 4, 8] {
            let base = QuantScheme::int(bits).unwrap();
            for g in [base.per_tensor(), base.per_channel(), base.group(7).unwrap(), base.group(32).unwrap()] {
                v.push(g);
                v.push(g.asymmetric().unwrap());
            }
        }
        v.extend([QuantScheme::fp8_e4m3(), QuantScheme::fp8_e4m3().per_tensor(), QuantScheme::fp8_e5m2()]);
        v
    }

    /// Random matrix of a kind: 0 normal, 1 with all-zero rows, 2 with one huge outlier.
    fn matrix(rng: &mut rand_chacha::ChaCha8Rng, rows: usize, cols: usize, kind: u8) -> Vec<f32> {
        let mut w: Vec<f32> = (0..rows * cols).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        match kind {
            1 => w.iter_mut().enumerate().filter(|(i, _)| (i / cols.max(1)) % 2 == 0).for_each(|(_, v)| *v = 0.0),
            2 if !w.is_empty() => {
                let i = rng.random_range(0..w.len());
                w[i] = 1e4;
            }
            _ => {}
        }
        w
    }

    fn check_within_half_step(q: &QuantizedTensor, w: &[f32]) {
        let deq = q.dequantize();
        let groups = q.column_groups();
        let maxq = q.scheme.maxq() as f32;
        for r in 0..q.rows {
            for c in 0..q.cols {
                let k = q.param_index(r, groups[c] as usize);
                let (s, z) = (q.scales[k], q.zeros.as_ref().unwrap()[k] as f32);
                assert!(s > 0.0 && s.is_finite(), "{}: scale {s}", q.scheme);
                let x = w[r * q.cols + c];
                let (lo, hi) = (s * (0.0 - z), s * (maxq - z));
                if x >= lo && x <= hi {
                    let e = (deq[r * q.cols + c] - x).abs();
                    assert!(e <= s / 2.0 * (1.0 + HALF_STEP_SLACK), "{}: |{x} - deq| = {e} > {s}/2", q.scheme);
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn error_within_half_step_inside_range(rows in 0usize..9, cols in 0usize..70, kind in 0u8..3, seed in any::<u64>()) {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let w = matrix(&mut rng, rows, cols, kind);
            for scheme in schemes() {
                let q = quantize_rtn("w", &w, rows, cols, scheme, None).unwrap();
                prop_assert_eq!(q.codes.len(), rows * cols);
                prop_assert_eq!(q.scales.len(), if scheme.granularity == Granularity::PerTensor { 1 } else { rows * scheme.groups_per_row(cols) });
                prop_assert!(q.scales.iter().all(|s| *s > 0.0 && s.is_finite()));
                if scheme.is_fp8() {
                    let deq = q.dequantize();
                    prop_assert!(deq.iter().all(|v| v.is_finite()));
                    // Zero rows stay exactly zero.
                    if kind == 1 && cols > 0 && rows > 0 { prop_assert!(deq[..cols].iter().all(|v| *v == 0.0)); }
                } else {
                    check_within_half_step(&q, &w);
                }
            }
        }

        #[test]
        fn clipping_never_worse_than_min_max(rows in 1usize..5, cols in 1usize..90, kind in 0u8..3, seed in any::<u64>()) {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let w = matrix(&mut rng, rows, cols, kind);
            for scheme in schemes() {
                for norm in [2.0f32, 2.4] {
                    let clip = ClipSearch { norm, ..Default::default() };
                    let plain = quantize_rtn("w", &w, rows, cols, scheme, None).unwrap().dequantize();
                    let clipped = quantize_rtn("w", &w, rows, cols, scheme, Some(clip)).unwrap().dequantize();
                    // The search minimises Σ|e|^norm per group, so compare per group in that norm
                    // (norm 2 is the MSE); the whole-matrix sum follows.
                    let e = |d: &[f32]| d.iter().zip(&w).map(|(a, b)| err_term(a - b, norm)).sum::<f64>();
                    prop_assert!(e(&clipped) <= e(&plain) * (1.0 + SUM_ORDER_SLACK), "{} norm {}: {} > {}", scheme, norm, e(&clipped), e(&plain));
                }
            }
        }
    }

    #[test]
    fn non_finite_weights_are_named_with_position() {
        let mut w = vec![0.5f32; 12];
        w[7] = f32::NAN;
        let e = quantize_rtn("layers.0.q_proj", &w, 3, 4, QuantScheme::int(4).unwrap(), None).unwrap_err().to_string();
        assert!(e.contains("layers.0.q_proj") && e.contains("row 1 col 3") && e.contains("NaN"), "{e}");
        w[7] = f32::NEG_INFINITY;
        let e = quantize_rtn("x", &w, 3, 4, QuantScheme::fp8_e4m3(), None).unwrap_err().to_string();
        assert!(e.contains("-inf") && e.contains("row 1 col 3"), "{e}");
        assert!(quantize_rtn("x", &w, 2, 4, QuantScheme::int(4).unwrap(), None).is_err(), "shape mismatch");
    }

    #[test]
    fn deterministic_across_thread_counts() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let (rows, cols) = (33, 257);
        let w = matrix(&mut rng, rows, cols, 2);
        let scheme = QuantScheme::int(3).unwrap().per_tensor().asymmetric().unwrap();
        let clip = Some(ClipSearch::default());
        let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let a = one.install(|| quantize_rtn("w", &w, rows, cols, scheme, clip).unwrap());
        let b = quantize_rtn("w", &w, rows, cols, scheme, clip).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn matches_gptq_reference_grid_on_a_known_row() {
        // Symmetric 4-bit over [-1.5, 0.75]: scale = f16(2·1.5/15) = f16(0.2), zero 8.
        let w = [-1.5f32, -0.2, 0.0, 0.1, 0.75];
        let q = quantize_rtn("w", &w, 1, 5, QuantScheme::int(4).unwrap(), None).unwrap();
        let s = crate::format::scheme::f16_round(0.2);
        assert_eq!(q.scales, vec![s]);
        assert_eq!(q.zeros, Some(vec![8]));
        let expect: Vec<u8> = w.iter().map(|&x| ((x / s).round() + 8.0).clamp(0.0, 15.0) as u8).collect();
        assert_eq!(q.codes, expect);
        // FP8 per channel: amax maps to the format's max exactly.
        let q = quantize_rtn("w", &w, 1, 5, QuantScheme::fp8_e4m3(), None).unwrap();
        assert_eq!(q.scales, vec![1.5 / 448.0]);
        assert_eq!(q.codes[0], 0xFE, "-448 in E4M3");
    }

    #[test]
    fn clip_factors_follow_gptq() {
        let f: Vec<f32> = ClipSearch::default().factors().collect();
        assert_eq!(f.len(), 80);
        assert_eq!(f[0], 1.0);
        assert!((f[79] - 0.21).abs() < 1e-6);
    }

    #[test]
    fn fp8_groups_are_refused() {
        let mut s = QuantScheme::fp8_e4m3();
        s.granularity = Granularity::Group(8);
        assert!(quantize_rtn("w", &[0.0; 16], 2, 8, s, None).is_err());
    }
}
