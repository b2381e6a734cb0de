//! AWQ (Lin et al. 2023, "AWQ: Activation-aware Weight Quantization for LLM Compression
//! and Acceleration"), as AutoAWQ's `AwqQuantizer` runs it (casper-hansen/AutoAWQ
//! `awq/quantize/quantizer.py`), block by block:
//!
//! 1. the full-precision block runs on the calibration inputs (the outputs of the already
//!    quantized blocks before it), stage by stage; at each site the scale groups reading it
//!    ([`scale_groups`]: norm -> q/k/v, v -> o when shapes allow, norm -> gate/up,
//!    up -> down) get their scales by a grid search over alpha ([`search`]);
//! 2. every group's scales are folded into the block ([`weights::BlockWeights::fold`]):
//!    the full-precision block computes the same function;
//! 3. clipping search of the scaled weights, except q/k ([`SCORE_LINEARS`], [`clip`]);
//! 4. the block is quantized site by site, RTN or GPTQ (`awq+gptq`, with the Hessians of
//!    the scaled inputs, each site seeing the already quantized sites before it), and its
//!    quantized output becomes the next block's input.
//!
//! One block is materialized at a time; activations are `[windows·seqlen, width]`.
//! Departure from AutoAWQ: its next-block inputs are the full-precision block's outputs;
//! here they are the quantized block's (as GPTQ's sequential runner), so later blocks
//! are scaled for the inputs they will actually see.

pub mod clip;
pub mod search;
pub mod weights;

use self::clip::{clip_weights, AwqClip};
use self::search::{search_group, GroupSearch, SearchContext};
use self::weights::BlockWeights;
use crate::calib::runner::RunnerTimings;
use crate::error::{Error, Result};
use crate::format::{QuantScheme, QuantizedTensor};
use crate::io::safetensors::SafetensorsStore;
use crate::model::layers::Rope;
use crate::model::linear::{DenseLinear, Linear};
use crate::model::llama::{
    embed_tokens, linear_shape, scale_groups, InputSite, ScaleGroup, ScaleSource, BLOCK_LINEARS, SCORE_LINEARS,
};
use crate::model::LlamaConfig;
use crate::quant::gptq::{gptq_quantize, GptqOptions};
use crate::quant::linalg::HessianAccumulator;
use crate::quant::pipeline::{LayerReport, QuantizeReport};
use crate::quant::rtn::quantize_rtn;
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
    /// Quantize after scaling with GPTQ instead of RTN (`awq+gptq`).
    pub gptq: Option<GptqOptions>,
    /// With `gptq`: score the alpha grid with GPTQ's weights (its options without the
    /// MSE search, which would cost 7x) instead of RTN's. On by default.
    pub gptq_search: bool,
    /// Search the scales on the first N calibration windows only (all by default).
    pub search_windows: Option<usize>,
    /// Windows per forward chunk.
    pub chunk_windows: usize,
    pub progress: bool,
    pub verbose: bool,
}

impl Default for AwqOptions {
    fn default() -> Self {
        Self {
            grid: 20,
            duo_scaling: false,
            clip: Some(AwqClip::default()),
            gptq: None,
            gptq_search: true,
            search_windows: None,
            chunk_windows: 8,
            progress: false,
            verbose: false,
        }
    }
}

/// One scale group of one block.
#[derive(Clone, Debug, Serialize)]
pub struct AwqGroupReport {
    pub block: usize,
    pub source: String,
    pub linears: Vec<String>,
    pub alpha: f32,
    /// Mean squared error of the inspected output with s = 1 (alpha = 0), quantized
    /// as the search quantizes (RTN, or GPTQ with `gptq_search`).
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

/// Seconds spent in each phase.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AwqTimings {
    pub load: f64,
    /// Full-precision stage forwards that produce each site's input.
    pub calibration: f64,
    /// Alpha grid search.
    pub search: f64,
    pub clip: f64,
    /// The quantized pass: RTN or GPTQ of every linear, Hessians, block outputs.
    pub quantize: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct AwqReport {
    #[serde(flatten)]
    pub base: QuantizeReport,
    pub awq_groups: Vec<AwqGroupReport>,
    pub awq_clips: Vec<AwqClipReport>,
    pub awq_timings: AwqTimings,
    /// Peak resident memory of the process (Linux `VmHWM`), if known.
    pub peak_rss_bytes: Option<u64>,
}

pub struct AwqOutput {
    /// Quantized linears by module name.
    pub tensors: BTreeMap<String, QuantizedTensor>,
    /// Dense tensors the folds changed (norm weights, biases): name -> values.
    pub dense: BTreeMap<String, Vec<f32>>,
    pub report: AwqReport,
}

/// Peak resident set size from `/proc/self/status`.
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kb| kb * 1024)
}

fn check_finite(block: usize, what: &str, x: &[f32]) -> Result<()> {
    match crate::model::layers::first_non_finite(x) {
        None => Ok(()),
        Some(i) => Err(Error::other_msg(format!(
            "awq: block {block}, {what}: non-finite activation {} at element {i}; nothing was written",
            x[i]
        ))),
    }
}

/// `f(first_row, chunk, windows)` over consecutive chunks of `chunk` windows, concatenated.
fn chunked(
    input: &[f32],
    width: usize,
    seqlen: usize,
    chunk: usize,
    mut f: impl FnMut(usize, &[f32], usize) -> Vec<f32>,
) -> Vec<f32> {
    let rows = chunk * seqlen;
    let mut out = Vec::new();
    for (c, part) in input.chunks(rows * width).enumerate() {
        out.extend_from_slice(&f(c * rows, part, part.len() / (seqlen * width)));
    }
    out
}

fn source_name(s: ScaleSource) -> String {
    match s {
        ScaleSource::InputNorm => "input_layernorm".into(),
        ScaleSource::PostNorm => "post_attention_layernorm".into(),
        ScaleSource::Linear(l) => l.into(),
    }
}

struct Run<'a> {
    cfg: &'a LlamaConfig,
    scheme: QuantScheme,
    opts: AwqOptions,
    seqlen: usize,
    groups: Vec<ScaleGroup>,
    tensors: BTreeMap<String, QuantizedTensor>,
    layers: Vec<LayerReport>,
    group_reports: Vec<AwqGroupReport>,
    clip_reports: Vec<AwqClipReport>,
    t: AwqTimings,
}

impl Run<'_> {
    /// Search every group reading `site` (input `x`), keep a clipping sample of `x`.
    fn search_site(
        &mut self,
        ctx: &SearchContext,
        bw: &BlockWeights,
        site: InputSite,
        x: &[f32],
        found: &mut Vec<(usize, GroupSearch)>,
        samples: &mut BTreeMap<InputSite, Vec<f32>>,
    ) -> Result<()> {
        check_finite(bw.index, &format!("{site:?} input"), x)?;
        let width = BLOCK_LINEARS
            .iter()
            .find(|l| l.1 == site)
            .map(|l| linear_shape(self.cfg, l.0).1)
            .expect("every site has a linear");
        if let Some(c) = self.opts.clip {
            samples.insert(site, c.sample(x, width));
        }
        let ts = Instant::now();
        for gi in (0..self.groups.len()).filter(|&g| self.groups[g].site == site) {
            found.push((gi, search_group(ctx, bw, &self.groups[gi], x, self.opts.search_windows)?));
        }
        self.t.search += ts.elapsed().as_secs_f64();
        Ok(())
    }

    /// Quantize the linears reading `site` from the final (scaled, clipped) weights, given
    /// their input `x`, and put them into `block` for the stages after.
    fn quantize_site(
        &mut self,
        bw: &BlockWeights,
        site: InputSite,
        x: &[f32],
        block: &mut crate::model::llama::Block,
    ) -> Result<()> {
        let idx: Vec<usize> = (0..BLOCK_LINEARS.len()).filter(|&i| BLOCK_LINEARS[i].1 == site).collect();
        let width = linear_shape(self.cfg, BLOCK_LINEARS[idx[0]].0).1;
        let hessian = match self.opts.gptq {
            Some(_) => {
                let mut acc = HessianAccumulator::new(width);
                for part in x.chunks(self.opts.chunk_windows.max(1) * self.seqlen * width) {
                    acc.add_batch(part, part.len() / width);
                }
                Some(acc.hessian())
            }
            None => None,
        };
        for k in idx {
            let tl = Instant::now();
            let short = BLOCK_LINEARS[k].0;
            let (o, i) = linear_shape(self.cfg, short);
            let name = format!("model.layers.{}.{short}", bw.index);
            let w = &bw.linears[k];
            let (q, loss, damp, retries, refit) = match (&self.opts.gptq, &hessian) {
                (Some(g), Some(h)) => {
                    let r = gptq_quantize(&name, w, o, i, h, self.scheme, g)?;
                    (r.tensor, r.loss, Some(r.damp_used), r.damp_retries, r.refit)
                }
                _ => {
                    let q = quantize_rtn(&name, w, o, i, self.scheme, None)?;
                    let loss = q.dequantize().iter().zip(w).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
                    (q, loss, None, 0, None)
                }
            };
            if self.opts.verbose {
                eprintln!("awq: {name:<36} loss {loss:>12.4}");
            }
            block.linears[k] = Box::new(DenseLinear::new(q.dequantize(), o, i)) as Box<dyn Linear>;
            self.layers.push(LayerReport {
                name: name.clone(),
                shape: [o, i],
                loss,
                damp,
                damp_retries: retries,
                refit,
                seconds: tl.elapsed().as_secs_f64(),
            });
            self.tensors.insert(name, q);
        }
        Ok(())
    }

    /// The quantized pass of block `bw` on `x` (in place: `x` becomes the block output).
    fn quantize_block(&mut self, bw: &BlockWeights, rope: &Rope, x: &mut [f32]) -> Result<()> {
        let (cfg, seq, chunk) = (self.cfg, self.seqlen, self.opts.chunk_windows.max(1));
        let (h, qd, id) = (cfg.hidden_size, cfg.q_dim(), cfg.intermediate_size);
        let mut block = bw.to_block(cfg);
        let h1 = block.attn_input(cfg, x);
        self.quantize_site(bw, InputSite::AttnIn, &h1, &mut block)?;
        let attn = chunked(&h1, h, seq, chunk, |_, part, w| block.attention(cfg, rope, part, w, seq));
        drop(h1);
        self.quantize_site(bw, InputSite::AttnOut, &attn, &mut block)?;
        let h2 = chunked(&attn, qd, seq, chunk, |row0, part, w| {
            block.mlp_input(cfg, &mut x[row0 * h..(row0 + w * seq) * h], part)
        });
        drop(attn);
        self.quantize_site(bw, InputSite::MlpIn, &h2, &mut block)?;
        let act = chunked(&h2, h, seq, chunk, |_, part, _| block.mlp_act(cfg, part));
        drop(h2);
        self.quantize_site(bw, InputSite::MlpAct, &act, &mut block)?;
        x.chunks_mut(chunk * seq * h)
            .zip(act.chunks(chunk * seq * id))
            .for_each(|(xc, ac)| block.mlp_output(cfg, xc, ac));
        check_finite(bw.index, "block output", x)
    }
}

/// AWQ over every block of the model in `store`, on calibration `windows` (each `seqlen`
/// tokens), quantizing into the integer `scheme`.
pub fn quantize_awq_model(
    cfg: &LlamaConfig,
    store: &SafetensorsStore,
    windows: &[Vec<u32>],
    scheme: QuantScheme,
    opts: AwqOptions,
) -> Result<AwqOutput> {
    let t0 = Instant::now();
    if scheme.is_fp8() {
        return Err(Error::option("--method", format!("awq quantizes to integer schemes; {scheme} is FP8")));
    }
    let seqlen = windows.first().map_or(0, Vec::len);
    if seqlen == 0 || windows.iter().any(|w| w.len() != seqlen) {
        return Err(Error::option("--seqlen", "calibration windows must all have the same, non-zero length"));
    }
    let (h, qd) = (cfg.hidden_size, cfg.q_dim());
    let chunk = opts.chunk_windows.max(1);
    let mut run = Run {
        cfg,
        scheme,
        opts,
        seqlen,
        groups: scale_groups(cfg)?,
        tensors: BTreeMap::new(),
        layers: vec![],
        group_reports: vec![],
        clip_reports: vec![],
        t: AwqTimings::default(),
    };
    let embed = store.f32_shaped("model.embed_tokens.weight", &[cfg.vocab_size, h])?;
    let all: Vec<u32> = windows.iter().flatten().copied().collect();
    let mut x = embed_tokens(&embed, h, &all)?; // [n·seqlen, hidden]
    drop(embed);
    let rope = Rope::new(cfg.head_dim, seqlen, cfg.rope_theta);
    let ctx = SearchContext {
        cfg,
        rope: &rope,
        seqlen,
        chunk_windows: chunk,
        scheme,
        grid: opts.grid,
        duo_scaling: opts.duo_scaling,
        gptq: opts.gptq.filter(|_| opts.gptq_search).map(|g| GptqOptions { mse: false, ..g }),
    };
    let mut dense = BTreeMap::new();
    run.t.load += t0.elapsed().as_secs_f64();
    let pb = if opts.progress {
        indicatif::ProgressBar::new(cfg.num_layers as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    pb.set_style(
        indicatif::ProgressStyle::with_template("awq block {pos}/{len} [{bar:30}] {elapsed_precise} eta {eta}")
            .unwrap()
            .progress_chars("=> "),
    );

    for b in 0..cfg.num_layers {
        let tl = Instant::now();
        let mut bw = BlockWeights::load(cfg, store, b)?;
        run.t.load += tl.elapsed().as_secs_f64();

        // 1. Full-precision stages; the groups at each site are searched on its input.
        let fp = bw.to_block(cfg);
        let (mut found, mut samples) = (Vec::new(), BTreeMap::new());
        let tc = Instant::now();
        let h1 = fp.attn_input(cfg, &x);
        run.t.calibration += tc.elapsed().as_secs_f64();
        run.search_site(&ctx, &bw, InputSite::AttnIn, &h1, &mut found, &mut samples)?;
        let tc = Instant::now();
        let attn = chunked(&h1, h, seqlen, chunk, |_, part, w| fp.attention(cfg, &rope, part, w, seqlen));
        drop(h1);
        run.t.calibration += tc.elapsed().as_secs_f64();
        run.search_site(&ctx, &bw, InputSite::AttnOut, &attn, &mut found, &mut samples)?;
        let tc = Instant::now();
        let mut xr = x.clone();
        let h2 = chunked(&attn, qd, seqlen, chunk, |row0, part, w| {
            fp.mlp_input(cfg, &mut xr[row0 * h..(row0 + w * seqlen) * h], part)
        });
        drop((attn, xr));
        run.t.calibration += tc.elapsed().as_secs_f64();
        run.search_site(&ctx, &bw, InputSite::MlpIn, &h2, &mut found, &mut samples)?;
        let tc = Instant::now();
        let act = chunked(&h2, h, seqlen, chunk, |_, part, _| fp.mlp_act(cfg, part));
        drop(h2);
        run.t.calibration += tc.elapsed().as_secs_f64();
        run.search_site(&ctx, &bw, InputSite::MlpAct, &act, &mut found, &mut samples)?;
        drop((act, fp));

        // 2. Fold every group's scales.
        let mut line = format!("block {b:>2}:");
        for (gi, r) in &found {
            let g = &run.groups[*gi];
            bw.fold(cfg, g, &r.scales)?;
            let short = |l: &&str| l.rsplit('.').next().unwrap_or(l).trim_end_matches("_proj").to_string();
            line += &format!(
                " {}->{} a={:.2} {:.3e}->{:.3e};",
                source_name(g.source),
                g.linears.iter().map(short).collect::<Vec<_>>().join("/"),
                r.alpha,
                r.error_before(),
                r.error_after()
            );
            run.group_reports.push(AwqGroupReport {
                block: b,
                source: source_name(g.source),
                linears: g.linears.iter().map(|l| l.to_string()).collect(),
                alpha: r.alpha,
                error_before: r.error_before(),
                error_after: r.error_after(),
                errors: r.errors.clone(),
            });
        }
        for (gi, _) in &found {
            dense.extend(bw.folded_dense(&run.groups[*gi]));
        }
        if opts.progress && !pb.is_hidden() {
            pb.println(line);
        } else if opts.progress || opts.verbose {
            eprintln!("{line}"); // indicatif drops println when it does not draw (no terminal)
        }

        // 3. Clipping of the scaled weights, on the scaled input samples.
        if let Some(c) = opts.clip {
            let tc = Instant::now();
            for (k, (short, site)) in BLOCK_LINEARS.iter().enumerate() {
                if SCORE_LINEARS.contains(short) {
                    continue;
                }
                let (o, i) = linear_shape(cfg, short);
                let mut xs = samples.get(site).cloned().unwrap_or_default();
                if let Some((_, r)) = found.iter().find(|(gi, _)| run.groups[*gi].linears.contains(short)) {
                    for row in xs.chunks_mut(i) {
                        row.iter_mut().zip(&r.scales).for_each(|(v, s)| *v /= s);
                    }
                }
                if let Some((before, after)) = clip_weights(&mut bw.linears[k], o, i, &xs, scheme, c) {
                    run.clip_reports.push(AwqClipReport {
                        name: format!("model.layers.{b}.{short}"),
                        error_before: before,
                        error_after: after,
                    });
                }
            }
            run.t.clip += tc.elapsed().as_secs_f64();
        }

        // 4. Quantize, site by site; the quantized block's output feeds the next block.
        let tq = Instant::now();
        run.quantize_block(&bw, &rope, &mut x)?;
        run.t.quantize += tq.elapsed().as_secs_f64();
        pb.inc(1);
    }
    pb.finish_and_clear();
    let method = if opts.gptq.is_some() { "awq+gptq" } else { "awq" };
    let t = run.t;
    let timings =
        RunnerTimings { forward: t.calibration, statistics: t.search + t.clip, quantize: t.quantize, load: t.load };
    let base = QuantizeReport {
        method: method.into(),
        scheme: scheme.to_string(),
        layers: run.layers,
        timings,
        calibration_tokens: windows.len() * seqlen,
        seconds: t0.elapsed().as_secs_f64(),
    };
    let report = AwqReport {
        base,
        awq_groups: run.group_reports,
        awq_clips: run.clip_reports,
        awq_timings: t,
        peak_rss_bytes: peak_rss_bytes(),
    };
    Ok(AwqOutput { tensors: run.tensors, dense, report })
}
