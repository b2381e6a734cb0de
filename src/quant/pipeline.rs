//! Whole-model quantization: which linears are quantized, and how each method is
//! driven (RTN and FP8 straight from the memory-mapped weights, GPTQ through the
//! calibration runner in sequential mode).

use super::gptq::{gptq_quantize, GptqOptions};
use super::rtn::{quantize_rtn, ClipSearch};
use crate::calib::observers::{SiteStats, StatsRequest};
use crate::calib::runner::{run_sequential, LinearWeight, RunnerOptions, RunnerTimings, SiteQuantizer};
use crate::error::{Error, Result};
use crate::format::{QuantScheme, QuantizedTensor};
use crate::io::safetensors::SafetensorsStore;
use crate::model::llama::{linear_shape, InputSite, BLOCK_LINEARS};
use crate::model::LlamaConfig;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Instant;

/// Per-linear line of the report.
#[derive(Clone, Debug, Serialize)]
pub struct LayerReport {
    pub name: String,
    pub shape: [usize; 2],
    /// GPTQ's loss `Σ (w-q)²/Hinv_ii² / 2`; for RTN, the plain `Σ (w-q)²`.
    pub loss: f64,
    pub damp: Option<f32>,
    pub damp_retries: u32,
    /// GPTQ's scale refit: the layer's calibration error before and after.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refit: Option<crate::quant::refit::RefitStats>,
    pub seconds: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct QuantizeReport {
    pub method: String,
    pub scheme: String,
    pub layers: Vec<LayerReport>,
    pub timings: RunnerTimings,
    pub calibration_tokens: usize,
    pub seconds: f64,
}

/// Names (`model.layers.N.self_attn.q_proj`) and shapes of every block linear.
pub fn block_linears(cfg: &LlamaConfig) -> Vec<(String, usize, usize)> {
    (0..cfg.num_layers)
        .flat_map(|b| {
            BLOCK_LINEARS.iter().map(move |(short, _)| {
                let (o, i) = linear_shape(cfg, short);
                (format!("model.layers.{b}.{short}"), o, i)
            })
        })
        .collect()
}

fn sq_error(w: &[f32], q: &QuantizedTensor) -> f64 {
    q.dequantize().iter().zip(w).map(|(a, b)| ((a - b) as f64).powi(2)).sum()
}

/// Round-to-nearest (integer or FP8) of every block linear (and the head if asked).
pub fn quantize_rtn_model(
    cfg: &LlamaConfig,
    store: &SafetensorsStore,
    scheme: QuantScheme,
    clip: Option<ClipSearch>,
    include_head: bool,
) -> Result<(BTreeMap<String, QuantizedTensor>, QuantizeReport)> {
    let t0 = Instant::now();
    let mut targets = block_linears(cfg);
    if include_head {
        let name = if store.contains("lm_head.weight") { "lm_head" } else { "model.embed_tokens" };
        if name != "lm_head" {
            return Err(Error::option(
                "--include-head",
                "the LM head is tied to the embedding; quantizing it would quantize the embedding too (not supported)",
            ));
        }
        targets.push((name.to_string(), cfg.vocab_size, cfg.hidden_size));
    }
    let pb = indicatif::ProgressBar::new(targets.len() as u64);
    pb.set_style(
        indicatif::ProgressStyle::with_template("rtn [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta}")
            .unwrap()
            .progress_chars("=> "),
    );
    let mut out = BTreeMap::new();
    let mut layers = Vec::new();
    for (name, o, i) in targets {
        let tl = Instant::now();
        let w = store.f32_shaped(&format!("{name}.weight"), &[o, i])?;
        let q = quantize_rtn(&name, &w, o, i, scheme, clip)?;
        layers.push(LayerReport {
            name: name.clone(),
            shape: [o, i],
            loss: sq_error(&w, &q),
            damp: None,
            damp_retries: 0,
            refit: None,
            seconds: tl.elapsed().as_secs_f64(),
        });
        out.insert(name, q);
        pb.inc(1);
    }
    pb.finish_and_clear();
    let report = QuantizeReport {
        method: if scheme.is_fp8() { "fp8" } else { "rtn" }.into(),
        scheme: scheme.to_string(),
        layers,
        timings: RunnerTimings::default(),
        calibration_tokens: 0,
        seconds: t0.elapsed().as_secs_f64(),
    };
    Ok((out, report))
}

/// GPTQ as a [`SiteQuantizer`]: one Hessian per site, shared by the linears reading it.
pub struct GptqSiteQuantizer {
    pub scheme: QuantScheme,
    pub opts: GptqOptions,
    pub layers: Vec<LayerReport>,
    pub verbose: bool,
}

impl SiteQuantizer for GptqSiteQuantizer {
    fn stats_request(&self) -> StatsRequest {
        StatsRequest { hessian: true, ..Default::default() }
    }

    fn quantize_site(
        &mut self,
        _block: usize,
        _site: InputSite,
        linears: &[LinearWeight],
        stats: &SiteStats,
    ) -> Result<Vec<QuantizedTensor>> {
        let h = stats.hessian.as_ref().expect("hessian requested").hessian();
        linears
            .iter()
            .map(|l| {
                let r = gptq_quantize(&l.name, &l.weight, l.out_features, l.in_features, &h, self.scheme, &self.opts)?;
                if r.damp_retries > 0 {
                    eprintln!(
                        "gptq: {}: Hessian not positive definite; damping raised {} time(s) to {}",
                        l.name, r.damp_retries, r.damp_used
                    );
                }
                if self.verbose {
                    eprintln!("gptq: {:<36} loss {:>12.4} damp {:.4} {:.2}s", l.name, r.loss, r.damp_used, r.seconds);
                }
                self.layers.push(LayerReport {
                    name: l.name.clone(),
                    shape: [l.out_features, l.in_features],
                    loss: r.loss,
                    damp: Some(r.damp_used),
                    damp_retries: r.damp_retries,
                    refit: r.refit,
                    seconds: r.seconds,
                });
                Ok(r.tensor)
            })
            .collect()
    }
}

/// GPTQ over the whole model on calibration `windows`.
pub fn quantize_gptq_model(
    cfg: &LlamaConfig,
    store: &SafetensorsStore,
    windows: &[Vec<u32>],
    scheme: QuantScheme,
    opts: GptqOptions,
    runner: RunnerOptions,
    verbose: bool,
) -> Result<(BTreeMap<String, QuantizedTensor>, QuantizeReport)> {
    let t0 = Instant::now();
    let mut q = GptqSiteQuantizer { scheme, opts, layers: Vec::new(), verbose };
    let out = run_sequential(cfg, store, windows, &mut q, runner)?;
    let report = QuantizeReport {
        method: "gptq".into(),
        scheme: scheme.to_string(),
        layers: q.layers,
        timings: out.timings,
        calibration_tokens: out.tokens,
        seconds: t0.elapsed().as_secs_f64(),
    };
    Ok((out.tensors, report))
}
