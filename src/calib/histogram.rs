//! Histogram of one site's activations, for static activation scales: the exact range
//! (min/max), percentile clipping, and the MSE-optimal clipping search.
//!
//! Bins: [`HIST_BINS`] of equal width `w` (a power of two) centred on 0, bin `i` holding
//! the values in `[(i - HALF)·w, (i - HALF + 1)·w)`. When a batch exceeds the range, `w`
//! doubles and neighbouring bins merge (bin `j` <- bins `2j - HALF`, `2j - HALF + 1`).
//! Because `floor(v / 2w) = floor(floor(v / w) / 2)`, the histogram after any sequence of
//! batches equals binning every value once at the final width: it does not depend on how
//! the calibration tokens were chunked, nor on threads (TensorRT's calibrator instead
//! re-bins, which depends on batch order).

use crate::error::{Error, Result};
use crate::format::activation::ActScheme;
use rayon::prelude::*;

/// Bins on each side of 0.
pub const HIST_HALF: usize = 1 << 13;
/// Total bins: the range `[-HALF·w, HALF·w)` at a resolution of `w ≤ amax / (HALF/2)`.
pub const HIST_BINS: usize = 2 * HIST_HALF;
/// Starting width, before any value is seen: small enough for any activation scale.
const START_WIDTH: f32 = 1.0 / (1u64 << 40) as f32;
/// MSE search: clipping candidates `amax · 2^(-k / STEPS_PER_OCTAVE)` ...
pub const MSE_STEPS_PER_OCTAVE: u32 = 16;
/// ... for `k = 0 ..= STEPS_PER_OCTAVE · MSE_OCTAVES` (down to `amax / 1024`).
pub const MSE_OCTAVES: u32 = 10;

/// Values binned per parallel task (the partial counts fit u32: 2^20 < 2^32).
const BIN_TASK_VALUES: usize = 1 << 20;

/// Bin of `v` at `1 / width = inv`: `floor(v · inv) + HALF`, clamped. `|v · inv| < HALF`
/// for every value the range was widened for; the floor is a truncation corrected for
/// negative non-integers (no libm `floorf` call on baseline x86-64).
#[inline(always)]
fn bin_of(v: f32, inv: f32) -> usize {
    let t = v * inv;
    let trunc = t as i32; // saturating, toward zero
    let floor = trunc as i64 - ((trunc as f32) > t) as i64;
    (floor + HIST_HALF as i64).clamp(0, HIST_BINS as i64 - 1) as usize
}

#[derive(Clone, Debug, PartialEq)]
pub struct HistogramObserver {
    counts: Vec<u64>,
    width: f32,
    min: f32,
    max: f32,
    values: u64,
}

impl Default for HistogramObserver {
    fn default() -> Self {
        Self::new()
    }
}

impl HistogramObserver {
    pub fn new() -> Self {
        Self { counts: vec![0; HIST_BINS], width: START_WIDTH, min: f32::INFINITY, max: f32::NEG_INFINITY, values: 0 }
    }

    /// Rebuild from stored parts (a statistics file), checking them.
    pub fn from_parts(counts: Vec<u64>, width: f32, min: f32, max: f32, values: u64) -> Result<Self> {
        let bad = |m: String| Err(Error::other_msg(format!("activation histogram: {m}")));
        if counts.len() != HIST_BINS {
            return bad(format!("{} bins, expected {HIST_BINS}", counts.len()));
        }
        if !(width > 0.0 && width.is_finite() && width.to_bits() & 0x007f_ffff == 0) {
            return bad(format!("bin width {width} is not a positive power of two"));
        }
        if counts.iter().sum::<u64>() != values || (values > 0 && !(min <= max && min.is_finite() && max.is_finite())) {
            return bad(format!("{values} values, bins holding {}, range [{min}, {max}]", counts.iter().sum::<u64>()));
        }
        Ok(Self { counts, width, min, max, values })
    }

    pub fn counts(&self) -> &[u64] {
        &self.counts
    }
    pub fn width(&self) -> f32 {
        self.width
    }
    /// Exact smallest value seen (+inf before any).
    pub fn min(&self) -> f32 {
        self.min
    }
    /// Exact largest value seen (-inf before any).
    pub fn max(&self) -> f32 {
        self.max
    }
    pub fn values(&self) -> u64 {
        self.values
    }

    /// Add finite values (the runner refuses NaN/Inf before observers see them).
    pub fn observe(&mut self, x: &[f32]) {
        if x.is_empty() {
            return;
        }
        let (lo, hi) = x.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
        assert!(lo.is_finite() && hi.is_finite(), "HistogramObserver: non-finite activation in [{lo}, {hi}]");
        self.min = self.min.min(lo);
        self.max = self.max.max(hi);
        let amax = (-lo).max(hi);
        while amax >= HIST_HALF as f32 * self.width {
            self.double_width();
        }
        // Exact: the width is a power of two. Counts are integers, so per-task partial
        // histograms merge to the same bins in any order: parallel, and still
        // independent of the thread count.
        let inv = 1.0 / self.width;
        let partial = x
            .par_chunks(BIN_TASK_VALUES)
            .map(|part| {
                let mut counts = vec![0u32; HIST_BINS];
                for &v in part {
                    counts[bin_of(v, inv)] += 1;
                }
                counts
            })
            .reduce_with(|mut a, b| {
                a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                a
            })
            .expect("x is not empty");
        self.counts.iter_mut().zip(&partial).for_each(|(c, &p)| *c += p as u64);
        self.values += x.len() as u64;
    }

    fn double_width(&mut self) {
        let mut merged = vec![0u64; HIST_BINS];
        for (i, &c) in self.counts.iter().enumerate() {
            // old offset o = i - HALF -> new offset floor(o / 2)
            let o = i as i64 - HIST_HALF as i64;
            merged[(o.div_euclid(2) + HIST_HALF as i64) as usize] += c;
        }
        self.counts = merged;
        self.width *= 2.0;
    }

    /// Centre and count of every non-empty bin.
    fn occupied(&self) -> Vec<(f32, u64)> {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, &c)| c > 0)
            .map(|(i, &c)| (((i as f64 - HIST_HALF as f64 + 0.5) * self.width as f64) as f32, c))
            .collect()
    }

    /// The exact observed range, `(0, 0)` before any value.
    pub fn range_minmax(&self) -> (f32, f32) {
        if self.values == 0 {
            return (0.0, 0.0);
        }
        (self.min, self.max)
    }

    /// Range holding `pct` percent of the values (0 < pct ≤ 100), never beyond the exact
    /// range. Symmetric: `±c` with `c` the `pct` percentile of `|x|` (upper bin edge);
    /// asymmetric: the `100 - pct` and `pct` percentiles of `x` (outer bin edges).
    pub fn range_percentile(&self, pct: f64, symmetric: bool) -> (f32, f32) {
        let (lo, hi) = self.range_minmax();
        if self.values == 0 {
            return (lo, hi);
        }
        let need = |f: f64| ((f / 100.0) * self.values as f64).ceil().max(1.0) as u64;
        let w = self.width as f64;
        if symmetric {
            let target = need(pct);
            let mut acc = 0u64;
            for k in 0..HIST_HALF {
                acc += self.counts[HIST_HALF + k] + self.counts[HIST_HALF - 1 - k];
                if acc >= target {
                    let c = (((k + 1) as f64 * w) as f32).min((-lo).max(hi));
                    return (-c, c);
                }
            }
            return (lo, hi);
        }
        let (t_lo, t_hi) = (need(100.0 - pct).min(self.values), need(pct));
        let mut acc = 0u64;
        let mut first = None;
        let mut last = None;
        for (i, &c) in self.counts.iter().enumerate() {
            acc += c;
            if first.is_none() && acc >= t_lo {
                first = Some(i);
            }
            if acc >= t_hi {
                last = Some(i);
                break;
            }
        }
        let edge = |i: usize| ((i as f64 - HIST_HALF as f64) * w) as f32;
        let a = first.map_or(lo, |i| edge(i).max(lo));
        let b = last.map_or(hi, |i| edge(i + 1).min(hi));
        (a, b)
    }

    /// The clipping range minimizing `Σ (x - qdq(x))²` over the histogram (bin centres
    /// stand for their values) under `scheme`, among `p · [min, max]` with
    /// `p = 2^(-k/16)`, `k = 0..=160`; ties keep the wider range.
    pub fn range_mse(&self, scheme: &ActScheme) -> (f32, f32) {
        let (lo, hi) = self.range_minmax();
        if self.values == 0 {
            return (lo, hi);
        }
        let (lo, hi) = if scheme.symmetric {
            let a = (-lo).max(hi);
            (-a, a)
        } else {
            (lo, hi)
        };
        let bins = self.occupied();
        let mut best = (f64::INFINITY, (lo, hi));
        for k in 0..=MSE_STEPS_PER_OCTAVE * MSE_OCTAVES {
            let p = (-(k as f64) / MSE_STEPS_PER_OCTAVE as f64).exp2() as f32;
            let (a, b) = (p * lo, p * hi);
            let params = scheme.params(a, b);
            let mut err = 0.0f64;
            for &(x, c) in &bins {
                let d = (x - scheme.qdq(params, x)) as f64;
                err += c as f64 * d * d;
                if err >= best.0 {
                    break;
                }
            }
            if err < best.0 {
                best = (err, (a, b));
            }
        }
        best.1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn bin_of_is_floor_plus_half() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let inv = 1.0 / 0.125f32;
        let mut vals: Vec<f32> = (0..100_000).map(|_| rng.random_range(-1000.0f32..1000.0)).collect();
        vals.extend([0.0, -0.0, 0.125, -0.125, -0.0625, 1e-30, -1e-30, 1023.875, -1024.0, 5e6, -5e6, 1e12, -1e12]);
        for v in vals {
            let want = ((v * inv).floor() as i64 + HIST_HALF as i64).clamp(0, HIST_BINS as i64 - 1) as usize;
            assert_eq!(bin_of(v, inv), want, "v = {v}");
        }
    }

    #[test]
    fn chunking_does_not_change_the_histogram() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let x: Vec<f32> =
            (0..20_000).map(|i| rng.random_range(-1.0f32..1.0) * if i % 997 == 0 { 300.0 } else { 1.0 }).collect();
        let mut one = HistogramObserver::new();
        one.observe(&x);
        let mut many = HistogramObserver::new();
        // small values first, then the outliers force the width to double several times
        let mut sorted = x.clone();
        sorted.sort_by(|a, b| a.abs().partial_cmp(&b.abs()).unwrap());
        for c in sorted.chunks(777) {
            many.observe(c);
        }
        assert_eq!(one.width(), many.width());
        assert_eq!(one.counts(), many.counts());
        assert_eq!(one.range_minmax(), many.range_minmax());
        // direct binning at the final width
        let w = one.width();
        for &v in &x[..50] {
            let i = ((v / w).floor() as i64 + HIST_HALF as i64) as usize;
            assert!(one.counts()[i] > 0);
        }
        assert!(
            x.iter().all(|&v| v.abs() < HIST_HALF as f32 * w)
                && x.iter().any(|&v| v.abs() >= HIST_HALF as f32 * w / 2.0),
            "the width is the smallest that fits"
        );
    }

    #[test]
    fn percentile_matches_sorted_values() {
        let x: Vec<f32> = (0..10_000).map(|i| (i as f32 - 5000.0) / 100.0).collect(); // -50 .. 49.99
        let mut h = HistogramObserver::new();
        h.observe(&x);
        let (a, b) = h.range_percentile(90.0, true);
        // 90% of |x| lies below 45 (direct count), within one bin
        let mut abs: Vec<f32> = x.iter().map(|v| v.abs()).collect();
        abs.sort_by(|p, q| p.partial_cmp(q).unwrap());
        let direct = abs[(0.9 * abs.len() as f64).ceil() as usize - 1];
        assert!(b >= direct && b - direct <= h.width(), "{b} vs {direct}");
        assert_eq!(a, -b);
        assert_eq!(h.range_percentile(100.0, true).1, 50.0, "100% is the exact amax");
        let (lo, hi) = h.range_percentile(95.0, false);
        assert!((lo - -45.0).abs() <= h.width() + 0.01 && (hi - 45.0).abs() <= h.width() + 0.01, "[{lo}, {hi}]");
    }

    #[test]
    fn mse_clips_a_lone_outlier_but_not_a_uniform_range() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let mut x: Vec<f32> = (0..100_000).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let s = ActScheme::int8(true, false);
        let mut h = HistogramObserver::new();
        h.observe(&x);
        let (_, c) = h.range_mse(&s);
        assert!(c > 0.95, "uniform data: clipping costs more than it saves ({c})");
        // One outlier at 50 among 1e6 values in [-1, 1): keeping it costs every value
        // (50/127)²/12, ≈ 1.3e4 in all; clipping at c costs (50 - c)² + 1e6·(c/127)²/12,
        // smallest near c ≈ 8 (≈ 2.1e3).
        x.extend((0..900_000).map(|_| rng.random_range(-1.0f32..1.0)));
        x.push(50.0);
        let mut h = HistogramObserver::new();
        h.observe(&x);
        let (_, c) = h.range_mse(&s);
        assert!(c > 4.0 && c < 12.0, "the lone outlier is clipped near the optimum ({c})");
        // the chosen range has a smaller error than min/max, measured on the raw values
        let err = |c: f32| {
            let p = s.params(-c, c);
            x.iter().map(|&v| ((v - s.qdq(p, v)) as f64).powi(2)).sum::<f64>()
        };
        assert!(err(c) < err(50.0), "{} vs {}", err(c), err(50.0));
    }

    #[test]
    fn parts_round_trip_and_are_checked() {
        let mut h = HistogramObserver::new();
        h.observe(&[0.5, -2.0, 3.0]);
        let back = HistogramObserver::from_parts(h.counts().to_vec(), h.width(), h.min(), h.max(), h.values()).unwrap();
        assert_eq!(back, h);
        assert!(HistogramObserver::from_parts(h.counts().to_vec(), 0.3, h.min(), h.max(), h.values()).is_err());
        assert!(HistogramObserver::from_parts(h.counts().to_vec(), h.width(), h.min(), h.max(), 4).is_err());
        assert_eq!(HistogramObserver::new().range_mse(&ActScheme::fp8_e4m3(false)), (0.0, 0.0));
    }
}
