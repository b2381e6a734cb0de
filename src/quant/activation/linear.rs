//! `ActQuantLinear`: a [`Linear`] that quantizes and dequantizes its input exactly as the
//! checkpoint says ([`ActScheme`]: static per-tensor or dynamic per-token, INT8 or FP8
//! E4M3) before the inner linear (dense, packed CPU or GPU) multiplies it. What the inner
//! product then computes is `x̂ · Ŵᵀ`, the product an integer/FP8 GEMM computes up to its
//! accumulation order.

use super::fake_quant;
use crate::error::{Error, Result};
use crate::format::activation::{ActParams, ActScheme};
use crate::model::linear::Linear;

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
