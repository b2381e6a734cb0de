//! Mixed precision to a bits budget (`--target-bpw`, recipe `[budget]`): a measurement
//! pass over the first calibration windows (the recipe's rotation applied, its transforms
//! not run) quantizes every linear by RTN in each candidate scheme and records a relative
//! error: of its own output through its site's Hessian before GPTQ ([`HessianMeasure`]),
//! of its attention or MLP output before RTN ([`Measure`]); [`crate::quant::budget::allocate`]
//! then picks one candidate per linear, minimizing the summed errors with the stored bits
//! of all linears at most `bpw` per weight. The choice becomes the recipe's per-module
//! overrides, so the main run, its checkpoint (compressed-tensors `config_groups`, gptq
//! `dynamic`) and its recipe.toml are those of an ordinary mixed recipe. Also returned:
//! the sensitivity report (a table, JSON, and an SVG plot of every linear's errors).

use super::driver::{self, DriverOptions, Source};
use super::modifiers::measure::{HessianMeasure, Measure, Sensitivity};
use super::recipe::{OverrideSpec, Recipe, SchemeSpec};
use super::run::RunOptions;
use crate::error::{Error, Result};
use crate::format::QuantScheme;
use crate::io::safetensors::SafetensorsStore;
use crate::model::LlamaConfig;
use crate::quant::budget::{allocate, Choice};
use plotters::prelude::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// What the allocation adds to a run: the recipe with its overrides, files to write beside
/// the checkpoint, and the report's entry.
pub struct Allocation {
    pub recipe: Recipe,
    pub files: Vec<(String, Vec<u8>)>,
    pub report: Value,
}

/// Measure on `windows` (the run's calibration windows; the first `budget.windows` are
/// read), allocate and return the recipe with the chosen schemes as overrides.
pub fn allocate_to_budget(
    recipe: &Recipe,
    windows: &[Vec<u32>],
    cfg: &LlamaConfig,
    store: &SafetensorsStore,
    opts: &RunOptions,
) -> Result<Allocation> {
    let budget = recipe.budget.clone().expect("a recipe with a budget");
    let calib = recipe.calibration.as_ref().expect("resolve: a budget needs calibration");
    let label = format!("measure {}", recipe.method_name());
    let windows = &windows[..budget.windows.min(windows.len())];

    let mut mods = recipe.build(cfg)?;
    mods.inputs = None;
    let mut candidates = Vec::new();
    for c in &budget.candidates {
        let mut p =
            super::SchemePolicy { default: c.to_scheme()?, ignore: mods.schemes.ignore.clone(), overrides: vec![] };
        recipe.apply_group_fallback(cfg, &mut p)?;
        candidates.push(p);
    }
    let results = Arc::new(Mutex::new(Vec::new()));
    if budget.measure.as_deref() == Some("hessian") {
        // Each site's Hessian on the inputs through the RTN-quantized blocks before it.
        mods.transforms.clear();
        mods.weights = Box::new(HessianMeasure { candidates, results: results.clone() });
    } else {
        // The measurement is the only transform; RTN (no statistics) carries the run on, so
        // only the measured windows run.
        mods.transforms = vec![Box::new(Measure::new(candidates, windows.len(), results.clone()))];
        mods.weights = Box::new(super::modifiers::rtn::Rtn { clip: None, imatrix: false });
    }
    let dopts = DriverOptions {
        chunk_windows: calib.chunk_windows,
        progress: opts.progress,
        verbose: false,
        label: label.clone(),
        observe_kv: false,
        observe_head: false,
    };
    let t = std::time::Instant::now();
    driver::run(cfg, store, Source::Windows(windows), &mut mods, &dopts)?;
    let measured: Vec<Sensitivity> = std::mem::take(&mut *results.lock().expect("not poisoned"));

    let options: Vec<Vec<Choice>> = measured
        .iter()
        .map(|s| s.candidates.iter().map(|m| Choice { bits: m.bits as f64, loss: m.error }).collect())
        .collect();
    let weights: usize = measured.iter().map(|s| s.weights).sum();
    let picks = allocate(&options, budget.bpw * weights as f64)?;
    let bits: f64 = picks.iter().zip(&options).map(|(&k, o)| o[k].bits).sum();
    let chosen: Vec<QuantScheme> = picks.iter().zip(&measured).map(|(&k, s)| s.candidates[k].scheme).collect();

    // One override per chosen scheme, listing its linears (exact names).
    let mut by_scheme: BTreeMap<String, (QuantScheme, Vec<String>)> = BTreeMap::new();
    for (s, q) in measured.iter().zip(&chosen) {
        by_scheme.entry(q.to_string()).or_insert((*q, vec![])).1.push(s.name.clone());
    }
    let mut out = recipe.clone();
    out.budget = None;
    out.overrides = by_scheme
        .into_values()
        .map(|(q, names)| OverrideSpec { targets: names, scheme: SchemeSpec::from_scheme(q) })
        .collect();
    let out = out.resolve()?;

    let achieved = bits / weights.max(1) as f64;
    let counts: BTreeMap<String, usize> = chosen.iter().fold(BTreeMap::new(), |mut m, q| {
        *m.entry(q.to_string()).or_default() += 1;
        m
    });
    let summary = counts.iter().map(|(k, n)| format!("{n} x {k}")).collect::<Vec<_>>().join(", ");
    eprintln!(
        "{label}: {} linears measured in {:.0}s; {achieved:.3} bits/weight for a budget of {}: {summary}",
        measured.len(),
        t.elapsed().as_secs_f64(),
        budget.bpw
    );
    let table = table(&measured, &picks);
    if opts.progress {
        eprint!("{table}");
    }
    let report = json!({
        "bpw": budget.bpw,
        "achieved_bpw": achieved,
        "windows": windows.len(),
        "measure": budget.measure,
        "estimated_loss": picks.iter().zip(&options).map(|(&k, o)| o[k].loss).sum::<f64>(),
        "linears": measured.iter().zip(&picks).map(|(s, &k)| json!({
            "name": s.name, "weights": s.weights, "chosen": s.candidates[k].scheme.to_string(), "candidates": s.candidates,
        })).collect::<Vec<_>>(),
    });
    let files = vec![
        ("sensitivity.txt".to_string(), table.into_bytes()),
        ("sensitivity.json".to_string(), serde_json::to_vec_pretty(&report).expect("JSON values")),
        ("sensitivity.svg".to_string(), plot(&measured, &picks, &budget.candidates)?.into_bytes()),
    ];
    Ok(Allocation { recipe: out, files, report })
}

/// One line per linear: its error in each candidate, the chosen one marked `*`.
fn table(measured: &[Sensitivity], picks: &[usize]) -> String {
    let mut s = String::new();
    let Some(first) = measured.first() else { return s };
    s += &format!("{:<40}", "linear (relative error of RTN)");
    for m in &first.candidates {
        s += &format!(" {:>16}", m.scheme.to_string());
    }
    s += "\n";
    for (lin, &k) in measured.iter().zip(picks) {
        s += &format!("{:<40}", lin.name);
        for (j, m) in lin.candidates.iter().enumerate() {
            s += &format!(" {:>15.6}{}", m.error, if j == k { "*" } else { " " });
        }
        s += "\n";
    }
    s
}

/// Every linear's error (log scale) in each candidate, in model order, with the chosen
/// candidate circled: where the budget went.
fn plot(measured: &[Sensitivity], picks: &[usize], candidates: &[SchemeSpec]) -> Result<String> {
    const COLORS: [RGBColor; 6] = [
        RGBColor(228, 26, 28),
        RGBColor(55, 126, 184),
        RGBColor(77, 175, 74),
        RGBColor(152, 78, 163),
        RGBColor(255, 127, 0),
        RGBColor(166, 86, 40),
    ];
    let mut svg = String::new();
    let errors = measured.iter().flat_map(|s| s.candidates.iter().map(|m| m.error)).filter(|e| *e > 0.0);
    let (lo, hi) = errors.fold((f64::INFINITY, 0.0f64), |(lo, hi), e| (lo.min(e), hi.max(e)));
    let (lo, hi) = if lo.is_finite() { (lo / 2.0, hi * 2.0) } else { (1e-6, 1.0) };
    {
        let root = SVGBackend::with_string(&mut svg, (1000, 520)).into_drawing_area();
        let err = |e: String| Error::other_msg(format!("sensitivity plot: {e}"));
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "Relative output error of each linear (RTN) per candidate scheme; circled: chosen",
                ("sans-serif", 16),
            )
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..measured.len().max(1) as f64, (lo..hi).log_scale())
            .map_err(|e| err(e.to_string()))?;
        chart
            .configure_mesh()
            .x_desc("linear (model order: q k v o gate up down per block)")
            .y_desc("relative output error")
            .draw()
            .map_err(|e| err(e.to_string()))?;
        for (j, c) in candidates.iter().enumerate() {
            let color = COLORS[j % COLORS.len()];
            let points: Vec<(f64, f64)> = measured
                .iter()
                .enumerate()
                .filter_map(|(i, s)| s.candidates.get(j).map(|m| (i as f64 + 0.5, m.error.max(lo))))
                .collect();
            let name = format!("{}{}", c.kind, c.group_size.map_or(String::new(), |g| format!(" g{g}")));
            chart
                .draw_series(points.iter().map(|&p| Circle::new(p, 2, color.filled())))
                .map_err(|e| err(e.to_string()))?
                .label(name)
                .legend(move |(x, y)| Circle::new((x, y), 3, color.filled()));
        }
        let chosen =
            measured.iter().zip(picks).enumerate().map(|(i, (s, &k))| {
                Circle::new((i as f64 + 0.5, s.candidates[k].error.max(lo)), 5, BLACK.stroke_width(1))
            });
        chart.draw_series(chosen).map_err(|e| err(e.to_string()))?;
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(e.to_string()))?;
        root.present().map_err(|e| err(e.to_string()))?;
    }
    Ok(svg)
}
