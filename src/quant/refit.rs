//! Least-squares refit of the scales of an integer-quantized layer, codes and zero
//! points held fixed.
//!
//! GPTQ (and RTN) choose each group's scale from the group's min/max *before* the codes
//! are known; once the codes are fixed, the dequantized row is linear in the row's
//! scales: `q_r = Σ_g s_rg · c_rg` with `c_rg = (codes - zero_rg)` on group `g`'s columns
//! and 0 elsewhere. The layer's output error on the calibration inputs,
//! `(w_r - q_r) H (w_r - q_r)ᵀ` with `H = 2/n XᵀX`, is then a quadratic in the `G`
//! scales of the row, minimized by the `G × G` normal equations
//!
//! ```text
//! A s = b,   A_gh = c_gᵀ H c_h,   b_g = c_gᵀ H w_rᵀ
//! ```
//!
//! This is the scale step of llama.cpp's weighted `make_qx_quants` and of the
//! "scale re-fitting" that several GPTQ descendants apply after the sweep; here it uses
//! the full Hessian, not only its diagonal. Nothing in the stored format changes (codes,
//! integer zero points, f16 scales), so every loader reads the result as before.
//!
//! Safeguards: groups whose column block carries no signal (`A_gg = 0`: all codes at the
//! zero point, or dead input columns) keep their scale; a row keeps all its scales when
//! the solve fails, gives a non-positive or non-finite scale, or does not lower the
//! row's error after rounding the scales to f16. So the refit never raises the
//! calibration error of a row.
//!
//! Cost: one `[rows, cols] × [cols, cols]` product for `C·H` (split by group) and one for
//! `W·H`, in row chunks of fixed size, each product `Par::Seq`: the same bits for any
//! number of threads.

use crate::format::quantized::QuantizedTensor;
use crate::format::scheme::{f16_round, Granularity};
use faer::linalg::matmul::matmul;
use faer::linalg::solvers::Solve;
use faer::{Accum, Col, Mat, MatMut, MatRef, Par, Side};
use rayon::prelude::*;

/// Rows per parallel task (a fixed partition: results do not depend on the thread count).
const CHUNK_ROWS: usize = 64;

/// Calibration error of the layer before and after the refit, `Σ_r (w_r - q_r) H (w_r - q_r)ᵀ / 2`
/// (the scale of GPTQ's reported loss), and the number of rows whose scales changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct RefitStats {
    pub error_before: f64,
    pub error_after: f64,
    pub rows_changed: usize,
}

/// Refit the scales of `tensor` (integer, per channel or per group; per-tensor and FP8
/// tensors are returned unchanged) against the original `weight` (`[rows, cols]`) and
/// the Hessian `hessian` (`[cols, cols]`, symmetric positive semi-definite, undamped).
pub fn refit_scales(tensor: &mut QuantizedTensor, weight: &[f32], hessian: &[f32]) -> RefitStats {
    let (rows, cols) = (tensor.rows, tensor.cols);
    if tensor.scheme.is_fp8() || tensor.scheme.granularity == Granularity::PerTensor || rows == 0 || cols == 0 {
        return RefitStats::default();
    }
    assert_eq!(weight.len(), rows * cols, "refit_scales: weight shape");
    assert_eq!(hessian.len(), cols * cols, "refit_scales: Hessian shape");
    let groups = tensor.groups_per_row();
    let col_group = tensor.column_groups();

    // Columns ordered by group, and H's rows in that order: group h's rows of H are the
    // contiguous block `h_by_group[start[h] * cols .. start[h + 1] * cols]`.
    let mut order: Vec<usize> = (0..cols).collect();
    order.sort_by_key(|&c| col_group[c]); // stable: columns ascending within a group
    let mut start = vec![0usize; groups + 1];
    for &g in &col_group {
        start[g as usize + 1] += 1;
    }
    for g in 0..groups {
        start[g + 1] += start[g];
    }
    let mut h_by_group = vec![0.0f32; cols * cols];
    for (k, &c) in order.iter().enumerate() {
        h_by_group[k * cols..(k + 1) * cols].copy_from_slice(&hessian[c * cols..(c + 1) * cols]);
    }
    let ctx =
        Ctx { tensor, weight, hessian, col_group: &col_group, order: &order, start: &start, h_by_group: &h_by_group };

    let n_chunks = rows.div_ceil(CHUNK_ROWS);
    let outs: Vec<(Vec<f32>, RefitStats)> = (0..n_chunks)
        .into_par_iter()
        .map(|c| {
            let r0 = c * CHUNK_ROWS;
            refit_chunk(&ctx, r0, CHUNK_ROWS.min(rows - r0))
        })
        .collect();
    let mut stats = RefitStats::default();
    for (c, (scales, s)) in outs.into_iter().enumerate() {
        let r0 = c * CHUNK_ROWS;
        tensor.scales[r0 * groups..r0 * groups + scales.len()].copy_from_slice(&scales);
        stats.error_before += s.error_before;
        stats.error_after += s.error_after;
        stats.rows_changed += s.rows_changed;
    }
    stats
}

struct Ctx<'a> {
    tensor: &'a QuantizedTensor,
    weight: &'a [f32],
    hessian: &'a [f32],
    col_group: &'a [u32],
    /// Columns sorted by group; group `h` is `order[start[h]..start[h + 1]]`.
    order: &'a [usize],
    start: &'a [usize],
    /// `H[order[k], :]` at row `k`.
    h_by_group: &'a [f32],
}

/// New scales `[cr, groups]` of rows `r0..r0+cr` and their statistics.
fn refit_chunk(ctx: &Ctx, r0: usize, cr: usize) -> (Vec<f32>, RefitStats) {
    let t = ctx.tensor;
    let (cols, groups) = (t.cols, t.groups_per_row());
    let zeros = t.zeros.as_ref().expect("integer tensor without zero points");
    // C = codes - zero, [cr, cols] row-major, original column order.
    let mut c = vec![0.0f32; cr * cols];
    for r in 0..cr {
        let codes = &t.codes[(r0 + r) * cols..(r0 + r + 1) * cols];
        for (k, (dst, &q)) in c[r * cols..(r + 1) * cols].iter_mut().zip(codes).enumerate() {
            *dst = q as f32 - zeros[t.param_index(r0 + r, ctx.col_group[k] as usize)] as f32;
        }
    }
    let w = &ctx.weight[r0 * cols..(r0 + cr) * cols];
    // A[r][g][h] and b[r][g], f64.
    let mut a = vec![0.0f64; cr * groups * groups];
    let mut b = vec![0.0f64; cr * groups];
    let mut p = vec![0.0f32; cr * cols];
    // b: (W·H)[r, i] summed against C over each group's columns.
    product(&mut p, MatRef::from_row_major_slice(w, cr, cols), MatRef::from_row_major_slice(ctx.hessian, cols, cols));
    group_dots(&c, &p, cr, cols, ctx.col_group, groups, |r, g, v| b[r * groups + g] += v);
    // w H wᵀ per row: the constant term, so the reported errors are the true ones.
    let w_h_w: Vec<f64> = (0..cr)
        .map(|r| {
            w[r * cols..(r + 1) * cols]
                .iter()
                .zip(&p[r * cols..(r + 1) * cols])
                .map(|(&x, &y)| x as f64 * y as f64)
                .sum()
        })
        .collect();
    let mut ch = vec![0.0f32; cr * cols];
    for h in 0..groups {
        let (s, e) = (ctx.start[h], ctx.start[h + 1]);
        let nh = e - s;
        if nh == 0 {
            continue;
        }
        // P = C[:, I_h] · H[I_h, :]   ([cr, nh] × [nh, cols])
        for r in 0..cr {
            for (k, &col) in ctx.order[s..e].iter().enumerate() {
                ch[r * nh + k] = c[r * cols + col];
            }
        }
        product(
            &mut p,
            MatRef::from_row_major_slice(&ch[..cr * nh], cr, nh),
            MatRef::from_row_major_slice(&ctx.h_by_group[s * cols..e * cols], nh, cols),
        );
        group_dots(&c, &p, cr, cols, ctx.col_group, groups, |r, g, v| a[(r * groups + g) * groups + h] += v);
    }

    // Per channel / per group: row r's scales are `scales[r * groups..(r + 1) * groups]`.
    let mut scales = t.scales[r0 * groups..(r0 + cr) * groups].to_vec();
    let mut stats = RefitStats::default();
    for r in 0..cr {
        let a_r = &a[r * groups * groups..(r + 1) * groups * groups];
        let b_r = &b[r * groups..(r + 1) * groups];
        let old: Vec<f64> = scales[r * groups..(r + 1) * groups].iter().map(|&v| v as f64).collect();
        let before = quadratic(a_r, b_r, &old);
        let after = match solve_row(a_r, b_r, &old) {
            Some(new) => {
                let new32: Vec<f32> = new.iter().map(|&v| f16_round(v as f32)).collect();
                let new64: Vec<f64> = new32.iter().map(|&v| v as f64).collect();
                let err = quadratic(a_r, b_r, &new64);
                if new32.iter().all(|v| v.is_finite() && *v > 0.0) && err < before {
                    scales[r * groups..(r + 1) * groups].copy_from_slice(&new32);
                    stats.rows_changed += 1;
                    err
                } else {
                    before
                }
            }
            None => before,
        };
        stats.error_before += (before + w_h_w[r]).max(0.0) / 2.0;
        stats.error_after += (after + w_h_w[r]).max(0.0) / 2.0;
    }
    (scales, stats)
}

/// `dst = lhs · rhs`, sequential.
fn product(dst: &mut [f32], lhs: MatRef<f32>, rhs: MatRef<f32>) {
    let (m, n) = (lhs.nrows(), rhs.ncols());
    matmul(MatMut::from_row_major_slice_mut(&mut dst[..m * n], m, n), Accum::Replace, lhs, rhs, 1.0f32, Par::Seq);
}

/// For every row `r` and group `g`: `Σ_{i in group g} c[r, i] · p[r, i]`, handed to `add`.
fn group_dots(
    c: &[f32],
    p: &[f32],
    cr: usize,
    cols: usize,
    col_group: &[u32],
    groups: usize,
    mut add: impl FnMut(usize, usize, f64),
) {
    let mut acc = vec![0.0f64; groups];
    for r in 0..cr {
        acc.iter_mut().for_each(|v| *v = 0.0);
        let (cr_, pr) = (&c[r * cols..(r + 1) * cols], &p[r * cols..(r + 1) * cols]);
        for i in 0..cols {
            acc[col_group[i] as usize] += cr_[i] as f64 * pr[i] as f64;
        }
        for (g, &v) in acc.iter().enumerate() {
            add(r, g, v);
        }
    }
}

/// `sᵀ A s - 2 bᵀ s`: the row's error up to the constant `w H wᵀ`.
fn quadratic(a: &[f64], b: &[f64], s: &[f64]) -> f64 {
    let n = s.len();
    let mut v = 0.0;
    for g in 0..n {
        let row: f64 = (0..n).map(|h| a[g * n + h] * s[h]).sum();
        v += s[g] * row - 2.0 * b[g] * s[g];
    }
    v
}

/// Minimize `sᵀ A s - 2 bᵀ s` over the groups with signal (`A_gg > 0`), the others held
/// at `old`; `None` when the reduced system is not positive definite.
fn solve_row(a: &[f64], b: &[f64], old: &[f64]) -> Option<Vec<f64>> {
    let n = old.len();
    let max_diag = (0..n).map(|g| a[g * n + g]).fold(0.0f64, f64::max);
    if max_diag <= 0.0 {
        return None;
    }
    let active: Vec<usize> = (0..n).filter(|&g| a[g * n + g] > 1e-12 * max_diag).collect();
    let m = active.len();
    // Reduced system: A_aa s_a = b_a - A_af s_f, by faer's Cholesky.
    let a_aa = Mat::<f64>::from_fn(m, m, |i, j| a[active[i] * n + active[j]]);
    let rhs = Col::<f64>::from_fn(m, |i| {
        let g = active[i];
        b[g] - (0..n).filter(|h| !active.contains(h)).map(|h| a[g * n + h] * old[h]).sum::<f64>()
    });
    let sol = a_aa.llt(Side::Lower).ok()?.solve(&rhs);
    let mut s = old.to_vec();
    for (i, &g) in active.iter().enumerate() {
        s[g] = sol[i];
    }
    s.iter().all(|v| v.is_finite()).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calib::hessian::HessianAccumulator;
    use crate::format::scheme::QuantScheme;
    use crate::quant::rtn::quantize_rtn;
    use rand::{Rng, SeedableRng};

    /// Weights `[rows, cols]` with an outlier row entry, and `2/n XᵀX` of correlated
    /// inputs with an outlier channel and (if `dead`) an always-zero channel.
    fn layer(seed: u64, rows: usize, cols: usize, dead: Option<usize>) -> (Vec<f32>, Vec<f32>) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut w: Vec<f32> = (0..rows * cols).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        if rows > 0 {
            w[cols / 2] = 6.0;
        }
        let tokens = 4 * cols;
        let mut x: Vec<f32> = (0..tokens * cols).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        for t in 0..tokens {
            let base = x[t * cols];
            for c in 0..cols {
                x[t * cols + c] += 0.7 * base;
            }
            x[t * cols + 1] *= 8.0;
            if let Some(d) = dead {
                x[t * cols + d] = 0.0;
            }
        }
        let mut acc = HessianAccumulator::new(cols);
        acc.add_batch(&x, tokens);
        (w, acc.hessian())
    }

    /// `Σ_r (w_r - q_r) H (w_r - q_r)ᵀ / 2`, plainly.
    fn error(t: &QuantizedTensor, w: &[f32], h: &[f32]) -> f64 {
        let q = t.dequantize();
        let cols = t.cols;
        let mut total = 0.0f64;
        for r in 0..t.rows {
            let d: Vec<f64> = (0..cols).map(|c| (w[r * cols + c] - q[r * cols + c]) as f64).collect();
            for i in 0..cols {
                for j in 0..cols {
                    total += d[i] * h[i * cols + j] as f64 * d[j];
                }
            }
        }
        total / 2.0
    }

    /// The row's optimal scales by explicit sums over columns (no GEMM, no chunking).
    fn naive_optimum(t: &QuantizedTensor, w: &[f32], h: &[f32], r: usize) -> Vec<f64> {
        let (cols, groups) = (t.cols, t.groups_per_row());
        let cg = t.column_groups();
        let zeros = t.zeros.as_ref().unwrap();
        let c: Vec<f64> =
            (0..cols).map(|i| t.codes[r * cols + i] as f64 - zeros[t.param_index(r, cg[i] as usize)] as f64).collect();
        let mut a = vec![0.0f64; groups * groups];
        let mut b = vec![0.0f64; groups];
        for i in 0..cols {
            for j in 0..cols {
                let hij = h[i * cols + j] as f64;
                a[cg[i] as usize * groups + cg[j] as usize] += c[i] * hij * c[j];
                b[cg[i] as usize] += c[i] * hij * w[r * cols + j] as f64;
            }
        }
        let old: Vec<f64> = (0..groups).map(|g| t.scales[t.param_index(r, g)] as f64).collect();
        solve_row(&a, &b, &old).unwrap()
    }

    fn int4_asym() -> QuantScheme {
        QuantScheme::int(4).unwrap().asymmetric().unwrap()
    }

    #[test]
    fn refit_lowers_the_error_and_reports_it_exactly() {
        let schemes = [
            int4_asym().group(32).unwrap(),
            int4_asym().per_channel(),
            QuantScheme::int(3).unwrap().group(48).unwrap(),
        ];
        for (k, scheme) in schemes.into_iter().enumerate() {
            // Odd shapes: a partial last group, a row count that is not a chunk multiple.
            let (rows, cols) = (70, 100);
            let (w, h) = layer(k as u64, rows, cols, Some(7));
            let mut t = quantize_rtn("test", &w, rows, cols, scheme, None).unwrap();
            let before = error(&t, &w, &h);
            let stats = refit_scales(&mut t, &w, &h);
            let after = error(&t, &w, &h);
            assert!(after < 0.9 * before, "{scheme}: refit {before} -> {after}");
            assert!(stats.rows_changed > rows / 2, "{scheme}: {} rows changed", stats.rows_changed);
            for (got, want) in [(stats.error_before, before), (stats.error_after, after)] {
                assert!((got - want).abs() <= 1e-3 * want, "{scheme}: reported {got}, direct {want}");
            }
            assert!(t.scales.iter().all(|&s| s > 0.0 && s == f16_round(s)), "{scheme}: scales must stay positive f16");
        }
    }

    #[test]
    fn refit_matches_the_plain_normal_equations() {
        let scheme = int4_asym().group(16).unwrap();
        let (rows, cols) = (5, 40);
        let (w, h) = layer(11, rows, cols, None);
        let mut t = quantize_rtn("test", &w, rows, cols, scheme, None).unwrap();
        let reference: Vec<Vec<f64>> = (0..rows).map(|r| naive_optimum(&t, &w, &h, r)).collect();
        refit_scales(&mut t, &w, &h);
        for (r, want) in reference.iter().enumerate() {
            for (g, &s) in want.iter().enumerate() {
                let got = t.scales[t.param_index(r, g)];
                // Same optimum, rounded to f16: within one f16 step.
                assert!((got as f64 - s).abs() <= s.abs() * 2f64.powi(-10), "row {r} group {g}: {got} vs {s}");
            }
        }
    }

    #[test]
    fn refit_follows_g_idx_and_keeps_silent_groups() {
        let scheme = int4_asym().group(10).unwrap();
        let (rows, cols) = (9, 30);
        let (w, h) = layer(3, rows, cols, None);
        // Act-order style scattered groups: column c belongs to group (7c mod 30) / 10.
        // Quantize the columns in group order, then put codes back in original order.
        let g_idx: Vec<u32> = (0..cols).map(|c| ((7 * c) % cols / 10) as u32).collect();
        let mut order: Vec<usize> = (0..cols).collect();
        order.sort_by_key(|&c| g_idx[c]);
        let w_grouped: Vec<f32> = (0..rows * cols).map(|k| w[k / cols * cols + order[k % cols]]).collect();
        let mut t = quantize_rtn("test", &w_grouped, rows, cols, scheme, None).unwrap();
        let grouped_codes = t.codes.clone();
        for r in 0..rows {
            for (k, &c) in order.iter().enumerate() {
                t.codes[r * cols + c] = grouped_codes[r * cols + k];
            }
        }
        t.g_idx = Some(g_idx);
        let rtn_error = error(&t, &w, &h);
        // Row 0, group 1: every code at the zero point, so the group has no signal.
        let z = t.zeros.as_ref().unwrap()[t.param_index(0, 1)];
        for c in 0..cols {
            if t.column_groups()[c] == 1 {
                t.codes[c] = z;
            }
        }
        let kept = t.scales[t.param_index(0, 1)];
        let before = error(&t, &w, &h);
        assert!(before > rtn_error, "zeroing a group's codes must cost something");
        let reference: Vec<Vec<f64>> = (0..rows).map(|r| naive_optimum(&t, &w, &h, r)).collect();
        refit_scales(&mut t, &w, &h);
        assert!(error(&t, &w, &h) < before);
        assert_eq!(t.scales[t.param_index(0, 1)], kept, "a group without signal keeps its scale");
        for (r, want) in reference.iter().enumerate() {
            for (g, &s) in want.iter().enumerate() {
                let got = t.scales[t.param_index(r, g)] as f64;
                assert!((got - s).abs() <= s.abs() * 2f64.powi(-10), "row {r} group {g}: {got} vs {s}");
            }
        }
    }

    #[test]
    fn refit_leaves_zero_rows_zero_hessians_and_fp8_alone() {
        let scheme = int4_asym().group(8).unwrap();
        let (rows, cols) = (3, 16);
        let w = vec![0.0f32; rows * cols];
        let (_, h) = layer(5, rows, cols, None);
        let mut t = quantize_rtn("test", &w, rows, cols, scheme, None).unwrap();
        let scales = t.scales.clone();
        let stats = refit_scales(&mut t, &w, &h);
        assert_eq!(t.scales, scales);
        assert_eq!(stats.rows_changed, 0);
        let (w, _) = layer(6, rows, cols, None);
        let mut t = quantize_rtn("test", &w, rows, cols, scheme, None).unwrap();
        let scales = t.scales.clone();
        refit_scales(&mut t, &w, &vec![0.0; cols * cols]);
        assert_eq!(t.scales, scales, "no calibration signal: nothing to fit");
        let mut e = t.clone();
        e.rows = 0;
        e.codes.clear();
        e.scales.clear();
        e.zeros = Some(vec![]);
        assert_eq!(refit_scales(&mut e, &[], &vec![0.0; cols * cols]), RefitStats::default());
    }

    #[test]
    fn refit_is_the_same_bits_with_one_and_two_threads() {
        let scheme = int4_asym().group(32).unwrap();
        let (rows, cols) = (150, 96);
        let (w, h) = layer(9, rows, cols, Some(3));
        let t0 = quantize_rtn("test", &w, rows, cols, scheme, None).unwrap();
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let mut t = t0.clone();
            pool.install(|| refit_scales(&mut t, &w, &h));
            t.scales
        };
        assert_eq!(run(1), run(2));
    }
}
