//! GGUF export on the real SmolLM2: llama.cpp's mix of types, metadata and tokenizer as
//! llama.cpp's converter writes them, weights that read back exactly as quantized, GPTQ
//! onto the GGUF grids, and the bad inputs refused before anything is written.

mod common;

use common::*;
use quantize::format::ggml::GgmlType;
use quantize::io::gguf::{GgufFile, Value};
use quantize::io::safetensors::SafetensorsStore;
use std::path::Path;

fn export(out: &Path, extra: &[&str]) -> GgufFile {
    let model = smollm2_dir();
    let mut args = vec![model.to_str().unwrap(), "-o", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    let (ok, err) = quantize(&args);
    assert!(ok, "quantize {args:?}: {err}");
    GgufFile::open(out).unwrap()
}

fn ty(g: &GgufFile, name: &str) -> GgmlType {
    g.tensor(name).unwrap_or_else(|| panic!("{name} missing")).ggml_type
}

/// Q4_K_M: llama.cpp's mix on a 576-wide model (k-quants fall back on 576 columns), the
/// metadata and tokenizer, and weights that are exactly RTN's onto each tensor's grid.
#[test]
fn q4_k_m_mix_metadata_and_exact_weights() {
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("m.gguf");
    let g = export(&out, &["--method", "rtn", "--gguf-type", "Q4_K_M"]);
    let meta = |k: &str| g.metadata(k).unwrap_or_else(|| panic!("{k} missing")).clone();
    assert_eq!(meta("general.architecture"), Value::String("llama".into()));
    assert_eq!(meta("general.file_type"), Value::U32(15));
    assert_eq!(meta("llama.block_count"), Value::U32(30));
    assert_eq!(meta("llama.attention.head_count_kv"), Value::U32(3));
    assert_eq!(meta("tokenizer.ggml.pre"), Value::String("smollm".into()));
    assert_eq!(g.get_str_array("tokenizer.ggml.tokens").unwrap().len(), 49152);
    assert!(g.get_str("tokenizer.chat_template").unwrap().contains("<|im_start|>"));
    assert!(g.get_str("quantize.recipe").unwrap().contains("Q4_K_M"));
    // 272 tensors as llama.cpp's converter writes SmolLM2 (tied: no output.weight).
    assert_eq!(g.tensors().len(), 272);
    assert!(g.tensor("output.weight").is_none());
    assert_eq!(ty(&g, "token_embd.weight"), GgmlType::Q8_0); // output rule, 576 % 256 != 0
    assert_eq!(ty(&g, "blk.0.attn_q.weight"), GgmlType::Q5_0); // Q4_K falls back on 576 columns
    assert_eq!(ty(&g, "blk.0.attn_v.weight"), GgmlType::Q8_0); // use_more_bits: Q6_K -> Q8_0
    assert_eq!(ty(&g, "blk.6.attn_v.weight"), GgmlType::Q5_0);
    assert_eq!(ty(&g, "blk.5.ffn_down.weight"), GgmlType::Q6_K); // 1536 columns: no fallback
    assert_eq!(ty(&g, "blk.6.ffn_down.weight"), GgmlType::Q4_K);
    assert_eq!(ty(&g, "blk.6.attn_norm.weight"), GgmlType::F32);
    // llama-quantize's Q4_K_M of the same model is 105,454,016 bytes; the metadata differs.
    let size = std::fs::metadata(&out).unwrap().len();
    assert!((105_400_000..105_500_000).contains(&size), "{size} bytes");

    // The weights: exactly RTN onto the grid, rows in llama.cpp's RoPE order for q/k.
    let src = SafetensorsStore::open(&smollm2_dir()).unwrap();
    for (hf, gg, ty, rows, cols, heads) in [
        ("model.layers.6.mlp.down_proj.weight", "blk.6.ffn_down.weight", GgmlType::Q4_K, 576, 1536, 0),
        ("model.layers.5.mlp.down_proj.weight", "blk.5.ffn_down.weight", GgmlType::Q6_K, 576, 1536, 0),
        ("model.layers.3.self_attn.k_proj.weight", "blk.3.attn_k.weight", GgmlType::Q5_0, 192, 576, 3),
    ] {
        let w = src.f32_shaped(hf, &[rows, cols]).unwrap();
        let q = quantize::quant::ggml::quantize_tensor(hf, &w, rows, cols, ty, None).unwrap().dequantize();
        let mut back = g.dequantize(g.tensor(gg).unwrap()).unwrap();
        if heads > 0 {
            quantize::convert::unpermute_rows(&mut back, rows, cols, heads).unwrap();
        }
        assert!(q == back, "{gg}: the file's weights are not the quantized ones");
    }

    // `eval` reads the file itself, with llama.cpp's input rounding (Q8_0 / Q8_K blocks):
    // close to the same weights with f32 inputs (the converted directory), not equal.
    let dir = root.path().join("back");
    let (ok, err) = quantize(&["convert", out.to_str().unwrap(), "-o", dir.to_str().unwrap()]);
    assert!(ok, "{err}");
    let heldout = brown_heldout();
    let ppl = |model: &Path, name: &str| -> f64 {
        let json = root.path().join(format!("{name}.json"));
        let args = ["eval", "--model", model.to_str().unwrap(), "--text", heldout.to_str().unwrap()];
        let tail = ["--max-windows", "3", "--ctx", "256", "--json", json.to_str().unwrap()];
        let (ok, err) = quantize(&[&args[..], &tail[..]].concat());
        assert!(ok, "{err}");
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        v.pointer("/perplexity/perplexity").and_then(|x| x.as_f64()).unwrap_or_else(|| panic!("no perplexity in {v}"))
    };
    let (file, converted) = (ppl(&out, "file"), ppl(&dir, "dir"));
    assert!(file != converted && close(file, converted, 0.02, 0.0), "gguf {file} vs converted {converted}");
}

/// GPTQ onto Q4_0 blocks: lower KL to the full-precision model than RTN onto the same
/// grids; the file converts back and evaluates; the same run gives the same bytes with
/// one thread and with two.
#[test]
fn gptq_q4_0_beats_rtn_and_is_deterministic() {
    let root = tempfile::tempdir().unwrap();
    let calib = ["--nsamples", "16", "--seqlen", "256", "--calib"];
    let brown = brown_calib();
    let mut gptq_args: Vec<&str> = vec!["--method", "gptq", "--gguf-type", "Q4_0"];
    gptq_args.extend(calib);
    gptq_args.push(brown.to_str().unwrap());
    let gptq = root.path().join("gptq.gguf");
    export(&gptq, &gptq_args);
    let one = root.path().join("gptq-1.gguf");
    let model = smollm2_dir();
    let mut args = vec!["--threads", "1", model.to_str().unwrap(), "-o", one.to_str().unwrap()];
    args.extend(gptq_args.iter());
    let (ok, err) = quantize(&args);
    assert!(ok, "{err}");
    assert!(std::fs::read(&gptq).unwrap() == std::fs::read(&one).unwrap(), "1 and 2 threads differ");

    let rtn = root.path().join("rtn.gguf");
    export(&rtn, &["--method", "rtn", "--gguf-type", "Q4_0"]);
    let heldout = brown_heldout();
    let kl = |file: &Path, name: &str| -> f64 {
        let dir = root.path().join(name);
        let (ok, err) = quantize(&["convert", file.to_str().unwrap(), "-o", dir.to_str().unwrap()]);
        assert!(ok, "{err}");
        let json = root.path().join(format!("{name}.json"));
        let (ok, err) = quantize(&[
            "eval",
            "--model",
            dir.to_str().unwrap(),
            "--baseline",
            model.to_str().unwrap(),
            "--text",
            heldout.to_str().unwrap(),
            "--max-windows",
            "4",
            "--ctx",
            "256",
            "--json",
            json.to_str().unwrap(),
        ]);
        assert!(ok, "{err}");
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        let kl = v.pointer("/comparison/mean_kl_divergence").and_then(|x| x.as_f64());
        kl.unwrap_or_else(|| panic!("no comparison.mean_kl_divergence in {v}"))
    };
    let (k_gptq, k_rtn) = (kl(&gptq, "gptq"), kl(&rtn, "rtn"));
    assert!(k_gptq < k_rtn, "KL gptq {k_gptq} vs rtn {k_rtn}");
}

#[test]
fn bad_gguf_requests_are_refused_before_writing() {
    let root = tempfile::tempdir().unwrap();
    let model = smollm2_dir();
    let m = model.to_str().unwrap();
    let out = root.path().join("x.gguf");
    let o = out.to_str().unwrap();
    fails_with(&[m, "-o", o, "--gguf-type", "IQ4_XS"], &["IQ4_XS", "Q4_K_M", "Q2_K"]);
    fails_with(&[m, "-o", o, "--gguf-type", "Q9"], &["Q9", "Q4_K_M"]);
    fails_with(&[m, "-o", o, "--gguf-type", "Q4_0", "--bits", "3"], &["--bits"]);
    fails_with(&[m, "-o", o, "--format", "gguf"], &["--gguf-type"]);
    fails_with(&[m, "-o", o, "--method", "hqq", "--gguf-type", "Q4_0"], &["--gguf-type", "hqq"]);
    fails_with(&[m, "-o", o, "--method", "awq+gptq", "--awq-clip", "--gguf-type", "Q4_0"], &["clip"]);
    fails_with(&[m, "-o", o, "--imatrix"], &["--imatrix", "--gguf-type"]);
    fails_with(&[m, "-o", o, "--gguf-type", "Q4_0", "--mse"], &["mse"]);
    // A block type the width cannot hold, asked for explicitly: named, no silent fallback.
    let recipe = root.path().join("r.toml");
    std::fs::write(
        &recipe,
        "format = \"gguf\"\n[scheme]\ntype = \"Q4_0\"\n[[modifier]]\ntype = \"rtn\"\n\
         [[override]]\ntargets = [\"re:.*q_proj\"]\n[override.scheme]\ntype = \"q4_k\"\n",
    )
    .unwrap();
    fails_with(
        &[m, "-o", o, "--recipe", recipe.to_str().unwrap()],
        &["model.layers.0.self_attn.q_proj", "576", "Q4_K", "256"],
    );
    // A model llama.cpp's llama architecture would compute differently.
    let mistral = model_with_config(root.path(), "mistral", |c| {
        c["model_type"] = "mistral".into();
        c["sliding_window"] = 64.into();
    });
    fails_with(&[mistral.to_str().unwrap(), "-o", o, "--gguf-type", "Q8_0"], &["sliding_window = 64"]);
    // gemma (llama.cpp's gemma2/gemma3 architectures are not written yet).
    let gemma = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/families/gemma2");
    fails_with(&[gemma.to_str().unwrap(), "-o", o, "--gguf-type", "Q8_0"], &["--format gguf", "gemma2"]);
    assert!(!out.exists());
    assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 2, "only the recipe and the model copy");
}
