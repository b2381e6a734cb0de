//! `Linear`: the one interface every linear layer of a model goes through, so there is
//! one model file per architecture, not a dense twin and a quantized twin.
//! Implementations: [`DenseLinear`] (f32, faer), [`MappedLinear`] (weights left in the
//! memory-mapped file: a loaded model's dense weights), the quantized CPU linear
//! (`crate::model::qlinear`), and the GPU linear (`crate::gpu`).

use crate::error::{Error, Result};
use crate::io::safetensors::MappedTensor;
use faer::{linalg::matmul::matmul, Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

pub trait Linear: Send + Sync {
    fn in_features(&self) -> usize;
    fn out_features(&self) -> usize;
    /// `y[t][o] = Σ_i x[t][i] · W[o][i]`; `x`: `[tokens, in]`, `y`: `[tokens, out]`,
    /// both row-major. Biases are the model's business, not the linear's.
    fn forward(&self, x: &[f32], tokens: usize, y: &mut [f32]);
    /// Bytes this layer keeps resident for its weights.
    fn weight_bytes(&self) -> usize;
}

/// Thread pool handle for faer products: rayon's global pool.
pub fn par() -> Par {
    if rayon::current_num_threads() > 1 {
        Par::rayon(0)
    } else {
        Par::Seq
    }
}

/// `y = x · Wᵀ` with `x`: `[tokens, k]`, `w`: `[n, k]`, `y`: `[tokens, n]`, all row-major.
pub fn matmul_xwt(x: &[f32], tokens: usize, w: &[f32], n: usize, k: usize, y: &mut [f32]) {
    assert_eq!(x.len(), tokens * k, "matmul_xwt: x shape");
    assert_eq!(w.len(), n * k, "matmul_xwt: w shape");
    assert_eq!(y.len(), tokens * n, "matmul_xwt: y shape");
    if tokens == 1 {
        return gemv(x, w, k, y);
    }
    let xm = MatRef::from_row_major_slice(x, tokens, k);
    let wm = MatRef::from_row_major_slice(w, n, k);
    let ym = MatMut::from_row_major_slice_mut(y, tokens, n);
    matmul(ym, Accum::Replace, xm, wm.transpose(), 1.0f32, par());
}

/// Output rows per task of [`gemv`].
const GEMV_ROWS: usize = 128;

/// `y = W·x` for one token (decoding), `w`: `[n, k]` row-major: rows in parallel tiles,
/// each a dot product over its contiguous row, so the weights stream from memory once.
/// (faer's product of a `1 × k` row with `Wᵀ` ran 40% below the machine's bandwidth.)
fn gemv(x: &[f32], w: &[f32], k: usize, y: &mut [f32]) {
    if k == 0 {
        y.fill(0.0);
        return;
    }
    y.par_chunks_mut(GEMV_ROWS).zip(w.par_chunks(GEMV_ROWS * k)).for_each(|(ys, ws)| {
        for (yo, row) in ys.iter_mut().zip(ws.chunks_exact(k)) {
            *yo = dot(row, x);
        }
    });
}

/// Accumulator lanes of [`dot`]: two AVX2 vectors, so two add chains run at once.
const DOT_LANES: usize = 16;

/// `Σ a_i·b_i` in [`DOT_LANES`] partial sums (multiply, then add: no fusion, so every
/// target gives the same bits), reduced by halves, then the tail.
#[multiversion::multiversion(targets("x86_64+avx2+fma", "aarch64+neon"))]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; DOT_LANES];
    let (ca, cb) = (a.chunks_exact(DOT_LANES), b.chunks_exact(DOT_LANES));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for j in 0..DOT_LANES {
            acc[j] += x[j] * y[j];
        }
    }
    sum_by_halves(acc) + tail
}

/// `Σ lanes`, pairwise by halves (lane `i` += lane `i + N/2`, then `i + N/4`, ...): the
/// order a vector register's horizontal sum takes, written once for every lane kernel.
#[inline(always)]
pub fn sum_by_halves<const N: usize>(mut lanes: [f32; N]) -> f32 {
    let mut half = N / 2;
    while half > 0 {
        for i in 0..half {
            lanes[i] += lanes[i + half];
        }
        half /= 2;
    }
    lanes[0]
}

/// [`sum_by_halves`] of an AVX register's 8 lanes: lanes `i + 4`, then `i + 2`, then
/// `i + 1`, the same additions in the same order (the x86 lane kernels' last step).
///
/// # Safety
/// The CPU must have AVX.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
#[inline]
pub unsafe fn sum_by_halves_m256(v: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let h4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let h2 = _mm_add_ps(h4, _mm_movehl_ps(h4, h4));
    let h1 = _mm_add_ss(h2, _mm_shuffle_ps(h2, h2, 1));
    _mm_cvtss_f32(h1)
}

/// Full-precision weights `[out, in]` row-major, owned in f32.
pub struct DenseLinear {
    pub weight: Vec<f32>,
    pub out_features: usize,
    pub in_features: usize,
}

impl DenseLinear {
    pub fn new(weight: Vec<f32>, out_features: usize, in_features: usize) -> Self {
        assert_eq!(weight.len(), out_features * in_features, "DenseLinear: weight shape");
        Self { weight, out_features, in_features }
    }
}

impl Linear for DenseLinear {
    fn in_features(&self) -> usize {
        self.in_features
    }
    fn out_features(&self) -> usize {
        self.out_features
    }
    fn forward(&self, x: &[f32], tokens: usize, y: &mut [f32]) {
        matmul_xwt(x, tokens, &self.weight, self.out_features, self.in_features, y);
    }
    fn weight_bytes(&self) -> usize {
        self.weight.len() * 4
    }
}

/// Bytes of f32 per converted tile of a [`MappedLinear`] product.
const MAPPED_TILE_BYTES: usize = 8 << 20;

/// Full-precision weights `[out, in]` left in the memory-mapped model file (F32, F16 or
/// BF16): a loaded model's embedding, head and dense linears, which as f32 copies would
/// take GBs (2 GB for a 128k-vocabulary head, 32 GB for a bf16 8B model). A product converts a tile of rows at a time (f32 files aligned in memory are
/// read in place, so their products are [`DenseLinear`]'s, bit for bit).
#[derive(Clone)]
pub struct MappedLinear {
    pub weight: MappedTensor,
}

impl MappedLinear {
    pub fn new(weight: MappedTensor) -> Self {
        Self { weight }
    }

    /// Rows `ids` as f32, `[ids.len(), in]` (an embedding lookup); refuses an id outside.
    pub fn rows(&self, ids: &[u32]) -> Result<Vec<f32>> {
        let [vocab, hidden] = self.weight.shape;
        let mut x = vec![0.0f32; ids.len() * hidden];
        for (&t, row) in ids.iter().zip(x.chunks_exact_mut(hidden.max(1))) {
            if t as usize >= vocab {
                return Err(Error::other_msg(format!("token id {t} is outside the vocabulary of {vocab}")));
            }
            self.weight.rows_into(t as usize, row);
        }
        Ok(x)
    }

    /// Rows `r0 .. r1` converted to f32, in parallel.
    fn tile(&self, r0: usize, r1: usize, buf: &mut Vec<f32>) {
        let k = self.weight.shape[1];
        buf.clear();
        buf.resize((r1 - r0) * k, 0.0);
        buf.par_chunks_mut(k.max(1) * 16).enumerate().for_each(|(i, out)| self.weight.rows_into(r0 + i * 16, out));
    }
}

impl Linear for MappedLinear {
    fn in_features(&self) -> usize {
        self.weight.shape[1]
    }
    fn out_features(&self) -> usize {
        self.weight.shape[0]
    }
    fn forward(&self, x: &[f32], tokens: usize, y: &mut [f32]) {
        let [n, k] = self.weight.shape;
        if let Some(w) = self.weight.as_f32() {
            return matmul_xwt(x, tokens, w, n, k, y);
        }
        assert_eq!(y.len(), tokens * n, "MappedLinear: y shape");
        if tokens == 0 {
            return;
        }
        let rows = (MAPPED_TILE_BYTES / (4 * k.max(1))).clamp(16, n.max(16));
        let (mut buf, mut out) = (Vec::new(), Vec::new());
        for r0 in (0..n).step_by(rows) {
            let r1 = (r0 + rows).min(n);
            self.tile(r0, r1, &mut buf);
            if tokens == 1 {
                matmul_xwt(x, 1, &buf, r1 - r0, k, &mut y[r0..r1]);
                continue;
            }
            // [tokens, tile], then into columns r0..r1 of y.
            out.resize(tokens * (r1 - r0), 0.0);
            matmul_xwt(x, tokens, &buf, r1 - r0, k, &mut out);
            for (yr, or) in y.chunks_exact_mut(n).zip(out.chunks_exact(r1 - r0)) {
                yr[r0..r1].copy_from_slice(or);
            }
        }
    }
    fn weight_bytes(&self) -> usize {
        self.weight.bytes().len()
    }
}

/// Plain triple loop, the reference every fast path is tested against.
pub fn reference_xwt(x: &[f32], tokens: usize, w: &[f32], n: usize, k: usize) -> Vec<f32> {
    let mut y = vec![0.0f32; tokens * n];
    for t in 0..tokens {
        for o in 0..n {
            let mut acc = 0.0f64;
            for i in 0..k {
                acc += x[t * k + i] as f64 * w[o * k + i] as f64;
            }
            y[t * n + o] = acc as f32;
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::safetensors::SafetensorsStore;
    use rand::{Rng, SeedableRng};

    /// The mapped product and lookup against the plain reference on the values the file
    /// holds: BF16, F16 and F32, a zero row and an outlier, 0 / 1 / many tokens, and more
    /// rows than one converted tile (3700 x 576: tiles of 3640 rows).
    #[test]
    fn mapped_linear_matches_the_reference_in_every_dtype() {
        use safetensors::{tensor::TensorView, Dtype};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let dir = tempfile::tempdir().unwrap();
        let (n, k) = (3700, 576);
        let mut w: Vec<f32> = (0..n * k).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        w[5 * k..6 * k].fill(0.0);
        w[7] = 3e4;
        let encoded: [(Dtype, Vec<u8>); 3] = [
            (Dtype::BF16, w.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect()),
            (Dtype::F16, w.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect()),
            (Dtype::F32, w.iter().flat_map(|v| v.to_le_bytes()).collect()),
        ];
        for (dtype, bytes) in &encoded {
            let path = dir.path().join(format!("{dtype:?}.safetensors"));
            let view = TensorView::new(*dtype, vec![n, k], bytes).unwrap();
            safetensors::serialize_to_file([("w", view)], None, &path).unwrap();
            let store = SafetensorsStore::open(&path).unwrap();
            let lin = MappedLinear::new(store.mapped("w", [n, k]).unwrap());
            let held = store.f32_shaped("w", &[n, k]).unwrap();
            assert_eq!(lin.rows(&[0, 5, 3699]).unwrap(), [&held[..k], &held[5 * k..6 * k], &held[3699 * k..]].concat());
            assert!(lin.rows(&[3700]).unwrap_err().to_string().contains("3700"));
            for tokens in [0usize, 1, 3, 70] {
                let x: Vec<f32> = (0..tokens * k).map(|_| rng.random_range(-1.0f32..1.0)).collect();
                let mut y = vec![f32::NAN; tokens * n];
                lin.forward(&x, tokens, &mut y);
                let r = reference_xwt(&x, tokens, &held, n, k);
                for (i, (a, b)) in y.iter().zip(&r).enumerate() {
                    assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{dtype:?} tokens {tokens} [{i}]: {a} vs {b}");
                }
                if *dtype == Dtype::F32 {
                    // Read in place: DenseLinear's bits.
                    let mut d = vec![0.0; tokens * n];
                    DenseLinear::new(held.clone(), n, k).forward(&x, tokens, &mut d);
                    assert_eq!(y, d);
                }
            }
        }
    }

    #[test]
    fn faer_product_matches_reference_on_odd_shapes() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for &(t, n, k) in
            &[(1, 1, 1), (3, 5, 7), (0, 4, 3), (17, 33, 65), (64, 130, 257), (1, 300, 33), (1, 129, 576), (1, 3, 0)]
        {
            let x: Vec<f32> = (0..t * k).map(|_| rng.random_range(-1.0..1.0)).collect();
            let mut w: Vec<f32> = (0..n * k).map(|_| rng.random_range(-1.0..1.0)).collect();
            if n * k > 0 {
                w[0] = 1e4; // an outlier
            }
            let mut y = vec![0.0; t * n];
            matmul_xwt(&x, t, &w, n, k, &mut y);
            let r = reference_xwt(&x, t, &w, n, k);
            for (a, b) in y.iter().zip(&r) {
                assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{a} vs {b}");
            }
        }
    }
}
