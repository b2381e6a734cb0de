//! Load any model directory this tool reads: dense (f32/f16/bf16 safetensors) or a
//! quantized checkpoint (gptq, compressed-tensors), with every quantized linear kept
//! packed in memory ([`QuantizedLinear`]) and everything else read from the mmap.

use super::linear::Linear;
use super::llama::{dense_from_store, LlamaModel};
use super::qlinear::QuantizedLinear;
use super::LlamaConfig;
use crate::error::{Error, Result};
use crate::format::activation::ActRuntime;
use crate::format::ggml::GgmlType;
use crate::format::QuantizedTensor;
use crate::io::checkpoint::{checkpoint_activations, open_quantized_checkpoint};
use crate::io::safetensors::SafetensorsStore;
use crate::model::act_linear::{ActQuantLinear, GgmlInput, GgmlInputLinear};
use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::path::Path;

/// What was loaded, for reports.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct LoadInfo {
    /// `gptq`, `compressed-tensors`, or `None` for a dense model.
    pub format: Option<String>,
    /// Stored bits of the quantized linears / their weight count.
    pub bits_per_weight: Option<f64>,
    pub quantized_linears: usize,
    /// Bytes of the model's files on disk (safetensors shards).
    pub bytes_on_disk: u64,
    /// Bytes of weights resident after loading.
    pub resident_weight_bytes: usize,
    /// Activation quantization of the quantized linears (e.g. `int8-sym-static-tensor`).
    pub activations: Option<String>,
    /// The method that made the checkpoint (`gptq`, `awq+gptq`...), when this tool wrote it
    /// (its `quantize_method` metadata).
    pub method: Option<String>,
    /// `int8` when the quantized CPU linears take int8-rounded inputs (`--dot int8`).
    pub dot: Option<String>,
}

/// True when `dir/config.json` carries a `quantization_config`.
pub fn is_quantized_dir(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("config.json"))
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .is_some_and(|v| v.get("quantization_config").is_some())
}

fn safetensors_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// Make the linear of a quantized tensor (the CPU packed linear by default).
pub type QuantizedFactory<'a> = dyn Fn(&str, &QuantizedTensor) -> Result<Box<dyn Linear>> + 'a;

pub fn cpu_quantized_linear(name: &str, q: &QuantizedTensor) -> Result<Box<dyn Linear>> {
    Ok(Box::new(QuantizedLinear::new(name, q)?))
}

/// [`cpu_quantized_linear`] taking int8-rounded inputs where its layout allows
/// ([`QuantizedLinear::with_int8_dot`]; `--dot int8`).
pub fn cpu_quantized_linear_int8_dot(name: &str, q: &QuantizedTensor) -> Result<Box<dyn Linear>> {
    Ok(Box::new(QuantizedLinear::new(name, q)?.with_int8_dot()))
}

/// Load `dir`, dense or quantized; quantized linears go through `make_quantized`.
pub fn load_model_with(dir: &Path, make_quantized: &QuantizedFactory) -> Result<(LlamaModel, LoadInfo)> {
    load_model_as(dir, make_quantized, ActRuntime::default())
}

/// [`load_model_with`], W8A8 activations rounded as runtime `rt` rounds them.
pub fn load_model_as(dir: &Path, make_quantized: &QuantizedFactory, rt: ActRuntime) -> Result<(LlamaModel, LoadInfo)> {
    let cfg = LlamaConfig::from_file(&dir.join("config.json"))?;
    let mut info = LoadInfo { bytes_on_disk: safetensors_bytes(dir), ..Default::default() };
    let model = if is_quantized_dir(dir) {
        let ckpt = open_quantized_checkpoint(dir)?;
        info.format = Some(ckpt.format.as_str().to_string());
        info.method = ckpt.store.user_metadata().get("quantize_method").cloned();
        info.quantized_linears = ckpt.module_names().count();
        // Input quantization as the config says: each such linear is wrapped.
        let acts = checkpoint_activations(&ckpt)?;
        info.activations = acts.values().next().map(|(s, _)| s.to_string());
        // Each module is decoded, packed and its unpacked codes freed before the next.
        let pending: RefCell<BTreeSet<&str>> = RefCell::new(ckpt.module_names().collect());
        let (bits, weights) = (Cell::new(0u64), Cell::new(0u64));
        let store = &ckpt.store;
        let model = LlamaModel::load_with(cfg, store, &|name, o, i| {
            if !pending.borrow_mut().remove(name) {
                return dense_from_store(store, name, o, i);
            }
            let q = ckpt.decode(name)?;
            if (q.rows, q.cols) != (o, i) {
                return Err(Error::format(
                    dir,
                    format!(
                        "quantized linear {name} is {} x {} but config.json implies {o} x {i} \
                         (check hidden_size, intermediate_size, the head counts and head_dim)",
                        q.rows, q.cols
                    ),
                ));
            }
            bits.set(bits.get() + q.storage_bits());
            weights.set(weights.get() + (q.rows * q.cols) as u64);
            match acts.get(name) {
                Some(&(s, p)) => {
                    Ok(Box::new(ActQuantLinear::new(name, make_quantized(name, &q)?, s, p)?.with_runtime(rt))
                        as Box<dyn Linear>)
                }
                None => make_quantized(name, &q),
            }
        })?;
        info.bits_per_weight = (weights.get() > 0).then(|| bits.get() as f64 / weights.get() as f64);
        if let Some(name) = pending.borrow().iter().next() {
            return Err(Error::format(
                dir,
                format!("quantized linear {name} is not part of the model config.json describes (num_hidden_layers?)"),
            ));
        }
        model
    } else {
        let store = SafetensorsStore::open(dir)?;
        LlamaModel::load_with(cfg, &store, &|name, o, i| dense_from_store(&store, name, o, i))?
    };
    info.resident_weight_bytes = model.weight_bytes();
    Ok((model, info))
}

/// Load `dir` for CPU inference (a `.gguf` file through [`load_gguf`]).
pub fn load_model(dir: &Path) -> Result<(LlamaModel, LoadInfo)> {
    if crate::io::tokenizer::is_gguf(dir) {
        return load_gguf(dir);
    }
    load_model_with(dir, &cpu_quantized_linear)
}

/// Load a llama GGUF file as llama.cpp's CPU backend computes it: the weights dequantized
/// by the ggml reference loops (exact), each linear's input rounded to its weight type's
/// `vec_dot_type` ([`GgmlInput`]: Q8_0 blocks for Q4_0…Q8_0, Q8_K for the k-quants), so
/// that `eval` scores a file as `llama-perplexity` does. The file is converted into a
/// temporary f32 directory (removed once loaded): memory holds the f32 model.
pub fn load_gguf(path: &Path) -> Result<(LlamaModel, LoadInfo)> {
    let g = crate::io::gguf::GgufFile::open(path)?;
    let types = crate::convert::linear_types(&g)?;
    let tmp =
        tempfile::Builder::new().prefix("quantize-gguf-").tempdir().map_err(|e| Error::io(std::env::temp_dir(), e))?;
    let dir = tmp.path().join("model");
    crate::convert::convert_gguf(path, &dir, crate::convert::OutDType::F32)?;
    let cfg = LlamaConfig::from_file(&dir.join("config.json"))?;
    let store = SafetensorsStore::open(&dir)?;
    let wrap = |name: &str, dense: Box<dyn Linear>| -> Box<dyn Linear> {
        match types.get(name).and_then(|&t| GgmlInput::for_weights(t)) {
            Some(input) => Box::new(GgmlInputLinear::new(dense, input)),
            None => dense,
        }
    };
    let mut model =
        LlamaModel::load_with(cfg, &store, &|name, o, i| Ok(wrap(name, dense_from_store(&store, name, o, i)?)))?;
    if model.lm_head.is_none() {
        // llama.cpp multiplies by the tied embedding as it is stored, input rounded alike.
        let dense = Box::new(model.embed.clone());
        model.lm_head = Some(wrap("lm_head", dense));
    }
    let (mut bits, mut weights, mut quantized) = (0u64, 0u64, 0usize);
    for t in g.tensors().iter().filter(|t| t.dims.len() == 2 && t.name != "token_embd.weight") {
        bits += t.n_bytes() as u64 * 8;
        weights += t.n_elements() as u64;
        quantized += usize::from(!matches!(t.ggml_type, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16));
    }
    let info = LoadInfo {
        format: Some("gguf".into()),
        bits_per_weight: (weights > 0).then(|| bits as f64 / weights as f64),
        quantized_linears: quantized,
        bytes_on_disk: g.file_len(),
        resident_weight_bytes: model.weight_bytes(),
        activations: Some("llama.cpp CPU (Q8_0 / Q8_K inputs)".into()),
        method: g.get_str("quantize.method").ok().map(str::to_string),
        dot: None,
    };
    Ok((model, info))
}
