//! `H = 2/n Σ xᵀx` of a linear site's inputs (GPTQ's Hessian), accumulated over
//! calibration batches. Source: IST-DASLab/gptq `gptq.py` `add_batch`.
//!
//! Determinism: every product runs with `Par::Seq` on a partition of the output that
//! depends on the shapes only, so results are the same bits whatever the size of the
//! rayon pool.

use faer::linalg::matmul::triangular::{self, BlockStructure};
use faer::{Accum, Mat, MatMut, MatRef, Par};
use rayon::prelude::*;

/// Side of the square tiles of the lower triangle of `H` that
/// [`HessianAccumulator::add_batch`] computes as independent tasks (a partition that
/// depends on `cols` only, so the result does not depend on the number of threads).
const HESSIAN_TILE: usize = 128;
/// Rows of `d` per task in [`HessianAccumulator::output_error_sum`] (fixed partition).
const ERROR_PANEL_ROWS: usize = 16;

/// `H = 2/n Σ xᵀx` over calibration tokens, as `gptq.py`'s `add_batch` computes it
/// (there as a running mean, `H *= n/(n+t); H += 2/(n+t) · xᵀx`; here the plain sum in
/// f32, scaled once by [`Self::hessian`]: the same value without a pass over `H` per batch).
///
/// `sum`: `[cols, cols]` column-major; only the lower triangle (row ≥ column) is kept
/// up to date, [`Self::hessian`] mirrors it.
#[derive(Clone, Debug)]
pub struct HessianAccumulator {
    cols: usize,
    sum: Vec<f32>,
    n_samples: usize,
}

impl HessianAccumulator {
    pub fn new(cols: usize) -> Self {
        Self { cols, sum: vec![0.0; cols * cols], n_samples: 0 }
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Tokens seen so far.
    pub fn n_samples(&self) -> usize {
        self.n_samples
    }

    /// Add `tokens` input rows `x`: `[tokens, cols]` row-major.
    pub fn add_batch(&mut self, x: &[f32], tokens: usize) {
        let n = self.cols;
        assert_eq!(x.len(), tokens * n, "HessianAccumulator::add_batch: x is not [tokens={tokens}, cols={n}]");
        if tokens == 0 || n == 0 {
            return;
        }
        self.n_samples += tokens;
        // x as it is, row-major: the tile's left factor x[:, i0..]ᵀ is then column-major,
        // the layout faer's packing reads fastest. (A channel-major copy first gives the
        // same bits and was 1.4x slower on Zen 5, stop 12.)
        let xm = MatRef::from_row_major_slice(x, tokens, n);
        // Tiles (i0, j0) with i0 ≥ j0 of H (column-major): split every column panel of
        // width HESSIAN_TILE into its row tiles, then run all tiles in parallel.
        let mut tiles = Vec::new();
        for (p, panel) in self.sum.chunks_mut(HESSIAN_TILE * n).enumerate() {
            let j0 = p * HESSIAN_TILE;
            let w = panel.len() / n;
            let mut rest = MatMut::from_column_major_slice_mut(panel, n, w).subrows_mut(j0, n - j0);
            let mut i0 = j0;
            while i0 < n {
                let h = HESSIAN_TILE.min(n - i0);
                let (tile, below) = rest.split_at_row_mut(h);
                tiles.push((tile, i0, j0));
                rest = below;
                i0 += h;
            }
        }
        tiles.into_par_iter().for_each(|(tile, i0, j0)| {
            let (h, w) = (tile.nrows(), tile.ncols());
            // Σ[i0.., j0..] += x[:, i0..]ᵀ x[:, j0..]
            let lhs = xm.subcols(i0, h).transpose();
            let rhs = xm.subcols(j0, w);
            if i0 == j0 {
                triangular::matmul(
                    tile,
                    BlockStructure::TriangularLower,
                    Accum::Add,
                    lhs,
                    BlockStructure::Rectangular,
                    rhs,
                    BlockStructure::Rectangular,
                    1.0f32,
                    Par::Seq,
                );
            } else {
                faer::linalg::matmul::matmul(tile, Accum::Add, lhs, rhs, 1.0f32, Par::Seq);
            }
        });
    }

    /// `Σ_r d_rᵀ (Σ xᵀx) d_r` over the given rows `d_r` of `d` (`[rows, cols]` row-major):
    /// the squared output error of a weight error `d` on those rows, summed over the
    /// calibration tokens. Reads the lower triangle `L` in place (no `[cols, cols]` copy) as
    /// two products, `D·L + D·L₁ᵀ` (`L₁` its strict part), on fixed panels of
    /// [`ERROR_PANEL_ROWS`] rows in parallel, summed in order (the same bits for any thread
    /// count).
    pub fn output_error_sum(&self, d: &[f32], rows: &[usize]) -> f64 {
        let n = self.cols;
        let l = MatRef::from_column_major_slice(&self.sum, n, n);
        let per_panel: Vec<f64> = rows
            .par_chunks(ERROR_PANEL_ROWS)
            .map(|panel| {
                let dm = Mat::<f32>::from_fn(panel.len(), n, |k, c| d[panel[k] * n + c]);
                let mut p = Mat::<f32>::zeros(panel.len(), n);
                for (rhs, structure, accum) in [
                    (l, BlockStructure::TriangularLower, Accum::Replace),
                    (l.transpose(), BlockStructure::StrictTriangularUpper, Accum::Add),
                ] {
                    triangular::matmul(
                        p.as_mut(),
                        BlockStructure::Rectangular,
                        accum,
                        dm.as_ref(),
                        BlockStructure::Rectangular,
                        rhs,
                        structure,
                        1.0f32,
                        Par::Seq,
                    );
                }
                (0..panel.len()).map(|k| (0..n).map(|c| p[(k, c)] as f64 * dm[(k, c)] as f64).sum::<f64>()).sum()
            })
            .collect();
        per_panel.iter().sum()
    }

    /// `2/n` in f32, the factor between the sum and the Hessian.
    fn scale(&self) -> f32 {
        if self.n_samples == 0 {
            0.0
        } else {
            (2.0 / self.n_samples as f64) as f32
        }
    }

    /// The full symmetric `[cols, cols]` Hessian `2/n Σ xᵀx` (row- and column-major alike).
    pub fn hessian(&self) -> Vec<f32> {
        HessianView::of(self).to_dense().into_owned()
    }
}

/// A site's Hessian as GPTQ reads it, entry by entry: a dense symmetric `[cols, cols]`
/// matrix, or an accumulator's sum read in place (the same values as
/// [`HessianAccumulator::hessian`] without its `[cols, cols]` copy: 0.8 GB at 8B's
/// 14336-wide `down_proj`).
#[derive(Clone, Copy, Debug)]
pub enum HessianView<'a> {
    Dense {
        h: &'a [f32],
        cols: usize,
    },
    /// [`HessianAccumulator`]'s lower triangle (column-major) and its `2/n`.
    Accumulated {
        sum: &'a [f32],
        cols: usize,
        scale: f32,
    },
}

impl<'a> HessianView<'a> {
    pub fn dense(h: &'a [f32], cols: usize) -> Self {
        Self::Dense { h, cols }
    }

    pub fn of(acc: &'a HessianAccumulator) -> Self {
        Self::Accumulated { sum: &acc.sum, cols: acc.cols, scale: acc.scale() }
    }

    pub fn cols(&self) -> usize {
        match *self {
            Self::Dense { cols, .. } | Self::Accumulated { cols, .. } => cols,
        }
    }

    /// `H[r][c]`.
    #[inline]
    pub fn entry(&self, r: usize, c: usize) -> f32 {
        match *self {
            Self::Dense { h, cols } => h[r * cols + c],
            // The lower triangle, column-major: (max, min) at min·n + max.
            Self::Accumulated { sum, cols, scale } => sum[r.min(c) * cols + r.max(c)] * scale,
        }
    }

    /// The first non-finite entry `(r, c, value)` (of the triangle an accumulator keeps).
    pub fn first_non_finite(&self) -> Option<(usize, usize, f32)> {
        match *self {
            Self::Dense { h, cols } => crate::model::layers::first_non_finite(h).map(|k| (k / cols, k % cols, h[k])),
            Self::Accumulated { cols: n, .. } => {
                (0..n).find_map(|c| (c..n).map(|r| (r, c, self.entry(r, c))).find(|e| !e.2.is_finite()))
            }
        }
    }

    /// The whole matrix (a copy only of an accumulator's).
    pub fn to_dense(&self) -> std::borrow::Cow<'a, [f32]> {
        match *self {
            Self::Dense { h, .. } => std::borrow::Cow::Borrowed(h),
            Self::Accumulated { cols: n, .. } => {
                let mut out = vec![0.0f32; n * n];
                for j in 0..n {
                    for i in j..n {
                        let v = self.entry(i, j);
                        out[j * n + i] = v;
                        out[i * n + j] = v;
                    }
                }
                std::borrow::Cow::Owned(out)
            }
        }
    }
}

/// GPTAQ's cross term `dXXT = 2/n Σ (x_fp − x)ᵀ x` of a site (Li et al. 2025,
/// `gptaq_utils.py` `add_batch`): `x` the inputs through the already quantized blocks (the
/// ones [`HessianAccumulator`] sees), `x_fp` the full-precision model's inputs of the same
/// tokens. Row `i` is input channel `i`'s asymmetry `Σ_t (x_fp − x)[t, i] · x[t, :]`.
///
/// `sum`: `[cols, cols]` row-major, computed in row panels of [`HESSIAN_TILE`] that run as
/// independent sequential products (the same bits for any number of threads).
#[derive(Clone, Debug)]
pub struct CrossAccumulator {
    cols: usize,
    sum: Vec<f32>,
    n_samples: usize,
}

impl CrossAccumulator {
    pub fn new(cols: usize) -> Self {
        Self { cols, sum: vec![0.0; cols * cols], n_samples: 0 }
    }

    /// Add `tokens` rows of both streams: `x`, `x_fp`: `[tokens, cols]` row-major.
    pub fn add_batch(&mut self, x: &[f32], x_fp: &[f32], tokens: usize) {
        let n = self.cols;
        assert!(
            x.len() == tokens * n && x_fp.len() == x.len(),
            "CrossAccumulator::add_batch: x, x_fp are not [tokens={tokens}, cols={n}]"
        );
        if tokens == 0 || n == 0 {
            return;
        }
        self.n_samples += tokens;
        let d: Vec<f32> = x_fp.iter().zip(x).map(|(f, q)| f - q).collect();
        let (dm, xm) = (MatRef::from_row_major_slice(&d, tokens, n), MatRef::from_row_major_slice(x, tokens, n));
        self.sum.par_chunks_mut(HESSIAN_TILE * n).enumerate().for_each(|(p, panel)| {
            let h = panel.len() / n;
            let dst = MatMut::from_row_major_slice_mut(panel, h, n);
            // Σ[i0.., :] += d[:, i0..]ᵀ x
            faer::linalg::matmul::matmul(
                dst,
                Accum::Add,
                dm.subcols(p * HESSIAN_TILE, h).transpose(),
                xm,
                1.0f32,
                Par::Seq,
            );
        });
    }

    /// `2/n Σ (x_fp − x)ᵀ x`: `[cols, cols]` row-major.
    pub fn matrix(&self) -> Vec<f32> {
        let scale = if self.n_samples == 0 { 0.0 } else { (2.0 / self.n_samples as f64) as f32 };
        self.sum.iter().map(|v| v * scale).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against the plain formula on the mirrored matrix, including a zero row and an
    /// outlier (tolerance: f32 sums of ~40 products, relative).
    #[test]
    fn output_error_sum_is_the_quadratic_form_of_the_full_matrix() {
        let (tokens, cols, rows) = (37, 41, 5);
        let x: Vec<f32> = (0..tokens * cols).map(|i| (i * 7919 % 1013) as f32 / 500.0 - 1.0).collect();
        let mut acc = HessianAccumulator::new(cols);
        acc.add_batch(&x, tokens);
        let mut d: Vec<f32> = (0..rows * cols).map(|i| (i * 104729 % 997) as f32 / 997.0 - 0.5).collect();
        d[2 * cols..3 * cols].fill(0.0);
        d[4 * cols + 3] = 300.0;
        let h = acc.hessian(); // 2/n Σ xᵀx
        let scale = tokens as f64 / 2.0;
        for r in 0..rows {
            let row = &d[r * cols..(r + 1) * cols];
            let mut want = 0.0f64;
            for i in 0..cols {
                for j in 0..cols {
                    want += row[i] as f64 * h[i * cols + j] as f64 * row[j] as f64;
                }
            }
            want *= scale;
            let got = acc.output_error_sum(&d, &[r]);
            assert!((got - want).abs() <= 1e-4 * want.abs().max(1e-3), "row {r}: {got} vs {want}");
        }
        assert_eq!(acc.output_error_sum(&d, &[2]), 0.0, "a zero row has no error");
        let all = acc.output_error_sum(&d, &[0, 1, 3]);
        let parts: f64 = [0, 1, 3].iter().map(|&r| acc.output_error_sum(&d, &[r])).sum();
        assert_eq!(all, parts);
    }
}
