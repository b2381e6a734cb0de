//! The block driver: the one loop over a model's blocks that every method runs in.
//!
//! Block 0's inputs are the embedded calibration windows; block i's are the outputs of
//! the already processed (transformed and quantized) blocks before it. For each block:
//!
//! 1. its weights are read from the memory-mapped store (one block in memory at a time)
//!    and rotated when the run has a rotation (the embedded windows were rotated too);
//! 2. if the run has [`BlockTransform`]s, the full-precision block runs through its
//!    stages ([`BLOCK_STAGES`]) on a copy of the inputs; at each site the transforms see the
//!    input and the statistics they asked for; then each transform changes the block;
//! 3. the (transformed) block runs through its stages again on the inputs, in place: at each
//!    site the statistics asked for by the weight and input quantizers are taken on the
//!    input as it is after the earlier sites were quantized, the site's linears are
//!    quantized and replaced (dequantized, exactly) for the stages after it; the last
//!    stage's output is the next block's input.
//!
//! Every window is its own sequence: nothing (no cache, no state) crosses windows. Stages
//! run on chunks of `chunk_windows` windows (bounding attention and MLP temporaries);
//! statistics are taken over the same chunks, in order, so results do not depend on the
//! thread count. Without windows ([`Source::None`]: calibration-free methods) nothing runs
//! forward; from a statistics file ([`Source::Stats`]) each site's statistics are the stored
//! ones.

use super::{merge, BlockContext, LayerReport, LinearWeight, Modifiers};
use crate::calib::observers::{AbsMeanObserver, MinMaxObserver, SiteStats, StatsRequest};
use crate::calib::stats_file::{CalibStats, SiteRecord};
use crate::error::{Error, Result};
use crate::format::QuantizedTensor;
use crate::io::safetensors::SafetensorsStore;
use crate::model::layers::{first_non_finite, rms_norm, Rope};
use crate::model::linear::{DenseLinear, Linear, MappedLinear};
use crate::model::llama::{
    block_sites, embed_tokens, linear_shape, load_norm, site_linears, site_width, Attend, Block, InputSite,
    BLOCK_STAGES,
};
use crate::model::LlamaConfig;
use crate::pipeline::progress::BlockProgress;
use crate::quant::awq::weights::BlockWeights;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

/// Where the site statistics come from.
pub enum Source<'a> {
    /// None: calibration-free methods only.
    None,
    /// Calibration windows, all of one length.
    Windows(&'a [Vec<u32>]),
    /// A statistics file (and its path, for messages): no forward pass.
    Stats(&'a CalibStats, &'a Path),
}

#[derive(Clone, Debug)]
pub struct DriverOptions {
    /// Windows per forward chunk.
    pub chunk_windows: usize,
    pub progress: bool,
    /// Print every linear's size, error against RTN's and time as it is quantized.
    pub verbose: bool,
    /// Prefix of the progress bar and of messages (e.g. `gptq int4-g128`).
    pub label: String,
    /// Record each block's largest |key| and |value| (after RoPE, from the quantized block)
    /// for an FP8 KV cache's static scales ([`DriverOutput::kv_absmax`]).
    pub observe_kv: bool,
    /// Observe the LM head's input (the final norm of the quantized stream) after the last
    /// block, for a head quantized from calibration statistics ([`DriverOutput::head_stats`]).
    pub observe_head: bool,
}

/// Where the time went, in seconds.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Timings {
    pub load: f64,
    /// Block stages (both passes).
    pub forward: f64,
    /// Observers (Hessians, ranges, histograms).
    pub statistics: f64,
    /// Transforms: rotations, searches and folds (AWQ, SmoothQuant).
    pub transform: f64,
    pub quantize: f64,
}

pub struct DriverOutput {
    /// Quantized tensors by module name (`model.layers.N.self_attn.q_proj`).
    pub tensors: BTreeMap<String, QuantizedTensor>,
    /// Dense tensors the transforms changed (norm weights, biases): name -> values.
    pub dense: BTreeMap<String, Vec<f32>>,
    pub layers: Vec<LayerReport>,
    /// What was observed, without Hessians: per-channel ranges of the full-precision
    /// blocks' sites and histograms of the quantized ones (empty from a file or without windows).
    pub stats: CalibStats,
    pub timings: Timings,
    pub tokens: usize,
    /// Per block so far, `[max |k|, max |v|]` over the calibration tokens (with
    /// [`DriverOptions::observe_kv`]); block `b`'s entry is there when the sink sees `b`.
    pub kv_absmax: Vec<[f32; 2]>,
    /// Statistics of the head's input over the calibration windows (with
    /// [`DriverOptions::observe_head`]).
    pub head_stats: Option<SiteStats>,
}

fn check_finite(b: usize, what: &str, x: &[f32], width: usize) -> Result<()> {
    if let Some(i) = first_non_finite(x) {
        return Err(Error::other_msg(format!(
            "calibration: block {b}: {what} holds {} at token {}, channel {}; nothing was written",
            x[i],
            i / width.max(1),
            i % width.max(1)
        )));
    }
    Ok(())
}

/// `model.layers.3.self_attn.q_proj/k_proj/v_proj`: the readers of a site, for messages.
pub fn site_readers(cfg: &LlamaConfig, b: usize, site: InputSite) -> String {
    let shorts: Vec<&str> = site_linears(cfg, site).iter().map(|&i| cfg.linears()[i].0).collect();
    let (module, _) = shorts[0].split_once('.').expect("block linears are module.name");
    let names: Vec<&str> = shorts.iter().map(|s| s.split_once('.').map_or(*s, |(_, n)| n)).collect();
    format!("model.layers.{b}.{module}.{}", names.join("/"))
}

/// A second stream run beside the first, stage by stage: the full-precision model's
/// block on the full-precision model's residual stream (GPTAQ's inputs `x_fp`).
struct Shadow<'a> {
    block: &'a Block,
    x: &'a mut [f32],
}

/// Run `stage` of `block` on the residual `x` (in place) and the previous stage's output
/// `cur` (`width` wide), chunk by chunk; returns the stage's output. `on_chunk(c)` after
/// each chunk.
#[allow(clippy::too_many_arguments)]
fn run_stage(
    cfg: &LlamaConfig,
    rope: &Rope,
    block: &Block,
    stage: crate::model::llama::Stage,
    x: &mut [f32],
    (cur, width): (&[f32], usize),
    seq: usize,
    chunk: usize,
    mut kv_absmax: Option<&mut [f32; 2]>,
    mut on_chunk: impl FnMut(usize),
) -> Vec<f32> {
    let h = cfg.hidden_size;
    let rows = chunk * seq;
    let mut next = Vec::with_capacity(x.len() / h * stage.out_width(cfg));
    for (c, xc) in x.chunks_mut(rows * h).enumerate() {
        let tokens = xc.len() / h;
        let prev = if width == 0 { &[][..] } else { &cur[c * rows * width..][..tokens * width] };
        let mut how = Attend::Windows { rope, windows: tokens / seq, seq, kv_absmax: kv_absmax.as_deref_mut() };
        next.extend_from_slice(&block.run_stage_with(cfg, stage, xc, prev, &mut how));
        on_chunk(c);
    }
    next
}

/// Run every stage of `block` on `x` (`[windows·seq, hidden]`, in place), chunk by chunk,
/// handing each site's input to `on_site(block, site, input, shadow input)`, which may
/// replace the site's linears before the next stage runs. A `shadow` stream runs each
/// stage beside (its block unchanged). Each chunk through a stage is a progress event
/// (`pass` names the pass in the message).
#[allow(clippy::too_many_arguments)]
fn run_stages(
    cfg: &LlamaConfig,
    rope: &Rope,
    block: &mut Block,
    x: &mut [f32],
    seq: usize,
    chunk: usize,
    t: &mut Timings,
    mut kv_absmax: Option<&mut [f32; 2]>,
    mut shadow: Option<Shadow>,
    progress: &mut BlockProgress,
    pass: &str,
    mut on_site: impl FnMut(&mut Block, InputSite, &[f32], Option<&[f32]>, &mut Timings, &mut BlockProgress) -> Result<()>,
) -> Result<()> {
    let windows = x.len() / cfg.hidden_size / seq.max(1);
    let (mut cur, mut cur_fp): (Vec<f32>, Vec<f32>) = (Vec::new(), Vec::new());
    let mut width = 0;
    for stage in BLOCK_STAGES {
        let tf = Instant::now();
        let next = run_stage(cfg, rope, block, stage, x, (&cur, width), seq, chunk, kv_absmax.as_deref_mut(), |c| {
            let done = ((c + 1) * chunk).min(windows);
            progress.event(&format!("{pass}: {} {done}/{windows} windows", stage.describe()));
        });
        if let Some(s) = shadow.as_mut() {
            cur_fp = run_stage(cfg, rope, s.block, stage, s.x, (&cur_fp, width), seq, chunk, None, |_| {});
        }
        t.forward += tf.elapsed().as_secs_f64();
        (cur, width) = (next, stage.out_width(cfg));
        if let Some(site) = stage.site() {
            on_site(block, site, &cur, shadow.is_some().then_some(&cur_fp[..]), t, progress)?;
        }
    }
    Ok(())
}

/// The windows the full-precision pass runs (those some transform reads) and the windows
/// the whole run needs, of `given`: all when a quantizer takes statistics or the KV cache is
/// observed, else only the full-precision pass's (windows are independent, so the first N
/// windows' block inputs are the same whatever else runs). Without transforms: `(0, given)`.
fn run_windows(mods: &Modifiers, q_req: StatsRequest, observe_kv: bool, given: usize) -> (usize, usize) {
    if mods.transforms.is_empty() {
        return (0, given);
    }
    let fp = mods.transforms.iter().map(|m| m.windows().unwrap_or(given).min(given)).max().unwrap_or(given);
    let all = q_req != StatsRequest::default() || observe_kv;
    (fp, if all { given } else { fp })
}

/// Statistics of one site input `x`, observed over the forward chunks, with the
/// full-precision model's input `x_fp` of the same rows when the request has `cross`.
fn observe(x: &[f32], x_fp: Option<&[f32]>, width: usize, rows: usize, req: StatsRequest) -> SiteStats {
    let mut stats = SiteStats::new(width, req);
    if req == StatsRequest::default() {
        stats.tokens = x.len() / width;
    } else {
        for (k, part) in x.chunks(rows * width).enumerate() {
            stats.observe(part, part.len() / width);
            if let Some(fp) = x_fp.filter(|_| req.cross) {
                stats.observe_full_precision(part, &fp[k * rows * width..][..part.len()], part.len() / width);
            }
        }
    }
    stats
}

/// A site's statistics as a file stores them.
fn stored(rec: &SiteRecord) -> SiteStats {
    SiteStats {
        width: rec.width,
        tokens: rec.tokens,
        hessian: None,
        abs_mean: rec.abs_sum.clone().map(|s| AbsMeanObserver::from_parts(s, rec.tokens)),
        min_max: rec.min_max.clone().map(|(min, max)| MinMaxObserver { min, max }),
        histogram: rec.histogram.clone(),
        cross: None,
    }
}

/// Refuse a source that cannot give what the modifiers need, before any work.
fn check_source(source: &Source, mods: &Modifiers) -> Result<()> {
    let needs_windows = |what: &str, why: &str| {
        Error::option(
            "--calib",
            format!("{what} needs calibration windows ({why}); give --calib or use a calibration-free method"),
        )
    };
    match source {
        Source::Windows(w) => {
            let seqlen = w.first().map_or(0, Vec::len);
            if seqlen == 0 || w.iter().any(|v| v.len() != seqlen) {
                return Err(Error::option("--seqlen", "calibration windows must all have the same, non-zero length"));
            }
        }
        Source::None => {
            if let Some(t) = mods.transforms.first() {
                return Err(needs_windows(t.name(), "it transforms blocks from their inputs"));
            }
            if mods.weights.stats_request() != StatsRequest::default() {
                return Err(needs_windows(mods.weights.name(), "it quantizes from input statistics"));
            }
            if let Some(i) = &mods.inputs {
                if i.stats_request() != StatsRequest::default() {
                    return Err(needs_windows("static activation scales", "they are calibrated"));
                }
            }
        }
        Source::Stats(_, path) => {
            let p = path.display();
            if let Some(t) = mods.transforms.iter().find(|t| t.needs_activations()) {
                return Err(Error::option(
                    "--load-stats",
                    format!("{p}: {} needs the activations, not stored statistics", t.name()),
                ));
            }
            if mods.weights.stats_request().hessian {
                return Err(Error::option(
                    "--load-stats",
                    format!("{p}: {} needs Hessians, which statistics files do not hold", mods.weights.name()),
                ));
            }
            if mods.weights.stats_request().cross {
                return Err(Error::option(
                    "--load-stats",
                    format!("{p}: gptaq needs the full-precision model's inputs, which statistics files do not hold"),
                ));
            }
        }
    }
    Ok(())
}

/// Run `mods` over every block of the model in `store` (see the module doc); the
/// output holds every block's tensors.
pub fn run(
    cfg: &LlamaConfig,
    store: &SafetensorsStore,
    source: Source,
    mods: &mut Modifiers,
    opts: &DriverOptions,
) -> Result<DriverOutput> {
    run_streaming(cfg, store, source, mods, opts, &mut |_, _, _| Ok(()))
}

/// Called when a block is done, with the block index, the output so far (the sink may
/// take the block's `tensors` and `dense` out of it, so they need not stay in memory)
/// and the modifiers (for the static input parameters of the block's linears).
/// When a block's widest solver matrices reach this size, the heap is returned to the
/// kernel after each site ([`crate::release_freed_memory`]): TinyLlama and 8B widths,
/// not SmolLM2's.
const RELEASE_AFTER_BYTES: usize = 256 << 20;

pub type BlockSink<'a> = dyn FnMut(usize, &mut DriverOutput, &Modifiers) -> Result<()> + 'a;

/// [`run`], handing each finished block to `sink` (a checkpoint writer).
pub fn run_streaming(
    cfg: &LlamaConfig,
    store: &SafetensorsStore,
    source: Source,
    mods: &mut Modifiers,
    opts: &DriverOptions,
    sink: &mut BlockSink,
) -> Result<DriverOutput> {
    check_source(&source, mods)?;
    if opts.observe_kv && !matches!(source, Source::Windows(_)) {
        return Err(Error::option(
            "--kv-cache",
            "an FP8 KV cache's scales are measured on calibration windows (not a statistics file); give --calib",
        ));
    }
    let mut t = Timings::default();
    let t0 = Instant::now();
    let fp_req = mods.transforms.iter().fold(StatsRequest::default(), |r, m| merge(r, m.stats_request()));
    let q_req = merge(
        mods.weights.stats_request(),
        mods.inputs.as_ref().map_or(StatsRequest::default(), |i| i.stats_request()),
    );
    let given = match &source {
        Source::Windows(w) => w.len(),
        _ => 0,
    };
    let (fp_windows, run_windows) = run_windows(mods, q_req, opts.observe_kv, given);
    let (mut x, seqlen, tokens) = match &source {
        Source::Windows(w) => {
            if run_windows < given && opts.progress {
                eprintln!(
                    "{}: runs the first {run_windows} of {given} windows: {} reads no more and {} needs no statistics",
                    opts.label,
                    mods.transforms.iter().map(|m| m.name()).collect::<Vec<_>>().join(", "),
                    mods.weights.name()
                );
            }
            let embed =
                MappedLinear::new(store.mapped("model.embed_tokens.weight", [cfg.vocab_size, cfg.hidden_size])?);
            let all: Vec<u32> = w[..run_windows].iter().flatten().copied().collect();
            let mut x = embed_tokens(cfg, &embed, &all)?; // [n·seqlen, hidden]
            if let Some(r) = &mods.rotation {
                r.rotate_stream(&mut x);
            }
            (x, w[0].len(), all.len())
        }
        Source::Stats(st, _) => (vec![], 1, st.tokens()),
        Source::None => (vec![], 1, 0),
    };
    let rope = cfg.rope_tables(seqlen);
    let chunk = opts.chunk_windows.max(1);
    // GPTAQ's full-precision stream: the embedded windows through the unquantized blocks.
    let mut x_fp = q_req.cross.then(|| x.clone());
    let mut out = DriverOutput {
        tensors: BTreeMap::new(),
        dense: BTreeMap::new(),
        layers: vec![],
        stats: CalibStats::default(),
        timings: Timings::default(),
        tokens,
        kv_absmax: Vec::new(),
        head_stats: None,
    };
    t.load += t0.elapsed().as_secs_f64();
    let passes = (fp_windows.div_ceil(chunk) + run_windows.div_ceil(chunk)) * BLOCK_STAGES.len();
    let mut progress = BlockProgress::new(&opts.label, cfg.num_layers, passes + block_sites().count(), opts.progress);

    for b in 0..cfg.num_layers {
        progress.start_block(b);
        let tl = Instant::now();
        let mut bw = BlockWeights::load(cfg, store, b)?;
        t.load += tl.elapsed().as_secs_f64();
        if let Some(r) = &mods.rotation {
            let tr = Instant::now();
            out.dense.extend(r.rotate_block(cfg, &mut bw));
            t.transform += tr.elapsed().as_secs_f64();
        }
        let ctx = BlockContext { cfg, block: b, rope: &rope, seqlen, chunk_windows: chunk };

        // (a) Transforms, from the full-precision block's site inputs.
        if !mods.transforms.is_empty() {
            let transforms = &mut mods.transforms;
            let mut seen = |site: InputSite, input: Option<&[f32]>, stats: &SiteStats, t: &mut Timings| -> Result<()> {
                let tt = Instant::now();
                for m in transforms.iter_mut() {
                    m.observe(&ctx, &bw, site, input, stats)?;
                }
                t.transform += tt.elapsed().as_secs_f64();
                Ok(())
            };
            match &source {
                Source::Windows(_) => {
                    let mut fp = bw.to_block(cfg);
                    let mut xr = x[..fp_windows * seqlen * cfg.hidden_size].to_vec();
                    let pass = "full precision";
                    run_stages(
                        cfg,
                        &rope,
                        &mut fp,
                        &mut xr,
                        seqlen,
                        chunk,
                        &mut t,
                        None,
                        None,
                        &mut progress,
                        pass,
                        |_, site, input, _, t, _| {
                            let width = site_width(cfg, site);
                            check_finite(b, &format!("the input of {}", site_readers(cfg, b, site)), input, width)?;
                            let ts = Instant::now();
                            let stats = observe(input, None, width, chunk * seqlen, fp_req);
                            if let Some(mm) = &stats.min_max {
                                let r = out.stats.site_mut(b, site, width);
                                r.tokens = stats.tokens;
                                r.min_max = Some((mm.min.clone(), mm.max.clone()));
                            }
                            t.statistics += ts.elapsed().as_secs_f64();
                            seen(site, Some(input), &stats, t)
                        },
                    )?;
                }
                Source::Stats(st, path) => {
                    for site in crate::model::llama::block_sites() {
                        seen(site, None, &stored(st.site(b, site, path)?), &mut t)?;
                    }
                }
                Source::None => unreachable!("check_source refuses transforms without windows"),
            }
            let tt = Instant::now();
            for m in mods.transforms.iter_mut() {
                let (dense, line) = m.apply(&ctx, &mut bw)?;
                out.dense.extend(dense);
                if let Some(line) = line.filter(|_| opts.progress) {
                    progress.println(line);
                }
            }
            t.transform += tt.elapsed().as_secs_f64();
        }

        // Linears left unquantized are written as the rotation and transforms left them.
        if mods.rotation.is_some() || !mods.transforms.is_empty() {
            for (k, (short, _)) in cfg.linears().iter().enumerate() {
                let name = format!("model.layers.{b}.{short}");
                if mods.schemes.scheme_for(&name).is_none() {
                    out.dense.insert(format!("{name}.weight"), bw.linears[k].clone());
                }
            }
        }

        // (b) Quantize site by site, each site seeing the quantized sites before it. The
        // forward runs on its own copy of the block (and GPTAQ's full-precision stream on
        // another), so each linear's source weights are freed once its site is quantized
        // (0.6 GB at 8B widths by the time down_proj is factored), and the forward's
        // copies once they have run (`free_finished_linears`).
        let mut block = matches!(source, Source::Windows(_)).then(|| bw.to_block(cfg));
        // Which linears the quantizer replaces (the others stay dense in the forward).
        let replaced_by_quantizer: Vec<bool> = (cfg.linears().iter())
            .map(|(short, _)| mods.schemes.scheme_for(&format!("model.layers.{b}.{short}")).is_some())
            .collect();
        let fp_block = x_fp.as_ref().filter(|_| block.is_some()).map(|_| bw.to_block(cfg));
        let (tensors, layers) = (&mut out.tensors, &mut out.layers);
        let widest_site = block_sites().map(|s| site_width(cfg, s)).max().unwrap_or(0);
        let mut quantize = |site: InputSite,
                            stats: &SiteStats,
                            t: &mut Timings,
                            progress: &mut BlockProgress|
         -> Result<Vec<(usize, Vec<f32>)>> {
            let tq = Instant::now();
            let idx = site_linears(cfg, site);
            let names: Vec<String> = idx.iter().map(|&k| format!("model.layers.{b}.{}", cfg.linears()[k].0)).collect();
            if let Some(i) = &mut mods.inputs {
                i.observe_site(&ctx, site, &names, stats)?;
            }
            // Ignored linears stay dense; the others go to the quantizer in their scheme.
            let (mut linears, mut kept) = (Vec::new(), Vec::new());
            for (&k, name) in idx.iter().zip(&names) {
                if let Some(scheme) = mods.schemes.scheme_for(name) {
                    let (o, i) = linear_shape(cfg, cfg.linears()[k].0);
                    linears.push(LinearWeight {
                        name: name.clone(),
                        scheme,
                        weight: &bw.linears[k],
                        out_features: o,
                        in_features: i,
                    });
                    kept.push(k);
                }
            }
            let mut replaced = Vec::new();
            if !linears.is_empty() {
                let quantized = mods.weights.quantize_site(&linears, stats)?;
                assert_eq!(quantized.len(), linears.len(), "a quantizer returns one tensor per linear");
                for ((k, l), (q, mut report)) in kept.into_iter().zip(&linears).zip(quantized) {
                    let deq = q.dequantize();
                    report.measure(l, &q, &deq, stats)?;
                    if opts.verbose {
                        let damp = report.damp.map_or(String::new(), |d| format!(", damp {d}"));
                        progress.println(format!(
                            "{:<40} {:.3} bits/w, {} error {:.5} (RTN {:.5}, x{:.3}){damp}, {:.2}s",
                            l.name,
                            report.bits_per_weight,
                            report.error_metric,
                            report.error,
                            report.rtn_error,
                            report.error / report.rtn_error.max(f64::MIN_POSITIVE),
                            report.seconds
                        ));
                    }
                    replaced.push((k, deq));
                    tensors.insert(l.name.clone(), q);
                    layers.push(report);
                }
            }
            for &(k, _) in &replaced {
                bw.linears[k] = Vec::new();
            }
            // Wide models' solver matrices (12 bytes per Hessian entry) leave holes in the
            // heap: give them back after every site, so that none is resident when the
            // widest one is factored. Narrow models skip it (the next stage's buffers would
            // be faulted in again: +12% forward time on SmolLM2).
            if widest_site * widest_site * 12 >= RELEASE_AFTER_BYTES {
                crate::release_freed_memory();
            }
            let names: Vec<&str> = names.iter().map(|n| n.rsplit('.').next().unwrap_or(n)).collect();
            progress.event(&format!("quantized {}", names.join("/")));
            t.quantize += tq.elapsed().as_secs_f64();
            Ok(replaced)
        };
        let mut histograms = Vec::new();
        match &source {
            Source::Windows(_) => {
                let block = block.as_mut().expect("built for windows");
                let mut kv = [0f32; 2];
                let observe_kv = opts.observe_kv.then_some(&mut kv);
                // GPTAQ: the (transformed, unquantized) block on the full-precision stream.
                let shadow = fp_block.as_ref().zip(x_fp.as_deref_mut()).map(|(block, x)| Shadow { block, x });
                run_stages(
                    cfg,
                    &rope,
                    block,
                    &mut x,
                    seqlen,
                    chunk,
                    &mut t,
                    observe_kv,
                    shadow,
                    &mut progress,
                    "quantized",
                    |block, site, input, input_fp, t, progress| {
                        let width = site_width(cfg, site);
                        check_finite(b, &format!("the input of {}", site_readers(cfg, b, site)), input, width)?;
                        let ts = Instant::now();
                        let stats = observe(input, input_fp, width, chunk * seqlen, q_req);
                        if let Some(h) = &stats.histogram {
                            histograms.push((site, width, stats.tokens, h.clone()));
                        }
                        t.statistics += ts.elapsed().as_secs_f64();
                        free_finished_linears(cfg, block, site, &replaced_by_quantizer);
                        for (k, w) in quantize(site, &stats, t, progress)? {
                            let (o, i) = linear_shape(cfg, cfg.linears()[k].0);
                            block.linears[k] = Box::new(DenseLinear::new(w, o, i)) as Box<dyn Linear>;
                        }
                        Ok(())
                    },
                )?;
                check_finite(b, "the block output", &x, cfg.hidden_size)?;
                if opts.observe_kv {
                    out.kv_absmax.push(kv);
                }
            }
            Source::Stats(st, path) => {
                for site in crate::model::llama::block_sites() {
                    quantize(site, &stored(st.site(b, site, path)?), &mut t, &mut progress)?;
                }
            }
            Source::None => {
                for site in crate::model::llama::block_sites() {
                    let stats = SiteStats::new(site_width(cfg, site), StatsRequest::default());
                    quantize(site, &stats, &mut t, &mut progress)?;
                }
            }
        }
        for (site, width, tokens, h) in histograms {
            let r = out.stats.site_mut(b, site, width);
            r.tokens = tokens;
            r.histogram = Some(h);
        }
        sink(b, &mut out, mods)?;
        progress.end_block();
    }
    if opts.observe_head && matches!(source, Source::Windows(_)) {
        let ts = Instant::now();
        // A rotated model's final norm weight is folded into its head: the head reads
        // the unweighted norm.
        let h = cfg.hidden_size;
        let weight =
            if mods.rotation.is_some() { vec![1.0; h] } else { load_norm(cfg, store, "model.norm.weight", h)? };
        let final_norm = |x: &[f32]| {
            let mut out = vec![0.0f32; x.len()];
            rms_norm(x, &weight, cfg.rms_norm_eps, &mut out); // row by row, [tokens, h]
            out
        };
        let input = final_norm(&x);
        let input_fp = x_fp.as_deref().map(final_norm);
        out.head_stats = Some(observe(&input, input_fp.as_deref(), h, chunk * seqlen, q_req));
        t.statistics += ts.elapsed().as_secs_f64();
    }
    progress.finish();
    out.timings = t;
    Ok(out)
}

/// Drop the forward's copies of the linears `block` no longer runs when `site`'s input
/// is complete: stages run one after another over all windows, so every linear of an
/// earlier site has done its forward, and this site's linears that the quantizer
/// replaces are about to be (`replaced[k]`). At 8B widths this frees 0.9 GB before
/// down_proj's factorization.
fn free_finished_linears(cfg: &LlamaConfig, block: &mut Block, site: InputSite, replaced: &[bool]) {
    let order = |s: InputSite| block_sites().position(|x| x == s);
    for (k, (_, reads)) in cfg.linears().iter().enumerate() {
        if order(*reads) < order(site) || (*reads == site && replaced[k]) {
            block.linears[k] = Box::new(DenseLinear::new(Vec::new(), 0, 0));
        }
    }
}

/// Refuse, before any work, an extra linear the weight quantizer cannot quantize
/// (it needs calibration statistics, and the run has no windows to observe the head on).
pub fn check_extra(mods: &Modifiers) -> Result<()> {
    if mods.weights.stats_request() != StatsRequest::default() {
        return Err(Error::option(
            "--include-head",
            format!("{} quantizes from calibration statistics; the head has none here", mods.weights.name()),
        ));
    }
    Ok(())
}

/// Quantize one more linear outside the blocks (the LM head, `weight [o, i]`): from its
/// input's statistics when the driver observed them ([`DriverOutput::head_stats`]), else
/// with a calibration-free quantizer.
pub fn quantize_extra(
    mods: &mut Modifiers,
    name: &str,
    weight: &[f32],
    shape: (usize, usize),
    out: &mut DriverOutput,
) -> Result<()> {
    let (o, i) = shape;
    let stats = match out.head_stats.take() {
        Some(s) => s,
        None => {
            check_extra(mods)?;
            SiteStats::new(i, StatsRequest::default())
        }
    };
    let Some(scheme) = mods.schemes.scheme_for(name) else { return Ok(()) };
    let l = LinearWeight { name: name.to_string(), scheme, weight, out_features: o, in_features: i };
    let (q, mut report) = mods.weights.quantize_site(std::slice::from_ref(&l), &stats)?.remove(0);
    report.measure(&l, &q, &q.dequantize(), &stats)?;
    out.tensors.insert(name.to_string(), q);
    out.layers.push(report);
    Ok(())
}
