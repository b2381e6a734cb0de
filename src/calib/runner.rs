//! The calibration runner: captures block 0's inputs for every calibration window once,
//! then for each block gathers the statistics of each linear site, lets a quantizer
//! replace that site's linears, and passes the block's outputs on to the next block.
//!
//! Sequential mode (GPTQ's `--true-sequential`): within a block the sites are visited in
//! the model's declared order (q/k/v, o, gate/up, down) and each site's statistics are
//! taken with the already quantized linears before it; the block's outputs then come
//! from the fully quantized block. The block is computed stage by stage
//! ([`Block::attn_input`] .. [`Block::mlp_output`]), so this costs one block forward.
//! Only one block's weights are materialized at a time; the rest stay memory-mapped.
//! Every window is its own sequence: nothing (no cache, no state) crosses windows.

use super::observers::{SiteStats, StatsRequest};
use crate::error::{Error, Result};
use crate::format::QuantizedTensor;
use crate::io::safetensors::SafetensorsStore;
use crate::model::layers::Rope;
use crate::model::linear::{DenseLinear, Linear};
use crate::model::llama::{dense_from_store, embed_tokens, linear_shape, Block, InputSite, BLOCK_LINEARS};
use crate::model::LlamaConfig;
use std::collections::BTreeMap;
use std::time::Instant;

/// One linear handed to a quantizer: its full name and f32 weight `[out, in]`.
pub struct LinearWeight {
    /// e.g. `model.layers.3.self_attn.q_proj`
    pub name: String,
    pub weight: Vec<f32>,
    pub out_features: usize,
    pub in_features: usize,
}

/// A quantizer driven by the runner.
pub trait SiteQuantizer {
    fn stats_request(&self) -> StatsRequest;
    /// Quantize the linears reading `site` of block `block` (in declared order), given
    /// the site's statistics. Returns one tensor per linear, in the same order.
    fn quantize_site(
        &mut self,
        block: usize,
        site: InputSite,
        linears: &[LinearWeight],
        stats: &SiteStats,
    ) -> Result<Vec<QuantizedTensor>>;
}

#[derive(Clone, Copy, Debug)]
pub struct RunnerOptions {
    /// Windows per forward chunk (bounds the temporaries of attention and the MLP).
    pub chunk_windows: usize,
    pub progress: bool,
}

/// Where the time went, in seconds.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RunnerTimings {
    pub forward: f64,
    pub statistics: f64,
    pub quantize: f64,
    pub load: f64,
}

pub struct RunnerOutput {
    /// Quantized tensors by module name (`model.layers.N.self_attn.q_proj`).
    pub tensors: BTreeMap<String, QuantizedTensor>,
    pub timings: RunnerTimings,
    pub tokens: usize,
}

fn site_name(site: InputSite) -> &'static str {
    match site {
        InputSite::AttnIn => "q/k/v input",
        InputSite::AttnOut => "o_proj input",
        InputSite::MlpIn => "gate/up input",
        InputSite::MlpAct => "down_proj input",
    }
}

fn check_finite(block: usize, what: &str, x: &[f32]) -> Result<()> {
    if let Some(i) = crate::model::layers::first_non_finite(x) {
        return Err(Error::other_msg(format!(
            "calibration: block {block}, {what}: non-finite activation {} at element {i}; nothing was written",
            x[i]
        )));
    }
    Ok(())
}

/// Apply `f` to consecutive chunks of `chunk` windows: `f(input_chunk, windows) -> output_chunk`,
/// concatenating the outputs.
fn chunked(
    input: &[f32],
    in_width: usize,
    seqlen: usize,
    chunk: usize,
    mut f: impl FnMut(usize, &[f32], usize) -> Vec<f32>,
) -> Vec<f32> {
    let rows = chunk * seqlen;
    let mut out = Vec::new();
    for (c, part) in input.chunks(rows * in_width).enumerate() {
        out.extend_from_slice(&f(c * rows, part, part.len() / (seqlen * in_width)));
    }
    out
}

struct BlockRun<'a> {
    cfg: &'a LlamaConfig,
    store: &'a SafetensorsStore,
    quantizer: &'a mut dyn SiteQuantizer,
    req: StatsRequest,
    chunk_rows: usize,
    tensors: BTreeMap<String, QuantizedTensor>,
    timings: RunnerTimings,
}

impl BlockRun<'_> {
    /// Observe a site's input, quantize its linears, and put the quantized weights
    /// (dequantized to f32, exactly) into the block for the stages after it.
    fn site(&mut self, b: usize, site: InputSite, input: &[f32], block: &mut Block) -> Result<()> {
        let ts = Instant::now();
        check_finite(b, site_name(site), input)?;
        let idx: Vec<usize> = (0..BLOCK_LINEARS.len()).filter(|&i| BLOCK_LINEARS[i].1 == site).collect();
        let width = linear_shape(self.cfg, BLOCK_LINEARS[idx[0]].0).1;
        let mut stats = SiteStats::new(width, self.req);
        if self.req != StatsRequest::default() {
            for part in input.chunks(self.chunk_rows * width) {
                stats.observe(part, part.len() / width);
            }
        } else {
            stats.tokens = input.len() / width;
        }
        self.timings.statistics += ts.elapsed().as_secs_f64();
        let tq = Instant::now();
        let linears = idx
            .iter()
            .map(|&i| {
                let short = BLOCK_LINEARS[i].0;
                let (o, inp) = linear_shape(self.cfg, short);
                let name = format!("model.layers.{b}.{short}");
                let weight = self.store.f32_shaped(&format!("{name}.weight"), &[o, inp])?;
                Ok(LinearWeight { name, weight, out_features: o, in_features: inp })
            })
            .collect::<Result<Vec<_>>>()?;
        let quantized = self.quantizer.quantize_site(b, site, &linears, &stats)?;
        assert_eq!(quantized.len(), linears.len(), "quantizer returned a tensor per linear");
        for ((&i, lw), qt) in idx.iter().zip(&linears).zip(quantized) {
            block.linears[i] =
                Box::new(DenseLinear::new(qt.dequantize(), lw.out_features, lw.in_features)) as Box<dyn Linear>;
            self.tensors.insert(lw.name.clone(), qt);
        }
        self.timings.quantize += tq.elapsed().as_secs_f64();
        Ok(())
    }
}

/// Run `quantizer` over every block of the model in `store` on `windows` (each
/// `seqlen` tokens), in sequential mode.
pub fn run_sequential(
    cfg: &LlamaConfig,
    store: &SafetensorsStore,
    windows: &[Vec<u32>],
    quantizer: &mut dyn SiteQuantizer,
    opts: RunnerOptions,
) -> Result<RunnerOutput> {
    let seqlen = windows.first().map_or(0, Vec::len);
    if windows.iter().any(|w| w.len() != seqlen) || seqlen == 0 {
        return Err(Error::option("--seqlen", "calibration windows must all have the same, non-zero length"));
    }
    let n = windows.len();
    let (h, qd, id) = (cfg.hidden_size, cfg.q_dim(), cfg.intermediate_size);
    let t0 = Instant::now();
    let embed = store.f32_shaped("model.embed_tokens.weight", &[cfg.vocab_size, h])?;
    let all: Vec<u32> = windows.iter().flatten().copied().collect();
    let mut x = embed_tokens(&embed, h, &all)?; // [n·seqlen, hidden]
    drop(embed);
    let rope = Rope::new(cfg.head_dim, seqlen, cfg.rope_theta);
    let chunk = opts.chunk_windows.max(1);
    let req = quantizer.stats_request();
    let mut run = BlockRun {
        cfg,
        store,
        quantizer,
        req,
        chunk_rows: chunk * seqlen,
        tensors: BTreeMap::new(),
        timings: RunnerTimings::default(),
    };
    run.timings.load += t0.elapsed().as_secs_f64();
    let pb = if opts.progress {
        indicatif::ProgressBar::new(cfg.num_layers as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    pb.set_style(
        indicatif::ProgressStyle::with_template("block {pos}/{len} [{bar:30}] {elapsed_precise} eta {eta} {msg}")
            .unwrap()
            .progress_chars("=> "),
    );

    for b in 0..cfg.num_layers {
        let tl = Instant::now();
        let mut block = Block::load(cfg, store, b, &|name, o, i| dense_from_store(store, name, o, i))?;
        run.timings.load += tl.elapsed().as_secs_f64();

        let tf = Instant::now();
        let h1 = block.attn_input(cfg, &x);
        run.timings.forward += tf.elapsed().as_secs_f64();
        run.site(b, InputSite::AttnIn, &h1, &mut block)?;

        let tf = Instant::now();
        let attn = chunked(&h1, h, seqlen, chunk, |_, part, w| block.attention(cfg, &rope, part, w, seqlen));
        drop(h1);
        run.timings.forward += tf.elapsed().as_secs_f64();
        run.site(b, InputSite::AttnOut, &attn, &mut block)?;

        let tf = Instant::now();
        let h2 = chunked(&attn, qd, seqlen, chunk, |row0, part, w| {
            block.mlp_input(cfg, &mut x[row0 * h..(row0 + w * seqlen) * h], part)
        });
        drop(attn);
        run.timings.forward += tf.elapsed().as_secs_f64();
        run.site(b, InputSite::MlpIn, &h2, &mut block)?;

        let tf = Instant::now();
        let act = chunked(&h2, h, seqlen, chunk, |_, part, _| block.mlp_act(cfg, part));
        drop(h2);
        run.timings.forward += tf.elapsed().as_secs_f64();
        run.site(b, InputSite::MlpAct, &act, &mut block)?;

        let tf = Instant::now();
        x.chunks_mut(chunk * seqlen * h)
            .zip(act.chunks(chunk * seqlen * id))
            .for_each(|(xc, ac)| block.mlp_output(cfg, xc, ac));
        drop(act);
        check_finite(b, "block output", &x)?;
        run.timings.forward += tf.elapsed().as_secs_f64();
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok(RunnerOutput { tensors: run.tensors, timings: run.timings, tokens: n * seqlen })
}
