//! W8A8 with round-to-nearest weights, block by block over the calibration windows:
//!
//! 1. SmoothQuant (optional): the full-precision block runs on its inputs (the outputs of
//!    the already quantized blocks before it) and each site's per-channel max |x| gives
//!    the scales folded into the block ([`smooth_block`]);
//! 2. the (smoothed) weights are quantized (RTN);
//! 3. the weight-quantized block runs on the same inputs: each site's histogram is taken
//!    (activations in full precision, so the statistics serve every activation scheme) and
//!    its outputs become the next block's inputs; static scales follow from the histograms.
//!
//! From a statistics file the same steps run with no forward pass: the stored ranges give
//! the smoothing scales and the stored histograms the static scales, so a run from saved
//! statistics writes the same bytes as the run that saved them. Only one block's weights
//! are materialized at a time. NaN/Inf in an activation stops everything, naming the block
//! and the linears reading it.

use super::smooth::smooth_block;
use super::ActCalib;
use crate::calib::histogram::HistogramObserver;
use crate::calib::observers::MinMaxObserver;
use crate::calib::runner::RunnerTimings;
use crate::calib::stats_file::CalibStats;
use crate::error::{Error, Result};
use crate::format::activation::{ActParams, ActScheme};
use crate::format::{QuantScheme, QuantizedTensor};
use crate::io::safetensors::SafetensorsStore;
use crate::model::layers::Rope;
use crate::model::llama::{embed_tokens, linear_shape, BlockHook, InputSite, BLOCK_LINEARS};
use crate::model::LlamaConfig;
use crate::quant::awq::weights::BlockWeights;
use crate::quant::pipeline::LayerReport;
use crate::quant::rtn::{quantize_rtn, ClipSearch};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

const SITES: [InputSite; 4] = [InputSite::AttnIn, InputSite::AttnOut, InputSite::MlpIn, InputSite::MlpAct];

#[derive(Clone, Copy, Debug)]
pub struct W8a8Options {
    pub weights: QuantScheme,
    /// Clipping search of the weight ranges (RTN `--mse`).
    pub clip: Option<ClipSearch>,
    pub act: ActScheme,
    /// Static scales only.
    pub calib: ActCalib,
    /// SmoothQuant migration strength α, or no smoothing.
    pub smooth: Option<f32>,
    /// Windows per forward chunk.
    pub chunk_windows: usize,
    pub progress: bool,
}

impl W8a8Options {
    /// What the statistics depend on besides the text: a file is reused only when these match.
    pub fn stats_key(&self) -> BTreeMap<String, Value> {
        BTreeMap::from([
            ("weights".to_string(), json!(self.weights.to_string())),
            ("weights_clip".to_string(), json!(self.clip.is_some())),
            ("smooth".to_string(), json!(self.smooth)),
        ])
    }
}

/// Where the statistics come from.
pub enum W8a8Source<'a> {
    /// None needed: dynamic activations without smoothing.
    None,
    Windows(&'a [Vec<u32>]),
    /// A statistics file (and its path, for messages).
    Stats(&'a CalibStats, &'a Path),
}

pub struct W8a8Output {
    pub tensors: BTreeMap<String, QuantizedTensor>,
    /// Static input parameters by module name (empty when dynamic).
    pub params: BTreeMap<String, ActParams>,
    /// Dense tensors changed by smoothing (norm weights, biases).
    pub dense: BTreeMap<String, Vec<f32>>,
    /// The statistics gathered from windows (empty otherwise); its `meta` holds [`W8a8Options::stats_key`].
    pub stats: CalibStats,
    pub layers: Vec<LayerReport>,
    pub timings: RunnerTimings,
    pub tokens: usize,
}

/// The linears reading `site` of block `b`, for messages: `model.layers.3.self_attn.q_proj/k_proj/v_proj`.
pub fn site_linears(b: usize, site: InputSite) -> String {
    let shorts: Vec<&str> = BLOCK_LINEARS.iter().filter(|(_, s)| *s == site).map(|(n, _)| *n).collect();
    let (module, _) = shorts[0].split_once('.').expect("block linears are module.name");
    let names: Vec<&str> = shorts.iter().map(|s| s.split_once('.').map_or(*s, |(_, n)| n)).collect();
    format!("model.layers.{b}.{module}.{}", names.join("/"))
}

/// Collects a block's site statistics as it runs; refuses NaN/Inf.
struct Collect {
    block: usize,
    min_max: bool,
    histogram: bool,
    sites: BTreeMap<InputSite, (usize, Option<MinMaxObserver>, Option<HistogramObserver>)>,
    /// Seconds spent in the observers (reported as statistics, not forward).
    seconds: f64,
}

impl BlockHook for Collect {
    fn on_input(&mut self, site: InputSite, x: &[f32], tokens: usize) -> Result<()> {
        let width = x.len() / tokens.max(1);
        if let Some(i) = crate::model::layers::first_non_finite(x) {
            return Err(Error::other_msg(format!(
                "calibration: block {}: the input of {} holds {} at token {}, channel {}; nothing was written",
                self.block,
                site_linears(self.block, site),
                x[i],
                i / width.max(1),
                i % width.max(1)
            )));
        }
        let t = Instant::now();
        let (n, mm, h) = self.sites.entry(site).or_insert_with(|| {
            (0, self.min_max.then(|| MinMaxObserver::new(width)), self.histogram.then(HistogramObserver::new))
        });
        *n += tokens;
        if let Some(m) = mm {
            m.observe(x);
        }
        if let Some(h) = h {
            h.observe(x);
        }
        self.seconds += t.elapsed().as_secs_f64();
        Ok(())
    }
}

/// W8A8 over every block of the model in `store` (see the module doc).
pub fn quantize_w8a8_rtn(
    cfg: &LlamaConfig,
    store: &SafetensorsStore,
    source: W8a8Source<'_>,
    opts: W8a8Options,
) -> Result<W8a8Output> {
    opts.act.check()?;
    let static_act = !opts.act.dynamic;
    if matches!(source, W8a8Source::None) && (static_act || opts.smooth.is_some()) {
        return Err(Error::option(
            "--calib",
            "static activation scales and smoothing need calibration windows or a statistics file",
        ));
    }
    if let W8a8Source::Stats(st, path) = &source {
        st.check_model(cfg, path)?;
        for (k, want) in opts.stats_key() {
            let got = st.meta.get(&k).cloned().unwrap_or(Value::Null);
            if got != want {
                return Err(Error::format(
                    path,
                    format!("statistics taken with {k} = {got}, but this run has {k} = {want}; calibrate again"),
                ));
            }
        }
    }
    let mut timings = RunnerTimings::default();
    let t0 = Instant::now();
    let (mut x, seqlen, n) = match &source {
        W8a8Source::Windows(w) => {
            let seqlen = w.first().map_or(0, Vec::len);
            if seqlen == 0 || w.iter().any(|v| v.len() != seqlen) {
                return Err(Error::option("--seqlen", "calibration windows must all have the same, non-zero length"));
            }
            let embed = store.f32_shaped("model.embed_tokens.weight", &[cfg.vocab_size, cfg.hidden_size])?;
            let all: Vec<u32> = w.iter().flatten().copied().collect();
            (embed_tokens(&embed, cfg.hidden_size, &all)?, seqlen, w.len())
        }
        _ => (vec![], 1, 0),
    };
    let rope = Rope::new(cfg.head_dim, seqlen, cfg.rope_theta);
    let chunk = opts.chunk_windows.max(1);
    let rows = chunk * seqlen * cfg.hidden_size;
    timings.load += t0.elapsed().as_secs_f64();
    let mut out = W8a8Output {
        tensors: BTreeMap::new(),
        params: BTreeMap::new(),
        dense: BTreeMap::new(),
        stats: CalibStats { meta: opts.stats_key(), ..Default::default() },
        layers: vec![],
        timings: RunnerTimings::default(),
        tokens: n * seqlen,
    };
    let pb = if opts.progress {
        indicatif::ProgressBar::new(cfg.num_layers as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    pb.set_style(
        indicatif::ProgressStyle::with_template("w8a8 block {pos}/{len} [{bar:30}] {elapsed_precise} eta {eta}")
            .unwrap()
            .progress_chars("=> "),
    );
    for b in 0..cfg.num_layers {
        let tl = Instant::now();
        let mut bw = BlockWeights::load(cfg, store, b)?;
        timings.load += tl.elapsed().as_secs_f64();
        // 1. SmoothQuant, from the full-precision block's site ranges.
        if let Some(alpha) = opts.smooth {
            let tf = Instant::now();
            let absmax: BTreeMap<InputSite, Vec<f32>> = match &source {
                W8a8Source::Windows(_) => {
                    let block = bw.to_block(cfg);
                    let mut c =
                        Collect { block: b, min_max: true, histogram: false, sites: BTreeMap::new(), seconds: 0.0 };
                    for part in x.chunks(rows) {
                        let mut xc = part.to_vec();
                        block.forward(
                            cfg,
                            &rope,
                            &mut xc,
                            part.len() / (seqlen * cfg.hidden_size),
                            seqlen,
                            Some(&mut c),
                        )?;
                    }
                    timings.statistics += c.seconds;
                    timings.forward -= c.seconds;
                    let mut m = BTreeMap::new();
                    for (site, (tokens, mm, _)) in c.sites {
                        let mm = mm.expect("min/max requested");
                        let r = out.stats.site_mut(b, site, mm.min.len());
                        r.tokens = tokens;
                        m.insert(site, mm.min.iter().zip(&mm.max).map(|(lo, hi)| (-lo).max(*hi)).collect());
                        r.min_max = Some((mm.min, mm.max));
                    }
                    m
                }
                W8a8Source::Stats(st, path) => SITES
                    .iter()
                    .map(|&s| {
                        let (lo, hi) = st.site(b, s, path)?.min_max.as_ref().ok_or_else(|| {
                            Error::format(
                                path,
                                format!("no per-channel ranges for {} (saved without smoothing)", site_linears(b, s)),
                            )
                        })?;
                        Ok((s, lo.iter().zip(hi).map(|(lo, hi)| (-lo).max(*hi)).collect()))
                    })
                    .collect::<Result<_>>()?,
                W8a8Source::None => unreachable!("checked above"),
            };
            timings.forward += tf.elapsed().as_secs_f64();
            out.dense.extend(smooth_block(cfg, &mut bw, &|s| absmax[&s].clone(), alpha)?);
        }
        // 2. Weights.
        let tq = Instant::now();
        let mut dequantized = Vec::with_capacity(BLOCK_LINEARS.len());
        for (k, (short, _)) in BLOCK_LINEARS.iter().enumerate() {
            let t = Instant::now();
            let (o, i) = linear_shape(cfg, short);
            let name = format!("model.layers.{b}.{short}");
            let q = quantize_rtn(&name, &bw.linears[k], o, i, opts.weights, opts.clip)?;
            let deq = q.dequantize();
            let loss = deq.iter().zip(&bw.linears[k]).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
            out.layers.push(LayerReport {
                name: name.clone(),
                shape: [o, i],
                loss,
                damp: None,
                damp_retries: 0,
                refit: None,
                seconds: t.elapsed().as_secs_f64(),
            });
            out.tensors.insert(name, q);
            dequantized.push((k, deq));
        }
        timings.quantize += tq.elapsed().as_secs_f64();
        // 3. The weight-quantized block: histograms, and the next block's inputs.
        if let W8a8Source::Windows(_) = &source {
            let tf = Instant::now();
            let block = bw.block_with(cfg, &dequantized);
            drop(dequantized);
            let mut c =
                Collect { block: b, min_max: false, histogram: static_act, sites: BTreeMap::new(), seconds: 0.0 };
            for part in x.chunks_mut(rows) {
                let w = part.len() / (seqlen * cfg.hidden_size);
                block.forward(cfg, &rope, part, w, seqlen, Some(&mut c))?;
            }
            for (site, (tokens, _, h)) in c.sites {
                let width =
                    linear_shape(cfg, BLOCK_LINEARS.iter().find(|(_, s)| *s == site).expect("site has linears").0).1;
                let r = out.stats.site_mut(b, site, width);
                r.tokens = tokens;
                r.histogram = h;
            }
            timings.forward += tf.elapsed().as_secs_f64() - c.seconds;
            timings.statistics += c.seconds;
        }
        // 4. Static scales, one per site.
        if static_act {
            let ts = Instant::now();
            for site in SITES {
                let hist = match &source {
                    W8a8Source::Stats(st, path) => st.site(b, site, path)?.histogram.as_ref(),
                    _ => out.stats.sites.get(&(b, site)).and_then(|r| r.histogram.as_ref()),
                };
                let hist = hist.filter(|h| h.values() > 0).ok_or_else(|| {
                    Error::other_msg(format!(
                        "no activation histogram for {} (a statistics file saved with --dynamic?)",
                        site_linears(b, site)
                    ))
                })?;
                let p = opts.act.params_from(opts.calib.range(hist, &opts.act));
                for (short, _) in BLOCK_LINEARS.iter().filter(|(_, s)| *s == site) {
                    out.params.insert(format!("model.layers.{b}.{short}"), p);
                }
            }
            timings.statistics += ts.elapsed().as_secs_f64();
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    if let W8a8Source::Stats(st, _) = &source {
        out.tokens = st.tokens();
    }
    out.timings = timings;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn site_linears_names_every_reader() {
        assert_eq!(site_linears(3, InputSite::AttnIn), "model.layers.3.self_attn.q_proj/k_proj/v_proj");
        assert_eq!(site_linears(0, InputSite::MlpAct), "model.layers.0.mlp.down_proj");
    }
}
