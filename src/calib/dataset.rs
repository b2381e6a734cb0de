//! Calibration windows: `nsamples` windows of `seqlen` tokens drawn from a token stream
//! at start positions chosen by a seeded ChaCha8 generator (deterministic everywhere).

use crate::error::{Error, Result};
use rand::{Rng, SeedableRng};

/// Draw `nsamples` windows of `seqlen` tokens. Refuses a stream shorter than one window.
pub fn sample_windows(tokens: &[u32], nsamples: usize, seqlen: usize, seed: u64) -> Result<Vec<Vec<u32>>> {
    if nsamples == 0 {
        return Err(Error::option("--nsamples", "0; calibration needs at least one window"));
    }
    if seqlen < 2 {
        return Err(Error::option("--seqlen", format!("{seqlen} is too short; use at least 2 tokens")));
    }
    if tokens.len() <= seqlen {
        return Err(Error::option("--calib", format!("the calibration text has {} tokens, too short for one window of --seqlen {seqlen}", tokens.len())));
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    Ok((0..nsamples)
        .map(|_| {
            let start = rng.random_range(0..tokens.len() - seqlen);
            tokens[start..start + seqlen].to_vec()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_in_bounds() {
        let toks: Vec<u32> = (0..1000).collect();
        let a = sample_windows(&toks, 8, 100, 0).unwrap();
        assert_eq!(a, sample_windows(&toks, 8, 100, 0).unwrap());
        assert_ne!(a, sample_windows(&toks, 8, 100, 1).unwrap());
        for w in &a {
            assert_eq!(w.len(), 100);
            assert!(w.windows(2).all(|p| p[1] == p[0] + 1), "a window is a contiguous slice");
        }
        assert!(sample_windows(&toks[..50], 1, 100, 0).unwrap_err().to_string().contains("too short"));
        assert!(sample_windows(&[], 1, 100, 0).is_err());
    }
}
