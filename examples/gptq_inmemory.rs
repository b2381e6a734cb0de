//! Development aid: GPTQ or RTN of a model in memory, then its perplexity, without
//! writing a checkpoint. `cargo run --release --example gptq_inmemory -- DIR CALIB HELDOUT [gptq|rtn] [nsamples] [seqlen] [act_order] [group]`
use quantize::calib::dataset::sample_windows;
use quantize::eval::{perplexity, perplexity::Protocol, EvalOptions};
use quantize::format::QuantScheme;
use quantize::io::safetensors::SafetensorsStore;
use quantize::io::tokenizer::{read_text, Tokenizer};
use quantize::model::linear::DenseLinear;
use quantize::model::{llama::dense_from_store, LlamaConfig, LlamaModel};
use quantize::pipeline::driver::{self, DriverOptions, Source};
use quantize::pipeline::modifiers::{gptq::Gptq, rtn::Rtn};
use quantize::pipeline::{Modifiers, SchemePolicy, WeightQuantizer};
use quantize::quant::gptq::GptqOptions;
use std::path::Path;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let dir = Path::new(&a[1]);
    let method = a.get(4).map_or("gptq", |s| s.as_str());
    let nsamples: usize = a.get(5).map_or(128, |s| s.parse().unwrap());
    let seqlen: usize = a.get(6).map_or(512, |s| s.parse().unwrap());
    let act_order = a.get(7).is_some_and(|s| s == "1");
    let group: i64 = a.get(8).map_or(128, |s| s.parse().unwrap());
    let cfg = LlamaConfig::from_file(&dir.join("config.json")).unwrap();
    let store = SafetensorsStore::open(dir).unwrap();
    let tok = Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    let mut scheme = QuantScheme::int(4).unwrap().asymmetric().unwrap();
    if group > 0 {
        scheme = scheme.group(group as usize).unwrap();
    }
    let t0 = std::time::Instant::now();
    let calib;
    let (source, weights): (_, Box<dyn WeightQuantizer>) = if method == "gptq" {
        let text = tok.encode(&read_text(Path::new(&a[2])).unwrap()).unwrap();
        calib = sample_windows(&text, nsamples, seqlen, 0).unwrap();
        let opts = GptqOptions { act_order, ..Default::default() };
        (Source::Windows(&calib), Box::new(Gptq { opts }))
    } else {
        (Source::None, Box::new(Rtn { clip: None, imatrix: false }))
    };
    let mut mods =
        Modifiers { schemes: SchemePolicy::uniform(scheme), rotation: None, transforms: vec![], weights, inputs: None };
    let dopts = DriverOptions {
        chunk_windows: 8,
        progress: true,
        verbose: false,
        label: method.into(),
        observe_kv: false,
        observe_head: false,
    };
    let report = driver::run(&cfg, &store, source, &mut mods, &dopts).unwrap();
    let tensors = &report.tensors;
    eprintln!("{method} {scheme}: {:.1}s timings {:?}", t0.elapsed().as_secs_f64(), report.timings);
    let model = LlamaModel::load_with(cfg, &store, &|name, o, i| match tensors.get(name) {
        Some(q) => Ok(Box::new(DenseLinear::new(q.dequantize(), o, i)) as _),
        None => dense_from_store(&store, name, o, i),
    })
    .unwrap();
    let held = tok.encode(&read_text(Path::new(&a[3])).unwrap()).unwrap();
    for protocol in [Protocol::LlamaCpp, Protocol::Chunks] {
        let r =
            perplexity(&model, &held, &EvalOptions { ctx: 512, protocol, max_windows: Some(40), batch: 4 }).unwrap();
        println!("{method} {scheme} act_order={act_order} {}: ppl {:.4}", protocol.name(), r.perplexity);
    }
}
