//! AWQ's clipping search (AutoAWQ `_compute_best_clip`): for every output row and
//! weight group, the largest |w| allowed is searched over `m = max|w| · (1 - i/grid)`,
//! `i = 0 .. max_shrink·grid`; the weights are clamped to `[-m, m]`, quantized in the
//! scheme, and scored by the mean over sampled tokens of the group's output error
//! `((q - w)·x)²`. Computed as `(q - w)ᵀ G (q - w)` with `G = X_gᵀ X_g / n` over the
//! sampled tokens (the same number, without a product per token). Strict improvement
//! only, so the unclipped range wins ties.
//!
//! Departures from AutoAWQ: asymmetric schemes also try the proportional range
//! `[p·min, p·max]` at every shrink `p` (AutoAWQ's symmetric clamp only cuts the side
//! with the larger magnitude until `p·max|w|` falls below the other side); and 4096
//! sampled tokens instead of 512, since the Gram form makes tokens cheap.

use crate::format::{Granularity, QuantScheme};
use crate::model::linear::par;
use crate::quant::rtn::{group_params, min_max};
use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AwqClip {
    /// Shrink steps are `1/grid` (AutoAWQ: 20).
    pub grid: usize,
    /// Shrink at most to `1 - max_shrink` (AutoAWQ: 0.5, i.e. 10 candidates).
    pub max_shrink: f32,
    /// Tokens sampled, evenly strided (AutoAWQ `n_sample_token`: 512; the error is
    /// scored through a Gram matrix, so more tokens cost almost nothing: 4096).
    pub tokens: usize,
    /// Also try `[p·min, p·max]` for asymmetric schemes (AutoAWQ: no).
    pub proportional: bool,
}

impl Default for AwqClip {
    fn default() -> Self {
        Self { grid: 20, max_shrink: 0.5, tokens: 4096, proportional: true }
    }
}

impl AwqClip {
    /// Rows `0, step, 2·step, ...` of `x` (`[n, width]`), `step = max(1, n / tokens)`,
    /// as AutoAWQ's `input_feat[:, ::step_size]`.
    pub fn sample(&self, x: &[f32], width: usize) -> Vec<f32> {
        let n = x.len() / width.max(1);
        let step = (n / self.tokens.max(1)).max(1);
        (0..n).step_by(step).flat_map(|t| x[t * width..(t + 1) * width].iter().copied()).collect()
    }
}

/// Clamp `w` (`[rows, cols]`, the scaled weights) in place to the best range per row and
/// group, given the sampled inputs `xs` (`[n, cols]`, scaled the same way). Returns the
/// summed output error `Σ (q-w)ᵀG(q-w)` before and after. Per-tensor schemes are left
/// alone (their one range is not a per-row choice): returns `None`.
pub fn clip_weights(
    w: &mut [f32],
    rows: usize,
    cols: usize,
    xs: &[f32],
    scheme: QuantScheme,
    clip: AwqClip,
) -> Option<(f64, f64)> {
    if scheme.granularity == Granularity::PerTensor || rows == 0 || cols == 0 {
        return None;
    }
    let n = xs.len() / cols;
    if n == 0 {
        return None;
    }
    let gw = scheme.group_width(cols);
    let steps = ((clip.max_shrink * clip.grid as f32) as usize).max(1);
    // Candidate ranges as (shrink, proportional): AutoAWQ's `[-m, m]` at every shrink,
    // and for asymmetric schemes also `[p·min, p·max]` (p < 1).
    let candidates: Vec<(f32, bool)> = (0..steps)
        .flat_map(|i| {
            let p = 1.0 - i as f32 / clip.grid as f32;
            let both = clip.proportional && !scheme.symmetric && i > 0;
            std::iter::once((p, false)).chain(both.then_some((p, true)))
        })
        .collect();
    let maxq = scheme.maxq();
    let mut before = 0.0f64;
    let mut after = 0.0f64;
    for c0 in (0..cols).step_by(gw) {
        let g = gw.min(cols - c0);
        // G = X_gᵀ X_g / n over the sampled tokens, [g, g].
        let xm = MatRef::from_row_major_slice_with_stride(&xs[c0..], n, g, cols);
        let mut gram = vec![0.0f32; g * g];
        matmul(
            MatMut::from_row_major_slice_mut(&mut gram, g, g),
            Accum::Replace,
            xm.transpose(),
            xm,
            1.0 / n.max(1) as f32,
            Par::Seq,
        );
        // (min, max) of every row's group, min ≤ 0 ≤ max.
        let ranges: Vec<(f32, f32)> = w.chunks(cols).map(|row| min_max(&row[c0..c0 + g])).collect();
        let limits = |(lo, hi): (f32, f32), (p, proportional): (f32, bool)| {
            if proportional {
                (lo * p, hi * p)
            } else {
                let m = (-lo).max(hi) * p;
                (-m, m)
            }
        };
        let mut best: Vec<(f64, (f32, f32))> = ranges.iter().map(|&r| (f64::INFINITY, r)).collect();
        let mut first = vec![0.0f64; rows];
        let (mut d, mut m) = (vec![0.0f32; rows * g], vec![0.0f32; rows * g]);
        for (ci, &cand) in candidates.iter().enumerate() {
            // D = Q(clamp(W_g)) - W_g for all rows at once; errors Σ (D·G)∘D below.
            d.par_chunks_mut(g).zip(w.par_chunks(cols)).zip(&ranges).for_each(|((d, row), &r)| {
                let (lo, hi) = limits(r, cand);
                let orig = &row[c0..c0 + g];
                let clamped: Vec<f32> = orig.iter().map(|v| v.clamp(lo, hi)).collect();
                let p = group_params(&clamped, scheme, None);
                d.iter_mut()
                    .zip(&clamped)
                    .zip(orig)
                    .for_each(|((d, &c), &o)| *d = p.dequantize(p.quantize(c, maxq)) - o);
            });
            matmul(
                MatMut::from_row_major_slice_mut(&mut m, rows, g),
                Accum::Replace,
                MatRef::from_row_major_slice(&d, rows, g),
                MatRef::from_row_major_slice(&gram, g, g),
                1.0f32,
                par(),
            );
            for (r, (dr, mr)) in d.chunks(g).zip(m.chunks(g)).enumerate() {
                let err: f64 = dr.iter().zip(mr).map(|(a, b)| *a as f64 * *b as f64).sum();
                if ci == 0 {
                    first[r] = err;
                }
                if err < best[r].0 {
                    best[r] = (err, limits(ranges[r], cand));
                }
            }
        }
        for ((row, (err, (lo, hi))), b) in w.chunks_mut(cols).zip(best).zip(first) {
            before += b;
            after += err;
            row[c0..c0 + g].iter_mut().for_each(|v| *v = v.clamp(lo, hi));
        }
    }
    Some((before, after))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn clipping_never_increases_the_sampled_output_error() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let (rows, cols, n) = (8, 40, 64);
        let mut w: Vec<f32> = (0..rows * cols).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        w[3] = 9.0; // an outlier that clipping should cut
        let xs: Vec<f32> = (0..n * cols).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let scheme = QuantScheme::int(3).unwrap().asymmetric().unwrap().group(16).unwrap();
        let orig = w.clone();
        let (before, after) = clip_weights(&mut w, rows, cols, &xs, scheme, AwqClip::default()).unwrap();
        assert!(after <= before, "{after} > {before}");
        assert!(w.iter().zip(&orig).all(|(a, b)| a.abs() <= b.abs()), "clamping only shrinks");
        assert!(w[3] < 9.0, "the outlier group was clipped");
        assert_eq!(AwqClip { tokens: 4, ..Default::default() }.sample(&xs, cols).len(), 4 * cols);
    }

    #[test]
    fn proportional_ranges_beat_symmetric_clamps_on_bell_shaped_rows() {
        // Rows of bell-shaped weights (sum of uniforms), int3 asym g128, inputs with G = I
        // so the score is ‖q - w‖². The candidates are a superset of AutoAWQ's, and on such
        // rows [p·min, p·max] often fits better than [-m, m] (≈ 6% less error here).
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let (rows, cols) = (32, 128);
        let w: Vec<f32> = (0..rows * cols).map(|_| (0..4).map(|_| rng.random_range(-1.0f32..1.0)).sum()).collect();
        let mut xs = vec![0.0f32; cols * cols];
        (0..cols).for_each(|i| xs[i * cols + i] = (cols as f32).sqrt());
        let scheme = QuantScheme::int(3).unwrap().asymmetric().unwrap().group(128).unwrap();
        let autoawq = AwqClip { proportional: false, ..Default::default() };
        let (mut wa, mut wp) = (w.clone(), w.clone());
        let (b_a, a_a) = clip_weights(&mut wa, rows, cols, &xs, scheme, autoawq).unwrap();
        let (b_p, a_p) = clip_weights(&mut wp, rows, cols, &xs, scheme, AwqClip::default()).unwrap();
        assert_eq!(b_a, b_p, "same unclipped error");
        assert!(a_p < 0.99 * a_a, "proportional {a_p} should beat AutoAWQ's {a_a}");
        assert!(wp.iter().zip(&w).all(|(a, b)| a.abs() <= b.abs()), "clamping only shrinks");
    }
}
