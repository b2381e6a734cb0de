//! HQQ (Badri & Shaji 2023, half-quadratic quantization) as a weight quantizer:
//! calibration-free, like RTN, with the zero points (or scales) refined by a proximal
//! solver of an lp-norm error ([`crate::quant::hqq`]).

use crate::calib::observers::SiteStats;
use crate::error::Result;
use crate::format::QuantizedTensor;
use crate::pipeline::{quantize_each, LayerReport, LinearWeight, WeightQuantizer};
use crate::quant::hqq::{quantize_hqq, HqqOptions};

pub struct Hqq {
    pub opts: HqqOptions,
}

impl WeightQuantizer for Hqq {
    fn name(&self) -> &'static str {
        "hqq"
    }

    fn quantize_site(
        &mut self,
        linears: &[LinearWeight],
        _: &SiteStats,
    ) -> Result<Vec<(QuantizedTensor, LayerReport)>> {
        quantize_each(linears, |l| quantize_hqq(&l.name, l.weight, l.out_features, l.in_features, l.scheme, self.opts))
    }
}
