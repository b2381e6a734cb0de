//! Read bandwidth of this machine, for judging how close decoding runs to it
//! (docs/BENCHMARKS.md): sums a 1 GiB f32 buffer with rayon's threads (8 independent
//! lanes per thread, vectorized), 7 times, and prints the median GB/s.
//!
//! cargo run --release --example mem_bandwidth
use rayon::prelude::*;
use std::time::Instant;

fn main() {
    let n = (1usize << 30) / 4;
    let buf: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();
    let mut rates = Vec::new();
    for _ in 0..7 {
        let t = Instant::now();
        let s: f32 = buf
            .par_chunks(1 << 16)
            .map(|c| {
                let mut acc = [0.0f32; 8];
                for v in c.chunks_exact(8) {
                    for j in 0..8 {
                        acc[j] += v[j];
                    }
                }
                acc.iter().sum::<f32>()
            })
            .sum();
        let secs = t.elapsed().as_secs_f64();
        std::hint::black_box(s);
        rates.push((n * 4) as f64 / secs / 1e9);
    }
    rates.sort_by(f64::total_cmp);
    println!(
        "threads {}: read bandwidth {:.1} GB/s (median of 7; min {:.1}, max {:.1})",
        rayon::current_num_threads(),
        rates[3],
        rates[0],
        rates[6]
    );
}
