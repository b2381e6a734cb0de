//! Round-to-nearest (integer or FP8) as a weight quantizer: calibration-free, the
//! reference every other quantizer is compared with ([`crate::quant::rtn`]).

use crate::calib::observers::{SiteStats, StatsRequest};
use crate::error::Result;
use crate::format::{QuantScheme, QuantizedTensor};
use crate::pipeline::{LayerReport, LinearWeight, WeightQuantizer};
use crate::quant::rtn::{quantize_rtn, ClipSearch};
use std::time::Instant;

pub struct Rtn {
    pub scheme: QuantScheme,
    /// Clipping search of the group ranges (GPTQ's `mse`), or plain min/max.
    pub clip: Option<ClipSearch>,
}

impl WeightQuantizer for Rtn {
    fn name(&self) -> &'static str {
        if self.scheme.is_fp8() {
            "fp8"
        } else {
            "rtn"
        }
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
                let q = quantize_rtn(&l.name, l.weight, l.out_features, l.in_features, self.scheme, self.clip)?;
                let report = LayerReport::plain(l, &q, t.elapsed().as_secs_f64());
                Ok((q, report))
            })
            .collect()
    }
}
