//! Time and bytes of GPTQ's two solve steps at real widths (a profiling aid): the
//! factorization of one site's Hessian (`HessianFactor::new`) and the sweep of one linear
//! reading it (`gptq_quantize_factored`), int4 g128 asym with the CLI's defaults
//! (act-order, static groups, MSE).
//!
//! `cargo run --release --example gptq_solve -- ROWS COLS [REPEATS]`, e.g. TinyLlama's
//! down_proj `2048 5632`, Llama-3.1-8B's `4096 14336`.
use quantize::calib::hessian::HessianView;
use quantize::format::scheme::QuantScheme;
use quantize::quant::gptq::{gptq_quantize_factored, GptqOptions, HessianFactor};
use rand::{Rng, SeedableRng};
use std::time::Instant;

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|s| s.parse().expect("a number")).collect();
    let (rows, cols) = (args[0], args[1]);
    let repeats = args.get(2).copied().unwrap_or(3);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    // H = 2/t · XᵀX of t = cols + 256 Gaussian tokens with uneven channel scales.
    let tokens = cols + 256;
    let scale: Vec<f32> = (0..cols).map(|_| 0.2 + 3.0 * rng.random::<f32>().powi(4)).collect();
    let x: Vec<f32> = (0..tokens * cols).map(|k| (rng.random::<f32>() - 0.5) * scale[k % cols]).collect();
    let xm = faer::MatRef::from_row_major_slice(&x, tokens, cols);
    let mut h = faer::Mat::<f32>::zeros(cols, cols);
    faer::linalg::matmul::matmul(
        h.as_mut(),
        faer::Accum::Replace,
        xm.transpose(),
        xm,
        2.0 / tokens as f32,
        faer::Par::rayon(0),
    );
    drop(x);
    let hessian: Vec<f32> = (0..cols * cols).map(|k| h[(k / cols, k % cols)]).collect();
    drop(h);
    // Laplace-distributed weights, heavier-tailed like a trained model's (uniform weights
    // would make the clipping search's first factor, no clipping, always the best).
    let weight: Vec<f32> = (0..rows * cols)
        .map(|_| {
            let (u, s): (f32, bool) = (rng.random::<f32>().max(1e-7), rng.random());
            if s {
                -u.ln() * 0.02
            } else {
                u.ln() * 0.02
            }
        })
        .collect();
    let scheme = QuantScheme::int(4).unwrap().group(128).unwrap();
    let scheme = QuantScheme { symmetric: false, ..scheme };
    let opts = GptqOptions { act_order: true, static_groups: true, mse: true, ..GptqOptions::default() };
    println!("threads {} rows {rows} cols {cols}", rayon::current_num_threads());
    let hm = faer::MatRef::from_row_major_slice(&hessian, cols, cols);
    for _ in 0..repeats {
        let t = Instant::now();
        let u = quantize::quant::linalg::cholesky_inverse_upper(hm, 0.01).unwrap();
        let t_chol = t.elapsed().as_secs_f64();
        drop(u);
        let t0 = Instant::now();
        let factor = HessianFactor::new("site", &hessian, cols, &opts).unwrap();
        let t_factor = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let r =
            gptq_quantize_factored("linear", &weight, rows, HessianView::dense(&hessian, cols), &factor, scheme, &opts)
                .unwrap();
        let t_sweep = t1.elapsed().as_secs_f64();
        let n = cols as f64;
        println!(
            "cholesky_inverse_upper {t_chol:7.3} s  factor {t_factor:7.3} s ({:5.1} GFLOP/s at 2n³/3)  sweep {t_sweep:7.3} s ({:5.1} GFLOP/s at 2·rows·n²)  loss {:.6e}",
            2.0 * n * n * n / 3.0 / t_factor / 1e9,
            2.0 * rows as f64 * n * n / t_sweep / 1e9,
            r.loss
        );
    }
}
