//! GPTQ as a weight quantizer: one Hessian per site, shared by the linears reading it
//! ([`crate::quant::gptq`]).

use crate::calib::observers::{SiteStats, StatsRequest};
use crate::error::{Error, Result};
use crate::format::QuantizedTensor;
use crate::pipeline::{LayerReport, LinearWeight, WeightQuantizer};
use crate::quant::gptq::{gptq_quantize, GptqOptions};

pub struct Gptq {
    pub opts: GptqOptions,
    /// Print every layer's loss.
    pub verbose: bool,
}

impl WeightQuantizer for Gptq {
    fn name(&self) -> &'static str {
        "gptq"
    }

    fn stats_request(&self) -> StatsRequest {
        StatsRequest { hessian: true, ..Default::default() }
    }

    fn quantize_site(
        &mut self,
        linears: &[LinearWeight],
        stats: &SiteStats,
    ) -> Result<Vec<(QuantizedTensor, LayerReport)>> {
        let h = stats
            .hessian
            .as_ref()
            .ok_or_else(|| Error::other_msg("gptq: the driver gave no Hessian (a statistics file?)"))?
            .hessian();
        linears
            .iter()
            .map(|l| {
                let r = gptq_quantize(&l.name, l.weight, l.out_features, l.in_features, &h, l.scheme, &self.opts)?;
                if r.damp_retries > 0 {
                    eprintln!(
                        "gptq: {}: Hessian not positive definite; damping raised {} time(s) to {}",
                        l.name, r.damp_retries, r.damp_used
                    );
                }
                if self.verbose {
                    eprintln!("gptq: {:<36} loss {:>12.4} damp {:.4} {:.2}s", l.name, r.loss, r.damp_used, r.seconds);
                }
                let report = LayerReport {
                    name: l.name.clone(),
                    shape: [l.out_features, l.in_features],
                    loss: r.loss,
                    damp: Some(r.damp_used),
                    damp_retries: r.damp_retries,
                    refit: r.refit,
                    seconds: r.seconds,
                };
                Ok((r.tensor, report))
            })
            .collect()
    }
}
