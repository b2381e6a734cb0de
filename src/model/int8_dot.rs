//! Int8 activations times integer codes: the arithmetic of llama.cpp's CPU dot products
//! (its Q4_0 / Q8_0 weights meet inputs rounded to Q8 blocks), for `--dot int8`.
//!
//! Each token's input is rounded per block of [`ACT_BLOCK`] = 32 inputs to `x̂ = d_b · xq`,
//! `d_b = max|x| / 127`, `xq = round(x / d_b)` in `-127..=127` (llama.cpp's Q8_0 rounding,
//! ties to even, with `d_b` kept in f32 where Q8_0 stores f16). A row of `b`-bit codes `q`
//! (groups `g` of scale `s_g`, zero `z_g`) then gives
//! `Σ_g s_g · (Σ_{b∈g} d_b · Σ_{c∈b} q_c·xq_c − z_g · X̂_g)` with `X̂_g = Σ_{c∈g} x̂_c`:
//! the inner sums are exact integers (`vpdpbusd`: 4 byte products summed into each 32-bit
//! lane), so 4-bit codes cost one FMA per 64 weights instead of one per 8. The result is
//! the exact product of the dequantized weights with `x̂`, not with `x`: its perplexity
//! cost is measured in docs/BENCHMARKS.md.
//!
//! Layouts: a row's codes are its Stream-packed words (`PER = 32/b` codes a word, code
//! `k` of a word at bits `b·k`), taken 8 words (32 bytes, `8·PER` inputs) a step. Lane
//! `j` of a step is word `j`'s codes times their inputs, scaled by its input block's
//! `d_b` (4-bit: lanes 0-3 and 4-7 are two blocks). The plain loops define the
//! arithmetic; the SIMD kernels give the same bits.

use super::linear::sum_by_halves;
#[cfg(target_arch = "x86_64")]
use super::linear::sum_by_halves_m256;
use super::qlinear::PackedRows;

/// Inputs sharing one activation scale (llama.cpp's Q8_0 block).
pub const ACT_BLOCK: usize = 32;
/// Linears whose inputs and groups are multiples of this take the int8 kernels (a 4-bit step).
pub const INT8_DOT_ALIGN: usize = 64;
/// Words a step reads (one 256-bit load).
const STEP_WORDS: usize = 8;

/// One or more tokens' inputs rounded for the integer kernels: per token `cols` codes in
/// natural order (`codes`) and arranged for the SIMD kernels (`arranged`), the block
/// scales `d` (and each step lane's, `lane_d`) and the group sums `X̂_g`.
#[derive(Default)]
pub struct Int8Input {
    pub cols: usize,
    pub codes: Vec<i8>,
    pub arranged: Vec<i8>,
    pub d: Vec<f32>,
    pub lane_d: Vec<f32>,
    pub gsums: Vec<f32>,
}

impl Int8Input {
    /// Round `x` (`[tokens, cols]`) for rows of `bits`-bit codes (4 or 8) in groups of
    /// `width` inputs (`cols` and `width` multiples of [`INT8_DOT_ALIGN`]); the buffers
    /// are reused, so a caller that keeps this allocates nothing per token.
    pub fn fill(&mut self, x: &[f32], cols: usize, bits: u8, width: usize) {
        debug_assert!(cols.is_multiple_of(INT8_DOT_ALIGN) && width.is_multiple_of(INT8_DOT_ALIGN));
        let (tokens, blocks, groups) = (x.len() / cols, cols / ACT_BLOCK, cols.div_ceil(width));
        self.cols = cols;
        self.codes.resize(x.len(), 0);
        self.arranged.resize(x.len(), 0);
        self.d.resize(tokens * blocks, 0.0);
        self.gsums.clear();
        for (b, (xs, qs)) in x.chunks_exact(ACT_BLOCK).zip(self.codes.chunks_exact_mut(ACT_BLOCK)).enumerate() {
            self.d[b] = round_block(xs, qs);
        }
        for t in 0..tokens {
            let (qt, dt) = (&self.codes[t * cols..(t + 1) * cols], &self.d[t * blocks..(t + 1) * blocks]);
            for g in 0..groups {
                let (b0, b1) = (g * width / ACT_BLOCK, ((g + 1) * width).min(cols) / ACT_BLOCK);
                let mut s = 0.0f32;
                for b in b0..b1 {
                    let q: i32 = qt[b * ACT_BLOCK..(b + 1) * ACT_BLOCK].iter().map(|&v| v as i32).sum();
                    s += dt[b] * q as f32;
                }
                self.gsums.push(s);
            }
        }
        arrange(&self.codes, bits, &mut self.arranged);
        // Lane j of a step reads inputs `j·PER ..`: its block's scale.
        let per = 32 / bits as usize;
        self.lane_d.clear();
        for t in 0..tokens {
            for c in (0..cols).step_by(per) {
                self.lane_d.push(self.d[t * blocks + c / ACT_BLOCK]);
            }
        }
    }

    /// Token `t`'s parts.
    pub fn token(&self, t: usize) -> TokenInput<'_> {
        let (cols, blocks) = (self.cols, self.cols / ACT_BLOCK);
        let tokens = (self.codes.len() / cols).max(1);
        let (groups, lanes) = (self.gsums.len() / tokens, self.lane_d.len() / tokens);
        TokenInput {
            codes: &self.codes[t * cols..(t + 1) * cols],
            arranged: &self.arranged[t * cols..(t + 1) * cols],
            d: &self.d[t * blocks..(t + 1) * blocks],
            lane_d: &self.lane_d[t * lanes..(t + 1) * lanes],
            gsums: &self.gsums[t * groups..(t + 1) * groups],
        }
    }
}

/// One token of an [`Int8Input`].
#[derive(Clone, Copy)]
pub struct TokenInput<'a> {
    pub codes: &'a [i8],
    pub arranged: &'a [i8],
    pub d: &'a [f32],
    pub lane_d: &'a [f32],
    pub gsums: &'a [f32],
}

simd_kernel! {
    /// One block: `d = max|x| / 127`, `q = round(x / d)` (ties to even, as llama.cpp's
    /// AVX2 `quantize_row_q8_0`; all zeros when `d = 0`); returns `d` (kept in f32, where
    /// Q8_0 stores f16).
    fn round_block(xs: &[f32], qs: &mut [i8]) -> f32 {
        // max|x| in 16 lanes (max is exact in any order; a fold would stay scalar).
        let mut lanes = [0.0f32; 16];
        for c in xs.chunks_exact(16) {
            for (m, v) in lanes.iter_mut().zip(c) {
                *m = m.max(v.abs());
            }
        }
        let amax = xs.chunks_exact(16).remainder().iter().fold(lanes.into_iter().fold(0.0f32, f32::max), |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        for (q, &v) in qs.iter_mut().zip(xs) {
            *q = (v * id).round_ties_even().clamp(-127.0, 127.0) as i32 as i8; // via i32: vectorizes
        }
        d
    }
}

/// `x` (`[tokens, cols]`, `cols` a multiple of [`ACT_BLOCK`]) rounded as [`Int8Input`]
/// rounds it, as f32 (`x̂ = d_b · xq`), rows in parallel: the GEMM's input for prefill.
pub fn round_rows(x: &[f32], cols: usize) -> Vec<f32> {
    use rayon::prelude::*;
    let mut out = vec![0.0f32; x.len()];
    out.par_chunks_mut(cols).zip(x.par_chunks(cols)).for_each(|(o, xs)| {
        let mut q = [0i8; ACT_BLOCK];
        for (ob, xb) in o.chunks_exact_mut(ACT_BLOCK).zip(xs.chunks_exact(ACT_BLOCK)) {
            let d = round_block(xb, &mut q);
            for (v, &c) in ob.iter_mut().zip(&q) {
                *v = d * c as f32;
            }
        }
    });
    out
}

/// The codes in the SIMD kernels' order. 8-bit rows: natural (byte `i` of the words is
/// code `i`). 4-bit rows: per step of 64 inputs, the 32 low nibbles' inputs then the 32
/// high nibbles': byte `4j + b` of the step's words holds codes `8j + 2b` (low nibble)
/// and `8j + 2b + 1` (high nibble).
fn arrange(codes: &[i8], bits: u8, out: &mut [i8]) {
    if bits != 4 {
        out.copy_from_slice(codes);
        return;
    }
    for (o, q) in out.chunks_exact_mut(64).zip(codes.chunks_exact(64)) {
        for i in 0..32 {
            o[i] = q[2 * i];
            o[32 + i] = q[2 * i + 1];
        }
    }
}

/// `out[r]` = row `r`'s `Σ_g s_g · (Σ_{b∈g} d_b · Σ_{c∈b} q_c·xq_c − z_g · X̂_g)` for
/// `PER` codes a word (8: 4-bit, 4: 8-bit), token input `x`, for the first `out.len()`
/// rows of `m`. The widest kernel the CPU has, chosen once for all the rows: AVX-512 VNNI
/// (`vpdpbusd`, 4- and 8-bit), AVX2 (`vpmaddubsw` + `vpmaddwd`, 4-bit only: 8-bit pairs
/// could saturate 16 bits), else the plain loops. Same bits.
pub fn rows_dot_int8<const PER: usize>(m: PackedRows, x: TokenInput, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512vnni") && std::arch::is_x86_feature_detected!("avx512vl") {
            // SAFETY: the features are present; the loops stay inside the rows and `x`.
            return unsafe { rows_dot_int8_vnni::<PER>(m, x, out) };
        }
        if PER == 8 && std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: as above.
            return unsafe { rows_dot_int8_avx2::<PER>(m, x, out) };
        }
    }
    for (r, o) in out.iter_mut().enumerate() {
        let (words, scales, zeros) = m.row(r);
        *o = row_dot_int8_plain::<PER>(words, x, m.width, scales, zeros);
    }
}

/// The reference arithmetic, from the natural codes and block scales: per step, lane
/// `j`'s exact integer sum over word `j`, `acc[j] = fma(sum, s_g·d_b, acc[j])`; reduced
/// by halves; the zero points come off through `X̂_g`.
pub fn row_dot_int8_plain<const PER: usize>(
    words: &[u32],
    x: TokenInput,
    width: usize,
    scales: &[f32],
    zeros: &[u8],
) -> f32 {
    let bits = 32 / PER;
    let mask = (1u32 << bits) - 1;
    let step_cols = STEP_WORDS * PER;
    let steps = (words.len() / STEP_WORDS).min(x.codes.len() / step_cols);
    let group_steps = width / step_cols;
    let mut acc = [0.0f32; STEP_WORDS];
    let mut offset = 0.0f32;
    let (mut st0, mut g) = (0, 0);
    while st0 < steps {
        let end = (st0 + group_steps).min(steps);
        for st in st0..end {
            for (j, aj) in acc.iter_mut().enumerate() {
                let w = words[st * STEP_WORDS + j];
                let c0 = st * step_cols + j * PER;
                let mut sum = 0i32;
                for k in 0..PER {
                    sum += ((w >> (bits * k)) & mask) as i32 * x.codes[c0 + k] as i32;
                }
                *aj = (sum as f32).mul_add(scales[g] * x.d[c0 / ACT_BLOCK], *aj);
            }
        }
        offset += scales[g] * (zeros[g] as f32 * x.gsums[g]);
        (st0, g) = (end, g + 1);
    }
    sum_by_halves(acc) - offset
}

/// The x86 twins of [`row_dot_int8_plain`], row after row (one call for a task's rows: no
/// dispatch or call per row): `$sum(ia, w, xa)` adds one step's products (32 bytes of
/// words `w`, their arranged inputs at `xa`) into the 8 lanes `ia`.
macro_rules! row_dot_int8_x86 {
    ($(#[$meta:meta])* $name:ident, $features:literal, |$ia:ident, $w:ident, $xa:ident| $sum:expr) => {
        $(#[$meta])*
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        unsafe fn $name<const PER: usize>(m: PackedRows, x: TokenInput, out: &mut [f32]) {
            use std::arch::x86_64::*;
            for (r, o) in out.iter_mut().enumerate() {
            let (words, scales, zeros) = m.row(r);
            let width = m.width;
            let step_cols = STEP_WORDS * PER;
            let steps = (words.len() / STEP_WORDS).min(x.arranged.len() / step_cols).min(x.lane_d.len() / STEP_WORDS);
            let group_steps = width / step_cols;
            let mut acc = _mm256_setzero_ps();
            let mut offset = 0.0f32;
            let (mut st0, mut g) = (0, 0);
            while st0 < steps {
                let end = (st0 + group_steps).min(steps);
                let s = _mm256_set1_ps(scales[g]);
                for st in st0..end {
                    // SAFETY: st < steps: the step's words, inputs and lane scales exist.
                    let $w = _mm256_loadu_si256(words.as_ptr().add(st * STEP_WORDS) as *const __m256i);
                    let $xa = x.arranged.as_ptr().add(st * step_cols);
                    let $ia = _mm256_setzero_si256();
                    let sd = _mm256_mul_ps(s, _mm256_loadu_ps(x.lane_d.as_ptr().add(st * STEP_WORDS)));
                    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps($sum), sd, acc);
                }
                offset += scales[g] * (zeros[g] as f32 * x.gsums[g]);
                (st0, g) = (end, g + 1);
            }
            *o = sum_by_halves_m256(acc) - offset;
            }
        }
    };
}

/// The low and high nibbles of 32 bytes (4-bit codes), each a byte.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn nibbles(w: std::arch::x86_64::__m256i) -> (std::arch::x86_64::__m256i, std::arch::x86_64::__m256i) {
    use std::arch::x86_64::*;
    let m = _mm256_set1_epi8(0x0F);
    (_mm256_and_si256(w, m), _mm256_and_si256(_mm256_srli_epi16(w, 4), m))
}

row_dot_int8_x86!(
    /// AVX-512 VNNI on 256-bit registers: `vpdpbusd` adds 4 byte products to each lane.
    rows_dot_int8_vnni, "avx512f,avx512vl,avx512vnni,avx2,fma",
    |ia, w, xa| if PER == 8 {
        let (lo, hi) = nibbles(w);
        let ia = _mm256_dpbusd_epi32(ia, lo, _mm256_loadu_si256(xa as *const __m256i));
        _mm256_dpbusd_epi32(ia, hi, _mm256_loadu_si256(xa.add(32) as *const __m256i))
    } else {
        _mm256_dpbusd_epi32(ia, w, _mm256_loadu_si256(xa as *const __m256i))
    }
);

row_dot_int8_x86!(
    /// AVX2, 4-bit codes: `vpmaddubsw` (pairs, at most 2·15·127: no saturation), then
    /// `vpmaddwd` by ones (4 bytes a lane).
    rows_dot_int8_avx2, "avx2,fma",
    |ia, w, xa| {
        let ones = _mm256_set1_epi16(1);
        let (lo, hi) = nibbles(w);
        let plo = _mm256_maddubs_epi16(lo, _mm256_loadu_si256(xa as *const __m256i));
        let phi = _mm256_maddubs_epi16(hi, _mm256_loadu_si256(xa.add(32) as *const __m256i));
        _mm256_add_epi32(ia, _mm256_add_epi32(_mm256_madd_epi16(plo, ones), _mm256_madd_epi16(phi, ones)))
    }
);

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// `ROWS` random rows of `cols` codes, their scales and zeros, and an input.
    const ROWS: usize = 3;
    fn case(rng: &mut impl Rng, bits: u8, cols: usize, width: usize) -> (Vec<u32>, Vec<f32>, Vec<f32>, Vec<u8>) {
        let per = 32 / bits as usize;
        let words: Vec<u32> = (0..ROWS * cols / per).map(|_| rng.random()).collect();
        let mut x: Vec<f32> = (0..cols).map(|_| rng.random_range(-3.0..3.0)).collect();
        x[1] = 5e3; // an outlier
        x[2] = 0.0;
        if cols >= 2 * ACT_BLOCK {
            x[ACT_BLOCK..2 * ACT_BLOCK].fill(0.0); // a block of zeros: d = 0
        }
        let groups = ROWS * cols.div_ceil(width);
        let scales: Vec<f32> = (0..groups).map(|_| rng.random_range(0.001..0.1)).collect();
        let zeros: Vec<u8> = (0..groups).map(|_| rng.random_range(0..=(1u32 << bits) - 1) as u8).collect();
        (words, x, scales, zeros)
    }

    fn codes_of(words: &[u32], bits: u8) -> Vec<f32> {
        let per = 32 / bits as usize;
        let mask = (1u32 << bits) - 1;
        words.iter().flat_map(|&w| (0..per).map(move |k| ((w >> (bits as usize * k)) & mask) as f32)).collect()
    }

    const SHAPES: [(u8, usize, usize); 6] =
        [(4, 576, 64), (4, 1536, 128), (4, 192, 192), (8, 576, 576), (8, 128, 64), (4, 320, 128)];

    /// Every kernel the CPU has gives the plain loops' bits (outliers, a zero block,
    /// ragged last groups), and the plain loops compute `Σ_g s_g Σ_c (q_c − z_g)·x̂_c`.
    #[test]
    fn the_int8_kernels_match_the_plain_loops_and_the_rounded_product() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(21);
        for (bits, cols, width) in SHAPES {
            let (words, x, scales, zeros) = case(&mut rng, bits, cols, width);
            let mut inp = Int8Input::default();
            inp.fill(&x, cols, bits, width);
            let x1 = inp.token(0);
            let m = PackedRows {
                words: &words,
                row_words: cols * bits as usize / 32,
                scales: &scales,
                zeros: &zeros,
                groups: cols.div_ceil(width),
                width,
            };
            let plain: Vec<f32> = (0..ROWS)
                .map(|r| {
                    let (w, s, z) = m.row(r);
                    match bits {
                        4 => row_dot_int8_plain::<8>(w, x1, width, s, z),
                        _ => row_dot_int8_plain::<4>(w, x1, width, s, z),
                    }
                })
                .collect();
            let bits_of = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            let mut fast = vec![f32::NAN; ROWS];
            match bits {
                4 => rows_dot_int8::<8>(m, x1, &mut fast),
                _ => rows_dot_int8::<4>(m, x1, &mut fast),
            }
            assert_eq!(bits_of(&fast), bits_of(&plain), "{bits} bits, {cols} cols, groups of {width}");
            #[cfg(target_arch = "x86_64")]
            {
                if is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512vl") {
                    let mut v = vec![f32::NAN; ROWS];
                    // SAFETY: features checked.
                    unsafe {
                        match bits {
                            4 => rows_dot_int8_vnni::<8>(m, x1, &mut v),
                            _ => rows_dot_int8_vnni::<4>(m, x1, &mut v),
                        }
                    };
                    assert_eq!(bits_of(&v), bits_of(&plain), "vnni: {bits} bits, {cols} cols");
                }
                if bits == 4 && is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                    let mut v = vec![f32::NAN; ROWS];
                    // SAFETY: features checked.
                    unsafe { rows_dot_int8_avx2::<8>(m, x1, &mut v) };
                    assert_eq!(bits_of(&v), bits_of(&plain), "avx2: {cols} cols");
                }
            }
            // Against f64: the dequantized rows times the rounded input.
            let q = codes_of(&words, bits);
            for (r, &got) in plain.iter().enumerate() {
                let (mut want, mut mag) = (0.0f64, 0.0f64);
                for c in 0..cols {
                    let g = r * m.groups + c / width;
                    let xhat = x1.d[c / ACT_BLOCK] as f64 * x1.codes[c] as f64;
                    let w = scales[g] as f64 * (q[r * cols + c] as f64 - zeros[g] as f64);
                    want += w * xhat;
                    mag += (w * xhat).abs();
                }
                assert!((got as f64 - want).abs() <= 1e-5 * mag, "{bits} bits {cols} row {r}: {got} vs {want}");
            }
        }
    }

    /// The rounding: every code within half a step of `x / d`, the block maximum at ±127,
    /// a zero block all zeros; several tokens filled at once equal one by one, and equal
    /// the prefill's `round_rows`.
    #[test]
    fn inputs_round_to_q8_blocks() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(22);
        let cols = 192;
        let mut x: Vec<f32> = (0..3 * cols).map(|_| rng.random_range(-2.0..2.0)).collect();
        x[cols + 32..cols + 64].fill(0.0);
        let mut all = Int8Input::default();
        all.fill(&x, cols, 4, 128);
        // The prefill's f32 rounding is the same `d_b · xq`.
        let rounded = round_rows(&x, cols);
        for (i, &v) in rounded.iter().enumerate() {
            let tk = all.token(i / cols);
            let c = i % cols;
            assert_eq!(v.to_bits(), (tk.d[c / ACT_BLOCK] * tk.codes[c] as f32).to_bits());
        }
        for t in 0..3 {
            let mut one = Int8Input::default();
            one.fill(&x[t * cols..(t + 1) * cols], cols, 4, 128);
            let (a, b) = (one.token(0), all.token(t));
            assert_eq!((a.codes, a.arranged, a.d, a.lane_d, a.gsums), (b.codes, b.arranged, b.d, b.lane_d, b.gsums));
            for (b, &db) in b.d.iter().enumerate() {
                let blk = &x[t * cols + b * ACT_BLOCK..t * cols + (b + 1) * ACT_BLOCK];
                let q = &all.token(t).codes[b * ACT_BLOCK..(b + 1) * ACT_BLOCK];
                if db == 0.0 {
                    assert!(q.iter().all(|&v| v == 0));
                    continue;
                }
                assert_eq!(q.iter().map(|v| v.unsigned_abs()).max(), Some(127));
                for (&v, &c) in blk.iter().zip(q) {
                    assert!((v / db - c as f32).abs() <= 0.5 + 1e-3, "{v} / {db} -> {c}");
                }
            }
        }
    }
}
