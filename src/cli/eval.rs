//! `quantize eval`: perplexity, and the comparison against a baseline.

use crate::eval::perplexity::Protocol;
use crate::eval::{compare_many, perplexity, report, EvalOptions};
use crate::io::tokenizer::{read_text, Tokenizer};
use crate::model::LlamaModel;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// Model directory (dense or quantized checkpoint); repeat to compare several
    /// models against one --baseline in a single pass over the text.
    #[arg(long, required = true, num_args = 1..)]
    pub model: Vec<PathBuf>,
    /// Full-precision model to compare against (perplexity delta, KL, top-1 agreement).
    #[arg(long)]
    pub baseline: Option<PathBuf>,
    /// Evaluation text (UTF-8; default: the Brown held-out split of the asset cache,
    /// fetched into the per-user cache if missing).
    #[arg(long)]
    pub text: Option<PathBuf>,
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
    #[command(flatten)]
    pub runtime: super::RuntimeArgs,
}

pub fn run(a: EvalArgs) -> anyhow::Result<()> {
    if a.batch == 0 {
        anyhow::bail!("invalid option --batch: 0; use 1 or more windows per forward");
    }
    if a.max_windows == Some(0) {
        anyhow::bail!("invalid option --max-windows: 0; evaluate at least one window (or leave it out for all)");
    }
    if let Some(j) = &a.json {
        crate::io::atomic::refuse_existing("--json", j)?;
    }
    let text_path = match &a.text {
        Some(t) => t.clone(),
        None => crate::io::assets::default_heldout()?,
    };
    let t0 = std::time::Instant::now();
    let text = read_text(&text_path)?;
    let tok = Tokenizer::for_model(&a.model[0])?;
    let tokens = tok.encode_long(&text)?;
    eprintln!("tokenized {} ({} tokens) in {:.2}s", text_path.display(), tokens.len(), t0.elapsed().as_secs_f64());
    let opts = EvalOptions { ctx: a.ctx, protocol: a.protocol, max_windows: a.max_windows, batch: a.batch };
    // Check the window count before loading anything heavy.
    crate::eval::perplexity::windows(&tokens, a.ctx, a.max_windows)?;
    let t0 = std::time::Instant::now();
    let loader = a.runtime.loader()?;
    let mut models = Vec::new();
    for dir in &a.model {
        models.push(loader.load(dir)?);
    }
    for ((m, _), dir) in models.iter().zip(&a.model) {
        let c = &m.config;
        if a.ctx > c.max_position_embeddings {
            anyhow::bail!(
                "invalid option --ctx: {} is beyond {}'s max_position_embeddings = {}",
                a.ctx,
                dir.display(),
                c.max_position_embeddings
            );
        }
        if c.vocab_size != models[0].0.config.vocab_size {
            anyhow::bail!(
                "{} has vocab_size = {} but {} has {}: models compared on one text need one vocabulary",
                dir.display(),
                c.vocab_size,
                a.model[0].display(),
                models[0].0.config.vocab_size
            );
        }
    }
    eprintln!("loaded {} model(s) in {:.2}s", models.len(), t0.elapsed().as_secs_f64());
    let json = match &a.baseline {
        None => {
            let mut out = Vec::new();
            for ((model, info), dir) in models.iter().zip(&a.model) {
                let r = perplexity(model, &tokens, &opts)?;
                println!("{}", dir.display());
                print!("{}", report::perplexity_table(&r));
                out.push(serde_json::json!({"model": dir, "perplexity": r, "load": info}));
            }
            if out.len() == 1 {
                out.remove(0)
            } else {
                serde_json::Value::Array(out)
            }
        }
        Some(b) => {
            // The reference stays on the CPU whatever --device says.
            let (base, base_info) = crate::model::load::load_model(b)?;
            if base.config.vocab_size != models[0].0.config.vocab_size {
                anyhow::bail!(
                    "invalid option --baseline: {} has vocab_size = {} but {} has {}; a baseline must share the \
                     model's vocabulary (KL and perplexity would compare different tokens)",
                    b.display(),
                    base.config.vocab_size,
                    a.model[0].display(),
                    models[0].0.config.vocab_size
                );
            }
            let refs: Vec<&LlamaModel> = models.iter().map(|(m, _)| m).collect();
            let comps = compare_many(&base, &refs, &tokens, &opts)?;
            let sizes: Vec<report::SizeReport> = models
                .iter()
                .map(|(_, info)| report::SizeReport {
                    bits_per_weight: info.bits_per_weight.unwrap_or(32.0),
                    bytes_on_disk: info.bytes_on_disk,
                    baseline_bytes_on_disk: base_info.bytes_on_disk,
                })
                .collect();
            let names: Vec<String> = a
                .model
                .iter()
                .map(|d| d.file_name().map_or_else(|| d.display().to_string(), |n| n.to_string_lossy().into_owned()))
                .collect();
            let rows: Vec<(String, &crate::eval::ComparisonReport, &report::SizeReport)> =
                names.iter().cloned().zip(comps.iter()).zip(sizes.iter()).map(|((n, c), z)| (n, c, z)).collect();
            print!("{}", report::comparison_rows(&rows));
            let out: Vec<serde_json::Value> = a
                .model
                .iter()
                .zip(&comps)
                .zip(&sizes)
                .zip(&models)
                .map(|(((dir, c), z), (_, info))| serde_json::json!({"model": dir, "comparison": c, "size": z, "load": info}))
                .collect();
            let mut j = serde_json::json!({"baseline": b, "baseline_load": base_info, "models": out});
            if a.model.len() == 1 {
                j = j["models"][0].clone();
            }
            j
        }
    };
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&json)?).map_err(|e| crate::Error::io(p, e))?;
    }
    Ok(())
}
