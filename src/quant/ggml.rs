//! Solving rows onto ggml block grids (Q8_0, Q4_0 … Q6_K), weighted by an importance
//! per input column, as llama.cpp's `quantize_row_*_impl` do with an imatrix.
//!
//! The searches follow `ggml-quants.c`: symmetric sub-blocks by `make_qx_quants`
//! (scales `-(nmax + 0.1·i)/max` for `i` in `-9..=9`, each refit by weighted least
//! squares, the best kept), affine ones by `make_qkx3_quants` (`nstep` shifted inverse
//! scales, scale and min refit jointly, the min kept `<= 0`); element weights
//! `importance[c] · sqrt(σ² + w²)` with `σ²` the row's mean square, as the `*_impl`
//! functions compute them from an imatrix (importance 1 without one). The k-quants'
//! sub-block scales are then quantized to their super-block's 6 or 8 bits, and every code
//! is the nearest point of the final grid (what GPTQ's static groups also round to).

use crate::error::{Error, Result};
use crate::format::ggml::encode::{is_symmetric, maxq, sub_block, BlockHeader};
use crate::format::ggml::GgmlType;
use crate::format::{GgmlParams, QuantScheme, QuantizedTensor};
use half::f16;
use rayon::prelude::*;

/// The grid of one row: a header per block, `(scale, offset)` per sub-block.
#[derive(Clone, Debug, Default)]
pub struct RowGrid {
    pub headers: Vec<BlockHeader>,
    pub scales: Vec<f32>,
    pub offsets: Vec<f32>,
}

/// Nearest code of `w` on `scale · u + offset`, `u` in `0..=maxq` (0 on a zero scale).
#[inline]
pub fn nearest_code(w: f32, scale: f32, offset: f32, maxq: f32) -> u8 {
    if scale == 0.0 {
        return 0;
    }
    ((w - offset) / scale).round().clamp(0.0, maxq) as u8
}

/// Solve `row` (`cols` a multiple of `ty.block_size()`) with per-column `importance`
/// (`None`: all 1).
pub fn solve_row(ty: GgmlType, row: &[f32], importance: Option<&[f32]>) -> RowGrid {
    let sigma2 = mean_square(row);
    let weights: Vec<f32> =
        row.iter().enumerate().map(|(c, &x)| element_weight(importance.map_or(1.0, |i| i[c]), sigma2, x)).collect();
    let qk = ty.block_size();
    let mut grid = RowGrid::default();
    for (x, w) in row.chunks_exact(qk).zip(weights.chunks_exact(qk)) {
        let h = solve_block(ty, x, w);
        for j in 0..qk / sub_block(ty) {
            let (s, o) = h.grid(ty, j);
            grid.scales.push(s);
            grid.offsets.push(o);
        }
        grid.headers.push(h);
    }
    grid
}

/// The row's mean square `σ²` of the element weights.
pub fn mean_square(row: &[f32]) -> f32 {
    row.iter().map(|&x| x * x).sum::<f32>() / row.len().max(1) as f32
}

/// The weight of one element in the block searches: `importance · sqrt(σ² + x²)`.
#[inline]
pub fn element_weight(importance: f32, sigma2: f32, x: f32) -> f32 {
    importance.max(0.0) * (sigma2 + x * x).sqrt()
}

/// Refuse a width that is not a whole number of `ty`'s blocks, naming the tensor.
pub fn check_width(name: &str, ty: GgmlType, cols: usize) -> Result<()> {
    if !cols.is_multiple_of(ty.block_size()) {
        return Err(Error::tensor(
            name,
            format!("{cols} input columns are not a multiple of {ty}'s block of {} values", ty.block_size()),
        ));
    }
    Ok(())
}

/// Round-to-nearest onto `ty`'s grids, each row solved with per-column `importance`
/// (`[cols]`, e.g. the Hessian diagonal; `None`: all 1). Deterministic for any number
/// of threads (rows are independent).
pub fn quantize_tensor(
    name: &str,
    weight: &[f32],
    rows: usize,
    cols: usize,
    ty: GgmlType,
    importance: Option<&[f32]>,
) -> Result<QuantizedTensor> {
    let scheme = QuantScheme::ggml(ty)?;
    check_width(name, ty, cols)?;
    crate::quant::rtn::check_finite(name, weight, cols)?;
    let solved: Vec<(RowGrid, Vec<u8>)> = (0..rows)
        .into_par_iter()
        .map(|r| {
            let row = &weight[r * cols..(r + 1) * cols];
            let grid = solve_row(ty, row, importance);
            let codes = codes_on(ty, row, &grid);
            (grid, codes)
        })
        .collect();
    Ok(assemble(scheme, rows, cols, solved))
}

/// One tensor from its rows' grids and codes.
pub fn assemble(scheme: QuantScheme, rows: usize, cols: usize, solved: Vec<(RowGrid, Vec<u8>)>) -> QuantizedTensor {
    let (mut codes, mut scales) = (Vec::with_capacity(rows * cols), vec![]);
    let (mut headers, mut offsets) = (vec![], vec![]);
    for (g, c) in solved {
        codes.extend_from_slice(&c);
        scales.extend_from_slice(&g.scales);
        offsets.extend_from_slice(&g.offsets);
        headers.extend_from_slice(&g.headers);
    }
    QuantizedTensor {
        scheme,
        rows,
        cols,
        codes,
        scales,
        zeros: None,
        g_idx: None,
        ggml: Some(GgmlParams { headers, offsets }),
    }
}

/// Codes of `row` on `grid` (nearest points).
pub fn codes_on(ty: GgmlType, row: &[f32], grid: &RowGrid) -> Vec<u8> {
    let (sb, mq) = (sub_block(ty), maxq(ty) as f32);
    row.iter().enumerate().map(|(c, &w)| nearest_code(w, grid.scales[c / sb], grid.offsets[c / sb], mq)).collect()
}

/// The header of one block of values `x` with element weights `w` ([`element_weight`]).
pub fn solve_block(ty: GgmlType, x: &[f32], w: &[f32]) -> BlockHeader {
    let mut h = BlockHeader::default();
    match ty {
        GgmlType::Q8_0 => {
            let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            h.d = f16::from_f32(amax / 127.0);
        }
        GgmlType::Q4_0 | GgmlType::Q5_0 => {
            let nmax = if ty == GgmlType::Q4_0 { 8 } else { 16 };
            h.d = f16::from_f32(search_symmetric(x, w, nmax));
        }
        GgmlType::Q4_1 | GgmlType::Q5_1 => {
            let (scale, min) = search_affine(x, w, maxq(ty));
            h.d = f16::from_f32(scale);
            h.dmin = f16::from_f32(min);
        }
        GgmlType::Q4_K | GgmlType::Q5_K => affine_super_block(&mut h, x, w, 32, maxq(ty), 63.0),
        // The scale of largest magnitude maps to -128 (`quantize_row_q6_K_ref`).
        GgmlType::Q6_K => symmetric_super_block(&mut h, x, w, 32, 128.0, 0.0),
        // ... to -32, stored +32 (`quantize_row_q3_K_ref`).
        GgmlType::Q3_K => symmetric_super_block(&mut h, x, w, 4, 32.0, 32.0),
        GgmlType::Q2_K => affine_super_block(&mut h, x, w, 16, 3, 15.0),
        _ => unreachable!("{ty} is not a writable block type"),
    }
    debug_assert_eq!(
        is_symmetric(ty),
        !matches!(ty, GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q2_K)
    );
    h
}

/// A k-quant super-block of affine sub-blocks (Q4_K, Q5_K: 8 of 32; Q2_K: 16 of 16): each
/// sub-block's `(scale, min)` searched, then quantized to `levels` steps of `d = max / levels`
/// and `dmin` (`quantize_row_q4_K_ref`, `quantize_row_q2_K_ref`).
fn affine_super_block(h: &mut BlockHeader, x: &[f32], w: &[f32], sub: usize, nmax: u32, levels: f32) {
    let n = x.len() / sub;
    let (mut scales, mut mins) = ([0f32; 16], [0f32; 16]);
    for j in 0..n {
        let (s, m) = search_affine(&x[sub * j..sub * (j + 1)], &w[sub * j..sub * (j + 1)], nmax);
        scales[j] = s;
        mins[j] = -m; // >= 0
    }
    let max_scale = scales[..n].iter().fold(0.0f32, |a, &b| a.max(b));
    let max_min = mins[..n].iter().fold(0.0f32, |a, &b| a.max(b));
    h.d = f16::from_f32(max_scale / levels);
    h.dmin = f16::from_f32(max_min / levels);
    let (d, dmin) = (h.d.to_f32(), h.dmin.to_f32());
    for j in 0..n {
        h.sc[j] = if d > 0.0 { (scales[j] / d).round().clamp(0.0, levels) as u8 } else { 0 };
        h.m[j] = if dmin > 0.0 { (mins[j] / dmin).round().clamp(0.0, levels) as u8 } else { 0 };
    }
}

/// A k-quant super-block of 16 symmetric sub-blocks of 16 (Q6_K: codes `-32..32`, i8
/// scales; Q3_K: codes `-4..4`, 6-bit scales stored `+ bias`): the scale of largest
/// magnitude maps to `-top`, the others round to the nearest step in `-top..top`.
fn symmetric_super_block(h: &mut BlockHeader, x: &[f32], w: &[f32], nmax: i32, top: f32, bias: f32) {
    let mut scales = [0f32; 16];
    for (j, s) in scales.iter_mut().enumerate() {
        *s = search_symmetric(&x[16 * j..16 * (j + 1)], &w[16 * j..16 * (j + 1)], nmax);
    }
    let max = scales.iter().fold(0.0f32, |a, &b| if b.abs() > a.abs() { b } else { a });
    h.d = f16::from_f32(max / -top);
    let d = h.d.to_f32();
    for j in 0..16 {
        h.sc[j] =
            if d != 0.0 { ((scales[j] / d).round().clamp(-top, top - 1.0) + bias) as i8 as u8 } else { bias as u8 };
    }
}

/// `make_qx_quants(n, nmax, x, L, rmse_type = 1, weights)`: the scale `d` of codes
/// `l` in `-nmax..nmax` minimizing `Σ w (x - d·l)²` over the candidate set. The value of
/// largest magnitude sets the sign (`d = max / -nmax` first).
fn search_symmetric(x: &[f32], w: &[f32], nmax: i32) -> f32 {
    let max = x.iter().fold(0.0f32, |a, &b| if b.abs() > a.abs() { b } else { a });
    if max.abs() < 1e-30 {
        return 0.0;
    }
    let fit = |iscale: f32| -> (f32, f32) {
        let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
        for (&xi, &wi) in x.iter().zip(w) {
            let l = (iscale * xi).round().clamp(-nmax as f32, (nmax - 1) as f32);
            sumlx += wi * xi * l;
            suml2 += wi * l * l;
        }
        (sumlx, suml2)
    };
    let (sumlx, suml2) = fit(-(nmax as f32) / max);
    let mut scale = if suml2 > 0.0 { sumlx / suml2 } else { max / -(nmax as f32) };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        let (sumlx, suml2) = fit(-(nmax as f32 + 0.1 * is as f32) / max);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// `make_qkx3_quants(n, nmax, x, weights, …, rmin = -0.9, rdelta = 0.05, nstep = 36)`:
/// `(scale, min)` with `x ≈ scale · l + min`, `l` in `0..=nmax`, `min <= 0`.
fn search_affine(x: &[f32], w: &[f32], nmax: u32) -> (f32, f32) {
    let nmax = nmax as f32;
    let mut min = x.iter().fold(f32::INFINITY, |a, &b| a.min(b));
    let max = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    if min > 0.0 {
        min = 0.0;
    }
    if max <= min {
        return (0.0, min);
    }
    let (sum_w, sum_x) = x.iter().zip(w).fold((0.0f32, 0.0f32), |(a, b), (&xi, &wi)| (a + wi, b + wi * xi));
    let error = |scale: f32, min: f32, iscale: f32| -> f32 {
        x.iter()
            .zip(w)
            .map(|(&xi, &wi)| {
                let l = (iscale * (xi - min)).round().clamp(0.0, nmax);
                let d = scale * l + min - xi;
                wi * d * d
            })
            .sum()
    };
    let iscale = nmax / (max - min);
    let (mut best_scale, mut best_min) = (1.0 / iscale, min);
    let mut best = error(best_scale, best_min, iscale);
    for is in 0..=36 {
        let iscale = (-0.9 + 0.05 * is as f32 + nmax) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for (&xi, &wi) in x.iter().zip(w) {
            let l = (iscale * (xi - min)).round().clamp(0.0, nmax);
            sum_l += wi * l;
            sum_l2 += wi * l * l;
            sum_xl += wi * l * xi;
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det <= 0.0 {
            continue;
        }
        let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
        let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
        if this_min > 0.0 {
            this_min = 0.0;
            this_scale = if sum_l2 > 0.0 { sum_xl / sum_l2 } else { 0.0 };
        }
        if this_scale.is_nan() || this_scale <= 0.0 {
            continue;
        }
        // The codes of this candidate on its own refit grid.
        let e = x
            .iter()
            .zip(w)
            .map(|(&xi, &wi)| {
                let l = ((xi - this_min) / this_scale).round().clamp(0.0, nmax);
                let d = this_scale * l + this_min - xi;
                wi * d * d
            })
            .sum::<f32>();
        if e < best {
            best = e;
            best_scale = this_scale;
            best_min = this_min;
        }
    }
    (best_scale, best_min)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::ggml::encode::{encode_row, WRITABLE};
    use crate::format::ggml::{dequantize, QK_K};
    use rand::{Rng, SeedableRng};

    fn rows(rng: &mut impl Rng, cols: usize) -> Vec<Vec<f32>> {
        let normal = |rng: &mut dyn rand::RngCore| {
            (0..cols).map(|_| rng.random_range(-1.0f32..1.0) + rng.random_range(-1.0f32..1.0)).collect::<Vec<f32>>()
        };
        let mut out = vec![vec![0.0; cols], normal(rng)];
        let mut outlier = normal(rng);
        outlier[3] = 40.0;
        outlier[cols - 1] = -25.0;
        out.push(outlier);
        out.push((0..cols).map(|c| c as f32 * 1e-3).collect()); // all positive
        out.push(normal(rng).iter().map(|v| v * 1e-2).collect()); // small (f16 scales stay normal)
        out
    }

    /// The solved grid, encoded and dequantized by the ggml reference, is the grid; its
    /// error is within what the type can do (half a step of the round-to-nearest scale).
    #[test]
    fn solved_rows_round_trip_and_are_close() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let cols = 2 * QK_K;
        for ty in WRITABLE {
            for (k, row) in rows(&mut rng, cols).into_iter().enumerate() {
                let imp: Vec<f32> = (0..cols).map(|_| rng.random_range(0.0f32..4.0)).collect();
                for importance in [None, Some(&imp[..])] {
                    let grid = solve_row(ty, &row, importance);
                    let codes = codes_on(ty, &row, &grid);
                    let mut bytes = vec![];
                    encode_row(ty, &grid.headers, &codes, &mut bytes);
                    assert_eq!(bytes.len(), cols / ty.block_size() * ty.type_size());
                    let y = dequantize(ty, &bytes, cols).unwrap();
                    let sb = sub_block(ty);
                    for c in 0..cols {
                        let g = c / sb;
                        let want = grid.scales[g] * codes[c] as f32 + grid.offsets[g];
                        assert_eq!(want, y[c], "{ty} row {k} col {c}");
                    }
                    let amax = row.iter().fold(0.0f32, |a, b| a.max(b.abs()));
                    let worst = row.iter().zip(&y).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
                    // A 4-bit grid over [-amax, amax] has steps of amax/7.5; the searches
                    // may clip an outlier by a few steps.
                    let bound = 2.0 * amax / maxq(ty) as f32 * 4.0 + 1e-7;
                    assert!(worst <= bound.max(amax * 0.6), "{ty} row {k}: error {worst} amax {amax}");
                    if k == 0 {
                        assert!(y.iter().all(|&v| v == 0.0), "{ty}: a zero row stays zero");
                    }
                }
            }
        }
    }

    /// Importance moves the error to the unimportant columns.
    #[test]
    fn importance_lowers_the_weighted_error() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let cols = QK_K;
        for ty in [GgmlType::Q4_0, GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::Q5_1] {
            let (mut with, mut without) = (0.0f64, 0.0f64);
            for _ in 0..50 {
                let row: Vec<f32> = (0..cols).map(|_| rng.random_range(-1.0f32..1.0).powi(3)).collect();
                let imp: Vec<f32> = (0..cols).map(|c| if c % 7 == 0 { 50.0 } else { 0.1 }).collect();
                let err = |g: &RowGrid| -> f64 {
                    let codes = codes_on(ty, &row, g);
                    let sb = sub_block(ty);
                    (0..cols)
                        .map(|c| {
                            let q = g.scales[c / sb] * codes[c] as f32 + g.offsets[c / sb];
                            imp[c] as f64 * ((row[c] - q) as f64).powi(2)
                        })
                        .sum()
                };
                with += err(&solve_row(ty, &row, Some(&imp)));
                without += err(&solve_row(ty, &row, None));
            }
            assert!(with < without, "{ty}: weighted error {with} with importance, {without} without");
        }
    }
}
