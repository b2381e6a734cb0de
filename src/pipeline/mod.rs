//! The quantization pipeline: one block driver ([`driver`]), methods as modifiers
//! ([`modifiers`]), and recipes that list them ([`recipe`]).
//!
//! A run is a list of modifiers in three roles, applied block by block:
//!
//! - a rotation ([`crate::quant::rotation`], QuaRot) folded into each block as it is
//!   loaded, so everything after sees a rotated model;
//! - [`BlockTransform`] (AWQ, SmoothQuant): sees the inputs of every
//!   site of the *full-precision* block, then changes the block's f32 weights so that it
//!   computes the same function in a form that quantizes better;
//! - [`WeightQuantizer`] (RTN, FP8, HQQ, GPTQ): quantizes the linears of each site from
//!   statistics of the inputs as they are after the earlier sites were quantized;
//! - [`InputQuantizer`] (W8A8 activation scales): observes the same inputs and fixes the
//!   activation quantization of the site's linears.
//!
//! The driver asks each modifier which statistics it needs ([`StatsRequest`]) and computes
//! them once per site. Adding a method means one file in [`modifiers`] implementing one of
//! these traits and one line in [`recipe::ModifierSpec`].

pub mod budget;
pub mod driver;
pub mod gguf_export;
pub mod modifiers;
pub mod progress;
pub mod recipe;
pub mod run;
pub mod summary;

use crate::calib::observers::{SiteStats, StatsRequest};
use crate::error::Result;
use crate::format::activation::ActParams;
use crate::format::compressed_tensors::Target;
use crate::format::{QuantScheme, QuantizedTensor};
use crate::model::layers::Rope;
use crate::model::llama::InputSite;
use crate::model::LlamaConfig;
use crate::quant::awq::weights::BlockWeights;
use crate::quant::refit::RefitStats;
use serde::Serialize;
use std::collections::BTreeMap;

/// What a modifier sees of the block being processed.
pub struct BlockContext<'a> {
    pub cfg: &'a LlamaConfig,
    /// Block index.
    pub block: usize,
    /// RoPE tables for the calibration windows (transforms that rerun the block need them).
    pub rope: &'a Rope,
    /// Tokens per calibration window.
    pub seqlen: usize,
    /// Windows per forward chunk.
    pub chunk_windows: usize,
}

/// One linear handed to a quantizer: its full name and f32 weight `[out, in]`.
pub struct LinearWeight<'a> {
    /// e.g. `model.layers.3.self_attn.q_proj`
    pub name: String,
    /// The scheme to quantize it into (the recipe's, or a per-module override's).
    pub scheme: QuantScheme,
    pub weight: &'a [f32],
    pub out_features: usize,
    pub in_features: usize,
}

/// Per-linear line of the report.
#[derive(Clone, Debug, Serialize)]
pub struct LayerReport {
    pub name: String,
    pub shape: [usize; 2],
    /// GPTQ's loss `Σ (w-q)²/Hinv_ii² / 2`; for RTN-like quantizers, the plain `Σ (w-q)²`.
    pub loss: f64,
    pub damp: Option<f32>,
    pub damp_retries: u32,
    /// GPTQ's scale refit: the layer's calibration error before and after.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refit: Option<RefitStats>,
    pub seconds: f64,
    /// Stored bits per weight (codes, scales, zero points, g_idx).
    pub bits_per_weight: f64,
    /// The quantized linear's relative error `Σ‖Δw‖²_H / Σ‖w‖²_H` on sampled rows
    /// ([`LayerReport::measure`]), and RTN's of the same weights in the same scheme.
    pub error: f64,
    pub rtn_error: f64,
    /// `output`: weighted by the site's Hessian (the error of the outputs on the
    /// calibration inputs); `weight`: plain squared weights (no Hessian was taken).
    pub error_metric: &'static str,
}

/// Rows on which [`LayerReport::measure`] weighs the output error (evenly spaced):
/// enough for a stable ratio, cheap at any width (`rows · cols²/2` per measure).
const ERROR_ROWS: usize = 64;

impl LayerReport {
    /// A report of `loss` and `seconds`; the driver fills the size and errors ([`Self::measure`]).
    pub fn new(l: &LinearWeight, loss: f64, seconds: f64) -> Self {
        Self {
            name: l.name.clone(),
            shape: [l.out_features, l.in_features],
            loss,
            damp: None,
            damp_retries: 0,
            refit: None,
            seconds,
            bits_per_weight: 0.0,
            error: 0.0,
            rtn_error: 0.0,
            error_metric: "weight",
        }
    }

    /// The report of a quantizer without its own loss: `Σ (w - ŵ)²`.
    pub fn plain(l: &LinearWeight, q: &QuantizedTensor, seconds: f64) -> Self {
        let loss = q.dequantize().iter().zip(l.weight).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
        Self::new(l, loss, seconds)
    }

    /// Fill the size and the errors of `q` (dequantized `deq`) against RTN's of the same
    /// weights in the same scheme: output errors through the site's Hessian when the run
    /// took one, else plain weight errors, on up to [`ERROR_ROWS`] evenly spaced rows.
    pub fn measure(&mut self, l: &LinearWeight, q: &QuantizedTensor, deq: &[f32], stats: &SiteStats) -> Result<()> {
        let (o, i) = (l.out_features, l.in_features);
        self.bits_per_weight = q.storage_bits() as f64 / (o * i).max(1) as f64;
        let rtn = crate::quant::rtn::quantize_rtn(&l.name, l.weight, o, i, l.scheme, None)?.dequantize();
        let n = ERROR_ROWS.min(o);
        let rows: Vec<usize> = (0..n).map(|k| k * o / n).collect();
        // `[n, i]`: the sampled rows of `w - approx` (of `w` itself when there is none).
        let diff = |approx: Option<&[f32]>| -> Vec<f32> {
            rows.iter()
                .flat_map(|&r| (r * i..(r + 1) * i).map(move |c| l.weight[c] - approx.map_or(0.0, |a| a[c])))
                .collect()
        };
        let all: Vec<usize> = (0..n).collect();
        let sum = |d: &[f32]| -> f64 {
            match &stats.hessian {
                Some(h) => h.output_error_sum(d, &all),
                None => d.iter().map(|&v| (v as f64).powi(2)).sum(),
            }
        };
        let reference = sum(&diff(None)).max(f64::MIN_POSITIVE);
        self.error = sum(&diff(Some(deq))) / reference;
        self.rtn_error = sum(&diff(Some(&rtn))) / reference;
        self.error_metric = if stats.hessian.is_some() { "output" } else { "weight" };
        Ok(())
    }
}

/// Quantize each linear on its own with `f` (the calibration-free quantizers), reporting
/// the plain squared error and the time of each.
pub fn quantize_each(
    linears: &[LinearWeight],
    f: impl Fn(&LinearWeight) -> Result<QuantizedTensor>,
) -> Result<Vec<(QuantizedTensor, LayerReport)>> {
    linears
        .iter()
        .map(|l| {
            let t = std::time::Instant::now();
            let q = f(l)?;
            let report = LayerReport::plain(l, &q, t.elapsed().as_secs_f64());
            Ok((q, report))
        })
        .collect()
}

/// Phase (a): changes the full-precision block from statistics of its inputs.
pub trait BlockTransform {
    fn name(&self) -> &'static str;
    /// Statistics wanted at each site of the full-precision block.
    fn stats_request(&self) -> StatsRequest;
    /// Whether it needs the site inputs themselves (not only statistics): such a
    /// transform cannot run from a statistics file.
    fn needs_activations(&self) -> bool;
    /// The calibration windows it reads: the first N, or all (`None`). The full-precision
    /// pass runs only the windows some transform reads (windows never share state, so the
    /// first N come out the same whatever runs beside them).
    fn windows(&self) -> Option<usize> {
        None
    }
    /// The input of `site` on the full-precision (untransformed) block: `x` is
    /// `[tokens, width]` when calibration windows run (None from a statistics file).
    fn observe(
        &mut self,
        ctx: &BlockContext,
        bw: &BlockWeights,
        site: InputSite,
        x: Option<&[f32]>,
        stats: &SiteStats,
    ) -> Result<()>;
    /// Change the block once every site was observed. Returns the dense tensors (norm
    /// weights, biases) that changed, by name, and a one-line summary for the log.
    fn apply(&mut self, ctx: &BlockContext, bw: &mut BlockWeights)
        -> Result<(Vec<(String, Vec<f32>)>, Option<String>)>;
    /// Entries of the run's JSON report.
    fn report(&self) -> serde_json::Map<String, serde_json::Value>;
}

/// Phase (b): quantizes the linears reading one input.
pub trait WeightQuantizer {
    fn name(&self) -> &'static str;
    /// Statistics wanted of each site's input (none: calibration-free).
    fn stats_request(&self) -> StatsRequest {
        StatsRequest::default()
    }
    /// Quantize `linears` (in declared order; they share the input `stats` describes).
    fn quantize_site(
        &mut self,
        linears: &[LinearWeight],
        stats: &SiteStats,
    ) -> Result<Vec<(QuantizedTensor, LayerReport)>>;
}

/// Phase (b), beside the weights: fixes the activation quantization of each site.
pub trait InputQuantizer {
    fn stats_request(&self) -> StatsRequest;
    /// Observe site `site` of block `ctx.block` (its linears named `linears`).
    fn observe_site(
        &mut self,
        ctx: &BlockContext,
        site: InputSite,
        linears: &[String],
        stats: &SiteStats,
    ) -> Result<()>;
    /// Static input parameters by module name (empty when dynamic).
    fn params(&self) -> &BTreeMap<String, ActParams>;
}

/// Which scheme each linear is quantized into: the recipe's, an override's (first
/// matching override wins), or none (ignored: left at full precision). Patterns are
/// compressed-tensors targets: exact module names or `re:` regular expressions.
#[derive(Clone, Debug)]
pub struct SchemePolicy {
    pub default: QuantScheme,
    pub ignore: Vec<Target>,
    pub overrides: Vec<(Vec<Target>, QuantScheme)>,
}

impl SchemePolicy {
    /// Every linear in `scheme`.
    pub fn uniform(scheme: QuantScheme) -> Self {
        Self { default: scheme, ignore: vec![], overrides: vec![] }
    }

    /// The scheme of module `name` (`model.layers.3.mlp.down_proj`), None when ignored.
    pub fn scheme_for(&self, name: &str) -> Option<QuantScheme> {
        if self.ignore.iter().any(|t| t.matches(name)) {
            return None;
        }
        let over = self.overrides.iter().find(|(targets, _)| targets.iter().any(|t| t.matches(name)));
        Some(over.map_or(self.default, |(_, s)| *s))
    }

    pub fn is_uniform(&self) -> bool {
        self.ignore.is_empty() && self.overrides.is_empty()
    }

    /// Whether some linear's group does not divide its width (`linears`: name, columns).
    pub fn any_ragged(&self, linears: &[(String, usize)]) -> bool {
        linears.iter().any(|(name, cols)| {
            matches!(self.scheme_for(name).map(|s| s.granularity),
                Some(crate::format::Granularity::Group(g)) if !cols.is_multiple_of(g))
        })
    }

    /// Give every linear whose group does not divide its width (`linears`: name, input
    /// columns) the group `fallback` picks, as overrides placed first (they are made from
    /// each linear's effective scheme). Returns one line per changed (width, group) for the
    /// user, as llama-quantize prints its k-quant fallbacks. `Refuse` and `Partial` change
    /// nothing (the format check refuses or keeps the ragged group).
    /// `one_group`: the format holds one group size (awq; gptq as transformers reads it),
    /// so when any width is ragged the fallback is chosen for all widths at once (their
    /// greatest common divisor) and given to every grouped linear.
    pub fn apply_group_fallback(
        &mut self,
        linears: &[(String, usize)],
        fallback: GroupFallback,
        one_group: Option<&str>,
    ) -> Result<Vec<String>> {
        use crate::format::Granularity;
        let mut changed: Vec<(QuantScheme, Vec<String>)> = vec![];
        let mut notes: BTreeMap<(usize, usize, String), usize> = BTreeMap::new();
        let common = linears.iter().fold(0, |a, (_, c)| gcd(a, *c));
        let shared: Vec<(String, usize)>;
        let linears = match one_group {
            Some(_) if self.any_ragged(linears) => {
                shared = linears.iter().map(|(n, _)| (n.clone(), common)).collect();
                &shared[..]
            }
            _ => linears,
        };
        for (name, cols) in linears {
            let Some(scheme) = self.scheme_for(name) else { continue };
            let Granularity::Group(g) = scheme.granularity else { continue };
            if cols.is_multiple_of(g) || g > *cols {
                continue;
            }
            let new = match fallback {
                GroupFallback::Refuse | GroupFallback::Partial => continue,
                GroupFallback::PerChannel => scheme.per_channel(),
                GroupFallback::Size(n) if cols.is_multiple_of(n) => scheme.group(n)?,
                GroupFallback::Size(n) => {
                    let what = match one_group {
                        Some(f) => {
                            format!("every linear's width ({f} holds one group size; their common divisor is {cols})")
                        }
                        None => format!("the {cols} input columns of {name} either"),
                    };
                    return Err(crate::error::Error::option(
                        "--group-fallback",
                        format!(
                            "{n} does not divide {what} (group sizes that fit: {:?}; recipe key group_fallback)",
                            crate::format::rules::groups_that_fit(*cols)
                        ),
                    ));
                }
                GroupFallback::Auto => {
                    match crate::format::rules::groups_that_fit(*cols).into_iter().find(|&f| f < g) {
                        Some(f) => scheme.group(f)?,
                        None => scheme.per_channel(),
                    }
                }
            };
            *notes.entry((*cols, g, format!("{new}"))).or_default() += 1;
            match changed.iter_mut().find(|(s, _)| *s == new) {
                Some((_, names)) => names.push(name.clone()),
                None => changed.push((new, vec![name.clone()])),
            }
        }
        let mut overrides = Vec::with_capacity(changed.len() + self.overrides.len());
        for (scheme, names) in changed {
            let targets = names.into_iter().map(|n| Target::new(n).expect("a plain name is a valid target")).collect();
            overrides.push((targets, scheme));
        }
        overrides.append(&mut self.overrides);
        self.overrides = overrides;
        Ok(notes
            .into_iter()
            .map(|((cols, g, new), n)| match one_group {
                Some(f) => format!(
                    "{f} holds one group size and {g} does not divide every linear's width: all {n} linears quantized as {new} (group fallback)"
                ),
                None => format!(
                    "group size {g} does not divide {cols} input columns: {n} linears quantized as {new} instead (group fallback)"
                ),
            })
            .collect())
    }
}

/// What a linear gets when its scheme's group size does not divide its input width
/// (recipe key `group_fallback`, `--group-fallback`); the formats' loaders take whole
/// groups only ([`crate::format::rules`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupFallback {
    /// Refuse before any work (a recipe without the key).
    Refuse,
    /// The largest of 256, 128, 64, 32 below the group that divides the width, else one
    /// scale per output channel (the CLI's default).
    Auto,
    /// This group size (it must divide every such width).
    Size(usize),
    /// One scale per output channel.
    PerChannel,
    /// Keep the ragged last group: only this tool reads such checkpoints.
    Partial,
}

impl GroupFallback {
    /// `auto`, `per-channel`, `partial` or a group size.
    pub fn parse(text: &str) -> Result<Self> {
        match text {
            "auto" => Ok(Self::Auto),
            "per-channel" => Ok(Self::PerChannel),
            "partial" => Ok(Self::Partial),
            n => match n.parse::<usize>() {
                Ok(g) if g > 0 => Ok(Self::Size(g)),
                _ => Err(crate::error::Error::option(
                    "--group-fallback",
                    format!("{text:?} is not auto, per-channel, partial or a positive group size (recipe key group_fallback)"),
                )),
            },
        }
    }
}

/// The modifiers of one run, by role, in the order they act.
pub struct Modifiers {
    pub schemes: SchemePolicy,
    /// A rotation of the residual stream folded into every block before the transforms
    /// (and into the embedding and head by [`run`]).
    pub rotation: Option<crate::quant::rotation::ModelRotation>,
    pub transforms: Vec<Box<dyn BlockTransform>>,
    pub weights: Box<dyn WeightQuantizer>,
    pub inputs: Option<Box<dyn InputQuantizer>>,
}

/// Union of two statistics requests.
pub fn merge(a: StatsRequest, b: StatsRequest) -> StatsRequest {
    StatsRequest {
        hessian: a.hessian || b.hessian,
        abs_mean: a.abs_mean || b.abs_mean,
        min_max: a.min_max || b.min_max,
        histogram: a.histogram || b.histogram,
        cross: a.cross || b.cross,
    }
}

/// Greatest common divisor (`gcd(0, n) = n`).
fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}
