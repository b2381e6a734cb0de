//! On-disk formats: bytes derived by hand from the published packing rules (AutoGPTQ
//! `QuantLinear.pack`, compressed-tensors `pack_to_int32`), round trips through real
//! checkpoint directories, contradictions and unstorable schemes.

use quantize::format::{NumberFormat, QuantScheme, QuantizedTensor};
use quantize::io::checkpoint::{read_quantized_checkpoint, write_quantized_checkpoint, CheckpointFormat};
use quantize::model::linear::Linear;
use quantize::model::qlinear::QuantizedLinear;
use quantize::quant::rtn::quantize_rtn;
use rand::{Rng, SeedableRng};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

const Q: &str = "model.layers.0.self_attn.q_proj";
const DOWN: &str = "model.layers.0.mlp.down_proj";

type Spec = (String, Dtype, Vec<usize>, Vec<u8>);

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn words_bytes(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Write `model.safetensors` (or two shards + index when `sharded`) with the safetensors crate.
fn views(ts: &[Spec]) -> Vec<(String, TensorView<'_>)> {
    ts.iter().map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap())).collect()
}

fn write_safetensors(dir: &Path, tensors: &[Spec], sharded: bool, meta: Option<HashMap<String, String>>) {
    if !sharded {
        safetensors::serialize_to_file(views(tensors), meta, &dir.join("model.safetensors")).unwrap();
        return;
    }
    let (a, b) = tensors.split_at(tensors.len() / 2);
    let mut map = serde_json::Map::new();
    for (file, part) in [("model-00001-of-00002.safetensors", a), ("model-00002-of-00002.safetensors", b)] {
        safetensors::serialize_to_file(views(part), meta.clone(), &dir.join(file)).unwrap();
        part.iter().for_each(|t| drop(map.insert(t.0.clone(), json!(file))));
    }
    let index = json!({"metadata": {"total_size": 0}, "weight_map": map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
}

fn write_config(dir: &Path, quantization_config: Option<Value>) {
    let mut c =
        json!({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "vocab_size": 16});
    if let Some(q) = quantization_config {
        c["quantization_config"] = q;
    }
    std::fs::write(dir.join("config.json"), c.to_string()).unwrap();
}

/// A tiny model: F16 embedding, F32 q_proj [64, 64] + bias, BF16 down_proj [32, 96],
/// norm, unquantized lm_head, tokenizer files.
fn tiny_model(root: &Path, sharded: bool) -> (PathBuf, BTreeMap<String, Vec<f32>>) {
    let dir = root.join(if sharded { "src-sharded" } else { "src" });
    std::fs::create_dir_all(&dir).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let mut weights = BTreeMap::new();
    let mut rand_vec = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-0.5f32..0.5)).collect() };
    let q = rand_vec(64 * 64);
    let down: Vec<f32> = rand_vec(32 * 96).iter().map(|&x| half::bf16::from_f32(x).to_f32()).collect();
    let embed: Vec<f32> = rand_vec(16 * 64);
    let tensors: Vec<Spec> = vec![
        (
            "model.embed_tokens.weight".into(),
            Dtype::F16,
            vec![16, 64],
            embed.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect(),
        ),
        (format!("{Q}.weight"), Dtype::F32, vec![64, 64], f32_bytes(&q)),
        (format!("{Q}.bias"), Dtype::F32, vec![64], f32_bytes(&rand_vec(64))),
        (
            format!("{DOWN}.weight"),
            Dtype::BF16,
            vec![32, 96],
            down.iter().flat_map(|&x| half::bf16::from_f32(x).to_le_bytes()).collect(),
        ),
        ("model.norm.weight".into(), Dtype::F32, vec![64], f32_bytes(&[1.0; 64])),
        ("lm_head.weight".into(), Dtype::F32, vec![16, 64], f32_bytes(&rand_vec(16 * 64))),
    ];
    write_safetensors(&dir, &tensors, sharded, None);
    write_config(&dir, None);
    std::fs::write(dir.join("tokenizer.json"), "{\"model\": {}}").unwrap();
    std::fs::write(dir.join("generation_config.json"), "{\"do_sample\": false}").unwrap();
    weights.insert(Q.to_string(), q);
    weights.insert(DOWN.to_string(), down);
    (dir, weights)
}

/// A source model holding one linear `m` of shape [rows, cols] (zeros).
fn one_linear_model(root: &Path, rows: usize, cols: usize) -> PathBuf {
    let dir = root.join("one");
    std::fs::create_dir_all(&dir).unwrap();
    write_safetensors(
        &dir,
        &[("m.weight".into(), Dtype::F32, vec![rows, cols], f32_bytes(&vec![0.0; rows * cols]))],
        false,
        None,
    );
    write_config(&dir, None);
    dir
}

fn load(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("model.safetensors")).unwrap()
}

fn tensor<'a>(st: &'a SafeTensors<'a>, name: &str, dtype: Dtype, shape: &[usize]) -> &'a [u8] {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!((t.dtype(), t.shape()), (dtype, shape), "{name}");
    t.data()
}

fn write_one(root: &Path, q: QuantizedTensor, format: CheckpointFormat, out: &str) -> PathBuf {
    let src = one_linear_model(root, q.rows, q.cols);
    let dest = root.join(out);
    write_quantized_checkpoint(&src, &dest, &BTreeMap::from([("m".to_string(), q)]), format, &BTreeMap::new()).unwrap();
    dest
}

fn int_tensor(bits: u8, rows: usize, cols: usize, code: impl Fn(usize, usize) -> u8, scale: f32) -> QuantizedTensor {
    QuantizedTensor {
        scheme: QuantScheme::int(bits).unwrap(),
        rows,
        cols,
        codes: (0..rows * cols).map(|k| code(k / cols, k % cols)).collect(),
        scales: vec![scale; rows],
        zeros: Some(vec![1 << (bits - 1); rows]),
        g_idx: None,
        ggml: None,
    }
}

#[test]
fn gptq_int4_bytes_follow_autogptq_pack() {
    let root = tempfile::tempdir().unwrap();
    // q[o][i] = i % 16. qweight[k][o] packs inputs 8k..8k+7, LSB first: nibble j = code 8k+j,
    // so rows alternate 0x76543210 / 0xFEDCBA98 in every column.
    let dest = write_one(root.path(), int_tensor(4, 32, 32, |_, i| (i % 16) as u8, 0.25), CheckpointFormat::Gptq, "g4");
    let bytes = load(&dest);
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut qweight = vec![];
    for k in 0..4 {
        qweight.extend(std::iter::repeat_n(if k % 2 == 0 { 0x7654_3210u32 } else { 0xFEDC_BA98 }, 32));
    }
    assert_eq!(tensor(&st, "m.qweight", Dtype::I32, &[4, 32]), words_bytes(&qweight));
    // Symmetric zero 8 is stored as 8 - 1 = 7 in every nibble.
    assert_eq!(tensor(&st, "m.qzeros", Dtype::I32, &[1, 4]), words_bytes(&[0x7777_7777; 4]));
    // f16(0.25) = 0x3400, little-endian.
    assert_eq!(tensor(&st, "m.scales", Dtype::F16, &[1, 32]), [0x00u8, 0x34].repeat(32));
    assert_eq!(tensor(&st, "m.g_idx", Dtype::I32, &[32]), vec![0u8; 128]);
    assert!(st.tensor("m.weight").is_err(), "the dense weight is replaced");
    let cfg: Value = serde_json::from_slice(&std::fs::read(dest.join("config.json")).unwrap()).unwrap();
    let qc = &cfg["quantization_config"];
    assert_eq!(
        (qc["quant_method"].as_str(), qc["bits"].as_i64(), qc["group_size"].as_i64()),
        (Some("gptq"), Some(4), Some(-1))
    );
    assert_eq!(
        (qc["sym"].as_bool(), qc["desc_act"].as_bool(), qc["checkpoint_format"].as_str()),
        (Some(true), Some(false), Some("gptq"))
    );
    let qcfg: Value = serde_json::from_slice(&std::fs::read(dest.join("quantize_config.json")).unwrap()).unwrap();
    assert_eq!(qcfg["bits"], 4);
}

#[test]
fn gptq_int3_crosses_word_boundaries_as_autogptq() {
    let root = tempfile::tempdir().unwrap();
    // q[o][i] = i % 8; 3-bit codes form one stream, code i at bit 3i. Eight codes make the
    // 24-bit unit U = 0o76543210 = 0xFAC688, repeated at bits 0, 24, 48, 72:
    //   w0 = U | (U << 24)                 = 0x88FAC688
    //   w1 = (U >> 8) | ((U & 0xFFFF) << 16) = 0xC688FAC6
    //   w2 = (U >> 16) | (U << 8)          = 0xFAC688FA
    // (the same words AutoGPTQ's `i += 10 ... << 30 ... >> 2` loop produces).
    let dest = write_one(root.path(), int_tensor(3, 32, 32, |_, i| (i % 8) as u8, 0.5), CheckpointFormat::Gptq, "g3");
    let bytes = load(&dest);
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let per_row = |w: u32| std::iter::repeat_n(w, 32);
    let qweight: Vec<u32> = per_row(0x88FA_C688).chain(per_row(0xC688_FAC6)).chain(per_row(0xFAC6_88FA)).collect();
    assert_eq!(tensor(&st, "m.qweight", Dtype::I32, &[3, 32]), words_bytes(&qweight));
    // Zero 4 stored as 3 in 32 fields: stream unit 0o33333333 -> 0xDB6DB6DB, 0xB6DB6DB6, 0x6DB6DB6D.
    assert_eq!(tensor(&st, "m.qzeros", Dtype::I32, &[1, 3]), words_bytes(&[0xDB6D_B6DB, 0xB6DB_6DB6, 0x6DB6_DB6D]));
    let back = read_quantized_checkpoint(&dest).unwrap();
    assert_eq!(back.quantized["m"].codes, (0..32 * 32).map(|k| (k % 32 % 8) as u8).collect::<Vec<_>>());
}

#[test]
fn compressed_tensors_int4_odd_width_and_asymmetric_zero_points() {
    let root = tempfile::tempdir().unwrap();
    // 10 rows x 36 inputs, q[o][i] = i % 16: each row packs 8 codes per word along the input,
    // padded: 0x76543210, 0xFEDCBA98, 0x76543210, 0xFEDCBA98, then codes 32..35 -> 0x00003210.
    let mut q = int_tensor(4, 10, 36, |_, i| (i % 16) as u8, 0.125);
    q.scheme = q.scheme.asymmetric().unwrap();
    q.zeros = Some((0..10).map(|o| (o % 16 + 1) as u8).collect());
    let dest = write_one(root.path(), q, CheckpointFormat::CompressedTensors, "ct4");
    let bytes = load(&dest);
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let row = [0x7654_3210u32, 0xFEDC_BA98, 0x7654_3210, 0xFEDC_BA98, 0x0000_3210];
    assert_eq!(tensor(&st, "m.weight_packed", Dtype::I32, &[10, 5]), words_bytes(&row.repeat(10)));
    assert_eq!(
        tensor(&st, "m.weight_shape", Dtype::I64, &[2]),
        [10i64, 36].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>()
    );
    // f16(0.125) = 0x3000.
    assert_eq!(tensor(&st, "m.weight_scale", Dtype::F16, &[10, 1]), [0x00u8, 0x30].repeat(10));
    // Zero points z[o] = o + 1 packed along the output dim, 8 per word: 0x87654321, then 9, 10 -> 0xA9.
    assert_eq!(tensor(&st, "m.weight_zero_point", Dtype::I32, &[2, 1]), words_bytes(&[0x8765_4321, 0xA9]));
    let cfg: Value = serde_json::from_slice(&std::fs::read(dest.join("config.json")).unwrap()).unwrap();
    let qc = &cfg["quantization_config"];
    assert_eq!(
        (qc["quant_method"].as_str(), qc["format"].as_str()),
        (Some("compressed-tensors"), Some("pack-quantized"))
    );
    assert_eq!(qc["quantization_status"], "compressed");
    assert_eq!(qc["ignore"], json!(["lm_head"]));
    let w = &qc["config_groups"]["group_0"];
    assert_eq!(w["targets"], json!(["Linear"]));
    assert_eq!(w["weights"]["num_bits"], 4);
    assert_eq!((w["weights"]["type"].as_str(), w["weights"]["strategy"].as_str()), (Some("int"), Some("channel")));
    assert_eq!((w["weights"]["symmetric"].as_bool(), w["weights"]["dynamic"].as_bool()), (Some(false), Some(false)));
    assert!(w["input_activations"].is_null());
}

#[test]
fn compressed_tensors_int3_is_word_aligned_and_fp8_is_raw() {
    let root = tempfile::tempdir().unwrap();
    // 3 bits: 10 codes per word, top 2 bits empty. Codes i % 8 for 12 inputs:
    // word 0 = Σ_{j<10} (j % 8) << 3j = 0x08FAC688; word 1 = 2 | 3 << 3 = 0x1A.
    let dest = write_one(
        root.path(),
        int_tensor(3, 2, 12, |_, i| (i % 8) as u8, 1.0),
        CheckpointFormat::CompressedTensors,
        "ct3",
    );
    let bytes = load(&dest);
    let st = SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(
        tensor(&st, "m.weight_packed", Dtype::I32, &[2, 2]),
        words_bytes(&[0x08FA_C688, 0x1A, 0x08FA_C688, 0x1A])
    );
    assert!(st.tensor("m.weight_zero_point").is_err(), "symmetric: no zero points stored");

    // FP8 E4M3 per channel: the codes are the weight bytes; scales f32 [out, 1].
    let q = QuantizedTensor {
        scheme: QuantScheme::fp8_e4m3(),
        rows: 2,
        cols: 3,
        codes: vec![0x00, 0x38, 0xFE, 0x7E, 0x01, 0x80],
        scales: vec![0.5 / 448.0, 2.0],
        zeros: None,
        g_idx: None,
        ggml: None,
    };
    let dest = write_one(root.path(), q.clone(), CheckpointFormat::CompressedTensors, "fp8");
    let bytes = load(&dest);
    let st = SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(tensor(&st, "m.weight", Dtype::F8_E4M3, &[2, 3]), q.codes);
    assert_eq!(tensor(&st, "m.weight_scale", Dtype::F32, &[2, 1]), f32_bytes(&q.scales));
    let cfg: Value = serde_json::from_slice(&std::fs::read(dest.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["quantization_config"]["format"], "float-quantized");
    assert_eq!(cfg["quantization_config"]["config_groups"]["group_0"]["weights"]["type"], "float");
    let back = read_quantized_checkpoint(&dest).unwrap();
    assert_eq!(back.quantized["m"], q);
    // 0x38 is 1.0 in E4M3 (exponent 7 = bias, mantissa 0): row 0, col 1 -> scale[0] · 1.0.
    assert_eq!(back.quantized["m"].dequantize()[1], 0.5 / 448.0);
}

fn schemes_for(format: CheckpointFormat) -> Vec<(QuantScheme, bool)> {
    let mut v = vec![];
    for bits in [2u8, 3, 4, 8] {
        let s = QuantScheme::int(bits).unwrap();
        v.extend([
            (s, false),
            (s.group(32).unwrap(), false),
            (s.group(32).unwrap().asymmetric().unwrap(), false),
            (s.group(32).unwrap(), true),
        ]);
        if format == CheckpointFormat::CompressedTensors {
            v.extend([(s.per_tensor(), false), (s.asymmetric().unwrap(), false), (s.group(40).unwrap(), false)]);
        }
    }
    if format == CheckpointFormat::CompressedTensors {
        v.extend([
            (QuantScheme::fp8_e4m3(), false),
            (QuantScheme::fp8_e4m3().per_tensor(), false),
            (QuantScheme::fp8_e5m2(), false),
        ]);
    } else {
        v.push((QuantScheme::int(4).unwrap().per_tensor(), false)); // expanded to per-channel
    }
    v
}

#[test]
fn quantize_write_read_round_trip_is_bit_identical() {
    let root = tempfile::tempdir().unwrap();
    let (src, weights) = tiny_model(root.path(), false);
    let src_bytes = load(&src);
    let src_st = SafeTensors::deserialize(&src_bytes).unwrap();
    let mut n = 0;
    for format in [CheckpointFormat::Gptq, CheckpointFormat::CompressedTensors] {
        for (scheme, act_order) in schemes_for(format) {
            let mut quantized = BTreeMap::new();
            for (name, w) in &weights {
                let cols = w.len() / if name == Q { 64 } else { 32 };
                let mut q = quantize_rtn(name, w, w.len() / cols, cols, scheme, None).unwrap();
                if act_order {
                    let groups = scheme.groups_per_row(cols) as u32;
                    q.g_idx = Some((0..cols).map(|c| ((c * 7 + 3) as u32) % groups).collect());
                }
                quantized.insert(name.clone(), q);
            }
            n += 1;
            let dest = root.path().join(format!("out{n}"));
            let meta = BTreeMap::from([("scheme".to_string(), scheme.to_string())]);
            write_quantized_checkpoint(&src, &dest, &quantized, format, &meta)
                .unwrap_or_else(|e| panic!("{format} {scheme}: {e}"));
            let back = read_quantized_checkpoint(&dest).unwrap_or_else(|e| panic!("{format} {scheme}: {e}"));
            assert_eq!(back.format, format);
            assert_eq!(back.metadata.get("scheme"), Some(&scheme.to_string()));
            assert_eq!(back.metadata.get("format").map(String::as_str), Some("pt"));
            for (name, q) in &quantized {
                let r = &back.quantized[name];
                assert_eq!(r.codes, q.codes, "{format} {scheme} {name}");
                assert_eq!(r.dequantize(), q.dequantize(), "{format} {scheme} {name}");
                let x: Vec<f32> = (0..3 * q.cols).map(|i| (i as f32 * 0.37).sin()).collect();
                let (mut y1, mut y2) = (vec![0.0; 3 * q.rows], vec![0.0; 3 * q.rows]);
                QuantizedLinear::new(name, q).unwrap().forward(&x, 3, &mut y1);
                QuantizedLinear::new(name, r).unwrap().forward(&x, 3, &mut y2);
                assert_eq!(y1, y2, "{format} {scheme} {name}: forward after reload");
            }
            // Everything else is copied through: same dtype, shape and bytes.
            let out_bytes = load(&dest);
            let out = SafeTensors::deserialize(&out_bytes).unwrap();
            for name in ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight", &format!("{Q}.bias")] {
                let (a, b) = (src_st.tensor(name).unwrap(), out.tensor(name).unwrap());
                assert_eq!((a.dtype(), a.shape(), a.data()), (b.dtype(), b.shape(), b.data()), "{name}");
            }
            let mut dense = back.dense_names();
            dense.sort();
            assert_eq!(
                dense,
                vec!["lm_head.weight", "model.embed_tokens.weight", format!("{Q}.bias").as_str(), "model.norm.weight"]
            );
            for f in ["tokenizer.json", "generation_config.json"] {
                assert_eq!(std::fs::read(src.join(f)).unwrap(), std::fs::read(dest.join(f)).unwrap());
            }
            if n == 1 {
                // Deterministic bytes: a second write is identical, file by file.
                let again = root.path().join("again");
                write_quantized_checkpoint(&src, &again, &quantized, format, &meta).unwrap();
                for f in ["model.safetensors", "config.json", "quantize_config.json"] {
                    assert_eq!(std::fs::read(dest.join(f)).unwrap(), std::fs::read(again.join(f)).unwrap(), "{f}");
                }
            }
        }
    }
}

#[test]
fn sharded_source_is_read_and_gptq_skips_unquantized_linears() {
    let root = tempfile::tempdir().unwrap();
    let (src, weights) = tiny_model(root.path(), true);
    let w = &weights[Q];
    let q = quantize_rtn(Q, w, 64, 64, QuantScheme::int(4).unwrap().group(32).unwrap(), None).unwrap();
    let dest = root.path().join("out");
    write_quantized_checkpoint(
        &src,
        &dest,
        &BTreeMap::from([(Q.to_string(), q.clone())]),
        CheckpointFormat::Gptq,
        &BTreeMap::new(),
    )
    .unwrap();
    let back = read_quantized_checkpoint(&dest).unwrap();
    assert_eq!(back.quantized[Q], q);
    assert!(back.store.contains(&format!("{DOWN}.weight")), "unquantized down_proj copied");
    let cfg: Value = serde_json::from_slice(&std::fs::read(dest.join("config.json")).unwrap()).unwrap();
    // GPTQModel "dynamic" skips: the unquantized linears, as anchored, escaped regexes.
    let keys: Vec<String> = cfg["quantization_config"]["dynamic"].as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys, vec!["-:^lm_head$".to_string(), r"-:^model\.layers\.0\.mlp\.down_proj$".to_string()]);
}

fn rewrite_config(dir: &Path, f: impl FnOnce(&mut Value)) {
    let p = dir.join("config.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, v.to_string()).unwrap();
}

#[test]
fn config_contradicting_tensors_is_a_clear_error() {
    let root = tempfile::tempdir().unwrap();
    let (src, weights) = tiny_model(root.path(), false);
    let quantized = |scheme: QuantScheme| -> BTreeMap<String, QuantizedTensor> {
        weights
            .iter()
            .map(|(n, w)| {
                (
                    n.clone(),
                    quantize_rtn(
                        n,
                        w,
                        w.len() / if n == Q { 64 } else { 96 },
                        if n == Q { 64 } else { 96 },
                        scheme,
                        None,
                    )
                    .unwrap(),
                )
            })
            .collect()
    };
    let g = root.path().join("gptq");
    write_quantized_checkpoint(
        &src,
        &g,
        &quantized(QuantScheme::int(4).unwrap().group(32).unwrap()),
        CheckpointFormat::Gptq,
        &BTreeMap::new(),
    )
    .unwrap();
    rewrite_config(&g, |v| v["quantization_config"]["bits"] = json!(8));
    let e = read_quantized_checkpoint(&g).err().expect("bits contradiction").to_string();
    assert!(e.contains("qweight") && e.contains("bits = 8") && e.contains("model.layers.0"), "{e}");
    rewrite_config(&g, |v| {
        v["quantization_config"]["bits"] = json!(4);
        v["quantization_config"]["group_size"] = json!(16);
    });
    let e = read_quantized_checkpoint(&g).err().expect("group contradiction").to_string();
    assert!(e.contains("scales") && e.contains("group_size = 16"), "{e}");
    rewrite_config(&g, |v| {
        v["quantization_config"]["group_size"] = json!(32);
        v["quantization_config"]["sym"] = json!(false);
        v["quantization_config"]["bits"] = json!(4);
    });
    assert!(read_quantized_checkpoint(&g).is_ok(), "sym=false with zeros of 8 is a valid asymmetric reading");

    let c = root.path().join("ct");
    write_quantized_checkpoint(
        &src,
        &c,
        &quantized(QuantScheme::int(8).unwrap().group(32).unwrap()),
        CheckpointFormat::CompressedTensors,
        &BTreeMap::new(),
    )
    .unwrap();
    rewrite_config(&c, |v| v["quantization_config"]["config_groups"]["group_0"]["weights"]["group_size"] = json!(64));
    let e = read_quantized_checkpoint(&c).err().expect("ct group contradiction").to_string();
    assert!(e.contains("weight_scale") && e.contains("g64"), "{e}");
    rewrite_config(&c, |v| {
        v["quantization_config"]["config_groups"]["group_0"]["weights"]["group_size"] = json!(32);
        v["quantization_config"]["config_groups"]["group_0"]["weights"]["num_bits"] = json!(4);
    });
    let e = read_quantized_checkpoint(&c).err().expect("ct bits contradiction").to_string();
    assert!(e.contains("weight_packed") && e.contains("num_bits = 4"), "{e}");
    rewrite_config(&c, |v| {
        v["quantization_config"]["config_groups"]["group_0"]["weights"]["num_bits"] = json!(8);
        v["quantization_config"]["ignore"] = json!(["lm_head", "re:.*down_proj$"]);
    });
    let e = read_quantized_checkpoint(&c).err().expect("ignored but quantized").to_string();
    assert!(e.contains(DOWN) && e.contains("ignore"), "{e}");
}

#[test]
fn unstorable_scheme_is_refused_and_nothing_is_written() {
    let root = tempfile::tempdir().unwrap();
    let (src, weights) = tiny_model(root.path(), false);
    let w = &weights[Q];
    let before: Vec<_> = std::fs::read_dir(root.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    for (scheme, format, needle) in [(QuantScheme::fp8_e4m3(), CheckpointFormat::Gptq, "cannot be stored in gptq")] {
        let q = quantize_rtn(Q, w, 64, 64, scheme, None).unwrap();
        let dest = root.path().join("refused");
        let e =
            write_quantized_checkpoint(&src, &dest, &BTreeMap::from([(Q.to_string(), q)]), format, &BTreeMap::new())
                .unwrap_err();
        assert!(e.to_string().contains(needle) && e.to_string().contains(Q), "{e}");
        assert!(!dest.exists());
        let after: Vec<_> = std::fs::read_dir(root.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(before, after, "temporary files left behind");
    }
    // An existing output is never touched.
    let q = quantize_rtn(Q, w, 64, 64, QuantScheme::int(4).unwrap(), None).unwrap();
    let e = write_quantized_checkpoint(
        &src,
        &src,
        &BTreeMap::from([(Q.to_string(), q)]),
        CheckpointFormat::Gptq,
        &BTreeMap::new(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("already exists"), "{e}");
}

#[test]
fn reads_checkpoints_written_by_other_tools() {
    let root = tempfile::tempdir().unwrap();
    // AutoGPTQ-style: only quantize_config.json, 4-bit g32 asymmetric, f16 scales, zeros - 1.
    // in = 32, out = 8... out must fill whole qzeros words: out = 8 (8 nibbles per word).
    let gdir = root.path().join("autogptq");
    std::fs::create_dir_all(&gdir).unwrap();
    let (rows, cols) = (8usize, 32usize);
    // code(o, i) = (o + i) % 16; qweight[k][o] = Σ_j code(o, 8k+j) << 4j.
    let qweight: Vec<u32> = (0..4)
        .flat_map(|k| (0..rows).map(move |o| (0..8).map(|j| (((o + 8 * k + j) % 16) as u32) << (4 * j)).sum()))
        .collect();
    // zero(o) = o + 3 stored as o + 2: 0x98765432.
    let spec: Vec<Spec> = vec![
        ("m.qweight".into(), Dtype::I32, vec![4, rows], words_bytes(&qweight)),
        ("m.qzeros".into(), Dtype::I32, vec![1, 1], words_bytes(&[0x9876_5432])),
        ("m.scales".into(), Dtype::F16, vec![1, rows], [0x00u8, 0x34].repeat(rows)),
        ("m.g_idx".into(), Dtype::I32, vec![cols], vec![0u8; 4 * cols]),
        ("m.bias".into(), Dtype::F16, vec![rows], vec![0u8; 2 * rows]),
    ];
    write_safetensors(&gdir, &spec, false, Some(HashMap::from([("format".into(), "pt".into())])));
    write_config(&gdir, None);
    std::fs::write(gdir.join("quantize_config.json"), r#"{"bits": 4, "group_size": 32, "desc_act": false, "sym": false, "damp_percent": 0.01, "true_sequential": true, "model_name_or_path": null, "model_file_base_name": "model"}"#).unwrap();
    let back = read_quantized_checkpoint(&gdir).unwrap();
    let m = &back.quantized["m"];
    assert_eq!(
        (m.rows, m.cols, m.scheme),
        (rows, cols, QuantScheme::int(4).unwrap().group(32).unwrap().asymmetric().unwrap())
    );
    let w = m.dequantize();
    for o in 0..rows {
        for i in 0..cols {
            assert_eq!(w[o * cols + i], 0.25 * (((o + i) % 16) as f32 - (o + 3) as f32), "[{o}][{i}]");
        }
    }
    assert_eq!(back.dense_names(), vec!["m.bias"]);

    // llm-compressor-style compressed-tensors: bf16 scales, extra config keys, regex ignore,
    // W4A16 group 16 symmetric, q_signed packed as q + 8.
    let cdir = root.path().join("llmcompressor");
    std::fs::create_dir_all(&cdir).unwrap();
    let (rows, cols) = (2usize, 16usize);
    // code(o, i) = (i + o) % 16 -> 2 words per row.
    let packed: Vec<u32> = (0..rows)
        .flat_map(|o| (0..2).map(move |k| (0..8).map(|j| (((o + 8 * k + j) % 16) as u32) << (4 * j)).sum()))
        .collect();
    let spec: Vec<Spec> = vec![
        ("model.layers.0.mlp.up_proj.weight_packed".into(), Dtype::I32, vec![rows, 2], words_bytes(&packed)),
        ("model.layers.0.mlp.up_proj.weight_scale".into(), Dtype::BF16, vec![rows, 1], [0x80u8, 0x3E].repeat(rows)), // bf16 0.25
        (
            "model.layers.0.mlp.up_proj.weight_shape".into(),
            Dtype::I64,
            vec![2],
            [2i64, 16].iter().flat_map(|v| v.to_le_bytes()).collect(),
        ),
        ("lm_head.weight".into(), Dtype::BF16, vec![4, 16], vec![0u8; 128]),
    ];
    write_safetensors(&cdir, &spec, false, None);
    write_config(
        &cdir,
        Some(json!({
            "quant_method": "compressed-tensors", "format": "pack-quantized", "version": "0.9.1",
            "config_groups": {"group_0": {"targets": ["Linear"], "input_activations": null, "output_activations": null,
                "weights": {"num_bits": 4, "type": "int", "symmetric": true, "strategy": "group", "group_size": 16,
                    "dynamic": false, "actorder": null, "observer": "mse", "observer_kwargs": {}, "block_structure": null}}},
            "ignore": ["re:.*lm_head"], "kv_cache_scheme": null, "sparsity_config": {}, "quantization_status": "compressed"
        })),
    );
    let back = read_quantized_checkpoint(&cdir).unwrap();
    let m = &back.quantized["model.layers.0.mlp.up_proj"];
    let w = m.dequantize();
    for o in 0..rows {
        for i in 0..cols {
            assert_eq!(w[o * cols + i], 0.25 * (((o + i) % 16) as f32 - 8.0));
        }
    }
    assert_eq!(m.scheme.format, NumberFormat::Int { bits: 4 });
    assert_eq!(back.dense_names(), vec!["lm_head.weight"]);
}
