//! `quantize eval`: perplexity, and the comparison against a baseline.

use crate::eval::perplexity::Protocol;
use crate::eval::{compare, perplexity, report, EvalOptions};
use crate::io::tokenizer::{read_text, Tokenizer};
use crate::model::load::LoadInfo;
use crate::model::LlamaModel;
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// Model directory (dense or quantized checkpoint).
    #[arg(long)]
    pub model: PathBuf,
    /// Full-precision model to compare against (perplexity delta, KL, top-1 agreement).
    #[arg(long)]
    pub baseline: Option<PathBuf>,
    /// Evaluation text (UTF-8).
    #[arg(long)]
    pub text: PathBuf,
    /// Window length in tokens.
    #[arg(long, default_value_t = 512)]
    pub ctx: usize,
    /// `chunks`: every token after the first of each window; `llama.cpp`: second half only.
    #[arg(long, value_enum, default_value_t = Protocol::Chunks)]
    pub protocol: Protocol,
    /// Evaluate at most this many windows.
    #[arg(long)]
    pub max_windows: Option<usize>,
    /// Windows per forward pass.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Also write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

pub fn load_model(dir: &Path) -> anyhow::Result<(LlamaModel, LoadInfo)> {
    Ok(crate::model::load::load_model(dir)?)
}

pub fn run(a: EvalArgs) -> anyhow::Result<()> {
    if a.batch == 0 {
        anyhow::bail!("invalid option --batch: 0; use 1 or more windows per forward");
    }
    let t0 = std::time::Instant::now();
    let text = read_text(&a.text)?;
    let tok = Tokenizer::from_file(&a.model.join("tokenizer.json"))?;
    let tokens = tok.encode(&text)?;
    eprintln!("tokenized {} ({} tokens) in {:.2}s", a.text.display(), tokens.len(), t0.elapsed().as_secs_f64());
    let opts = EvalOptions { ctx: a.ctx, protocol: a.protocol, max_windows: a.max_windows, batch: a.batch };
    // Check the window count before loading anything heavy.
    crate::eval::perplexity::windows(&tokens, a.ctx, a.max_windows)?;
    let t0 = std::time::Instant::now();
    let (model, info) = load_model(&a.model)?;
    eprintln!("loaded {} in {:.2}s", a.model.display(), t0.elapsed().as_secs_f64());
    let json = match &a.baseline {
        None => {
            let r = perplexity(&model, &tokens, &opts)?;
            print!("{}", report::perplexity_table(&r));
            serde_json::to_value(&r)?
        }
        Some(b) => {
            let (base, base_info) = load_model(b)?;
            let c = compare(&base, &model, &tokens, &opts)?;
            let size = report::SizeReport { bits_per_weight: info.bits_per_weight.unwrap_or(32.0), bytes_on_disk: info.bytes_on_disk, baseline_bytes_on_disk: base_info.bytes_on_disk };
            print!("{}", report::comparison_table(&c, Some(&size)));
            serde_json::json!({"comparison": c, "size": size, "model": info, "baseline_model": base_info})
        }
    };
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&json)?).map_err(|e| crate::Error::io(p, e))?;
    }
    Ok(())
}
