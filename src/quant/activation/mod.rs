//! Activation quantization (W8A8): each linear's input is quantized and dequantized as
//! its [`ActScheme`] says, static (one calibrated scale per tensor) or dynamic (one scale
//! per token at run time), INT8 or FP8 E4M3.
//!
//! Static scales come from each site's histogram ([`crate::calib::histogram`]) on the
//! calibration windows, the clipping range chosen by [`ActCalib`] (min/max, percentile or
//! MSE), one scale shared by the linears reading a site. Sequential mode: each site sees the
//! outputs of the already (weight-)quantized linears and blocks before it; activations stay
//! in full precision while statistics are taken, so one set of statistics serves every
//! activation choice ([`crate::calib::stats_file`]). The block driver runs it as the
//! `activations` modifier ([`crate::pipeline::modifiers::activation`]), after any weight
//! quantizer and optionally SmoothQuant ([`smooth`]).
//!
//! Three pure steps, as for the weights: range (histogram) -> parameters
//! ([`ActScheme::params`]) -> quantize-dequantize ([`fake_quant`], the reference every
//! inference path goes through).

pub mod linear;
pub mod smooth;

use crate::calib::histogram::HistogramObserver;
use crate::error::{Error, Result};
use crate::format::activation::{ct_input_scheme, ActParams, ActScheme};
use crate::io::checkpoint::{CheckpointFormat, LoadedCheckpoint};
use rayon::prelude::*;
use safetensors::tensor::TensorView;
use std::collections::BTreeMap;

pub use linear::ActQuantLinear;

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

/// The activation quantization of each quantized linear of a checkpoint, as its config
/// says (compressed-tensors `input_activations`; other formats have none): module name ->
/// scheme and, when static, the stored parameters.
pub fn checkpoint_activations(ckpt: &LoadedCheckpoint) -> Result<BTreeMap<String, (ActScheme, Option<ActParams>)>> {
    let mut out = BTreeMap::new();
    if ckpt.format != CheckpointFormat::CompressedTensors {
        return Ok(out);
    }
    let Some(qc) = ckpt.config.get("quantization_config") else { return Ok(out) };
    let path = ckpt.dir.join("config.json");
    let names: std::collections::BTreeSet<&str> = ckpt.store.names().collect();
    let get = |n: &str| -> Option<TensorView<'_>> {
        let t = ckpt.store.raw(names.get(n)?).ok()?;
        TensorView::new(t.dtype, t.shape.to_vec(), t.bytes).ok()
    };
    for m in ckpt.quantized.keys() {
        if let Some(s) = ct_input_scheme(qc, m, &path)? {
            let p = if s.dynamic { None } else { Some(s.read_ct_tensors(m, &get)?) };
            out.insert(m.clone(), (s, p));
        }
    }
    Ok(out)
}

/// How a static scale's clipping range is chosen from a site's histogram.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ActCalib {
    /// The exact observed range.
    MinMax,
    /// The range holding this percentage of the values (e.g. 99.99).
    Percentile(f64),
    /// The range minimizing the quantization MSE over the histogram.
    Mse,
}

impl ActCalib {
    pub fn parse(name: &str, percentile: f64) -> Result<Self> {
        match name {
            "minmax" => Ok(Self::MinMax),
            "percentile" if percentile > 0.0 && percentile <= 100.0 => Ok(Self::Percentile(percentile)),
            "percentile" => Err(Error::option("--act-percentile", format!("{percentile} is not in (0, 100]"))),
            "mse" => Ok(Self::Mse),
            other => {
                Err(Error::option("--act-calib", format!("{other:?} is not a calibration (minmax, percentile, mse)")))
            }
        }
    }

    /// Name written as the compressed-tensors `observer`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::MinMax => "minmax",
            Self::Percentile(_) => "percentile",
            Self::Mse => "mse",
        }
    }

    pub fn range(&self, h: &HistogramObserver, scheme: &ActScheme) -> (f32, f32) {
        match *self {
            Self::MinMax => h.range_minmax(),
            Self::Percentile(p) => h.range_percentile(p, scheme.symmetric),
            Self::Mse => h.range_mse(scheme),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::linear::{reference_xwt, DenseLinear, Linear};

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

    #[test]
    fn calib_names_parse() {
        assert_eq!(ActCalib::parse("percentile", 99.99).unwrap(), ActCalib::Percentile(99.99));
        assert!(ActCalib::parse("percentile", 0.0).is_err());
        assert!(ActCalib::parse("kl", 1.0).unwrap_err().to_string().contains("kl"));
    }
}
