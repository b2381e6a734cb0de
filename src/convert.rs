//! GGUF (llama architecture) -> Hugging Face LLaMA directory.
//!
//! Writes, atomically (nothing appears unless everything succeeded, and an
//! existing output is never touched): `model.safetensors` (F32, F16 or BF16,
//! HF tensor names), `config.json` (`LlamaForCausalLM`), `tokenizer.json`,
//! `tokenizer_config.json` and `generation_config.json`.
//!
//! Names follow llama.cpp's `gguf-py/gguf/tensor_mapping.py` in reverse
//! (`blk.N.attn_q.weight` -> `model.layers.N.self_attn.q_proj.weight`, ...).
//! llama.cpp's converter permutes the rows of q_proj and k_proj from HF's
//! rotate-half RoPE layout into an interleaved one:
//! `w.reshape(n_head, 2, head_dim / 2, cols).swapaxes(1, 2).reshape(rows, cols)`,
//! i.e. GGUF row `h*hd + 2*i + j` = HF row `h*hd + j*hd/2 + i`. [`unpermute_rows`]
//! applies the inverse (K uses the KV head count).

use crate::error::{Error, Result};
use crate::format::ggml::GgmlType;
use crate::io::atomic::AtomicDir;
use crate::io::gguf::{GgufFile, TensorInfo};
use crate::io::safetensors::{sort_crate_order, write_file, HeaderLayout, RawTensor};
use crate::io::tokenizer_build::GgufTokenizer;
use half::{bf16, f16};
use rayon::prelude::*;
use safetensors::Dtype;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Floating-point type of the written weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutDType {
    F32,
    F16,
    BF16,
}

impl OutDType {
    /// `torch_dtype` in config.json.
    pub fn torch_name(self) -> &'static str {
        match self {
            OutDType::F32 => "float32",
            OutDType::F16 => "float16",
            OutDType::BF16 => "bfloat16",
        }
    }
    fn safetensors(self) -> Dtype {
        match self {
            OutDType::F32 => Dtype::F32,
            OutDType::F16 => Dtype::F16,
            OutDType::BF16 => Dtype::BF16,
        }
    }
    /// Little-endian bytes of `x` in this type (f16/bf16 round to nearest even).
    fn encode(self, x: &[f32]) -> Vec<u8> {
        const CHUNK: usize = 1 << 16;
        let size = match self {
            OutDType::F32 => 4,
            _ => 2,
        };
        let mut out = vec![0u8; x.len() * size];
        out.par_chunks_mut(CHUNK * size).zip(x.par_chunks(CHUNK)).for_each(|(o, x)| {
            for (o, &v) in o.chunks_exact_mut(size).zip(x) {
                match self {
                    OutDType::F32 => o.copy_from_slice(&v.to_le_bytes()),
                    OutDType::F16 => o.copy_from_slice(&f16::from_f32(v).to_le_bytes()),
                    OutDType::BF16 => o.copy_from_slice(&bf16::from_f32(v).to_le_bytes()),
                }
            }
        });
        out
    }
}

impl std::str::FromStr for OutDType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(OutDType::F32),
            "f16" | "float16" => Ok(OutDType::F16),
            "bf16" | "bfloat16" => Ok(OutDType::BF16),
            _ => Err(Error::option("dtype", format!("{s:?}: expected f32, f16 or bf16"))),
        }
    }
}

/// What [`convert_gguf`] wrote.
#[derive(Clone, Debug)]
pub struct ConvertReport {
    pub output: PathBuf,
    pub tensors: usize,
    pub params: u64,
    pub seconds: f64,
    pub dtype: OutDType,
}

/// Hyper-parameters read from `{arch}.*` metadata.
#[derive(Clone, Debug)]
pub struct LlamaHparams {
    pub n_layers: usize,
    pub hidden: usize,
    pub ffn: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub rms_eps: f64,
    pub rope_theta: f64,
    pub context: u64,
}

impl LlamaHparams {
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let arch = g.get_str("general.architecture")?;
        if arch != "llama" {
            return Err(Error::format(
                g.path(),
                format!("general.architecture = {arch:?} is not supported (only \"llama\")"),
            ));
        }
        let u = |k: &str| g.get_u64(&format!("llama.{k}")).map(|v| v as usize);
        let n_heads = u("attention.head_count")?;
        let hidden = u("embedding_length")?;
        if n_heads == 0 || hidden % n_heads != 0 {
            return Err(Error::format(
                g.path(),
                format!("{n_heads} attention heads do not divide hidden size {hidden}"),
            ));
        }
        let n_kv_heads =
            g.metadata("llama.attention.head_count_kv").map_or(Ok(n_heads), |_| u("attention.head_count_kv"))?;
        if n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
            return Err(Error::format(g.path(), format!("{n_kv_heads} KV heads do not divide {n_heads} heads")));
        }
        let head_dim =
            g.metadata("llama.attention.key_length").map_or(Ok(hidden / n_heads), |_| u("attention.key_length"))?;
        Ok(Self {
            n_layers: u("block_count")?,
            hidden,
            ffn: u("feed_forward_length")?,
            n_heads,
            n_kv_heads,
            head_dim,
            rms_eps: g.get_f64("llama.attention.layer_norm_rms_epsilon")?,
            rope_theta: g
                .metadata("llama.rope.freq_base")
                .map_or(Ok(10000.0), |_| g.get_f64("llama.rope.freq_base"))?,
            context: g.get_u64("llama.context_length")?,
        })
    }
}

/// How one GGUF tensor becomes one HF tensor.
struct Mapped<'a> {
    info: &'a TensorInfo,
    hf_name: String,
    /// `Some(heads)` for q_proj / k_proj: undo llama.cpp's RoPE row permutation.
    unpermute_heads: Option<usize>,
}

/// HF name of a GGUF llama tensor, and the head count to unpermute with.
fn map_name(name: &str, hp: &LlamaHparams) -> Option<(String, Option<usize>)> {
    let fixed = match name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some((f.to_string(), None));
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok().filter(|&l| l < hp.n_layers)?;
    let (part, kind) = rest.rsplit_once('.').filter(|(_, k)| *k == "weight" || *k == "bias")?;
    let (hf, heads) = match part {
        "attn_q" => ("self_attn.q_proj", Some(hp.n_heads)),
        "attn_k" => ("self_attn.k_proj", Some(hp.n_kv_heads)),
        "attn_v" => ("self_attn.v_proj", None),
        "attn_output" => ("self_attn.o_proj", None),
        "ffn_gate" => ("mlp.gate_proj", None),
        "ffn_up" => ("mlp.up_proj", None),
        "ffn_down" => ("mlp.down_proj", None),
        "attn_norm" if kind == "weight" => ("input_layernorm", None),
        "ffn_norm" if kind == "weight" => ("post_attention_layernorm", None),
        _ => return None,
    };
    Some((format!("model.layers.{layer}.{hf}.{kind}"), heads))
}

/// The ggml type of every linear of a llama GGUF by Hugging Face module name
/// (`model.layers.0.self_attn.q_proj`, `lm_head`: the output, or the tied embedding).
pub fn linear_types(g: &GgufFile) -> Result<BTreeMap<String, GgmlType>> {
    let hp = LlamaHparams::from_gguf(g)?;
    let mut out = BTreeMap::new();
    for info in g.tensors() {
        if let Some((hf, _)) = map_name(&info.name, &hp) {
            if let Some(m) = hf.strip_suffix(".weight").filter(|m| m.ends_with("_proj") || *m == "lm_head") {
                out.insert(m.to_string(), info.ggml_type);
            }
        }
    }
    if !out.contains_key("lm_head") {
        if let Some(e) = g.tensor("token_embd.weight") {
            out.insert("lm_head".to_string(), e.ggml_type);
        }
    }
    Ok(out)
}

/// Expected HF shape of a mapped weight (biases: the first dim).
fn expected_shape(hf: &str, hp: &LlamaHparams, vocab: usize) -> Option<Vec<usize>> {
    let (q, kv) = (hp.n_heads * hp.head_dim, hp.n_kv_heads * hp.head_dim);
    let suffix = hf.rsplit('.').nth(1)?;
    let s = match suffix {
        "embed_tokens" | "lm_head" => vec![vocab, hp.hidden],
        "norm" | "input_layernorm" | "post_attention_layernorm" => vec![hp.hidden],
        "q_proj" => vec![q, hp.hidden],
        "k_proj" | "v_proj" => vec![kv, hp.hidden],
        "o_proj" => vec![hp.hidden, q],
        "gate_proj" | "up_proj" => vec![hp.ffn, hp.hidden],
        "down_proj" => vec![hp.hidden, hp.ffn],
        _ => return None,
    };
    Some(if hf.ends_with(".bias") { s[..1].to_vec() } else { s })
}

/// Undo llama.cpp's RoPE permutation of `rows` rows of `cols` values, in place:
/// per head of `rows / n_heads` rows, HF row `j*half + i` = GGUF row `2*i + j`.
pub fn unpermute_rows(w: &mut [f32], rows: usize, cols: usize, n_heads: usize) -> Result<()> {
    if n_heads == 0 || rows % (2 * n_heads) != 0 || w.len() != rows * cols {
        return Err(Error::Other(format!(
            "cannot unpermute {rows}x{cols} ({} values) over {n_heads} heads: rows must be a multiple of 2*heads",
            w.len()
        )));
    }
    let hd = rows / n_heads;
    let half = hd / 2;
    let mut head = vec![0f32; hd * cols];
    for h in w.chunks_exact_mut(hd * cols) {
        head.copy_from_slice(h);
        for i in 0..half {
            for j in 0..2 {
                let (src, dst) = (2 * i + j, j * half + i);
                h[dst * cols..(dst + 1) * cols].copy_from_slice(&head[src * cols..(src + 1) * cols]);
            }
        }
    }
    Ok(())
}

/// One converted tensor, already in the output dtype.
struct Encoded {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

/// Convert a llama-architecture GGUF file into a Hugging Face LLaMA directory at
/// `out` (which must not exist). Weights are dequantized to f32, then written as
/// `dtype`; only one tensor is held in f32 at a time.
pub fn convert_gguf(gguf: &Path, out: &Path, dtype: OutDType) -> Result<ConvertReport> {
    let t0 = Instant::now();
    if out.exists() {
        return Err(Error::OutputExists { path: out.to_path_buf() });
    }
    let g = GgufFile::open(gguf)?;
    let hp = LlamaHparams::from_gguf(&g)?;
    let tok = GgufTokenizer::from_gguf(&g)?;

    // Map and check every tensor before doing any work.
    let embd =
        g.tensor("token_embd.weight").ok_or_else(|| Error::format(gguf, "tensor token_embd.weight is missing"))?;
    let vocab = embd.shape()[0];
    let mut mapped = Vec::with_capacity(g.tensors().len());
    for info in g.tensors() {
        let (hf_name, unpermute_heads) = map_name(&info.name, &hp).ok_or_else(|| {
            Error::tensor(&info.name, format!("{}: no Hugging Face LLaMA equivalent is known", gguf.display()))
        })?;
        if let Some(want) = expected_shape(&hf_name, &hp, vocab) {
            if info.shape() != want {
                return Err(Error::tensor(
                    &info.name,
                    format!(
                        "shape {:?} (GGUF dims {:?}), expected {want:?} from the metadata",
                        info.shape(),
                        info.dims
                    ),
                ));
            }
        }
        mapped.push(Mapped { info, hf_name, unpermute_heads });
    }
    let names: HashMap<&str, ()> = mapped.iter().map(|m| (m.hf_name.as_str(), ())).collect();
    let per_layer = [
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
        "input_layernorm",
        "post_attention_layernorm",
    ];
    for l in 0..hp.n_layers {
        for p in per_layer {
            let n = format!("model.layers.{l}.{p}.weight");
            if !names.contains_key(n.as_str()) {
                return Err(Error::format(gguf, format!("no GGUF tensor for {n}")));
            }
        }
    }
    if !names.contains_key("model.norm.weight") {
        return Err(Error::format(gguf, "tensor output_norm.weight is missing"));
    }
    let tied = !names.contains_key("lm_head.weight");

    let dir = AtomicDir::create(out)?;
    let mut encoded: Vec<(String, Encoded)> = Vec::with_capacity(mapped.len());
    let mut params = 0u64;
    for m in &mapped {
        let mut w = g.dequantize(m.info)?;
        let shape = m.info.shape();
        if let Some(heads) = m.unpermute_heads {
            let cols = shape[1..].iter().product();
            unpermute_rows(&mut w, shape[0], cols, heads).map_err(|e| Error::tensor(&m.info.name, e.to_string()))?;
        }
        if let Some(i) = w.iter().position(|v| !v.is_finite()) {
            return Err(Error::tensor(&m.info.name, format!("element {i} is {} after dequantization", w[i])));
        }
        params += w.len() as u64;
        let bytes = dtype.encode(&w);
        encoded.push((m.hf_name.clone(), Encoded { dtype: dtype.safetensors(), shape, bytes }));
    }

    let source = gguf.file_name().map_or_else(|| gguf.display().to_string(), |n| n.to_string_lossy().into_owned());
    let meta = BTreeMap::from([
        ("format".to_string(), "pt".to_string()),
        ("source_file".to_string(), source),
        ("source_bytes".to_string(), g.file_len().to_string()),
        ("source_format".to_string(), format!("gguf v{}", g.version())),
        ("converted_by".to_string(), format!("quantize {} convert", env!("CARGO_PKG_VERSION"))),
    ]);
    let mut tensors: Vec<RawTensor<'_>> =
        encoded.iter().map(|(name, e)| RawTensor { name, dtype: e.dtype, shape: &e.shape, bytes: &e.bytes }).collect();
    sort_crate_order(&mut tensors);
    write_file(&dir.path("model.safetensors"), &tensors, &meta, HeaderLayout::DataOrder)?;
    drop(tensors);
    let n_tensors = encoded.len();
    drop(encoded);

    let config = json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hp.hidden,
        "intermediate_size": hp.ffn,
        "num_hidden_layers": hp.n_layers,
        "num_attention_heads": hp.n_heads,
        "num_key_value_heads": hp.n_kv_heads,
        "head_dim": hp.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": hp.rms_eps,
        "rope_theta": hp.rope_theta,
        "rope_scaling": null,
        "max_position_embeddings": hp.context,
        "vocab_size": vocab,
        "bos_token_id": tok.bos,
        "eos_token_id": tok.eos,
        "pad_token_id": tok.pad,
        "tie_word_embeddings": tied,
        "attention_bias": names.contains_key("model.layers.0.self_attn.q_proj.bias"),
        "mlp_bias": names.contains_key("model.layers.0.mlp.up_proj.bias"),
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "use_cache": true,
        "torch_dtype": dtype.torch_name(),
    });
    let generation = json!({
        "_from_model_config": true,
        "bos_token_id": tok.bos,
        "eos_token_id": tok.eos,
        "pad_token_id": tok.pad,
    });
    let write_json = |file: &str, v: &serde_json::Value| {
        let s = serde_json::to_string_pretty(v).map_err(|e| Error::format(dir.path(file), e.to_string()))?;
        dir.write(file, s.as_bytes())
    };
    write_json("config.json", &config)?;
    write_json("generation_config.json", &generation)?;
    write_json("tokenizer_config.json", &tok.tokenizer_config_json(Some(hp.context)))?;
    write_json("tokenizer.json", &tok.tokenizer_json())?;
    let output = dir.commit()?;
    Ok(ConvertReport { output, tensors: n_tensors, params, seconds: t0.elapsed().as_secs_f64(), dtype })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // 2 heads of head_dim 4, 3 columns; HF value = row * 10 + col.
        let (heads, hd, cols) = (2, 4, 3);
        let rows = heads * hd;
        let hf: Vec<f32> = (0..rows * cols).map(|i| ((i / cols) * 10 + i % cols) as f32).collect();
        // llama.cpp: reshape(heads, 2, hd/2, cols).swapaxes(1, 2): GGUF (h, i, j) <- HF (h, j, i).
        let mut gguf = vec![0f32; rows * cols];
        for h in 0..heads {
            for i in 0..hd / 2 {
                for j in 0..2 {
                    let (g, s) = (h * hd + i * 2 + j, h * hd + j * hd / 2 + i);
                    gguf[g * cols..(g + 1) * cols].copy_from_slice(&hf[s * cols..(s + 1) * cols]);
                }
            }
        }
        // GGUF rows of head 0 are HF rows 0, 2, 1, 3.
        assert_eq!(&gguf[..4 * cols], &[0., 1., 2., 20., 21., 22., 10., 11., 12., 30., 31., 32.]);
        unpermute_rows(&mut gguf, rows, cols, heads).unwrap();
        assert_eq!(gguf, hf);
        assert!(unpermute_rows(&mut [0.0; 6], 3, 2, 1).is_err());
    }

    #[test]
    fn dtype_parsing_and_encoding() {
        assert_eq!("BF16".parse::<OutDType>().unwrap(), OutDType::BF16);
        assert!("int8".parse::<OutDType>().unwrap_err().to_string().contains("int8"));
        assert_eq!(OutDType::F16.encode(&[1.0, -2.0]), [0x00, 0x3C, 0x00, 0xC0]);
        assert_eq!(OutDType::BF16.encode(&[1.0]), [0x80, 0x3F]);
    }
}
