//! Throughput of the one-token quantized linear (`QuantizedLinear::forward` with one
//! token), in weights per second, for a matrix that stays in cache and one that streams
//! from memory, with exact products and with int8 inputs (`--dot int8`); and the f32
//! GEMV for comparison. Median of 7 runs.
//!
//! cargo run --release --example decode_kernel
use quantize::format::QuantScheme;
use quantize::model::linear::{DenseLinear, Linear};
use quantize::model::qlinear::QuantizedLinear;
use quantize::quant::rtn::quantize_rtn;
use std::time::Instant;

fn rate(lin: &dyn Linear, reps: usize) -> f64 {
    let (o, i) = (lin.out_features(), lin.in_features());
    let x: Vec<f32> = (0..i).map(|c| (c as f32 * 0.1).sin()).collect();
    let mut y = vec![0.0; o];
    let mut rates = Vec::new();
    for _ in 0..7 {
        let t = Instant::now();
        for _ in 0..reps {
            lin.forward(&x, 1, &mut y);
        }
        rates.push((o * i * reps) as f64 / t.elapsed().as_secs_f64() / 1e9);
    }
    rates.sort_by(f64::total_cmp);
    rates[3]
}

fn main() {
    for (rows, cols, reps) in [(1536usize, 576usize, 2000usize), (16 * 1536, 576, 100)] {
        let w: Vec<f32> = (0..rows * cols).map(|k| ((k * 37 % 101) as f32 / 50.0) - 1.0).collect();
        for scheme in [QuantScheme::int(4).unwrap().group(128).unwrap(), QuantScheme::int(8).unwrap()] {
            let q = quantize_rtn("w", &w, rows, cols, scheme, None).unwrap();
            let lin = QuantizedLinear::new("w", &q).unwrap();
            println!("[{rows} x {cols}] {scheme}: {:.2} G weights/s", rate(&lin, reps));
            let lin = lin.with_int8_dot();
            println!("[{rows} x {cols}] {scheme} --dot int8: {:.2} G weights/s", rate(&lin, reps));
        }
        let dense = DenseLinear::new(w, rows, cols);
        println!("[{rows} x {cols}] f32: {:.2} G weights/s", rate(&dense, reps));
    }
}
