//! The `quantize` command line: `quantize [quantize options] MODEL`, and the
//! subcommands `convert`, `eval`, `generate`, `bench`.
pub mod bench;
pub mod eval;
pub mod generate;
pub mod quantize;
pub mod report;

use crate::model::load::LoadInfo;
use crate::model::LlamaModel;
use std::path::Path;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// What each method and GGUF type costs on the default model, as llama-quantize's help
/// lists its types (docs/BENCHMARKS.md has the runs and commands).
const AFTER_HELP: &str = "\
Measured costs on SmolLM2-135M (2-core AMD EPYC; docs/BENCHMARKS.md): perplexity increase
over f32 on Brown held-out (chunks protocol, ctx 512, 40 windows), stored bits per weight
of the quantized linears, wall time with the default 128 x 512 calibration windows
(the gptaq, asym-target, awq, rotate, mixed and w4a8 rows: 2-core Intel Xeon, 2026-12-07).

g128 rows: SmolLM2's 576-wide linears do not hold groups of 128; `*` rows were measured
with a ragged last group (--group-fallback partial, which only this tool reads), the
others with the default fallback (g64 there, as compressed-tensors writes it).

  --method (its defaults)                   scheme          perplexity  bits/w  time
  rtn --sym                                 int8 channel       +0.45%    8.02    2 s
  rtn (asym)                                int4 g128         +25.1%     4.27    2 s
  rtn (asym)                                int3 g128        +236%       3.26    2 s
  fp8                                       E4M3 channel       +2.49%    8.05    2 s
  hqq                                       int4 g128         +34.0%     4.27    7 s
  gptq (asym act-order static-groups mse)   int4 g128         +15.0%     4.27    5 min
  gptq (asym act-order static-groups mse)   int3 g128         +67.3%     3.26    4 min
  gptq --gptaq (GPTAQ, same)                int4 g128         +10.4%     4.27    6 min
  gptq --asym-target (same)                 int4 g128          +9.15%    4.27    7 min
  gptq --fp8-format e4m3                    E4M3 channel       +0.43%    8.05    4 min
  awq (asym, scales from 16 windows)        int4 g128         +14.3%     4.27    5 min
  awq+gptq (asym act-order static-groups mse) int4 g128        +8.34%    4.27   32 min
  awq+gptq (same)                           int3 g128*        +53.4%     3.16   32 min
  awq+gptq --gptaq --awq-search-windows 16  int4 g128          +7.62%    4.27   21 min
  gptq --rotate (QuaRot Hadamard)           int4 g128          +8.69%    4.27    4 min
  gptq --rotate --gptaq                     int4 g128          +8.01%    4.27   10 min
  gptq --rotate                             int3 g128         +44.7%     3.26    6 min
  rtn --rotate (rotation hurts plain RTN)   int4 g128        +116%       4.27    6 s
  gptq --gptaq --rotate --target-bpw 4.5    mixed int3..int8   +7.34%    4.50    9 min
  gptq --gptaq --rotate --scheme w4a8-int8  int4 g128 sym, A8 +12.7%     4.22   10 min

GGUF types (--gguf-type; llama.cpp protocol, ctx 512, 40 windows, f32 38.19, scored by
llama.cpp's llama-perplexity on the exported file; gptq with its GGUF default act-order,
`gptaq` = --gptaq --asym-alpha 1, `target` = --asym-target; 128 x 512 calibration windows,
rtn --imatrix 256):
  Q4_0     rtn +16.5%  rtn --imatrix +8.5%  gptq gptaq +6.3%  target +4.8%  (llama-quantize +imatrix +8.7%)
  Q4_K_M   rtn +4.3%   rtn --imatrix +2.1%  gptq gptaq +1.5%  target +1.8%  (llama-quantize +imatrix +2.0%)
  Q3_K_M   rtn +9.3%   rtn --imatrix +8.1%  gptq gptaq +3.6%                 (llama-quantize +imatrix +7.5%)
  Q2_K     gptq gptaq +9.3%  (llama-quantize +imatrix +14.3%)
  (gptq without asymmetric calibration, our eval: Q4_0 +11.8%; time: gptq 3 min, gptaq or
  target 6-11 min here)
  Scored by this tool's eval as llama.cpp computes the file (same protocol), rtn:
  Q8_0 +0.22% (8.50 bits/w), Q6_K +0.98% (8.02: 576-wide tensors fall back to Q8_0),
  Q5_K_M +0.73% (6.04). The other types are not measured here yet
  (scripts/bench_presets.sh measures them all).

A flag given twice counts once: the last one.";

#[derive(Parser, Debug)]
#[command(
    name = "quantize",
    version,
    about = "Post-training quantization of LLMs on a plain CPU",
    args_conflicts_with_subcommands = true,
    args_override_self = true,
    after_help = AFTER_HELP
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Worker threads (default: one per core, or RAYON_NUM_THREADS). Results do not depend on it.
    #[arg(long, global = true)]
    pub threads: Option<usize>,
    #[command(flatten)]
    pub quantize: quantize::QuantizeArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Convert a GGUF file into a Hugging Face LLaMA directory (safetensors, config, tokenizer).
    #[command(args_override_self = true)]
    Convert(ConvertArgs),
    /// Perplexity of a model on a text; with --baseline, the cost of quantization.
    #[command(args_override_self = true)]
    Eval(eval::EvalArgs),
    /// Generate text from a prompt (or chat) with a dense or quantized model, token by token.
    #[command(args_override_self = true)]
    Generate(generate::GenerateArgs),
    /// Prefill and decode speed (tokens/s), as llama-bench's pp512 / tg128.
    #[command(args_override_self = true)]
    Bench(bench::BenchArgs),
    /// Merge eval reports into one table, and plot perplexity increase against bits/weight.
    #[command(args_override_self = true)]
    Report(report::ReportArgs),
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
    if let Some(n) = cli.threads {
        if n == 0 {
            anyhow::bail!("invalid option --threads: 0; use 1 or more (or leave it out for one per core)");
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .map_err(|e| anyhow::anyhow!("invalid option --threads: {n}: {e}"))?;
    }
    match cli.command {
        Some(Command::Convert(a)) => convert(a),
        Some(Command::Eval(a)) => eval::run(a),
        Some(Command::Generate(a)) => generate::run(a),
        Some(Command::Bench(a)) => bench::run(a),
        Some(Command::Report(a)) => report::run(a),
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

/// How models run in `eval`, `generate` and `bench`: where, and with which arithmetic.
#[derive(clap::Args, Debug, Clone)]
pub struct RuntimeArgs {
    /// Where the quantized linears run: `gpu` uploads their packed weights once and runs
    /// them through the WGSL kernels (adapter from `WGPU_BACKEND` / `QUANTIZE_ADAPTER`);
    /// attention, norms, dense layers and any baseline stay on the CPU.
    #[arg(long, default_value = "cpu", value_parser = ["cpu", "gpu"])]
    pub device: String,
    /// W8A8 checkpoints: round the activations as `vllm` (what serves them) or
    /// `compressed-tensors` (its reference forward in transformers) computes them; they
    /// differ in the last bit of some codes (docs/FORMATS.md).
    #[arg(long, default_value = "vllm", value_parser = ["vllm", "compressed-tensors"])]
    pub act_runtime: String,
    /// How int4/int8 linears multiply on the CPU: `exact` = f32 products with the
    /// dequantized weights (the dequantized model's numbers); `int8` = inputs rounded to
    /// int8 per block of 32 (llama.cpp's Q8_0 blocks) times the integer codes, as llama.cpp
    /// computes its Q4_0/Q8_0 files: faster decoding for a small perplexity cost
    /// (docs/BENCHMARKS.md). Linears with act-order, or inputs or groups not a multiple
    /// of 64, stay exact.
    #[arg(long, default_value = "exact", value_parser = ["exact", "int8"])]
    pub dot: String,
}

impl RuntimeArgs {
    /// The loader these options describe (errors name the option at fault).
    pub(crate) fn loader(&self) -> anyhow::Result<ModelLoader> {
        let int8_dot = self.dot == "int8";
        if int8_dot && self.device != "cpu" {
            anyhow::bail!(
                "invalid option --dot int8 with --device {}: the int8 kernels are the CPU's; use --device cpu",
                self.device
            );
        }
        let mut l = ModelLoader::new(&self.device)?.with_act_runtime(self.act_runtime.parse()?);
        l.int8_dot = int8_dot;
        Ok(l)
    }
}

/// Loads models for one run on `--device`: the GPU context, when asked for, is created
/// once and shared by every model.
pub(crate) struct ModelLoader {
    #[cfg(feature = "gpu")]
    gpu: Option<std::sync::Arc<crate::gpu::GpuContext>>,
    /// Whose rounding W8A8 activations get (`--act-runtime`).
    act_runtime: crate::format::activation::ActRuntime,
    /// `--dot int8`: the quantized CPU linears take int8-rounded inputs.
    int8_dot: bool,
}

impl ModelLoader {
    pub(crate) fn new(device: &str) -> anyhow::Result<Self> {
        match device {
            "cpu" => Ok(Self {
                #[cfg(feature = "gpu")]
                gpu: None,
                act_runtime: Default::default(),
                int8_dot: false,
            }),
            #[cfg(feature = "gpu")]
            _ => {
                let ctx = crate::gpu::GpuContext::from_env()?;
                eprintln!("device: {}", ctx.describe());
                if ctx.is_software() {
                    eprintln!(
                        "warning: --device gpu: {} is a software rasterizer on the CPU (no GPU was found); \
                         results are correct but slower than --device cpu",
                        ctx.describe()
                    );
                }
                Ok(Self { gpu: Some(ctx), act_runtime: Default::default(), int8_dot: false })
            }
            #[cfg(not(feature = "gpu"))]
            other => anyhow::bail!("invalid option --device: {other}; this build has no GPU support (feature `gpu`)"),
        }
    }

    /// Activations of W8A8 checkpoints rounded as `rt` rounds them.
    pub(crate) fn with_act_runtime(mut self, rt: crate::format::activation::ActRuntime) -> Self {
        self.act_runtime = rt;
        self
    }

    pub(crate) fn load(&self, dir: &Path) -> anyhow::Result<(LlamaModel, LoadInfo)> {
        #[cfg(feature = "gpu")]
        if let Some(ctx) = &self.gpu {
            if crate::io::tokenizer::is_gguf(dir) {
                anyhow::bail!(
                    "{}: a GGUF file runs as llama.cpp's CPU backend computes it: use --device cpu",
                    dir.display()
                );
            }
            let factory = crate::gpu::quantized_factory(ctx.clone(), crate::gpu::Precision::F32);
            return Ok(crate::model::load::load_model_as(dir, &factory, self.act_runtime)?);
        }
        if crate::io::tokenizer::is_gguf(dir) {
            if self.int8_dot {
                anyhow::bail!(
                    "invalid option --dot int8 for {}: a GGUF file already runs with llama.cpp's input rounding",
                    dir.display()
                );
            }
            return Ok(crate::model::load::load_model(dir)?);
        }
        let factory: &crate::model::load::QuantizedFactory = if self.int8_dot {
            &crate::model::load::cpu_quantized_linear_int8_dot
        } else {
            &crate::model::load::cpu_quantized_linear
        };
        let (model, mut info) = crate::model::load::load_model_as(dir, factory, self.act_runtime)?;
        if self.int8_dot && info.quantized_linears > 0 {
            info.dot = Some("int8".into());
        }
        Ok((model, info))
    }
}
