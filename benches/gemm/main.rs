//! GPU GEMM/GEMV benchmark: int4 g128 and int8 kernels against the plain f32 WGSL kernel
//! on the same adapter (ratio from the same run) and the CPU path, for SmolLM2's linears
//! and 4096×4096 / 11008×4096 at 1, 16 and 128 tokens. See [`harness::bench_gemm`].
//!
//! Needs `[[bench]] name = "gemm"` with `harness = false` and `path = "benches/gemm/main.rs"`
//! in Cargo.toml; run with `cargo bench --bench gemm` (the adapter comes from
//! `WGPU_BACKEND` / `QUANTIZE_ADAPTER`).
//! Options: `--small` (SmolLM2 shapes only), `--tokens 1,16`, `--runs N`, `--no-cpu`,
//! `--json FILE` (rows as JSON).

mod harness;

use harness::{bench_gemm, format_bench, BenchOptions, SMOLLM2_SHAPES};
use quantize::gpu::GpuContext;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned();
    let mut opts = BenchOptions::default();
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this binary without it:
    // then one small shape, one token count, one run, as a smoke test of the whole path.
    if !args.iter().any(|a| a == "--bench") {
        opts.shapes = vec![(64, 128)];
        opts.tokens = vec![1, 16];
        opts.runs = 1;
        opts.min_seconds = 0.0;
    }
    if args.iter().any(|a| a == "--small") {
        opts.shapes = SMOLLM2_SHAPES.to_vec();
    }
    if let Some(t) = value("--tokens") {
        opts.tokens = t.split(',').map(|s| s.trim().parse().expect("--tokens: comma-separated counts")).collect();
    }
    if let Some(r) = value("--runs") {
        opts.runs = r.parse().expect("--runs: a count");
    }
    opts.cpu = !args.iter().any(|a| a == "--no-cpu");
    let ctx = match GpuContext::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    eprintln!("adapter: {}; f16: {}; timestamps: {}", ctx.describe(), ctx.has_f16(), ctx.has_timestamps());
    match bench_gemm(&ctx, &opts) {
        Ok(rows) => {
            print!("{}", format_bench(&rows));
            if let Some(path) = value("--json") {
                std::fs::write(&path, serde_json::to_string_pretty(&rows).expect("rows serialize"))
                    .expect("writing --json");
            }
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}
