//! A vectorizable f32 `exp` for the softmaxes (attention, log-sum-exp over the 49,152
//! logits of a row) and SiLU. glibc's `expf` is an opaque call per element, which kept
//! LLVM from vectorizing those loops: the log-sum-exp of the scored rows alone took 40%
//! of an eval (measured with perf). This one inlines into 4- or 8-wide code.
//!
//! Method (Cephes `expf`): `x = n·ln2 + r`, `|r| ≤ ln2/2`, with ln2 split in two
//! (Cody–Waite) so `r` is exact; `exp(r)` by a degree-6 minimax polynomial; times `2^n`
//! built from the exponent bits. Relative error ≤ 2 ulp on `[EXP_MIN, EXP_MAX]`
//! (tested against f64 `exp`); inputs outside are clamped.

/// Lower input bound: `exp(-87) ≈ 1.6e-38`, still a normal f32. Anything smaller counts
/// as `exp(-87)`, which no sum of terms near 1 can see.
pub const EXP_MIN: f32 = -87.0;
/// Upper input bound: `exp(88) ≈ 1.65e38 < f32::MAX`.
pub const EXP_MAX: f32 = 88.0;

/// `exp(x)` for `x` in `[EXP_MIN, EXP_MAX]`, clamped outside (NaN stays NaN).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4; // 0.693359375: few bits, so n·LN2_HI is exact
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Round to nearest without SSE4.1's roundps: adding 1.5·2^23 pushes the fraction out.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(EXP_MIN, EXP_MAX); // NaN stays NaN
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 5.000_000_1e-1;
    let y = p * r * r + r + 1.0;
    // n in [-126, 127]: 2^n is a normal f32.
    y * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// `Σ exp(row[i] - max)` in f64 (each term ≤ 1), 8 lanes at a time.
pub fn sum_exp_shifted(row: &[f32], max: f32) -> f64 {
    let mut lanes = [0.0f64; 8];
    let mut chunks = row.chunks_exact(8);
    for c in &mut chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l += exp(v - max) as f64;
        }
    }
    let tail: f64 = chunks.remainder().iter().map(|&v| exp(v - max) as f64).sum();
    lanes.iter().sum::<f64>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn ulps(a: f32, b: f64) -> f64 {
        let b32 = b as f32;
        ((a as f64 - b) / (b32.abs() as f64 * f32::EPSILON as f64)).abs()
    }

    #[test]
    fn exp_within_two_ulp_of_f64() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut xs: Vec<f32> = (0..200_000).map(|_| rng.random_range(EXP_MIN..EXP_MAX)).collect();
        xs.extend([0.0, -0.0, EXP_MIN, EXP_MAX, 1e-30, -1e-30, 0.5, -0.5, 1.0, -1.0, -0.346_573_6, 0.346_573_6]);
        for x in xs {
            let e = ulps(exp(x), (x as f64).exp());
            assert!(e <= 2.0, "exp({x}) = {} vs {}: {e} ulp", exp(x), (x as f64).exp());
        }
    }

    #[test]
    fn exp_clamps_out_of_range_and_keeps_nan() {
        assert_eq!(exp(-1e4), exp(EXP_MIN));
        assert_eq!(exp(f32::NEG_INFINITY), exp(EXP_MIN));
        assert!(exp(f32::INFINITY).is_finite() && exp(1e4) == exp(EXP_MAX));
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn sum_exp_matches_f64_on_odd_lengths() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        for n in [0usize, 1, 7, 8, 9, 1000, 49_152] {
            let row: Vec<f32> = (0..n).map(|_| rng.random_range(-40.0..15.0)).collect();
            let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let want: f64 = row.iter().map(|&v| ((v - m) as f64).exp()).sum();
            let got = sum_exp_shifted(&row, m);
            assert!((got - want).abs() <= 1e-6 * want.max(1e-30), "n={n}: {got} vs {want}");
        }
    }
}
