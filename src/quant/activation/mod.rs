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
//! ([`ActScheme::params`]) -> quantize-dequantize ([`crate::model::act_linear::fake_quant`], the reference every
//! inference path goes through).

pub mod smooth;

use crate::calib::histogram::HistogramObserver;
use crate::error::{Error, Result};
use crate::format::activation::ActScheme;

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

    #[test]
    fn calib_names_parse() {
        assert_eq!(ActCalib::parse("percentile", 99.99).unwrap(), ActCalib::Percentile(99.99));
        assert!(ActCalib::parse("percentile", 0.0).is_err());
        assert!(ActCalib::parse("kl", 1.0).unwrap_err().to_string().contains("kl"));
    }
}
