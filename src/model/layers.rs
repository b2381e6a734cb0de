//! Elementwise and attention layers of the LLaMA block, f32, parallel over rows.
//! Shapes: activations are `[tokens, width]` row-major, tokens = windows × seq.

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

/// Rotary embedding tables for rotate-half RoPE: `cos`, `sin` of shape `[seq, head_dim/2]`.
pub struct Rope {
    pub half: usize,
    pub seq: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl Rope {
    /// inv_freq in f32 as transformers computes it: `1 / theta^(2i/d)`; angle = pos·inv_freq in f32.
    pub fn new(head_dim: usize, seq: usize, theta: f32) -> Self {
        let half = head_dim / 2;
        let inv: Vec<f32> = (0..half).map(|i| 1.0 / theta.powf((2 * i) as f32 / head_dim as f32)).collect();
        let mut cos = Vec::with_capacity(seq * half);
        let mut sin = Vec::with_capacity(seq * half);
        for p in 0..seq {
            for &f in &inv {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        Self { half, seq, cos, sin }
    }

    /// Rotate every head of `x` (`[windows·seq, heads·head_dim]`) in place; position = row % seq.
    pub fn apply(&self, x: &mut [f32], heads: usize) {
        let hd = 2 * self.half;
        let width = heads * hd;
        x.par_chunks_mut(width).enumerate().for_each(|(row, r)| {
            let p = row % self.seq;
            let (c, s) = (&self.cos[p * self.half..(p + 1) * self.half], &self.sin[p * self.half..(p + 1) * self.half]);
            for h in r.chunks_mut(hd) {
                let (a, b) = h.split_at_mut(self.half);
                for i in 0..self.half {
                    let (x0, x1) = (a[i], b[i]);
                    a[i] = x0 * c[i] - x1 * s[i];
                    b[i] = x1 * c[i] + x0 * s[i];
                }
            }
        });
    }
}

/// `gate[i] = silu(gate[i]) * up[i]` (SwiGLU), in place in `gate`.
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    gate.par_chunks_mut(4096).zip(up.par_chunks(4096)).for_each(|(g, u)| {
        for (g, &u) in g.iter_mut().zip(u) {
            *g = *g / (1.0 + (-*g).exp()) * u;
        }
    });
}

/// Causal grouped-query attention over independent windows.
/// q: `[windows·seq, heads·hd]`, k, v: `[windows·seq, kv_heads·hd]`, out: `[windows·seq, heads·hd]`.
/// Each window attends only to itself: nothing crosses windows.
pub fn causal_attention(q: &[f32], k: &[f32], v: &[f32], windows: usize, seq: usize, heads: usize, kv_heads: usize, hd: usize, out: &mut [f32]) {
    let (qw, kvw) = (heads * hd, kv_heads * hd);
    let group = heads / kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    // Per (window, head) result, contiguous [seq, hd], then scattered into `out`.
    let mut per_head = vec![0.0f32; windows * heads * seq * hd];
    per_head.par_chunks_mut(seq * hd).enumerate().for_each(|(task, o)| {
        let (w, h) = (task / heads, task % heads);
        let kvh = h / group;
        let base = w * seq;
        let qm = MatRef::from_row_major_slice_with_stride(&q[base * qw + h * hd..], seq, hd, qw);
        let km = MatRef::from_row_major_slice_with_stride(&k[base * kvw + kvh * hd..], seq, hd, kvw);
        let vm = MatRef::from_row_major_slice_with_stride(&v[base * kvw + kvh * hd..], seq, hd, kvw);
        let mut scores = vec![0.0f32; seq * seq];
        matmul(MatMut::from_row_major_slice_mut(&mut scores, seq, seq), Accum::Replace, qm, km.transpose(), scale, Par::Seq);
        for (i, row) in scores.chunks_mut(seq).enumerate() {
            let valid = &mut row[..=i];
            let m = valid.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0f32;
            for s in valid.iter_mut() {
                *s = (*s - m).exp();
                sum += *s;
            }
            let inv = 1.0 / sum;
            valid.iter_mut().for_each(|s| *s *= inv);
            row[i + 1..].iter_mut().for_each(|s| *s = 0.0);
        }
        let sm = MatRef::from_row_major_slice(&scores, seq, seq);
        matmul(MatMut::from_row_major_slice_mut(o, seq, hd), Accum::Replace, sm, vm, 1.0f32, Par::Seq);
    });
    out.par_chunks_mut(qw).enumerate().for_each(|(row, o)| {
        let (w, t) = (row / seq, row % seq);
        for h in 0..heads {
            let src = &per_head[((w * heads + h) * seq + t) * hd..][..hd];
            o[h * hd..(h + 1) * hd].copy_from_slice(src);
        }
    });
}

/// `x += y`, in parallel.
pub fn add_assign(x: &mut [f32], y: &[f32]) {
    x.par_chunks_mut(4096).zip(y.par_chunks(4096)).for_each(|(a, b)| a.iter_mut().zip(b).for_each(|(a, b)| *a += b));
}

/// `x[t] += bias` for every row.
pub fn add_bias(x: &mut [f32], bias: &[f32]) {
    x.par_chunks_mut(bias.len()).for_each(|r| r.iter_mut().zip(bias).for_each(|(a, b)| *a += b));
}
