//! A block's weights held in f32 so AWQ can rescale them, the activation-aware scales
//! themselves, and the fold that keeps the full-precision block's function unchanged:
//! for a group `source -> linears` with scales `s` (one per channel of `source`'s output),
//! `source`'s output channel `c` is divided by `s[c]` (norm weight, or linear row and bias)
//! and every linear's input column `c` is multiplied by `s[c]`, so `(x/s)·(W·diag(s))ᵀ = x·Wᵀ`.

use crate::error::{Error, Result};
use crate::io::safetensors::SafetensorsStore;
use crate::model::linear::DenseLinear;
use crate::model::llama::{
    linear_index, linear_shape, scaled_rows, stored_norm, Block, BlockDense, ScaleGroup, ScaleSource,
};
use crate::model::LlamaConfig;

/// Floor on a channel's mean |x| before the power, so a channel that never fires gets a
/// finite (tiny) scale rather than `0^alpha = 0`.
pub const X_MEAN_FLOOR: f32 = 1e-8;
/// Smallest scale before normalisation (AutoAWQ `_compute_best_scale`: `.clamp(min=1e-4)`).
pub const SCALE_FLOOR: f32 = 1e-4;
/// Added to `w_mean^(1-alpha)` in duo scaling (AutoAWQ: `+ 1e-4`).
const DUO_EPS: f32 = 1e-4;
/// Added to a group's max |w| when normalising it for `w_mean` (AutoAWQ: `+ 1e-6`).
const W_MAX_EPS: f32 = 1e-6;

/// One block's weights, owned, in f32.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockWeights {
    pub index: usize,
    /// Norm multipliers, as [`Block`] holds them (gemma: `1 + w`).
    pub input_norm: Vec<f32>,
    pub post_norm: Vec<f32>,
    /// gemma2's norms of the attention and MLP outputs; never scaled.
    pub sandwich_norms: Option<[Vec<f32>; 2]>,
    /// `[out, in]` row-major, in [`LlamaConfig::linears`] order.
    pub linears: Vec<Vec<f32>>,
    /// Each linear's bias, if it has one (same order).
    pub biases: Vec<Option<Vec<f32>>>,
    /// Per-head q/k RMSNorm weights (qwen3); never scaled.
    pub qk_norm: Option<[Vec<f32>; 2]>,
}

impl BlockWeights {
    pub fn load(cfg: &LlamaConfig, store: &SafetensorsStore, index: usize) -> Result<Self> {
        let p = format!("model.layers.{index}");
        let linears = cfg
            .linears()
            .iter()
            .map(|(short, _)| {
                let (o, i) = linear_shape(cfg, short);
                store.f32_shaped(&format!("{p}.{short}.weight"), &[o, i])
            })
            .collect::<Result<Vec<_>>>()?;
        let d = BlockDense::load(cfg, store, index)?;
        Ok(Self {
            index,
            input_norm: d.input_norm,
            post_norm: d.post_norm,
            sandwich_norms: d.sandwich_norms,
            linears,
            biases: d.biases,
            qk_norm: d.qk_norm,
        })
    }

    /// A dense [`Block`] over copies of these weights, with `replace` (linear index ->
    /// weights) substituted.
    pub fn block_with(&self, cfg: &LlamaConfig, replace: &[(usize, Vec<f32>)]) -> Block {
        let linears = (0..cfg.linears().len())
            .map(|i| {
                let (o, n) = linear_shape(cfg, cfg.linears()[i].0);
                let w =
                    replace.iter().find(|(k, _)| *k == i).map_or_else(|| self.linears[i].clone(), |(_, w)| w.clone());
                Box::new(DenseLinear::new(w, o, n)) as Box<dyn crate::model::linear::Linear>
            })
            .collect();
        let dense = BlockDense {
            input_norm: self.input_norm.clone(),
            post_norm: self.post_norm.clone(),
            sandwich_norms: self.sandwich_norms.clone(),
            biases: self.biases.clone(),
            qk_norm: self.qk_norm.clone(),
            // Calibration observes keys and values at full precision (an FP8 KV cache's
            // scales are what it measures).
            kv_scales: None,
        };
        Block::from_parts(self.index, linears, dense)
    }

    pub fn to_block(&self, cfg: &LlamaConfig) -> Block {
        self.block_with(cfg, &[])
    }

    /// Width of a group's scaled channels: the hidden size for a norm source, the
    /// scaled (last) rows of a linear source.
    fn scaled_width(cfg: &LlamaConfig, source: ScaleSource) -> usize {
        match source {
            ScaleSource::InputNorm | ScaleSource::PostNorm => cfg.hidden_size,
            ScaleSource::Linear(l) => scaled_rows(cfg, l),
        }
    }

    /// Fold scales `s` (one per channel of the group's source output) into the block.
    pub fn fold(&mut self, cfg: &LlamaConfig, group: &ScaleGroup, s: &[f32]) -> Result<()> {
        let width = Self::scaled_width(cfg, group.source);
        if s.len() != width {
            return Err(Error::other_msg(format!(
                "AWQ fold {:?}: {} scales for {width} channels",
                group.source,
                s.len()
            )));
        }
        if let Some(i) = s.iter().position(|v| !(v.is_finite() && *v > 0.0)) {
            return Err(Error::other_msg(format!(
                "AWQ fold {:?}: scale {} at channel {i} is not positive and finite",
                group.source, s[i]
            )));
        }
        match group.source {
            ScaleSource::InputNorm => self.input_norm.iter_mut().zip(s).for_each(|(w, s)| *w /= s),
            ScaleSource::PostNorm => self.post_norm.iter_mut().zip(s).for_each(|(w, s)| *w /= s),
            ScaleSource::Linear(l) => {
                let k = linear_index(cfg, l);
                let (rows, cols) = linear_shape(cfg, l);
                let first = rows - width;
                for (row, s) in self.linears[k][first * cols..].chunks_mut(cols).zip(s) {
                    row.iter_mut().for_each(|w| *w /= s);
                }
                if let Some(bias) = &mut self.biases[k] {
                    bias[first..].iter_mut().zip(s).for_each(|(b, s)| *b /= s);
                }
            }
        }
        for l in &group.linears {
            let k = linear_index(cfg, l);
            for row in self.linears[k].chunks_mut(width) {
                row.iter_mut().zip(s).for_each(|(w, s)| *w *= s);
            }
        }
        Ok(())
    }

    /// The dense tensors a fold of `group` changes that are not quantized linears:
    /// (name, values as stored: a gemma norm weight `w` for the multiplier `1 + w`).
    pub fn folded_dense(&self, cfg: &LlamaConfig, group: &ScaleGroup) -> Vec<(String, Vec<f32>)> {
        let p = format!("model.layers.{}", self.index);
        match group.source {
            ScaleSource::InputNorm => {
                vec![(format!("{p}.input_layernorm.weight"), stored_norm(cfg, &self.input_norm))]
            }
            ScaleSource::PostNorm => {
                vec![(format!("{p}.{}.weight", cfg.mlp_norm_name()), stored_norm(cfg, &self.post_norm))]
            }
            ScaleSource::Linear(l) => match &self.biases[linear_index(cfg, l)] {
                Some(b) => vec![(format!("{p}.{l}.bias"), b.clone())],
                None => vec![],
            },
        }
    }
}

/// Per-channel mean of the group-normalised |w| over the rows of `weights` (each
/// `[rows, width]`): AutoAWQ's `w_mean` for duo scaling, groups of `group` columns.
pub fn weight_mean(weights: &[&[f32]], width: usize, group: usize) -> Vec<f32> {
    let mut sum = vec![0.0f64; width];
    let mut rows = 0usize;
    for w in weights {
        for row in w.chunks_exact(width) {
            for (c0, g) in row.chunks(group.max(1)).enumerate() {
                let m = g.iter().fold(0.0f32, |m, v| m.max(v.abs())) + W_MAX_EPS;
                for (j, v) in g.iter().enumerate() {
                    sum[c0 * group + j] += (v.abs() / m) as f64;
                }
            }
            rows += 1;
        }
    }
    sum.iter().map(|s| (s / rows.max(1) as f64) as f32).collect()
}

/// AWQ scales for `alpha` (AutoAWQ `_compute_best_scale`): `s = max(x_mean, floor)^alpha`
/// (or with `w_mean`, duo scaling: `/ (w_mean^(1-alpha) + 1e-4)`), at least
/// [`SCALE_FLOOR`], then divided by `sqrt(max(s)·min(s))`; any non-finite scale becomes 1.
pub fn awq_scales(x_mean: &[f32], w_mean: Option<&[f32]>, alpha: f32) -> Vec<f32> {
    let mut s: Vec<f32> = x_mean
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            let v = x.max(X_MEAN_FLOOR).powf(alpha);
            let v = match w_mean {
                Some(w) => v / (w[i].powf(1.0 - alpha) + DUO_EPS),
                None => v,
            };
            v.max(SCALE_FLOOR)
        })
        .collect();
    let (lo, hi) =
        s.iter().filter(|v| v.is_finite()).fold((f32::INFINITY, 0.0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let norm = ((hi as f64) * (lo as f64)).sqrt() as f32;
    for v in &mut s {
        *v /= norm;
        if !v.is_finite() || *v <= 0.0 {
            *v = 1.0;
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_and_huge_channels_give_finite_positive_scales() {
        let x = [0.0f32, 1e-30, 0.5, 3.0, 1e30, 0.0];
        let w = [0.0f32, 0.2, 0.5, 1.0, 0.3, 0.0];
        for alpha in [0.0f32, 0.05, 0.5, 0.95, 1.0] {
            for wm in [None, Some(&w[..])] {
                let s = awq_scales(&x, wm, alpha);
                assert!(s.iter().all(|v| v.is_finite() && *v > 0.0), "alpha {alpha}: {s:?}");
            }
        }
        assert!(awq_scales(&x, None, 0.0).iter().all(|&v| v == 1.0), "alpha 0 is plain RTN");
        let s = awq_scales(&[1.0, 4.0], None, 1.0);
        assert!((s[0] - 0.5).abs() < 1e-6 && (s[1] - 2.0).abs() < 1e-6, "normalised by sqrt(max·min): {s:?}");
    }

    #[test]
    fn weight_mean_normalises_per_group() {
        // Two rows, width 4, groups of 2.
        let w = [1.0f32, -2.0, 0.0, 4.0, 3.0, 3.0, -1.0, 1.0];
        let m = weight_mean(&[&w], 4, 2);
        let e = [(0.5 + 1.0) / 2.0, (1.0 + 1.0) / 2.0, (0.0 + 1.0) / 2.0, (1.0 + 1.0) / 2.0];
        for (a, b) in m.iter().zip(e) {
            assert!((a - b).abs() < 1e-5, "{m:?}");
        }
    }
}
