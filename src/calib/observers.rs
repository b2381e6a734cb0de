//! Observers: pure accumulation of activation statistics over calibration batches.
//! Each sees `x`: `[tokens, width]` row-major, the input of a linear site.

use super::histogram::HistogramObserver;
use crate::calib::hessian::{CrossAccumulator, HessianAccumulator};

/// Which statistics a quantizer asks the runner for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsRequest {
    pub hessian: bool,
    pub abs_mean: bool,
    pub min_max: bool,
    /// Whole-site histogram (static activation scales).
    pub histogram: bool,
    /// GPTAQ's cross term of the full-precision model's inputs with these
    /// ([`CrossAccumulator`]): the driver then runs a full-precision stream beside.
    pub cross: bool,
}

/// Per-channel min and max.
#[derive(Clone, Debug)]
pub struct MinMaxObserver {
    pub min: Vec<f32>,
    pub max: Vec<f32>,
}

impl MinMaxObserver {
    pub fn new(width: usize) -> Self {
        Self { min: vec![f32::INFINITY; width], max: vec![f32::NEG_INFINITY; width] }
    }
    pub fn observe(&mut self, x: &[f32]) {
        for row in x.chunks_exact(self.min.len()) {
            for ((lo, hi), &v) in self.min.iter_mut().zip(self.max.iter_mut()).zip(row) {
                *lo = lo.min(v);
                *hi = hi.max(v);
            }
        }
    }
    /// Whole-tensor range.
    pub fn tensor_range(&self) -> (f32, f32) {
        (
            self.min.iter().copied().fold(f32::INFINITY, f32::min),
            self.max.iter().copied().fold(f32::NEG_INFINITY, f32::max),
        )
    }
}

/// Per-channel mean |x| (AWQ's activation magnitude), accumulated in f64.
#[derive(Clone, Debug)]
pub struct AbsMeanObserver {
    sum: Vec<f64>,
    tokens: usize,
}

impl AbsMeanObserver {
    pub fn new(width: usize) -> Self {
        Self { sum: vec![0.0; width], tokens: 0 }
    }
    pub fn observe(&mut self, x: &[f32]) {
        let w = self.sum.len();
        for row in x.chunks_exact(w) {
            for (s, &v) in self.sum.iter_mut().zip(row) {
                *s += v.abs() as f64;
            }
        }
        self.tokens += x.len() / w;
    }
    /// Rebuild from per-channel sums of |x| over `tokens` rows (a statistics file).
    pub fn from_parts(sum: Vec<f64>, tokens: usize) -> Self {
        Self { sum, tokens }
    }
    /// Per-channel sums of |x| and the rows they cover.
    pub fn parts(&self) -> (&[f64], usize) {
        (&self.sum, self.tokens)
    }
    pub fn mean(&self) -> Vec<f32> {
        self.sum.iter().map(|&s| (s / self.tokens.max(1) as f64) as f32).collect()
    }
}

/// Statistics of one linear site (the input shared by its linears).
pub struct SiteStats {
    pub width: usize,
    pub tokens: usize,
    pub hessian: Option<HessianAccumulator>,
    pub abs_mean: Option<AbsMeanObserver>,
    pub min_max: Option<MinMaxObserver>,
    pub histogram: Option<HistogramObserver>,
    pub cross: Option<CrossAccumulator>,
}

impl SiteStats {
    pub fn new(width: usize, req: StatsRequest) -> Self {
        Self {
            width,
            tokens: 0,
            hessian: req.hessian.then(|| HessianAccumulator::new(width)),
            abs_mean: req.abs_mean.then(|| AbsMeanObserver::new(width)),
            min_max: req.min_max.then(|| MinMaxObserver::new(width)),
            histogram: req.histogram.then(HistogramObserver::new),
            cross: req.cross.then(|| CrossAccumulator::new(width)),
        }
    }

    /// The full-precision model's inputs `x_fp` of the rows last given to [`Self::observe`].
    pub fn observe_full_precision(&mut self, x: &[f32], x_fp: &[f32], tokens: usize) {
        if let Some(c) = &mut self.cross {
            c.add_batch(x, x_fp, tokens);
        }
    }

    pub fn observe(&mut self, x: &[f32], tokens: usize) {
        self.tokens += tokens;
        if let Some(h) = &mut self.hessian {
            h.add_batch(x, tokens);
        }
        if let Some(a) = &mut self.abs_mean {
            a.observe(x);
        }
        if let Some(m) = &mut self.min_max {
            m.observe(x);
        }
        if let Some(h) = &mut self.histogram {
            h.observe(x);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observers_match_direct_computation() {
        let x = [1.0f32, -2.0, 3.0, -4.0, 0.5, 6.0]; // [3 tokens, 2 channels]
        let mut s = SiteStats::new(
            2,
            StatsRequest { hessian: true, abs_mean: true, min_max: true, histogram: true, cross: false },
        );
        s.observe(&x[..2], 1);
        s.observe(&x[2..], 2);
        let mm = s.min_max.as_ref().unwrap();
        assert_eq!((mm.min.clone(), mm.max.clone()), (vec![0.5, -4.0], vec![3.0, 6.0]));
        assert_eq!(s.abs_mean.as_ref().unwrap().mean(), vec![(1.0 + 3.0 + 0.5) / 3.0, (2.0 + 4.0 + 6.0) / 3.0]);
        // H = 2/n Σ xᵀx
        let h = s.hessian.as_ref().unwrap().hessian();
        let direct =
            |i: usize, j: usize| 2.0 / 3.0 * (0..3).map(|t| x[t * 2 + i] as f64 * x[t * 2 + j] as f64).sum::<f64>();
        for i in 0..2 {
            for j in 0..2 {
                assert!((h[i * 2 + j] as f64 - direct(i, j)).abs() < 1e-5, "H[{i},{j}]");
            }
        }
        assert_eq!(s.tokens, 3);
        let hist = s.histogram.as_ref().unwrap();
        assert_eq!((hist.range_minmax(), hist.values()), ((-4.0, 6.0), 6));
    }
}
