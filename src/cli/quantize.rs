//! `quantize [OPTIONS] MODEL`: quantize a model's block linears and write a checkpoint.

use crate::calib::dataset::sample_windows;
use crate::calib::runner::RunnerOptions;
use crate::error::Error;
use crate::format::QuantScheme;
use crate::io::checkpoint::{write_quantized_checkpoint_with, CheckpointFormat};
use crate::io::safetensors::SafetensorsStore;
use crate::io::tokenizer::{read_text, Tokenizer};
use crate::model::LlamaConfig;
use crate::quant::awq::{clip::AwqClip, quantize_awq_model, AwqOptions};
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
    /// AWQ: activation-aware channel scales folded into the norms/linears before, then RTN.
    Awq,
    /// AWQ scales and clipping, then GPTQ on the scaled weights.
    #[value(name = "awq+gptq")]
    AwqGptq,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Rtn => "rtn",
            Method::Fp8 => "fp8",
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
    /// FP8 weights: the format for --method fp8 (default e4m3); with --method gptq, GPTQ
    /// onto the FP8 grid (per channel, or --per-tensor) instead of integers.
    #[arg(long, value_parser = ["e4m3", "e5m2"])]
    pub fp8_format: Option<String>,
    /// Checkpoint layout; default gptq for integers, compressed-tensors for FP8.
    #[arg(long, value_parser = ["gptq", "compressed-tensors", "awq"])]
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
    /// GPTQ: after the sweep, refit each group's scale by least squares against the
    /// Hessian (codes and zero points fixed); lowers every layer's calibration error and,
    /// on SmolLM2 int4 g128, perplexity, but not KL to the baseline (docs/BENCHMARKS.md).
    #[arg(long)]
    pub refit_scales: bool,
    /// AWQ: points of the alpha grid (alpha = i / N, i = 0 .. N).
    #[arg(long, default_value_t = 20)]
    pub awq_grid: usize,
    /// AWQ: AutoAWQ's duo scaling, s = mean|x|^a / mean|w|^(1-a).
    #[arg(long)]
    pub awq_duo_scaling: bool,
    /// AWQ: skip the clipping search (awq+gptq skips it unless --awq-clip is given).
    #[arg(long, conflicts_with = "awq_clip")]
    pub awq_no_clip: bool,
    /// AWQ+GPTQ: run AWQ's clipping search before GPTQ too. Off by default: the clip
    /// is fitted for RTN and moves the weights GPTQ then targets (int3 g128 measured
    /// +82% with it, +58% without); GPTQ's `--mse` clips inside its own objective.
    #[arg(long)]
    pub awq_clip: bool,
    /// AWQ: tokens sampled for the clipping search (AutoAWQ: 512).
    #[arg(long, default_value_t = 4096)]
    pub awq_clip_tokens: usize,
    /// AWQ: clip as AutoAWQ does, `[-m, m]` only (no proportional `[p·min, p·max]`
    /// ranges for asymmetric schemes).
    #[arg(long)]
    pub awq_clip_symmetric: bool,
    /// AWQ: search the scales on the first N calibration windows only (default: all).
    #[arg(long)]
    pub awq_search_windows: Option<usize>,
    /// AWQ+GPTQ: score the alpha grid with RTN's weights, as AutoAWQ does (default:
    /// with GPTQ's, the quantizer that will run; int3 g128 +53.4% vs +58.1%, search
    /// time 1.4x).
    #[arg(long)]
    pub awq_rtn_search: bool,
    /// Calibration windows per forward chunk (memory vs speed).
    #[arg(long, default_value_t = 8)]
    pub chunk_windows: usize,
    /// Print every layer's loss as it is quantized.
    #[arg(long, short)]
    pub verbose: bool,
    /// Write the quantization report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// W8A8 (weights and activations in 8 bits, compressed-tensors as vLLM loads it):
    /// w8a8-int8 = INT8 per-channel symmetric weights + INT8 activations, w8a8-fp8 = FP8
    /// E4M3 per-channel weights + FP8 E4M3 activations. Fixes --bits/--group-size.
    #[arg(long = "scheme", value_parser = ["w8a8-int8", "w8a8-fp8"])]
    pub w8a8: Option<String>,
    /// W8A8: activation scales per token, computed at run time (the default).
    #[arg(long, conflicts_with = "static_act")]
    pub dynamic: bool,
    /// W8A8: one calibrated activation scale per tensor (from --calib, or --load-stats).
    #[arg(long = "static")]
    pub static_act: bool,
    /// W8A8 --static: clipping range of the activation scales from each site's histogram.
    #[arg(long, default_value = "minmax", value_parser = ["minmax", "percentile", "mse"])]
    pub act_calib: String,
    /// W8A8 --act-calib percentile: percentage of the values kept inside the range.
    #[arg(long, default_value_t = 99.99)]
    pub act_percentile: f64,
    /// W8A8 int8: asymmetric activations (a zero point per tensor or per token).
    #[arg(long)]
    pub act_asym: bool,
    /// W8A8 --static: save the calibration statistics (histograms) to this file.
    #[arg(long)]
    pub save_stats: Option<PathBuf>,
    /// W8A8 --static: take the statistics from a --save-stats file instead of calibrating.
    #[arg(long, conflicts_with = "save_stats")]
    pub load_stats: Option<PathBuf>,
    /// W8A8: SmoothQuant migration strength alpha (default 0.8 for w8a8-int8 with RTN
    /// weights, none otherwise; 0 disables). Needs calibration windows, even with --dynamic.
    #[arg(long)]
    pub smooth: Option<f32>,
}

impl QuantizeArgs {
    /// The options as recorded in the checkpoint: everything that shapes the result,
    /// nothing that names where it was written (so reruns give identical bytes).
    pub fn options_record(&self) -> String {
        let mut a = self.clone();
        a.model = None;
        a.output = None;
        a.json = None;
        a.verbose = false;
        (a.save_stats, a.load_stats) = (None, None);
        format!("{a:?}")
    }

    pub fn scheme(&self) -> crate::Result<QuantScheme> {
        let fp8 = match (self.method, self.fp8_format.as_deref()) {
            (Method::Fp8, f) | (Method::Gptq, f @ Some(_)) => Some(f.unwrap_or("e4m3")),
            (m, Some(f)) => {
                return Err(Error::option(
                    "--fp8-format",
                    format!("{f} goes with --method fp8 or gptq, not {}", m.name()),
                ))
            }
            (_, None) => None,
        };
        let mut s = match fp8 {
            Some("e5m2") => QuantScheme::fp8_e5m2(),
            Some(_) => QuantScheme::fp8_e4m3(),
            None => QuantScheme::int(self.bits)?,
        };
        if self.per_tensor {
            s = s.per_tensor();
        } else if self.per_channel || self.group_size == -1 || s.is_fp8() {
            s = s.per_channel();
        } else if self.group_size <= 0 {
            return Err(Error::option(
                "--group-size",
                format!("{} is not valid; use a positive group size or -1 for per-channel", self.group_size),
            ));
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
    Err(Error::option(
        "MODEL",
        format!("{} is neither a model directory nor an existing .safetensors file", model.display()),
    ))
}

fn default_calib() -> PathBuf {
    let root = std::env::var_os("QUANTIZE_ASSETS").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(".cache/assets"));
    root.join("brown/brown_calib.txt")
}

/// GPTQ's options from the command line (shared by GPTQ, awq+gptq and W8A8 GPTQ).
fn gptq_options(a: &QuantizeArgs) -> GptqOptions {
    GptqOptions {
        block_size: a.block_size,
        damp: a.damp,
        act_order: a.act_order,
        static_groups: a.static_groups,
        mse: a.mse,
        refit_scales: a.refit_scales,
    }
}

/// The calibration windows of `--calib` (default: the Brown calibration split), tokenized
/// with the model's tokenizer and drawn as `--nsamples`, `--seqlen`, `--seed` say. A text
/// too short for one window is an error naming the files.
fn calibration_windows(a: &QuantizeArgs, dir: &Path, label: &str) -> crate::Result<Vec<Vec<u32>>> {
    let files = if a.calib.is_empty() { vec![default_calib()] } else { a.calib.clone() };
    let names = files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", ");
    let tok = Tokenizer::from_file(&dir.join("tokenizer.json"))?;
    let mut tokens = Vec::new();
    for f in &files {
        tokens.extend(tok.encode(&read_text(f)?)?);
    }
    eprintln!("{label}: {} windows x {} tokens from {names}", a.nsamples, a.seqlen);
    sample_windows(&tokens, a.nsamples, a.seqlen, a.seed).map_err(|e| match e {
        crate::Error::InvalidOption { option, msg } if option == "--calib" => {
            crate::Error::option("--calib", format!("{names}: {msg}"))
        }
        e => e,
    })
}

pub fn run(a: QuantizeArgs) -> anyhow::Result<()> {
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
    if let Some(w8a8) = &a.w8a8 {
        return run_w8a8(&a, model, w8a8);
    }
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
    let method_name = a.method.name().to_string();
    let out = a.output.clone().unwrap_or_else(|| {
        let stem = dir
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "model".into());
        dir.canonicalize().unwrap_or(dir.clone()).with_file_name(format!("{stem}-{method_name}-{scheme}"))
    });
    if out.exists() {
        Err(Error::OutputExists { path: out.clone() })?;
    }
    let cfg = LlamaConfig::from_file(&dir.join("config.json"))?;
    if format == CheckpointFormat::Awq {
        // Refuse an unstorable scheme before a long run, not after it.
        for (name, o, i) in crate::quant::pipeline::block_linears(&cfg) {
            crate::format::awq::check_shape(&name, scheme, o, i)?;
        }
    }
    let store = SafetensorsStore::open(&dir)?;
    let clip = a.mse.then(ClipSearch::default);
    let calib_windows = || calibration_windows(&a, &dir, &format!("{method_name} {scheme}"));
    let gptq_opts = gptq_options(&a);
    // AWQ also replaces dense tensors (the norms its scales were folded into) and
    // reports per scale group: both ride along in `dense` / `extra_json`.
    let mut dense = BTreeMap::new();
    let mut extra_json = None;
    let (tensors, report): (_, QuantizeReport) = match a.method {
        Method::Rtn | Method::Fp8 => quantize_rtn_model(&cfg, &store, scheme, clip, a.include_head)?,
        Method::Gptq => quantize_gptq_model(
            &cfg,
            &store,
            &calib_windows()?,
            scheme,
            gptq_opts,
            RunnerOptions { chunk_windows: a.chunk_windows, progress: true },
            a.verbose,
        )?,
        Method::Awq | Method::AwqGptq => {
            if a.awq_clip_tokens == 0 {
                Err(Error::option("--awq-clip-tokens", "0: the clipping search needs at least one token"))?;
            }
            let opts = AwqOptions {
                grid: a.awq_grid,
                duo_scaling: a.awq_duo_scaling,
                clip: (!a.awq_no_clip && (a.method == Method::Awq || a.awq_clip)).then_some(AwqClip {
                    tokens: a.awq_clip_tokens,
                    proportional: !a.awq_clip_symmetric,
                    ..AwqClip::default()
                }),
                gptq: (a.method == Method::AwqGptq).then_some(gptq_opts),
                gptq_search: !a.awq_rtn_search,
                search_windows: a.awq_search_windows,
                chunk_windows: a.chunk_windows,
                progress: true,
                verbose: a.verbose,
            };
            let out = quantize_awq_model(&cfg, &store, &calib_windows()?, scheme, opts)?;
            let t = &out.report.awq_timings;
            eprintln!("{method_name}: load {:.1}s, calibration {:.1}s, search {:.1}s, clip {:.1}s, quantize {:.1}s; peak RSS {}", t.load, t.calibration, t.search, t.clip, t.quantize, out.report.peak_rss_bytes.map_or("unknown".into(), |b| format!("{:.0} MiB", b as f64 / (1 << 20) as f64)));
            dense = out.dense;
            extra_json = Some(serde_json::to_value(&out.report)?);
            (out.tensors, out.report.base)
        }
    };
    let mut meta = BTreeMap::new();
    meta.insert("quantize_method".to_string(), method_name.clone());
    meta.insert("quantize_scheme".to_string(), scheme.to_string());
    meta.insert("quantize_options".to_string(), a.options_record());
    write_quantized_checkpoint_with(&dir, &out, &tensors, &dense, format, &meta)?;
    let loss: f64 = report.layers.iter().map(|l| l.loss).sum();
    eprintln!(
        "{method_name} {scheme}: {} linears in {:.1}s (total loss {loss:.3}); wrote {} ({})",
        report.layers.len(),
        report.seconds,
        out.display(),
        format.as_str()
    );
    if let Some(p) = &a.json {
        let json = match extra_json {
            Some(v) => v,
            None => serde_json::to_value(&report)?,
        };
        std::fs::write(p, serde_json::to_string_pretty(&json)?).map_err(|e| Error::io(p, e))?;
    }
    println!("{}", out.display());
    Ok(())
}

/// `--scheme w8a8-int8|w8a8-fp8`: 8-bit weights (RTN, optionally smoothed, or GPTQ) and
/// 8-bit activations, dynamic per token or static per tensor (calibrated, or from --load-stats).
fn run_w8a8(a: &QuantizeArgs, model: &Path, name: &str) -> anyhow::Result<()> {
    use crate::calib::stats_file::CalibStats;
    use crate::format::activation::ActScheme;
    use crate::io::checkpoint::{write_activation_checkpoint, ActivationWrite};
    use crate::quant::activation::pass::{quantize_w8a8_rtn, W8a8Options, W8a8Source};
    use crate::quant::activation::{quantize_static_runner, ActCalib};
    use crate::quant::pipeline::GptqSiteQuantizer;
    let t0 = std::time::Instant::now();
    let fp8 = name == "w8a8-fp8";
    let dynamic = !a.static_act;
    let gptq = a.method == Method::Gptq;
    let wscheme = if fp8 { QuantScheme::fp8_e4m3() } else { QuantScheme::int(8)? };
    let wscheme = if a.per_tensor { wscheme.per_tensor() } else { wscheme.per_channel() };
    let act = if fp8 { ActScheme::fp8_e4m3(dynamic) } else { ActScheme::int8(!a.act_asym, dynamic) };
    // SmoothQuant by default for INT8 with RTN weights (alpha 0.8, see --smooth).
    let smooth = match a.smooth {
        Some(x) if x <= 0.0 => None,
        Some(x) => Some(x),
        None if !fp8 && !gptq => Some(0.8),
        None => None,
    };
    let bad = |o: &str, m: String| -> anyhow::Result<()> { Err(Error::option(o, m).into()) };
    if a.asym {
        return bad(
            "--asym",
            format!("{name}: vLLM runs W8A8 with symmetric weights only (use --act-asym for asymmetric activations)"),
        );
    }
    if fp8 && a.act_asym {
        return bad("--act-asym", "FP8 activations are symmetric".into());
    }
    let method_ok = matches!(a.method, Method::Rtn | Method::Fp8) || (gptq && !fp8);
    if !method_ok {
        return bad("--method", format!("{} with {name}: use rtn (or gptq with w8a8-int8)", a.method.name()));
    }
    if smooth.is_some_and(|x| x > 1.0) {
        return bad("--smooth", format!("{smooth:?}: the migration strength is in (0, 1]"));
    }
    if gptq && (smooth.is_some() || a.save_stats.is_some() || a.load_stats.is_some()) {
        return bad("--method gptq", "smoothing and --save-stats/--load-stats go with --method rtn".into());
    }
    if a.format.as_deref().is_some_and(|f| f != "compressed-tensors") {
        return bad("--format", format!("{name} is written as compressed-tensors only"));
    }
    if a.save_stats.is_some() && dynamic && smooth.is_none() {
        return bad("--save-stats", "dynamic activations without smoothing gather no statistics".into());
    }
    if let Some(p) = a.save_stats.as_ref().filter(|p| p.exists()) {
        Err(Error::OutputExists { path: p.clone() })?;
    }
    let calib = ActCalib::parse(&a.act_calib, a.act_percentile)?;
    let dir = model_dir(model)?;
    let method = if gptq { "gptq" } else { "rtn" };
    let tag = match (dynamic, smooth) {
        (true, _) => "dynamic".to_string(),
        (false, _) => format!("static-{}", calib.name()),
    } + &smooth.map_or(String::new(), |x| format!("-smooth{x}"));
    let out = a.output.clone().unwrap_or_else(|| {
        let stem = dir
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "model".into());
        dir.canonicalize().unwrap_or(dir.clone()).with_file_name(format!("{stem}-{method}-{name}-{tag}"))
    });
    if out.exists() {
        Err(Error::OutputExists { path: out.clone() })?;
    }
    let cfg = LlamaConfig::from_file(&dir.join("config.json"))?;
    let store = SafetensorsStore::open(&dir)?;
    let files = if a.calib.is_empty() { vec![default_calib()] } else { a.calib.clone() };
    let windows = || calibration_windows(a, &dir, &format!("{method} {name}"));
    let gptq_opts = gptq_options(a);
    let runner = RunnerOptions { chunk_windows: a.chunk_windows, progress: true };
    let text = serde_json::json!({"calib": files, "nsamples": a.nsamples, "seqlen": a.seqlen, "seed": a.seed});
    let mut calibration = text.clone();
    let (tensors, params, dense, layers, timings, tokens) = if gptq {
        let mut q = GptqSiteQuantizer { scheme: wscheme, opts: gptq_opts, layers: vec![], verbose: a.verbose };
        if dynamic {
            let (t, r) = quantize_gptq_model(&cfg, &store, &windows()?, wscheme, gptq_opts, runner, a.verbose)?;
            (t, BTreeMap::new(), BTreeMap::new(), r.layers, r.timings, r.calibration_tokens)
        } else {
            let (t, p, timings, tokens) =
                quantize_static_runner(&cfg, &store, &windows()?, runner, &mut q, act, calib)?;
            (t, p, BTreeMap::new(), q.layers, timings, tokens)
        }
    } else {
        let opts = W8a8Options {
            weights: wscheme,
            clip: a.mse.then(ClipSearch::default),
            act,
            calib,
            smooth,
            chunk_windows: a.chunk_windows,
            progress: true,
        };
        let (loaded, calibrated);
        let source = match &a.load_stats {
            Some(p) => {
                loaded = CalibStats::load(p)?;
                calibration = serde_json::to_value(&loaded.meta)?;
                eprintln!("{method} {name}: statistics from {} ({calibration})", p.display());
                W8a8Source::Stats(&loaded, p)
            }
            None if dynamic && smooth.is_none() => W8a8Source::None,
            None => {
                calibrated = windows()?;
                W8a8Source::Windows(&calibrated)
            }
        };
        let mut o = quantize_w8a8_rtn(&cfg, &store, source, opts)?;
        if a.load_stats.is_none() {
            o.stats.meta.extend(text.as_object().into_iter().flatten().map(|(k, v)| (k.clone(), v.clone())));
            calibration = serde_json::to_value(&o.stats.meta)?;
        }
        if let Some(p) = &a.save_stats {
            o.stats.save(p)?;
            eprintln!("{method} {name}: statistics saved to {}", p.display());
        }
        (o.tensors, o.params, o.dense, o.layers, o.timings, o.tokens)
    };
    let mut meta = BTreeMap::new();
    meta.insert("quantize_method".to_string(), method.to_string());
    meta.insert(
        "quantize_scheme".to_string(),
        format!("{name}: weights {wscheme}, activations {act}, smoothing {smooth:?}"),
    );
    meta.insert("quantize_options".to_string(), a.options_record());
    if !dynamic || smooth.is_some() {
        meta.insert("quantize_calibration".to_string(), format!("activations {calib:?}; statistics {calibration}"));
    }
    write_activation_checkpoint(
        &dir,
        &out,
        &tensors,
        &dense,
        &ActivationWrite { scheme: act, observer: calib.name(), params: &params },
        &meta,
    )?;
    let report = QuantizeReport {
        method: method.into(),
        scheme: format!("{wscheme} + {act}"),
        layers,
        timings,
        calibration_tokens: tokens,
        seconds: t0.elapsed().as_secs_f64(),
    };
    eprintln!("{method} {name} (weights {wscheme}, activations {act}, smoothing {smooth:?}): {} linears in {:.1}s; wrote {} (compressed-tensors)", report.layers.len(), report.seconds, out.display());
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&report)?).map_err(|e| Error::io(p, e))?;
    }
    println!("{}", out.display());
    Ok(())
}
