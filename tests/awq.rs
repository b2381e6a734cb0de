//! AWQ: scale groups declared by the model, folds that leave the full-precision model
//! unchanged, the search against plain RTN, the AWQ GEMM bytes against bytes derived by
//! hand from AutoAWQ's packing, and a checkpoint written, read back and evaluated.

mod common;

use quantize::format::awq::AWQ_PACK_ORDER;
use quantize::format::{QuantScheme, QuantizedTensor};
use quantize::io::checkpoint::{
    read_quantized_checkpoint, write_quantized_checkpoint, write_quantized_checkpoint_with, CheckpointFormat,
};
use quantize::io::safetensors::SafetensorsStore;
use quantize::model::linear::{DenseLinear, MappedLinear};
use quantize::model::llama::{
    dense_from_store, linear_shape, scale_groups, ScaleGroup, ScaleSource, ScaleTarget, BLOCK_LINEARS,
};
use quantize::model::load::load_model;
use quantize::model::{LlamaConfig, LlamaModel};
use quantize::pipeline::driver::{self, DriverOptions, DriverOutput, Source};
use quantize::pipeline::modifiers::awq::{Awq, AwqGroupReport, AwqOptions};
use quantize::pipeline::modifiers::{gptq::Gptq, rtn::Rtn};
use quantize::pipeline::{Modifiers, SchemePolicy, WeightQuantizer};
use quantize::quant::awq::weights::{awq_scales, BlockWeights};
use quantize::quant::gptq::GptqOptions;
use rand::{Rng, SeedableRng};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// f32 forwards of the same function, weights rescaled by up to 10x either way: logits
/// agree to this fraction of the logit range (measured: 1.0e-6 on the tiny models, 2.2e-6
/// on SmolLM2's 30 blocks; a wrong fold moves them by order 1).
const FOLD_TOL: f64 = 1e-4;

const HIDDEN: usize = 64;
const FFN: usize = 96;
const VOCAB: usize = 48;
const LAYERS: usize = 2;

/// A tiny random llama (or qwen2, with q/k/v biases) in `dir`: `kv_heads` of 4 heads,
/// head_dim 16. Channel 5 of the input norm and 9 of the post-attention norm are
/// outliers (x30), the kind of activation AWQ protects.
fn tiny_model(dir: &Path, kv_heads: usize, qwen2: bool) -> LlamaConfig {
    std::fs::create_dir_all(dir).unwrap();
    let config = json!({
        "model_type": if qwen2 { "qwen2" } else { "llama" }, "hidden_size": HIDDEN, "intermediate_size": FFN,
        "num_hidden_layers": LAYERS, "num_attention_heads": 4, "num_key_value_heads": kv_heads, "vocab_size": VOCAB,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": true,
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let cfg = LlamaConfig::from_file(&dir.join("config.json")).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(kv_heads as u64 * 2 + qwen2 as u64);
    let mut t: Vec<(String, Vec<usize>, Vec<f32>)> = vec![];
    let mut rand = |n: usize, a: f32| -> Vec<f32> { (0..n).map(|_| rng.random_range(-a..a)).collect() };
    t.push(("model.embed_tokens.weight".into(), vec![VOCAB, HIDDEN], rand(VOCAB * HIDDEN, 1.0)));
    t.push(("model.norm.weight".into(), vec![HIDDEN], rand(HIDDEN, 0.2).iter().map(|v| 1.0 + v).collect()));
    for b in 0..LAYERS {
        let p = format!("model.layers.{b}");
        for (short, _) in BLOCK_LINEARS {
            let (o, i) = linear_shape(&cfg, short);
            t.push((format!("{p}.{short}.weight"), vec![o, i], rand(o * i, 1.0 / (i as f32).sqrt())));
        }
        for (norm, outlier) in [("input_layernorm", 5), ("post_attention_layernorm", 9)] {
            let mut w: Vec<f32> = rand(HIDDEN, 0.2).iter().map(|v| 1.0 + v).collect();
            w[outlier] = 30.0;
            t.push((format!("{p}.{norm}.weight"), vec![HIDDEN], w));
        }
        if qwen2 {
            for (s, n) in [("q", cfg.q_dim()), ("k", cfg.kv_dim()), ("v", cfg.kv_dim())] {
                t.push((format!("{p}.self_attn.{s}_proj.bias"), vec![n], rand(n, 0.5)));
            }
        }
    }
    let bytes: Vec<Vec<u8>> = t.iter().map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect()).collect();
    let views: Vec<(String, TensorView<'_>)> = t
        .iter()
        .zip(&bytes)
        .map(|((n, s, _), b)| (n.clone(), TensorView::new(Dtype::F32, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    cfg
}

/// The model over `blocks` (dense), embedding and final norm from `store`.
fn model_from(cfg: &LlamaConfig, store: &SafetensorsStore, blocks: &[BlockWeights]) -> LlamaModel {
    let h = cfg.hidden_size;
    LlamaModel {
        config: cfg.clone(),
        embed: MappedLinear::new(store.mapped("model.embed_tokens.weight", [cfg.vocab_size, h]).unwrap()),
        blocks: blocks.iter().map(|b| b.to_block(cfg)).collect(),
        norm: store.f32_shaped("model.norm.weight", &[h]).unwrap(),
        lm_head: None,
    }
}

fn max_rel_diff(a: &[f32], b: &[f32]) -> f64 {
    let range = a.iter().fold(0.0f32, |m, v| m.max(v.abs())) as f64;
    a.iter().zip(b).map(|(x, y)| (x - y).abs() as f64).fold(0.0, f64::max) / range
}

/// Fold random scales (log-uniform in [0.1, 10]) into every group of every block; the
/// logits must not move beyond float rounding.
fn check_fold_keeps_logits(cfg: &LlamaConfig, store: &SafetensorsStore, tokens: &[u32], tol: f64) {
    let mut blocks: Vec<BlockWeights> =
        (0..cfg.num_layers).map(|b| BlockWeights::load(cfg, store, b).unwrap()).collect();
    let before = model_from(cfg, store, &blocks).forward(tokens, 1, tokens.len()).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    for bw in &mut blocks {
        for g in scale_groups(cfg).unwrap() {
            let width = linear_shape(cfg, g.linears[0]).1;
            let s: Vec<f32> = (0..width).map(|_| 10f32.powf(rng.random_range(-1.0..1.0))).collect();
            bw.fold(cfg, &g, &s).unwrap();
        }
    }
    let after = model_from(cfg, store, &blocks).forward(tokens, 1, tokens.len()).unwrap();
    let d = max_rel_diff(&before, &after);
    assert!(d <= tol, "folded logits moved by {d:e} of the range (tolerance {tol:e})");
}

#[test]
fn folding_scales_leaves_full_precision_logits_unchanged() {
    let root = tempfile::tempdir().unwrap();
    for (kv, qwen2) in [(4, true), (2, false)] {
        let dir = root.path().join(format!("m{kv}{qwen2}"));
        let cfg = tiny_model(&dir, kv, qwen2);
        let groups = scale_groups(&cfg).unwrap();
        // v -> o only without grouped-query attention.
        assert_eq!(groups.len(), if kv == 4 { 4 } else { 3 });
        let tokens: Vec<u32> = (0..20).map(|i| (i * 7 % VOCAB) as u32).collect();
        check_fold_keeps_logits(&cfg, &SafetensorsStore::open(&dir).unwrap(), &tokens, FOLD_TOL);
    }
}

#[test]
fn folding_scales_leaves_real_model_logits_unchanged() {
    let dir = common::smollm2_dir();
    let cfg = LlamaConfig::from_file(&dir.join("config.json")).unwrap();
    let tokens: Vec<u32> = vec![1, 504, 3458, 28, 253, 1345, 314, 260, 2261, 30, 378, 1700];
    check_fold_keeps_logits(&cfg, &SafetensorsStore::open(&dir).unwrap(), &tokens, FOLD_TOL);
}

#[test]
fn scale_group_whose_shapes_do_not_line_up_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let gqa = tiny_model(&root.path().join("gqa"), 2, false);
    // v has 32 outputs, o reads 64: grouped-query attention.
    let e = ScaleGroup::new(&gqa, ScaleSource::Linear("self_attn.v_proj"), &["self_attn.o_proj"], ScaleTarget::Linears)
        .unwrap_err()
        .to_string();
    assert!(e.contains("32") && e.contains("64") && e.contains("o_proj"), "{e}");
    let e =
        ScaleGroup::new(&gqa, ScaleSource::PostNorm, &["mlp.down_proj"], ScaleTarget::Linears).unwrap_err().to_string();
    assert!(e.contains("down_proj") && e.contains(&FFN.to_string()), "{e}");
    let e = ScaleGroup::new(&gqa, ScaleSource::InputNorm, &["self_attn.q_proj", "mlp.gate_proj"], ScaleTarget::Linears)
        .unwrap_err()
        .to_string();
    assert!(e.contains("gate_proj") && e.contains("MlpIn"), "{e}");
    let e = ScaleGroup::new(&gqa, ScaleSource::Linear("mlp.up_proj"), &["mlp.up_proj"], ScaleTarget::Linears)
        .unwrap_err()
        .to_string();
    assert!(e.contains("own input"), "{e}");
    assert!(ScaleGroup::new(&gqa, ScaleSource::Linear("mlp.up_proj"), &["mlp.down_proj"], ScaleTarget::Linears).is_ok());
}

#[test]
fn zero_activation_channels_give_finite_scales() {
    let mut x = vec![0.0f32; 64];
    x[3] = 2.0;
    x[10] = 1e-20;
    for alpha in [0.0, 0.05, 0.5, 0.95] {
        let s = awq_scales(&x, None, alpha);
        assert!(s.iter().all(|v| v.is_finite() && *v > 0.0), "alpha {alpha}: {s:?}");
    }
}

fn options() -> AwqOptions {
    AwqOptions { grid: 10, ..Default::default() }
}

/// AWQ then RTN (or GPTQ with these options) through the block driver: the driver's
/// output and the AWQ groups' reports.
fn run_awq(
    cfg: &LlamaConfig,
    store: &SafetensorsStore,
    windows: &[Vec<u32>],
    scheme: QuantScheme,
    opts: AwqOptions,
    gptq: Option<GptqOptions>,
) -> (DriverOutput, Vec<AwqGroupReport>, serde_json::Value) {
    let weights: Box<dyn WeightQuantizer> = match gptq {
        Some(opts) => Box::new(Gptq { opts }),
        None => Box::new(Rtn { clip: None, imatrix: false }),
    };
    let mut mods = Modifiers {
        schemes: SchemePolicy::uniform(scheme),
        rotation: None,
        transforms: vec![Box::new(Awq::new(cfg, quantize::pipeline::SchemePolicy::uniform(scheme), opts).unwrap())],
        weights,
        inputs: None,
    };
    let dopts = DriverOptions {
        chunk_windows: 2,
        progress: false,
        verbose: false,
        label: "awq".into(),
        observe_kv: false,
        observe_head: false,
    };
    let out = driver::run(cfg, store, Source::Windows(windows), &mut mods, &dopts).unwrap();
    let report = serde_json::Value::Object(mods.transforms[0].report());
    let groups = serde_json::from_value(report["awq_groups"].clone()).unwrap();
    (out, groups, report)
}

/// Calibration windows over the tiny vocabulary; window 0 never uses token 0.
fn windows(n: usize, seq: usize) -> Vec<Vec<u32>> {
    (0..n).map(|w| (0..seq).map(|t| ((w * 13 + t * 5 + t * t) % (VOCAB - 1) + 1) as u32).collect()).collect()
}

#[test]
fn awq_beats_rtn_on_outlier_channels_and_round_trips_through_awq_checkpoint() {
    let root = tempfile::tempdir().unwrap();
    let src = root.path().join("src");
    let cfg = tiny_model(&src, 4, true);
    let store = SafetensorsStore::open(&src).unwrap();
    let scheme = QuantScheme::int(4).unwrap().asymmetric().unwrap().group(32).unwrap();
    let (out, groups, report) = run_awq(&cfg, &store, &windows(4, 16), scheme, options(), None);
    assert_eq!(groups.len(), LAYERS * 4);
    for g in &groups {
        assert!(g.error_after <= g.error_before && g.errors.len() == 10 && g.errors[0] == g.error_before, "{g:?}");
        assert!((0.0..1.0).contains(&g.alpha));
    }
    // The outlier norm channels: scaling must beat plain RTN strictly.
    for g in groups.iter().filter(|g| g.source.ends_with("layernorm")) {
        assert!(g.error_after < g.error_before && g.alpha > 0.0, "{g:?}");
    }
    let clips = report["awq_clips"].as_array().unwrap();
    assert!(!clips.is_empty());
    assert!(clips.iter().all(|c| c["error_after"].as_f64() <= c["error_before"].as_f64()));
    assert!(clips
        .iter()
        .all(|c| !c["name"].as_str().unwrap().contains("q_proj") && !c["name"].as_str().unwrap().contains("k_proj")));
    // Folded norms and v biases are written as dense replacements.
    assert!(out.dense.contains_key("model.layers.1.input_layernorm.weight"));
    assert!(out.dense.contains_key("model.layers.0.self_attn.v_proj.bias"));
    assert!(report["awq_groups"][0]["alpha"].is_number() && out.layers.len() == out.tensors.len());

    // Write awq, read back: the loaded model equals the in-memory quantized model.
    let dest = root.path().join("awq");
    write_quantized_checkpoint_with(&src, &dest, &out.tensors, &out.dense, CheckpointFormat::Awq, &BTreeMap::new())
        .unwrap();
    let ckpt = read_quantized_checkpoint(&dest).unwrap();
    assert_eq!(ckpt.format, CheckpointFormat::Awq);
    for (m, q) in &out.tensors {
        assert_eq!(ckpt.quantized[m].dequantize(), q.dequantize(), "{m}");
    }
    let (loaded, info) = load_model(&dest).unwrap();
    assert_eq!(info.format.as_deref(), Some("awq"));
    let mem = LlamaModel::load_with(cfg.clone(), &store, &|name, o, i| match out.tensors.get(name) {
        Some(q) => Ok(Box::new(DenseLinear::new(q.dequantize(), o, i)) as _),
        None => dense_from_store(&store, name, o, i),
    })
    .unwrap();
    let mut mem = mem;
    for (b, block) in mem.blocks.iter_mut().enumerate() {
        block.input_norm = out.dense[&format!("model.layers.{b}.input_layernorm.weight")].clone();
        block.post_norm = out.dense[&format!("model.layers.{b}.post_attention_layernorm.weight")].clone();
        block.biases[2] = Some(out.dense[&format!("model.layers.{b}.self_attn.v_proj.bias")].clone());
    }
    let tokens: Vec<u32> = (0..12).map(|i| (i * 5 % VOCAB) as u32).collect();
    let (a, b) = (loaded.forward(&tokens, 1, 12).unwrap(), mem.forward(&tokens, 1, 12).unwrap());
    assert!(max_rel_diff(&a, &b) < FOLD_TOL, "loaded checkpoint differs from the quantized model in memory");

    // awq+gptq runs through the same path and fits its Hessians no worse than RTN's loss.
    let gptq = Some(GptqOptions::default());
    let (g, g_groups, _) = run_awq(&cfg, &store, &windows(4, 16), scheme, options(), gptq);
    assert!(g.layers.iter().all(|l| l.damp.is_some()), "GPTQ quantized every linear");
    assert_eq!(g.tensors.len(), out.tensors.len());

    // Scoring the alphas with GPTQ's weights: on block 0 (the same inputs in both runs)
    // every group's error at s = 1 is GPTQ's, lower than RTN's, and the best is no worse.
    let (_, gs_groups, _) =
        run_awq(&cfg, &store, &windows(4, 16), scheme, AwqOptions { search_gptq: gptq, ..options() }, gptq);
    let block0 = |r: &[AwqGroupReport]| r.iter().filter(|g| g.block == 0).cloned().collect::<Vec<_>>();
    for (rtn, gptq) in block0(&g_groups).iter().zip(block0(&gs_groups)) {
        assert_eq!(rtn.linears, gptq.linears);
        assert!(gptq.error_before < rtn.error_before, "{gptq:?} vs {rtn:?}");
        assert!(gptq.error_after <= gptq.error_before, "{gptq:?}");
    }
}

fn int4_tensor(
    rows: usize,
    cols: usize,
    group: usize,
    code: impl Fn(usize, usize) -> u8,
    zero: impl Fn(usize, usize) -> u8,
) -> QuantizedTensor {
    let scheme = QuantScheme::int(4).unwrap().asymmetric().unwrap().group(group).unwrap();
    let g = cols / group;
    QuantizedTensor {
        scheme,
        rows,
        cols,
        codes: (0..rows * cols).map(|k| code(k / cols, k % cols)).collect(),
        scales: (0..rows * g).map(|k| 0.5 + (k % 7) as f32 / 8.0).collect(),
        zeros: Some((0..rows * g).map(|k| zero(k / g, k % g)).collect()),
        g_idx: None,
        ggml: None,
    }
}

fn one_linear_model(root: &Path, rows: usize, cols: usize) -> PathBuf {
    let dir = root.join("one");
    std::fs::create_dir_all(&dir).unwrap();
    let zeros = vec![0u8; rows * cols * 4];
    let v = vec![("m.weight".to_string(), TensorView::new(Dtype::F32, vec![rows, cols], &zeros).unwrap())];
    safetensors::serialize_to_file(v, None, &dir.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("config.json"), json!({"model_type": "llama"}).to_string()).unwrap();
    dir
}

#[test]
fn awq_gemm_bytes_follow_autoawq_pack() {
    // out = 8, in = 4, group 2. Input column 0 holds codes 0..8 down the outputs, column 1
    // holds 15 - o, columns 2, 3 hold 3. Zero points: o + 1 in group 0, 15 - o in group 1.
    let q = int4_tensor(
        8,
        4,
        2,
        |o, i| [o as u8, 15 - o as u8, 3, 3][i],
        |o, g| if g == 0 { o as u8 + 1 } else { 15 - o as u8 },
    );
    let root = tempfile::tempdir().unwrap();
    let src = one_linear_model(root.path(), 8, 4);
    let dest = root.path().join("awq");
    write_quantized_checkpoint(
        &src,
        &dest,
        &BTreeMap::from([("m".to_string(), q.clone())]),
        CheckpointFormat::Awq,
        &BTreeMap::new(),
    )
    .unwrap();
    let bytes = std::fs::read(dest.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let get = |n: &str, d: Dtype, s: &[usize]| {
        let t = st.tensor(n).unwrap();
        assert_eq!((t.dtype(), t.shape()), (d, s), "{n}");
        t.data().to_vec()
    };
    // WQLinear_GEMM.from_linear: qweight[i][0] |= intweight[i][order_map[k]] << 4k with
    // order_map = [0, 2, 4, 6, 1, 3, 5, 7]. Column 0: nibbles 0,2,4,6,1,3,5,7 (low first)
    // = 0x75316420; column 1: 15 - those = F,D,B,9,E,C,A,8 = 0x8ACE9BDF; 3s: 0x33333333.
    let qweight: Vec<u32> = vec![0x7531_6420, 0x8ACE_9BDF, 0x3333_3333, 0x3333_3333];
    assert_eq!(get("m.qweight", Dtype::I32, &[4, 1]), qweight.iter().flat_map(|w| w.to_le_bytes()).collect::<Vec<_>>());
    // Zeros group 0 are o + 1: 1,3,5,7,2,4,6,8 = 0x86427531; group 1: 15 - o = F,D,B,9,E,C,A,8.
    let qzeros: Vec<u32> = vec![0x8642_7531, 0x8ACE_9BDF];
    assert_eq!(get("m.qzeros", Dtype::I32, &[2, 1]), qzeros.iter().flat_map(|w| w.to_le_bytes()).collect::<Vec<_>>());
    let sc = &q.scales;
    let scales: Vec<u8> = (0..2)
        .flat_map(|g| (0..8).map(move |o| sc[o * 2 + g]))
        .flat_map(|s| half::f16::from_f32(s).to_le_bytes())
        .collect();
    assert_eq!(get("m.scales", Dtype::F16, &[2, 8]), scales);
    assert_eq!(AWQ_PACK_ORDER, [0, 2, 4, 6, 1, 3, 5, 7]);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dest.join("config.json")).unwrap()).unwrap();
    let qc = &config["quantization_config"];
    assert_eq!(
        (
            qc["quant_method"].as_str(),
            qc["version"].as_str(),
            qc["bits"].as_i64(),
            qc["group_size"].as_i64(),
            qc["zero_point"].as_bool()
        ),
        (Some("awq"), Some("gemm"), Some(4), Some(2), Some(true))
    );
    assert_eq!(read_quantized_checkpoint(&dest).unwrap().quantized["m"], q, "round trip");
    // Not storable: in not a multiple of the group, 8-bit.
    let e = write_quantized_checkpoint(
        &src,
        &root.path().join("bad"),
        &BTreeMap::from([("m".to_string(), int4_tensor(8, 4, 4, |_, _| 0, |_, _| 8))]),
        CheckpointFormat::Awq,
        &BTreeMap::new(),
    );
    assert!(e.is_ok(), "one group of 4 fits");
    let mut ragged = int4_tensor(8, 4, 2, |_, _| 0, |_, _| 8);
    ragged.scheme = ragged.scheme.group(3).unwrap();
    let e = write_quantized_checkpoint(
        &src,
        &root.path().join("bad2"),
        &BTreeMap::from([("m".to_string(), ragged)]),
        CheckpointFormat::Awq,
        &BTreeMap::new(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("group_size = 3"), "{e}");
    assert!(!root.path().join("bad2").exists(), "nothing left behind");
}

#[test]
fn real_model_awq_checkpoint_loads_and_evaluates() {
    let dir = common::smollm2_dir();
    let cfg = LlamaConfig::from_file(&dir.join("config.json")).unwrap();
    let store = SafetensorsStore::open(&dir).unwrap();
    let tok = quantize::io::tokenizer::Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    let text = quantize::io::tokenizer::read_text(&common::brown_calib()).unwrap();
    let ids = tok.encode(&text.chars().take(20_000).collect::<String>()).unwrap();
    let wins = quantize::calib::dataset::sample_windows(&ids, 2, 64, 0).unwrap();
    // SmolLM2's 576 columns are 9 groups of 64: storable in the awq layout.
    let scheme = QuantScheme::int(4).unwrap().asymmetric().unwrap().group(64).unwrap();
    let (out, groups, _) = run_awq(&cfg, &store, &wins, scheme, AwqOptions { grid: 4, ..Default::default() }, None);
    assert_eq!(groups.len(), 30 * 3, "GQA: no v -> o group");
    let root = tempfile::tempdir().unwrap();
    let dest = root.path().join("awq");
    write_quantized_checkpoint_with(&dir, &dest, &out.tensors, &out.dense, CheckpointFormat::Awq, &BTreeMap::new())
        .unwrap();
    let (model, info) = load_model(&dest).unwrap();
    assert_eq!((info.format.as_deref(), info.quantized_linears), (Some("awq"), 30 * 7));
    let held = tok
        .encode(
            &quantize::io::tokenizer::read_text(&common::brown_heldout())
                .unwrap()
                .chars()
                .take(4000)
                .collect::<String>(),
        )
        .unwrap();
    let logits = model.forward(&held[..32], 1, 32).unwrap();
    assert!(logits.iter().all(|v| v.is_finite()));
}

#[test]
fn cli_refuses_awq_layout_that_cannot_hold_the_scheme_before_running() {
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("out");
    let dir = common::smollm2_dir();
    let args = [
        dir.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--method",
        "awq",
        "--asym",
        "--format",
        "awq",
        "--group-size",
        "128",
        "--group-fallback",
        "partial",
        "--nsamples",
        "1",
        "--seqlen",
        "8",
    ];
    let t0 = std::time::Instant::now();
    let res = std::process::Command::new(env!("CARGO_BIN_EXE_quantize")).args(args).output().unwrap();
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(
        !res.status.success() && err.contains("576") && err.contains("group size 128") && !err.contains("panicked"),
        "{err}"
    );
    assert!(!err.contains("windows x"), "refused before calibration: {err}");
    assert!(!out.exists() && t0.elapsed().as_secs() < 60);
}

/// awq+gptq skips AWQ's RTN-fitted clipping unless asked (GPTQ targets the unclipped
/// weights); asking for and against it at once is refused.
#[test]
fn cli_awq_gptq_skips_the_clip_by_default() {
    let root = tempfile::tempdir().unwrap();
    let dir = common::smollm2_dir();
    let run = |extra: &[&str], name: &str| {
        let out = root.path().join(name);
        let json = root.path().join(format!("{name}.json"));
        let mut args: Vec<String> =
            [dir.to_str().unwrap(), "-o", out.to_str().unwrap(), "--json", json.to_str().unwrap()]
                .iter()
                .map(|s| s.to_string())
                .collect();
        let base = ["--method", "awq+gptq", "--asym", "--nsamples", "1", "--seqlen", "16", "--awq-grid", "2"];
        args.extend(base.iter().chain(extra).map(|s| s.to_string()));
        let res = std::process::Command::new(env!("CARGO_BIN_EXE_quantize")).args(&args).output().unwrap();
        (res, json)
    };
    let (res, json) = run(&[], "default");
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(json).unwrap()).unwrap();
    assert_eq!(report["method"], "awq+gptq");
    assert_eq!(report["awq_clips"].as_array().map(Vec::len), Some(0), "no AWQ clip by default with GPTQ");
    assert!(report["awq_groups"].as_array().is_some_and(|g| !g.is_empty()));
    let (res, _) = run(&["--awq-clip", "--awq-no-clip"], "both");
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(!res.status.success() && err.contains("--awq-clip") && err.contains("--awq-no-clip"), "{err}");
}
