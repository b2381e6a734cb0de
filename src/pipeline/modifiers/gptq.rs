//! GPTQ as a weight quantizer: one Hessian per site, shared by the linears reading it
//! ([`crate::quant::gptq`]); with asymmetric calibration (GPTAQ, or the least-squares target),
//! also the site's cross term with the full-precision model's inputs.

use crate::calib::hessian::HessianView;
use crate::calib::observers::{SiteStats, StatsRequest};
use crate::error::{Error, Result};
use crate::format::QuantizedTensor;
use crate::pipeline::{LayerReport, LinearWeight, WeightQuantizer};
use crate::quant::gptq::{gptq_quantize_factored, GptqOptions, HessianFactor};

pub struct Gptq {
    pub opts: GptqOptions,
}

impl WeightQuantizer for Gptq {
    fn name(&self) -> &'static str {
        "gptq"
    }

    fn stats_request(&self) -> StatsRequest {
        StatsRequest { hessian: true, cross: self.opts.asymmetry.is_some(), ..Default::default() }
    }

    fn quantize_site(
        &mut self,
        linears: &[LinearWeight],
        stats: &SiteStats,
    ) -> Result<Vec<(QuantizedTensor, LayerReport)>> {
        // Read in place: no [cols, cols] copy beside the accumulator (0.8 GB at 8B widths).
        let h = HessianView::of(
            stats
                .hessian
                .as_ref()
                .ok_or_else(|| Error::other_msg("gptq: the driver gave no Hessian (a statistics file?)"))?,
        );
        // One factorization per site, shared by its linears (q/k/v, gate/up).
        let Some(first) = linears.first() else { return Ok(vec![]) };
        let cols = first.in_features;
        let site = match linears.len() {
            1 => first.name.clone(),
            n => format!("{} (and the {} other linears reading its input)", first.name, n - 1),
        };
        if h.cols() != cols {
            return Err(Error::tensor(
                &site,
                format!("the Hessian is [{0}, {0}], the linear reads {cols} inputs", h.cols()),
            ));
        }
        let mut factor = HessianFactor::of(&site, h, &self.opts)?;
        if let Some(asym) = self.opts.asymmetry {
            let cross = stats
                .cross
                .as_ref()
                .ok_or_else(|| {
                    Error::other_msg("gptq: asymmetric calibration, but the driver gave no full-precision inputs")
                })?
                .matrix();
            factor = factor.with_asymmetry(&site, &cross, asym)?;
        }
        if factor.damp_retries > 0 {
            eprintln!(
                "gptq: {site}: Hessian not positive definite; damping raised {} time(s) to {}",
                factor.damp_retries, factor.damp_used
            );
        }
        linears
            .iter()
            .enumerate()
            .map(|(k, l)| {
                let mut r =
                    gptq_quantize_factored(&l.name, l.weight, l.out_features, h, &factor, l.scheme, &self.opts)?;
                if k == 0 {
                    r.seconds += factor.seconds;
                }
                let report = LayerReport {
                    damp: Some(r.damp_used),
                    damp_retries: r.damp_retries,
                    refit: r.refit,
                    ..LayerReport::new(l, r.loss, r.seconds)
                };
                Ok((r.tensor, report))
            })
            .collect()
    }
}
