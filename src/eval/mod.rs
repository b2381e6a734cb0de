//! Evaluation: perplexity of a model, and of a quantized model against its baseline
//! (delta, KL divergence of the token distributions, top-1 agreement).
pub mod merge;
pub mod perplexity;
pub mod plot;
pub mod report;

use crate::error::Result;
use crate::model::LlamaModel;
use perplexity::{log_sum_exp, window_nll, windows, Protocol};
use rayon::prelude::*;
use serde::Serialize;
use std::time::Instant;

#[derive(Clone, Copy, Debug)]
pub struct EvalOptions {
    pub ctx: usize,
    pub protocol: Protocol,
    pub max_windows: Option<usize>,
    /// Windows run together through one forward (bigger products, more memory).
    pub batch: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct PerplexityReport {
    pub perplexity: f64,
    /// Standard error of the perplexity: `ppl · sd(nll) / √(n-1)` over the scored tokens
    /// (llama-perplexity's `±`).
    pub perplexity_stderr: f64,
    pub mean_nll: f64,
    pub tokens_scored: usize,
    pub windows: usize,
    pub ctx: usize,
    pub protocol: Protocol,
    pub seconds: f64,
    /// Tokens run through the model (windows × ctx) per second of forward time.
    pub tokens_per_second: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ComparisonReport {
    pub baseline: PerplexityReport,
    pub quantized: PerplexityReport,
    /// (quantized - baseline) / baseline, in percent.
    pub perplexity_delta_pct: f64,
    /// Mean over scored positions of KL(baseline ‖ quantized), nats.
    pub mean_kl_divergence: f64,
    /// Its standard error.
    pub kl_stderr: f64,
    /// Median, 99th percentile and maximum of the per-position KL (llama-perplexity's
    /// `--kl-divergence` figures).
    pub kl_median: f64,
    pub kl_p99: f64,
    pub kl_max: f64,
    /// Fraction of scored positions where both models' most likely token agree.
    pub top1_agreement: f64,
    /// Its standard error, `√(p(1-p)/n)`.
    pub top1_stderr: f64,
}

/// Standard error of the mean of `x`.
fn stderr_of_mean(x: &[f64]) -> f64 {
    let n = x.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let m = x.iter().sum::<f64>() / n;
    (x.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / (n - 1.0) / n).sqrt()
}

/// The `q`-quantile of `x` (nearest rank on the sorted values; 0 for an empty slice).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn progress_bar(len: usize, msg: &str) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new(len as u64);
    pb.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} windows {elapsed_precise} eta {eta}")
            .unwrap()
            .progress_chars("=> "),
    );
    pb.set_message(msg.to_string());
    pb
}

/// Run `model` over batches of windows, handing each window's logits to `visit`.
/// `visit(window index, logits of its scored rows [ctx-1-first, vocab])`.
fn for_each_window(
    model: &LlamaModel,
    wins: &[&[u32]],
    opts: &EvalOptions,
    label: &str,
    mut visit: impl FnMut(usize, &[f32]) -> Result<()>,
) -> Result<f64> {
    let vocab = model.config.vocab_size;
    let first = opts.protocol.first_scored(opts.ctx);
    let per = (opts.ctx - 1 - first) * vocab;
    let pb = progress_bar(wins.len(), label);
    // Forward and scoring both count: tokens/s is what a user waits for.
    let mut secs = 0.0;
    for (bi, batch) in wins.chunks(opts.batch.max(1)).enumerate() {
        let tokens: Vec<u32> = batch.iter().flat_map(|w| w.iter().copied()).collect();
        let t0 = Instant::now();
        let logits = model.forward_scored(&tokens, batch.len(), opts.ctx, first)?;
        for (wi, _) in batch.iter().enumerate() {
            visit(bi * opts.batch.max(1) + wi, &logits[wi * per..(wi + 1) * per])?;
        }
        secs += t0.elapsed().as_secs_f64();
        pb.inc(batch.len() as u64);
    }
    pb.finish_and_clear();
    Ok(secs)
}

fn report(nll: &[f64], n_windows: usize, opts: &EvalOptions, seconds: f64) -> PerplexityReport {
    let mean = nll.iter().sum::<f64>() / nll.len() as f64;
    PerplexityReport {
        perplexity: mean.exp(),
        perplexity_stderr: mean.exp() * stderr_of_mean(nll),
        mean_nll: mean,
        tokens_scored: nll.len(),
        windows: n_windows,
        ctx: opts.ctx,
        protocol: opts.protocol,
        seconds,
        tokens_per_second: (n_windows * opts.ctx) as f64 / seconds,
    }
}

/// Perplexity of one model on a token stream.
pub fn perplexity(model: &LlamaModel, tokens: &[u32], opts: &EvalOptions) -> Result<PerplexityReport> {
    let wins = windows(tokens, opts.ctx, opts.max_windows)?;
    let first = opts.protocol.first_scored(opts.ctx);
    let vocab = model.config.vocab_size;
    let mut nll = Vec::new();
    let secs = for_each_window(model, &wins, opts, "eval", |wi, logits| {
        nll.extend(window_nll(logits, vocab, wins[wi], first));
        Ok(())
    })?;
    Ok(report(&nll, wins.len(), opts, secs))
}

/// Quantized model against its baseline on the same windows.
pub fn compare(
    baseline: &LlamaModel,
    quantized: &LlamaModel,
    tokens: &[u32],
    opts: &EvalOptions,
) -> Result<ComparisonReport> {
    Ok(compare_many(baseline, &[quantized], tokens, opts)?.remove(0))
}

/// Several quantized models against one baseline, batch by batch: the baseline runs once
/// per batch and only one batch of logits per model is held at a time.
pub fn compare_many(
    baseline: &LlamaModel,
    models: &[&LlamaModel],
    tokens: &[u32],
    opts: &EvalOptions,
) -> Result<Vec<ComparisonReport>> {
    let wins = windows(tokens, opts.ctx, opts.max_windows)?;
    let first = opts.protocol.first_scored(opts.ctx);
    let vocab = baseline.config.vocab_size;
    let per = (opts.ctx - 1 - first) * vocab;
    struct Acc {
        nll: Vec<f64>,
        kl: Vec<f64>,
        agree: usize,
        secs: f64,
    }
    let new_acc = || Acc { nll: Vec::new(), kl: Vec::new(), agree: 0, secs: 0.0 };
    let mut base = new_acc();
    let mut accs: Vec<Acc> = models.iter().map(|_| new_acc()).collect();
    let pb = progress_bar(wins.len(), &format!("baseline + {} model(s)", models.len()));
    let bs = opts.batch.max(1);
    for (bi, batch) in wins.chunks(bs).enumerate() {
        let toks: Vec<u32> = batch.iter().flat_map(|w| w.iter().copied()).collect();
        let t0 = Instant::now();
        let base_logits = baseline.forward_scored(&toks, batch.len(), opts.ctx, first)?;
        base.secs += t0.elapsed().as_secs_f64();
        let base_logp: Vec<Vec<f32>> =
            (0..batch.len()).map(|wi| log_softmax_rows(&base_logits[wi * per..(wi + 1) * per], vocab)).collect();
        for wi in 0..batch.len() {
            base.nll.extend(window_nll(&base_logits[wi * per..(wi + 1) * per], vocab, wins[bi * bs + wi], first));
        }
        drop(base_logits);
        for (m, acc) in models.iter().zip(accs.iter_mut()) {
            let t0 = Instant::now();
            let logits = m.forward_scored(&toks, batch.len(), opts.ctx, first)?;
            acc.secs += t0.elapsed().as_secs_f64();
            for wi in 0..batch.len() {
                let q = &logits[wi * per..(wi + 1) * per];
                acc.nll.extend(window_nll(q, vocab, wins[bi * bs + wi], first));
                for (kl, agree) in kl_and_agreement(&base_logp[wi], &log_softmax_rows(q, vocab), vocab) {
                    acc.kl.push(kl);
                    acc.agree += agree as usize;
                }
            }
        }
        pb.inc(batch.len() as u64);
    }
    pb.finish_and_clear();
    let baseline = report(&base.nll, wins.len(), opts, base.secs);
    Ok(accs
        .into_iter()
        .map(|a| {
            let quantized = report(&a.nll, wins.len(), opts, a.secs);
            let n = a.nll.len() as f64;
            let top1 = a.agree as f64 / n;
            let mut sorted = a.kl.clone();
            sorted.sort_by(f64::total_cmp);
            ComparisonReport {
                perplexity_delta_pct: (quantized.perplexity / baseline.perplexity - 1.0) * 100.0,
                mean_kl_divergence: a.kl.iter().sum::<f64>() / n,
                kl_stderr: stderr_of_mean(&a.kl),
                kl_median: quantile(&sorted, 0.5),
                kl_p99: quantile(&sorted, 0.99),
                kl_max: sorted.last().copied().unwrap_or(0.0),
                top1_agreement: top1,
                top1_stderr: (top1 * (1.0 - top1) / n).sqrt(),
                baseline: baseline.clone(),
                quantized,
            }
        })
        .collect())
}

/// Row-wise log-softmax, `[rows, vocab]`.
pub fn log_softmax_rows(logits: &[f32], vocab: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; logits.len()];
    out.par_chunks_mut(vocab).zip(logits.par_chunks(vocab)).for_each(|(o, r)| {
        let lse = log_sum_exp(r);
        for (o, &v) in o.iter_mut().zip(r) {
            *o = (v as f64 - lse) as f32;
        }
    });
    out
}

/// Per row: KL(p ‖ q) (nats) and whether both argmaxes agree.
pub fn kl_and_agreement(p_logp: &[f32], q_logp: &[f32], vocab: usize) -> Vec<(f64, bool)> {
    p_logp
        .par_chunks(vocab)
        .zip(q_logp.par_chunks(vocab))
        .map(|(p, q)| {
            let kl: f64 = p.iter().zip(q).map(|(&lp, &lq)| (crate::model::fastexp::exp(lp) * (lp - lq)) as f64).sum();
            (kl.max(0.0), argmax(p) == argmax(q))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_errors_and_quantiles() {
        assert_eq!(stderr_of_mean(&[1.0]), 0.0);
        // sd of [1, 2, 3, 4] is √(5/3); over √4.
        assert!((stderr_of_mean(&[1.0, 2.0, 3.0, 4.0]) - (5.0f64 / 3.0).sqrt() / 2.0).abs() < 1e-12);
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(
            (quantile(&v, 0.5), quantile(&v, 0.99), quantile(&v, 1.0), quantile(&v, 0.0)),
            (50.0, 99.0, 100.0, 1.0)
        );
        assert_eq!(quantile(&[], 0.5), 0.0);
    }
}

pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}
