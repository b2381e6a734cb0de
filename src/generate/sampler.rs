//! Choosing the next token from the logits: greedy, or sampling with temperature,
//! top-k, top-p, min-p and a repetition penalty, applied in the order transformers'
//! `generate` applies its logits processors (repetition penalty, temperature, top-k,
//! top-p, min-p), so a seed-free greedy run matches `generate(do_sample=False)`.

use crate::error::{Error, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Sampling options; the defaults are greedy decoding with no penalty.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampling {
    /// 0 chooses the most likely token (greedy); otherwise logits are divided by it.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p` (1: all).
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one (0: none).
    pub min_p: f32,
    /// Divide positive logits of tokens already in the context by this, multiply
    /// negative ones (transformers' `repetition_penalty`; 1: off).
    pub repeat_penalty: f32,
    /// Seed of the sampling draws.
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Self { temperature: 0.0, top_k: 0, top_p: 1.0, min_p: 0.0, repeat_penalty: 1.0, seed: 0 }
    }
}

impl Sampling {
    /// An error naming the option and its value for anything out of range.
    pub fn validate(&self) -> Result<()> {
        let bad = |opt: &str, v: f32, range: &str| Err(Error::option(opt, format!("{v} is outside {range}")));
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad("--temperature", self.temperature, "[0, ∞) (0 is greedy)");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("--top-p", self.top_p, "(0, 1]");
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("--min-p", self.min_p, "[0, 1]");
        }
        if !(self.repeat_penalty > 0.0 && self.repeat_penalty.is_finite()) {
            return bad("--repeat-penalty", self.repeat_penalty, "(0, ∞) (1 is off)");
        }
        Ok(())
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }
}

/// Draws tokens with [`Sampling`]; deterministic for a given seed and logits.
pub struct Sampler {
    opts: Sampling,
    rng: ChaCha8Rng,
    /// Scratch: (token, logit) candidates, reused between calls.
    cand: Vec<(u32, f32)>,
}

impl Sampler {
    pub fn new(opts: Sampling) -> Result<Self> {
        opts.validate()?;
        Ok(Self { rng: ChaCha8Rng::seed_from_u64(opts.seed), opts, cand: Vec::new() })
    }

    /// The next token from `logits` (`[vocab]`, changed in place by the penalty) given
    /// the tokens of the context so far.
    pub fn next(&mut self, logits: &mut [f32], context: &[u32]) -> u32 {
        if self.opts.repeat_penalty != 1.0 {
            apply_repeat_penalty(logits, context, self.opts.repeat_penalty);
        }
        if self.opts.is_greedy() {
            return argmax(logits);
        }
        let o = &self.opts;
        let cand = &mut self.cand;
        cand.clear();
        cand.extend(logits.iter().enumerate().map(|(i, &l)| (i as u32, l / o.temperature)));
        // Most likely first; ties by token id, so the order never depends on the sort.
        let order = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if o.top_k > 0 && o.top_k < cand.len() {
            cand.select_nth_unstable_by(o.top_k - 1, order);
            cand.truncate(o.top_k);
        }
        cand.sort_unstable_by(order);
        let probs = softmax(cand.iter().map(|c| c.1));
        let mut keep = cand.len();
        if o.top_p < 1.0 {
            // The smallest prefix whose mass reaches top_p (at least one token).
            let mut mass = 0.0f64;
            keep = probs
                .iter()
                .position(|&p| {
                    mass += p;
                    mass >= o.top_p as f64
                })
                .map_or(keep, |i| i + 1);
        }
        if o.min_p > 0.0 {
            let floor = probs[0] * o.min_p as f64;
            keep = keep.min(probs.iter().take_while(|&&p| p >= floor).count().max(1));
        }
        let total: f64 = probs[..keep].iter().sum();
        let mut u = self.rng.random::<f64>() * total;
        for (c, &p) in cand[..keep].iter().zip(&probs) {
            if u < p {
                return c.0;
            }
            u -= p;
        }
        cand[keep - 1].0
    }
}

/// Index of the largest logit, the first one on ties (as `torch.argmax`); NaN never wins.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] || logits[best].is_nan() {
            best = i;
        }
    }
    best as u32
}

/// transformers' `RepetitionPenaltyLogitsProcessor`: once per distinct token of `context`.
fn apply_repeat_penalty(logits: &mut [f32], context: &[u32], penalty: f32) {
    let mut seen = vec![false; logits.len()];
    for &t in context {
        let t = t as usize;
        if t < logits.len() && !seen[t] {
            seen[t] = true;
            let l = &mut logits[t];
            *l = if *l < 0.0 { *l * penalty } else { *l / penalty };
        }
    }
}

/// Probabilities of the logits (f64, max subtracted).
fn softmax(logits: impl Iterator<Item = f32> + Clone) -> Vec<f64> {
    let m = logits.clone().fold(f32::NEG_INFINITY, f32::max) as f64;
    let e: Vec<f64> = logits.map(|l| (l as f64 - m).exp()).collect();
    let z: f64 = e.iter().sum();
    e.into_iter().map(|v| v / z).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(f: impl FnOnce(&mut Sampling)) -> Sampler {
        let mut s = Sampling { temperature: 1.0, ..Default::default() };
        f(&mut s);
        Sampler::new(s).unwrap()
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        let mut s = Sampler::new(Sampling::default()).unwrap();
        assert_eq!(s.next(&mut [0.5, 2.0, 2.0, -1.0], &[]), 1);
        assert_eq!(argmax(&[f32::NAN, 1.0, 0.0]), 1);
    }

    #[test]
    fn repeat_penalty_is_transformers_rule() {
        let mut l = [2.0f32, -2.0, 1.0];
        apply_repeat_penalty(&mut l, &[0, 1, 1, 0], 2.0);
        assert_eq!(l, [1.0, -4.0, 1.0]); // once per distinct token
                                         // Greedy with a penalty changes the choice.
        let mut s = Sampler::new(Sampling { repeat_penalty: 4.0, ..Default::default() }).unwrap();
        assert_eq!(s.next(&mut [3.0, 1.0], &[0]), 1);
    }

    #[test]
    fn top_k_one_and_tiny_top_p_are_greedy() {
        let logits = [0.1f32, 3.0, 2.9, -5.0];
        for mut s in [sampler(|s| s.top_k = 1), sampler(|s| s.top_p = 1e-6), sampler(|s| s.min_p = 0.99)] {
            for _ in 0..50 {
                assert_eq!(s.next(&mut logits.clone(), &[]), 1);
            }
        }
    }

    #[test]
    fn sampling_follows_the_probabilities_and_the_seed() {
        // p = softmax([0, ln 3]) = [0.25, 0.75]
        let logits = [0.0f32, 3f32.ln()];
        let mut s = sampler(|s| s.seed = 7);
        let n = 20_000;
        let ones = (0..n).filter(|_| s.next(&mut logits.clone(), &[]) == 1).count();
        assert!((ones as f64 / n as f64 - 0.75).abs() < 0.015, "{ones} of {n}");
        let draw = |seed| {
            let mut s = sampler(|s| s.seed = seed);
            (0..64).map(|_| s.next(&mut [0.0, 0.1, 0.2, 0.3], &[])).collect::<Vec<_>>()
        };
        assert_eq!(draw(1), draw(1));
        assert_ne!(draw(1), draw(2));
    }

    #[test]
    fn top_p_keeps_the_smallest_sufficient_set() {
        // p ≈ [0.643, 0.237, 0.087, 0.032]: top_p 0.8 keeps tokens 0 and 1 only.
        let logits = [3.0f32, 2.0, 1.0, 0.0];
        let mut s = sampler(|s| s.top_p = 0.8);
        let seen: std::collections::BTreeSet<u32> = (0..2000).map(|_| s.next(&mut logits.clone(), &[])).collect();
        assert_eq!(seen, [0, 1].into());
        // min_p 0.3 of 0.643 = 0.193: tokens 0 and 1 again.
        let mut s = sampler(|s| s.min_p = 0.3);
        let seen: std::collections::BTreeSet<u32> = (0..2000).map(|_| s.next(&mut logits.clone(), &[])).collect();
        assert_eq!(seen, [0, 1].into());
    }

    #[test]
    fn out_of_range_options_name_themselves() {
        for (s, opt) in [
            (Sampling { top_p: 2.0, ..Default::default() }, "--top-p"),
            (Sampling { top_p: 0.0, ..Default::default() }, "--top-p"),
            (Sampling { temperature: -1.0, ..Default::default() }, "--temperature"),
            (Sampling { min_p: 1.5, ..Default::default() }, "--min-p"),
            (Sampling { repeat_penalty: 0.0, ..Default::default() }, "--repeat-penalty"),
        ] {
            let e = Sampler::new(s).err().expect("refused").to_string();
            assert!(e.contains(opt), "{e}");
        }
    }
}
