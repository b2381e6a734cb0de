//! Perplexity over a token stream, with two named protocols:
//! - `chunks` (GPTQ/AWQ papers): consecutive non-overlapping windows of `ctx` tokens,
//!   every token after the first of each window scored (ctx-1 per window);
//! - `llama.cpp` (`llama-perplexity`): the same windows, but only the second half scored:
//!   logits at positions ctx/2 .. ctx-2 predict tokens ctx/2+1 .. ctx-1.
//!
//! Each window runs from an empty state: nothing crosses windows.

use crate::error::{Error, Result};
use rayon::prelude::*;
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
pub enum Protocol {
    #[value(name = "chunks")]
    #[serde(rename = "chunks")]
    Chunks,
    #[value(name = "llama.cpp")]
    #[serde(rename = "llama.cpp")]
    LlamaCpp,
}

impl Protocol {
    /// First scored logit position in a window of `ctx` tokens.
    pub fn first_scored(self, ctx: usize) -> usize {
        match self {
            Protocol::Chunks => 0,
            Protocol::LlamaCpp => ctx / 2,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Chunks => "chunks",
            Protocol::LlamaCpp => "llama.cpp",
        }
    }
}

/// Cut `tokens` into windows; refuses a text shorter than one window.
pub fn windows(tokens: &[u32], ctx: usize, max_windows: Option<usize>) -> Result<Vec<&[u32]>> {
    if ctx < 2 {
        return Err(Error::option("--ctx", format!("{ctx} is too small; a window needs at least 2 tokens")));
    }
    let n = tokens.len() / ctx;
    if n == 0 {
        return Err(Error::option(
            "--text",
            format!("the text has {} tokens, shorter than one window of --ctx {ctx}", tokens.len()),
        ));
    }
    let n = max_windows.map_or(n, |m| m.min(n));
    Ok(tokens.chunks_exact(ctx).take(n).collect())
}

/// Log-softmax of each logit row at the target: returns `-log p(target)` per scored
/// position, in f64. `logits`: `[ctx - 1 - first, vocab]`, the rows of positions
/// `first .. ctx-1` of one window (as [`crate::model::LlamaModel::forward_scored`] gives).
pub fn window_nll(logits: &[f32], vocab: usize, window: &[u32], first: usize) -> Vec<f64> {
    let ctx = window.len();
    assert_eq!(logits.len(), (ctx - 1 - first) * vocab, "window_nll: logits must hold the scored rows only");
    (first..ctx - 1)
        .into_par_iter()
        .map(|p| {
            let row = &logits[(p - first) * vocab..(p - first + 1) * vocab];
            let lse = log_sum_exp(row);
            lse - row[window[p + 1] as usize] as f64
        })
        .collect()
}

/// `log Σ exp(row)`: exponentials of `row - max` (all ≤ 1), summed in f64.
pub fn log_sum_exp(row: &[f32]) -> f64 {
    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    m as f64 + crate::model::fastexp::sum_exp_shifted(row, m).ln()
}
