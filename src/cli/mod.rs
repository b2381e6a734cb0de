//! The `quantize` command line: `quantize [quantize options] MODEL`, and the
//! subcommands `convert`, `eval`.
pub mod eval;
pub mod quantize;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "quantize",
    version,
    about = "Post-training quantization of LLMs on a plain CPU",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub quantize: quantize::QuantizeArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Convert a GGUF file into a Hugging Face LLaMA directory (safetensors, config, tokenizer).
    Convert(ConvertArgs),
    /// Perplexity of a model on a text; with --baseline, the cost of quantization.
    Eval(eval::EvalArgs),
}

#[derive(clap::Args, Debug)]
pub struct ConvertArgs {
    /// Input GGUF file.
    pub gguf: PathBuf,
    /// Output directory (must not exist).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Data type of the written weights.
    #[arg(long, default_value = "f32", value_parser = ["f32", "f16", "bf16"])]
    pub dtype: String,
}

/// Run a parsed command line; `given` tells which quantize flags were typed (see [`quantize::Given`]).
pub fn run(cli: Cli, given: &quantize::Given) -> anyhow::Result<()> {
    match cli.command {
        Some(Command::Convert(a)) => convert(a),
        Some(Command::Eval(a)) => eval::run(a),
        None => quantize::run(cli.quantize, given),
    }
}

fn convert(a: ConvertArgs) -> anyhow::Result<()> {
    use crate::convert::{convert_gguf, OutDType};
    let dtype: OutDType = a.dtype.parse()?;
    let r = convert_gguf(&a.gguf, &a.output, dtype)?;
    eprintln!("converted {} tensors ({} parameters) in {:.1}s", r.tensors, r.params, r.seconds);
    println!("{}", r.output.display());
    Ok(())
}
