//! Round-to-nearest (integer or FP8, by each linear's scheme) as a weight quantizer: calibration-free, the
//! reference every other quantizer is compared with ([`crate::quant::rtn`]).

use crate::calib::observers::SiteStats;
use crate::error::Result;
use crate::format::QuantizedTensor;
use crate::pipeline::{quantize_each, LayerReport, LinearWeight, WeightQuantizer};
use crate::quant::rtn::{quantize_rtn, ClipSearch};

pub struct Rtn {
    /// Clipping search of the group ranges (GPTQ's `mse`), or plain min/max.
    pub clip: Option<ClipSearch>,
}

impl WeightQuantizer for Rtn {
    fn name(&self) -> &'static str {
        "rtn"
    }

    fn quantize_site(
        &mut self,
        linears: &[LinearWeight],
        _: &SiteStats,
    ) -> Result<Vec<(QuantizedTensor, LayerReport)>> {
        quantize_each(linears, |l| quantize_rtn(&l.name, l.weight, l.out_features, l.in_features, l.scheme, self.clip))
    }
}
