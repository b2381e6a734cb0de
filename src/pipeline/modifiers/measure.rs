//! The measurement passes of mixed precision ([`crate::pipeline::budget`]): each linear
//! quantized by RTN in every candidate scheme, with the candidate's stored bits and one of
//! two errors (measured on SmolLM2, docs/BENCHMARKS.md: each suits one quantizer):
//!
//! - [`Measure`] (`measure = "output"`, the default before RTN), a transform that changes
//!   nothing: on the full-precision block, each linear alone, the relative error of its
//!   sub-layer's output — the attention output after o_proj for q/k/v/o, the MLP output
//!   after down_proj for gate/up/down (ExLlamaV2's measure);
//! - [`HessianMeasure`] (`measure = "hessian"`, the default before GPTQ), a weight
//!   quantizer: the linear's own relative output error through its site's Hessian
//!   (`Σ‖Δw‖²_H / Σ‖w‖²_H`, [`LayerReport::measure`]), the quantity GPTQ minimizes; the
//!   run goes on with RTN in each linear's own scheme.

use crate::calib::observers::{SiteStats, StatsRequest};
use crate::error::Result;
use crate::format::QuantizedTensor;
use crate::format::{Granularity, QuantScheme};
use crate::model::llama::{linear_shape, InputSite, ScaleTarget};
use crate::pipeline::{BlockContext, BlockTransform, LayerReport, LinearWeight, SchemePolicy, WeightQuantizer};
use crate::quant::awq::search::sublayer_output;
use crate::quant::awq::weights::BlockWeights;
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
    /// The relative error: of the sub-layer output ([`Measure`]) or of the linear's own
    /// output through its Hessian ([`HessianMeasure`]).
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
    /// Windows measured (the first N).
    pub windows: usize,
    /// Filled block by block.
    pub results: Arc<Mutex<Vec<Sensitivity>>>,
    /// The block's normalized attention and MLP inputs, `[tokens, hidden]`.
    inputs: [Vec<f32>; 2],
}

impl Measure {
    pub fn new(candidates: Vec<SchemePolicy>, windows: usize, results: Arc<Mutex<Vec<Sensitivity>>>) -> Self {
        Self { candidates, windows, results, inputs: [vec![], vec![]] }
    }
}

/// A candidate's scheme for a linear of `cols` input columns: a group as wide as the row
/// or wider is one scale per row.
fn scheme_for(policy: &SchemePolicy, name: &str, cols: usize) -> Option<QuantScheme> {
    let mut scheme = policy.scheme_for(name)?;
    if matches!(scheme.granularity, Granularity::Group(g) if g >= cols) {
        scheme.granularity = Granularity::PerChannel;
    }
    Some(scheme)
}

/// `Σ (a − b)²` and `Σ b²`.
fn sq_diff(a: &[f32], b: &[f32]) -> (f64, f64) {
    a.iter().zip(b).fold((0.0, 0.0), |(d, n), (&x, &y)| (d + ((x - y) as f64).powi(2), n + (y as f64).powi(2)))
}

impl BlockTransform for Measure {
    fn name(&self) -> &'static str {
        "measure"
    }

    fn stats_request(&self) -> StatsRequest {
        StatsRequest::default()
    }

    fn needs_activations(&self) -> bool {
        true
    }

    fn windows(&self) -> Option<usize> {
        Some(self.windows)
    }

    fn observe(
        &mut self,
        _: &BlockContext,
        _: &BlockWeights,
        site: InputSite,
        x: Option<&[f32]>,
        _: &SiteStats,
    ) -> Result<()> {
        let x = x.expect("the driver gives a transform that needs activations its site inputs");
        match site {
            InputSite::AttnIn => self.inputs[0] = x.to_vec(),
            InputSite::MlpIn => self.inputs[1] = x.to_vec(),
            _ => {}
        }
        Ok(())
    }

    fn apply(
        &mut self,
        ctx: &BlockContext,
        bw: &mut BlockWeights,
    ) -> Result<(Vec<(String, Vec<f32>)>, Option<String>)> {
        let cfg = ctx.cfg;
        let h = cfg.hidden_size;
        let rows = ctx.chunk_windows.max(1) * ctx.seqlen;
        let fp = bw.to_block(cfg);
        // The sub-layer output of `block` on every chunk of its input.
        let output = |block: &crate::model::llama::Block, target: ScaleTarget, x: &[f32]| -> Vec<Vec<f32>> {
            x.chunks(rows * h)
                .map(|part| {
                    sublayer_output(cfg, ctx.rope, ctx.seqlen, block, target, part, part.len() / h / ctx.seqlen)
                })
                .collect()
        };
        let reference = [
            output(&fp, ScaleTarget::AttentionOutput, &self.inputs[0]),
            output(&fp, ScaleTarget::MlpOutput, &self.inputs[1]),
        ];
        let mut measured = Vec::new();
        for (k, (short, site)) in cfg.linears().iter().enumerate() {
            let name = format!("model.layers.{}.{short}", ctx.block);
            let (o, i) = linear_shape(cfg, short);
            let (t, target) = match site {
                InputSite::AttnIn | InputSite::AttnOut => (0, ScaleTarget::AttentionOutput),
                InputSite::MlpIn | InputSite::MlpAct => (1, ScaleTarget::MlpOutput),
            };
            let mut candidates = Vec::with_capacity(self.candidates.len());
            for policy in &self.candidates {
                let Some(scheme) = scheme_for(policy, &name, i) else { continue };
                let q = quantize_rtn(&name, &bw.linears[k], o, i, scheme, None)?;
                let block = bw.block_with(cfg, &[(k, q.dequantize())]);
                let (mut d, mut n) = (0.0, 0.0);
                for (y, y_ref) in output(&block, target, &self.inputs[t]).iter().zip(&reference[t]) {
                    let (a, b) = sq_diff(y, y_ref);
                    (d, n) = (d + a, n + b);
                }
                candidates.push(Measured { scheme, bits: q.storage_bits(), error: d / n.max(f64::MIN_POSITIVE) });
            }
            if !candidates.is_empty() {
                measured.push(Sensitivity { name, weights: o * i, candidates });
            }
        }
        self.results.lock().expect("not poisoned").extend(measured);
        Ok((vec![], None))
    }

    fn report(&self) -> serde_json::Map<String, serde_json::Value> {
        serde_json::Map::new()
    }
}

pub struct HessianMeasure {
    /// Each candidate as a policy over the model's linears (its group fallback applied).
    pub candidates: Vec<SchemePolicy>,
    /// Filled as the driver reaches each linear.
    pub results: Arc<Mutex<Vec<Sensitivity>>>,
}

impl WeightQuantizer for HessianMeasure {
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
            let mut candidates = Vec::with_capacity(self.candidates.len());
            for policy in &self.candidates {
                let Some(scheme) = scheme_for(policy, &l.name, i) else { continue };
                let lw =
                    LinearWeight { name: l.name.clone(), scheme, weight: l.weight, out_features: o, in_features: i };
                let q = quantize_rtn(&l.name, l.weight, o, i, scheme, None)?;
                let mut r = LayerReport::new(&lw, 0.0, 0.0);
                r.measure(&lw, &q, &q.dequantize(), stats)?;
                candidates.push(Measured { scheme, bits: q.storage_bits(), error: r.error });
            }
            let sensitivity = Sensitivity { name: l.name.clone(), weights: o * i, candidates };
            self.results.lock().expect("not poisoned").push(sensitivity);
            let t = std::time::Instant::now();
            let q = quantize_rtn(&l.name, l.weight, o, i, l.scheme, None)?;
            out.push((q.clone(), LayerReport::plain(l, &q, t.elapsed().as_secs_f64())));
        }
        Ok(out)
    }
}
