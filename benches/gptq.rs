//! Time GPTQ on one layer: Hessian accumulation, the damped inverse factor, and the
//! whole `gptq_quantize` call, for this model's layer shapes and for 4096x4096.
//! Needs `[[bench]] name = "gptq"` with `harness = false` in Cargo.toml; run with
//! `cargo bench --bench gptq` (add `-- 4096` to run only shapes with that many columns).
//!
//! Work counted: Hessian `2·tokens·cols²/2` (lower triangle), inverse factor `2/3·cols³`
//! (one Cholesky and one triangular inverse, f64), the sweep `rows·cols·(cols + block)`
//! (the lazy-batch GEMMs, `Σ 2·rows·block·(cols - i2) ≈ rows·cols²`, plus the in-block
//! rank-1 updates, `rows·cols·block`).

use faer::MatRef;
use quantize::calib::hessian::HessianAccumulator;
use quantize::format::QuantScheme;
use quantize::quant::gptq::{gptq_quantize, GptqOptions};
use quantize::quant::linalg::cholesky_inverse_upper;
use rand::{Rng, SeedableRng};
use std::time::Instant;

fn main() {
    let filter: Option<usize> = std::env::args().skip(1).find_map(|a| a.parse().ok());
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this binary without it:
    // then one small shape only, as a smoke test.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let shapes: &[(usize, usize)] =
        if smoke { &[(64, 96)] } else { &[(576, 576), (1536, 576), (576, 1536), (4096, 4096)] };
    let scheme = QuantScheme::int(4).unwrap().asymmetric().unwrap().group(128).unwrap();
    println!("threads: {}; int4 g128 asym, block 128", rayon::current_num_threads());
    for &(rows, cols) in shapes {
        if filter.is_some_and(|f| f != cols) {
            continue;
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let w: Vec<f32> = (0..rows * cols).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let tokens = if smoke { 256 } else { 2048 };
        let x: Vec<f32> = (0..tokens * cols).map(|_| rng.random_range(-1.0f32..1.0)).collect();

        let t = Instant::now();
        let mut acc = HessianAccumulator::new(cols);
        for batch in x.chunks(512 * cols) {
            acc.add_batch(batch, batch.len() / cols);
        }
        let h = acc.hessian();
        let t_h = t.elapsed().as_secs_f64();

        let t_inv = (0..3)
            .map(|_| {
                let t = Instant::now();
                let u = cholesky_inverse_upper(MatRef::from_column_major_slice(&h, cols, cols), 0.01);
                assert!(u.is_ok());
                t.elapsed().as_secs_f64()
            })
            .fold(f64::INFINITY, f64::min);

        for act_order in [false, true] {
            let opts = GptqOptions { act_order, ..Default::default() };
            let best = (0..3)
                .map(|_| gptq_quantize("bench", &w, rows, cols, &h, scheme, &opts).unwrap().seconds)
                .fold(f64::INFINITY, f64::min);
            // Timings on a busy machine can make the difference meaningless: then show 0.
            let sweep = best - t_inv;
            let sweep_gflops =
                if sweep > 0.0 { rows as f64 * cols as f64 * (cols + 128) as f64 / sweep / 1e9 } else { 0.0 };
            println!(
                "{rows:>5}x{cols:<5} act_order={act_order:<5} gptq {:>8.1} ms | hessian({tokens} tok) {:>7.1} ms {:>5.0} GFLOP/s | inverse {:>7.1} ms {:>5.0} GFLOP/s | sweep ≈ {:>7.1} ms {:>5.0} GFLOP/s",
                best * 1e3,
                t_h * 1e3,
                tokens as f64 * (cols * cols) as f64 / t_h / 1e9,
                t_inv * 1e3,
                2.0 / 3.0 * (cols as f64).powi(3) / t_inv / 1e9,
                sweep.max(0.0) * 1e3,
                sweep_gflops,
            );
        }
    }
}
