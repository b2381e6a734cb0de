//! AWQ (Lin et al. 2023) as a block transform, as AutoAWQ's `AwqQuantizer` runs it
//! (casper-hansen/AutoAWQ `awq/quantize/quantizer.py`), per block:
//!
//! 1. at each site of the full-precision block, the scale groups reading it
//!    ([`scale_groups`]: norm -> q/k/v, v -> o when shapes allow, norm -> gate/up,
//!    up -> down) get their scales by a grid search over alpha ([`search_group`]), scored
//!    with the weights the following quantizer gives (RTN, or GPTQ with `search_gptq`);
//! 2. every group's scales are folded into the block ([`BlockWeights::fold`]): the
//!    full-precision block computes the same function;
//! 3. clipping search of the scaled weights, except q/k ([`SCORE_LINEARS`], [`clip_weights`]).
//!
//! The weight quantizer that follows (RTN for `awq`, GPTQ for `awq+gptq`) then quantizes
//! the transformed block site by site. Departure from AutoAWQ: the next block's inputs
//! are the quantized block's outputs (as GPTQ's sequential mode), not the full-precision
//! block's, so later blocks are scaled for the inputs they will actually see.

use crate::calib::observers::{SiteStats, StatsRequest};
use crate::error::{Error, Result};
use crate::model::llama::{linear_shape, scale_groups, site_width, InputSite, ScaleGroup, ScaleSource, SCORE_LINEARS};
use crate::model::LlamaConfig;
use crate::pipeline::{BlockContext, BlockTransform, SchemePolicy};
use crate::quant::awq::clip::{clip_weights, AwqClip};
use crate::quant::awq::search::{search_group, GroupSearch, SearchContext};
use crate::quant::awq::weights::BlockWeights;
use crate::quant::gptq::GptqOptions;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AwqOptions {
    /// Alphas `i / grid`, `i = 0 .. grid` (AutoAWQ `n_grid`: 20).
    pub grid: usize,
    /// AutoAWQ's `duo_scaling`: `s = x_mean^a / w_mean^(1-a)` instead of `x_mean^a`.
    pub duo_scaling: bool,
    /// Clipping search (AutoAWQ `apply_clip`), or none.
    pub clip: Option<AwqClip>,
    /// Score the alpha grid with GPTQ's weights (these options) instead of RTN's.
    pub search_gptq: Option<GptqOptions>,
    /// Read only the first N calibration windows (activation magnitudes, alpha search and
    /// clipping samples; all when `None`): the full-precision pass runs only those.
    pub search_windows: Option<usize>,
}

impl Default for AwqOptions {
    fn default() -> Self {
        Self { grid: 20, duo_scaling: false, clip: Some(AwqClip::default()), search_gptq: None, search_windows: None }
    }
}

/// One scale group of one block.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct AwqGroupReport {
    pub block: usize,
    pub source: String,
    pub linears: Vec<String>,
    pub alpha: f32,
    /// Mean squared error of the inspected output with s = 1 (alpha = 0), quantized as
    /// the search quantizes.
    pub error_before: f64,
    /// The same with the chosen scales.
    pub error_after: f64,
    /// Error at every alpha of the grid.
    pub errors: Vec<f64>,
}

/// One clipped linear: summed sampled output error before and after clipping.
#[derive(Clone, Debug, Serialize)]
pub struct AwqClipReport {
    pub name: String,
    pub error_before: f64,
    pub error_after: f64,
}

/// Seconds spent in each phase of the transform.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AwqTimings {
    pub search: f64,
    pub clip: f64,
}

pub struct Awq {
    /// The schemes the weights will be quantized into (the search and clip score them).
    pub schemes: SchemePolicy,
    pub opts: AwqOptions,
    groups: Vec<ScaleGroup>,
    /// This block's searched groups and clipping samples of each site's input.
    found: Vec<(usize, GroupSearch)>,
    samples: BTreeMap<InputSite, Vec<f32>>,
    pub group_reports: Vec<AwqGroupReport>,
    pub clip_reports: Vec<AwqClipReport>,
    pub timings: AwqTimings,
}

impl Awq {
    pub fn new(cfg: &LlamaConfig, schemes: SchemePolicy, opts: AwqOptions) -> Result<Self> {
        let scheme = schemes.default;
        if scheme.is_fp8() {
            return Err(Error::option("--method", format!("awq quantizes to integer schemes; {scheme} is FP8")));
        }
        if opts.search_windows == Some(0) {
            return Err(Error::option("--awq-search-windows", "0: the scale search needs at least one window"));
        }
        if opts.clip.is_some_and(|c| c.tokens == 0) {
            return Err(Error::option("--awq-clip-tokens", "0: the clipping search needs at least one token"));
        }
        if opts.clip.is_some() && scheme.ggml_type().is_some() {
            return Err(Error::option(
                "awq.clip",
                "the clipping search is for integer groups; GGUF blocks search their own scales",
            ));
        }
        Ok(Self {
            schemes,
            opts,
            groups: scale_groups(cfg)?,
            found: vec![],
            samples: BTreeMap::new(),
            group_reports: vec![],
            clip_reports: vec![],
            timings: AwqTimings::default(),
        })
    }
}

fn source_name(cfg: &LlamaConfig, s: ScaleSource) -> String {
    match s {
        ScaleSource::InputNorm => "input_layernorm".into(),
        ScaleSource::PostNorm => cfg.mlp_norm_name().into(),
        ScaleSource::Linear(l) => l.into(),
    }
}

impl BlockTransform for Awq {
    fn name(&self) -> &'static str {
        "awq"
    }

    fn stats_request(&self) -> StatsRequest {
        StatsRequest::default()
    }

    fn needs_activations(&self) -> bool {
        true
    }

    fn windows(&self) -> Option<usize> {
        self.opts.search_windows
    }

    fn observe(
        &mut self,
        ctx: &BlockContext,
        bw: &BlockWeights,
        site: InputSite,
        x: Option<&[f32]>,
        _: &SiteStats,
    ) -> Result<()> {
        let x = x.ok_or_else(|| Error::other_msg("awq: needs the site activations"))?;
        if let Some(c) = self.opts.clip {
            self.samples.insert(site, c.sample(x, site_width(ctx.cfg, site)));
        }
        let ts = Instant::now();
        let search = SearchContext {
            cfg: ctx.cfg,
            rope: ctx.rope,
            seqlen: ctx.seqlen,
            chunk_windows: ctx.chunk_windows,
            scheme_of: &|name| self.schemes.scheme_for(name),
            grid: self.opts.grid,
            duo_scaling: self.opts.duo_scaling,
            gptq: self.opts.search_gptq,
        };
        for gi in (0..self.groups.len()).filter(|&g| self.groups[g].site == site) {
            self.found.push((gi, search_group(&search, bw, &self.groups[gi], x)?));
        }
        self.timings.search += ts.elapsed().as_secs_f64();
        Ok(())
    }

    fn apply(
        &mut self,
        ctx: &BlockContext,
        bw: &mut BlockWeights,
    ) -> Result<(Vec<(String, Vec<f32>)>, Option<String>)> {
        let (cfg, b) = (ctx.cfg, ctx.block);
        let found = std::mem::take(&mut self.found);
        let samples = std::mem::take(&mut self.samples);
        // Fold every group's scales.
        let mut line = format!("block {b:>2}:");
        for (gi, r) in &found {
            let g = &self.groups[*gi];
            bw.fold(cfg, g, &r.scales)?;
            let short = |l: &&str| l.rsplit('.').next().unwrap_or(l).trim_end_matches("_proj").to_string();
            line += &format!(
                " {}->{} a={:.2} {:.3e}->{:.3e};",
                source_name(cfg, g.source),
                g.linears.iter().map(short).collect::<Vec<_>>().join("/"),
                r.alpha,
                r.error_before(),
                r.error_after()
            );
            self.group_reports.push(AwqGroupReport {
                block: b,
                source: source_name(cfg, g.source),
                linears: g.linears.iter().map(|l| l.to_string()).collect(),
                alpha: r.alpha,
                error_before: r.error_before(),
                error_after: r.error_after(),
                errors: r.errors.clone(),
            });
        }
        let dense = found.iter().flat_map(|(gi, _)| bw.folded_dense(cfg, &self.groups[*gi])).collect();
        // Clipping of the scaled weights, on the scaled input samples.
        if let Some(c) = self.opts.clip {
            let tc = Instant::now();
            for (k, (short, site)) in cfg.linears().iter().enumerate() {
                if SCORE_LINEARS.contains(short) {
                    continue;
                }
                let (o, i) = linear_shape(cfg, short);
                let mut xs = samples.get(site).cloned().unwrap_or_default();
                if let Some((_, r)) = found.iter().find(|(gi, _)| self.groups[*gi].linears.contains(short)) {
                    for row in xs.chunks_mut(i) {
                        row.iter_mut().zip(&r.scales).for_each(|(v, s)| *v /= s);
                    }
                }
                let Some(scheme) = self.schemes.scheme_for(&format!("model.layers.{b}.{short}")) else { continue };
                if let Some((before, after)) = clip_weights(&mut bw.linears[k], o, i, &xs, scheme, c) {
                    self.clip_reports.push(AwqClipReport {
                        name: format!("model.layers.{b}.{short}"),
                        error_before: before,
                        error_after: after,
                    });
                }
            }
            self.timings.clip += tc.elapsed().as_secs_f64();
        }
        Ok((dense, Some(line)))
    }

    fn report(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        m.insert("awq_groups".into(), serde_json::to_value(&self.group_reports).unwrap_or_default());
        m.insert("awq_clips".into(), serde_json::to_value(&self.clip_reports).unwrap_or_default());
        m.insert("awq_timings".into(), serde_json::to_value(&self.timings).unwrap_or_default());
        m
    }
}
