//! Writes the seed corpora of every fuzz target into `fuzz/seeds/<target>/` from tiny
//! synthetic models made with this tool's own writers (the real SmolLM2 files are far
//! too large for seeds). Run: `cargo run --manifest-path fuzz/Cargo.toml --bin make_seeds`.

#[path = "../../../tests/common/gguf_fixture.rs"]
mod gguf_fixture;

use quantize::calib::observers::{SiteStats, StatsRequest};
use quantize::calib::stats_file::CalibStats;
use quantize::convert::{convert_gguf, OutDType};
use quantize::format::QuantScheme;
use quantize::io::checkpoint::{write_quantized_checkpoint, CheckpointFormat};
use quantize::io::safetensors::SafetensorsStore;
use quantize::model::llama::{block_linears, InputSite};
use quantize::model::LlamaConfig;
use quantize::quant::rtn::quantize_rtn;
use std::collections::BTreeMap;
use std::path::Path;

fn put(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds").join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn main() {
    let work = std::env::temp_dir().join(format!("quantize-seeds-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();

    // GGUF: the tiny llama (F32 + Q8_0 tensors, byte-level BPE), tied and untied.
    for (name, with_output) in [("tiny-tied.gguf", false), ("tiny-untied.gguf", true)] {
        put("gguf", name, &gguf_fixture::tiny_llama(with_output).bytes());
    }
    let gguf = gguf_fixture::tiny_llama(false).write(&work, "tiny.gguf");
    let dense = work.join("dense");
    convert_gguf(&gguf, &dense, OutDType::F32).unwrap();
    let read = |f: &str| std::fs::read(dense.join(f)).unwrap();
    put("safetensors", "tiny-f32.safetensors", &read("model.safetensors"));
    put("config", "tiny.json", &read("config.json"));
    put("tokenizer", "tiny.json", &read("tokenizer.json"));
    let dense16 = work.join("dense16");
    convert_gguf(&gguf, &dense16, OutDType::F16).unwrap();
    put("safetensors", "tiny-f16.safetensors", &std::fs::read(dense16.join("model.safetensors")).unwrap());

    // Quantized checkpoints of every format: config.json, a NUL, model.safetensors.
    let cfg = LlamaConfig::from_file(&dense.join("config.json")).unwrap();
    let store = SafetensorsStore::open(&dense).unwrap();
    let int4 = QuantScheme::int(4).unwrap().group(16).unwrap().asymmetric().unwrap();
    let schemes = [
        ("gptq-int4-g16", CheckpointFormat::Gptq, int4),
        ("awq-int4-g16", CheckpointFormat::Awq, int4),
        ("ct-int4-g16", CheckpointFormat::CompressedTensors, int4),
        ("ct-int8-channel", CheckpointFormat::CompressedTensors, QuantScheme::int(8).unwrap().per_channel()),
        ("ct-fp8", CheckpointFormat::CompressedTensors, QuantScheme::fp8_e4m3()),
    ];
    for (name, format, scheme) in schemes {
        let mut q = BTreeMap::new();
        // The gptq and awq layouts pack 32-row / 8-column words: the tiny model's
        // 16-row k/v projections stay dense there (as the writers require).
        let packable = |o: usize, i: usize| format == CheckpointFormat::CompressedTensors || (o % 32 == 0 && i % 32 == 0);
        for (n, o, i) in block_linears(&cfg).into_iter().filter(|&(_, o, i)| packable(o, i)) {
            let w = store.f32_shaped(&format!("{n}.weight"), &[o, i]).unwrap();
            q.insert(n.clone(), quantize_rtn(&n, &w, o, i, scheme, None).unwrap());
        }
        let out = work.join(name);
        write_quantized_checkpoint(&dense, &out, &q, format, &BTreeMap::new()).unwrap();
        let mut seed = std::fs::read(out.join("config.json")).unwrap();
        seed.push(0);
        seed.extend(std::fs::read(out.join("model.safetensors")).unwrap());
        put("checkpoint", name, &seed);
        put("config", &format!("{name}.json"), &std::fs::read(out.join("config.json")).unwrap());
    }

    // Statistics: two sites with every observer but the Hessian.
    let req = StatsRequest { histogram: true, min_max: true, abs_mean: true, hessian: false };
    let mut stats = CalibStats::default();
    for (site, width) in [(InputSite::AttnIn, 4), (InputSite::MlpAct, 3)] {
        let mut st = SiteStats::new(width, req);
        let x: Vec<f32> = (0..width * 5).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        st.observe(&x, 5);
        stats.record(0, site, &st);
    }
    let p = work.join("stats.safetensors");
    stats.save(&p).unwrap();
    put("stats", "two-sites.safetensors", &std::fs::read(&p).unwrap());
    std::fs::remove_dir_all(&work).unwrap();
    println!("seeds written to {}/seeds", env!("CARGO_MANIFEST_DIR"));
}
