//! GGUF reading and GGUF -> Hugging Face conversion: damaged files give clear
//! errors (never panics), a synthetic tiny llama converts exactly (names, shapes,
//! q/k un-permutation, config), and the real SmolLM2 GGUF converts (asset test).

use half::f16;
use quantize::convert::{convert_gguf, OutDType};
use quantize::io::gguf::{GgufFile, Value};
use safetensors::{Dtype, SafeTensors};
use std::path::{Path, PathBuf};
use std::str::FromStr;

#[path = "common/gguf_fixture.rs"]
mod gguf_fixture;
use gguf_fixture::*;

fn f32s(st: &SafeTensors, name: &str) -> Vec<f32> {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(t.dtype(), Dtype::F32, "{name}");
    t.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
}

fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

// ------------------------------------------------------------------- tests

#[test]
fn every_metadata_type_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let vals = vec![
        ("a.u8", Value::U8(200)),
        ("a.i8", Value::I8(-5)),
        ("a.u16", Value::U16(60000)),
        ("a.i16", Value::I16(-30000)),
        ("a.u32", Value::U32(4_000_000_000)),
        ("a.i32", Value::I32(-2_000_000_000)),
        ("a.u64", Value::U64(u64::MAX)),
        ("a.i64", Value::I64(i64::MIN)),
        ("a.f32", Value::F32(1.5)),
        ("a.f64", Value::F64(-2.25)),
        ("a.bool", Value::Bool(true)),
        ("a.str", s("héllo")),
        ("a.arr", Value::Array(vec![Value::I16(1), Value::I16(-2)])),
        ("a.nested", Value::Array(vec![Value::Array(vec![s("x"), s("y")]), Value::Array(vec![s("z")])])),
    ];
    let mut g = Gguf::new();
    for (k, v) in &vals {
        g = g.kv(k, v.clone());
    }
    let p = g.write(dir.path(), "m.gguf");
    let f = GgufFile::open(&p).unwrap();
    assert_eq!(f.version(), 3);
    assert_eq!(f.alignment(), 32);
    for (k, v) in &vals {
        assert_eq!(f.metadata(k), Some(v), "{k}");
    }
    assert_eq!(f.get_u64("a.u16").unwrap(), 60000);
    assert_eq!(f.get_f64("a.f32").unwrap(), 1.5);
    assert_eq!(f.get_str("a.str").unwrap(), "héllo");
    assert!(f.get_bool("a.bool").unwrap());
    assert_eq!(f.metadata_entries().len(), vals.len());
    // v2 has the same layout and is accepted.
    let mut g2 = Gguf::new().kv("x", Value::U8(1));
    g2.version = 2;
    assert_eq!(GgufFile::open(g2.write(dir.path(), "v2.gguf")).unwrap().version(), 2);
}

#[test]
fn tensor_infos_shapes_and_dequantization() {
    let dir = tempfile::tempdir().unwrap();
    let p = tiny_llama(false).write(dir.path(), "m.gguf");
    let f = GgufFile::open(&p).unwrap();
    assert_eq!(f.tensors().len(), 2 + 9 * LAYERS);
    let k = f.tensor("blk.0.attn_k.weight").unwrap();
    assert_eq!(k.dims, [HIDDEN as u64, (KV_HEADS * HEAD_DIM) as u64]);
    assert_eq!(k.shape(), [KV_HEADS * HEAD_DIM, HIDDEN]);
    let up = f.tensor("blk.1.ffn_up.weight").unwrap();
    assert_eq!(up.n_bytes(), FFN * HIDDEN / 32 * 34);
    let want: Vec<f32> = up_values(1).iter().map(|&q| q as f32).collect();
    assert_eq!(f.dequantize(up).unwrap(), want);
}

#[test]
fn truncated_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let full = tiny_llama(false).bytes();
    let p = dir.path().join("cut.gguf");
    // Cut inside the header, the metadata, the tensor infos and the data.
    for n in [0, 3, 10, 23, 60, 500, 3000, full.len() / 2, full.len() - 1] {
        std::fs::write(&p, &full[..n]).unwrap();
        let e = err_of(&p);
        assert!(e.contains("cut.gguf"), "no file name: {e}");
        assert!(e.contains("truncated"), "cut at {n}: {e}");
    }
    std::fs::write(&p, &full[..full.len() - 1]).unwrap();
    let e = err_of(&p);
    assert!(e.contains("tensor output_norm.weight") && e.contains("past the end"), "{e}");
}

#[test]
fn bad_magic_and_version() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = Gguf::new().kv("x", Value::U8(1)).bytes();
    b[..4].copy_from_slice(b"GGML");
    let p = dir.path().join("magic.gguf");
    std::fs::write(&p, &b).unwrap();
    let e = err_of(&p);
    assert!(e.contains("bad magic 0x4c4d4747") && e.contains("0x46554747"), "{e}");

    let mut g = Gguf::new().kv("x", Value::U8(1));
    g.version = 4;
    let e = err_of(&g.write(dir.path(), "v4.gguf"));
    assert!(e.contains("unsupported GGUF version 4"), "{e}");
    g.version = 3u32.swap_bytes();
    let e = err_of(&g.write(dir.path(), "be.gguf"));
    assert!(e.contains("big-endian"), "{e}");
}

#[test]
fn tensor_past_end_and_unknown_type() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = Gguf::new();
    g.f32("a", &[4], &[1.0; 4]);
    g.f32("b", &[4], &[2.0; 4]);
    g.tensors[1].offset = Some(1 << 20);
    let e = err_of(&g.write(dir.path(), "off.gguf"));
    assert!(e.contains("tensor b") && e.contains("offset 1048576") && e.contains("past the end"), "{e}");

    let mut g = Gguf::new();
    g.f32("a", &[4], &[1.0; 4]);
    g.tensors[0].dims = vec![1 << 40];
    let e = err_of(&g.write(dir.path(), "size.gguf"));
    assert!(e.contains("tensor a") && e.contains("past the end"), "{e}");

    let mut g = Gguf::new();
    g.f32("w", &[4], &[1.0; 4]);
    g.tensors[0].type_id = 99;
    let e = err_of(&g.write(dir.path(), "type.gguf"));
    assert!(e.contains("tensor w") && e.contains("unknown GGML tensor type id 99"), "{e}");
}

#[test]
fn absurd_counts_and_lengths() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = Gguf::new().kv("key", s("value")).bytes();
    b[8..16].copy_from_slice(&u64::MAX.to_le_bytes()); // tensor count
    let p = dir.path().join("count.gguf");
    std::fs::write(&p, &b).unwrap();
    let e = err_of(&p);
    assert!(e.contains("tensor count = 18446744073709551615 is impossible"), "{e}");

    let mut b = Gguf::new().kv("key", s("value")).bytes();
    let at = 24 + 8 + 3 + 4; // header, key length, "key", value type
    b[at..at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    std::fs::write(&p, &b).unwrap();
    let e = err_of(&p);
    assert!(e.contains("value of key") && e.contains("string length 1099511627776"), "{e}");

    let b = Gguf::new().kv("arr", Value::Array(vec![Value::U64(1)])).bytes();
    let mut b2 = b.clone();
    let at = 24 + 8 + 3 + 4 + 4; // ... array element type
    b2[at..at + 8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    std::fs::write(&p, &b2).unwrap();
    let e = err_of(&p);
    assert!(e.contains("array length of arr") && e.contains("impossible"), "{e}");
}

#[test]
fn converts_tiny_llama_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let src = tiny_llama(false).write(dir.path(), "tiny.gguf");
    let out = dir.path().join("hf");
    let r = convert_gguf(&src, &out, OutDType::F32).unwrap();
    assert_eq!(r.tensors, 2 + 9 * LAYERS);
    assert_eq!(r.output, out);
    let vocab = tokens().len();
    // q, k + v, o, gate + up + down, two norms.
    let per_layer =
        HIDDEN * HIDDEN + 2 * KV_HEADS * HEAD_DIM * HIDDEN + HIDDEN * HIDDEN + 3 * FFN * HIDDEN + 2 * HIDDEN;
    assert_eq!(r.params as usize, vocab * HIDDEN + HIDDEN + LAYERS * per_layer);

    let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<&str> = st.names();
    names.sort();
    assert_eq!(names.len(), r.tensors);
    assert!(!names.contains(&"lm_head.weight"));
    for want in ["model.embed_tokens.weight", "model.norm.weight", "model.layers.1.mlp.down_proj.weight"] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    let shape = |n: &str| st.tensor(n).unwrap().shape().to_vec();
    assert_eq!(shape("model.embed_tokens.weight"), [vocab, HIDDEN]);
    assert_eq!(shape("model.layers.0.self_attn.k_proj.weight"), [KV_HEADS * HEAD_DIM, HIDDEN]);
    assert_eq!(shape("model.layers.0.mlp.down_proj.weight"), [HIDDEN, FFN]);
    assert_eq!(shape("model.layers.0.input_layernorm.weight"), [HIDDEN]);
    for l in 0..LAYERS {
        let q = f32s(&st, &format!("model.layers.{l}.self_attn.q_proj.weight"));
        assert_eq!(q, hf_qk(l, HEADS * HEAD_DIM), "q_proj layer {l} not un-permuted");
        let k = f32s(&st, &format!("model.layers.{l}.self_attn.k_proj.weight"));
        assert_eq!(k, hf_qk(l, KV_HEADS * HEAD_DIM), "k_proj layer {l} not un-permuted");
        let up = f32s(&st, &format!("model.layers.{l}.mlp.up_proj.weight"));
        assert_eq!(up, up_values(l).iter().map(|&q| q as f32).collect::<Vec<_>>());
        assert!(f32s(&st, &format!("model.layers.{l}.post_attention_layernorm.weight")).iter().all(|&v| v == 1.25));
    }
    let meta = SafeTensors::read_metadata(&bytes).unwrap().1;
    let meta = meta.metadata().as_ref().unwrap();
    assert_eq!(meta["source_file"], "tiny.gguf");
    assert_eq!(meta["format"], "pt");

    let c = read_json(&out.join("config.json"));
    assert_eq!(c["architectures"][0], "LlamaForCausalLM");
    assert_eq!(c["model_type"], "llama");
    assert_eq!(c["hidden_size"], HIDDEN);
    assert_eq!(c["intermediate_size"], FFN);
    assert_eq!(c["num_hidden_layers"], LAYERS);
    assert_eq!(c["num_attention_heads"], HEADS);
    assert_eq!(c["num_key_value_heads"], KV_HEADS);
    assert_eq!(c["head_dim"], HEAD_DIM);
    assert_eq!(c["rms_norm_eps"], 1e-5);
    assert_eq!(c["rope_theta"], 100000.0);
    assert_eq!(c["max_position_embeddings"], 256);
    assert_eq!(c["vocab_size"], vocab);
    assert_eq!((c["bos_token_id"].clone(), c["eos_token_id"].clone()), (1.into(), 0.into()));
    assert_eq!(c["tie_word_embeddings"], true);
    assert_eq!(c["torch_dtype"], "float32");
    let tc = read_json(&out.join("tokenizer_config.json"));
    assert_eq!(tc["bos_token"], "<|im_start|>");
    assert_eq!(tc["add_bos_token"], false);
    assert_eq!(tc["chat_template"], "{{ messages }}");
    assert_eq!(read_json(&out.join("generation_config.json"))["eos_token_id"], 0);
    let tok = tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
    let enc = tok.encode("hello 42", false).unwrap();
    assert_eq!(&enc.get_tokens()[..2], &["hel", "l"]);
    assert_eq!(tok.decode(enc.get_ids(), false).unwrap(), "hello 42");
}

#[test]
fn converts_untied_head_and_half_precision() {
    let dir = tempfile::tempdir().unwrap();
    let src = tiny_llama(true).write(dir.path(), "tiny.gguf");
    let out = dir.path().join("hf16");
    let r = convert_gguf(&src, &out, OutDType::F16).unwrap();
    assert_eq!(r.tensors, 3 + 9 * LAYERS);
    let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let head = st.tensor("lm_head.weight").unwrap();
    assert_eq!(head.dtype(), Dtype::F16);
    assert_eq!(head.shape(), [tokens().len(), HIDDEN]);
    assert!(head.data().chunks_exact(2).all(|b| f16::from_le_bytes([b[0], b[1]]).to_f32() == 0.125));
    let c = read_json(&out.join("config.json"));
    assert_eq!(c["tie_word_embeddings"], false);
    assert_eq!(c["torch_dtype"], "float16");
}

#[test]
fn existing_output_is_refused_and_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let src = tiny_llama(false).write(dir.path(), "tiny.gguf");
    let out = dir.path().join("taken");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep.txt"), b"mine").unwrap();
    let e = convert_gguf(&src, &out, OutDType::F32).unwrap_err().to_string();
    assert!(e.contains("taken") && e.contains("already exists"), "{e}");
    let left: Vec<_> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, ["keep.txt"]);
    assert_eq!(std::fs::read(out.join("keep.txt")).unwrap(), b"mine");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2, "stray files beside the output");
}

#[test]
fn unsupported_models_fail_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = tiny_llama(false);
    g.kv[0].1 = s("qwen2");
    let e = convert_gguf(&g.write(dir.path(), "q.gguf"), &dir.path().join("o1"), OutDType::F32).unwrap_err();
    assert!(e.to_string().contains("\"qwen2\" is not supported"), "{e}");

    let mut g = tiny_llama(false);
    let i = g.kv.iter().position(|(k, _)| k == "tokenizer.ggml.model").unwrap();
    g.kv[i].1 = s("llama");
    let e = convert_gguf(&g.write(dir.path(), "spm.gguf"), &dir.path().join("o2"), OutDType::F32).unwrap_err();
    assert!(e.to_string().contains("tokenizer.ggml.model = \"llama\" is not supported"), "{e}");

    let mut g = tiny_llama(false);
    g.f32("blk.0.mystery.weight", &[4], &[0.0; 4]);
    let e = convert_gguf(&g.write(dir.path(), "x.gguf"), &dir.path().join("o3"), OutDType::F32).unwrap_err();
    assert!(e.to_string().contains("blk.0.mystery.weight"), "{e}");
    assert!(!dir.path().join("o1").exists() && !dir.path().join("o2").exists() && !dir.path().join("o3").exists());
}

/// A merge whose result is not a token: tokenizers could not load the tokenizer.json
/// (issue 15.3); convert must refuse it, naming the merge, and write nothing.
#[test]
fn merge_outside_the_vocabulary_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (merges, culprit) in [(vec![s("h e"), s("he x")], "merges[1]"), (vec![s("q z")], "merges[0]")] {
        let mut g = tiny_llama(false);
        let i = g.kv.iter().position(|(k, _)| k == "tokenizer.ggml.merges").unwrap();
        g.kv[i].1 = Value::Array(merges);
        let out = dir.path().join("o");
        let e = convert_gguf(&g.write(dir.path(), "m.gguf"), &out, OutDType::F32).unwrap_err().to_string();
        assert!(e.contains(culprit) && e.contains("not in tokenizer.ggml.tokens"), "{e}");
        assert!(!out.exists());
    }
}

// ------------------------------------------------------------- real model

fn smollm2_gguf() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let assets = std::env::var_os("QUANTIZE_ASSETS").map_or_else(|| root.join(".cache/assets"), PathBuf::from);
    let p = assets.join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.exists(),
        "{} is missing: run scripts/fetch_assets.sh (or point QUANTIZE_ASSETS at a directory holding smollm2/)",
        p.display()
    );
    p
}

#[test]
fn converts_real_smollm2() {
    let src = smollm2_gguf();
    let g = GgufFile::open(&src).unwrap();
    assert_eq!(g.version(), 3);
    assert_eq!(g.tensors().len(), 272);
    let toks = g.get_str_array("tokenizer.ggml.tokens").unwrap();
    let hello = toks.iter().position(|&t| t == "Hello").expect("token Hello in the vocabulary") as u32;
    let world = toks.iter().position(|&t| t == "Ġworld").expect("token Ġworld in the vocabulary") as u32;
    // A k_proj row of head 0: HF row 1 is GGUF row 2 (rows 0, 2, 4, .. come first).
    let k = g.tensor("blk.0.attn_k.weight").unwrap();
    let kg = g.dequantize(k).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("smollm2");
    let r = convert_gguf(&src, &out, OutDType::F32).unwrap();
    assert_eq!(r.tensors, 272);
    assert_eq!(r.params, 134_515_008);
    let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.names().len(), 272);
    assert!(st.tensor("lm_head.weight").is_err());
    assert_eq!(st.tensor("model.embed_tokens.weight").unwrap().shape(), [49152, 576]);
    assert_eq!(st.tensor("model.layers.29.self_attn.q_proj.weight").unwrap().shape(), [576, 576]);
    assert_eq!(st.tensor("model.layers.0.self_attn.k_proj.weight").unwrap().shape(), [192, 576]);
    assert_eq!(st.tensor("model.layers.0.mlp.gate_proj.weight").unwrap().shape(), [1536, 576]);
    assert_eq!(st.tensor("model.layers.0.mlp.down_proj.weight").unwrap().shape(), [576, 1536]);
    let khf = f32s(&st, "model.layers.0.self_attn.k_proj.weight");
    assert_eq!(&khf[576..2 * 576], &kg[2 * 576..3 * 576], "HF k row 1 = GGUF row 2");
    assert_eq!(&khf[32 * 576..33 * 576], &kg[576..2 * 576], "HF k row 32 = GGUF row 1");

    let c = read_json(&out.join("config.json"));
    assert_eq!(c["num_hidden_layers"], 30);
    assert_eq!(c["hidden_size"], 576);
    assert_eq!(c["intermediate_size"], 1536);
    assert_eq!(c["num_attention_heads"], 9);
    assert_eq!(c["num_key_value_heads"], 3);
    assert_eq!(c["head_dim"], 64);
    assert_eq!(c["vocab_size"], 49152);
    assert_eq!(c["rope_theta"], 100000.0);
    assert_eq!(c["rms_norm_eps"], 1e-5);
    assert_eq!(c["max_position_embeddings"], 8192);
    assert_eq!(c["tie_word_embeddings"], true);
    assert_eq!((c["bos_token_id"].clone(), c["eos_token_id"].clone()), (1.into(), 2.into()));

    let json = std::fs::read_to_string(out.join("tokenizer.json")).unwrap();
    let tok = tokenizers::Tokenizer::from_str(&json).unwrap();
    let enc = tok.encode("Hello world", false).unwrap();
    assert_eq!(enc.get_ids(), &[hello, world], "{:?}", enc.get_tokens());
    let digits = tok.encode("2024", false).unwrap();
    assert_eq!(digits.get_tokens(), &["2", "0", "2", "4"]);
    let chat = tok.encode("<|im_start|>user\nHi<|im_end|>", false).unwrap();
    assert_eq!(chat.get_ids()[0], 1);
    assert_eq!(*chat.get_ids().last().unwrap(), 2);
    for text in ["Hello world", "  Spaces,\ttabs\nand ünïcödé — 3.14159!", "<|im_start|>assistant\nOK<|im_end|>"]
    {
        let ids = tok.encode(text, false).unwrap().get_ids().to_vec();
        assert_eq!(tok.decode(&ids, false).unwrap(), text);
    }
    let tc = read_json(&out.join("tokenizer_config.json"));
    assert_eq!(tc["add_bos_token"], false);
    assert_eq!(tc["eos_token"], "<|im_end|>");
    assert!(tc["chat_template"].as_str().is_some_and(|t| t.contains("im_start")));
}
