//! `quantize [OPTIONS] MODEL`: quantize a model's block linears and write a checkpoint.

use crate::calib::dataset::sample_windows;
use crate::calib::runner::RunnerOptions;
use crate::error::Error;
use crate::format::QuantScheme;
use crate::io::checkpoint::{write_quantized_checkpoint, CheckpointFormat};
use crate::io::safetensors::SafetensorsStore;
use crate::io::tokenizer::{read_text, Tokenizer};
use crate::model::LlamaConfig;
use crate::quant::gptq::GptqOptions;
use crate::quant::pipeline::{quantize_gptq_model, quantize_rtn_model, QuantizeReport};
use crate::quant::rtn::ClipSearch;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Method {
    /// Round-to-nearest, no calibration (int4 g128 on SmolLM2: +32% ppl, seconds).
    Rtn,
    /// FP8 weights, round-to-nearest-even (E4M3 per-channel on SmolLM2: within 1% ppl).
    Fp8,
    /// GPTQ: Hessian-based column updates from calibration data.
    Gptq,
}

#[derive(clap::Args, Debug)]
pub struct QuantizeArgs {
    /// Model: a directory, or a `.safetensors` file with config.json and tokenizer.json beside it.
    pub model: Option<PathBuf>,
    /// Output directory (must not exist); default: beside the model, named after the scheme.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Method::Rtn)]
    pub method: Method,
    /// Integer bits: 2, 3, 4 or 8.
    #[arg(long, default_value_t = 4)]
    pub bits: u8,
    /// Input columns per scale group; -1 means per output channel.
    #[arg(long, default_value_t = 128, allow_hyphen_values = true)]
    pub group_size: i64,
    /// One scale per output channel (same as --group-size -1).
    #[arg(long, conflicts_with = "per_tensor")]
    pub per_channel: bool,
    /// One scale for the whole matrix.
    #[arg(long)]
    pub per_tensor: bool,
    /// Symmetric codes (the default).
    #[arg(long, conflicts_with = "asym")]
    pub sym: bool,
    /// Asymmetric codes with a zero point per group.
    #[arg(long)]
    pub asym: bool,
    /// FP8 format for --method fp8.
    #[arg(long, default_value = "e4m3", value_parser = ["e4m3", "e5m2"])]
    pub fp8_format: String,
    /// Checkpoint layout; default gptq for integers, compressed-tensors for FP8.
    #[arg(long, value_parser = ["gptq", "compressed-tensors"])]
    pub format: Option<String>,
    /// Clipping search of the group ranges (GPTQ's `mse` option).
    #[arg(long)]
    pub mse: bool,
    /// Also quantize an untied LM head.
    #[arg(long)]
    pub include_head: bool,
    /// Calibration text files (default: the Brown calibration split of the asset cache).
    #[arg(long, num_args = 1..)]
    pub calib: Vec<PathBuf>,
    /// Calibration windows.
    #[arg(long, default_value_t = 128)]
    pub nsamples: usize,
    /// Tokens per calibration window.
    #[arg(long, default_value_t = 2048)]
    pub seqlen: usize,
    /// Seed of the calibration window positions.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// GPTQ damping, a fraction of the mean Hessian diagonal.
    #[arg(long, default_value_t = 0.01)]
    pub damp: f32,
    /// GPTQ lazy-update block, in columns.
    #[arg(long, default_value_t = 128)]
    pub block_size: usize,
    /// GPTQ: visit columns by decreasing Hessian diagonal (desc_act).
    #[arg(long)]
    pub act_order: bool,
    /// GPTQ: group parameters from the original weights, before any update.
    #[arg(long)]
    pub static_groups: bool,
    /// Calibration windows per forward chunk (memory vs speed).
    #[arg(long, default_value_t = 8)]
    pub chunk_windows: usize,
    /// Print every layer's loss as it is quantized.
    #[arg(long, short)]
    pub verbose: bool,
    /// Write the quantization report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

impl QuantizeArgs {
    pub fn scheme(&self) -> crate::Result<QuantScheme> {
        let mut s = match self.method {
            Method::Fp8 => match self.fp8_format.as_str() {
                "e5m2" => QuantScheme::fp8_e5m2(),
                _ => QuantScheme::fp8_e4m3(),
            },
            _ => QuantScheme::int(self.bits)?,
        };
        if self.per_tensor {
            s = s.per_tensor();
        } else if self.per_channel || self.group_size == -1 || s.is_fp8() {
            s = s.per_channel();
        } else if self.group_size <= 0 {
            return Err(Error::option("--group-size", format!("{} is not valid; use a positive group size or -1 for per-channel", self.group_size)));
        } else {
            s = s.group(self.group_size as usize)?;
        }
        if self.asym {
            s = s.asymmetric()?;
        }
        Ok(s)
    }
}

/// The model directory of a `MODEL` argument.
fn model_dir(model: &Path) -> crate::Result<PathBuf> {
    if model.is_dir() {
        return Ok(model.to_path_buf());
    }
    if model.extension().is_some_and(|e| e == "safetensors") && model.exists() {
        return Ok(model.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf());
    }
    Err(Error::option("MODEL", format!("{} is neither a model directory nor an existing .safetensors file", model.display())))
}

fn default_calib() -> PathBuf {
    let root = std::env::var_os("QUANTIZE_ASSETS").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(".cache/assets"));
    root.join("brown/brown_calib.txt")
}

pub fn run(a: QuantizeArgs) -> anyhow::Result<()> {
    let Some(model) = &a.model else {
        use clap::CommandFactory;
        super::Cli::command().print_help()?;
        return Ok(());
    };
    let scheme = a.scheme()?;
    let format = match a.format.as_deref() {
        Some(f) => f.parse::<CheckpointFormat>()?,
        None if scheme.is_fp8() => CheckpointFormat::CompressedTensors,
        None => CheckpointFormat::Gptq,
    };
    if format == CheckpointFormat::Gptq && scheme.is_fp8() {
        Err(Error::option("--format", "gptq cannot store FP8 weights; use --format compressed-tensors"))?;
    }
    let dir = model_dir(model)?;
    let method_name = format!("{:?}", a.method).to_lowercase();
    let out = a.output.clone().unwrap_or_else(|| {
        let stem = dir.canonicalize().ok().and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned())).unwrap_or_else(|| "model".into());
        dir.canonicalize().unwrap_or(dir.clone()).with_file_name(format!("{stem}-{method_name}-{scheme}"))
    });
    if out.exists() {
        Err(Error::OutputExists { path: out.clone() })?;
    }
    let cfg = LlamaConfig::from_file(&dir.join("config.json"))?;
    let store = SafetensorsStore::open(&dir)?;
    let clip = a.mse.then(ClipSearch::default);
    let (tensors, report): (_, QuantizeReport) = match a.method {
        Method::Rtn | Method::Fp8 => quantize_rtn_model(&cfg, &store, scheme, clip, a.include_head)?,
        Method::Gptq => {
            let files = if a.calib.is_empty() { vec![default_calib()] } else { a.calib.clone() };
            let tok = Tokenizer::from_file(&dir.join("tokenizer.json"))?;
            let mut tokens = Vec::new();
            for f in &files {
                tokens.extend(tok.encode(&read_text(f)?)?);
            }
            let windows = sample_windows(&tokens, a.nsamples, a.seqlen, a.seed)?;
            let opts = GptqOptions { block_size: a.block_size, damp: a.damp, act_order: a.act_order, static_groups: a.static_groups, mse: a.mse };
            eprintln!("gptq {scheme}: {} windows x {} tokens from {}", a.nsamples, a.seqlen, files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", "));
            quantize_gptq_model(&cfg, &store, &windows, scheme, opts, RunnerOptions { chunk_windows: a.chunk_windows, progress: true }, a.verbose)?
        }
    };
    let mut meta = BTreeMap::new();
    meta.insert("quantize_method".to_string(), method_name.clone());
    meta.insert("quantize_scheme".to_string(), scheme.to_string());
    meta.insert("quantize_options".to_string(), format!("{a:?}"));
    write_quantized_checkpoint(&dir, &out, &tensors, format, &meta)?;
    let loss: f64 = report.layers.iter().map(|l| l.loss).sum();
    eprintln!("{method_name} {scheme}: {} linears in {:.1}s (total loss {loss:.3}); wrote {} ({})", report.layers.len(), report.seconds, out.display(), format.as_str());
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&report)?).map_err(|e| Error::io(p, e))?;
    }
    println!("{}", out.display());
    Ok(())
}
