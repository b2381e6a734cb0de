//! Times the stages of one forward batch on a model directory (a profiling aid).
//! `cargo run --release --example forward_profile -- DIR [windows] [seq]`
//! Prints three whole runs, then one run split by stage over all blocks: norm, q/k/v
//! projections + RoPE + attention core, o + residual + norm, gate/up + SwiGLU, down.
use quantize::model::LlamaModel;
use std::time::Instant;

fn main() {
    quantize::keep_freed_memory();
    let args: Vec<String> = std::env::args().collect();
    let model = LlamaModel::load(std::path::Path::new(&args[1])).unwrap();
    let windows: usize = args.get(2).map_or(4, |s| s.parse().unwrap());
    let seq: usize = args.get(3).map_or(512, |s| s.parse().unwrap());
    let tokens: Vec<u32> = (0..windows * seq).map(|i| (i * 7919 % 49152) as u32).collect();
    for _ in 0..3 {
        let rope = model.config.rope_tables(seq);
        let t0 = Instant::now();
        let mut x = model.embed_tokens(&tokens).unwrap();
        for b in &model.blocks {
            b.forward(&model.config, &rope, &mut x, windows, seq, None).unwrap();
        }
        let t1 = Instant::now();
        let logits = model.head(&x, tokens.len());
        let t2 = Instant::now();
        let n = tokens.len() as f64;
        println!(
            "blocks {:.3}s head {:.3}s total {:.1} tok/s ({} logits)",
            (t1 - t0).as_secs_f64(),
            (t2 - t1).as_secs_f64(),
            n / (t2 - t0).as_secs_f64(),
            logits.len()
        );
    }
    // One more run, timed per stage (sums over the blocks).
    let rope = model.config.rope_tables(seq);
    let cfg = &model.config;
    let mut x = model.embed_tokens(&tokens).unwrap();
    let mut secs = [0.0f64; 5];
    for b in &model.blocks {
        let mut lap = Instant::now();
        let mut mark = |i: usize, secs: &mut [f64; 5]| {
            secs[i] += lap.elapsed().as_secs_f64();
            lap = Instant::now();
        };
        let h1 = b.attn_input(cfg, &x);
        mark(0, &mut secs);
        let attn = b.attention(cfg, &rope, &h1, windows, seq);
        mark(1, &mut secs);
        let h2 = b.mlp_input(cfg, &mut x, &attn);
        mark(2, &mut secs);
        let act = b.mlp_act(cfg, &h2);
        mark(3, &mut secs);
        b.mlp_output(cfg, &mut x, &act);
        mark(4, &mut secs);
    }
    let names = ["input norm", "q/k/v + attention", "o + residual + norm", "gate/up + swiglu", "down + residual"];
    for (n, s) in names.iter().zip(secs) {
        println!("  {n:<22} {s:.3}s");
    }
}
