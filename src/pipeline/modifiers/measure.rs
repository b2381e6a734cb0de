//! The measurement pass of mixed precision ([`crate::pipeline::budget`]): each linear is
//! quantized by RTN in every candidate scheme and its relative output error through the
//! site's Hessian recorded ([`LayerReport::measure`]: `Σ‖Δw‖²_H / Σ‖w‖²_H` on sampled
//! rows), with its stored bits; the run itself goes on with RTN in the linear's own scheme.

use crate::calib::observers::{SiteStats, StatsRequest};
use crate::error::Result;
use crate::format::{Granularity, QuantScheme, QuantizedTensor};
use crate::pipeline::{LayerReport, LinearWeight, SchemePolicy, WeightQuantizer};
use crate::quant::rtn::quantize_rtn;
use serde::Serialize;
use std::sync::{Arc, Mutex};

/// One linear measured in one candidate scheme.
#[derive(Clone, Debug, Serialize)]
pub struct Measured {
    /// The scheme after the group fallback for this linear's width (`int4-g64-asym`).
    #[serde(serialize_with = "as_text")]
    pub scheme: QuantScheme,
    /// Stored bits of the whole tensor (codes, scales, zero points).
    pub bits: u64,
    /// Relative output error on the calibration inputs.
    pub error: f64,
}

fn as_text<S: serde::Serializer>(s: &QuantScheme, ser: S) -> std::result::Result<S::Ok, S::Error> {
    ser.serialize_str(&s.to_string())
}

/// One linear's measurements, in candidate order.
#[derive(Clone, Debug, Serialize)]
pub struct Sensitivity {
    pub name: String,
    pub weights: usize,
    pub candidates: Vec<Measured>,
}

pub struct Measure {
    /// Each candidate as a policy over the model's linears (its group fallback applied).
    pub candidates: Vec<SchemePolicy>,
    /// Filled as the driver reaches each linear.
    pub results: Arc<Mutex<Vec<Sensitivity>>>,
}

impl WeightQuantizer for Measure {
    fn name(&self) -> &'static str {
        "measure"
    }

    fn stats_request(&self) -> StatsRequest {
        StatsRequest { hessian: true, ..Default::default() }
    }

    fn quantize_site(
        &mut self,
        linears: &[LinearWeight],
        stats: &SiteStats,
    ) -> Result<Vec<(QuantizedTensor, LayerReport)>> {
        let mut out = Vec::with_capacity(linears.len());
        for l in linears {
            let (o, i) = (l.out_features, l.in_features);
            let mut measured = Vec::with_capacity(self.candidates.len());
            for policy in &self.candidates {
                let Some(mut scheme) = policy.scheme_for(&l.name) else { continue };
                // A group as wide as the row or wider is one scale per row.
                if matches!(scheme.granularity, Granularity::Group(g) if g >= i) {
                    scheme.granularity = Granularity::PerChannel;
                }
                let lw =
                    LinearWeight { name: l.name.clone(), scheme, weight: l.weight, out_features: o, in_features: i };
                let q = quantize_rtn(&l.name, l.weight, o, i, scheme, None)?;
                let mut r = LayerReport::new(&lw, 0.0, 0.0);
                r.measure(&lw, &q, &q.dequantize(), stats)?;
                measured.push(Measured { scheme, bits: q.storage_bits(), error: r.error });
            }
            self.results.lock().expect("not poisoned").push(Sensitivity {
                name: l.name.clone(),
                weights: o * i,
                candidates: measured,
            });
            let t = std::time::Instant::now();
            let q = quantize_rtn(&l.name, l.weight, o, i, l.scheme, None)?;
            let report = LayerReport::plain(l, &q, t.elapsed().as_secs_f64());
            out.push((q, report));
        }
        Ok(out)
    }
}
