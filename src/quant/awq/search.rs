//! The grid search over alpha for one scale group (AutoAWQ `_search_best_scale` /
//! `_compute_best_scale`): for each alpha, scales from the group input's per-channel
//! mean |x|, the group's linears quantized as `Q(W·diag(s))·diag(s)⁻¹` (the folded
//! weights as the inputs `x/s` see them), and the mean squared error of the inspected
//! output (attention after o_proj, MLP after down_proj, or the linears themselves)
//! against the full-precision output on the calibration tokens. The error "before" is
//! that of s = 1, plain RTN (alpha = 0 without duo scaling). With `awq+gptq` the
//! weights of each alpha can come from GPTQ instead (with the Hessian of the scaled
//! inputs), so the scales are chosen for the quantizer that will run.

use super::weights::{awq_scales, weight_mean, BlockWeights};
use crate::calib::hessian::{HessianAccumulator, HessianView};
use crate::calib::observers::AbsMeanObserver;
use crate::error::Result;
use crate::format::QuantScheme;
use crate::model::layers::Rope;
use crate::model::llama::{linear_index, linear_shape, Block, ScaleGroup, ScaleTarget};
use crate::model::LlamaConfig;
use crate::quant::gptq::{gptq_quantize_factored, GptqOptions, HessianFactor};
use crate::quant::rtn::quantize_rtn;
use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef};

/// What the search needs besides the group: shapes and how to cut the tokens.
pub struct SearchContext<'a> {
    pub cfg: &'a LlamaConfig,
    pub rope: &'a Rope,
    pub seqlen: usize,
    /// Windows per forward chunk.
    pub chunk_windows: usize,
    /// The scheme each linear (by full name) will be quantized into; `None`: left at full
    /// precision (its search weights are not rounded).
    pub scheme_of: &'a dyn Fn(&str) -> Option<QuantScheme>,
    /// Alphas `i / grid` for `i = 0 .. grid`.
    pub grid: usize,
    pub duo_scaling: bool,
    /// Score each alpha with the weights GPTQ (these options) would give instead of
    /// RTN's: `awq+gptq` then picks the scales that help the quantizer it runs.
    pub gptq: Option<GptqOptions>,
}

/// The outcome for one group.
#[derive(Clone, Debug)]
pub struct GroupSearch {
    pub alpha: f32,
    pub scales: Vec<f32>,
    /// Mean squared output error at each alpha, in grid order.
    pub errors: Vec<f64>,
    /// The same with s = 1: plain RTN (alpha = 0 unless duo scaling).
    pub rtn_error: f64,
}

impl GroupSearch {
    pub fn error_before(&self) -> f64 {
        self.rtn_error
    }
    pub fn error_after(&self) -> f64 {
        self.errors.iter().copied().fold(f64::INFINITY, f64::min)
    }
}

/// The inspected output of `block` for input rows `x` (`windows` whole windows).
fn inspect(ctx: &SearchContext, block: &Block, target: ScaleTarget, x: &[f32], windows: usize) -> Vec<f32> {
    sublayer_output(ctx.cfg, ctx.rope, ctx.seqlen, block, target, x, windows)
}

/// The attention output after o_proj (`x`: the normalized block input) or the MLP output
/// after down_proj (`x`: the normalized MLP input) of `block`, `[windows·seqlen, hidden]`.
pub fn sublayer_output(
    cfg: &LlamaConfig,
    rope: &Rope,
    seqlen: usize,
    block: &Block,
    target: ScaleTarget,
    x: &[f32],
    windows: usize,
) -> Vec<f32> {
    let t = windows * seqlen;
    match target {
        ScaleTarget::AttentionOutput => {
            let attn = block.attention(cfg, rope, x, windows, seqlen);
            let mut o = vec![0.0f32; t * cfg.hidden_size];
            block.linears[linear_index(cfg, "self_attn.o_proj")].forward(&attn, t, &mut o);
            o
        }
        ScaleTarget::MlpOutput => {
            let act = block.mlp_act(cfg, x);
            let mut d = vec![0.0f32; t * cfg.hidden_size];
            block.linears[linear_index(cfg, "mlp.down_proj")].forward(&act, t, &mut d);
            d
        }
        ScaleTarget::Linears => unreachable!("linear targets are scored through the Gram matrix"),
    }
}

/// How the search quantizes the scaled weights.
#[derive(Clone, Copy)]
enum Quantizer<'a> {
    Rtn,
    /// GPTQ with the Hessian of the scaled inputs `x/s`, `diag(s)⁻¹ H diag(s)⁻¹`, `[cols, cols]`.
    Gptq(&'a GptqOptions, &'a [f32], &'a HessianFactor),
}

/// `Q(W·diag(s))·diag(s)⁻¹` for `W`: `[rows, cols]`.
fn quantized_effective(
    name: &str,
    w: &[f32],
    rows: usize,
    cols: usize,
    s: &[f32],
    scheme: QuantScheme,
    quantizer: Quantizer,
) -> Result<Vec<f32>> {
    let mut ws = w.to_vec();
    for row in ws.chunks_mut(cols) {
        row.iter_mut().zip(s).for_each(|(v, s)| *v *= s);
    }
    let mut q = match quantizer {
        Quantizer::Rtn => quantize_rtn(name, &ws, rows, cols, scheme, None)?.dequantize(),
        Quantizer::Gptq(opts, hs, factor) => {
            gptq_quantize_factored(name, &ws, rows, HessianView::dense(hs, cols), factor, scheme, opts)?
                .tensor
                .dequantize()
        }
    };
    for row in q.chunks_mut(cols) {
        row.iter_mut().zip(s).for_each(|(v, s)| *v /= s);
    }
    Ok(q)
}

/// `Σ_r d_r · G · d_rᵀ` for `d`: `[rows, n]`, `g`: `[n, n]` symmetric.
fn quadratic_sum(d: &[f32], rows: usize, n: usize, g: &[f32]) -> f64 {
    let mut m = vec![0.0f32; rows * n];
    matmul(
        MatMut::from_row_major_slice_mut(&mut m, rows, n),
        Accum::Replace,
        MatRef::from_row_major_slice(d, rows, n),
        MatRef::from_row_major_slice(g, n, n),
        1.0f32,
        crate::model::linear::par(),
    );
    m.iter().zip(d).map(|(a, b)| (*a as f64) * (*b as f64)).sum()
}

/// Search the scales of `group` in the (unscaled, full-precision) block `bw`, whose
/// input at the group's site is `x`: `[windows·seqlen, width]`, the activation
/// magnitudes and the errors both from all of `x`.
pub fn search_group(ctx: &SearchContext, bw: &BlockWeights, group: &ScaleGroup, x: &[f32]) -> Result<GroupSearch> {
    let cfg = ctx.cfg;
    let idx: Vec<usize> = group.linears.iter().map(|l| linear_index(cfg, l)).collect();
    let shapes_owned: Vec<(usize, usize)> = group.linears.iter().map(|l| linear_shape(cfg, l)).collect();
    let shapes = shapes_owned.as_slice();
    let width = shapes[0].1;
    let mut am = AbsMeanObserver::new(width);
    am.observe(x);
    let x_mean = am.mean();
    let names: Vec<String> = group.linears.iter().map(|l| format!("model.layers.{}.{l}", bw.index)).collect();
    let schemes: Vec<Option<QuantScheme>> = names.iter().map(|n| (ctx.scheme_of)(n)).collect();
    let w_mean = ctx.duo_scaling.then(|| {
        let ws: Vec<&[f32]> = idx.iter().map(|&k| bw.linears[k].as_slice()).collect();
        weight_mean(&ws, width, schemes.iter().flatten().next().map_or(width, |s| s.group_width(width)))
    });
    // 2/n XᵀX of the search tokens: the Linears target's score and GPTQ's Hessian.
    let hessian = (group.target == ScaleTarget::Linears || ctx.gptq.is_some()).then(|| {
        let mut acc = HessianAccumulator::new(width);
        for part in x.chunks(ctx.chunk_windows.max(1) * ctx.seqlen * width) {
            acc.add_batch(part, part.len() / width);
        }
        acc.hessian()
    });
    // The group's linears as the inputs x/s see them after quantization with scales s.
    let effective = |s: &[f32]| -> Result<Vec<(usize, Vec<f32>)>> {
        // GPTQ's Hessian of x/s, once per alpha for all the group's linears.
        let scaled: Option<Vec<f32>> = ctx
            .gptq
            .and(hessian.as_ref())
            .map(|h| h.iter().enumerate().map(|(k, v)| v / (s[k / width] * s[k % width])).collect());
        // ... and its factorization, shared by them too.
        let factor = match (&ctx.gptq, &scaled) {
            (Some(g), Some(hs)) => Some(HessianFactor::new(&names[0], hs, width, g)?),
            _ => None,
        };
        let quantizer = match (&ctx.gptq, &scaled, &factor) {
            (Some(g), Some(hs), Some(f)) => Quantizer::Gptq(g, hs, f),
            _ => Quantizer::Rtn,
        };
        idx.iter()
            .zip(shapes)
            .zip(names.iter().zip(&schemes))
            .map(|((&k, &(o, i)), (name, scheme))| match scheme {
                Some(scheme) => Ok((k, quantized_effective(name, &bw.linears[k], o, i, s, *scheme, quantizer)?)),
                None => Ok((k, bw.linears[k].clone())),
            })
            .collect()
    };
    let score: Box<dyn Fn(&[f32]) -> Result<f64> + '_> = if group.target == ScaleTarget::Linears {
        // Mean over tokens of ‖ΔW x‖² is Σ_r Δw_r (XᵀX / n) Δw_rᵀ: one Gram matrix
        // instead of a forward per alpha.
        let gram: Vec<f32> = hessian.as_ref().expect("computed for linear targets").iter().map(|v| 0.5 * v).collect();
        let outs: usize = shapes.iter().map(|s| s.0).sum();
        Box::new(move |s: &[f32]| {
            let mut total = 0.0f64;
            for ((k, q), &(o, n)) in effective(s)?.iter().zip(shapes) {
                let d: Vec<f32> = bw.linears[*k].iter().zip(q).map(|(w, q)| w - q).collect();
                total += quadratic_sum(&d, o, n, &gram);
            }
            Ok(total / outs as f64)
        })
    } else {
        let rows = ctx.chunk_windows.max(1) * ctx.seqlen;
        let fp = bw.to_block(cfg);
        let target: Vec<Vec<f32>> = x
            .chunks(rows * width)
            .map(|part| inspect(ctx, &fp, group.target, part, part.len() / (ctx.seqlen * width)))
            .collect();
        drop(fp);
        let numel: usize = target.iter().map(Vec::len).sum();
        Box::new(move |s: &[f32]| {
            let block = bw.block_with(cfg, &effective(s)?);
            let mut total = 0.0f64;
            for (part, t) in x.chunks(rows * width).zip(&target) {
                let out = inspect(ctx, &block, group.target, part, part.len() / (ctx.seqlen * width));
                total += out.iter().zip(t).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>();
            }
            Ok(total / numel.max(1) as f64)
        })
    };
    let grid = ctx.grid.max(1);
    let mut errors = Vec::with_capacity(grid);
    let mut best: Option<(f64, f32, Vec<f32>)> = None;
    for i in 0..grid {
        let alpha = i as f32 / grid as f32;
        let s = awq_scales(&x_mean, w_mean.as_deref(), alpha);
        let err = score(&s)?;
        errors.push(err);
        if best.as_ref().is_none_or(|b| err < b.0) {
            best = Some((err, alpha, s));
        }
    }
    // Without duo scaling alpha = 0 is s = 1; with it, plain RTN costs one more score.
    let rtn_error = if w_mean.is_some() { score(&vec![1.0; width])? } else { errors[0] };
    let (_, alpha, scales) = best.expect("grid has at least one point");
    Ok(GroupSearch { alpha, scales, errors, rtn_error })
}
