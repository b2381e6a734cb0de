//! Activation quantization (W8A8) end to end: the compressed-tensors layout vLLM loads,
//! the loader applying exactly what was written, NaN/Inf named by block and layer with
//! nothing written, and statistics saved then reloaded giving byte-identical checkpoints
//! (on the real SmolLM2, a few calibration windows).

mod common;

use common::quantize;

use quantize::format::activation::ActScheme;
use quantize::format::QuantScheme;
use quantize::io::checkpoint::checkpoint_activations;
use quantize::io::checkpoint::{read_quantized_checkpoint, write_activation_checkpoint, ActivationWrite};
use quantize::io::safetensors::SafetensorsStore;
use quantize::model::load::load_model;
use quantize::model::LlamaConfig;
use quantize::pipeline::driver::{self, DriverOptions, Source};
use quantize::pipeline::modifiers::{activation::Activations, rtn::Rtn, smooth::SmoothQuant};
use quantize::pipeline::{Modifiers, SchemePolicy};
use quantize::quant::activation::ActCalib;
use rand::{Rng, SeedableRng};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A tiny random LLaMA (2 blocks, hidden 32, GQA 4/2 heads) with SmolLM2's tokenizer, so
/// the command line can calibrate on text. `nan_norm`: block whose post-attention norm
/// holds a NaN.
fn tiny_model(root: &Path, name: &str, nan_norm: Option<usize>) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let vocab = 49152;
    let (h, inter, layers) = (32usize, 64usize, 2usize);
    let cfg = serde_json::json!({
        "model_type": "llama", "hidden_size": h, "intermediate_size": inter, "num_hidden_layers": layers,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": vocab, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "tie_word_embeddings": true, "max_position_embeddings": 256,
    });
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    std::fs::copy(common::smollm2_dir().join("tokenizer.json"), dir.join("tokenizer.json")).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = vec![];
    let mut put = |name: String, shape: Vec<usize>, scale: f32, rng: &mut rand_chacha::ChaCha8Rng| {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0) * scale).collect();
        tensors.push((name, shape, v.iter().flat_map(|x| x.to_le_bytes()).collect()));
    };
    put("model.embed_tokens.weight".into(), vec![vocab, h], 1.0, &mut rng);
    put("model.norm.weight".into(), vec![h], 1.0, &mut rng);
    for b in 0..layers {
        let p = format!("model.layers.{b}");
        put(format!("{p}.input_layernorm.weight"), vec![h], 1.0, &mut rng);
        put(format!("{p}.post_attention_layernorm.weight"), vec![h], 1.0, &mut rng);
        for (l, o, i) in [
            ("self_attn.q_proj", 32, h),
            ("self_attn.k_proj", 16, h),
            ("self_attn.v_proj", 16, h),
            ("self_attn.o_proj", h, 32),
            ("mlp.gate_proj", inter, h),
            ("mlp.up_proj", inter, h),
            ("mlp.down_proj", h, inter),
        ] {
            put(format!("{p}.{l}.weight"), vec![o, i], 0.2, &mut rng);
        }
    }
    if let Some(b) = nan_norm {
        let t =
            tensors.iter_mut().find(|t| t.0 == format!("model.layers.{b}.post_attention_layernorm.weight")).unwrap();
        t.2[8..12].copy_from_slice(&f32::NAN.to_le_bytes());
    }
    let views: Vec<(String, TensorView<'_>)> =
        tensors.iter().map(|(n, s, d)| (n.clone(), TensorView::new(Dtype::F32, s.clone(), d).unwrap())).collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    dir
}

fn windows(n: usize, len: usize) -> Vec<Vec<u32>> {
    (0..n).map(|w| (0..len).map(|t| ((w * 977 + t * 131) % 49152) as u32).collect()).collect()
}

#[test]
fn static_and_dynamic_checkpoints_have_the_layout_vllm_loads_and_load_back_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tiny_model(tmp.path(), "tiny", None);
    let cfg = LlamaConfig::from_file(&src.join("config.json")).unwrap();
    let store = SafetensorsStore::open(&src).unwrap();
    let w = windows(3, 24);
    for (name, weights, act) in [
        ("int8-static", QuantScheme::int(8).unwrap().per_channel(), ActScheme::int8(true, false)),
        ("int8-asym-static", QuantScheme::int(8).unwrap().per_tensor(), ActScheme::int8(false, false)),
        ("int8-dynamic", QuantScheme::int(8).unwrap().per_channel(), ActScheme::int8(true, true)),
        ("fp8-static", QuantScheme::fp8_e4m3(), ActScheme::fp8_e4m3(false)),
    ] {
        let mut mods = Modifiers {
            schemes: SchemePolicy::uniform(weights),
            rotation: None,
            transforms: vec![Box::new(SmoothQuant::new(0.5).unwrap())],
            weights: Box::new(Rtn { clip: None, imatrix: false }),
            inputs: Some(Box::new(Activations::new(act, ActCalib::Mse).unwrap())),
        };
        let dopts = DriverOptions {
            chunk_windows: 2,
            progress: false,
            verbose: false,
            label: name.into(),
            observe_kv: false,
            observe_head: false,
        };
        let o = driver::run(&cfg, &store, Source::Windows(&w), &mut mods, &dopts).unwrap();
        let params = mods.inputs.as_ref().unwrap().params().clone();
        assert_eq!(params.is_empty(), act.dynamic, "static schemes get one scale per linear");
        assert!(!o.dense.is_empty(), "smoothing replaces the norms");
        let out = tmp.path().join(name);
        write_activation_checkpoint(
            &src,
            &out,
            &o.tensors,
            &o.dense,
            &ActivationWrite { scheme: act, observer: "mse", params: &params },
            &BTreeMap::new(),
        )
        .unwrap();

        let cfg_json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
        let qc = &cfg_json["quantization_config"];
        assert_eq!(qc["format"], if act.is_fp8() { "float-quantized" } else { "int-quantized" }, "{name}");
        let ia = &qc["config_groups"]["group_0"]["input_activations"];
        assert_eq!(
            (ia["num_bits"].as_u64(), ia["dynamic"].as_bool(), ia["symmetric"].as_bool()),
            (Some(8), Some(act.dynamic), Some(act.symmetric)),
            "{name}"
        );
        assert_eq!(ia["strategy"], if act.dynamic { "token" } else { "tensor" });
        assert_eq!(ia["type"], if act.is_fp8() { "float" } else { "int" });
        let st = SafetensorsStore::open(&out).unwrap();
        let m = "model.layers.1.mlp.down_proj";
        let weight_name = format!("{m}.weight");
        let wt = st.raw(&weight_name).unwrap();
        assert_eq!(
            (wt.dtype, wt.shape),
            (if act.is_fp8() { Dtype::F8_E4M3 } else { Dtype::I8 }, &[32usize, 64][..]),
            "{name}"
        );
        match act.dynamic {
            true => assert!(!st.contains(&format!("{m}.input_scale"))),
            false => {
                let scale_name = format!("{m}.input_scale");
                let s = st.raw(&scale_name).unwrap();
                assert_eq!((s.dtype, s.shape), (Dtype::F32, &[1usize][..]), "vLLM: one float32 input scale per linear");
                assert_eq!(st.contains(&format!("{m}.input_zero_point")), !act.symmetric);
            }
        }

        // Read back: the same weights, the same activation parameters, and the loader wraps every linear.
        let ck = read_quantized_checkpoint(&out).unwrap();
        assert_eq!(ck.quantized, o.tensors, "{name}");
        let acts = checkpoint_activations(&ck).unwrap();
        assert_eq!(acts.len(), 14);
        for (module, (s, p)) in &acts {
            assert_eq!(*s, act);
            assert_eq!(*p, params.get(module).copied(), "{name} {module}");
        }
        let (model, info) = load_model(&out).unwrap();
        assert_eq!(info.activations, Some(act.to_string()));
        assert_eq!(
            model.blocks[0].post_norm, o.dense["model.layers.0.post_attention_layernorm.weight"],
            "smoothed norm loaded"
        );
        let logits = model.forward(&w[0][..8], 1, 8).unwrap();
        assert!(logits.iter().all(|v| v.is_finite()));
    }
}

#[test]
fn nan_activation_names_block_and_layer_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tiny_model(tmp.path(), "nan", Some(1));
    let s = src.to_str().unwrap();
    let out = tmp.path().join("out");
    let stats = tmp.path().join("stats.safetensors");
    let calib = common::brown_calib();
    let (ok, err) = quantize(&[
        "--scheme",
        "w8a8-int8",
        "--static",
        "--calib",
        calib.to_str().unwrap(),
        "--nsamples",
        "2",
        "--seqlen",
        "32",
        "--save-stats",
        stats.to_str().unwrap(),
        s,
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        err.contains("block 1") && err.contains("model.layers.1.mlp.gate_proj/up_proj") && err.contains("NaN"),
        "{err}"
    );
    assert!(!out.exists() && !stats.exists(), "nothing written");
    assert!(
        std::fs::read_dir(tmp.path()).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().starts_with('.')),
        "no temporary left"
    );
}

#[test]
fn saved_statistics_reproduce_the_checkpoint_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::smollm2_dir();
    let m = model.to_str().unwrap();
    let calib = common::brown_calib();
    let stats = tmp.path().join("stats.safetensors");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let common = [
        "--scheme",
        "w8a8-int8",
        "--static",
        "--act-calib",
        "mse",
        "--calib",
        calib.to_str().unwrap(),
        "--nsamples",
        "3",
        "--seqlen",
        "64",
        m,
    ];
    let run = |extra: &[&str]| {
        let args: Vec<&str> = common.iter().copied().chain(extra.iter().copied()).collect();
        let (ok, err) = quantize(&args);
        assert!(ok, "quantize {args:?}: {err}");
    };
    run(&["--save-stats", stats.to_str().unwrap(), "-o", a.to_str().unwrap()]);
    run(&["--load-stats", stats.to_str().unwrap(), "-o", b.to_str().unwrap()]);
    common::assert_same_files(&a, &b, "between the calibrated and the reloaded run");
    // The same statistics serve another activation calibration (only input scales change) ...
    let c = tmp.path().join("c");
    let args = [
        "--scheme",
        "w8a8-int8",
        "--static",
        "--act-calib",
        "percentile",
        "--load-stats",
        stats.to_str().unwrap(),
        m,
        "-o",
        c.to_str().unwrap(),
    ];
    let (ok, err) = quantize(&args);
    assert!(ok, "{err}");
    let (sa, sc) = (SafetensorsStore::open(&a).unwrap(), SafetensorsStore::open(&c).unwrap());
    let n = "model.layers.5.mlp.down_proj";
    assert_eq!(sa.raw(&format!("{n}.weight")).unwrap().bytes, sc.raw(&format!("{n}.weight")).unwrap().bytes);
    // ... but not other weights: the statistics were taken on the int8 model.
    let d = tmp.path().join("d");
    let (ok, err) = quantize(&[
        "--scheme",
        "w8a8-fp8",
        "--static",
        "--load-stats",
        stats.to_str().unwrap(),
        m,
        "-o",
        d.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("statistics taken with") && !d.exists(), "{err}");
}

/// Issue 21: `ActRuntime::CompressedTensors` is compressed-tensors' own forward, bit for
/// bit, on hostile rows (outliers, zeros, tiny and huge values, ties of the static grids,
/// the -128 code) for every activation scheme a W8A8 checkpoint declares; the fixture was
/// made by compressed-tensors (scripts/interop/make_act_fixture.py). vLLM's rounding is
/// checked against its kernels' formulas (csrc/quantization/compressed_tensors/
/// int8_quant_kernels.cu, fp8/common.cu): they differ from compressed-tensors' in some codes.
#[test]
fn activation_rounding_is_compressed_tensors_own_and_vllms() {
    use quantize::format::activation::{ActParams, ActRuntime};
    let path = common::repo_root().join("tests/fixtures/activations/compressed_tensors.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let f32s = |n: &str| -> Vec<f32> {
        let t = st.tensor(n).unwrap();
        assert_eq!(t.dtype(), Dtype::F32, "{n}");
        t.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
    };
    let i32s = |n: &str| -> i32 { i32::from_le_bytes(st.tensor(n).unwrap().data()[..4].try_into().unwrap()) };
    let x = f32s("x");
    let width = st.tensor("x").unwrap().shape()[1];
    let cases = [
        ("int8_sym", ActScheme::int8(true, true), ActScheme::int8(true, false)),
        ("int8_asym", ActScheme::int8(false, true), ActScheme::int8(false, false)),
        ("fp8", ActScheme::fp8_e4m3(true), ActScheme::fp8_e4m3(false)),
    ];
    let mut differs_from_vllm = 0;
    for (name, dynamic, stat) in cases {
        let p = ActParams {
            scale: f32s(&format!("{name}_static_scale"))[0],
            zero: i32s(&format!("{name}_static_zero")) as i8,
        };
        for (scheme, params, want) in
            [(dynamic, None, f32s(&format!("{name}_dynamic"))), (stat, Some(p), f32s(&format!("{name}_static")))]
        {
            let got =
                quantize::model::act_linear::fake_quant_as(ActRuntime::CompressedTensors, &scheme, params, &x, width);
            for (k, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    g.to_bits() == w.to_bits(),
                    "{scheme} row {} col {}: x {} -> {g}, compressed-tensors {w}",
                    k / width,
                    k % width,
                    x[k]
                );
            }
            let vllm = quantize::model::act_linear::fake_quant_as(ActRuntime::Vllm, &scheme, params, &x, width);
            differs_from_vllm += vllm.iter().zip(&want).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
        }
    }
    // The divisors differ (127 against 127.5): many INT8 codes move.
    assert!(differs_from_vllm > 100, "{differs_from_vllm}");

    // vLLM, from its kernels: INT8 per token q = rne(x * (127 / amax)) saturated, scale
    // amax / 127; FP8 per token scale max(amax / 448, 1 / (448 * 512)), static x * (1 / s).
    let row: Vec<f32> = (0..64).map(|i| ((i * 37 % 64) as f32 - 31.5) * 0.173).collect();
    let amax = row.iter().fold(0f32, |a, v| a.max(v.abs()));
    let int =
        quantize::model::act_linear::fake_quant_as(ActRuntime::Vllm, &ActScheme::int8(true, true), None, &row, 64);
    for (x, g) in row.iter().zip(&int) {
        assert_eq!(*g, (x * (127.0 / amax)).round_ties_even().clamp(-128.0, 127.0) * (amax / 127.0));
    }
    let zero =
        quantize::model::act_linear::fake_quant_as(ActRuntime::Vllm, &ActScheme::int8(true, true), None, &[0.0; 8], 8);
    assert_eq!(zero, vec![0.0; 8]);
    let tiny = [1e-30f32; 4];
    let fp8 = quantize::model::act_linear::fake_quant_as(ActRuntime::Vllm, &ActScheme::fp8_e4m3(true), None, &tiny, 4);
    assert_eq!(fp8, vec![0.0; 4], "the smallest scale 1/(448·512) flushes 1e-30 to zero");
}
