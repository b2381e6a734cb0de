//! Calibration windows: `nsamples` windows of `seqlen` tokens drawn from a token stream
//! at start positions chosen exactly as the GPTQ and AWQ reference scripts choose them
//! (`random.seed(seed)`, then `i = random.randint(0, len - seqlen - 1)` per window, from
//! IST-DASLab/gptq `datautils.py`), so a run here and a run of those scripts on the same
//! tokens calibrate on the same windows. Deterministic everywhere.

use crate::error::{Error, Result};

/// CPython's `random` module, as far as `seed(int)` and `randint` go: MT19937 seeded
/// with `init_by_array` of the seed's 32-bit words, `randint` by rejection sampling of
/// `getrandbits(n.bit_length())`.
pub struct PythonRandom(rand_mt::Mt);

impl PythonRandom {
    pub fn seed(seed: u64) -> Self {
        let key: Vec<u32> = if seed >> 32 == 0 { vec![seed as u32] } else { vec![seed as u32, (seed >> 32) as u32] };
        Self(rand_mt::Mt::new_with_key(key))
    }

    fn getrandbits(&mut self, k: u32) -> u32 {
        debug_assert!((1..=32).contains(&k));
        self.0.next_u32() >> (32 - k)
    }

    /// Uniform integer in `[a, b]`, both included (`random.randint`). `b - a < 2^32`.
    pub fn randint(&mut self, a: u64, b: u64) -> u64 {
        let n = b - a + 1;
        let k = 64 - n.leading_zeros();
        assert!(k <= 32, "randint range {n} too wide for this port");
        loop {
            let r = self.getrandbits(k) as u64;
            if r < n {
                return a + r;
            }
        }
    }
}

/// Draw `nsamples` windows of `seqlen` tokens. Refuses a stream shorter than one window.
pub fn sample_windows(tokens: &[u32], nsamples: usize, seqlen: usize, seed: u64) -> Result<Vec<Vec<u32>>> {
    if nsamples == 0 {
        return Err(Error::option("--nsamples", "0; calibration needs at least one window"));
    }
    if seqlen < 2 {
        return Err(Error::option("--seqlen", format!("{seqlen} is too short; use at least 2 tokens")));
    }
    if tokens.len() <= seqlen {
        return Err(Error::option(
            "--calib",
            format!("the calibration text has {} tokens, too short for one window of --seqlen {seqlen}", tokens.len()),
        ));
    }
    let mut rng = PythonRandom::seed(seed);
    Ok((0..nsamples)
        .map(|_| {
            let start = rng.randint(0, (tokens.len() - seqlen - 1) as u64) as usize;
            tokens[start..start + seqlen].to_vec()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_cpython_random() {
        // python3 -c "import random; random.seed(0); print([random.randint(0, 1234567-512-1) for _ in range(5)])"
        let mut r = PythonRandom::seed(0);
        let got: Vec<u64> = (0..5).map(|_| r.randint(0, 1234567 - 512 - 1)).collect();
        assert_eq!(got, [807917, 882002, 84901, 542987, 1072220]);
        let mut r = PythonRandom::seed(7);
        let got: Vec<u64> = (0..5).map(|_| r.randint(0, 1000)).collect();
        assert_eq!(got, [331, 970, 154, 404, 666]);
    }

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
