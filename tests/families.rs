//! Every decoder family against transformers' own logits, then quantized, written in each
//! format, reloaded and evaluated. Fixtures: tiny random models with their family's real
//! config keys and the logits transformers 5.24 computed in f32
//! (`scripts/reference_families/make_fixtures.py`, committed under tests/fixtures/families).

mod common;

use quantize::io::safetensors::SafetensorsStore;
use quantize::model::load::load_model;
use quantize::model::rope::RopeScaling;
use quantize::model::LlamaModel;
use std::path::{Path, PathBuf};

const FAMILIES: [&str; 8] = ["llama3", "llama_bias_linear", "qwen2", "qwen3", "mistral", "phi3", "gemma2", "gemma3"];

/// Largest |ours − transformers| over all logits, relative to the largest |logit|.
/// Both sides compute in f32 from the same (dtype-rounded) weights; what differs is the
/// summation order of the products (faer vs PyTorch's BLAS), the exp of the softmax and
/// SwiGLU (this tool's `fastexp`, ≤ 2 ulp) and cos/sin: measured at most 9.4e-7 (phi3) on these
/// fixtures. 1e-4 leaves room for other CPUs' kernels, while every family feature tested
/// below moves the logits by more than 1e-2 when left out.
const TOLERANCE: f64 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/families").join(name)
}

/// `(tokens, logits [tokens, vocab])` that transformers computed.
fn reference(dir: &Path) -> (Vec<u32>, Vec<f32>) {
    let store = SafetensorsStore::open(&dir.join("reference.safetensors")).unwrap();
    let t = store.raw("tokens").unwrap();
    let tokens = t.bytes.chunks_exact(4).map(|b| i32::from_le_bytes(b.try_into().unwrap()) as u32).collect();
    (tokens, store.f32("logits").unwrap().0)
}

fn rel_err(ours: &[f32], want: &[f32]) -> f64 {
    assert_eq!(ours.len(), want.len());
    let scale = want.iter().fold(0.0f64, |m, &v| m.max(v.abs() as f64));
    ours.iter().zip(want).map(|(a, b)| (*a as f64 - *b as f64).abs()).fold(0.0, f64::max) / scale
}

fn logits(model: &LlamaModel, tokens: &[u32]) -> Vec<f32> {
    model.forward(tokens, 1, tokens.len()).unwrap()
}

#[test]
fn every_family_matches_transformers_logits() {
    let mut errors = vec![];
    for name in FAMILIES {
        let dir = fixture(name);
        let (tokens, want) = reference(&dir);
        let model = LlamaModel::load(&dir).unwrap_or_else(|e| panic!("{name}: {e}"));
        let err = rel_err(&logits(&model, &tokens), &want);
        eprintln!("{name}: max relative logit error {err:.2e}");
        errors.push((name, err));
    }
    for (name, err) in errors {
        assert!(err < TOLERANCE, "{name}: max relative logit error {err:.3e} vs transformers");
    }
}

/// Each family feature, left out, moves the logits well beyond the tolerance: the fixtures
/// exercise what they claim to.
#[test]
fn each_family_feature_changes_the_logits() {
    let off = |name: &str, change: &dyn Fn(&mut LlamaModel)| {
        let dir = fixture(name);
        let (tokens, want) = reference(&dir);
        let mut model = LlamaModel::load(&dir).unwrap();
        change(&mut model);
        rel_err(&logits(&model, &tokens), &want)
    };
    use quantize::model::config::Activation;
    let cases: [(&str, &str, &dyn Fn(&mut LlamaModel)); 19] = [
        ("llama3", "llama3 rope scaling", &|m| m.config.rope.scaling = RopeScaling::Default),
        ("llama_bias_linear", "linear rope scaling", &|m| m.config.rope.scaling = RopeScaling::Default),
        ("llama_bias_linear", "o_proj bias", &|m| m.blocks.iter_mut().for_each(|b| b.biases[3] = None)),
        ("qwen2", "yarn rope scaling", &|m| m.config.rope.scaling = RopeScaling::Default),
        ("qwen3", "q/k norms", &|m| m.blocks.iter_mut().for_each(|b| b.qk_norm = None)),
        ("mistral", "sliding window", &|m| m.config.sliding_window = vec![None; 2]),
        ("phi3", "partial rotary", &|m| m.config.rope.rotary_dim = m.config.head_dim),
        ("gemma2", "attention soft-capping", &|m| m.config.attn_softcap = None),
        ("gemma2", "final logit soft-capping", &|m| m.config.final_softcap = None),
        ("gemma2", "embedding scale", &|m| m.config.embed_scale = None),
        ("gemma2", "query_pre_attn_scalar", &|m| m.config.attn_scale = (m.config.head_dim as f32).powf(-0.5)),
        ("gemma2", "GeGLU", &|m| m.config.activation = Activation::Silu),
        ("gemma2", "post-attention/feed-forward norms", &|m| m.blocks.iter_mut().for_each(|b| b.sandwich_norms = None)),
        ("gemma2", "(1 + w) norms", &|m| {
            m.blocks.iter_mut().for_each(|b| b.input_norm.iter_mut().for_each(|w| *w -= 1.0))
        }),
        ("gemma2", "alternating sliding window", &|m| m.config.sliding_window = vec![None; 2]),
        ("gemma3", "local RoPE base of sliding blocks", &|m| m.config.rope_local = None),
        ("gemma3", "linear scaling of full blocks", &|m| m.config.rope.scaling = RopeScaling::Default),
        ("gemma3", "(1 + w) q/k norms", &|m| m.blocks.iter_mut().for_each(|b| b.qk_norm = None)),
        ("gemma3", "sliding window", &|m| m.config.sliding_window = vec![None; 2]),
    ];
    for (name, feature, change) in cases {
        let err = off(name, change);
        assert!(err > 100.0 * TOLERANCE, "{name} without {feature}: error only {err:.2e}");
    }
    // phi3: its sliding window (24) is shorter than the 40 tokens.
    let err = off("phi3", &|m| m.config.sliding_window = vec![None; 2]);
    assert!(err > 100.0 * TOLERANCE, "phi3 without its sliding window: {err:.2e}");
}

/// Gemma 3's RoPE written as transformers 5 saves it (`rope_parameters` per layer type)
/// computes what the hub's keys (`rope_theta`, `rope_local_base_freq`, `rope_scaling`) do.
#[test]
fn gemma3_rope_parameters_per_layer_type_equal_the_hub_keys() {
    use serde_json::json;
    let root = tempfile::tempdir().unwrap();
    let src = fixture("gemma3");
    let dir = common::dir_with_config(&src, root.path(), "rope-parameters", |c| {
        let o = c.as_object_mut().unwrap();
        for k in ["rope_theta", "rope_local_base_freq", "rope_scaling"] {
            o.remove(k);
        }
        o.insert(
            "rope_parameters".into(),
            json!({"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
                   "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}),
        );
    });
    let (tokens, want) = reference(&src);
    let model = LlamaModel::load(&dir).unwrap();
    assert_eq!(logits(&model, &tokens), logits(&LlamaModel::load(&src).unwrap(), &tokens));
    assert!(rel_err(&logits(&model, &tokens), &want) < TOLERANCE);
}

#[test]
fn every_family_loads_through_the_checkpoint_loader() {
    for name in FAMILIES {
        let dir = fixture(name);
        let (tokens, want) = reference(&dir);
        let (model, info) = load_model(&dir).unwrap();
        assert!(info.format.is_none());
        assert!(rel_err(&logits(&model, &tokens), &want) < TOLERANCE, "{name}");
    }
}

/// A small calibration / evaluation text the fixtures' tokenizers cover.
fn family_text(root: &Path) -> PathBuf {
    let p = root.join("text.txt");
    let para = "Beautiful is better than ugly. Explicit is better than implicit. Simple is better than \
                complex. Complex is better than complicated. Flat is better than nested. Sparse is better \
                than dense. Readability counts. Special cases aren't special enough to break the rules. \
                Although practicality beats purity. Errors should never pass silently. ";
    std::fs::write(&p, para.repeat(12)).unwrap();
    p
}

fn eval_report(model: &Path, baseline: &Path, text: &Path, json: &Path) -> serde_json::Value {
    let (m, b, t, j) =
        (model.to_str().unwrap(), baseline.to_str().unwrap(), text.to_str().unwrap(), json.to_str().unwrap());
    let (ok, err) = common::quantize(&[
        "eval",
        "--model",
        m,
        "--baseline",
        b,
        "--text",
        t,
        "--ctx",
        "32",
        "--max-windows",
        "6",
        "--json",
        j,
    ]);
    assert!(ok, "eval {m}: {err}");
    serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap()
}

/// Every family through every method and format: quantize, write, reload, evaluate.
#[test]
fn every_family_quantizes_writes_reloads_and_evaluates() {
    let root = tempfile::tempdir().unwrap();
    let text = family_text(root.path());
    let t = text.to_str().unwrap();
    let runs: [(&str, &str, &[&str]); 6] = [
        ("rtn", "gptq", &["--bits", "4"]),
        ("gptq", "compressed-tensors", &["--bits", "4", "--act-order"]),
        ("awq", "awq", &["--bits", "4"]),
        ("awq+gptq", "gptq", &["--bits", "4"]),
        ("gptq", "gptq", &["--bits", "8"]),
        ("fp8", "compressed-tensors", &[]),
    ];
    for name in FAMILIES {
        let src = fixture(name);
        for (method, format, extra) in runs {
            let out = root.path().join(format!("{name}-{method}-{format}-{}", extra.join("")));
            let mut args =
                vec![src.to_str().unwrap(), "--method", method, "--format", format, "-o", out.to_str().unwrap()];
            if method != "fp8" {
                args.extend(["--group-size", "32", "--asym"]);
            }
            if method != "rtn" && method != "fp8" {
                args.extend(["--calib", t, "--nsamples", "6", "--seqlen", "32"]);
            }
            args.extend(extra);
            let (ok, err) = common::quantize(&args);
            assert!(ok, "{name} {method} {format}: {err}");
            let what = format!("{name} {method} {format} {extra:?}");
            let (model, info) = load_model(&out).unwrap_or_else(|e| panic!("{what}: reload: {e}"));
            assert_eq!(info.format.as_deref(), Some(format), "{what}");
            assert_eq!(model.config.family, LlamaModel::load(&src).unwrap().config.family);
            let report = eval_report(&out, &src, &text, &root.path().join(format!("{name}-{method}-{format}.json")));
            let c = &report["comparison"];
            let ppl = c["quantized"]["perplexity"].as_f64().unwrap();
            let base = c["baseline"]["perplexity"].as_f64().unwrap();
            let kl = c["mean_kl_divergence"].as_f64().unwrap();
            eprintln!("{what}: ppl {ppl:.3} vs {base:.3}, KL {kl:.4}");
            assert!(ppl.is_finite() && kl.is_finite() && kl >= 0.0, "{what}: ppl {ppl}, KL {kl}");
            // 8-bit and FP8 stay close to the dense model; 4-bit g32 moves these random
            // models more, but far less than a broken layer (KL of several nats).
            let bound = if extra.contains(&"8") || method == "fp8" { 0.02 } else { 0.5 };
            assert!(kl < bound, "{what}: KL {kl} against the dense model");
        }
    }
}

/// Config keys that would change the computation, unimplemented or contradicting the
/// weights: each a clear error naming the key (or tensor) and value, and nothing written.
#[test]
fn family_config_errors_name_the_key_and_write_nothing() {
    use serde_json::json;
    let root = tempfile::tempdir().unwrap();
    let cases: [(&str, &str, &dyn Fn(&mut serde_json::Value), &[&str]); 16] = [
        ("llama3", "unknown", &|c| c["attn_logit_softcapping"] = json!(50.0), &["attn_logit_softcapping", "50"]),
        ("llama3", "dynamic", &|c| c["rope_scaling"] = json!({"rope_type": "dynamic", "factor": 2.0}), &["dynamic"]),
        (
            "llama3",
            "llama3-missing",
            &|c| c["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0}),
            &["low_freq_factor"],
        ),
        ("llama3", "sliding", &|c| c["sliding_window"] = json!(4096), &["sliding_window", "mistral"]),
        (
            "mistral",
            "layer-types",
            &|c| c["layer_types"] = json!(["sliding_attention", "full_attention"]),
            &["layer_types"],
        ),
        (
            "qwen2",
            "layer-types-len",
            &|c| {
                c["use_sliding_window"] = json!(true);
                c["layer_types"] = json!(["full_attention"])
            },
            &["layer_types", "2 layer types"],
        ),
        (
            "phi3",
            "partial",
            &|c| c["partial_rotary_factor"] = json!(0.2),
            &["head_dim 16", "partial_rotary_factor 0.2", "even"],
        ),
        (
            "phi3",
            "longrope-len",
            &|c| c["rope_scaling"]["short_factor"] = json!([1.0, 2.0]),
            &["short_factor has 2 factors"],
        ),
        ("qwen2", "act", &|c| c["hidden_act"] = json!("gelu"), &["hidden_act", "gelu"]),
        (
            "gemma2",
            "bidirectional",
            &|c| c["use_bidirectional_attention"] = json!(true),
            &["use_bidirectional_attention", "causal"],
        ),
        ("gemma2", "gelu", &|c| c["hidden_activation"] = json!("gelu"), &["hidden_activation", "\"gelu\""]),
        (
            "gemma2",
            "act-disagrees",
            &|c| c["hidden_act"] = json!("silu"),
            &["hidden_act \"silu\"", "hidden_activation \"gelu_pytorch_tanh\""],
        ),
        ("gemma2", "gemma3-key", &|c| c["rope_local_base_freq"] = json!(10000.0), &["rope_local_base_freq", "gemma2"]),
        (
            "gemma3",
            "rope-layer-type",
            &|c| c["rope_parameters"] = json!({"chunked_attention": {"rope_type": "default"}}),
            &["rope_parameters", "chunked_attention"],
        ),
        ("gemma3", "no-window", &|c| c["sliding_window"] = json!(null), &["sliding_window", "null"]),
        (
            "llama3",
            "bias-missing",
            &|c| c["attention_bias"] = json!(true),
            &["model.layers.0.self_attn.q_proj.bias", "not found", "attention_bias"],
        ),
    ];
    for (family, case, edit, needles) in cases {
        let dir = common::dir_with_config(&fixture(family), root.path(), &format!("{family}-{case}"), |c| edit(c));
        let out = root.path().join(format!("{family}-{case}-out"));
        common::fails_with(&[dir.to_str().unwrap(), "--method", "rtn", "-o", out.to_str().unwrap()], needles);
        assert!(!out.exists(), "{family} {case}: an output was written");
    }
    // A bias in the weights that the config does not declare.
    let dir = common::dir_with_config(&fixture("llama_bias_linear"), root.path(), "undeclared-bias", |c| {
        c["mlp_bias"] = json!(false)
    });
    let out = root.path().join("undeclared-bias-out");
    common::fails_with(
        &[dir.to_str().unwrap(), "--method", "rtn", "-o", out.to_str().unwrap()],
        &["model.layers.0.mlp.gate_proj.bias", "mlp_bias"],
    );
    assert!(!out.exists());
}

/// The output is written shard by shard as blocks finish: with a small `--max-shard-size`
/// a sharded checkpoint with an index, holding exactly the tensors (same bytes) of the
/// single-file output, and evaluating the same.
#[test]
fn sharded_output_holds_the_same_tensors_as_one_file() {
    let root = tempfile::tempdir().unwrap();
    let src = fixture("qwen3");
    let text = family_text(root.path());
    let (one, many) = (root.path().join("one"), root.path().join("many"));
    for (out, extra) in [(&one, vec![]), (&many, vec!["--max-shard-size", "40KB"])] {
        let mut args =
            vec![src.to_str().unwrap(), "--method", "gptq", "--group-size", "32", "--calib", text.to_str().unwrap()];
        args.extend(["--nsamples", "4", "--seqlen", "32", "-o", out.to_str().unwrap()]);
        args.extend(extra);
        let (ok, err) = common::quantize(&args);
        assert!(ok, "{err}");
    }
    assert!(one.join("model.safetensors").exists() && !one.join("model.safetensors.index.json").exists());
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(many.join("model.safetensors.index.json")).unwrap()).unwrap();
    let files: std::collections::BTreeSet<&str> =
        index["weight_map"].as_object().unwrap().values().map(|v| v.as_str().unwrap()).collect();
    assert!(files.len() > 2, "{files:?}");
    for f in &files {
        let size = std::fs::metadata(many.join(f)).unwrap().len();
        assert!(size < 60_000, "{f}: {size} bytes for a 40KB limit (a header and one tensor at most over)");
    }
    let (a, b) = (SafetensorsStore::open(&one).unwrap(), SafetensorsStore::open(&many).unwrap());
    let mut names: Vec<&str> = a.names().collect();
    names.sort();
    let mut names_b: Vec<&str> = b.names().collect();
    names_b.sort();
    assert_eq!(names, names_b);
    for n in names {
        let (x, y) = (a.raw(n).unwrap(), b.raw(n).unwrap());
        assert!(x.dtype == y.dtype && x.shape == y.shape && x.bytes == y.bytes, "{n} differs");
    }
    let (ta, tb) = (root.path().join("a.json"), root.path().join("b.json"));
    let (ra, rb) = (eval_report(&one, &src, &text, &ta), eval_report(&many, &src, &text, &tb));
    assert_eq!(ra["comparison"]["quantized"]["perplexity"], rb["comparison"]["quantized"]["perplexity"]);
}

/// A tokenizer with more tokens than the model's embedding is another model's: refused
/// before calibration, naming tokenizer.json and both sizes.
#[test]
fn a_tokenizer_larger_than_the_vocabulary_is_refused_before_calibration() {
    let root = tempfile::tempdir().unwrap();
    let dir = common::dir_with_config(&fixture("llama3"), root.path(), "other-tokenizer", |_| {});
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    std::os::unix::fs::symlink(common::smollm2_dir().join("tokenizer.json"), dir.join("tokenizer.json")).unwrap();
    let text = family_text(root.path());
    let out = root.path().join("out");
    common::fails_with(
        &[
            dir.to_str().unwrap(),
            "--method",
            "gptq",
            "--group-size",
            "32",
            "--calib",
            text.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ],
        &["tokenizer.json", "49152 tokens", "vocab_size = 384"],
    );
    assert!(!out.exists());
}

/// A small calibration on `text`: 6 windows of 32 tokens.
fn small_calib(text: &Path) -> [&str; 6] {
    ["--calib", text.to_str().unwrap(), "--nsamples", "6", "--seqlen", "32"]
}

/// `src`'s model with every tensor in f32, in `dst` (config and tokenizer copied).
fn f32_copy(src: &Path, dst: &Path) -> PathBuf {
    use quantize::io::safetensors::{write_file, HeaderLayout, RawTensor};
    use safetensors::Dtype;
    std::fs::create_dir_all(dst).unwrap();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        if src.join(f).exists() {
            std::fs::copy(src.join(f), dst.join(f)).unwrap();
        }
    }
    let store = SafetensorsStore::open(src).unwrap();
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = store
        .names()
        .map(|n| {
            let (v, shape) = store.f32(n).unwrap();
            (n.to_string(), shape, v.iter().flat_map(|x| x.to_le_bytes()).collect())
        })
        .collect();
    let raws: Vec<RawTensor> =
        tensors.iter().map(|(n, shape, bytes)| RawTensor { name: n, dtype: Dtype::F32, shape, bytes }).collect();
    write_file(&dst.join("model.safetensors"), &raws, &Default::default(), HeaderLayout::Sorted).unwrap();
    dst.to_path_buf()
}

/// A rotation folded into the weights (`--rotate`, QuaRot) leaves the function unchanged:
/// with every linear left dense, each family's rotated model gives transformers' logits
/// (norms folded into the readers, v/o rotated per head, qwen2's v bias and phi3's fused
/// qkv rows included, tied heads untied); quantized, it reloads and evaluates like any
/// checkpoint, and its bytes do not depend on the thread count. Gemma's post-norms refuse.
#[test]
fn a_rotated_model_computes_what_the_original_computes() {
    let root = tempfile::tempdir().unwrap();
    let text = family_text(root.path());
    let recipe = root.path().join("rotate-only.toml");
    std::fs::write(
        &recipe,
        "ignore = [\"re:.*\"]\n[scheme]\ntype = \"int8\"\n[[modifier]]\ntype = \"rotate\"\nseed = 3\n[[modifier]]\ntype = \"rtn\"\n",
    )
    .unwrap();
    for name in ["llama3", "llama_bias_linear", "qwen2", "qwen3", "mistral", "phi3"] {
        // An f32 copy (the same values as the bf16/f16 fixture), so the rotated weights are
        // not rounded again and transformers' logits hold to the same tolerance.
        let src = f32_copy(&fixture(name), &root.path().join(format!("{name}-f32")));
        let (tokens, want) = reference(&fixture(name));
        let out = root.path().join(format!("{name}-rotated"));
        let (ok, err) = common::quantize(&[
            src.to_str().unwrap(),
            "--recipe",
            recipe.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ]);
        assert!(ok, "{name}: {err}");
        let (model, info) = load_model(&out).unwrap();
        assert!(info.format.is_none(), "{name}: nothing quantized, a dense model");
        let err = rel_err(&logits(&model, &tokens), &want);
        eprintln!("{name} rotated: max relative logit error {err:.2e}");
        assert!(err < TOLERANCE, "{name}: rotated model's logits {err:.3e} from transformers'");
        let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
        let store = SafetensorsStore::open(&out).unwrap();
        assert!(store.contains("lm_head.weight"), "{name}: the rotated head is its own tensor");
        assert_eq!(cfg["tie_word_embeddings"], serde_json::json!(false), "{name}");
        let norm = store.f32("model.layers.1.input_layernorm.weight").unwrap().0;
        assert!(norm.iter().all(|&g| g == 1.0), "{name}: the norm weights are folded into the readers");
        let embed = store.f32("model.embed_tokens.weight").unwrap().0;
        let orig = SafetensorsStore::open(&src).unwrap().f32("model.embed_tokens.weight").unwrap().0;
        assert!(rel_err(&embed, &orig) > 0.1, "{name}: the embedding is rotated");
    }
    // The checkpoint keeps the source's dtype (bf16 here).
    let out = root.path().join("llama3-bf16-rotated");
    let (ok, err) = common::quantize(&[
        fixture("llama3").to_str().unwrap(),
        "--recipe",
        recipe.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let store = SafetensorsStore::open(&out).unwrap();
    for t in ["lm_head.weight", "model.embed_tokens.weight", "model.layers.0.mlp.down_proj.weight"] {
        assert_eq!(store.raw(t).unwrap().dtype, safetensors::Dtype::BF16, "{t}");
    }
    // Quantized after the rotation: int8 stays close to the dense model, 1 and 2 threads agree.
    let src = fixture("qwen2");
    let run = |threads: &str| {
        let out = root.path().join(format!("qwen2-rot-gptq-{threads}"));
        let args = [
            src.to_str().unwrap(),
            "--rotate",
            "--method",
            "gptq",
            "--bits",
            "8",
            "--group-size",
            "32",
            "--threads",
            threads,
            "-o",
            out.to_str().unwrap(),
        ];
        let args: Vec<&str> = args.into_iter().chain(small_calib(&text)).collect();
        let (ok, err) = common::quantize(&args);
        assert!(ok, "{err}");
        out
    };
    let (two, one) = (run("2"), run("1"));
    common::assert_same_files(&two, &one, "between 2 threads and 1");
    let report = eval_report(&two, &src, &text, &root.path().join("rot.json"));
    let kl = report["comparison"]["mean_kl_divergence"].as_f64().unwrap();
    assert!(kl < 0.02, "rotated int8 GPTQ: KL {kl}");
    assert!(std::fs::read_to_string(two.join("recipe.toml")).unwrap().contains("type = \"rotate\""));
    // The rotated head quantized too (`--include-head`): its own int8 `lm_head`.
    let head = root.path().join("llama3-rot-head");
    let (ok, err) = common::quantize(&[
        fixture("llama3").to_str().unwrap(),
        "--method",
        "rtn",
        "--bits",
        "8",
        "--per-channel",
        "--rotate",
        "--include-head",
        "-o",
        head.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let (_, info) = load_model(&head).unwrap();
    assert_eq!(info.quantized_linears, 2 * 7 + 1, "the blocks' linears and the head");
    let report = eval_report(&head, &fixture("llama3"), &text, &root.path().join("rot-head.json"));
    let kl = report["comparison"]["mean_kl_divergence"].as_f64().unwrap();
    assert!(kl < 0.01, "rotated int8 with an int8 head: KL {kl}");
    // Gemma normalizes the block outputs before the residual add: refused, nothing written.
    let out = root.path().join("gemma2-rot");
    common::fails_with(
        &[fixture("gemma2").to_str().unwrap(), "--rotate", "--method", "rtn", "-o", out.to_str().unwrap()],
        &["--rotate", "post_attention_layernorm"],
    );
    assert!(!out.exists());
    // A GGUF file cannot hold the untied head yet: refused before any work.
    common::fails_with(
        &[src.to_str().unwrap(), "--rotate", "--gguf-type", "Q8_0", "-o", root.path().join("x.gguf").to_str().unwrap()],
        &["--rotate", "GGUF"],
    );
}

/// W4A8 (`--scheme w4a8-int8`): INT4 symmetric grouped weights, one code per int8 in
/// [-8, 7] (compressed-tensors int-quantized, as vLLM's `CompressedTensorsW4A8Int` reads
/// it) with INT8 dynamic per-token activations; reloaded and evaluated with the
/// activations rounded at run time, rotated or not. Asymmetric weights are refused.
#[test]
fn w4a8_checkpoints_hold_int4_codes_with_int8_activations() {
    let root = tempfile::tempdir().unwrap();
    let text = family_text(root.path());
    let src = fixture("llama3");
    for rotate in [false, true] {
        let out = root.path().join(format!("w4a8-{rotate}"));
        let mut args = vec![
            src.to_str().unwrap(),
            "--method",
            "gptq",
            "--scheme",
            "w4a8-int8",
            "--group-size",
            "32",
            "-o",
            out.to_str().unwrap(),
        ];
        args.extend(small_calib(&text));
        if rotate {
            args.push("--rotate");
        }
        let (ok, err) = common::quantize(&args);
        assert!(ok, "{err}");
        let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
        let qc = &cfg["quantization_config"];
        assert_eq!(qc["format"], "int-quantized");
        let group = qc["config_groups"].as_object().unwrap().values().next().unwrap();
        assert_eq!(group["weights"]["num_bits"], 4);
        assert_eq!(group["weights"]["strategy"], "group");
        assert_eq!(group["weights"]["group_size"], 32);
        assert_eq!(group["weights"]["symmetric"], true);
        assert_eq!(group["input_activations"]["num_bits"], 8);
        assert_eq!(group["input_activations"]["dynamic"], true);
        assert_eq!(group["input_activations"]["strategy"], "token");
        let store = SafetensorsStore::open(&out).unwrap();
        let w = store.raw("model.layers.0.self_attn.q_proj.weight").unwrap();
        assert_eq!(w.dtype, safetensors::Dtype::I8);
        let codes: Vec<i8> = w.bytes.iter().map(|&b| b as i8).collect();
        assert!(codes.iter().all(|&c| (-8..=7).contains(&c)), "int4 codes in [-8, 7]");
        assert!(codes.contains(&-8) || codes.contains(&7), "the codes use the int4 range");
        let scale = store.raw("model.layers.0.self_attn.q_proj.weight_scale").unwrap();
        assert_eq!(scale.shape[1] * 32, w.shape[1], "a scale per group of 32");
        let report = eval_report(&out, &src, &text, &root.path().join(format!("w4a8-{rotate}.json")));
        let kl = report["comparison"]["mean_kl_divergence"].as_f64().unwrap();
        eprintln!("w4a8 rotate={rotate}: KL {kl:.4}");
        assert!(kl.is_finite() && kl < 0.5, "W4A8 rotate={rotate}: KL {kl}");
    }
    let o = root.path().join("bad");
    let (s, o) = (src.to_str().unwrap(), o.to_str().unwrap());
    common::fails_with(&[s, "--scheme", "w4a8-int8", "--asym", "-o", o], &["--asym", "symmetric"]);
    common::fails_with(&[s, "--method", "fp8", "--scheme", "w4a8-int8", "-o", o], &["--method", "w4a8-int8"]);
    let recipe = root.path().join("w4a8-asym.toml");
    std::fs::write(
        &recipe,
        "[scheme]\ntype = \"int4\"\ngroup_size = 32\nsymmetric = false\n[[modifier]]\ntype = \"rtn\"\n\
         [[modifier]]\ntype = \"activations\"\nformat = \"int8\"\n",
    )
    .unwrap();
    common::fails_with(&[s, "--recipe", recipe.to_str().unwrap(), "-o", o], &["int4", "W4A8", "symmetric"]);
}

/// Mixed precision to a budget (`--target-bpw`): the measured choice stays within the
/// budget and uses it, lands in the recipe as overrides (rerunning the recipe gives the
/// same bytes without measuring), writes the sensitivity report beside the checkpoint,
/// and reloads; a budget below the cheapest candidates or on FP8 is refused by name.
#[test]
fn a_bits_budget_picks_schemes_per_linear_within_it() {
    let root = tempfile::tempdir().unwrap();
    let text = family_text(root.path());
    let src = fixture("llama_bias_linear");
    let out = root.path().join("mixed");
    let json = root.path().join("mixed.json");
    let calib = small_calib(&text);
    let mut args = vec![src.to_str().unwrap(), "--method", "gptq", "--target-bpw", "5", "-o", out.to_str().unwrap()];
    args.extend(calib);
    args.extend(["--json", json.to_str().unwrap()]);
    let (ok, err) = common::quantize(&args);
    assert!(ok, "{err}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(report["budget"]["measure"], "hessian", "before GPTQ: errors through the Hessian");
    let achieved = report["budget"]["achieved_bpw"].as_f64().unwrap();
    assert!(achieved <= 5.0 && achieved > 4.5, "achieved {achieved} bits/weight for a budget of 5");
    let chosen: std::collections::BTreeSet<&str> =
        report["budget"]["linears"].as_array().unwrap().iter().map(|l| l["chosen"].as_str().unwrap()).collect();
    assert!(chosen.len() >= 2, "a mix: {chosen:?}");
    let bits = report["bits_per_weight"].as_f64().unwrap();
    assert!((bits - achieved).abs() < 1e-9, "the checkpoint holds the measured bits: {bits} vs {achieved}");
    for f in ["sensitivity.txt", "sensitivity.json", "sensitivity.svg"] {
        assert!(out.join(f).exists(), "{f}");
    }
    assert!(std::fs::read_to_string(out.join("sensitivity.svg")).unwrap().starts_with("<svg"));
    let recipe = std::fs::read_to_string(out.join("recipe.toml")).unwrap();
    assert!(recipe.contains("[[override]]") && !recipe.contains("[budget]"), "{recipe}");
    let again = root.path().join("again");
    let (ok, err) = common::quantize(&[
        src.to_str().unwrap(),
        "--recipe",
        out.join("recipe.toml").to_str().unwrap(),
        "-o",
        again.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    for f in ["model.safetensors", "config.json", "recipe.toml"] {
        assert!(std::fs::read(out.join(f)).unwrap() == std::fs::read(again.join(f)).unwrap(), "{f} differs on rerun");
    }
    let report = eval_report(&out, &src, &text, &root.path().join("mixed-eval.json"));
    let kl = report["comparison"]["mean_kl_divergence"].as_f64().unwrap();
    assert!(kl.is_finite() && kl < 0.5, "mixed: KL {kl}");

    // Before RTN: each linear alone at its attention or MLP output.
    let rtn = root.path().join("mixed-rtn");
    let rtn_json = root.path().join("mixed-rtn.json");
    let mut args = vec![src.to_str().unwrap(), "--method", "rtn", "--target-bpw", "5", "-o", rtn.to_str().unwrap()];
    args.extend(calib);
    args.extend(["--json", rtn_json.to_str().unwrap()]);
    let (ok, err) = common::quantize(&args);
    assert!(ok, "{err}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&rtn_json).unwrap()).unwrap();
    assert_eq!(report["budget"]["measure"], "output");
    assert!(report["budget"]["achieved_bpw"].as_f64().unwrap() <= 5.0);

    let o = root.path().join("bad");
    let mut low = vec![src.to_str().unwrap(), "--method", "rtn", "--target-bpw", "2", "-o", o.to_str().unwrap()];
    low.extend(calib);
    common::fails_with(&low, &["--target-bpw", "cheapest"]);
    assert!(!o.exists());
    common::fails_with(
        &[src.to_str().unwrap(), "--method", "fp8", "--target-bpw", "5", "-o", o.to_str().unwrap()],
        &["--target-bpw"],
    );
}

/// A linear left unquantized (`ignore`) after AWQ scaled its input columns is written
/// with those columns, as the norm it reads was divided: the model computes what the
/// full-precision one does (before: the source weights were written, a wrong model).
#[test]
fn ignored_linears_are_written_as_the_transforms_left_them() {
    let root = tempfile::tempdir().unwrap();
    let text = family_text(root.path());
    let src = fixture("llama_bias_linear");
    let recipe = root.path().join("awq-ignore.toml");
    std::fs::write(
        &recipe,
        format!(
            "ignore = [\"re:.*self_attn\\\\.q_proj$\"]\n[scheme]\ntype = \"int8\"\n[calibration]\nfiles = [{:?}]\n\
             nsamples = 6\nseqlen = 32\n[[modifier]]\ntype = \"awq\"\ngrid = 4\n[[modifier]]\ntype = \"rtn\"\n",
            text.to_str().unwrap()
        ),
    )
    .unwrap();
    let out = root.path().join("awq-ignore");
    let (ok, err) =
        common::quantize(&[src.to_str().unwrap(), "--recipe", recipe.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert!(ok, "{err}");
    let store = SafetensorsStore::open(&out).unwrap();
    let q = store.f32("model.layers.0.self_attn.q_proj.weight").unwrap().0;
    let orig = SafetensorsStore::open(&src).unwrap().f32("model.layers.0.self_attn.q_proj.weight").unwrap().0;
    assert!(q != orig, "the ignored q_proj carries AWQ's scales");
    let report = eval_report(&out, &src, &text, &root.path().join("awq-ignore.json"));
    let kl = report["comparison"]["mean_kl_divergence"].as_f64().unwrap();
    assert!(kl < 0.01, "int8 AWQ with q_proj ignored: KL {kl}");
}

/// `--include-head` with GPTQ: the (tied) head is solved from its input's statistics on
/// the calibration windows (the final norm of the quantized stream), so its logits are
/// closer to the dense model's than the same body's with the head rounded to nearest in
/// the same scheme.
#[test]
fn gptq_quantizes_the_head_from_its_calibration_inputs() {
    use quantize::eval::{kl_and_agreement, log_softmax_rows};
    use quantize::format::QuantScheme;
    use quantize::model::qlinear::QuantizedLinear;
    let root = tempfile::tempdir().unwrap();
    let text = family_text(root.path());
    let src = fixture("llama3");
    let out = root.path().join("gptq-head");
    let mut args = vec![src.to_str().unwrap(), "--method", "gptq", "--bits", "4", "--group-size", "32", "--asym"];
    args.extend(["--no-mse", "--include-head", "-o", out.to_str().unwrap()]);
    args.extend(small_calib(&text));
    let (ok, err) = common::quantize(&args);
    assert!(ok, "{err}");
    let dense = LlamaModel::load(&src).unwrap();
    let (mut model, _) = load_model(&out).unwrap();
    assert!(model.lm_head.is_some(), "the head is its own quantized linear");
    let tok = quantize::io::tokenizer::Tokenizer::for_model(&src).unwrap();
    let ids = tok.encode(&std::fs::read_to_string(&text).unwrap()).unwrap();
    let ids = &ids[ids.len() - 64..];
    let want = dense.forward(ids, 2, 32).unwrap();
    let vocab = dense.config.vocab_size;
    let want_logp = log_softmax_rows(&want, vocab);
    let mean_kl = |got: &[f32]| -> f64 {
        let rows = kl_and_agreement(&want_logp, &log_softmax_rows(got, vocab), vocab);
        rows.iter().map(|(kl, _)| kl).sum::<f64>() / rows.len() as f64
    };
    let gptq_kl = mean_kl(&model.forward(ids, 2, 32).unwrap());
    let h = dense.config.hidden_size;
    let store = SafetensorsStore::open(&src).unwrap();
    let e = store.f32_shaped("model.embed_tokens.weight", &[vocab, h]).unwrap();
    let scheme = QuantScheme::int(4).unwrap().group(32).unwrap().asymmetric().unwrap();
    let q = quantize::quant::rtn::quantize_rtn("lm_head", &e, vocab, h, scheme, None).unwrap();
    model.lm_head = Some(Box::new(QuantizedLinear::new("lm_head", &q).unwrap()));
    let rtn_kl = mean_kl(&model.forward(ids, 2, 32).unwrap());
    eprintln!("KL to dense: gptq head {gptq_kl:.5}, rtn head {rtn_kl:.5}");
    assert!(gptq_kl < rtn_kl, "gptq head {gptq_kl:.5} vs rtn head {rtn_kl:.5}");
}
