//! `GpuLinear`: a [`Linear`] whose weights live on the GPU, packed, uploaded once.
//!
//! Resident layout (docs/GPU.md), for `out` outputs, `in` inputs and `b`-bit codes,
//! `pw = 32 / b` codes per word (FP8: the raw bytes, `b = 8`):
//! - `qweight` u32 `[kw = ceil(in / pw), out]`: code `j` of word `(w, o)` is input
//!   `w·pw + j` at bits `[j·b, (j+1)·b)` — GPTQ's `qweight` for 2, 4 and 8 bits; 3-bit
//!   codes are packed 10 per word (never crossing words). Padding codes are 0.
//! - `scales` f32 `[groups, out]`; `qzeros` u32 `[groups, ceil(out / pw)]`: the real zero
//!   points packed along the outputs (GPTQ `qzeros` without the v1 "minus one").
//! - act-order: when the `g_idx` groups are balanced (every GPTQ act-order checkpoint:
//!   after a stable sort of the columns by group, column `i` is in group `i / group_size`),
//!   the codes are stored in that sorted order and `x` is gathered in the same order on
//!   upload, so the kernels see plain groups. Any other `g_idx` is uploaded `[in]` and
//!   looked up per input.
//! - dense f32 weights are stored transposed, `[in, out]`.
//!
//! A weight larger than the adapter's storage binding limit is split into ranges of
//! outputs, each with its own buffers, dispatched in the same submission; token ranges
//! are split the same way when `x` or `y` would exceed the limit.

use super::{Dispatch, GpuContext, Kernel, Params};
use crate::error::{Error, Result};
use crate::format::{NumberFormat, QuantizedTensor};
use crate::model::linear::Linear;
use std::sync::Arc;

/// Up to this many tokens the GEMV kernels run (one workgroup row per token, weights
/// read once per token); above, the tiled GEMM (weights read once per 64 tokens).
pub const GEMV_MAX_TOKENS: usize = 4;

/// Arithmetic of the integer kernels. `F16` needs shader-f16 (`GpuContext::has_f16`):
/// products of one packed word (GEMV) or one 32-input K step (GEMM) are summed in f16,
/// everything else in f32. FP8 and dense weights always run in f32.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    #[default]
    F32,
    F16,
}

/// Which kernel shape runs a forward.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KernelChoice {
    /// GEMV up to [`GEMV_MAX_TOKENS`] tokens, GEMM above (GEMV always on CPU adapters).
    #[default]
    Auto,
    Gemv,
    Gemm,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    F32,
    Int { bits: u8 },
    Fp8 { e5m2: bool },
}

/// The buffers of one range of outputs `[o0, o0 + n)`, rows `ldw = n` rounded up to 4
/// (so the GEMV kernels read 4 outputs as one vec4).
struct Chunk {
    o0: usize,
    n: usize,
    ldw: usize,
    weight: wgpu::Buffer,
    scales: Option<wgpu::Buffer>,
    zeros: Option<wgpu::Buffer>,
    zw: usize,
}

pub struct GpuLinear {
    ctx: Arc<GpuContext>,
    name: String,
    family: Family,
    precision: Precision,
    rows: usize,
    cols: usize,
    /// Codes per u32 word (1 for dense f32).
    per_word: usize,
    /// Words per output column; the padded input width is `kw · per_word`.
    kw: usize,
    group_size: usize,
    groups: usize,
    g_idx: Option<wgpu::Buffer>,
    /// Input column of each stored position (balanced act-order), applied to x on upload.
    perm: Option<Vec<u32>>,
    chunks: Vec<Chunk>,
    bytes: usize,
}

/// How the input columns are stored.
enum Order {
    Natural,
    /// Codes stored in this column order; groups are then plain runs.
    Permuted(Vec<u32>),
    /// Unbalanced act-order: the kernels look the group of each input up.
    Lookup(Vec<u32>),
}

fn column_order(q: &QuantizedTensor) -> Order {
    let Some(g) = &q.g_idx else { return Order::Natural };
    let width = q.scheme.group_width(q.cols);
    let mut perm: Vec<u32> = (0..q.cols as u32).collect();
    perm.sort_by_key(|&c| g[c as usize]);
    if !(0..q.cols).all(|i| g[perm[i] as usize] as usize == i / width) {
        return Order::Lookup(g.clone());
    }
    if perm.iter().enumerate().all(|(i, &c)| i == c as usize) {
        Order::Natural
    } else {
        Order::Permuted(perm)
    }
}

/// Output ranges whose buffers each fit one storage binding (`col_bytes` per output):
/// multiples of 64 outputs, or of 4 (one vec4 of the GEMV) when fewer fit.
fn plan_chunks(ctx: &GpuContext, name: &str, rows: usize, col_bytes: usize) -> Result<Vec<(usize, usize)>> {
    let limit = ctx.max_binding_bytes();
    let max_n = (limit / col_bytes.max(1) as u64).min(ctx.max_workgroups() as u64 * 32) as usize;
    if max_n < 4 {
        return Err(Error::tensor(
            name,
            format!("4 outputs (one GEMV vector) need {} bytes of GPU weights, more than the adapter's storage binding limit of {limit} bytes", 4 * col_bytes),
        ));
    }
    let step = if max_n >= 64 { max_n / 64 * 64 } else { max_n / 4 * 4 };
    Ok((0..rows).step_by(step).map(|o0| (o0, step.min(rows - o0))).collect())
}

/// Pack rows `[o0, o0 + n)` of `codes` (`[rows, cols]`) into `[kw, ldw]` words, `bits`
/// per code, input position `i` taken from column `order[i]`; padding stays 0.
fn pack_kmajor(
    codes: &[u8],
    cols: usize,
    (o0, n, ldw): (usize, usize, usize),
    bits: usize,
    kw: usize,
    order: Option<&[u32]>,
) -> Vec<u32> {
    let pw = 32 / bits;
    let mut words = vec![0u32; kw * ldw];
    for r in 0..n {
        let row = &codes[(o0 + r) * cols..(o0 + r + 1) * cols];
        for i in 0..cols {
            let c = order.map_or(i, |p| p[i] as usize);
            words[(i / pw) * ldw + r] |= (row[c] as u32) << ((i % pw) * bits);
        }
    }
    words
}

fn check_quantized(name: &str, q: &QuantizedTensor) -> Result<()> {
    let groups = q.groups_per_row();
    let n = match q.scheme.granularity {
        crate::format::Granularity::PerTensor => 1,
        _ => q.rows * groups,
    };
    let bad = |m: String| Err(Error::tensor(name, m));
    if q.codes.len() != q.rows * q.cols || q.scales.len() != n {
        return bad(format!(
            "{} codes / {} scales for [{}, {}] in {}",
            q.codes.len(),
            q.scales.len(),
            q.rows,
            q.cols,
            q.scheme
        ));
    }
    if !q.scheme.is_fp8() {
        match &q.zeros {
            Some(z) if z.len() == n => {}
            z => return bad(format!("{:?} zero points, expected {n}", z.as_ref().map(Vec::len))),
        }
        let maxq = q.scheme.maxq();
        if let Some(i) = q.codes.iter().position(|&c| c as u32 > maxq) {
            return bad(format!(
                "code {} at row {} col {} exceeds {} bits",
                q.codes[i],
                i / q.cols,
                i % q.cols,
                q.scheme.bits()
            ));
        }
    }
    if let Some(g) = &q.g_idx {
        if g.len() != q.cols || g.iter().any(|&v| v as usize >= groups) {
            return bad(format!(
                "g_idx of {} entries for {} columns / {groups} groups, or out of range",
                g.len(),
                q.cols
            ));
        }
    }
    Ok(())
}

impl GpuLinear {
    /// Upload a quantized tensor: integer (2, 3, 4, 8 bits; per tensor, per channel or
    /// groups; symmetric or not; act-order) or FP8 (E4M3, E5M2). Errors name `name`.
    pub fn from_quantized(
        ctx: &Arc<GpuContext>,
        name: &str,
        q: &QuantizedTensor,
        precision: Precision,
    ) -> Result<Self> {
        check_quantized(name, q)?;
        if precision == Precision::F16 && !ctx.has_f16() {
            return Err(Error::option(
                "precision",
                format!("f16 kernels need shader-f16, which adapter {} lacks; use f32", ctx.describe()),
            ));
        }
        let (rows, cols) = (q.rows, q.cols);
        let (family, bits) = match q.scheme.format {
            NumberFormat::Int { bits } => (Family::Int { bits }, bits as usize),
            NumberFormat::Fp8E4M3 => (Family::Fp8 { e5m2: false }, 8),
            NumberFormat::Fp8E5M2 => (Family::Fp8 { e5m2: true }, 8),
            NumberFormat::Ggml(t) => {
                return Err(Error::tensor(name, format!("{t} blocks run in llama.cpp, not in this tool's GPU kernels")))
            }
        };
        let pw = 32 / bits;
        let kw = cols.div_ceil(pw);
        let kp = kw * pw;
        let groups = q.groups_per_row();
        // Per-channel: one group spanning the padded width (a multiple of pw: word-aligned).
        let group_size = if groups == 1 { kp.max(pw) } else { q.scheme.group_width(cols) };
        let (perm, g_idx) = match column_order(q) {
            Order::Natural => (None, None),
            Order::Permuted(p) => (Some(p), None),
            Order::Lookup(mut g) => {
                g.resize(kp.max(1), 0);
                (None, Some(ctx.upload(&format!("{name}.g_idx"), &g)))
            }
        };
        let col_bytes = 4 * kw.max(groups);
        let mut chunks = vec![];
        let mut bytes = g_idx.as_ref().map_or(0, |b| b.size() as usize);
        for (o0, n) in plan_chunks(ctx, name, rows, col_bytes)? {
            let ldw = n.next_multiple_of(4);
            let words = pack_kmajor(&q.codes, cols, (o0, n, ldw), bits, kw, perm.as_deref());
            let weight = ctx.upload(&format!("{name}.qweight[{o0}..]"), &words);
            let mut sc = vec![0f32; groups * ldw];
            for g in 0..groups {
                for r in 0..n {
                    sc[g * ldw + r] = q.scales[q.param_index(o0 + r, g)];
                }
            }
            let zw = ldw.div_ceil(pw);
            let zeros = q.zeros.as_ref().map(|z| {
                let mut zs = vec![0u32; groups * zw];
                for g in 0..groups {
                    for r in 0..n {
                        zs[g * zw + r / pw] |= (z[q.param_index(o0 + r, g)] as u32) << ((r % pw) * bits);
                    }
                }
                ctx.upload(&format!("{name}.qzeros[{o0}..]"), &zs)
            });
            let scales = ctx.upload(&format!("{name}.scales[{o0}..]"), &sc);
            bytes += (weight.size() + scales.size() + zeros.as_ref().map_or(0, |z| z.size())) as usize;
            chunks.push(Chunk { o0, n, ldw, weight, scales: Some(scales), zeros, zw });
        }
        let lin = Self {
            ctx: ctx.clone(),
            name: name.into(),
            family,
            precision,
            rows,
            cols,
            per_word: pw,
            kw,
            group_size,
            groups,
            g_idx,
            perm,
            chunks,
            bytes,
        };
        lin.check_token_limits()?;
        Ok(lin)
    }

    /// Upload dense f32 weights `[out, in]` (stored transposed, `[in, out]`), run by the
    /// plain f32 kernels.
    pub fn from_dense(ctx: &Arc<GpuContext>, name: &str, weight: &[f32], out: usize, inp: usize) -> Result<Self> {
        if weight.len() != out * inp {
            return Err(Error::tensor(name, format!("{} values for shape [{out}, {inp}]", weight.len())));
        }
        let mut chunks = vec![];
        let mut bytes = 0;
        for (o0, n) in plan_chunks(ctx, name, out, 4 * inp)? {
            let ldw = n.next_multiple_of(4);
            let mut wt = vec![0f32; inp * ldw];
            for r in 0..n {
                for (c, &v) in weight[(o0 + r) * inp..(o0 + r + 1) * inp].iter().enumerate() {
                    wt[c * ldw + r] = v;
                }
            }
            let weight = ctx.upload(&format!("{name}.weight[{o0}..]"), &wt);
            bytes += weight.size() as usize;
            chunks.push(Chunk { o0, n, ldw, weight, scales: None, zeros: None, zw: 0 });
        }
        let lin = Self {
            ctx: ctx.clone(),
            name: name.into(),
            family: Family::F32,
            precision: Precision::F32,
            rows: out,
            cols: inp,
            per_word: 1,
            kw: inp,
            group_size: inp.max(1),
            groups: 1,
            g_idx: None,
            perm: None,
            chunks,
            bytes,
        };
        lin.check_token_limits()?;
        Ok(lin)
    }

    fn check_token_limits(&self) -> Result<()> {
        let limit = self.ctx.max_binding_bytes() as usize;
        let row = 4 * self.padded_in().max(self.rows);
        if row > limit {
            return Err(Error::tensor(&self.name, format!("one token of x or y takes {row} bytes, more than the adapter's storage binding limit of {limit} bytes")));
        }
        Ok(())
    }

    pub(crate) fn padded_in(&self) -> usize {
        self.kw * self.per_word
    }

    /// Number of output ranges the weight was split into (1 unless it exceeds a binding).
    pub fn chunks(&self) -> usize {
        self.chunks.len()
    }

    /// The kernel a forward of `tokens` tokens runs.
    pub fn kernel(&self, tokens: usize, choice: KernelChoice) -> Kernel {
        let gemv = match choice {
            // Software adapters (llvmpipe) run the tiled GEMM ~3x slower than one GEMV per
            // token (they gather workgroup-memory reads lane by lane): GEMV at any size.
            KernelChoice::Auto => {
                tokens <= GEMV_MAX_TOKENS || self.ctx.adapter_info().device_type == wgpu::DeviceType::Cpu
            }
            KernelChoice::Gemv => true,
            KernelChoice::Gemm => false,
        };
        match (self.family, self.precision, gemv) {
            (Family::F32, _, true) => Kernel::GemvF32,
            (Family::F32, _, false) => Kernel::GemmF32,
            (Family::Int { bits }, Precision::F32, true) => Kernel::GemvInt { bits },
            (Family::Int { bits }, Precision::F32, false) => Kernel::GemmInt { bits },
            (Family::Int { bits }, Precision::F16, true) => Kernel::GemvIntF16 { bits },
            (Family::Int { bits }, Precision::F16, false) => Kernel::GemmIntF16 { bits },
            (Family::Fp8 { e5m2 }, _, true) => Kernel::GemvFp8 { e5m2 },
            (Family::Fp8 { e5m2 }, _, false) => Kernel::GemmFp8 { e5m2 },
        }
    }

    /// Most tokens one submission takes (x and y each within one binding, workgroup counts
    /// within the adapter's limit).
    pub(crate) fn max_tokens(&self, kernel: Kernel) -> usize {
        let limit = self.ctx.max_binding_bytes() as usize;
        let per_dispatch = self.ctx.max_workgroups() as usize * kernel.tile().1;
        (limit / (4 * self.padded_in().max(1))).min(limit / (4 * self.rows.max(1))).min(per_dispatch).max(1)
    }

    /// The dispatches of one submission of `tokens` tokens.
    pub(crate) fn dispatches(&self, kernel: Kernel, tokens: usize) -> Vec<Dispatch<'_>> {
        let (tn, tt) = kernel.tile();
        self.chunks
            .iter()
            .map(|c| Dispatch {
                params: Params {
                    n: c.n as u32,
                    k: self.padded_in() as u32,
                    kw: self.kw as u32,
                    tokens: tokens as u32,
                    group_size: self.group_size as u32,
                    groups: self.groups as u32,
                    act_order: self.g_idx.is_some() as u32,
                    ldy: self.rows as u32,
                    y0: c.o0 as u32,
                    zw: c.zw as u32,
                    ldw: c.ldw as u32,
                    pad: 0,
                },
                buffers: [Some(&c.weight), c.scales.as_ref(), c.zeros.as_ref(), self.g_idx.as_ref()],
                groups: [c.n.div_ceil(tn) as u32, tokens.div_ceil(tt) as u32, 1],
            })
            .collect()
    }

    /// `y = x · Ŵᵀ` on the GPU (`x`: `[tokens, in]`, `y`: `[tokens, out]`) with the kernel
    /// `choice` selects. Errors name the layer: shapes, or what the device reported.
    pub fn forward_with(&self, x: &[f32], tokens: usize, y: &mut [f32], choice: KernelChoice) -> Result<()> {
        let (rows, cols) = (self.rows, self.cols);
        if x.len() != tokens * cols || y.len() != tokens * rows {
            return Err(Error::tensor(
                &self.name,
                format!(
                    "forward of {tokens} tokens needs x of {} and y of {} values, got {} and {}",
                    tokens * cols,
                    tokens * rows,
                    x.len(),
                    y.len()
                ),
            ));
        }
        if tokens == 0 || rows == 0 {
            return Ok(());
        }
        let kernel = self.kernel(tokens, choice);
        let pipeline = self.ctx.pipeline(kernel)?;
        let kp = self.padded_in();
        let step = self.max_tokens(kernel);
        let mut staged = vec![];
        for t0 in (0..tokens).step_by(step) {
            let tn = step.min(tokens - t0);
            let xs = &x[t0 * cols..(t0 + tn) * cols];
            let xin: &[f32] = if self.perm.is_none() && kp == cols {
                xs
            } else {
                staged.clear();
                staged.resize(tn * kp, 0.0);
                for (dst, src) in staged.chunks_mut(kp.max(1)).zip(xs.chunks(cols.max(1))) {
                    match &self.perm {
                        Some(p) => dst.iter_mut().zip(p).for_each(|(d, &c)| *d = src[c as usize]),
                        None => dst[..cols].copy_from_slice(src),
                    }
                }
                &staged
            };
            let d = self.dispatches(kernel, tn);
            self.ctx
                .run(&pipeline, xin, &d, &mut y[t0 * rows..(t0 + tn) * rows])
                .map_err(|e| Error::tensor(&self.name, e.to_string()))?;
        }
        Ok(())
    }

    pub fn context(&self) -> &Arc<GpuContext> {
        &self.ctx
    }
}

impl Linear for GpuLinear {
    fn in_features(&self) -> usize {
        self.cols
    }
    fn out_features(&self) -> usize {
        self.rows
    }
    /// Panics only if the device fails mid-run (shapes and limits are checked when the
    /// layer is built); use [`GpuLinear::forward_with`] to get the error instead.
    fn forward(&self, x: &[f32], tokens: usize, y: &mut [f32]) {
        if let Err(e) = self.forward_with(x, tokens, y, KernelChoice::Auto) {
            panic!("GPU linear failed: {e}");
        }
    }
    fn weight_bytes(&self) -> usize {
        self.bytes
    }
}

/// A factory for `crate::model::load::load_model_with`: every quantized linear of the
/// model runs on `ctx`.
pub fn quantized_factory(
    ctx: Arc<GpuContext>,
    precision: Precision,
) -> impl Fn(&str, &QuantizedTensor) -> Result<Box<dyn Linear>> {
    move |name, q| Ok(Box::new(GpuLinear::from_quantized(&ctx, name, q, precision)?) as Box<dyn Linear>)
}
