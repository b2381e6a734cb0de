//! A whole run from a resolved [`Recipe`]: calibration windows (or a statistics file),
//! the block driver, the checkpoint with its `recipe.toml`, and the report.

use super::driver::{self, DriverOptions, Source};
use super::gguf_export::GgufExport;
use super::recipe::{CalibrationSpec, ModifierSpec, Recipe};
use crate::calib::dataset::sample_windows;
use crate::calib::stats_file::CalibStats;
use crate::error::{Error, Result};
use crate::format::kv_cache;
use crate::io::checkpoint::{ActivationSpec, CheckpointFormat, CheckpointWriter};
use crate::io::safetensors::SafetensorsStore;
use crate::io::tokenizer::{read_text, Tokenizer};
use crate::model::llama::{load_norm, stored_norm};
use crate::model::LlamaConfig;
use crate::quant::rotation::ModelRotation;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// How a run reports and which statistics files it reads or writes (nothing here
/// changes the checkpoint's bytes).
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    pub progress: bool,
    pub verbose: bool,
    /// Save the calibration statistics (ranges, histograms) here.
    pub save_stats: Option<PathBuf>,
    /// Take the statistics from a saved file instead of calibrating.
    pub load_stats: Option<PathBuf>,
    /// Largest shard of the output (and so the most output bytes held in memory).
    pub max_shard_bytes: usize,
}

/// The calibration windows of `spec`, tokenized with the model's tokenizer. A text too
/// short for one window is an error naming the files.
pub fn calibration_windows(
    spec: &CalibrationSpec,
    dir: &Path,
    label: &str,
    vocab_size: usize,
) -> Result<Vec<Vec<u32>>> {
    let names = spec.files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", ");
    let path = dir.join("tokenizer.json");
    let tok = Tokenizer::from_file(&path)?;
    if tok.vocab_size() > vocab_size {
        return Err(Error::format(
            &path,
            format!(
                "{} tokens, but config.json has vocab_size = {vocab_size}: the tokenizer is not this model's",
                tok.vocab_size()
            ),
        ));
    }
    let bytes: u64 = spec.files.iter().filter_map(|f| std::fs::metadata(f).ok()).map(|m| m.len()).sum();
    eprintln!("{label}: tokenizing {names} ({:.1} MB)", bytes as f64 / 1e6);
    let mut tokens = Vec::new();
    for f in &spec.files {
        tokens.extend(tok.encode_long(&read_text(f)?)?);
    }
    eprintln!("{label}: {} windows x {} tokens from {names}", spec.nsamples, spec.seqlen);
    sample_windows(&tokens, spec.nsamples, spec.seqlen, spec.seed).map_err(|e| match e {
        Error::InvalidOption { option, msg } if option == "--calib" => {
            Error::option("--calib", format!("{names}: {msg}"))
        }
        e => e,
    })
}

/// What the statistics depend on besides the text: a file is reused only when these match.
fn stats_key(recipe: &Recipe) -> Result<BTreeMap<String, Value>> {
    let clip = recipe.modifiers.iter().any(|m| matches!(m, ModifierSpec::Rtn { mse: true, .. }));
    let smooth = recipe.modifiers.iter().find_map(|m| match m {
        ModifierSpec::Smoothquant { alpha } => Some(*alpha),
        _ => None,
    });
    let mut key = BTreeMap::from([
        ("weights".to_string(), json!(recipe.weight_scheme()?.to_string())),
        ("weights_clip".to_string(), json!(clip)),
        ("smooth".to_string(), json!(smooth)),
    ]);
    // Statistics of a rotated model are of its rotated sites (the key only when rotated,
    // so files and checkpoints of unrotated runs keep their bytes).
    if let Some(ModifierSpec::Rotate { kind, seed }) = recipe.modifiers.iter().find(|m| m.name() == "rotate") {
        key.insert("rotation".to_string(), json!({"kind": kind, "seed": seed}));
    }
    Ok(key)
}

/// Every quantized linear against what `format`'s loaders accept ([`crate::format::rules`]),
/// before any work; AutoAWQ's config holds one scheme, so awq also needs them all equal.
fn check_consumer_rules(
    cfg: &LlamaConfig,
    schemes: &super::SchemePolicy,
    format: CheckpointFormat,
    fallback: super::GroupFallback,
    include_head: bool,
    g_idx: bool,
) -> Result<()> {
    let mut linears = crate::model::llama::block_linears(cfg);
    if include_head {
        linears.push(("lm_head".into(), cfg.vocab_size, cfg.hidden_size));
    }
    let partial = fallback == super::GroupFallback::Partial;
    let mut ragged: BTreeMap<(usize, usize), usize> = BTreeMap::new();
    let mut first: Option<(String, crate::format::QuantScheme)> = None;
    for (name, rows, cols) in linears {
        let Some(scheme) = schemes.scheme_for(&name) else { continue };
        crate::format::rules::check_linear(format, &name, scheme, rows, cols, partial)?;
        if g_idx
            && format == CheckpointFormat::CompressedTensors
            && matches!(scheme.granularity, crate::format::Granularity::Group(_))
        {
            return Err(Error::option(
                "--no-static-groups",
                format!(
                    "GPTQ act-order without static groups stores a g_idx per column ({name} is {scheme}), which \
                     compressed-tensors 0.19 removed (actorder \"group\"; transformers, vLLM and llm-compressor \
                     refuse it): keep --static-groups (the default: act-order with plain groups), or --format gptq \
                     (desc_act with g_idx)"
                ),
            ));
        }
        if let crate::format::Granularity::Group(g) = scheme.granularity {
            if !cols.is_multiple_of(g) {
                *ragged.entry((g, cols)).or_default() += 1;
            }
        }
        match &first {
            None => first = Some((name, scheme)),
            Some((n0, s0)) if format == CheckpointFormat::Awq && *s0 != scheme => {
                return Err(Error::tensor(
                    &name,
                    format!(
                        "is {scheme} but {n0} is {s0}: AutoAWQ's config holds one scheme for every linear \
                         (use one --group-size that divides every width, or --format compressed-tensors / gptq, \
                         which write per-module overrides)"
                    ),
                ));
            }
            _ => {}
        }
    }
    for ((g, cols), n) in ragged {
        eprintln!(
            "warning: group size {g} does not divide {cols} columns ({n} linears): their last group holds {} \
             columns (group_fallback = \"partial\"); only this tool reads such checkpoints, compressed-tensors, \
             vLLM and Marlin refuse them",
            cols % g
        );
    }
    Ok(())
}

/// Peak resident set size from `/proc/self/status`.
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kb| kb * 1024)
}

/// Run `recipe` (resolved) on the model in `dir`, writing the checkpoint to `out`.
/// Returns the report (JSON: method, scheme, every layer's loss, timings, transforms' reports).
pub fn run_recipe(recipe: &Recipe, dir: &Path, out: &Path, opts: &RunOptions) -> Result<Value> {
    let t0 = Instant::now();
    let mut recipe = recipe.clone();
    // The default text is looked for only when a text will be read.
    let reads_text = opts.load_stats.is_none() && (recipe.needs_calibration() || opts.save_stats.is_some());
    if let Some(c) = recipe.calibration.as_mut().filter(|c| reads_text && c.files.is_empty()) {
        c.files = vec![crate::io::assets::default_calib()?];
    }
    let recipe = recipe.resolve()?;
    // The output location is checked before any work (a run can take many minutes).
    crate::io::atomic::probe_output(out)?;
    let scheme = recipe.weight_scheme()?;
    let format = recipe.checkpoint_format()?;
    let method = recipe.method_name();
    let label = format!("{method} {}", recipe.scheme_name()?);
    let cfg = LlamaConfig::from_file(&dir.join("config.json"))?;
    if let Some(p) = &opts.save_stats {
        crate::io::atomic::probe_output(p)?;
    }
    if let Some(c) = recipe.calibration.as_ref().filter(|c| c.seqlen > cfg.max_position_embeddings) {
        return Err(Error::option(
            "--seqlen",
            format!(
                "{} is beyond the model's max_position_embeddings = {} (calibration.seqlen in a recipe)",
                c.seqlen, cfg.max_position_embeddings
            ),
        ));
    }
    let store = SafetensorsStore::open(dir)?;
    crate::model::llama::check_store(&cfg, &store)?;
    // Mixed precision: measure on the first calibration windows (the same text, seed and
    // draws as the run's, so they are tokenized once), then run the recipe with the chosen
    // schemes as overrides.
    let mut tokenized = None;
    let allocation = match (&recipe.budget, &recipe.calibration) {
        (Some(_), Some(c)) => {
            let w: &Vec<Vec<u32>> = tokenized.insert(calibration_windows(c, dir, &label, cfg.vocab_size)?);
            Some(super::budget::allocate_to_budget(&recipe, w, &cfg, &store, opts)?)
        }
        _ => None,
    };
    let recipe = allocation.as_ref().map_or(recipe, |a| a.recipe.clone());
    let mut mods = recipe.build(&cfg)?;
    if let Some(r) = mods.rotation.as_ref().filter(|_| opts.progress) {
        eprintln!("{label}: {}", r.describe());
    }
    // GPTQ act-order without static groups stores a g_idx per column.
    let g_idx = recipe.weights()?.gptq_options().is_some_and(|g| g.act_order && !g.static_groups);
    check_consumer_rules(&cfg, &mods.schemes, format, recipe.group_fallback()?, recipe.include_head, g_idx)?;
    let quantizes_any =
        crate::model::llama::block_linears(&cfg).iter().any(|(n, ..)| mods.schemes.scheme_for(n).is_some())
            || (recipe.include_head && mods.schemes.scheme_for("lm_head").is_some());
    if !quantizes_any && mods.rotation.is_none() {
        return Err(Error::option("ignore", "every linear is ignored: there is nothing to quantize"));
    }
    let key = stats_key(&recipe)?;
    let (loaded, windows);
    let mut calibration = Value::Null;
    let source = match (&opts.load_stats, &recipe.calibration) {
        (Some(p), _) => {
            loaded = CalibStats::load(p)?;
            loaded.check_model(&cfg, p)?;
            for (k, want) in &key {
                let got = loaded.meta.get(k).cloned().unwrap_or(Value::Null);
                if &got != want {
                    return Err(Error::format(
                        p,
                        format!("statistics taken with {k} = {got}, but this run has {k} = {want}; calibrate again"),
                    ));
                }
            }
            calibration = serde_json::to_value(&loaded.meta).expect("JSON values");
            eprintln!("{label}: statistics from {} ({calibration})", p.display());
            Source::Stats(&loaded, p)
        }
        (None, Some(c)) if recipe.needs_calibration() || opts.save_stats.is_some() => {
            windows = match tokenized.take() {
                Some(w) => w,
                None => calibration_windows(c, dir, &label, cfg.vocab_size)?,
            };
            Source::Windows(&windows)
        }
        _ => Source::None,
    };
    let from_windows = matches!(source, Source::Windows(_));
    // What the statistics were taken with: written into every shard and the stats file.
    let mut stats_meta = BTreeMap::new();
    if from_windows {
        stats_meta = key;
        if let Some(c) = &recipe.calibration {
            let text = json!({"calib": c.files, "nsamples": c.nsamples, "seqlen": c.seqlen, "seed": c.seed});
            stats_meta.extend(text.as_object().into_iter().flatten().map(|(k, v)| (k.clone(), v.clone())));
        }
        calibration = serde_json::to_value(&stats_meta).expect("JSON values");
    }

    let recipe_text = recipe.to_toml();
    let mut meta = BTreeMap::new();
    meta.insert("quantize_method".to_string(), method.clone());
    meta.insert("quantize_recipe".to_string(), recipe_text.clone());
    let act = recipe.act_scheme()?;
    let scheme_text = match act {
        Some((a, calib)) => {
            if !a.dynamic || from_windows {
                meta.insert(
                    "quantize_calibration".to_string(),
                    format!("activations {calib:?}; statistics {calibration}"),
                );
            }
            format!("weights {scheme}, activations {a}")
        }
        None => recipe.scheme_name()?,
    };
    meta.insert("quantize_scheme".to_string(), scheme_text.clone());
    let act_spec = act.map(|(a, c)| ActivationSpec { scheme: a, observer: c.name().to_string() });

    // A tied head is quantized from the embedding and written as its own `lm_head`; the
    // embedding stays as it is (token lookups are exact), config.json unties the two.
    let head_source = if store.contains("lm_head.weight") { "lm_head.weight" } else { "model.embed_tokens.weight" };
    if recipe.include_head && head_source != "lm_head.weight" && !cfg.tie_word_embeddings {
        return Err(Error::option(
            "--include-head",
            "the model has no lm_head.weight and config.json does not tie it to the embedding",
        ));
    }
    // A head quantized from statistics (GPTQ) reads its input on the calibration windows.
    let observe_head = recipe.include_head && from_windows;
    if recipe.include_head && !from_windows {
        driver::check_extra(&mods)?;
    }
    // The checkpoint is written block by block as the driver finishes them.
    let mut output = match recipe.scheme.gguf_preset().filter(|_| format == CheckpointFormat::Gguf) {
        Some(preset) => {
            let imatrix = recipe.needs_calibration();
            Output::Gguf(GgufExport::create(dir, out, &cfg, &store, preset, &mods.schemes, imatrix, &meta)?)
        }
        None => {
            let mut writer = CheckpointWriter::create(dir, out, format, act_spec, &meta)?;
            writer.set_max_shard_bytes(opts.max_shard_bytes);
            Output::Checkpoint(writer)
        }
    };
    let kv_cache = recipe.kv_cache.is_some();
    if let (true, Output::Checkpoint(w)) = (kv_cache, &mut output) {
        w.declare_kv_cache()?;
    }

    let dopts = DriverOptions {
        chunk_windows: recipe.calibration.as_ref().map_or(8, |c| c.chunk_windows),
        progress: opts.progress,
        verbose: opts.verbose,
        label: label.clone(),
        observe_kv: kv_cache,
        observe_head,
    };
    let no_params = BTreeMap::new();
    let mut res = driver::run_streaming(&cfg, &store, source, &mut mods, &dopts, &mut |b, res, mods| {
        let params = mods.inputs.as_ref().map_or(&no_params, |i| i.params());
        match &mut output {
            Output::Gguf(g) => {
                for (name, values) in std::mem::take(&mut res.dense) {
                    g.replace_dense(&name, &values)?;
                }
                for (m, q) in std::mem::take(&mut res.tensors) {
                    g.add_quantized(&m, &q)?;
                }
                g.block_done(&store, b)
            }
            Output::Checkpoint(writer) => {
                for (m, q) in std::mem::take(&mut res.tensors) {
                    writer.add_quantized(&m, &q, params.get(&m).copied())?;
                }
                for (name, values) in std::mem::take(&mut res.dense) {
                    writer.replace_dense(&name, &values)?;
                }
                if kv_cache {
                    writer.add_kv_scales(b, res.kv_absmax[b].map(kv_cache::scale_for))?;
                }
                writer.block_done(b)
            }
        }
    })?;
    let mut writer = match output {
        Output::Gguf(g) => {
            g.finish(&store)?;
            return finish_report(&mods, res, opts, stats_meta, t0, out, format, &method, &label, scheme_text);
        }
        Output::Checkpoint(w) => w,
    };
    let head_shape = (cfg.vocab_size, cfg.hidden_size);
    // A rotated model's embedding and head (the head returned, to be quantized or written).
    let rotated_head = match &mods.rotation {
        Some(r) => Some(rotate_outside_blocks(&cfg, &store, r, &mut writer)?),
        None => None,
    };
    if recipe.include_head {
        let w = match &rotated_head {
            Some(h) => h.clone(),
            None => store.f32_shaped(head_source, &[head_shape.0, head_shape.1])?,
        };
        driver::quantize_extra(&mut mods, "lm_head", &w, head_shape, &mut res)?;
        if res.tensors.contains_key("lm_head") && head_source != "lm_head.weight" {
            writer.untie_head();
        }
        for (m, q) in std::mem::take(&mut res.tensors) {
            writer.add_quantized(&m, &q, None)?;
        }
    }
    if let Some(head) = rotated_head.filter(|_| !res.layers.iter().any(|l| l.name == "lm_head")) {
        if head_source == "lm_head.weight" {
            writer.replace_dense("lm_head.weight", &head)?;
        } else {
            // Tied: `E·Q` and `E·diag(g)·Q` differ by the final norm's weight.
            writer.add_dense("lm_head.weight", head_source, &head)?;
            writer.untie_head();
        }
    }
    let mut files: Vec<(&str, &[u8])> = vec![("recipe.toml", recipe_text.as_bytes())];
    if let Some(a) = &allocation {
        files.extend(a.files.iter().map(|(n, b)| (n.as_str(), b.as_slice())));
    }
    writer.finish(&files)?;
    let mut report = finish_report(&mods, res, opts, stats_meta, t0, out, format, &method, &label, scheme_text)?;
    if let Some(a) = allocation {
        report["budget"] = a.report;
    }
    Ok(report)
}

/// The tensors outside the blocks of a rotated model: the embedding `E·Q` and the final
/// norm's weight (ones, its multipliers folded into the head) are written; the head
/// `H·diag(g)·Q` (`[vocab, hidden]`, from the embedding when tied) is returned.
fn rotate_outside_blocks(
    cfg: &LlamaConfig,
    store: &SafetensorsStore,
    rotation: &ModelRotation,
    writer: &mut CheckpointWriter,
) -> Result<Vec<f32>> {
    let (v, h) = (cfg.vocab_size, cfg.hidden_size);
    let embed = "model.embed_tokens.weight";
    let mut e = store.f32_shaped(embed, &[v, h])?;
    let mut head =
        if store.contains("lm_head.weight") { store.f32_shaped("lm_head.weight", &[v, h])? } else { e.clone() };
    rotation.rotate_head(&mut head, &load_norm(cfg, store, "model.norm.weight", h)?);
    rotation.rotate_stream(&mut e);
    writer.replace_dense(embed, &e)?;
    writer.replace_dense("model.norm.weight", &stored_norm(cfg, &vec![1.0; h]))?;
    Ok(head)
}

/// Where the blocks go: a safetensors checkpoint directory or one GGUF file.
enum Output {
    Checkpoint(CheckpointWriter),
    Gguf(GgufExport),
}

/// After the output is in place: the saved statistics, the summary line and the report.
#[allow(clippy::too_many_arguments)]
fn finish_report(
    mods: &super::Modifiers,
    mut res: driver::DriverOutput,
    opts: &RunOptions,
    stats_meta: BTreeMap<String, Value>,
    t0: Instant,
    out: &Path,
    format: CheckpointFormat,
    method: &str,
    label: &str,
    scheme_text: String,
) -> Result<Value> {
    res.stats.meta = stats_meta;
    if let Some(p) = &opts.save_stats {
        res.stats.save(p)?;
        eprintln!("{label}: statistics saved to {}", p.display());
    }
    let seconds = t0.elapsed().as_secs_f64();
    let bits = super::summary::bits_per_weight(&res.layers);
    if opts.progress && !res.layers.is_empty() {
        eprint!("{}", super::summary::table(&res.layers, &res.timings, seconds));
    }
    eprintln!(
        "{label}: {} linears, {bits:.3} bits/weight, in {}; wrote {} ({})",
        res.layers.len(),
        super::progress::clock(seconds),
        out.display(),
        format.as_str()
    );
    let mut report = json!({
        "method": method,
        "scheme": scheme_text,
        "bits_per_weight": bits,
        "layers": res.layers,
        "timings": res.timings,
        "calibration_tokens": res.tokens,
        "seconds": seconds,
        "peak_rss_bytes": peak_rss_bytes(),
    });
    for t in &mods.transforms {
        report.as_object_mut().expect("object").extend(t.report());
    }
    Ok(report)
}
