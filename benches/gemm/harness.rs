//! The benchmark harness of `benches/gemm` (also included by `tests/gpu.rs`, which checks
//! its rows): time of the quantized kernels against the plain f32 shader on the same
//! adapter (a ratio measured in the same run) and against the CPU path ([`matmul_xwt`] on
//! the dequantized weights).
//!
//! Kernel time is the GPU clock (timestamp queries at the start and end of one compute
//! pass holding `reps` forwards, [`GpuLinear::time_forwards`]) when the adapter has them,
//! else the wall clock around submit + wait of the same batch; `reps` is chosen so one
//! batch lasts `min_seconds`. Every figure is the median of `runs` batches. `weight GB/s`
//! is the resident weight bytes (codes, scales, zeros) of one forward divided by its time;
//! GEMM reads them once per 64 tokens, so above 64 tokens this understates the traffic.
//! `GFLOP/s` counts `2 · tokens · out · in`.

use quantize::format::QuantScheme;
use quantize::gpu::{GpuContext, GpuLinear, KernelChoice, Precision};
use quantize::model::linear::{matmul_xwt, Linear};
use quantize::quant::rtn::quantize_rtn;
use quantize::Result;
use rand::{Rng, SeedableRng};
use std::sync::Arc;
use std::time::Instant;

/// SmolLM2-135M's linears (q/o, k/v, gate/up, down) as `(out, in)`.
pub const SMOLLM2_SHAPES: [(usize, usize); 4] = [(576, 576), (192, 576), (1536, 576), (576, 1536)];
/// Llama-7B-sized linears.
pub const LARGE_SHAPES: [(usize, usize); 2] = [(4096, 4096), (11008, 4096)];

#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// `(out, in)` shapes.
    pub shapes: Vec<(usize, usize)>,
    pub tokens: Vec<usize>,
    /// Timed batches per measurement (the median is reported).
    pub runs: usize,
    /// Each batch repeats the forward until it lasts about this long.
    pub min_seconds: f64,
    /// Also time the CPU path.
    pub cpu: bool,
    /// Also run the f16 kernels when the adapter has shader-f16.
    pub f16: bool,
    pub seed: u64,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            shapes: SMOLLM2_SHAPES.iter().chain(&LARGE_SHAPES).copied().collect(),
            tokens: vec![1, 16, 128],
            runs: 5,
            min_seconds: 0.05,
            cpu: true,
            f16: true,
            seed: 0,
        }
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchRow {
    pub adapter: String,
    pub out: usize,
    pub inp: usize,
    pub tokens: usize,
    /// `f32`, `int4-g128`, `int8-channel`, with `-f16` for the f16 kernels.
    pub format: String,
    /// The WGSL file that ran.
    pub kernel: String,
    /// Median seconds per forward.
    pub seconds: f64,
    /// Resident weight bytes read by one forward.
    pub weight_bytes: u64,
    pub weight_gb_s: f64,
    pub gflop_s: f64,
    /// f32 shader time / this time (same shape and tokens, same run).
    pub vs_f32: f64,
    /// The CPU path's median seconds (f32 `matmul_xwt` on dequantized weights).
    pub cpu_seconds: Option<f64>,
    /// CPU time / this time.
    pub vs_cpu: Option<f64>,
    /// Device copy bandwidth (bytes read + written per second, GB/s) measured in this run.
    pub copy_gb_s: Option<f64>,
    /// Whether `seconds` comes from GPU timestamps (else wall clock).
    pub gpu_clock: bool,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Median of `runs` calls of `batch(reps)` / reps, `reps` chosen from one trial call so a
/// batch lasts about `min_seconds`.
fn measure(runs: usize, min_seconds: f64, mut batch: impl FnMut(usize) -> Result<f64>) -> Result<f64> {
    let t1 = batch(1)?.max(1e-7);
    let reps = ((min_seconds / t1).ceil() as usize).clamp(1, 2000);
    let mut v = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        v.push(batch(reps)? / reps as f64);
    }
    Ok(median(v))
}

/// Device copy bandwidth in GB/s, counting bytes read plus bytes written, from
/// buffer-to-buffer copies of `bytes` (capped at the adapter's buffer size limit).
pub fn copy_bandwidth(ctx: &GpuContext, bytes: u64) -> Result<f64> {
    let copies = ctx.copy_buffers(bytes);
    let t = measure(5, 0.05, |reps| copies.time(reps))?;
    Ok(2.0 * copies.bytes() as f64 / t / 1e9)
}

/// Median seconds per forward of `lin` on `tokens` tokens (one submission's worth), and
/// whether every batch was timed on the GPU clock.
fn time_linear(lin: &GpuLinear, tokens: usize, runs: usize, min_seconds: f64) -> Result<(f64, bool)> {
    let mut clock = true;
    let t = measure(runs, min_seconds, |reps| {
        let (t, gpu) = lin.time_forwards(tokens, reps)?;
        clock &= gpu;
        Ok(t)
    })?;
    Ok((t, clock))
}

/// Run the benchmark: for each shape and token count, the f32 shader, int4 g128 and int8
/// per-channel (and their f16 variants when available), plus the CPU path.
pub fn bench_gemm(ctx: &Arc<GpuContext>, opts: &BenchOptions) -> Result<Vec<BenchRow>> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(opts.seed);
    let copy = copy_bandwidth(ctx, 256 << 20).ok();
    let mut rows = vec![];
    for &(out, inp) in &opts.shapes {
        let w: Vec<f32> = (0..out * inp).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let int4 = quantize_rtn("bench", &w, out, inp, QuantScheme::int(4)?.group(128)?, None)?;
        let int8 = quantize_rtn("bench", &w, out, inp, QuantScheme::int(8)?, None)?;
        let mut layers: Vec<(String, GpuLinear)> =
            vec![("f32".into(), GpuLinear::from_dense(ctx, "bench.f32", &w, out, inp)?)];
        layers.push(("int4-g128".into(), GpuLinear::from_quantized(ctx, "bench.int4", &int4, Precision::F32)?));
        layers.push(("int8-channel".into(), GpuLinear::from_quantized(ctx, "bench.int8", &int8, Precision::F32)?));
        if opts.f16 && ctx.has_f16() {
            layers.push(("int4-g128-f16".into(), GpuLinear::from_quantized(ctx, "bench.int4", &int4, Precision::F16)?));
            layers.push((
                "int8-channel-f16".into(),
                GpuLinear::from_quantized(ctx, "bench.int8", &int8, Precision::F16)?,
            ));
        }
        let deq = int4.dequantize();
        for &tokens in &opts.tokens {
            let cpu_seconds = if opts.cpu {
                let x: Vec<f32> = (0..tokens * inp).map(|_| rng.random_range(-1.0f32..1.0)).collect();
                let mut y = vec![0f32; tokens * out];
                Some(measure(opts.runs, opts.min_seconds, |reps| {
                    let t0 = Instant::now();
                    for _ in 0..reps {
                        matmul_xwt(&x, tokens, &deq, out, inp, &mut y);
                    }
                    Ok(t0.elapsed().as_secs_f64())
                })?)
            } else {
                None
            };
            let mut f32_seconds = None;
            for (format, lin) in &layers {
                let (seconds, gpu_clock) = time_linear(lin, tokens, opts.runs, opts.min_seconds)?;
                let f32_s = *f32_seconds.get_or_insert(seconds);
                let weight_bytes = lin.weight_bytes() as u64;
                rows.push(BenchRow {
                    adapter: ctx.describe(),
                    out,
                    inp,
                    tokens,
                    format: format.clone(),
                    kernel: lin.kernel(tokens, KernelChoice::Auto).file().into(),
                    seconds,
                    weight_bytes,
                    weight_gb_s: weight_bytes as f64 / seconds / 1e9,
                    gflop_s: 2.0 * (tokens * out * inp) as f64 / seconds / 1e9,
                    vs_f32: f32_s / seconds,
                    cpu_seconds,
                    vs_cpu: cpu_seconds.map(|c| c / seconds),
                    copy_gb_s: copy,
                    gpu_clock,
                });
            }
        }
    }
    Ok(rows)
}

/// The rows as a Markdown table, with the adapter and copy bandwidth in a header line.
pub fn format_bench(rows: &[BenchRow]) -> String {
    let mut s = String::new();
    if let Some(r) = rows.first() {
        let clock = if rows.iter().all(|r| r.gpu_clock) { "GPU timestamps" } else { "wall clock (submit + wait)" };
        let copy = r.copy_gb_s.map_or("not measured".into(), |c| format!("{c:.1} GB/s (read + write)"));
        s += &format!("Adapter: {}; kernel time from {clock}; device copy bandwidth {copy}.\n\n", r.adapter);
    }
    s += "| out × in | tokens | format | kernel | µs | weight GB/s | % of copy | GFLOP/s | × f32 shader | CPU µs | × CPU |\n";
    s += "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|\n";
    for r in rows {
        let pct = r.copy_gb_s.map_or("–".into(), |c| format!("{:.0}%", 100.0 * r.weight_gb_s / c));
        let cpu = r.cpu_seconds.map_or("–".into(), |c| format!("{:.1}", c * 1e6));
        let vs_cpu = r.vs_cpu.map_or("–".into(), |v| format!("{v:.2}"));
        s += &format!(
            "| {}×{} | {} | {} | {} | {:.1} | {:.2} | {} | {:.2} | {:.2} | {} | {} |\n",
            r.out,
            r.inp,
            r.tokens,
            r.format,
            r.kernel,
            r.seconds * 1e6,
            r.weight_gb_s,
            pct,
            r.gflop_s,
            r.vs_f32,
            cpu,
            vs_cpu
        );
    }
    s
}
