//! A random-weight llama model with the shapes of a real one, bf16, sharded with an index,
//! for memory and time measurements at sizes this machine cannot hold (docs/BENCHMARKS.md).
//! `cargo run --release --example synthetic_model -- OUT_DIR tinyllama|llama3-8b TOKENIZER.json [BLOCKS]`
//! (BLOCKS: keep only the first blocks, for per-block time and memory at full widths)
//! Weights are uniform in ±1/sqrt(fan_in)·√3 (unit-variance activations), norms 1; the
//! tokenizer is copied (its ids are a subset of the vocabulary).

use quantize::io::safetensors::{write_file, HeaderLayout, RawTensor};
use rand::{Rng, SeedableRng};
use safetensors::Dtype;
use std::collections::BTreeMap;
use std::path::Path;

const SHARD_BYTES: usize = 2_000_000_000;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (out, preset, tokenizer) = (Path::new(&args[1]), args[2].as_str(), Path::new(&args[3]));
    // (hidden, intermediate, layers, heads, kv heads, vocab, tied, rope_theta)
    let (h, inter, layers, heads, kv, vocab, tied, theta) = match preset {
        // TinyLlama-1.1B blocks; its 32000-token vocabulary becomes 49152 so that the SmolLM2
        // tokenizer the calibration uses fits.
        "tinyllama" => (2048usize, 5632usize, 22usize, 32usize, 4usize, 49152usize, false, 10000.0),
        "llama3-8b" => (4096, 14336, 32, 32, 8, 128256, false, 500000.0),
        other => panic!("unknown preset {other}"),
    };
    let layers = args.get(4).map_or(layers, |b| b.parse().expect("BLOCKS: a number"));
    let hd = h / heads;
    std::fs::create_dir_all(out).unwrap();
    let mut shapes: Vec<(String, Vec<usize>)> = vec![("model.embed_tokens.weight".into(), vec![vocab, h])];
    for b in 0..layers {
        let p = format!("model.layers.{b}");
        for (n, s) in [
            ("self_attn.q_proj.weight", vec![heads * hd, h]),
            ("self_attn.k_proj.weight", vec![kv * hd, h]),
            ("self_attn.v_proj.weight", vec![kv * hd, h]),
            ("self_attn.o_proj.weight", vec![h, heads * hd]),
            ("mlp.gate_proj.weight", vec![inter, h]),
            ("mlp.up_proj.weight", vec![inter, h]),
            ("mlp.down_proj.weight", vec![h, inter]),
            ("input_layernorm.weight", vec![h]),
            ("post_attention_layernorm.weight", vec![h]),
        ] {
            shapes.push((format!("{p}.{n}"), s));
        }
    }
    shapes.push(("model.norm.weight".into(), vec![h]));
    if !tied {
        shapes.push(("lm_head.weight".into(), vec![vocab, h]));
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let mut tensor = |shape: &[usize]| -> Vec<u8> {
        let n: usize = shape.iter().product();
        let a = if shape.len() == 1 { 0.0 } else { (3.0 / shape[1] as f32).sqrt() };
        (0..n)
            .flat_map(|_| {
                let v = if shape.len() == 1 { 1.0 } else { rng.random_range(-a..a) };
                half::bf16::from_f32(v).to_le_bytes()
            })
            .collect()
    };
    // Shards of about SHARD_BYTES, in declaration order.
    let mut shards: Vec<Vec<(String, Vec<usize>)>> = vec![vec![]];
    let mut size = 0;
    for (n, s) in shapes {
        let bytes = s.iter().product::<usize>() * 2;
        if size > 0 && size + bytes > SHARD_BYTES {
            shards.push(vec![]);
            size = 0;
        }
        size += bytes;
        shards.last_mut().unwrap().push((n, s));
    }
    let count = shards.len();
    let mut weight_map = serde_json::Map::new();
    let mut total = 0;
    for (i, shard) in shards.iter().enumerate() {
        let file = format!("model-{:05}-of-{count:05}.safetensors", i + 1);
        let data: Vec<Vec<u8>> = shard.iter().map(|(_, s)| tensor(s)).collect();
        let raws: Vec<RawTensor> = shard
            .iter()
            .zip(&data)
            .map(|((n, s), d)| RawTensor { name: n, dtype: Dtype::BF16, shape: s, bytes: d })
            .collect();
        write_file(&out.join(&file), &raws, &BTreeMap::from([("format".into(), "pt".into())]), HeaderLayout::Sorted)
            .unwrap();
        for ((n, _), d) in shard.iter().zip(&data) {
            weight_map.insert(n.clone(), serde_json::json!(file));
            total += d.len();
        }
        eprintln!("{file}: {} tensors", shard.len());
    }
    let index = serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
    std::fs::write(out.join("model.safetensors.index.json"), serde_json::to_string_pretty(&index).unwrap()).unwrap();
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": h,
        "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": kv, "vocab_size": vocab, "rms_norm_eps": 1e-5, "rope_theta": theta,
        "max_position_embeddings": 8192, "tie_word_embeddings": tied, "hidden_act": "silu",
        "torch_dtype": "bfloat16",
    });
    std::fs::write(out.join("config.json"), serde_json::to_string_pretty(&config).unwrap()).unwrap();
    std::fs::copy(tokenizer, out.join("tokenizer.json")).unwrap();
    println!("{}: {total} bytes in {count} shards", out.display());
}
