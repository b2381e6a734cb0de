//! SmoothQuant (Xiao et al. 2023, "SmoothQuant: Accurate and Efficient Post-Training
//! Quantization for Large Language Models"): per-channel scales that move activation
//! outliers into the weights before W8A8, `s_j = max|X_j|^α / max|W_j|^(1-α)`, folded
//! into the operation before each group of linears ([`scale_groups`]: input norm -> q/k/v,
//! v -> o without grouped-query attention, post-attention norm -> gate/up, up -> down) so
//! the full-precision block computes the same function ([`BlockWeights::fold`]).
//! The folded norms (and biases) are written as dense replacements; vLLM loads them as
//! ordinary weights.

use crate::error::Result;
use crate::model::llama::{linear_index, scale_groups, InputSite};
use crate::model::LlamaConfig;
use crate::quant::awq::weights::BlockWeights;

/// Smallest scale (llm-compressor's SmoothQuant clamps the ratio at `1e-5`).
pub const SMOOTH_SCALE_FLOOR: f32 = 1e-5;

/// SmoothQuant scales of one group: `x_absmax[j]^α / max_l max_o |W_l[o, j]|^(1-α)` over
/// the group's linears (`[out, width]` each), floored at [`SMOOTH_SCALE_FLOOR`]; 1 for a
/// channel whose activations or weights are all zero.
pub fn smooth_scales(x_absmax: &[f32], weights: &[&[f32]], alpha: f32) -> Vec<f32> {
    let width = x_absmax.len();
    let mut w_absmax = vec![0.0f32; width];
    for w in weights {
        for row in w.chunks_exact(width) {
            for (m, &v) in w_absmax.iter_mut().zip(row) {
                *m = m.max(v.abs());
            }
        }
    }
    x_absmax
        .iter()
        .zip(&w_absmax)
        .map(
            |(&x, &w)| {
                if x > 0.0 && w > 0.0 {
                    (x.powf(alpha) / w.powf(1.0 - alpha)).max(SMOOTH_SCALE_FLOOR)
                } else {
                    1.0
                }
            },
        )
        .collect()
}

/// Fold SmoothQuant scales into every scale group of block `bw`, from the per-channel
/// max |x| of each site's input measured on the unsmoothed block (`absmax(site)`; a fold
/// keeps the block's function, so every site can be measured in one pass). Returns the
/// dense tensors that changed (norm weights, biases), by name.
pub fn smooth_block(
    cfg: &LlamaConfig,
    bw: &mut BlockWeights,
    absmax: &dyn Fn(InputSite) -> Vec<f32>,
    alpha: f32,
) -> Result<Vec<(String, Vec<f32>)>> {
    let mut dense = Vec::new();
    for g in scale_groups(cfg)? {
        let ws: Vec<&[f32]> = g.linears.iter().map(|l| bw.linears[linear_index(cfg, l)].as_slice()).collect();
        let s = smooth_scales(&absmax(g.site), &ws, alpha);
        bw.fold(cfg, &g, &s)?;
        dense.extend(bw.folded_dense(cfg, &g));
    }
    Ok(dense)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_balance_activation_and_weight_ranges() {
        let x = [8.0f32, 1.0, 0.0];
        let w = [0.5f32, 2.0, 1.0, -0.25, 0.5, 0.0]; // [2 rows, 3]
        let s = smooth_scales(&x, &[&w], 0.5);
        assert_eq!(s, vec![(8.0f32 / 0.5).sqrt(), (1.0f32 / 2.0).sqrt(), 1.0]);
        // after scaling, max|x/s| = max|w·s| per channel (alpha 0.5)
        assert!(((x[0] / s[0]) - 0.5 * s[0]).abs() < 1e-6 && ((x[1] / s[1]) - 2.0 * s[1]).abs() < 1e-6);
    }
}
