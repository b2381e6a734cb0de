//! Activation quantization at inference: [`fake_quant`] (the reference every path goes
//! through) and `ActQuantLinear`, a [`Linear`] that quantizes and dequantizes its input exactly as the
//! checkpoint says ([`ActScheme`]: static per-tensor or dynamic per-token, INT8 or FP8
//! E4M3) before the inner linear (dense, packed CPU or GPU) multiplies it. What the inner
//! product then computes is `x̂ · Ŵᵀ`, the product an integer/FP8 GEMM computes up to its
//! accumulation order.

use crate::error::{Error, Result};
use crate::format::activation::{ActParams, ActScheme};
use crate::model::linear::Linear;
use rayon::prelude::*;

/// Quantize-dequantize `x` (`[tokens, width]` row-major): with `params` for a static
/// scheme, per row from the row's own range for a dynamic one. Rows run in parallel;
/// each row's result depends on that row only (deterministic).
pub fn fake_quant(scheme: &ActScheme, params: Option<ActParams>, x: &[f32], width: usize) -> Vec<f32> {
    let mut out = x.to_vec();
    if width == 0 {
        return out;
    }
    out.par_chunks_mut(width).for_each(|row| {
        let p = match params {
            Some(p) if !scheme.dynamic => p,
            _ => scheme.token_params(row),
        };
        scheme.qdq_row(p, row);
    });
    out
}

pub struct ActQuantLinear {
    inner: Box<dyn Linear>,
    scheme: ActScheme,
    /// The static parameters; `None` when dynamic.
    params: Option<ActParams>,
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
        Ok(Self { inner, scheme, params })
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
        let xq = fake_quant(&self.scheme, self.params, x, self.inner.in_features());
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
