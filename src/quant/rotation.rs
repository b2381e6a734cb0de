//! Orthogonal rotations folded into the weights (QuaRot, Ashkboos et al. 2024; SpinQuant,
//! Liu et al. 2024): the residual stream `x` becomes `x·Q` for an orthogonal `Q`, so
//! outlier channels are spread over all channels before rounding, and the model computes
//! the same function with ordinary weights:
//!
//! - RMSNorm commutes with `Q` once its weight `g` is folded into the linears that read it
//!   (`‖x·Q‖ = ‖x‖`): readers `W [out, d]` become `W·diag(g)·Q`, the norm weight ones;
//! - writers of the stream (o_proj, down_proj: `W [d, in]`, bias `b`) become `Qᵀ·W`, `b·Q`;
//! - the embedding `E [vocab, d]` becomes `E·Q`, the head `H·diag(g_final)·Q` (a tied head
//!   is written as its own `lm_head`: the two differ by the final norm's weight);
//! - per head, v's outputs and o's inputs rotate by a second orthogonal `R` (`head_dim`):
//!   v's rows of each kv head `Rᵀ·W_v`, its bias `b·R`, o's columns of each head `W_o·R`.
//!
//! `Q = diag(s)·H/√n` with random signs `s` and a Hadamard matrix `H = A ⊗ H_{2^k}`
//! (Sylvester's `H_{2^k}` times a Paley matrix `A`: orders 12, 20, 28, 36, 60, ... cover
//! the common widths 576 = 36·16, 960 = 60·16, 1536 = 12·128, 3584 = 28·128, 5120 = 20·256),
//! applied as `Aᵀ·X·H_{2^k}` on each row reshaped `X [a, 2^k]`: `n·(a + log n)` operations
//! a row instead of `n²`. A width with no such factor takes a random orthogonal matrix
//! (Gram-Schmidt of a seeded Gaussian matrix; `kind = "orthogonal"` asks for it always).
//! Rows are rotated independently, in f64, so results do not depend on the thread count.

use crate::error::{Error, Result};
use crate::model::llama::{linear_index, linear_shape, stored_norm, InputSite};
use crate::model::LlamaConfig;
use crate::quant::awq::weights::BlockWeights;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

/// Which orthogonal matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RotationKind {
    /// Random signs times a Hadamard matrix (QuaRot); a random orthogonal matrix for a
    /// width without a known Hadamard factor.
    Hadamard,
    /// A random orthogonal matrix (Gram-Schmidt of a seeded Gaussian matrix).
    Orthogonal,
}

impl RotationKind {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "hadamard" => Ok(Self::Hadamard),
            "orthogonal" => Ok(Self::Orthogonal),
            other => Err(Error::option("rotate.kind", format!("{other:?} is not \"hadamard\" or \"orthogonal\""))),
        }
    }
}

enum Form {
    /// `A ⊗ H_b`: `A` a ±1 Hadamard matrix of order `a` (row-major), `H_b` Sylvester's.
    Kron { a: Vec<f64>, order_a: usize, order_b: usize },
    /// A dense orthogonal matrix `[n, n]`, row-major.
    Dense(Vec<f64>),
}

/// An orthogonal `n × n` matrix `Q`, applied to row vectors: `x ← x·Q`.
pub struct Orthogonal {
    dim: usize,
    /// `diag(s)` before the product (all ones for a dense matrix).
    signs: Vec<f64>,
    /// `1/√n` for a Hadamard product, 1 for a dense matrix.
    scale: f64,
    form: Form,
}

impl Orthogonal {
    /// The rotation of width `dim` of `kind`, from `seed`.
    pub fn new(dim: usize, kind: RotationKind, seed: u64) -> Self {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let hadamard = if kind == RotationKind::Hadamard { hadamard_factor(dim) } else { None };
        match hadamard {
            Some((order_a, a)) => Self {
                dim,
                signs: (0..dim).map(|_| if rng.random::<bool>() { 1.0 } else { -1.0 }).collect(),
                scale: 1.0 / (dim as f64).sqrt(),
                form: Form::Kron { a, order_a, order_b: dim / order_a },
            },
            None => {
                Self { dim, signs: vec![1.0; dim], scale: 1.0, form: Form::Dense(random_orthogonal(dim, &mut rng)) }
            }
        }
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// `hadamard 36 x 16` or `random orthogonal 100`, for logs and reports.
    pub fn describe(&self) -> String {
        match &self.form {
            Form::Kron { order_a: 1, order_b, .. } => format!("hadamard {order_b} (Sylvester)"),
            Form::Kron { order_a, order_b, .. } => format!("hadamard {} = {order_a} (Paley) x {order_b}", self.dim),
            Form::Dense(_) => format!("random orthogonal {}", self.dim),
        }
    }

    /// `x ← x·Q` for one row (`x.len() == dim`), through `scratch` (f64, reused).
    fn rotate_row_with(&self, x: &mut [f32], scratch: &mut Vec<f64>) {
        let n = self.dim;
        assert_eq!(x.len(), n, "a rotated row has the rotation's width");
        scratch.resize(2 * n, 0.0);
        let (buf, out) = scratch.split_at_mut(n);
        buf.iter_mut().zip(x.iter().zip(&self.signs)).for_each(|(b, (&v, &s))| *b = v as f64 * s);
        match &self.form {
            Form::Kron { a, order_a, order_b } => {
                let (oa, ob) = (*order_a, *order_b);
                for row in buf.chunks_mut(ob) {
                    fwht(row);
                }
                if oa == 1 {
                    x.iter_mut().zip(buf.iter()).for_each(|(o, &v)| *o = (v * self.scale) as f32);
                } else {
                    // out[i][j] = Σ_p A[p][i] · X[p][j]
                    out.fill(0.0);
                    for p in 0..oa {
                        let xp = &buf[p * ob..(p + 1) * ob];
                        for i in 0..oa {
                            let c = a[p * oa + i];
                            out[i * ob..(i + 1) * ob].iter_mut().zip(xp).for_each(|(o, &v)| *o += c * v);
                        }
                    }
                    x.iter_mut().zip(out.iter()).for_each(|(o, &v)| *o = (v * self.scale) as f32);
                }
            }
            Form::Dense(q) => {
                out.fill(0.0);
                for (i, &v) in buf.iter().enumerate() {
                    out.iter_mut().zip(&q[i * n..(i + 1) * n]).for_each(|(o, &c)| *o += v * c);
                }
                x.iter_mut().zip(out.iter()).for_each(|(o, &v)| *o = v as f32);
            }
        }
    }

    /// `x ← x·Q` for every row of `data` (`[rows, dim]` row-major, in parallel).
    pub fn rotate_rows(&self, data: &mut [f32]) {
        assert!(data.len().is_multiple_of(self.dim.max(1)), "rows of the rotation's width");
        data.par_chunks_mut(self.dim.max(1)).for_each_init(Vec::new, |buf, row| self.rotate_row_with(row, buf));
    }

    /// `W ← Qᵀ·W` for `W [dim, cols]` row-major: each column `c` becomes `Qᵀ·c`.
    pub fn rotate_columns(&self, data: &mut [f32], cols: usize) {
        let n = self.dim;
        assert_eq!(data.len(), n * cols, "a [dim, cols] matrix");
        let mut t: Vec<f32> = (0..cols * n).map(|k| data[(k % n) * cols + k / n]).collect();
        self.rotate_rows(&mut t);
        for (k, v) in t.into_iter().enumerate() {
            data[(k % n) * cols + k / n] = v;
        }
    }
}

/// In-place unnormalized Walsh-Hadamard transform: `x ← x·H_n` (Sylvester, `n` a power of 2).
fn fwht(x: &mut [f64]) {
    let n = x.len();
    let mut h = 1;
    while h < n {
        for i in (0..n).step_by(2 * h) {
            for j in i..i + h {
                let (a, b) = (x[j], x[j + h]);
                x[j] = a + b;
                x[j + h] = a - b;
            }
        }
        h *= 2;
    }
}

fn is_prime(q: usize) -> bool {
    q >= 2 && (2..).take_while(|d| d * d <= q).all(|d| !q.is_multiple_of(d))
}

/// `n = a · 2^k` with a ±1 Hadamard matrix `A` of order `a` (1, or Paley's): the smallest
/// such `a`, so the most of the product is the fast transform.
fn hadamard_factor(n: usize) -> Option<(usize, Vec<f64>)> {
    if n == 0 {
        return None;
    }
    let k = n.trailing_zeros();
    let m = n >> k;
    (0..=k).find_map(|j| {
        let a = m << j;
        if a == 1 {
            Some((1, vec![1.0]))
        } else {
            paley(a).map(|h| (a, h))
        }
    })
}

/// A Hadamard matrix of order `n` by Paley's constructions over a prime field `q`:
/// I for `n = q + 1`, `q ≡ 3 (mod 4)`; II for `n = 2(q + 1)`, `q ≡ 1 (mod 4)`.
fn paley(n: usize) -> Option<Vec<f64>> {
    if !n.is_multiple_of(4) {
        return None;
    }
    let conference = |q: usize, skew: bool| -> Vec<f64> {
        // Quadratic character of Z/q, and S [q+1, q+1]: border of ±1, Jacobsthal inside.
        let mut chi = vec![-1.0f64; q];
        chi[0] = 0.0;
        for x in 1..q {
            chi[x * x % q] = 1.0;
        }
        let m = q + 1;
        let mut s = vec![0.0; m * m];
        for j in 1..m {
            s[j] = 1.0;
            s[j * m] = if skew { -1.0 } else { 1.0 };
        }
        for i in 1..m {
            for j in 1..m {
                s[i * m + j] = chi[(j + q - i) % q];
            }
        }
        s
    };
    let q = n - 1;
    if is_prime(q) && q % 4 == 3 {
        let mut h = conference(q, true);
        (0..n).for_each(|i| h[i * n + i] += 1.0);
        return Some(h);
    }
    let q = n / 2 - 1;
    if is_prime(q) && q % 4 == 1 {
        let m = q + 1;
        let c = conference(q, false);
        let mut h = vec![0.0; n * n];
        for i in 0..m {
            for j in 0..m {
                // C ⊗ [[1, 1], [1, -1]] + I ⊗ [[1, -1], [-1, -1]]
                let (v, d) = (c[i * m + j], if i == j { 1.0 } else { 0.0 });
                h[(2 * i) * n + 2 * j] = v + d;
                h[(2 * i) * n + 2 * j + 1] = v - d;
                h[(2 * i + 1) * n + 2 * j] = v - d;
                h[(2 * i + 1) * n + 2 * j + 1] = -v - d;
            }
        }
        return Some(h);
    }
    None
}

/// A random orthogonal `[n, n]` (row-major): modified Gram-Schmidt, twice, of a Gaussian
/// matrix (Box-Muller from `rng`).
fn random_orthogonal(n: usize, rng: &mut rand_chacha::ChaCha8Rng) -> Vec<f64> {
    let mut q: Vec<f64> = (0..n * n)
        .map(|_| {
            let (u, v): (f64, f64) = (rng.random::<f64>().max(f64::MIN_POSITIVE), rng.random());
            (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
        })
        .collect();
    for i in 0..n {
        for _ in 0..2 {
            for j in 0..i {
                let d: f64 = (0..n).map(|k| q[i * n + k] * q[j * n + k]).sum();
                for k in 0..n {
                    q[i * n + k] -= d * q[j * n + k];
                }
            }
        }
        let norm = (0..n).map(|k| q[i * n + k].powi(2)).sum::<f64>().sqrt();
        (0..n).for_each(|k| q[i * n + k] /= norm);
    }
    q
}

/// The rotations of a model: `residual` (hidden size) and `head` (head_dim, v/o).
pub struct ModelRotation {
    pub residual: Orthogonal,
    pub head: Orthogonal,
}

impl ModelRotation {
    /// The rotations of `cfg`'s model, or a clear error for a model whose function a
    /// rotation folded into the weights cannot keep.
    pub fn new(cfg: &LlamaConfig, kind: RotationKind, seed: u64) -> Result<Self> {
        if cfg.sandwich_norms {
            return Err(Error::option(
                "--rotate",
                format!(
                    "{:?} normalizes the attention and MLP outputs before the residual add \
                     (post_attention_layernorm / post_feedforward_layernorm): a rotation of the residual stream \
                     cannot be folded through those norms' weights",
                    cfg.family
                ),
            ));
        }
        Ok(Self {
            residual: Orthogonal::new(cfg.hidden_size, kind, seed),
            head: Orthogonal::new(cfg.head_dim, kind, seed.wrapping_add(0x9e37_79b9_7f4a_7c15)),
        })
    }

    /// Rotate block `bw` in place (see the module doc); returns the dense tensors that
    /// changed and are not linears (norm weights, biases), as stored.
    pub fn rotate_block(&self, cfg: &LlamaConfig, bw: &mut BlockWeights) -> Vec<(String, Vec<f32>)> {
        let d = cfg.hidden_size;
        let p = format!("model.layers.{}", bw.index);
        let mut dense = Vec::new();
        // v's rows (each kv head's `head_dim` rows: `Rᵀ·W_v`) and bias.
        let v_name = if cfg.fused() { "self_attn.qkv_proj" } else { "self_attn.v_proj" };
        let kv = linear_index(cfg, v_name);
        let (rows, cols) = linear_shape(cfg, v_name);
        // The v rows are the last kv_dim (all of v_proj; the tail of phi3's fused qkv_proj).
        let first = rows - cfg.kv_dim();
        for head in bw.linears[kv][first * cols..].chunks_mut(cfg.head_dim * cols) {
            self.head.rotate_columns(head, cols);
        }
        if let Some(b) = &mut bw.biases[kv] {
            self.head.rotate_rows(&mut b[first..]);
            dense.push((format!("{p}.{v_name}.bias"), b.clone()));
        }
        // o's input columns, per head: `W_o·R`.
        self.head.rotate_rows(&mut bw.linears[linear_index(cfg, "self_attn.o_proj")]);
        for (k, (short, site)) in cfg.linears().iter().enumerate() {
            let (o, i) = linear_shape(cfg, short);
            match site {
                InputSite::AttnIn | InputSite::MlpIn => {
                    let g = if *site == InputSite::AttnIn { &bw.input_norm } else { &bw.post_norm };
                    for row in bw.linears[k].chunks_mut(i) {
                        row.iter_mut().zip(g).for_each(|(w, g)| *w *= g);
                    }
                    self.residual.rotate_rows(&mut bw.linears[k]);
                }
                InputSite::AttnOut | InputSite::MlpAct => {
                    debug_assert_eq!(o, d, "the writers of the residual stream");
                    self.residual.rotate_columns(&mut bw.linears[k], i);
                    if let Some(b) = &mut bw.biases[k] {
                        self.residual.rotate_rows(b);
                        dense.push((format!("{p}.{short}.bias"), b.clone()));
                    }
                }
            }
        }
        bw.input_norm.iter_mut().for_each(|g| *g = 1.0);
        bw.post_norm.iter_mut().for_each(|g| *g = 1.0);
        dense.push((format!("{p}.input_layernorm.weight"), stored_norm(cfg, &bw.input_norm)));
        dense.push((format!("{p}.{}.weight", cfg.mlp_norm_name()), stored_norm(cfg, &bw.post_norm)));
        dense
    }

    /// The residual stream (or the embedding) `[rows, hidden]`: `x ← x·Q`.
    pub fn rotate_stream(&self, x: &mut [f32]) {
        self.residual.rotate_rows(x);
    }

    /// The LM head `[vocab, hidden]` after the final norm's multipliers `g`: `H·diag(g)·Q`.
    pub fn rotate_head(&self, h: &mut [f32], g: &[f32]) {
        for row in h.chunks_mut(g.len()) {
            row.iter_mut().zip(g).for_each(|(w, g)| *w *= g);
        }
        self.residual.rotate_rows(h);
    }

    /// One line for the log.
    pub fn describe(&self) -> String {
        format!("rotation: residual {}, heads {}", self.residual.describe(), self.head.describe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dense(q: &Orthogonal) -> Vec<f64> {
        let n = q.dim();
        let mut m = vec![0.0f64; n * n];
        for i in 0..n {
            let mut e = vec![0.0f32; n];
            e[i] = 1.0;
            q.rotate_rows(&mut e);
            (0..n).for_each(|j| m[i * n + j] = e[j] as f64);
        }
        m
    }

    #[test]
    fn paley_matrices_are_hadamard() {
        for n in [4, 12, 20, 28, 36, 44, 60, 68, 84, 104] {
            let h = paley(n).unwrap_or_else(|| panic!("a Paley matrix of order {n}"));
            for i in 0..n {
                for j in 0..n {
                    let dot: f64 = (0..n).map(|k| h[i * n + k] * h[j * n + k]).sum();
                    assert_eq!(dot, if i == j { n as f64 } else { 0.0 }, "order {n}, rows {i}, {j}");
                }
            }
            assert!(h.iter().all(|v| v.abs() == 1.0));
        }
        assert!(paley(52).is_none() && paley(6).is_none());
    }

    #[test]
    fn common_widths_have_hadamard_factors() {
        for (n, a) in
            [(64, 1), (576, 36), (960, 60), (1536, 12), (2048, 1), (3584, 28), (5120, 20), (2304, 36), (96, 12)]
        {
            assert_eq!(hadamard_factor(n).map(|(a, _)| a), Some(a), "width {n}");
        }
        assert!(hadamard_factor(7).is_none());
    }

    #[test]
    fn rotations_are_orthogonal_and_match_the_dense_product() {
        use rand::Rng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        for (n, kind) in [
            (16, RotationKind::Hadamard),
            (48, RotationKind::Hadamard),
            (36, RotationKind::Hadamard),
            (7, RotationKind::Hadamard), // no factor: random orthogonal
            (24, RotationKind::Orthogonal),
        ] {
            let q = Orthogonal::new(n, kind, 3);
            let m = dense(&q);
            for i in 0..n {
                for j in 0..n {
                    let dot: f64 = (0..n).map(|k| m[i * n + k] * m[j * n + k]).sum();
                    assert!((dot - if i == j { 1.0 } else { 0.0 }).abs() < 1e-6, "{n}: Q·Qᵀ[{i},{j}] = {dot}");
                }
            }
            // The reference: diag(s)·(A ⊗ H_b)/√n written out from the definition.
            if let Form::Kron { a, order_a, order_b } = &q.form {
                let syl = |i: usize, j: usize| if (i & j).count_ones().is_multiple_of(2) { 1.0 } else { -1.0 };
                for i in 0..n {
                    for j in 0..n {
                        let h = a[(i / order_b) * order_a + j / order_b] * syl(i % order_b, j % order_b);
                        let want = q.signs[i] * h / (n as f64).sqrt();
                        assert!((m[i * n + j] - want).abs() < 1e-7, "{n}: [{i},{j}] {} vs {want}", m[i * n + j]);
                    }
                }
            }
            // Rows of random values with an outlier, a zero row, and several rows at once.
            let mut x: Vec<f32> = (0..3 * n).map(|_| rng.random::<f32>() - 0.5).collect();
            x[1] = 300.0;
            x[n..2 * n].iter_mut().for_each(|v| *v = 0.0);
            let mut y = x.clone();
            q.rotate_rows(&mut y);
            for r in 0..3 {
                for j in 0..n {
                    let want: f64 = (0..n).map(|i| x[r * n + i] as f64 * m[i * n + j]).sum();
                    assert!((y[r * n + j] as f64 - want).abs() < 1e-4 * (1.0 + want.abs()), "{n} row {r} col {j}");
                }
            }
            assert!(y[n..2 * n].iter().all(|&v| v == 0.0));
            // Qᵀ·W on columns = (Wᵀ·Q)ᵀ, and the same bits on one and several threads.
            let cols = 5;
            let w: Vec<f32> = (0..n * cols).map(|_| rng.random::<f32>() - 0.5).collect();
            let mut wc = w.clone();
            q.rotate_columns(&mut wc, cols);
            for c in 0..cols {
                let mut col: Vec<f32> = (0..n).map(|r| w[r * cols + c]).collect();
                q.rotate_rows(&mut col);
                (0..n).for_each(|r| assert_eq!(wc[r * cols + c], col[r]));
            }
            let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
            let mut z = x.clone();
            one.install(|| q.rotate_rows(&mut z));
            assert_eq!(z, y);
        }
    }

    #[test]
    fn a_rotation_spreads_an_outlier() {
        let q = Orthogonal::new(576, RotationKind::Hadamard, 0);
        let mut x = vec![0.0f32; 576];
        x[17] = 24.0;
        q.rotate_rows(&mut x);
        assert!(x.iter().all(|v| (v.abs() - 1.0).abs() < 1e-6), "24/√576 = 1 in every channel");
    }
}
