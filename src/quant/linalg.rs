//! Linear algebra behind GPTQ: the upper Cholesky factor of the inverse Hessian (the
//! Hessian itself is accumulated by [`crate::calib::hessian`]). The math backend (faer 0.24) stays behind these functions.
//!
//! Sources: IST-DASLab/gptq `gptq.py` (`add_batch`: running mean `H = 2/n Σ xᵀx`;
//! `fasterquant`: `H = cholesky(H); H = cholesky_inverse(H); H = cholesky(H, upper=True)`).
//!
//! Determinism: the triangular inverse runs with `Par::Seq` on a partition of the output
//! that depends on the shapes only; the Cholesky factorization runs in faer's parallel
//! mode (rayon), whose blocking depends on the shape only: it gives the sequential
//! factorization's bits for 1 to 4 threads (`parallel_factorization_gives_the_sequential_bits`,
//! also checked once at n = 3001), so results are the same whatever the size of the pool.

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::cholesky::llt::factor::{cholesky_in_place, cholesky_in_place_scratch};
use faer::linalg::triangular_solve::solve_lower_triangular_in_place;
use faer::{Mat, MatRef, Par};
use rayon::prelude::*;

/// Columns of `M⁻¹` solved per task in [`cholesky_inverse_upper`] (fixed partition).
const INVERSE_PANEL: usize = 64;

/// Why [`cholesky_inverse_upper`] could not factor a matrix.
#[derive(Clone, Copy, Debug, PartialEq, thiserror::Error)]
pub enum LinalgError {
    /// The Cholesky factorization met a non-positive pivot: the (damped) matrix is
    /// not positive definite. `index` is in the original (unreversed) order.
    #[error("matrix not positive definite (non-positive pivot at column {index})")]
    NotPositiveDefinite { index: usize },
    /// The factor of the inverse holds NaN/Inf (an overflow in a near-singular matrix).
    #[error("inverse factor is not finite (matrix nearly singular)")]
    NonFinite,
}

/// Upper Cholesky factor `U` of `(H + damp·I)⁻¹` (so `Uᵀ U = (H + damp·I)⁻¹`), `h`:
/// `[n, n]` symmetric (the lower triangle is read). This is the `Hinv` of `gptq.py`.
///
/// Computed in f64 with one Cholesky and one triangular inverse instead of the
/// reference's three f32 steps (f64 so that a damped but ill-conditioned Hessian still
/// gives an accurate factor): with `J` the order reversal and `J H J = M Mᵀ`,
/// `H⁻¹ = J M⁻ᵀ M⁻¹ J = Uᵀ U` with `U = J M⁻¹ J` upper triangular with a positive
/// diagonal, which is the unique upper Cholesky factor of `H⁻¹`.
pub fn cholesky_inverse_upper(h: MatRef<'_, f32>, damp: f64) -> Result<Mat<f32>, LinalgError> {
    cholesky_inverse_upper_with(h, damp, crate::model::linear::par())
}

/// [`cholesky_inverse_upper`] with the factorization run with `par`.
pub fn cholesky_inverse_upper_with(h: MatRef<'_, f32>, damp: f64, par: Par) -> Result<Mat<f32>, LinalgError> {
    assert_eq!(h.ncols(), h.nrows(), "cholesky_inverse_upper: H must be square");
    cholesky_inverse_upper_of(h.nrows(), |r, c| h[(r, c)], damp, par)
}

/// [`cholesky_inverse_upper`] of the `n x n` symmetric matrix whose entry `(r, c)`,
/// `r >= c`, is `entry(r, c)` (the lower triangle is read, one row `r` at a time): no f32
/// copy of the matrix is needed (GPTQ reads its permuted Hessian through the permutation,
/// straight from the accumulator). Memory while it runs: the f64 factor (8 bytes per
/// entry), the f32 result (4) and one f64 panel of [`INVERSE_PANEL`] columns per thread.
pub fn cholesky_inverse_upper_of(
    n: usize,
    entry: impl Fn(usize, usize) -> f32 + Sync,
    damp: f64,
    par: Par,
) -> Result<Mat<f32>, LinalgError> {
    if n == 0 {
        return Ok(Mat::zeros(0, 0));
    }
    // A = J (H + damp I) J, lower triangle: A[i][j] = H[n-1-i][n-1-j] = entry(n-1-j, n-1-i)
    // for i >= j, so column j of A reads row n-1-j of H. Columns filled in parallel.
    let mut a = Mat::<f64>::zeros(n, n);
    a.par_col_chunks_mut(INVERSE_PANEL).enumerate().for_each(|(p, mut cols)| {
        for k in 0..cols.ncols() {
            let j = p * INVERSE_PANEL + k;
            let r = n - 1 - j;
            for i in j..n {
                cols[(i, k)] = entry(r, n - 1 - i) as f64;
            }
            cols[(j, k)] += damp;
        }
    });
    let mut mem = MemBuffer::new(cholesky_in_place_scratch::<f64>(n, par, Default::default()));
    cholesky_in_place(a.as_mut(), Default::default(), par, MemStack::new(&mut mem), Default::default()).map_err(
        |e| match e {
            faer::linalg::cholesky::llt::factor::LltError::NonPositivePivot { index } => {
                LinalgError::NotPositiveDefinite { index: n - 1 - index }
            }
        },
    )?;
    // U = J M⁻¹ J, U[i][j] = M⁻¹[n-1-i][n-1-j]: column j of U is column n-1-j of M⁻¹
    // reversed. M⁻¹ is solved in fixed panels of columns [p·P, p·P + w) (a partition that
    // depends on n only), M[j0.., j0..] Y = [I; 0], each panel in parallel into its own
    // f64 scratch and written at once into the U columns it gives, [n - j0 - w, n - j0).
    let m = a.as_ref();
    let mut u = Mat::<f32>::zeros(n, n);
    let mut u_panels = Vec::with_capacity(n.div_ceil(INVERSE_PANEL));
    let mut rest = u.as_mut();
    for j0 in (0..n).step_by(INVERSE_PANEL) {
        let w = INVERSE_PANEL.min(n - j0);
        let (left, right) = rest.split_at_col_mut(n - j0 - w);
        u_panels.push((j0, right));
        rest = left;
    }
    u_panels.into_par_iter().try_for_each(|(j0, mut cols)| {
        let w = cols.ncols();
        let mut y = Mat::<f64>::zeros(n - j0, w);
        for k in 0..w {
            y[(k, k)] = 1.0;
        }
        solve_lower_triangular_in_place(m.submatrix(j0, j0, n - j0, n - j0), y.as_mut(), Par::Seq);
        // U column c = n-1-(j0+k) holds M⁻¹[n-1-i][j0+k] for i <= c, i.e. y[n-1-i-j0][k].
        for k in 0..w {
            let (c, uk) = (n - 1 - (j0 + k), w - 1 - k);
            for i in 0..=c {
                let v = y[(n - 1 - i - j0, k)] as f32;
                if !v.is_finite() {
                    return Err(LinalgError::NonFinite);
                }
                cols[(i, uk)] = v;
            }
        }
        Ok(())
    })?;
    Ok(u)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calib::hessian::HessianAccumulator;
    use rand::{Rng, SeedableRng};

    /// f32 accumulation over a few hundred tokens against an f64 sum: relative to the
    /// largest diagonal entry, the error is a few f32 ulps times √tokens.
    const HESSIAN_REL_TOL: f64 = 2e-6;
    /// `Uᵀ U (H + dI)` against the identity for a well-conditioned H (f32 output).
    const INVERSE_TOL: f64 = 1e-4;

    fn random(rng: &mut impl Rng, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    #[test]
    fn accumulator_matches_direct_f64_mean() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let cols = 300; // two tiles, the second partial
        let mut batches = Vec::new();
        for &t in &[37usize, 0, 200, 64] {
            let mut x = random(&mut rng, t * cols);
            for r in 0..t {
                x[r * cols + 3] *= 20.0; // an outlier channel
                x[r * cols + 7] = 0.0; // a dead channel
            }
            batches.push((x, t));
        }
        let accumulate = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let mut acc = HessianAccumulator::new(cols);
                batches.iter().for_each(|(x, t)| acc.add_batch(x, *t));
                acc
            })
        };
        let acc = accumulate(2);
        assert_eq!(acc.hessian(), accumulate(1).hessian(), "thread count changed the bits");
        let all: Vec<f32> = batches.iter().flat_map(|(x, _)| x.iter().copied()).collect();
        let n = all.len() / cols;
        assert_eq!(acc.n_samples(), n);
        let h = acc.hessian();
        let mut max_diag = 0.0f64;
        let mut reference = vec![0.0f64; cols * cols];
        for i in 0..cols {
            for j in 0..cols {
                let s: f64 = (0..n).map(|t| all[t * cols + i] as f64 * all[t * cols + j] as f64).sum();
                reference[i * cols + j] = 2.0 * s / n as f64;
            }
            max_diag = max_diag.max(reference[i * cols + i]);
        }
        for (k, (&a, &b)) in h.iter().zip(&reference).enumerate() {
            assert!((a as f64 - b).abs() <= HESSIAN_REL_TOL * max_diag, "H[{k}]: {a} vs {b}");
        }
        assert_eq!(h[7 * cols + 7], 0.0);
        for i in 0..cols {
            for j in 0..cols {
                assert_eq!(h[i * cols + j], h[j * cols + i], "not symmetric at {i},{j}");
            }
        }
    }

    #[test]
    fn upper_factor_of_inverse_is_correct() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
        let (n, t) = (70, 300);
        let mut acc = HessianAccumulator::new(n);
        acc.add_batch(&random(&mut rng, t * n), t);
        let h = acc.hessian();
        let damp = 0.01;
        let u = cholesky_inverse_upper(MatRef::from_column_major_slice(&h, n, n), damp).unwrap();
        for j in 0..n {
            assert!(u[(j, j)] > 0.0);
            for i in j + 1..n {
                assert_eq!(u[(i, j)], 0.0, "not upper at {i},{j}");
            }
        }
        // (Uᵀ U) (H + damp I) = I, in f64.
        let mut hinv = vec![0.0f64; n * n];
        for i in 0..n {
            for j in 0..n {
                hinv[i * n + j] = (0..n).map(|k| u[(k, i)] as f64 * u[(k, j)] as f64).sum();
            }
        }
        for i in 0..n {
            for j in 0..n {
                let p: f64 =
                    (0..n).map(|k| hinv[i * n + k] * (h[k * n + j] as f64 + if k == j { damp } else { 0.0 })).sum();
                let e = if i == j { 1.0 } else { 0.0 };
                assert!((p - e).abs() < INVERSE_TOL, "({i},{j}): {p}");
            }
        }
    }

    #[test]
    fn parallel_factorization_gives_the_sequential_bits() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        for n in [100usize, 517, 1300] {
            let x = random(&mut rng, 2 * n * n);
            // H = XᵀX / rows, well conditioned enough with a small damping.
            let mut h = Mat::<f32>::zeros(n, n);
            let xm = MatRef::from_row_major_slice(&x, 2 * n, n);
            faer::linalg::matmul::matmul(
                h.as_mut(),
                faer::Accum::Replace,
                xm.transpose(),
                xm,
                1.0 / (2 * n) as f32,
                Par::Seq,
            );
            let seq = cholesky_inverse_upper_with(h.as_ref(), 1e-3, Par::Seq).unwrap();
            for threads in [1usize, 2, 3, 4] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let par = pool.install(|| cholesky_inverse_upper_with(h.as_ref(), 1e-3, Par::rayon(threads)).unwrap());
                let same = (0..n).all(|j| (0..n).all(|i| seq[(i, j)].to_bits() == par[(i, j)].to_bits()));
                assert!(same, "n = {n}, {threads} threads: the parallel factor differs");
            }
        }
    }

    #[test]
    fn indefinite_matrix_is_refused_then_damping_fixes_it() {
        // diag(1, 2, -0.5): not PD; + 1.0 on the diagonal makes it PD.
        let h = [1.0f32, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, -0.5];
        let m = MatRef::from_column_major_slice(&h, 3, 3);
        let e = cholesky_inverse_upper(m, 0.0).unwrap_err();
        assert_eq!(e, LinalgError::NotPositiveDefinite { index: 2 });
        let u = cholesky_inverse_upper(m, 1.0).unwrap();
        assert!((u[(2, 2)] - (1.0f32 / 0.5).sqrt()).abs() < 1e-6);
    }
}
