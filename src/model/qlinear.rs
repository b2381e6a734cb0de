//! `QuantizedLinear`: a [`Linear`] whose weights stay packed in memory and are
//! dequantized tile by tile (never the whole matrix) inside the product.
//!
//! Resident layout, for `[rows = out, cols = in]` weights with `b`-bit codes:
//! - `words`: each row's codes packed on their own with [`PackRule::Stream`] (LSB first;
//!   3-bit codes cross words), `row_words = ceil(cols·b/32)` u32 per row; FP8 is `b = 8`
//!   (the raw FP8 bytes). Int4 g128 costs 0.5 B/weight + 4.03/128 B of scales and zeros.
//! - `scales`: f32 `[rows, groups]` (a per-tensor scale is repeated per row);
//!   `zeros`: u8 `[rows, groups]` for integer schemes; `g_idx` `[cols]` with act-order.
//!
//! Dequantization is exactly [`QuantizedTensor::dequantize_rows`]'s arithmetic
//! (`s · (q - z)` or `s · fp8(q)`), so this layer computes `x · Ŵᵀ` for the same `Ŵ`.
//! Forward: rayon over tiles of [`TILE_ROWS`] output rows; each tile is dequantized into a
//! thread-local f32 buffer, then multiplied with `matmul_xwt`. For up to [`DOT_MAX_TOKENS`]
//! tokens (decoding) no GEMM is set up: integer rows without act-order are never expanded,
//! `y = Σ_g s_g · (Σ_{c∈g} q_c·x_c − z_g · Σ_{c∈g} x_c)` with the group sums of `x` computed
//! once per call; FP8 and act-order rows are dequantized one at a time and dotted with `x`.
//! With [`QuantizedLinear::with_int8_dot`] (`--dot int8`) the inputs are first rounded to
//! int8 blocks ([`super::int8_dot`]): up to [`DOT_MAX_TOKENS`] tokens go through its integer
//! row kernels, more through the GEMM tiles on the rounded inputs (the same product).
//! Every output element is produced by one thread in a fixed order: deterministic.

use super::int8_dot::{round_rows, rows_dot_int8, Int8Input, TokenInput, INT8_DOT_ALIGN};
#[cfg(target_arch = "x86_64")]
use super::linear::sum_by_halves_m256;
use super::linear::{matmul_xwt, sum_by_halves, Linear};
use crate::error::{Error, Result};
use crate::format::fp8;
use crate::format::pack::{pack, packed_words, PackRule};
use crate::format::{Granularity, NumberFormat, QuantScheme, QuantizedTensor};
use rayon::prelude::*;
use std::cell::RefCell;
use std::ops::Range;
use std::thread::LocalKey;

/// Output rows dequantized at once: 64 rows × 4096 inputs × 4 B = 1 MiB, L2-sized.
pub const TILE_ROWS: usize = 64;
/// Rows a task of the one-token kernels takes: about 4 tasks a thread, so a small matrix
/// (a 192-row k_proj) still splits evenly; at least 8 rows.
fn one_token_rows(rows: usize) -> usize {
    rows.div_ceil(4 * rayon::current_num_threads()).max(8)
}

/// Up to this many tokens, rows are multiplied by dot products instead of a GEMM.
pub const DOT_MAX_TOKENS: usize = 4;

#[derive(Clone, Debug)]
pub struct QuantizedLinear {
    scheme: QuantScheme,
    rows: usize,
    cols: usize,
    words: Vec<u32>,
    row_words: usize,
    groups: usize,
    scales: Vec<f32>,
    zeros: Vec<u8>,
    g_idx: Option<Vec<u32>>,
    /// FP8 E4M3 codes with no NaN (`S.1111.111`), decodable by [`row_dot_e4m3`]'s bit trick.
    e4m3_finite: bool,
    /// Inputs rounded to int8 blocks and multiplied with the integer codes
    /// ([`super::int8_dot`], `--dot int8`), for every token count.
    int8_dot: bool,
}

/// Consecutive rows of a packed matrix, as the row kernels read them: `words`
/// `[rows, row_words]` (Stream-packed), `scales` / `zeros` `[rows, groups]`, contiguous
/// groups of `width` inputs.
#[derive(Clone, Copy)]
pub struct PackedRows<'a> {
    pub words: &'a [u32],
    pub row_words: usize,
    pub scales: &'a [f32],
    pub zeros: &'a [u8],
    pub groups: usize,
    pub width: usize,
}

impl<'a> PackedRows<'a> {
    /// Row `r`'s words, scales and zeros.
    #[inline(always)]
    pub fn row(&self, r: usize) -> (&'a [u32], &'a [f32], &'a [u8]) {
        let g = r * self.groups..(r + 1) * self.groups;
        (&self.words[r * self.row_words..(r + 1) * self.row_words], &self.scales[g.clone()], &self.zeros[g])
    }

    /// Rows `r0 .. r0 + n`.
    pub fn rows(&self, r0: usize, n: usize) -> Self {
        let g = r0 * self.groups..(r0 + n) * self.groups;
        Self {
            words: &self.words[r0 * self.row_words..(r0 + n) * self.row_words],
            scales: &self.scales[g.clone()],
            zeros: &self.zeros[g],
            ..*self
        }
    }
}

thread_local! {
    /// (dequantized tile, unpacked codes of one row)
    static SCRATCH: RefCell<(Vec<f32>, Vec<u8>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

impl QuantizedLinear {
    /// Pack `q` for inference. Errors (naming `name`) on inconsistent buffers.
    pub fn new(name: &str, q: &QuantizedTensor) -> Result<Self> {
        let (rows, cols) = (q.rows, q.cols);
        let bits = q.scheme.bits();
        let groups = q.groups_per_row();
        let n = match q.scheme.granularity {
            Granularity::PerTensor => 1,
            _ => rows * groups,
        };
        let bad = |m: String| Err(Error::tensor(name, m));
        if q.codes.len() != rows * cols || q.scales.len() != n {
            return bad(format!(
                "{} codes / {} scales for [{rows}, {cols}] in {}",
                q.codes.len(),
                q.scales.len(),
                q.scheme
            ));
        }
        if let Some(g) = &q.g_idx {
            if g.len() != cols || g.iter().any(|&v| v as usize >= groups) {
                return bad(format!(
                    "g_idx of {} entries for {cols} columns / {groups} groups, or out of range",
                    g.len()
                ));
            }
        }
        let maxq = q.scheme.maxq();
        if !q.scheme.is_fp8() {
            if let Some(i) = q.codes.iter().position(|&c| c as u32 > maxq) {
                return bad(format!("code {} at flat index {i} exceeds {bits} bits", q.codes[i]));
            }
        }
        let zeros = match (&q.scheme.format, &q.zeros) {
            (NumberFormat::Int { .. }, Some(z)) if z.len() == n => z.clone(),
            (NumberFormat::Int { .. }, z) => {
                return bad(format!("{} zero points, expected {n}", z.as_ref().map_or(0, Vec::len)))
            }
            _ => vec![],
        };
        // A per-tensor scale/zero is repeated per row, so every row indexes its own groups.
        let scales = if n == 1 { vec![q.scales[0]; rows * groups] } else { q.scales.clone() };
        let zeros = if n == 1 && !zeros.is_empty() { vec![zeros[0]; rows * groups] } else { zeros };
        let row_words = packed_words(cols, bits, PackRule::Stream);
        let mut words = Vec::with_capacity(rows * row_words);
        for r in 0..rows {
            words.extend(pack(&q.codes[r * cols..(r + 1) * cols], bits, PackRule::Stream));
        }
        let e4m3_finite = q.scheme.format == NumberFormat::Fp8E4M3 && q.codes.iter().all(|&c| c & 0x7F != 0x7F);
        Ok(Self {
            scheme: q.scheme,
            rows,
            cols,
            words,
            row_words,
            groups,
            scales,
            zeros,
            g_idx: q.g_idx.clone(),
            e4m3_finite,
            int8_dot: false,
        })
    }

    /// This linear with inputs rounded to int8 blocks and multiplied with the integer
    /// codes ([`super::int8_dot`]) where its layout allows: 4- or 8-bit codes in contiguous
    /// groups (no act-order), inputs and groups multiples of [`INT8_DOT_ALIGN`]. Other
    /// layouts stay exact ([`Self::uses_int8_dot`] says which).
    pub fn with_int8_dot(mut self) -> Self {
        let width = self.scheme.group_width(self.cols);
        self.int8_dot = !self.scheme.is_fp8()
            && self.g_idx.is_none()
            && matches!(self.scheme.bits(), 4 | 8)
            && width.is_multiple_of(INT8_DOT_ALIGN)
            && self.cols.is_multiple_of(INT8_DOT_ALIGN);
        self
    }

    pub fn uses_int8_dot(&self) -> bool {
        self.int8_dot
    }

    /// All rows, as the row kernels read them.
    fn packed_rows(&self) -> PackedRows<'_> {
        PackedRows {
            words: &self.words,
            row_words: self.row_words,
            scales: &self.scales,
            zeros: &self.zeros,
            groups: self.groups,
            width: self.scheme.group_width(self.cols),
        }
    }

    pub fn scheme(&self) -> QuantScheme {
        self.scheme
    }

    /// Dequantize rows `rows` into `out` (`[rows.len(), cols]`), bit-identical to
    /// [`QuantizedTensor::dequantize_rows`].
    pub fn dequantize_rows(&self, rows: Range<usize>, out: &mut [f32]) {
        assert_eq!(out.len(), rows.len() * self.cols, "dequantize_rows: output shape");
        let mut codes = vec![0u8; self.cols];
        for (i, r) in rows.enumerate() {
            self.dequantize_row(r, &mut codes, &mut out[i * self.cols..(i + 1) * self.cols]);
        }
    }

    fn dequantize_row(&self, r: usize, codes: &mut [u8], dst: &mut [f32]) {
        unpack_row(self.scheme.bits(), &self.words[r * self.row_words..(r + 1) * self.row_words], codes);
        let scales = &self.scales[r * self.groups..(r + 1) * self.groups];
        if self.scheme.is_fp8() {
            let (t, s) = (fp8::decode_table(self.scheme.format), scales[0]);
            for (d, &q) in dst.iter_mut().zip(codes.iter()) {
                *d = s * t[q as usize];
            }
            return;
        }
        let zeros = &self.zeros[r * self.groups..(r + 1) * self.groups];
        match &self.g_idx {
            Some(g) => {
                for c in 0..self.cols {
                    let k = g[c] as usize;
                    dst[c] = scales[k] * (codes[c] as f32 - zeros[k] as f32);
                }
            }
            None => {
                let width = self.scheme.group_width(self.cols);
                for (k, (d, q)) in dst.chunks_mut(width).zip(codes.chunks(width)).enumerate() {
                    let (s, z) = (scales[k], zeros[k] as f32);
                    for (d, &q) in d.iter_mut().zip(q) {
                        *d = s * (q as f32 - z);
                    }
                }
            }
        }
    }

    /// True when [`rows_dot`] handles this layout: 4- or 8-bit integer codes in contiguous
    /// groups (no act-order) whose widths are multiples of [`step_columns`] (64, 32).
    fn one_token_kernel(&self) -> bool {
        let width = self.scheme.group_width(self.cols);
        let bits = self.scheme.bits();
        !self.scheme.is_fp8()
            && self.g_idx.is_none()
            && matches!(bits, 4 | 8)
            && width.is_multiple_of(step_columns(bits))
            && self.cols.is_multiple_of(step_columns(bits))
    }

    /// `y = Ŵ·x` for one token (decoding): rows in parallel tiles written in place; the
    /// group sums of `x` on the stack and its interleaved copy in a reused thread-local
    /// buffer, so nothing is allocated per call (up to 512 groups a row).
    fn forward_one(&self, x: &[f32], y: &mut [f32]) {
        let width = self.scheme.group_width(self.cols);
        let mut stack = [0.0f32; 512];
        let mut heap = Vec::new();
        let gsums: &mut [f32] = if self.groups <= stack.len() {
            &mut stack[..self.groups]
        } else {
            heap.resize(self.groups, 0.0);
            &mut heap
        };
        for (s, c) in gsums.iter_mut().zip(x.chunks(width)) {
            *s = c.iter().sum();
        }
        let gsums = &*gsums;
        let per = 32 / self.scheme.bits() as usize;
        let (m, chunk) = (self.packed_rows(), one_token_rows(self.rows));
        with_pooled(&INTERLEAVED, |xi| {
            xi.resize(self.cols, 0.0);
            interleave(x, per, xi);
            y.par_chunks_mut(chunk).enumerate().for_each(|(t, ys)| {
                let part = m.rows(t * chunk, ys.len());
                match per {
                    8 => rows_dot::<8>(part, xi, gsums, ys),
                    _ => rows_dot::<4>(part, xi, gsums, ys),
                }
            });
        });
    }

    /// `y = Ŵ·x̂` for up to [`DOT_MAX_TOKENS`] inputs rounded to int8 blocks (`--dot
    /// int8`): one token's rows written in place, more tokens by row tiles (each tile's
    /// codes meet every token while in cache); each task's rows in one kernel call. The
    /// rounded inputs live in a reused thread-local pool.
    fn forward_int8(&self, x: &[f32], tokens: usize, y: &mut [f32]) {
        let (bits, width) = (self.scheme.bits(), self.scheme.group_width(self.cols));
        let m = self.packed_rows();
        // Rows `r0..` of `m` for token input `x` into `out` (one kernel call for them all).
        let dot = |r0: usize, x: TokenInput, out: &mut [f32]| match bits {
            4 => rows_dot_int8::<8>(m.rows(r0, out.len()), x, out),
            _ => rows_dot_int8::<4>(m.rows(r0, out.len()), x, out),
        };
        let rows = |inp: &Int8Input, y: &mut [f32]| {
            if tokens == 1 {
                let (one, chunk) = (inp.token(0), one_token_rows(self.rows));
                y.par_chunks_mut(chunk).enumerate().for_each(|(t, ys)| dot(t * chunk, one, ys));
                return;
            }
            let parts: Vec<_> = (0..tokens).map(|t| inp.token(t)).collect();
            let tiles = (0..self.rows.div_ceil(TILE_ROWS))
                .into_par_iter()
                .map(|t| {
                    let (r0, r1) = (t * TILE_ROWS, ((t + 1) * TILE_ROWS).min(self.rows));
                    let mut part = vec![0.0f32; tokens * (r1 - r0)];
                    for (tk, out) in part.chunks_mut(r1 - r0).enumerate() {
                        dot(r0, parts[tk], out);
                    }
                    (r0, part)
                })
                .collect();
            scatter_tiles(tiles, tokens, self.rows, y);
        };
        with_pooled(&INT8_INPUTS, |inp| {
            inp.fill(x, self.cols, bits, width);
            rows(inp, y);
        });
    }

    /// `y = Ŵ·x` for one token of FP8 E4M3 weights (one scale per row): each row's codes
    /// decoded 8 at a time in registers ([`row_dot_e4m3`]), then scaled.
    fn forward_one_e4m3(&self, x: &[f32], y: &mut [f32]) {
        let chunk = one_token_rows(self.rows);
        y.par_chunks_mut(chunk).enumerate().for_each(|(t, ys)| {
            for (i, yr) in ys.iter_mut().enumerate() {
                let r = t * chunk + i;
                let words = &self.words[r * self.row_words..(r + 1) * self.row_words];
                // FP8 rows are Stream-packed bytes, LSB first: the words' little-endian bytes.
                *yr = self.scales[r * self.groups] * row_dot_e4m3(&words_as_bytes(words)[..self.cols], x);
            }
        });
    }

    /// `[tokens, tile rows]` outputs of rows `r0..r1`.
    fn tile(&self, x: &[f32], tokens: usize, r0: usize, r1: usize, gsums: Option<&[f32]>) -> Vec<f32> {
        let (k, n) = (self.cols, r1 - r0);
        SCRATCH.with(|s| {
            let (buf, codes) = &mut *s.borrow_mut();
            buf.resize(n * k, 0.0);
            codes.resize(k, 0);
            let mut y = vec![0.0f32; tokens * n];
            if let (true, Some(gsums)) = (tokens <= DOT_MAX_TOKENS, gsums) {
                // Fused: y = Σ_g s_g · (Σ_{c∈g} q_c·x_c - z_g · Σ_{c∈g} x_c), no f32 weights.
                let width = self.scheme.group_width(k);
                for (i, r) in (r0..r1).enumerate() {
                    unpack_row(self.scheme.bits(), &self.words[r * self.row_words..(r + 1) * self.row_words], codes);
                    let (sc, zs) = (
                        &self.scales[r * self.groups..(r + 1) * self.groups],
                        &self.zeros[r * self.groups..(r + 1) * self.groups],
                    );
                    for t in 0..tokens {
                        let xt = &x[t * k..(t + 1) * k];
                        let mut acc = 0.0f32;
                        for (g, (qc, xc)) in codes.chunks(width).zip(xt.chunks(width)).enumerate() {
                            acc += sc[g] * (dot_codes(qc, xc) - zs[g] as f32 * gsums[t * self.groups + g]);
                        }
                        y[t * n + i] = acc;
                    }
                }
            } else if tokens <= DOT_MAX_TOKENS {
                let row = &mut buf[..k];
                for (i, r) in (r0..r1).enumerate() {
                    self.dequantize_row(r, codes, row);
                    for t in 0..tokens {
                        y[t * n + i] = dot(&x[t * k..(t + 1) * k], row);
                    }
                }
            } else {
                for (i, r) in (r0..r1).enumerate() {
                    self.dequantize_row(r, codes, &mut buf[i * k..(i + 1) * k]);
                }
                matmul_xwt(x, tokens, &buf[..n * k], n, k, &mut y);
            }
            y
        })
    }
}

/// Codes of one row from its Stream-packed words (fast paths per width).
fn unpack_row(bits: u8, words: &[u32], out: &mut [u8]) {
    if bits == 3 {
        // 32 codes per 3 words, one 96-bit little-endian stream.
        for (k, chunk) in out.chunks_mut(32).enumerate() {
            let w = |j: usize| words.get(3 * k + j).copied().unwrap_or(0) as u128;
            let v = w(0) | (w(1) << 32) | (w(2) << 64);
            for (j, o) in chunk.iter_mut().enumerate() {
                *o = ((v >> (3 * j)) & 7) as u8;
            }
        }
        return;
    }
    let (per, mask) = (32 / bits as usize, (1u32 << bits) - 1);
    for (chunk, &w) in out.chunks_mut(per).zip(words) {
        for (j, o) in chunk.iter_mut().enumerate() {
            *o = ((w >> (j * bits as usize)) & mask) as u8;
        }
    }
}

/// Dot product with 8 independent accumulators (vectorizes; fixed order).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for j in 0..8 {
            acc[j] += x[j] * y[j];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `Σ q_c · x_c` over integer codes, 8 accumulators.
fn dot_codes(q: &[u8], x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (cq, cx) = (q.chunks_exact(8), x.chunks_exact(8));
    let tail: f32 = cq.remainder().iter().zip(cx.remainder()).map(|(&a, b)| a as f32 * b).sum();
    for (a, b) in cq.zip(cx) {
        for j in 0..8 {
            acc[j] += a[j] as f32 * b[j];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Words read per step of the one-token kernel: one code of each of 8 words fills 8 lanes.
const WORD_LANES: usize = 8;

/// Columns per step of [`rows_dot`] for `bits`-bit codes: 8 words of `32/bits` codes.
fn step_columns(bits: u8) -> usize {
    WORD_LANES * 32 / bits as usize
}

/// `x` reordered for [`rows_dot`]: within each step of `8·PER` columns, column `j·PER + k`
/// (code `k` of word `j`) moves to `k·8 + j`, so code `k` of 8 consecutive words meets
/// its 8 inputs in one vector.
fn interleave(x: &[f32], per: usize, out: &mut [f32]) {
    let step = WORD_LANES * per;
    for (o, xs) in out.chunks_exact_mut(step).zip(x.chunks_exact(step)) {
        for j in 0..WORD_LANES {
            for k in 0..per {
                o[k * WORD_LANES + j] = xs[j * per + k];
            }
        }
    }
}

/// `Σ_g s_g · (Σ_{c∈g} q_c·x_c − z_g · X_g)` for one row of integer codes, `PER` to a
/// 32-bit word (8, 4 for 4, 8 bits), in contiguous groups of `width` columns (multiples
/// of [`step_columns`]; the last group may be shorter). `xi` is `x` [`interleave`]d;
/// `gsums` holds `X_g = Σ_{c∈g} x_c`. Codes are unpacked in registers (a shift and a mask
/// of 8 words at once), never stored. AVX-512VL's permute for 4-bit codes, else AVX2+FMA
/// where the CPU has them, else the plain
/// loops below, which define the arithmetic: the same operations in the same order, each
/// product-sum one fused multiply-add (`f32::mul_add`), so both give the same bits.
fn rows_dot<const PER: usize>(m: PackedRows, xi: &[f32], gsums: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if PER == 8 && std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512vl")
        {
            // SAFETY: AVX-512F/VL are present; the loops stay inside the rows and `xi`.
            return unsafe { rows_dot_int4_avx512::<8>(m, xi, gsums, out) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: AVX2 and FMA are present; as above.
            return unsafe { rows_dot_avx2::<PER>(m, xi, gsums, out) };
        }
    }
    for (r, o) in out.iter_mut().enumerate() {
        let (words, scales, zeros) = m.row(r);
        *o = row_dot_plain::<PER>(words, xi, m.width, scales, zeros, gsums);
    }
}

/// The reference arithmetic of [`rows_dot`], one row: `PER` accumulator vectors of 8 lanes, one per
/// code position `k` of a word, `acc[k][j] = fma(q·s_g, x, acc[k][j])` (each code scaled by
/// its group's scale first, so no per-group reduction chain), summed over `k` in order,
/// then reduced by halves; the zero points come off through the group sums.
fn row_dot_plain<const PER: usize>(
    words: &[u32],
    xi: &[f32],
    width: usize,
    scales: &[f32],
    zeros: &[u8],
    gsums: &[f32],
) -> f32 {
    let bits = 32 / PER;
    let mask = (1u32 << bits) - 1;
    let mut acc = [[0.0f32; WORD_LANES]; PER];
    let mut offset = 0.0f32;
    for (g, (xg, wg)) in xi.chunks(width).zip(words.chunks(width / PER)).enumerate() {
        let s = scales[g];
        for (xs, ws) in xg.chunks_exact(WORD_LANES * PER).zip(wg.chunks_exact(WORD_LANES)) {
            for (k, ak) in acc.iter_mut().enumerate() {
                for j in 0..WORD_LANES {
                    let q = (ws[j] >> (bits * k)) & mask;
                    ak[j] = (q as f32 * s).mul_add(xs[k * WORD_LANES + j], ak[j]);
                }
            }
        }
        offset += s * (zeros[g] as f32 * gsums[g]);
    }
    let mut tot = acc[0];
    for ak in &acc[1..] {
        for j in 0..WORD_LANES {
            tot[j] += ak[j];
        }
    }
    sum_by_halves(tot) - offset
}

/// The x86 twins of [`row_dot_plain`], operation for operation: 8 words a step, code `k`
/// of each shifted down (`$shifted`, its higher codes still above it) and turned into
/// `q·s_g` by `$scaled`, given the group's scale `$s` in every lane, the masks of the
/// codes `$mask`, and `q·s_g` for `q = 0..15` in two registers `$lo`, `$hi` (unused, and
/// optimized away, where codes are converted instead of looked up). Steps and groups are
/// walked by index, not `chunks`: no divisions in a row's setup (a row is ~10 steps).
macro_rules! row_dot_x86 {
    ($(#[$meta:meta])* $name:ident, $features:literal,
     |$shifted:ident, $s:ident, $mask:ident, $lo:ident, $hi:ident| $scaled:expr) => {
        $(#[$meta])*
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        unsafe fn $name<const PER: usize>(m: PackedRows, xi: &[f32], gsums: &[f32], out: &mut [f32]) {
            use std::arch::x86_64::*;
            for (r, o) in out.iter_mut().enumerate() {
            let (words, scales, zeros) = m.row(r);
            let width = m.width;
            let bits = (32 / PER) as i32;
            let $mask = _mm256_set1_epi32((1i32 << bits) - 1);
            let codes_lo = _mm256_setr_ps(0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0);
            let codes_hi = _mm256_setr_ps(8.0, 9.0, 10.0, 11.0, 12.0, 13.0, 14.0, 15.0);
            let step_cols = WORD_LANES * PER;
            let steps = (words.len() / WORD_LANES).min(xi.len() / step_cols);
            let group_steps = (width / step_cols).max(1);
            let mut acc = [_mm256_setzero_ps(); PER];
            let mut offset = 0.0f32;
            let (mut step, mut g) = (0, 0);
            while step < steps {
                let end = (step + group_steps).min(steps);
                let $s = _mm256_set1_ps(scales[g]);
                let ($lo, $hi) = (_mm256_mul_ps(codes_lo, $s), _mm256_mul_ps(codes_hi, $s));
                for st in step..end {
                    // SAFETY: st < steps: the 8 words and `step_cols` inputs of this step exist.
                    let w = _mm256_loadu_si256(words.as_ptr().add(st * WORD_LANES) as *const __m256i);
                    let xs = xi.as_ptr().add(st * step_cols);
                    for (k, ak) in acc.iter_mut().enumerate() {
                        let $shifted = _mm256_srl_epi32(w, _mm_cvtsi32_si128(bits * k as i32));
                        let x = _mm256_loadu_ps(xs.add(k * WORD_LANES));
                        *ak = _mm256_fmadd_ps($scaled, x, *ak);
                    }
                }
                offset += scales[g] * (zeros[g] as f32 * gsums[g]);
                (step, g) = (end, g + 1);
            }
            let mut tot = acc[0];
            for ak in &acc[1..] {
                tot = _mm256_add_ps(tot, *ak);
            }
            *o = sum_by_halves_m256(tot) - offset; // as the plain loop
            }
        }
    };
}

row_dot_x86!(
    /// AVX2: shift, mask, convert, multiply by the scale, FMA per 8 codes.
    rows_dot_avx2, "avx2,fma",
    |q, s, mask, _lo, _hi| _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_and_si256(q, mask)), s)
);

row_dot_x86!(
    /// 4-bit codes with AVX-512VL: each code is looked up among the group's 16 scaled codes
    /// (the very products `q·s` the plain loop makes) by one two-table permute
    /// (`vpermt2ps`, which reads only the low 4 bits of a lane: no mask): shift, permute,
    /// FMA per 8 codes. Only for `PER = 8`.
    rows_dot_int4_avx512, "avx512f,avx512vl,avx2,fma",
    |q, _s, _mask, lo, hi| _mm256_permutex2var_ps(lo, q, hi)
);

/// The bytes of packed words in memory order (little-endian: code order for 8-bit codes).
fn words_as_bytes(words: &[u32]) -> &[u8] {
    // SAFETY: u8 has no alignment or validity requirements; the length is in bytes.
    #[cfg(target_endian = "little")]
    unsafe {
        std::slice::from_raw_parts(words.as_ptr() as *const u8, words.len() * 4)
    }
}

/// `Σ_c e4m3(q_c)·x_c` over one row of FP8 E4M3 codes (no NaN codes). A code's bits
/// `S.EEEE.MMM` become the f32 bits `S << 31 | EEEEMMM << 20`, which is the code's value
/// times 2^-120 for normal and subnormal codes alike; one multiply by 2^120 restores it
/// exactly. 8 lanes of fused multiply-adds, reduced by halves, then the tail; AVX2+FMA
/// where present, else the same arithmetic in plain loops (same bits).
fn row_dot_e4m3(codes: &[u8], x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: AVX2 and FMA are present; loads stay inside the chunks.
        return unsafe { row_dot_e4m3_avx2(codes, x) };
    }
    row_dot_e4m3_plain(codes, x)
}

/// 2^120: the exponent bias difference of f32 (127) and E4M3 (7).
const E4M3_RESCALE: f32 = f32::from_bits((127 + 120) << 23);

fn e4m3_bits(c: u8) -> f32 {
    let c = c as u32;
    f32::from_bits(((c & 0x80) << 24) | ((c & 0x7F) << 20)) * E4M3_RESCALE
}

fn row_dot_e4m3_plain(codes: &[u8], x: &[f32]) -> f32 {
    let mut acc = [0.0f32; WORD_LANES];
    let (cq, cx) = (codes.chunks_exact(WORD_LANES), x.chunks_exact(WORD_LANES));
    let tail = cq.remainder().iter().zip(cx.remainder()).fold(0.0f32, |t, (&q, &v)| e4m3_bits(q).mul_add(v, t));
    for (q, v) in cq.zip(cx) {
        for j in 0..WORD_LANES {
            acc[j] = e4m3_bits(q[j]).mul_add(v[j], acc[j]);
        }
    }
    sum_by_halves(acc) + tail
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn row_dot_e4m3_avx2(codes: &[u8], x: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let (sign, mag, rescale) = (_mm256_set1_epi32(0x80), _mm256_set1_epi32(0x7F), _mm256_set1_ps(E4M3_RESCALE));
    let mut acc = _mm256_setzero_ps();
    let (cq, cx) = (codes.chunks_exact(WORD_LANES), x.chunks_exact(WORD_LANES));
    let tail = cq.remainder().iter().zip(cx.remainder()).fold(0.0f32, |t, (&q, &v)| e4m3_bits(q).mul_add(v, t));
    for (q, v) in cq.zip(cx) {
        let c = _mm256_cvtepu8_epi32(_mm_loadl_epi64(q.as_ptr() as *const __m128i));
        let bits = _mm256_or_si256(
            _mm256_slli_epi32(_mm256_and_si256(c, sign), 24),
            _mm256_slli_epi32(_mm256_and_si256(c, mag), 20),
        );
        let w = _mm256_mul_ps(_mm256_castsi256_ps(bits), rescale);
        acc = _mm256_fmadd_ps(w, _mm256_loadu_ps(v.as_ptr()), acc);
    }
    sum_by_halves_m256(acc) + tail
}

thread_local! {
    /// The interleaved inputs of [`QuantizedLinear::forward_one`] ([`with_pooled`]).
    static INTERLEAVED: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
    /// The rounded inputs of [`QuantizedLinear::forward_int8`] ([`with_pooled`]).
    static INT8_INPUTS: RefCell<Vec<Int8Input>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with a buffer from this thread's `pool`, taken out while `f` runs: a call
/// nested on this thread (a thread waiting in one product steals another's task) takes
/// another, and none is allocated once the pool has grown.
fn with_pooled<T: Default, R>(pool: &'static LocalKey<RefCell<Vec<T>>>, f: impl FnOnce(&mut T) -> R) -> R {
    let mut buf = pool.with(|p| p.borrow_mut().pop()).unwrap_or_default();
    let r = f(&mut buf);
    pool.with(|p| p.borrow_mut().push(buf));
    r
}

/// Row tiles `(first row, [tokens, tile rows])` into `y` (`[tokens, rows]`).
fn scatter_tiles(tiles: Vec<(usize, Vec<f32>)>, tokens: usize, rows: usize, y: &mut [f32]) {
    for (r0, part) in tiles {
        let n = part.len() / tokens.max(1);
        for t in 0..tokens {
            y[t * rows + r0..t * rows + r0 + n].copy_from_slice(&part[t * n..(t + 1) * n]);
        }
    }
}

impl Linear for QuantizedLinear {
    fn in_features(&self) -> usize {
        self.cols
    }
    fn out_features(&self) -> usize {
        self.rows
    }
    fn forward(&self, x: &[f32], tokens: usize, y: &mut [f32]) {
        assert_eq!(x.len(), tokens * self.cols, "QuantizedLinear: x shape");
        assert_eq!(y.len(), tokens * self.rows, "QuantizedLinear: y shape");
        if self.int8_dot && (1..=DOT_MAX_TOKENS).contains(&tokens) {
            return self.forward_int8(x, tokens, y);
        }
        if self.int8_dot && tokens > DOT_MAX_TOKENS {
            // Prefill: the same product `Ŵ·x̂` through the GEMM tiles, on the rounded inputs
            // as f32 (`d_b · xq`); it differs from the row kernels by float rounding only.
            return self.forward_exact(&round_rows(x, self.cols), tokens, y);
        }
        self.forward_exact(x, tokens, y)
    }
    fn weight_bytes(&self) -> usize {
        self.words.len() * 4 + self.scales.len() * 4 + self.zeros.len() + self.g_idx.as_ref().map_or(0, |g| g.len() * 4)
    }
}

impl QuantizedLinear {
    /// `y = x·Ŵᵀ` with exact f32 products: the one-token kernels, or the fused few-token
    /// dot products, or dequantized tiles through the GEMM.
    fn forward_exact(&self, x: &[f32], tokens: usize, y: &mut [f32]) {
        if tokens == 1 && self.one_token_kernel() {
            return self.forward_one(x, y);
        }
        if tokens == 1 && self.e4m3_finite {
            return self.forward_one_e4m3(x, y);
        }
        // Per-token group sums of x for the fused few-token path (contiguous integer groups).
        let gsums: Option<Vec<f32>> =
            (tokens <= DOT_MAX_TOKENS && !self.scheme.is_fp8() && self.g_idx.is_none()).then(|| {
                let width = self.scheme.group_width(self.cols);
                (0..tokens)
                    .flat_map(|t| x[t * self.cols..(t + 1) * self.cols].chunks(width).map(|c| c.iter().sum::<f32>()))
                    .collect()
            });
        let tiles: Vec<(usize, Vec<f32>)> = (0..self.rows.div_ceil(TILE_ROWS))
            .into_par_iter()
            .map(|t| {
                let (r0, r1) = (t * TILE_ROWS, ((t + 1) * TILE_ROWS).min(self.rows));
                (r0, self.tile(x, tokens, r0, r1, gsums.as_deref()))
            })
            .collect();
        scatter_tiles(tiles, tokens, self.rows, y);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::linear::reference_xwt;
    use crate::quant::rtn::quantize_rtn;
    use rand::{Rng, SeedableRng};

    /// f32 summation error bound relative to Σ|x·w|: k·ε for k ≤ 300 terms is 1.8e-5;
    /// the reference accumulates in f64.
    const SUM_REL_TOL: f32 = 2e-5;

    fn schemes() -> Vec<QuantScheme> {
        let mut v = vec![QuantScheme::fp8_e4m3(), QuantScheme::fp8_e5m2().per_tensor()];
        for bits in [2u8, 3, 4, 8] {
            let s = QuantScheme::int(bits).unwrap();
            v.extend([
                s,
                s.per_tensor().asymmetric().unwrap(),
                s.group(16).unwrap(),
                s.group(32).unwrap().asymmetric().unwrap(),
                s.group(64).unwrap(),
                s.group(128).unwrap().asymmetric().unwrap(),
            ]);
        }
        v
    }

    #[test]
    fn forward_matches_reference_on_odd_shapes() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        for &(rows, cols) in &[(1, 1), (63, 33), (65, 127), (130, 64), (7, 300), (67, 192), (5, 96), (3, 320)] {
            let w: Vec<f32> = (0..rows * cols).map(|_| rng.random_range(-1.0..1.0)).collect();
            for scheme in schemes() {
                let mut q = quantize_rtn("w", &w, rows, cols, scheme, None).unwrap();
                if matches!(scheme.granularity, Granularity::Group(_)) && rng.random_bool(0.5) {
                    // act-order: an arbitrary column -> group map (codes kept, groups permuted)
                    let g = scheme.groups_per_row(cols) as u32;
                    q.g_idx = Some((0..cols).map(|_| rng.random_range(0..g)).collect());
                }
                let lin = QuantizedLinear::new("w", &q).unwrap();
                let deq = q.dequantize();
                let mut again = vec![0.0; rows * cols];
                lin.dequantize_rows(0..rows, &mut again);
                assert_eq!(again, deq, "{scheme}: dequantization differs from QuantizedTensor");
                for tokens in [0usize, 1, 3, 17] {
                    let x: Vec<f32> = (0..tokens * cols).map(|_| rng.random_range(-1.0..1.0)).collect();
                    let mut y = vec![f32::NAN; tokens * rows];
                    lin.forward(&x, tokens, &mut y);
                    let r = reference_xwt(&x, tokens, &deq, rows, cols);
                    for t in 0..tokens {
                        for o in 0..rows {
                            let mag: f32 = (0..cols).map(|i| (x[t * cols + i] * deq[o * cols + i]).abs()).sum();
                            let (a, b) = (y[t * rows + o], r[t * rows + o]);
                            assert!(
                                (a - b).abs() <= SUM_REL_TOL * mag + 1e-7,
                                "{scheme} [{rows},{cols}] t={tokens}: {a} vs {b}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// The one-token kernel covers 4/8-bit groups whose widths are multiples of 64 / 32,
    /// ragged last groups included: such shapes are in the test above.
    #[test]
    fn the_one_token_kernel_takes_the_common_layouts() {
        let w: Vec<f32> = (0..4 * 192).map(|i| (i as f32 * 0.37).sin()).collect();
        for (scheme, cols, fast) in [
            (QuantScheme::int(4).unwrap().group(128).unwrap(), 192, true), // groups 128, 64
            (QuantScheme::int(4).unwrap().asymmetric().unwrap(), 64, true),
            (QuantScheme::int(8).unwrap().group(32).unwrap(), 96, true),
            (QuantScheme::int(4).unwrap().group(32).unwrap(), 64, false),
            (QuantScheme::int(2).unwrap().group(16).unwrap(), 64, false),
            (QuantScheme::int(3).unwrap().group(16).unwrap(), 64, false),
            (QuantScheme::fp8_e4m3(), 80, false),
        ] {
            let q = quantize_rtn("w", &w[..4 * cols], 4, cols, scheme, None).unwrap();
            assert_eq!(QuantizedLinear::new("w", &q).unwrap().one_token_kernel(), fast, "{scheme} cols {cols}");
        }
    }

    /// The AVX2 kernel gives the plain loops' bits (zeros, outliers, ragged last groups).
    #[test]
    fn the_one_token_kernel_is_bit_identical_to_its_plain_loops() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        for (bits, cols, width) in [(4u8, 576, 128), (4, 192, 64), (4, 1536, 1536), (8, 96, 32), (8, 576, 576)] {
            let (per, rows) = (32 / bits as usize, 2);
            let words: Vec<u32> = (0..rows * cols / per).map(|_| rng.random()).collect();
            let mut x: Vec<f32> = (0..cols).map(|_| rng.random_range(-3.0..3.0)).collect();
            x[1] = 5e3;
            x[2] = 0.0;
            let groups = cols.div_ceil(width);
            let scales: Vec<f32> = (0..rows * groups).map(|_| rng.random_range(0.001..0.1)).collect();
            let zeros: Vec<u8> = (0..rows * groups).map(|_| rng.random_range(0..=(1u32 << bits) - 1) as u8).collect();
            let gsums: Vec<f32> = x.chunks(width).map(|c| c.iter().sum()).collect();
            let mut xi = vec![0.0; cols];
            interleave(&x, per, &mut xi);
            let m = PackedRows { words: &words, row_words: cols / per, scales: &scales, zeros: &zeros, groups, width };
            let plain: Vec<u32> = (0..rows)
                .map(|r| {
                    let (w, s, z) = m.row(r);
                    match per {
                        8 => row_dot_plain::<8>(w, &xi, width, s, z, &gsums),
                        _ => row_dot_plain::<4>(w, &xi, width, s, z, &gsums),
                    }
                    .to_bits()
                })
                .collect();
            let run = |f: &dyn Fn(&mut [f32])| {
                let mut out = vec![f32::NAN; rows];
                f(&mut out);
                out.iter().map(|v| v.to_bits()).collect::<Vec<u32>>()
            };
            let fast = run(&|out| match per {
                8 => rows_dot::<8>(m, &xi, &gsums, out),
                _ => rows_dot::<4>(m, &xi, &gsums, out),
            });
            assert_eq!(fast, plain, "{bits} bits, {cols} cols, groups of {width}");
            // Each x86 variant on its own (rows_dot picks the widest the CPU has).
            #[cfg(target_arch = "x86_64")]
            {
                if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                    // SAFETY: features checked.
                    let avx2 = run(&|out| unsafe {
                        match per {
                            8 => rows_dot_avx2::<8>(m, &xi, &gsums, out),
                            _ => rows_dot_avx2::<4>(m, &xi, &gsums, out),
                        }
                    });
                    assert_eq!(avx2, plain, "avx2: {bits} bits, {cols} cols, groups of {width}");
                }
                if per == 8 && is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vl") {
                    // SAFETY: features checked.
                    let avx512 = run(&|out| unsafe { rows_dot_int4_avx512::<8>(m, &xi, &gsums, out) });
                    assert_eq!(avx512, plain, "avx512: {cols} cols, groups of {width}");
                }
            }
        }
    }

    /// The E4M3 bit trick decodes every finite code as the decode table does, and the
    /// AVX2 row sum gives the plain loops' bits.
    #[test]
    fn the_e4m3_kernel_decodes_every_finite_code_and_matches_its_plain_loops() {
        let table = fp8::decode_table(NumberFormat::Fp8E4M3);
        for c in (0..=255u8).filter(|c| c & 0x7F != 0x7F) {
            assert_eq!(e4m3_bits(c).to_bits(), table[c as usize].to_bits(), "code {c:#04x}");
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(10);
        for n in [0usize, 5, 8, 576, 1539] {
            let codes: Vec<u8> = (0..n).map(|_| rng.random::<u8>() & 0xFE).collect(); // no 0x7F / 0xFF
            let x: Vec<f32> = (0..n).map(|_| rng.random_range(-2.0..2.0)).collect();
            assert_eq!(row_dot_e4m3(&codes, &x).to_bits(), row_dot_e4m3_plain(&codes, &x).to_bits(), "n {n}");
        }
        // A NaN code disables the kernel (the table path keeps the NaN).
        let mut q = quantize_rtn("w", &[0.5; 64], 2, 32, QuantScheme::fp8_e4m3(), None).unwrap();
        assert!(QuantizedLinear::new("w", &q).unwrap().e4m3_finite);
        q.codes[3] = 0x7F;
        assert!(!QuantizedLinear::new("w", &q).unwrap().e4m3_finite);
    }

    /// `--dot int8`: every token count gives the dequantized weights times the rounded
    /// inputs (one token, several, none); layouts it cannot take stay exact.
    #[test]
    fn the_int8_dot_multiplies_the_rounded_inputs() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(23);
        let int4 = QuantScheme::int(4).unwrap();
        let int8 = QuantScheme::int(8).unwrap();
        for (scheme, rows, cols, uses) in [
            (int4.group(128).unwrap().asymmetric().unwrap(), 70, 576, true), // groups 128 .. 64
            (int4.group(64).unwrap(), 65, 192, true),
            (int8.asymmetric().unwrap(), 3, 576, true),
            (int8.group(64).unwrap(), 130, 128, true),
            (int4.group(32).unwrap(), 5, 128, false),
            (int4.group(128).unwrap(), 5, 160, false),
            (QuantScheme::fp8_e4m3(), 5, 128, false),
        ] {
            let w: Vec<f32> = (0..rows * cols).map(|_| rng.random_range(-1.0..1.0)).collect();
            let q = quantize_rtn("w", &w, rows, cols, scheme, None).unwrap();
            let lin = QuantizedLinear::new("w", &q).unwrap().with_int8_dot();
            assert_eq!(lin.uses_int8_dot(), uses, "{scheme} cols {cols}");
            let deq = q.dequantize();
            for tokens in [0usize, 1, 3, 17] {
                let mut x: Vec<f32> = (0..tokens * cols).map(|_| rng.random_range(-1.0..1.0)).collect();
                if tokens > 0 {
                    x[0] = 40.0; // an outlier
                }
                let mut y = vec![f32::NAN; tokens * rows];
                lin.forward(&x, tokens, &mut y);
                let xr = if uses {
                    let mut inp = Int8Input::default();
                    inp.fill(&x, cols, scheme.bits(), scheme.group_width(cols));
                    (0..tokens)
                        .flat_map(|t| {
                            let x = inp.token(t);
                            (0..cols)
                                .map(|c| x.d[c / super::super::int8_dot::ACT_BLOCK] * x.codes[c] as f32)
                                .collect::<Vec<_>>()
                        })
                        .collect()
                } else {
                    x.clone()
                };
                let r = reference_xwt(&xr, tokens, &deq, rows, cols);
                for t in 0..tokens {
                    for o in 0..rows {
                        let mag: f32 = (0..cols).map(|i| (xr[t * cols + i] * deq[o * cols + i]).abs()).sum();
                        let (a, b) = (y[t * rows + o], r[t * rows + o]);
                        assert!((a - b).abs() <= SUM_REL_TOL * mag + 1e-7, "{scheme} t={tokens}: {a} vs {b}");
                    }
                }
            }
        }
    }

    #[test]
    fn int4_g128_stays_packed() {
        let (rows, cols) = (256, 1024);
        let w: Vec<f32> = (0..rows * cols).map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0).collect();
        let q = quantize_rtn("w", &w, rows, cols, QuantScheme::int(4).unwrap().group(128).unwrap(), None).unwrap();
        let lin = QuantizedLinear::new("w", &q).unwrap();
        let ratio = lin.weight_bytes() as f64 / (rows * cols * 4) as f64;
        assert!(ratio < 0.35 && ratio > 0.125, "int4 g128 resident ratio {ratio}");
    }

    #[test]
    fn inconsistent_tensors_are_refused() {
        let q = quantize_rtn("w", &[0.5; 8], 2, 4, QuantScheme::int(4).unwrap(), None).unwrap();
        let mut bad = q.clone();
        bad.codes[1] = 16;
        assert!(QuantizedLinear::new("w", &bad).unwrap_err().to_string().contains("exceeds 4 bits"));
        let mut bad = q;
        bad.zeros = None;
        assert!(QuantizedLinear::new("w", &bad).is_err());
    }
}
