//! HQQ (Badri & Shaji 2023, half-quadratic quantization) as a weight quantizer:
//! calibration-free, like RTN, with the zero points (or scales) refined by a proximal
//! solver of an lp-norm error ([`crate::quant::hqq`]).

use crate::calib::observers::{SiteStats, StatsRequest};
use crate::error::Result;
use crate::format::{QuantScheme, QuantizedTensor};
use crate::pipeline::{LayerReport, LinearWeight, WeightQuantizer};
use crate::quant::hqq::{quantize_hqq, HqqOptions};
use std::time::Instant;

pub struct Hqq {
    pub scheme: QuantScheme,
    pub opts: HqqOptions,
}

impl WeightQuantizer for Hqq {
    fn name(&self) -> &'static str {
        "hqq"
    }

    fn stats_request(&self) -> StatsRequest {
        StatsRequest::default()
    }

    fn quantize_site(
        &mut self,
        linears: &[LinearWeight],
        _: &SiteStats,
    ) -> Result<Vec<(QuantizedTensor, LayerReport)>> {
        linears
            .iter()
            .map(|l| {
                let t = Instant::now();
                let q = quantize_hqq(&l.name, l.weight, l.out_features, l.in_features, self.scheme, self.opts)?;
                let report = LayerReport::plain(l, &q, t.elapsed().as_secs_f64());
                Ok((q, report))
            })
            .collect()
    }
}
