//! `quantize [OPTIONS] MODEL`: quantize a model's block linears and write a checkpoint.
//!
//! The flags are shorthand for a one-line recipe ([`crate::pipeline::recipe`]): they are
//! turned into a [`Recipe`] here, and a flag the chosen method would not use is an error
//! naming the flag and the method. `--recipe FILE` takes the run from a file instead.

use crate::error::Error;
use crate::pipeline::recipe::{BudgetSpec, CalibrationSpec, GroupFallbackSpec, ModifierSpec, Recipe, SchemeSpec};
use crate::pipeline::run::{run_recipe, RunOptions};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Method {
    /// Round-to-nearest, no calibration. SmolLM2, int4 g128 asym (g64 fallback): +25.1% perplexity,
    /// 4.27 bits/weight, 2 s; int8 per-channel (--sym): +0.45%, 8.02 bits/weight.
    Rtn,
    /// FP8 weights, round-to-nearest-even, no calibration. SmolLM2, E4M3 per-channel:
    /// +2.49% perplexity, 8.05 bits/weight, 2 s.
    Fp8,
    /// HQQ: zero points and scales refined by a proximal solver, no calibration. SmolLM2,
    /// int4 g128 (g64 fallback): +34.0% perplexity (RTN +25.1%), 4.27 bits/weight, 7 s.
    Hqq,
    /// GPTQ: Hessian-based column updates from calibration data (default: asym, act-order,
    /// static groups, MSE ranges). SmolLM2, int4 g128 (g64 fallback): +15.0% perplexity, 4.27 bits/weight,
    /// about 5 minutes at 128x512 windows; int3 g128 +67%; FP8 E4M3 +0.43%.
    Gptq,
    /// AWQ: activation-aware channel scales folded into the norms/linears, then RTN.
    /// SmolLM2, int4 g128 asym (g64 fallback): +14.6% perplexity, 4.27 bits/weight, about 21 minutes.
    Awq,
    /// AWQ scales, then GPTQ on the scaled weights: the most accurate int4 here. SmolLM2,
    /// int4 g128 (g64 fallback): +8.34% perplexity, 4.27 bits/weight, about 32 minutes; int3 g128
    /// +53% (ragged groups, 3.16 bits/weight).
    #[value(name = "awq+gptq")]
    AwqGptq,
}

/// A size as transformers' `max_shard_size` takes it: bytes, or a number with KB, MB, GB
/// (powers of 1000) or KiB, MiB, GiB (powers of 1024).
fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: f64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1.0,
        "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "KIB" => 1024.0,
        "MIB" => 1024.0 * 1024.0,
        "GIB" => 1024.0 * 1024.0 * 1024.0,
        u => return Err(format!("unknown unit {u:?} in {s:?} (use e.g. 5GB, 500MB, 2GiB or bytes)")),
    };
    let n: f64 = num.parse().map_err(|_| format!("{s:?} is not a size (use e.g. 5GB, 500MB, 2GiB or bytes)"))?;
    let bytes = (n * mult).round();
    if !(bytes >= 1.0 && bytes < usize::MAX as f64) {
        return Err(format!("{s:?} is not a positive size"));
    }
    Ok(bytes as usize)
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Rtn => "rtn",
            Method::Fp8 => "fp8",
            Method::Hqq => "hqq",
            Method::Gptq => "gptq",
            Method::Awq => "awq",
            Method::AwqGptq => "awq+gptq",
        }
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct QuantizeArgs {
    /// Model: a directory, or a `.safetensors` file with config.json and tokenizer.json beside it.
    pub model: Option<PathBuf>,
    /// Output directory (must not exist); default: beside the model, named after the method and scheme.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Run the recipe in this TOML file (recipes/ has the measured best ones); every
    /// output directory holds the resolved recipe of its run, which repeats it byte for byte.
    #[arg(long)]
    pub recipe: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Method::Rtn)]
    pub method: Method,
    /// Checkpoint layout; default compressed-tensors (transformers loads it with the small
    /// `compressed-tensors` package, vLLM natively), gguf (one llama.cpp file) for
    /// --gguf-type. gptq needs optimum + GPTQModel in transformers; awq holds 4-bit groups.
    #[arg(long, value_parser = ["gptq", "compressed-tensors", "awq", "gguf"])]
    pub format: Option<String>,
    /// Largest safetensors shard (transformers' `max_shard_size`: 5GB, 500MB, 2GiB or bytes).
    /// The output is written shard by shard as blocks finish, so this also bounds the
    /// memory the output takes.
    #[arg(long, value_parser = parse_size, default_value = "5GB")]
    pub max_shard_size: usize,
    /// Print every linear as it is quantized: bits/weight, error against RTN's, time.
    #[arg(long, short)]
    pub verbose: bool,
    /// Write the quantization report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,

    /// Integer bits: 2, 3, 4 or 8.
    #[arg(long, default_value_t = 4, help_heading = "Weight scheme")]
    pub bits: u8,
    /// Input columns per scale group; -1 means per output channel.
    #[arg(long, default_value_t = 128, allow_hyphen_values = true, help_heading = "Weight scheme")]
    pub group_size: i64,
    /// When the group size does not divide a linear's width (SmolLM2's 576 at 128): `auto`
    /// uses the largest of 256/128/64/32 below it that divides the width (else per-channel),
    /// or give a group size, `per-channel`, or `partial` (keep a ragged last group: only
    /// this tool reads it; every format's loaders refuse it). Written as the format's
    /// per-module override (compressed-tensors config_groups, gptq `dynamic`).
    #[arg(long, default_value = "auto", help_heading = "Weight scheme")]
    pub group_fallback: String,
    /// One scale per output channel (same as --group-size -1).
    #[arg(long, conflicts_with_all = ["per_tensor", "group_size"], help_heading = "Weight scheme")]
    pub per_channel: bool,
    /// One scale for the whole matrix.
    #[arg(long, conflicts_with = "group_size", help_heading = "Weight scheme")]
    pub per_tensor: bool,
    /// Symmetric codes (the default of W8A8 and GGUF types, which need them).
    #[arg(long, overrides_with = "asym", help_heading = "Weight scheme")]
    pub sym: bool,
    /// Asymmetric codes with a zero point per group (the default of integer weights:
    /// SmolLM2 int4 g128 RTN +25.1% against symmetric's +42.7%).
    #[arg(long, overrides_with = "sym", help_heading = "Weight scheme")]
    pub asym: bool,
    /// Write one GGUF file for llama.cpp / Ollama in this llama-quantize type: Q8_0, Q4_0,
    /// Q4_1, Q5_0, Q5_1, Q2_K, Q3_K_S, Q3_K_M, Q3_K_L, Q4_K_S, Q4_K_M, Q5_K_S, Q5_K_M, Q6_K
    /// (llama.cpp's per-tensor mix and fallbacks). With --method gptq the blocks are solved
    /// by GPTQ onto the GGUF grids.
    #[arg(long, help_heading = "GGUF export (llama.cpp)")]
    pub gguf_type: Option<String>,
    /// With --method rtn --gguf-type: weight each block's scale search by the calibration
    /// inputs' mean squares (llama.cpp's imatrix, from this tool's own calibration).
    #[arg(long, help_heading = "GGUF export (llama.cpp)")]
    pub imatrix: bool,

    /// FP8 weights: the format for --method fp8 (default e4m3); with --method gptq, GPTQ
    /// onto the FP8 grid (per channel, or --per-tensor) instead of integers.
    #[arg(long, value_parser = ["e4m3", "e5m2"], help_heading = "Weight scheme")]
    pub fp8_format: Option<String>,

    /// Calibration text files (default: the Brown calibration split of the asset cache).
    #[arg(long, num_args = 1.., help_heading = "Calibration (gptq, awq, W8A8 static or smoothed)")]
    pub calib: Vec<PathBuf>,
    /// Calibration windows.
    #[arg(long, default_value_t = 128, help_heading = "Calibration (gptq, awq, W8A8 static or smoothed)")]
    pub nsamples: usize,
    /// Tokens per calibration window (128 x 512: what docs/BENCHMARKS.md measured; GPTQ
    /// about 5 minutes on SmolLM2 with 2 cores, 2048 takes 4x as long).
    #[arg(long, default_value_t = 512, help_heading = "Calibration (gptq, awq, W8A8 static or smoothed)")]
    pub seqlen: usize,
    /// Seed of the calibration window positions.
    #[arg(long, default_value_t = 0, help_heading = "Calibration (gptq, awq, W8A8 static or smoothed)")]
    pub seed: u64,
    /// Calibration windows per forward chunk (memory vs speed; results do not depend on it).
    #[arg(long, default_value_t = 8, help_heading = "Calibration (gptq, awq, W8A8 static or smoothed)")]
    pub chunk_windows: usize,

    /// Clipping search of the group ranges (GPTQ's `mse` option; on by default for GPTQ
    /// on integers; rtn and awq take it too).
    #[arg(long, overrides_with = "no_mse", help_heading = "RTN / FP8 / GPTQ")]
    pub mse: bool,
    /// No clipping search: min/max ranges.
    #[arg(long, overrides_with = "mse", help_heading = "RTN / FP8 / GPTQ")]
    pub no_mse: bool,
    /// Also quantize the LM head (gptq solves it from its input on the calibration windows,
    /// the final norm's output; awq rounds it to nearest); a tied head is written as its own
    /// quantized `lm_head` (the embedding stays full precision; config.json unties them).
    #[arg(long, help_heading = "RTN / FP8 / GPTQ")]
    pub include_head: bool,
    /// `fp8`: an FP8 E4M3 KV cache with static per-block scales measured on the calibration
    /// windows (any method; compressed-tensors `kv_cache_scheme`, as vLLM runs it).
    #[arg(long, value_parser = ["fp8"])]
    pub kv_cache: Option<String>,
    /// GPTQ damping, a fraction of the mean Hessian diagonal.
    #[arg(long, default_value_t = 0.01, help_heading = "RTN / FP8 / GPTQ")]
    pub damp: f32,
    /// GPTQ lazy-update block, in columns.
    #[arg(long, default_value_t = 128, help_heading = "RTN / FP8 / GPTQ")]
    pub block_size: usize,
    /// GPTQ: visit columns by decreasing Hessian diagonal (desc_act; on by default for
    /// integer, FP8 and GGUF weights: int4 g128 +24.9% against +32.0% without).
    #[arg(long, overrides_with = "no_act_order", help_heading = "RTN / FP8 / GPTQ")]
    pub act_order: bool,
    /// GPTQ: columns in their natural order.
    #[arg(long, overrides_with = "act_order", help_heading = "RTN / FP8 / GPTQ")]
    pub no_act_order: bool,
    /// GPTQ: group parameters from the original weights, before any update (on by
    /// default for integer groups; with GGUF types, blocks solved up front).
    #[arg(long, overrides_with = "no_static_groups", help_heading = "RTN / FP8 / GPTQ")]
    pub static_groups: bool,
    /// GPTQ: each group's parameters fitted when the sweep reaches it.
    #[arg(long, overrides_with = "static_groups", help_heading = "RTN / FP8 / GPTQ")]
    pub no_static_groups: bool,
    /// GPTQ: after the sweep, refit each group's scale by least squares against the
    /// Hessian (codes and zero points fixed); lowers every layer's calibration error and,
    /// on SmolLM2 int4 g128, perplexity, but not KL to the baseline (docs/BENCHMARKS.md).
    #[arg(long, help_heading = "RTN / FP8 / GPTQ")]
    pub refit_scales: bool,
    /// GPTQ, AWQ+GPTQ: GPTAQ's asymmetric calibration (Li et al. 2025, GPTQModel's v2):
    /// each linear matches the full-precision model's output (on the full-precision
    /// model's inputs), not its own output on the quantized inputs; a second activation
    /// stream runs beside (one more block forward per block). Weight: --asym-alpha.
    #[arg(long, conflicts_with = "asym_target", help_heading = "RTN / FP8 / GPTQ")]
    pub gptaq: bool,
    /// GPTQ, AWQ+GPTQ: asymmetric calibration through the least-squares target: GPTQ of
    /// `W + alpha·W·dXXT·H⁻¹`, whose plain GPTQ error is the whole asymmetric objective, so
    /// every input channel's drift is compensated by all columns (GPTAQ: only by the
    /// columns after it). The same second stream as --gptaq.
    #[arg(long, help_heading = "RTN / FP8 / GPTQ")]
    pub asym_target: bool,
    /// Weight of the asymmetric correction (default: 0.25 with --gptaq, the reference's;
    /// 1 with --asym-target, the exact least-squares target).
    #[arg(long, value_name = "ALPHA", allow_negative_numbers = true, help_heading = "RTN / FP8 / GPTQ")]
    pub asym_alpha: Option<f32>,

    /// Mixed precision to this many stored bits per weight (e.g. 4.5): a measurement pass
    /// (RTN of each linear in int3 g128, int4 g128, int4 g32 and int8 g128 on 16 windows:
    /// its output error through its Hessian before GPTQ, the error of its attention or MLP
    /// output alone before RTN, as measured best for each) picks each scheme to
    /// minimize the summed errors within the budget; written as per-module overrides, with
    /// sensitivity.txt/.json/.svg beside the checkpoint. Recipe: `[budget] bpw = 4.5`.
    #[arg(long, value_name = "BPW")]
    pub target_bpw: Option<f64>,
    /// Rotate the residual stream by a random Hadamard matrix folded into the weights
    /// (QuaRot; and v/o per head): outlier channels are spread before rounding, and the
    /// output is an ordinary checkpoint. Helps GPTQ (int4 g128 +15.0% -> +8.7%) and
    /// activation quantization; hurts plain RTN weights on SmolLM2 (+25% -> +116%). RMSNorm weights are folded into the linears that
    /// read them; a tied head is written as its own `lm_head` (the checkpoint grows by the
    /// head). Recipe: `[[modifier]] type = "rotate"` (`kind`, `seed`).
    #[arg(long)]
    pub rotate: bool,

    /// AWQ: points of the alpha grid (alpha = i / N, i = 0 .. N).
    #[arg(long, default_value_t = 20, help_heading = "AWQ")]
    pub awq_grid: usize,
    /// AWQ: AutoAWQ's duo scaling, s = mean|x|^a / mean|w|^(1-a).
    #[arg(long, help_heading = "AWQ")]
    pub awq_duo_scaling: bool,
    /// AWQ: skip the clipping search (awq+gptq skips it unless --awq-clip is given).
    #[arg(long, conflicts_with = "awq_clip", help_heading = "AWQ")]
    pub awq_no_clip: bool,
    /// AWQ+GPTQ: run AWQ's clipping search before GPTQ too. Off by default: the clip
    /// is fitted for RTN and moves the weights GPTQ then targets (int3 g128 measured
    /// +82% with it, +58% without); GPTQ's `--mse` clips inside its own objective.
    #[arg(long, help_heading = "AWQ")]
    pub awq_clip: bool,
    /// AWQ: tokens sampled for the clipping search (AutoAWQ: 512).
    #[arg(long, default_value_t = 4096, help_heading = "AWQ")]
    pub awq_clip_tokens: usize,
    /// AWQ: clip as AutoAWQ does, `[-m, m]` only (no proportional `[p·min, p·max]`
    /// ranges for asymmetric schemes).
    #[arg(long, help_heading = "AWQ")]
    pub awq_clip_symmetric: bool,
    /// AWQ: read only the first N calibration windows (activation magnitudes, the alpha
    /// search, clipping samples; the full-precision pass runs only those). Default: 16 for
    /// awq (6.4x faster, Brown perplexity within 0.3%), all for awq+gptq (16 cost it 1.05%).
    #[arg(long, help_heading = "AWQ")]
    pub awq_search_windows: Option<usize>,
    /// AWQ+GPTQ: score the alpha grid with RTN's weights, as AutoAWQ does (default:
    /// with GPTQ's, the quantizer that will run; int3 g128 +53.4% vs +58.1%, search
    /// time 1.4x).
    #[arg(long, help_heading = "AWQ")]
    pub awq_rtn_search: bool,

    /// Weights and activations quantized (compressed-tensors as vLLM loads it):
    /// w8a8-int8 = INT8 per-channel symmetric weights + INT8 activations, w8a8-fp8 = FP8
    /// E4M3 per-channel weights + FP8 E4M3 activations (these fix --bits/--group-size);
    /// w4a8-int8 = INT4 symmetric weights in groups of --group-size (128) + INT8
    /// activations (vLLM's W4A8 int; best with --rotate, which spreads activation outliers).
    #[arg(long = "scheme", value_parser = ["w8a8-int8", "w8a8-fp8", "w4a8-int8"], help_heading = "W8A8 activations")]
    pub w8a8: Option<String>,
    /// W8A8: activation scales per token, computed at run time (the default).
    #[arg(long, conflicts_with = "static_act", help_heading = "W8A8 activations")]
    pub dynamic: bool,
    /// W8A8: one calibrated activation scale per tensor (from --calib, or --load-stats).
    #[arg(long = "static", help_heading = "W8A8 activations")]
    pub static_act: bool,
    /// W8A8 --static: clipping range of the activation scales from each site's histogram.
    #[arg(long, default_value = "minmax", value_parser = ["minmax", "percentile", "mse"], help_heading = "W8A8 activations")]
    pub act_calib: String,
    /// W8A8 --act-calib percentile: percentage of the values kept inside the range.
    #[arg(long, default_value_t = 99.99, help_heading = "W8A8 activations")]
    pub act_percentile: f64,
    /// W8A8 int8: asymmetric activations (a zero point per tensor or per token).
    #[arg(long, help_heading = "W8A8 activations")]
    pub act_asym: bool,
    /// W8A8: save the calibration statistics (ranges, histograms) to this file.
    #[arg(long, help_heading = "W8A8 activations")]
    pub save_stats: Option<PathBuf>,
    /// W8A8: take the statistics from a --save-stats file instead of calibrating.
    #[arg(long, conflicts_with = "save_stats", help_heading = "W8A8 activations")]
    pub load_stats: Option<PathBuf>,
    /// W8A8: SmoothQuant migration strength alpha (default 0.8 for w8a8-int8 with RTN
    /// weights, none otherwise; 0 disables). Needs calibration windows, even with --dynamic.
    #[arg(long, help_heading = "W8A8 activations")]
    pub smooth: Option<f32>,
}

/// The flags given on the command line (clap ids, e.g. `act_order`), to tell an explicit
/// flag from a default.
#[derive(Clone, Debug, Default)]
pub struct Given(pub BTreeSet<String>);

impl Given {
    pub fn from_matches(m: &clap::ArgMatches) -> Self {
        use clap::CommandFactory;
        let cmd = super::Cli::command();
        let args: BTreeSet<&str> = cmd.get_arguments().map(|a| a.get_id().as_str()).collect();
        let ids = m
            .ids()
            .filter(|id| args.contains(id.as_str())) // not the derive's group ids
            .filter(|id| m.value_source(id.as_str()) == Some(clap::parser::ValueSource::CommandLine))
            .map(|id| id.as_str().to_string())
            .collect();
        Self(ids)
    }

    fn has(&self, id: &str) -> bool {
        self.0.contains(id)
    }
}

/// `--act-order` for `act_order`; the few renamed flags by their long names.
fn flag(id: &str) -> String {
    match id {
        "w8a8" => "--scheme".into(),
        "static_act" => "--static".into(),
        other => format!("--{}", other.replace('_', "-")),
    }
}

const SCHEME_FLAGS: [&str; 7] = ["bits", "group_size", "per_channel", "per_tensor", "sym", "asym", "fp8_format"];
/// `--act-order` or `--no-act-order` when either was given, else `default`.
fn choice(on: bool, off: bool, default: bool) -> bool {
    on || (!off && default)
}
const CALIB_FLAGS: [&str; 5] = ["calib", "nsamples", "seqlen", "seed", "chunk_windows"];
const GPTQ_FLAGS: [&str; 12] = [
    "gptaq",
    "asym_target",
    "asym_alpha",
    "damp",
    "block_size",
    "act_order",
    "no_act_order",
    "static_groups",
    "no_static_groups",
    "mse",
    "no_mse",
    "refit_scales",
];
const AWQ_FLAGS: [&str; 6] =
    ["awq_grid", "awq_duo_scaling", "awq_no_clip", "awq_clip_tokens", "awq_clip_symmetric", "awq_search_windows"];
const W8A8_FLAGS: [&str; 7] =
    ["dynamic", "static_act", "act_calib", "act_percentile", "act_asym", "smooth", "load_stats"];
/// Flags that never change what is computed.
const RUN_FLAGS: [&str; 8] =
    ["model", "output", "verbose", "json", "format", "save_stats", "max_shard_size", "threads"];

impl QuantizeArgs {
    /// The recipe these flags stand for; a given flag the run would not use is an error.
    pub fn to_recipe(&self, given: &Given) -> crate::Result<Recipe> {
        let m = self.method;
        let w8a8 = self.w8a8.as_deref();
        let mut used: BTreeSet<&str> = RUN_FLAGS.into_iter().chain(["method", "w8a8"]).collect();
        let mut modifiers = Vec::new();
        // The best measured GPTQ options are the defaults of integer weights (asym, act-order,
        // static groups, MSE: int4 g128 +19.2% against +32.0% plain), act-order of FP8
        // (llama.cpp protocol +0.49% against +0.74%) and of GGUF types (their blocks then
        // solved up front with the Hessian diagonal as importance: Q4_0 +11.75% against
        // +18.58%, KL 0.112 against 0.172); W8A8 keeps plain GPTQ.
        let fp8_weights = m == Method::Fp8 || self.fp8_format.is_some();
        let w4a8 = w8a8 == Some("w4a8-int8");
        let int_weights = (w8a8.is_none() || w4a8) && self.gguf_type.is_none() && !fp8_weights;
        let grouped = !(self.per_channel || self.per_tensor || self.group_size == -1);
        let mse = choice(self.mse, self.no_mse, int_weights && matches!(m, Method::Gptq | Method::AwqGptq));
        let gptq = || ModifierSpec::Gptq {
            damp: self.damp,
            block_size: self.block_size,
            act_order: choice(
                self.act_order,
                self.no_act_order,
                int_weights || self.gguf_type.is_some() || (fp8_weights && w8a8.is_none()),
            ),
            static_groups: choice(self.static_groups, self.no_static_groups, int_weights && grouped),
            mse,
            refit_scales: self.refit_scales,
            asymmetric: match (self.gptaq, self.asym_target) {
                (true, _) => Some("gptaq".into()),
                (_, true) => Some("target".into()),
                _ => None,
            },
            asymmetric_alpha: self.asym_alpha,
        };
        if let (Some(f), None) = (self.format.as_deref().filter(|f| *f == "gguf"), &self.gguf_type) {
            return Err(Error::option("--format", format!("{f} needs --gguf-type (e.g. Q4_K_M)")));
        }
        if self.imatrix && (self.gguf_type.is_none() || m != Method::Rtn) {
            return Err(Error::option("--imatrix", "goes with --method rtn --gguf-type (GPTQ uses the whole Hessian)"));
        }
        let mut group_fallback = None;
        let scheme = match (w8a8, &self.gguf_type) {
            (Some(_), Some(_)) => {
                return Err(Error::option("--gguf-type", "GGUF files carry no W8A8 activation scales"))
            }
            (None, Some(t)) => {
                if !matches!(m, Method::Rtn | Method::Gptq | Method::Awq | Method::AwqGptq) {
                    return Err(Error::option(
                        "--gguf-type",
                        format!("goes with --method rtn, gptq, awq or awq+gptq, not {}", m.name()),
                    ));
                }
                crate::format::ggml::preset::Preset::parse(t)?;
                used.extend(["gguf_type", "imatrix"]);
                SchemeSpec { kind: t.clone(), group_size: None, per_tensor: false, symmetric: true }
            }
            (None, None) => {
                used.extend(SCHEME_FLAGS);
                let fp8 = match (m, self.fp8_format.as_deref()) {
                    (Method::Fp8, f) | (Method::Gptq, f @ Some(_)) => Some(f.unwrap_or("e4m3")),
                    (m, Some(f)) => {
                        return Err(Error::option(
                            "--fp8-format",
                            format!("{f} goes with --method fp8 or gptq, not {}", m.name()),
                        ))
                    }
                    (_, None) => None,
                };
                if fp8.is_some() && given.has("group_size") {
                    return Err(Error::option("--group-size", "FP8 weights take per-channel or --per-tensor scales"));
                }
                if fp8.is_some() && given.has("bits") {
                    return Err(Error::option(
                        "--bits",
                        format!("FP8 weights have 8 bits; --bits goes with integer schemes ({})", m.name()),
                    ));
                }
                let group_size = match self.group_size {
                    _ if self.per_channel || self.per_tensor || fp8.is_some() => None,
                    -1 => None,
                    g if g <= 0 => {
                        return Err(Error::option(
                            "--group-size",
                            format!("{g} is not valid; use a positive group size or -1 for per-channel"),
                        ))
                    }
                    g => Some(g as usize),
                };
                if group_size.is_some() {
                    used.insert("group_fallback");
                    group_fallback = Some(GroupFallbackSpec::from_flag(&self.group_fallback)?);
                }
                SchemeSpec {
                    kind: fp8.map_or(format!("int{}", self.bits), |f| format!("fp8-{f}")),
                    group_size,
                    per_tensor: self.per_tensor,
                    // Integers are asymmetric unless --sym; FP8 is symmetric (--asym refused).
                    symmetric: if fp8.is_some() { !self.asym } else { self.sym },
                }
            }
            (Some(name), None) => {
                used.extend(W8A8_FLAGS);
                used.insert("per_tensor");
                let fp8 = name == "w8a8-fp8";
                let dynamic = !self.static_act;
                let method_fits = match m {
                    Method::Rtn => true,
                    Method::Fp8 => !w4a8,
                    Method::Gptq => !fp8,
                    _ => false,
                };
                if !method_fits {
                    return Err(Error::option(
                        "--method",
                        format!("{} with {name}: use rtn (or gptq with w8a8-int8 / w4a8-int8)", m.name()),
                    ));
                }
                if self.asym {
                    return Err(Error::option("--asym", format!("{name}: vLLM runs W8A8 with symmetric weights only (use --act-asym for asymmetric activations)")));
                }
                if fp8 && self.act_asym {
                    return Err(Error::option("--act-asym", "FP8 activations are symmetric"));
                }
                // SmoothQuant by default for INT8 with RTN weights (alpha 0.8, see --smooth).
                let smooth = match self.smooth {
                    Some(x) if x <= 0.0 => None,
                    Some(x) => Some(x),
                    None if name == "w8a8-int8" && m != Method::Gptq => Some(0.8),
                    None => None,
                };
                if m == Method::Gptq && (smooth.is_some() || self.save_stats.is_some() || self.load_stats.is_some()) {
                    return Err(Error::option(
                        "--method gptq",
                        "smoothing and --save-stats/--load-stats go with --method rtn",
                    ));
                }
                if self.save_stats.is_some() && dynamic && smooth.is_none() {
                    return Err(Error::option(
                        "--save-stats",
                        "dynamic activations without smoothing gather no statistics",
                    ));
                }
                if dynamic && given.has("act_calib") {
                    return Err(Error::option("--act-calib", "goes with --static (dynamic scales are not calibrated)"));
                }
                if given.has("act_percentile") && self.act_calib != "percentile" {
                    return Err(Error::option("--act-percentile", "goes with --act-calib percentile"));
                }
                if let Some(alpha) = smooth {
                    modifiers.push(ModifierSpec::Smoothquant { alpha });
                }
                modifiers.push(if m == Method::Gptq { gptq() } else { ModifierSpec::Rtn { mse, imatrix: false } });
                modifiers.push(ModifierSpec::Activations {
                    format: if fp8 { "fp8-e4m3" } else { "int8" }.into(),
                    dynamic,
                    symmetric: !self.act_asym,
                    observer: self.act_calib.clone(),
                    percentile: self.act_percentile,
                });
                used.extend(if m == Method::Gptq { &GPTQ_FLAGS[..] } else { &["mse", "no_mse"][..] });
                let cal = !dynamic || smooth.is_some() || m == Method::Gptq;
                if cal {
                    used.extend(CALIB_FLAGS);
                }
                if w4a8 {
                    used.extend(["group_size", "per_channel", "group_fallback"]);
                    if self.group_size > 0 && !self.per_channel {
                        group_fallback = Some(GroupFallbackSpec::from_flag(&self.group_fallback)?);
                    }
                }
                SchemeSpec {
                    kind: if fp8 {
                        "fp8-e4m3"
                    } else if w4a8 {
                        "int4"
                    } else {
                        "int8"
                    }
                    .into(),
                    group_size: match self.group_size {
                        g if w4a8 && g > 0 && !self.per_channel => Some(g as usize),
                        g if w4a8 && g <= 0 && g != -1 => {
                            return Err(Error::option(
                                "--group-size",
                                format!("{g} is not valid; use a positive group size or -1 for per-channel"),
                            ))
                        }
                        _ => None,
                    },
                    per_tensor: self.per_tensor,
                    symmetric: true,
                }
            }
        };
        if w8a8.is_none() {
            match m {
                Method::Rtn | Method::Fp8 => {
                    used.extend(["mse", "no_mse", "include_head"]);
                    if self.imatrix {
                        used.extend(CALIB_FLAGS);
                    }
                    modifiers.push(ModifierSpec::Rtn { mse, imatrix: self.imatrix });
                }
                Method::Hqq => {
                    used.insert("include_head");
                    let d = crate::quant::hqq::HqqOptions::default();
                    modifiers.push(ModifierSpec::Hqq {
                        lp_norm: d.lp_norm,
                        beta: d.beta,
                        kappa: d.kappa,
                        iters: d.iters,
                    });
                }
                Method::Gptq => {
                    used.extend(GPTQ_FLAGS.into_iter().chain(CALIB_FLAGS).chain(["include_head"]));
                    modifiers.push(gptq());
                }
                Method::Awq | Method::AwqGptq => {
                    used.extend(AWQ_FLAGS.into_iter().chain(CALIB_FLAGS).chain(["include_head"]));
                    let plus = m == Method::AwqGptq;
                    if plus {
                        used.extend(GPTQ_FLAGS.into_iter().chain(["awq_clip", "awq_rtn_search"]));
                    } else {
                        used.extend(["mse", "no_mse"]);
                    }
                    modifiers.push(ModifierSpec::Awq {
                        grid: self.awq_grid,
                        duo_scaling: self.awq_duo_scaling,
                        // GGUF blocks search their own scales: no clipping unless asked.
                        clip: Some(if self.gguf_type.is_some() {
                            self.awq_clip
                        } else {
                            !self.awq_no_clip && (!plus || self.awq_clip)
                        }),
                        clip_tokens: self.awq_clip_tokens,
                        clip_symmetric: self.awq_clip_symmetric,
                        search: Some(if plus && !self.awq_rtn_search { "gptq" } else { "rtn" }.into()),
                        search_windows: if plus {
                            self.awq_search_windows
                        } else {
                            self.awq_search_windows.or(Some(16))
                        },
                    });
                    modifiers.push(if plus { gptq() } else { ModifierSpec::Rtn { mse, imatrix: false } });
                }
            }
        }
        used.insert("rotate"); // every method
        if self.target_bpw.is_some() {
            if !int_weights {
                return Err(Error::option("--target-bpw", "mixes integer weight schemes (not FP8, GGUF or W8A8)"));
            }
            used.extend(["target_bpw"].into_iter().chain(CALIB_FLAGS));
        }
        if self.rotate {
            modifiers.insert(0, ModifierSpec::Rotate { kind: "hadamard".into(), seed: 0 });
        }
        used.insert("kv_cache");
        if self.kv_cache.is_some() {
            used.extend(CALIB_FLAGS);
        }
        let needs_calibration = used.contains("calib");
        for id in &given.0 {
            if !used.contains(id.as_str()) {
                let what = match w8a8 {
                    Some(s) => format!("--method {} --scheme {s}", m.name()),
                    None => format!("--method {}", m.name()),
                };
                let why = if CALIB_FLAGS.contains(&id.as_str()) { " (it takes no calibration)" } else { "" };
                return Err(Error::option(&flag(id), format!("does not apply to {what}{why}")));
            }
        }
        Ok(Recipe {
            format: self.format.clone(),
            include_head: self.include_head,
            kv_cache: self.kv_cache.clone(),
            ignore: vec![],
            overrides: vec![],
            group_fallback,
            scheme,
            calibration: needs_calibration.then(|| CalibrationSpec {
                files: self.calib.clone(),
                nsamples: self.nsamples,
                seqlen: self.seqlen,
                seed: self.seed,
                chunk_windows: self.chunk_windows,
            }),
            modifiers,
            budget: self.target_bpw.map(|bpw| BudgetSpec { bpw, candidates: vec![], windows: 16, measure: None }),
        })
    }
}

/// The model directory of a `MODEL` argument.
fn model_dir(model: &Path) -> crate::Result<PathBuf> {
    if model.is_dir() {
        return Ok(model.to_path_buf());
    }
    if model.extension().is_some_and(|e| e == "gguf") {
        return Err(Error::option(
            "MODEL",
            format!(
                "{} is a GGUF file; convert it first: quantize convert {} -o DIR, then quantize DIR",
                model.display(),
                model.display()
            ),
        ));
    }
    if model.extension().is_some_and(|e| e == "safetensors") && model.exists() {
        let dir = model.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
        // The directory's weights are what is read: a file of another name would be ignored.
        let sharded = dir.join("model.safetensors.index.json").exists();
        if model.file_name().is_some_and(|n| n != "model.safetensors") || sharded {
            return Err(Error::option(
                "MODEL",
                format!(
                    "{}: a model is read as a directory (model.safetensors or its index, with config.json); \
                     name the directory {} instead, or put this file alone in a directory as model.safetensors",
                    model.display(),
                    dir.display()
                ),
            ));
        }
        return Ok(dir);
    }
    Err(Error::option(
        "MODEL",
        format!("{} is neither a model directory nor an existing .safetensors file", model.display()),
    ))
}

pub fn run(a: QuantizeArgs, given: &Given) -> anyhow::Result<()> {
    let Some(model) = &a.model else {
        if std::env::args_os().len() <= 1 {
            use clap::CommandFactory;
            super::Cli::command().print_help()?;
            return Ok(());
        }
        anyhow::bail!(
            "no MODEL given (a .safetensors file or a model directory); --calib takes several files, \
             so put MODEL before it or end its list with --"
        );
    };
    let recipe = match &a.recipe {
        Some(path) => {
            let allowed = [
                "model",
                "output",
                "verbose",
                "json",
                "recipe",
                "save_stats",
                "load_stats",
                "max_shard_size",
                "threads",
            ];
            if let Some(id) = given.0.iter().find(|id| !allowed.contains(&id.as_str())) {
                Err(Error::option(
                    &flag(id),
                    format!("given with --recipe {}: set it in the recipe file", path.display()),
                ))?;
            }
            Recipe::from_file(path)?
        }
        None => a.to_recipe(given)?,
    };
    let recipe = recipe.resolve()?;
    let dir = model_dir(model)?;
    let out = a.output.clone().unwrap_or_else(|| {
        let canon = dir.canonicalize().unwrap_or(dir.clone());
        let stem = canon.file_name().map_or("model".into(), |n| n.to_string_lossy().into_owned());
        let scheme = recipe.scheme_name().unwrap_or_default();
        let ext = if recipe.scheme.gguf_preset().is_some() { ".gguf" } else { "" };
        canon.with_file_name(format!("{stem}-{}-{scheme}{ext}", recipe.method_name()))
    });
    if out.exists() {
        Err(Error::OutputExists { path: out.clone() })?;
    }
    // The report is written after a long run: refuse an existing file now, not then.
    if let Some(j) = &a.json {
        crate::io::atomic::refuse_existing("--json", j)?;
    }
    let opts = RunOptions {
        progress: true,
        verbose: a.verbose,
        save_stats: a.save_stats.clone(),
        load_stats: a.load_stats.clone(),
        max_shard_bytes: a.max_shard_size,
    };
    let report = run_recipe(&recipe, &dir, &out, &opts)?;
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&report)?).map_err(|e| Error::io(p, e))?;
    }
    println!("{}", out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse_as_transformers_max_shard_size() {
        assert_eq!(parse_size("5GB"), Ok(5_000_000_000));
        assert_eq!(parse_size("500MB"), Ok(500_000_000));
        assert_eq!(parse_size("1.5kb"), Ok(1500));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        for bad in ["", "GB", "5XB", "0", "-1GB", "1..2MB"] {
            assert!(parse_size(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
