//! Round-to-nearest (integer, FP8 or a GGUF block type, by each linear's scheme) as a
//! weight quantizer: calibration-free, the reference every other quantizer is compared
//! with ([`crate::quant::rtn`]); with `imatrix`, GGUF block searches weighted by the
//! calibration inputs' mean squares ([`crate::quant::ggml`]).

use crate::calib::observers::{SiteStats, StatsRequest};
use crate::error::{Error, Result};
use crate::format::QuantizedTensor;
use crate::pipeline::{quantize_each, LayerReport, LinearWeight, WeightQuantizer};
use crate::quant::rtn::{quantize_rtn, ClipSearch};

pub struct Rtn {
    /// Clipping search of the group ranges (GPTQ's `mse`), or plain min/max.
    pub clip: Option<ClipSearch>,
    /// Weight GGUF block searches by the Hessian diagonal (llama.cpp's imatrix).
    pub imatrix: bool,
}

impl WeightQuantizer for Rtn {
    fn name(&self) -> &'static str {
        "rtn"
    }

    fn stats_request(&self) -> StatsRequest {
        StatsRequest { hessian: self.imatrix, ..Default::default() }
    }

    fn quantize_site(
        &mut self,
        linears: &[LinearWeight],
        stats: &SiteStats,
    ) -> Result<Vec<(QuantizedTensor, LayerReport)>> {
        let importance = match (self.imatrix, &stats.hessian) {
            (false, _) => None,
            (true, Some(h)) => {
                let h = h.hessian();
                let cols = linears.first().map_or(0, |l| l.in_features);
                Some((0..cols).map(|c| h[c * cols + c]).collect::<Vec<f32>>())
            }
            (true, None) => return Err(Error::other_msg("rtn imatrix: the driver gave no input statistics")),
        };
        quantize_each(linears, |l| match (l.scheme.ggml_type(), &importance) {
            (Some(ty), Some(imp)) => {
                crate::quant::ggml::quantize_tensor(&l.name, l.weight, l.out_features, l.in_features, ty, Some(imp))
            }
            _ => quantize_rtn(&l.name, l.weight, l.out_features, l.in_features, l.scheme, self.clip),
        })
    }
}
