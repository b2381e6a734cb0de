//! GFLOP/s of the products behind the calibration forward and the GPTQ Hessians, at
//! SmolLM2's shapes (a profiling aid): `cargo run --release --example gemm_rates [rows]`.
use quantize::calib::hessian::HessianAccumulator;
use quantize::model::linear::matmul_xwt;
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let rows: usize = std::env::args().nth(1).map_or(4096, |s| s.parse().unwrap());
    println!("threads {} rows {rows}", rayon::current_num_threads());
    for &(n, k) in &[(576usize, 576usize), (192, 576), (1536, 576), (576, 1536), (2048, 2048)] {
        let x: Vec<f32> = (0..rows * k).map(|i| ((i * 7919 % 1000) as f32) * 1e-3 - 0.5).collect();
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 104729 % 1000) as f32) * 1e-3 - 0.5).collect();
        let mut y = vec![0.0f32; rows * n];
        let t: Vec<f64> = (0..7)
            .map(|_| {
                let t0 = Instant::now();
                matmul_xwt(&x, rows, &w, n, k, &mut y);
                t0.elapsed().as_secs_f64()
            })
            .collect();
        let s = median(t);
        println!(
            "xwt  [{rows}x{k}]x[{k}x{n}]  {:8.3} ms  {:6.1} GFLOP/s",
            s * 1e3,
            2.0 * (rows * n * k) as f64 / s / 1e9
        );
    }
    for &c in &[576usize, 1536] {
        let x: Vec<f32> = (0..rows * c).map(|i| ((i * 7919 % 1000) as f32) * 1e-3 - 0.5).collect();
        let t: Vec<f64> = (0..7)
            .map(|_| {
                let mut acc = HessianAccumulator::new(c);
                let t0 = Instant::now();
                acc.add_batch(&x, rows);
                t0.elapsed().as_secs_f64()
            })
            .collect();
        let s = median(t);
        // lower triangle: rows · c(c+1)/2 multiply-adds
        println!(
            "hess [{rows}x{c}]  {:8.3} ms  {:6.1} GFLOP/s (lower triangle)",
            s * 1e3,
            (rows * c * (c + 1)) as f64 / s / 1e9
        );
    }
}
