//! `quantize bench`: prompt-processing and generation speed as llama-bench measures them:
//! `pp N` runs N random tokens in one forward from an empty cache, `tg N` generates N
//! tokens one at a time from an empty cache; each test is repeated and reported as the
//! mean ± standard deviation of tokens/s (and the median).

use crate::error::Result;
use crate::model::LlamaModel;
use rand::{Rng, SeedableRng};
use std::time::Instant;

/// One test's measurements.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchResult {
    /// `pp512`, `tg128`.
    pub test: String,
    pub tokens: usize,
    /// Tokens/s of each repetition.
    pub rates: Vec<f64>,
}

impl BenchResult {
    pub fn mean(&self) -> f64 {
        self.rates.iter().sum::<f64>() / self.rates.len() as f64
    }

    /// Sample standard deviation (0 for one repetition).
    pub fn std(&self) -> f64 {
        let n = self.rates.len();
        if n < 2 {
            return 0.0;
        }
        let m = self.mean();
        (self.rates.iter().map(|r| (r - m).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
    }

    pub fn median(&self) -> f64 {
        let mut r = self.rates.clone();
        r.sort_by(f64::total_cmp);
        let n = r.len();
        if n % 2 == 1 {
            r[n / 2]
        } else {
            (r[n / 2 - 1] + r[n / 2]) / 2.0
        }
    }
}

/// Random token ids below the vocabulary size (llama-bench also runs random tokens).
fn random_tokens(model: &LlamaModel, n: usize, seed: u64) -> Vec<u32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(0..model.config.vocab_size as u32)).collect()
}

/// Prefill of `n` tokens in one forward, `reps` times after one warm-up run.
pub fn prompt_processing(model: &LlamaModel, n: usize, reps: usize) -> Result<BenchResult> {
    measure(model, format!("pp{n}"), random_tokens(model, n, 1), n, reps)
}

/// Decoding of `n` tokens one at a time from an empty cache, `reps` times after one
/// warm-up run. The tokens are random (what is decoded does not change the work).
pub fn token_generation(model: &LlamaModel, n: usize, reps: usize) -> Result<BenchResult> {
    measure(model, format!("tg{n}"), random_tokens(model, n, 2), 1, reps)
}

/// Tokens/s of running `tokens` from an empty cache, `per_forward` at a time.
fn measure(model: &LlamaModel, test: String, tokens: Vec<u32>, per_forward: usize, reps: usize) -> Result<BenchResult> {
    let n = tokens.len();
    let mut cache = model.new_cache(n)?;
    let mut rates = Vec::with_capacity(reps);
    for rep in 0..=reps {
        cache.clear();
        let t = Instant::now();
        for piece in tokens.chunks(per_forward.max(1)) {
            model.forward_cached(piece, &mut cache)?;
        }
        if rep > 0 {
            rates.push(n as f64 / t.elapsed().as_secs_f64());
        }
    }
    Ok(BenchResult { test, tokens: n, rates })
}
