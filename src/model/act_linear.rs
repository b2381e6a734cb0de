//! Activation quantization at inference: [`fake_quant`] (the reference every path goes
//! through) and `ActQuantLinear`, a [`Linear`] that quantizes and dequantizes its input exactly as the
//! checkpoint says ([`ActScheme`]: static per-tensor or dynamic per-token, INT8 or FP8
//! E4M3) before the inner linear (dense, packed CPU or GPU) multiplies it. What the inner
//! product then computes is `x̂ · Ŵᵀ`, the product an integer/FP8 GEMM computes up to its
//! accumulation order.

use crate::error::{Error, Result};
use crate::format::activation::{ActParams, ActRuntime, ActScheme};
use crate::format::ggml::GgmlType;
use crate::model::linear::Linear;
use rayon::prelude::*;

/// Quantize-dequantize `x` (`[tokens, width]` row-major): with `params` for a static
/// scheme, per row from the row's own range for a dynamic one. Rows run in parallel;
/// each row's result depends on that row only (deterministic).
pub fn fake_quant(scheme: &ActScheme, params: Option<ActParams>, x: &[f32], width: usize) -> Vec<f32> {
    fake_quant_as(ActRuntime::default(), scheme, params, x, width)
}

/// [`fake_quant`] with runtime `rt`'s arithmetic ([`ActRuntime`]).
pub fn fake_quant_as(
    rt: ActRuntime,
    scheme: &ActScheme,
    params: Option<ActParams>,
    x: &[f32],
    width: usize,
) -> Vec<f32> {
    let mut out = x.to_vec();
    if width == 0 {
        return out;
    }
    out.par_chunks_mut(width).for_each(|row| scheme.qdq_row_as(rt, params, row));
    out
}

pub struct ActQuantLinear {
    inner: Box<dyn Linear>,
    scheme: ActScheme,
    /// The static parameters; `None` when dynamic.
    params: Option<ActParams>,
    runtime: ActRuntime,
}

impl ActQuantLinear {
    /// `params`: required for a static scheme, refused for a dynamic one (`name` in errors).
    pub fn new(name: &str, inner: Box<dyn Linear>, scheme: ActScheme, params: Option<ActParams>) -> Result<Self> {
        scheme.check()?;
        match (scheme.dynamic, params) {
            (false, None) => return Err(Error::tensor(name, format!("{scheme} needs a static input scale"))),
            (true, Some(_)) => return Err(Error::tensor(name, format!("{scheme} takes no static input scale"))),
            (false, Some(p)) if !(p.scale > 0.0 && p.scale.is_finite()) => {
                return Err(Error::tensor(name, format!("input scale {} is not positive and finite", p.scale)))
            }
            _ => {}
        }
        Ok(Self { inner, scheme, params, runtime: ActRuntime::default() })
    }

    /// Round as `rt` does ([`ActRuntime`]; vLLM by default).
    pub fn with_runtime(mut self, rt: ActRuntime) -> Self {
        self.runtime = rt;
        self
    }

    pub fn scheme(&self) -> ActScheme {
        self.scheme
    }

    pub fn params(&self) -> Option<ActParams> {
        self.params
    }
}

impl Linear for ActQuantLinear {
    fn in_features(&self) -> usize {
        self.inner.in_features()
    }
    fn out_features(&self) -> usize {
        self.inner.out_features()
    }
    fn forward(&self, x: &[f32], tokens: usize, y: &mut [f32]) {
        let xq = fake_quant_as(self.runtime, &self.scheme, self.params, x, self.inner.in_features());
        self.inner.forward(&xq, tokens, y);
    }
    fn weight_bytes(&self) -> usize {
        self.inner.weight_bytes()
    }
}

/// How llama.cpp's CPU backend rounds a matmul's input for weights of one ggml type (the
/// weight type's `vec_dot_type` in `ggml-cpu.c`): the product it computes is then
/// `x̂ · Ŵᵀ` up to its accumulation order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgmlInput {
    /// Q8_0 / Q8_1 (for Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 weights): blocks of 32,
    /// `d = amax / 127` stored as f16, `q = round_half_even(x · 127 / amax)`
    /// (`quantize_row_q8_0`, AVX2), `x̂ = q · f16(d)`.
    Q8_0,
    /// Q8_K (for the k-quants): blocks of 256, `iscale = -127 / max` of the signed value of
    /// largest magnitude, `q = min(127, nearest_int(iscale · x))`, `x̂ = q / iscale` in f32
    /// (`quantize_row_q8_K_ref`).
    Q8K,
    /// F16 weights: the input rounded to f16.
    F16,
}

impl GgmlInput {
    /// The input rounding for weights of `ty`; `None` for F32 (inputs stay f32).
    pub fn for_weights(ty: GgmlType) -> Option<Self> {
        use GgmlType::*;
        match ty {
            Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 => Some(Self::Q8_0),
            Q2_K | Q3_K | Q4_K | Q5_K | Q6_K => Some(Self::Q8K),
            F16 => Some(Self::F16),
            _ => None,
        }
    }

    /// Round one input row (its width a multiple of the block) in place.
    pub fn round_row(self, row: &mut [f32]) {
        match self {
            Self::F16 => row.iter_mut().for_each(|v| *v = half::f16::from_f32(*v).to_f32()),
            Self::Q8_0 => {
                for b in row.chunks_mut(32) {
                    let amax = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                    let d = half::f16::from_f32(amax / 127.0).to_f32();
                    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
                    b.iter_mut().for_each(|v| *v = (*v * id).round_ties_even() * d);
                }
            }
            Self::Q8K => {
                for b in row.chunks_mut(256) {
                    let max = b.iter().fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
                    if max == 0.0 {
                        b.iter_mut().for_each(|v| *v = 0.0);
                        continue;
                    }
                    let iscale = -127.0 / max;
                    let d = 1.0 / iscale;
                    b.iter_mut().for_each(|v| *v = (iscale * *v).round_ties_even().min(127.0) * d);
                }
            }
        }
    }
}

/// A linear whose input is rounded as llama.cpp's CPU backend rounds it ([`GgmlInput`]).
pub struct GgmlInputLinear {
    inner: Box<dyn Linear>,
    input: GgmlInput,
}

impl GgmlInputLinear {
    pub fn new(inner: Box<dyn Linear>, input: GgmlInput) -> Self {
        Self { inner, input }
    }
}

impl Linear for GgmlInputLinear {
    fn in_features(&self) -> usize {
        self.inner.in_features()
    }
    fn out_features(&self) -> usize {
        self.inner.out_features()
    }
    fn forward(&self, x: &[f32], tokens: usize, y: &mut [f32]) {
        let mut xq = x.to_vec();
        let width = self.inner.in_features().max(1);
        xq.par_chunks_mut(width).for_each(|row| self.input.round_row(row));
        self.inner.forward(&xq, tokens, y);
    }
    fn weight_bytes(&self) -> usize {
        self.inner.weight_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::linear::{reference_xwt, DenseLinear};

    #[test]
    fn static_and_dynamic_rows_follow_the_reference() {
        let x = [0.1f32, -2.0, 0.3, 4.0, 0.0, 0.0, 1.0, -1.0]; // [4 tokens, 2]
        let s = ActScheme::int8(true, true);
        let got = fake_quant(&s, None, &x, 2);
        for (row, g) in x.chunks(2).zip(got.chunks(2)) {
            let p = s.token_params(row);
            assert_eq!(g, [s.qdq(p, row[0]), s.qdq(p, row[1])]);
            assert!(row.iter().zip(g).all(|(a, b)| (a - b).abs() <= p.scale / 2.0));
        }
        let st = ActScheme::fp8_e4m3(false);
        let p = st.params(-4.0, 4.0);
        assert_eq!(fake_quant(&st, Some(p), &x, 2), x.iter().map(|&v| st.qdq(p, v)).collect::<Vec<_>>());
    }

    /// llama.cpp's input roundings on known blocks.
    #[test]
    fn ggml_inputs_round_as_llama_cpp() {
        // Q8_0: amax 2.54 -> d = f16(0.02), 1.27 -> 1.27 * 127 / 2.54 = 63.5 -> 64 (half to even).
        let mut row = vec![0.0f32; 32];
        row[0] = 2.54;
        row[1] = -1.27;
        row[2] = 0.0001;
        GgmlInput::Q8_0.round_row(&mut row);
        let d = half::f16::from_f32(2.54 / 127.0).to_f32();
        assert_eq!(row[0], 127.0 * d);
        assert_eq!(row[1], (-1.27f32 * (127.0 / 2.54)).round_ties_even() * d);
        assert_eq!(row[2], 0.0);
        let mut zeros = vec![0.0f32; 64];
        GgmlInput::Q8_0.round_row(&mut zeros);
        assert!(zeros.iter().all(|&v| v == 0.0));
        // Q8_K: the signed max maps to -127 · (1/iscale) = max; the opposite extreme clamps.
        let mut row: Vec<f32> = (0..256).map(|i| (i as f32 - 100.0) / 50.0).collect();
        let max = row[255];
        GgmlInput::Q8K.round_row(&mut row);
        let iscale = -127.0 / max;
        assert_eq!(row[255], (iscale * max).round_ties_even() * (1.0 / iscale));
        assert!((row[0] - (-2.0)).abs() < 0.02);
        let mut h = vec![1.0f32 / 3.0];
        GgmlInput::F16.round_row(&mut h);
        assert_eq!(h[0], half::f16::from_f32(1.0 / 3.0).to_f32());
        assert_eq!(GgmlInput::for_weights(GgmlType::Q4_1), Some(GgmlInput::Q8_0));
        assert_eq!(GgmlInput::for_weights(GgmlType::Q6_K), Some(GgmlInput::Q8K));
        assert_eq!(GgmlInput::for_weights(GgmlType::F32), None);
    }

    #[test]
    fn act_linear_quantizes_then_multiplies() {
        let w = vec![0.5f32, -1.0, 2.0, 0.25, 1.0, 1.0]; // [3, 2]
        let x = vec![0.3f32, -0.7, 1.9, 0.01];
        let s = ActScheme::int8(false, false);
        let p = s.params(-0.7, 1.9);
        let l = ActQuantLinear::new("m", Box::new(DenseLinear::new(w.clone(), 3, 2)), s, Some(p)).unwrap();
        let mut y = vec![0.0; 6];
        l.forward(&x, 2, &mut y);
        let want = reference_xwt(&fake_quant(&s, Some(p), &x, 2), 2, &w, 3, 2);
        assert!(y.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-5));
        assert!(ActQuantLinear::new("m", Box::new(DenseLinear::new(w.clone(), 3, 2)), s, None)
            .err()
            .unwrap()
            .to_string()
            .contains("static input scale"));
        assert!(ActQuantLinear::new("m", Box::new(DenseLinear::new(w, 3, 2)), ActScheme::int8(true, true), Some(p))
            .is_err());
    }
}
