//! `quantize bench`: prefill and decode tokens/s of a model directory.

use crate::generate::bench::{prompt_processing, token_generation, BenchResult};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Model directories (dense or quantized); each is measured in turn.
    #[arg(long, required = true, num_args = 1..)]
    pub model: Vec<PathBuf>,
    /// Prompt tokens run in one forward (llama-bench `-p`; 0 skips the test).
    #[arg(short = 'p', long, default_value_t = 512)]
    pub prompt: usize,
    /// Tokens generated one at a time (llama-bench `-n`; 0 skips the test).
    #[arg(short = 'n', long, default_value_t = 128)]
    pub generate: usize,
    /// Repetitions of each test (after one warm-up run).
    #[arg(short = 'r', long, default_value_t = 5)]
    pub repetitions: usize,
    #[command(flatten)]
    pub runtime: super::RuntimeArgs,
    /// Also write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

pub fn run(a: BenchArgs) -> anyhow::Result<()> {
    if a.repetitions == 0 {
        anyhow::bail!("invalid option --repetitions: 0; run each test at least once");
    }
    if let Some(j) = a.json.as_ref().filter(|j| j.exists()) {
        anyhow::bail!("invalid option --json: {} already exists (choose another name or remove it)", j.display());
    }
    let loader = a.runtime.loader()?;
    let threads = rayon::current_num_threads();
    println!("| model | format | bits/weight | size | threads | test | t/s | median t/s |");
    println!("|---|---|---:|---:|---:|---|---:|---:|");
    let mut all = Vec::new();
    for dir in &a.model {
        let (model, info) = loader.load(dir)?;
        let max_pos = model.config.max_position_embeddings;
        for n in [a.prompt, a.generate] {
            if n > max_pos {
                anyhow::bail!(
                    "a test of {n} tokens is longer than {}'s max_position_embeddings = {max_pos}",
                    dir.display()
                );
            }
        }
        let mut results: Vec<BenchResult> = Vec::new();
        if a.prompt > 0 {
            results.push(prompt_processing(&model, a.prompt, a.repetitions)?);
        }
        if a.generate > 0 {
            results.push(token_generation(&model, a.generate, a.repetitions)?);
        }
        for r in &results {
            println!(
                "| {} | {} | {:.2} | {:.1} MiB | {threads} | {} | {:.2} ± {:.2} | {:.2} |",
                dir.display(),
                info.format.as_deref().unwrap_or("dense"),
                info.bits_per_weight.unwrap_or(32.0),
                info.resident_weight_bytes as f64 / (1 << 20) as f64,
                r.test,
                r.mean(),
                r.std(),
                r.median()
            );
        }
        all.push(
            serde_json::json!({"model": dir, "load": info, "threads": threads, "device": a.runtime.device, "dot": a.runtime.dot, "results": results}),
        );
    }
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&all)?).map_err(|e| crate::Error::io(p, e))?;
    }
    Ok(())
}
