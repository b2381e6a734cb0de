//! Elementwise and attention layers of the LLaMA block, f32, parallel over rows.
//! Shapes: activations are `[tokens, width]` row-major, tokens = windows × seq.

use super::fastexp;
use super::rope::RopeConfig;
use faer::{linalg::matmul::matmul, Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

/// `out[t] = x[t] / rms(x[t]) * weight` (RMSNorm, eps inside the root, as HF LlamaRMSNorm).
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let d = weight.len();
    out.par_chunks_mut(d).zip(x.par_chunks(d)).for_each(|(o, xi)| {
        let ms = xi.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / d as f64;
        let inv = (1.0 / (ms + eps as f64).sqrt()) as f32;
        for ((o, &v), &w) in o.iter_mut().zip(xi).zip(weight) {
            *o = w * (v * inv);
        }
    });
}

/// Rotary embedding tables for rotate-half RoPE: `cos`, `sin` of shape `[seq, rotary_dim/2]`,
/// already multiplied by the scaling's attention factor (transformers: `emb.cos() * attention_scaling`).
pub struct Rope {
    pub half: usize,
    pub head_dim: usize,
    pub seq: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
    /// The tables of sliding-window blocks where they differ (gemma3's local base).
    local: Option<Box<Rope>>,
    /// longrope in a KV cache longer than `original_max_position_embeddings`: these tables
    /// are the short factors', and `(original, long)` are used once a forward reaches
    /// beyond `original` positions (transformers' `dynamic_rope_update`: the factors of
    /// each step follow the sequence length then; keys already cached keep theirs).
    long: Option<(usize, Box<Rope>)>,
}

impl Rope {
    /// Plain RoPE over all of `head_dim`: inv_freq in f32 as transformers computes it,
    /// `1 / theta^(2i/d)`; angle = pos·inv_freq in f32.
    pub fn new(head_dim: usize, seq: usize, theta: f32) -> Self {
        Self::from_config(&RopeConfig::plain(theta, head_dim), head_dim, seq)
    }

    /// The tables of `rope` (any scaling) for heads of `head_dim` and sequences of `seq`.
    pub fn from_config(rope: &RopeConfig, head_dim: usize, seq: usize) -> Self {
        Self::tables(rope, head_dim, seq, seq)
    }

    /// `positions` rows of tables with the frequencies of a sequence of `seq_for_freq`.
    fn tables(rope: &RopeConfig, head_dim: usize, positions: usize, seq_for_freq: usize) -> Self {
        let (inv, scale) = rope.inv_freq(seq_for_freq);
        let seq = positions;
        let half = inv.len();
        let mut cos = Vec::with_capacity(seq * half);
        let mut sin = Vec::with_capacity(seq * half);
        for p in 0..seq {
            for &f in &inv {
                let a = p as f32 * f;
                cos.push(a.cos() * scale);
                sin.push(a.sin() * scale);
            }
        }
        Self { half, head_dim, seq, cos, sin, local: None, long: None }
    }

    /// Tables for a KV cache of `capacity` positions: as [`Rope::with_local`], but a
    /// longrope model starts on its short factors and switches to the long ones only in
    /// forwards that reach past its original context ([`Rope::apply_from`]).
    pub fn for_cache(rope: &RopeConfig, local: Option<&RopeConfig>, head_dim: usize, capacity: usize) -> Self {
        let mut r = match rope.longrope_original().filter(|&o| capacity > o) {
            Some(original) => {
                let mut short = Self::tables(rope, head_dim, capacity, original);
                short.long = Some((original, Box::new(Self::from_config(rope, head_dim, capacity))));
                short
            }
            None => Self::from_config(rope, head_dim, capacity),
        };
        r.local = local.map(|l| Box::new(Self::from_config(l, head_dim, capacity)));
        r
    }

    /// Tables for full-attention blocks (`rope`) and, where given, for sliding-window
    /// blocks (`local`).
    pub fn with_local(rope: &RopeConfig, local: Option<&RopeConfig>, head_dim: usize, seq: usize) -> Self {
        let mut r = Self::from_config(rope, head_dim, seq);
        r.local = local.map(|l| Box::new(Self::from_config(l, head_dim, seq)));
        r
    }

    /// The tables of a block: the local ones for a sliding-window block where there are any.
    pub fn for_block(&self, sliding: bool) -> &Rope {
        match (&self.local, sliding) {
            (Some(l), true) => l,
            _ => self,
        }
    }

    /// Rotate every head of `x` (`[windows·seq, heads·head_dim]`) in place; position = row % seq.
    /// Only the first `2·half` dimensions of each head rotate (partial rotary).
    pub fn apply(&self, x: &mut [f32], heads: usize) {
        self.rotate(x, heads, |row| row % self.seq);
    }

    /// Rotate the rows of `x` (`[rows, heads·head_dim]`) at positions `pos0 ..` in place
    /// (new tokens after `pos0` cached ones). Panics past the table's `seq` positions.
    pub fn apply_from(&self, x: &mut [f32], heads: usize, pos0: usize) {
        let rows = x.len() / (heads * self.head_dim).max(1);
        assert!(pos0 + rows <= self.seq, "RoPE table of {} positions, asked for {}", self.seq, pos0 + rows);
        match &self.long {
            Some((original, long)) if pos0 + rows > *original => long.rotate(x, heads, |row| pos0 + row),
            _ => self.rotate(x, heads, |row| pos0 + row),
        }
    }

    fn rotate(&self, x: &mut [f32], heads: usize, position: impl Fn(usize) -> usize + Sync) {
        let hd = self.head_dim;
        let width = heads * hd;
        x.par_chunks_mut(width).enumerate().for_each(|(row, r)| {
            let p = position(row);
            let (c, s) = (&self.cos[p * self.half..(p + 1) * self.half], &self.sin[p * self.half..(p + 1) * self.half]);
            rotate_row(r, hd, 2 * self.half, c, s);
        });
    }
}

simd_kernel! {
    /// Rotate-half RoPE of the first `rd` dimensions of every head of one row `r`
    /// (`[heads·hd]`) by `cos`, `sin` (`[rd/2]`).
    fn rotate_row(r: &mut [f32], hd: usize, rd: usize, cos: &[f32], sin: &[f32]) {
        for h in r.chunks_mut(hd) {
            let (a, b) = h[..rd].split_at_mut(rd / 2);
            for (((a, b), &c), &s) in a.iter_mut().zip(b.iter_mut()).zip(cos).zip(sin) {
                let (x0, x1) = (*a, *b);
                *a = x0 * c - x1 * s;
                *b = x1 * c + x0 * s;
            }
        }
    }
}

/// `gate[i] = silu(gate[i]) * up[i]` (SwiGLU), in place in `gate`.
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    gate.par_chunks_mut(4096).zip(up.par_chunks(4096)).for_each(|(g, u)| swiglu_chunk(g, u));
}

simd_kernel! {
    fn swiglu_chunk(gate: &mut [f32], up: &[f32]) {
        for (g, &u) in gate.iter_mut().zip(up) {
            *g = *g / (1.0 + fastexp::exp(-*g)) * u;
        }
    }
}

/// `gate[i] = gelu_tanh(gate[i]) * up[i]` (GeGLU with torch's `gelu(approximate="tanh")`:
/// `0.5·g·(1 + tanh(√(2/π)·(g + 0.044715·g³)))`, gemma's `gelu_pytorch_tanh`), in place.
pub fn geglu_tanh(gate: &mut [f32], up: &[f32]) {
    gate.par_chunks_mut(4096).zip(up.par_chunks(4096)).for_each(|(g, u)| {
        for (g, &u) in g.iter_mut().zip(u) {
            *g = gelu_tanh(*g) * u;
        }
    });
}

/// torch's tanh-approximated GELU, in f32 as its CPU kernel evaluates it.
#[inline]
pub fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6; // √2 · (2/√π) · 0.5 = √(2/π)
    const KAPPA: f32 = 0.044715;
    let inner = SQRT_2_OVER_PI * (x + KAPPA * x * x * x);
    0.5 * x * (1.0 + inner.tanh())
}

/// How one head's scores are formed and masked: `scores = q·kᵀ·scale`, then
/// `softcap·tanh(scores/softcap)` (gemma2), then the causal mask with an optional sliding
/// window (query `i` sees keys `i-w < j <= i`, transformers' `sliding_window_overlay`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttnParams {
    pub scale: f32,
    pub softcap: Option<f32>,
    pub sliding: Option<usize>,
}

/// Query rows per attention block (see [`causal_attention`]).
const ATTN_BLOCK: usize = 128;

/// Causal grouped-query attention over independent windows.
/// q: `[windows·seq, heads·hd]`, k, v: `[windows·seq, kv_heads·hd]`, out: `[windows·seq, heads·hd]`.
/// Each window attends only to itself: nothing crosses windows. Scores as `p` says.
pub fn causal_attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    windows: usize,
    seq: usize,
    heads: usize,
    kv_heads: usize,
    hd: usize,
    p: AttnParams,
    out: &mut [f32],
) {
    let (qw, kvw) = (heads * hd, kv_heads * hd);
    let group = heads / kv_heads;
    // Per (window, head) result, contiguous [seq, hd], then scattered into `out`.
    let mut per_head = vec![0.0f32; windows * heads * seq * hd];
    per_head.par_chunks_mut(seq * hd).enumerate().for_each(|(task, o)| {
        let (w, h) = (task / heads, task % heads);
        let kvh = h / group;
        let base = w * seq;
        let qm = MatRef::from_row_major_slice_with_stride(&q[base * qw + h * hd..], seq, hd, qw);
        let km = MatRef::from_row_major_slice_with_stride(&k[base * kvw + kvh * hd..], seq, hd, kvw);
        let vm = MatRef::from_row_major_slice_with_stride(&v[base * kvw + kvh * hd..], seq, hd, kvw);
        attend_head(qm, km, vm, 0, p, o);
    });
    scatter_heads(&per_head, seq, heads, hd, out);
}

/// Attention of `rows` new queries at positions `pos0 .. pos0+rows` over the keys and
/// values of positions `0 .. pos0+rows` (a KV cache holding the past and the new rows).
/// q: `[rows, heads·hd]`; k, v: at least `pos0+rows` rows of `kv_heads·hd`;
/// out: `[rows, heads·hd]`. The same per-head kernel as [`causal_attention`], so a prefill
/// through the cache computes what a window computes.
pub fn cached_attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    pos0: usize,
    rows: usize,
    heads: usize,
    kv_heads: usize,
    hd: usize,
    p: AttnParams,
    out: &mut [f32],
) {
    let (qw, kvw) = (heads * hd, kv_heads * hd);
    let (group, keys) = (heads / kv_heads, pos0 + rows);
    assert!(k.len() >= keys * kvw && v.len() >= keys * kvw, "cached_attention: cache holds fewer than {keys} rows");
    let mut per_head = vec![0.0f32; heads * rows * hd];
    per_head.par_chunks_mut(rows * hd).enumerate().for_each(|(h, o)| {
        let kvh = h / group;
        let qm = MatRef::from_row_major_slice_with_stride(&q[h * hd..], rows, hd, qw);
        let km = MatRef::from_row_major_slice_with_stride(&k[kvh * hd..], keys, hd, kvw);
        let vm = MatRef::from_row_major_slice_with_stride(&v[kvh * hd..], keys, hd, kvw);
        attend_head(qm, km, vm, pos0, p, o);
    });
    scatter_heads(&per_head, rows, heads, hd, out);
}

/// One head: `o` (`[rows, hd]`) = softmax(q·kᵀ·scale, soft-cap, causal and sliding mask)·v for queries
/// `q` (`[rows, hd]`) at positions `pos0 ..`, keys/values `k`, `v` (`[pos0+rows, hd]`).
/// Query rows go in blocks of [`ATTN_BLOCK`]: block `[r0, r1)` only needs keys up to its
/// last position, which skips most of the masked upper triangle (and, with a sliding
/// window, the keys before the first row's window).
fn attend_head(qm: MatRef<f32>, km: MatRef<f32>, vm: MatRef<f32>, pos0: usize, p: AttnParams, o: &mut [f32]) {
    let (rows, hd) = (qm.nrows(), qm.ncols());
    let (scale, sliding) = (p.scale, p.sliding);
    let mut scores = vec![0.0f32; ATTN_BLOCK.min(rows) * km.nrows()];
    for r0 in (0..rows).step_by(ATTN_BLOCK) {
        let r1 = (r0 + ATTN_BLOCK).min(rows);
        let (p0, p1) = (pos0 + r0, pos0 + r1);
        let k0 = sliding.map_or(0, |w| (p0 + 1).saturating_sub(w));
        let (n, keys) = (r1 - r0, p1 - k0);
        let sc = &mut scores[..n * keys];
        matmul(
            MatMut::from_row_major_slice_mut(sc, n, keys),
            Accum::Replace,
            qm.subrows(r0, n),
            km.subrows(k0, keys).transpose(),
            scale,
            Par::Seq,
        );
        if let Some(c) = p.softcap {
            // transformers' eager attention: `w / c`, `tanh`, `* c` (masked entries are
            // overwritten by the softmax below).
            sc.iter_mut().for_each(|s| *s = (*s / c).tanh() * c);
        }
        causal_softmax_rows(sc, keys, p0 - k0, sliding.unwrap_or(usize::MAX));
        let sm = MatRef::from_row_major_slice(sc, n, keys);
        let om = MatMut::from_row_major_slice_mut(&mut o[r0 * hd..r1 * hd], n, hd);
        matmul(om, Accum::Replace, sm, vm.subrows(k0, keys), 1.0f32, Par::Seq);
    }
}

/// `[windows, heads, seq, hd]` per-head results into rows `out` `[windows·seq, heads·hd]`.
fn scatter_heads(per_head: &[f32], seq: usize, heads: usize, hd: usize, out: &mut [f32]) {
    out.par_chunks_mut(heads * hd).enumerate().for_each(|(row, o)| {
        let (w, t) = (row / seq, row % seq);
        for h in 0..heads {
            let src = &per_head[((w * heads + h) * seq + t) * hd..][..hd];
            o[h * hd..(h + 1) * hd].copy_from_slice(src);
        }
    });
}

simd_kernel! {
    /// Softmax of each row `i` of `scores` (`[rows, keys]`) over keys
    /// `first + i + 1 - window .. first + i + 1` (the causal, sliding-window mask of query
    /// `first + i`; `window = usize::MAX` for full causal); the masked rest is set to 0.
    fn causal_softmax_rows(scores: &mut [f32], keys: usize, first: usize, window: usize) {
        for (i, row) in scores.chunks_mut(keys).enumerate() {
            let (row, masked) = row.split_at_mut(first + i + 1);
            let (before, valid) = row.split_at_mut((first + i + 1).saturating_sub(window));
            before.iter_mut().for_each(|s| *s = 0.0);
            let m = lane_max(valid);
            // Separate passes: a running sum in the exp loop would keep it scalar.
            valid.iter_mut().for_each(|s| *s = fastexp::exp(*s - m));
            let inv = 1.0 / lane_sum(valid);
            valid.iter_mut().for_each(|s| *s *= inv);
            masked.iter_mut().for_each(|s| *s = 0.0);
        }
    }
}

/// Lanes of the softmax reductions: partial results per lane let LLVM keep them in
/// vector registers (a single f32 accumulator is a serial chain it may not reorder).
const LANES: usize = 16;

/// `max(x)` (−∞ for an empty slice), in `LANES` partial maxima.
#[inline(always)]
fn lane_max(x: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        lanes.iter_mut().zip(c).for_each(|(l, &v)| *l = if v > *l { v } else { *l });
    }
    let tail = chunks.remainder().iter().copied().fold(f32::NEG_INFINITY, f32::max);
    lanes.iter().copied().fold(tail, f32::max)
}

/// `Σ x` in `LANES` partial sums, added pairwise at the end.
#[inline(always)]
fn lane_sum(x: &[f32]) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        lanes.iter_mut().zip(c).for_each(|(l, &v)| *l += v);
    }
    super::linear::sum_by_halves(lanes) + chunks.remainder().iter().sum::<f32>()
}

/// Values per task of [`first_non_finite`].
const FINITE_CHUNK: usize = 1 << 14;

/// Index of the first NaN or ±∞ in `x`, if any: a branch-free, vectorized test of each
/// chunk in parallel (the check runs on every calibration activation, ~10⁹ values per
/// GPTQ run), then a plain scan of the first failing chunk. Same answer as
/// `x.iter().position(|v| !v.is_finite())`.
pub fn first_non_finite(x: &[f32]) -> Option<usize> {
    let chunk = x.par_chunks(FINITE_CHUNK).position_first(|part| !all_finite(part))?;
    let part = &x[chunk * FINITE_CHUNK..];
    Some(chunk * FINITE_CHUNK + part.iter().position(|v| !v.is_finite()).expect("chunk holds a non-finite value"))
}

simd_kernel! {
    fn all_finite(x: &[f32]) -> bool {
        // `|v| < ∞` is false for NaN and ±∞; `&` rather than `&&` keeps the loop branch-free.
        x.iter().fold(true, |ok, v| ok & (v.abs() < f32::INFINITY))
    }
}

/// `x += y`, in parallel.
pub fn add_assign(x: &mut [f32], y: &[f32]) {
    x.par_chunks_mut(4096).zip(y.par_chunks(4096)).for_each(|(a, b)| a.iter_mut().zip(b).for_each(|(a, b)| *a += b));
}

/// `x[t] += bias` for every row.
pub fn add_bias(x: &mut [f32], bias: &[f32]) {
    x.par_chunks_mut(bias.len()).for_each(|r| r.iter_mut().zip(bias).for_each(|(a, b)| *a += b));
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Plain causal GQA attention in f64, one position at a time.
    fn reference(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        windows: usize,
        seq: usize,
        heads: usize,
        kv: usize,
        hd: usize,
        p: AttnParams,
    ) -> Vec<f32> {
        let window = p.sliding.unwrap_or(usize::MAX);
        let (qw, kw) = (heads * hd, kv * hd);
        let mut out = vec![0.0f32; windows * seq * qw];
        for w in 0..windows {
            for h in 0..heads {
                let kh = h / (heads / kv);
                for i in 0..seq {
                    let qi = &q[(w * seq + i) * qw + h * hd..][..hd];
                    let lo = (i + 1).saturating_sub(window);
                    let s: Vec<f64> = (lo..=i)
                        .map(|j| {
                            qi.iter()
                                .zip(&k[(w * seq + j) * kw + kh * hd..][..hd])
                                .map(|(a, b)| *a as f64 * *b as f64)
                                .sum::<f64>()
                                * p.scale as f64
                        })
                        .map(|x| p.softcap.map_or(x, |c| (x / c as f64).tanh() * c as f64))
                        .collect();
                    let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                    for d in 0..hd {
                        out[(w * seq + i) * qw + h * hd + d] = (lo..=i)
                            .map(|j| (s[j - lo] - m).exp() / z * v[(w * seq + j) * kw + kh * hd + d] as f64)
                            .sum::<f64>() as f32;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn blocked_causal_attention_matches_reference() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        // Sliding windows: 1 (only itself), shorter than a query block, across block
        // boundaries, and wider than the sequence (the same as full causal).
        // Soft-capping (gemma2) with a scale that is not 1/√hd, with and without a window.
        let cases = [
            (2, 300, 6, 2, 8, None, None),
            (1, 1, 2, 1, 4, None, None),
            (3, 129, 4, 4, 6, None, None),
            (2, 300, 4, 2, 8, Some(1), None),
            (1, 300, 2, 1, 4, Some(7), None),
            (2, 260, 2, 2, 4, Some(130), None),
            (1, 40, 2, 1, 4, Some(1000), None),
            (2, 200, 4, 2, 8, None, Some(2.0)),
            (1, 150, 2, 1, 6, Some(9), Some(0.5)),
        ];
        for &(windows, seq, heads, kv, hd, sliding, softcap) in &cases {
            let mut gen = |n: usize| (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect::<Vec<_>>();
            let (q, k, v) =
                (gen(windows * seq * heads * hd), gen(windows * seq * kv * hd), gen(windows * seq * kv * hd));
            let mut out = vec![0.0; q.len()];
            let scale = if softcap.is_some() { 0.9 } else { (hd as f64).powf(-0.5) as f32 };
            let p = AttnParams { scale, softcap, sliding };
            causal_attention(&q, &k, &v, windows, seq, heads, kv, hd, p, &mut out);
            let r = reference(&q, &k, &v, windows, seq, heads, kv, hd, p);
            for (i, (a, b)) in out.iter().zip(&r).enumerate() {
                assert!(
                    (a - b).abs() < 1e-4,
                    "shape {:?} index {i}: {a} vs {b}",
                    (windows, seq, heads, kv, hd, sliding, softcap)
                );
            }
        }
    }

    /// Rows run through a cache in pieces (across query blocks and sliding windows) give
    /// what the whole window gives.
    #[test]
    fn cached_attention_in_pieces_matches_the_window() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(8);
        for &(seq, heads, kv, hd, sliding) in
            &[(300, 4, 2, 8, None), (300, 2, 1, 4, Some(7)), (140, 3, 3, 6, Some(130))]
        {
            let mut gen = |n: usize| (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect::<Vec<_>>();
            let (q, k, v) = (gen(seq * heads * hd), gen(seq * kv * hd), gen(seq * kv * hd));
            let mut whole = vec![0.0; q.len()];
            let p = AttnParams { scale: 0.3, softcap: Some(1.5), sliding };
            causal_attention(&q, &k, &v, 1, seq, heads, kv, hd, p, &mut whole);
            let qw = heads * hd;
            let mut from = 0;
            for to in [1, 129, 130, 131, seq - 1, seq] {
                let mut part = vec![0.0; (to - from) * qw];
                cached_attention(&q[from * qw..to * qw], &k, &v, from, to - from, heads, kv, hd, p, &mut part);
                for (i, (a, b)) in part.iter().zip(&whole[from * qw..to * qw]).enumerate() {
                    assert!((a - b).abs() < 1e-5, "rows {from}..{to} ({sliding:?}) index {i}: {a} vs {b}");
                }
                from = to;
            }
        }
    }

    #[test]
    fn lane_reductions_match_plain_folds() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        assert_eq!(lane_max(&[]), f32::NEG_INFINITY);
        assert_eq!(lane_sum(&[]), 0.0);
        for n in [1, 7, 15, 16, 17, 33, 300, 513] {
            let mut x: Vec<f32> = (0..n).map(|_| rng.random_range(-3.0f32..3.0)).collect();
            x[n / 2] = 1e4; // an outlier, anywhere in the lanes or the tail
            let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(lane_max(&x), max, "n = {n}");
            let sum: f64 = x.iter().map(|&v| v as f64).sum();
            assert!((lane_sum(&x) as f64 - sum).abs() <= 1e-6 * (1e4 + n as f64), "n = {n}");
        }
    }

    #[test]
    fn rms_norm_of_zero_row_is_finite() {
        let x = vec![0.0f32; 8];
        let mut o = vec![1.0f32; 8];
        rms_norm(&x, &[1.0; 8], 1e-5, &mut o);
        assert!(o.iter().all(|v| *v == 0.0));
    }

    /// GeGLU (tanh GELU) against the formula in f64: zeros, both tails, outliers.
    #[test]
    fn geglu_tanh_matches_the_formula_in_f64() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(6);
        let mut gate: Vec<f32> = (0..5000).map(|_| rng.random_range(-12.0f32..12.0)).collect();
        gate[..6].copy_from_slice(&[0.0, -0.0, 1e4, -1e4, 1e-30, -3.0]);
        let up: Vec<f32> = (0..5000).map(|_| rng.random_range(-3.0f32..3.0)).collect();
        let mut out = gate.clone();
        geglu_tanh(&mut out, &up);
        for (i, ((&o, &g), &u)) in out.iter().zip(&gate).zip(&up).enumerate() {
            let g = g as f64;
            let exact =
                0.5 * g * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (g + 0.044715 * g * g * g)).tanh()) * u as f64;
            assert!((o as f64 - exact).abs() <= 2e-6 * (1.0 + exact.abs()), "index {i}: {o} vs {exact}");
        }
    }

    /// The dispatched (AVX-512 / AVX2 / NEON) SwiGLU equals the baseline formula to the
    /// bit, and SiLU·up in f64 to a few ulp: odd lengths, zeros, outliers, exp's clamp edges.
    #[test]
    fn swiglu_dispatch_is_bit_identical_to_the_plain_formula() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        for n in [0usize, 1, 15, 17, 4096 + 33, 3 * 4096] {
            let mut gate: Vec<f32> = (0..n).map(|_| rng.random_range(-12.0f32..12.0)).collect();
            let up: Vec<f32> = (0..n).map(|_| rng.random_range(-3.0f32..3.0)).collect();
            for (i, v) in [0.0, -0.0, 1e4, -1e4, 87.5, -88.5, 1e-30].into_iter().enumerate() {
                if i < n {
                    gate[i * 7 % n] = v;
                }
            }
            let plain: Vec<f32> = gate.iter().zip(&up).map(|(&g, &u)| g / (1.0 + fastexp::exp(-g)) * u).collect();
            let mut fast = gate.clone();
            swiglu(&mut fast, &up);
            for (i, ((&a, &b), (&g, &u))) in fast.iter().zip(&plain).zip(gate.iter().zip(&up)).enumerate() {
                assert_eq!(a.to_bits(), b.to_bits(), "n {n} index {i}: {a} vs {b}");
                let exact = g as f64 / (1.0 + (-g as f64).exp()) * u as f64;
                assert!((a as f64 - exact).abs() <= 1e-6 * (1.0 + exact.abs()), "n {n} index {i}: {a} vs {exact}");
            }
        }
    }

    /// The dispatched RoPE equals the baseline loop to the bit and the f64 rotation closely.
    #[test]
    fn rope_dispatch_is_bit_identical_to_the_plain_rotation() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(6);
        for &(hd, rd, heads, seq, windows) in
            &[(64usize, 64usize, 9usize, 37usize, 2usize), (6, 6, 1, 5, 1), (2, 2, 3, 1, 4), (12, 8, 3, 9, 2)]
        {
            let rope = Rope::from_config(&RopeConfig { rotary_dim: rd, ..RopeConfig::plain(10000.0, hd) }, hd, seq);
            let mut x: Vec<f32> = (0..windows * seq * heads * hd).map(|_| rng.random_range(-4.0f32..4.0)).collect();
            x[0] = 1e5; // an outlier
            let mut fast = x.clone();
            rope.apply(&mut fast, heads);
            let half = rd / 2;
            for (row, (xr, fr)) in x.chunks(heads * hd).zip(fast.chunks(heads * hd)).enumerate() {
                let p = row % seq;
                for (xh, fh) in xr.chunks(hd).zip(fr.chunks(hd)) {
                    assert_eq!(xh[rd..], fh[rd..], "dimensions past rotary_dim pass through");
                    for i in 0..half {
                        let (c, s) = (rope.cos[p * half + i], rope.sin[p * half + i]);
                        let (x0, x1) = (xh[i], xh[half + i]);
                        assert_eq!(fh[i].to_bits(), (x0 * c - x1 * s).to_bits(), "row {row} dim {i}");
                        assert_eq!(fh[half + i].to_bits(), (x1 * c + x0 * s).to_bits(), "row {row} dim {}", half + i);
                        let exact = x0 as f64 * c as f64 - x1 as f64 * s as f64;
                        assert!((fh[i] as f64 - exact).abs() <= 1e-6 * (1.0 + x0.abs().max(x1.abs()) as f64));
                    }
                }
            }
        }
    }

    #[test]
    fn first_non_finite_matches_a_plain_scan() {
        assert_eq!(first_non_finite(&[]), None);
        let n = 3 * FINITE_CHUNK + 17;
        let clean: Vec<f32> = (0..n).map(|i| (i as f32).sin() * 1e30).collect();
        assert_eq!(first_non_finite(&clean), None);
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            for at in [0, 15, FINITE_CHUNK - 1, FINITE_CHUNK, 2 * FINITE_CHUNK + 5, n - 1] {
                let mut x = clean.clone();
                x[at] = bad;
                x[n - 1] = f32::NAN; // a later offender must not win
                assert_eq!(first_non_finite(&x), x.iter().position(|v| !v.is_finite()), "{bad} at {at}");
                assert_eq!(first_non_finite(&x), Some(at));
            }
        }
    }
}
