//! GGUF export: the quantized blocks the driver hands over, written as one llama.cpp
//! GGUF v3 file (`general.architecture = llama`), with the model's hyperparameters, its
//! tokenizer and chat template, norms in F32 and every linear in its ggml block type.
//!
//! Names and layout as llama.cpp's `convert_hf_to_gguf.py` writes a LLaMA: `token_embd`,
//! `blk.N.{attn_norm, attn_q, attn_k, attn_v, attn_output, ffn_norm, ffn_gate, ffn_up,
//! ffn_down}`, `output_norm`, `output` (absent when tied); the rows of `attn_q` / `attn_k`
//! permuted per head for llama.cpp's RoPE (the inverse of `convert::unpermute_rows`). Types
//! by [`Preset::tensor_type`], the embedding and an untied head by round-to-nearest on the
//! preset's grid (they have no calibrated input statistics here).

use crate::error::{Error, Result};
use crate::format::ggml::encode::encode_row;
use crate::format::ggml::preset::{Preset, TensorRole};
use crate::format::ggml::GgmlType;
use crate::format::{QuantScheme, QuantizedTensor};
use crate::io::gguf::writer::{GgufWriter, TensorEntry};
use crate::io::gguf::Value;
use crate::io::safetensors::SafetensorsStore;
use crate::io::tokenizer_build::GgufTokenizer;
use crate::model::config::Family;
use crate::model::rope::RopeScaling;
use crate::model::LlamaConfig;
use crate::pipeline::SchemePolicy;
use crate::quant::ggml::quantize_tensor;
use half::f16;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Block linears: Hugging Face short name, GGUF name, role.
const LINEARS: [(&str, &str, TensorRole); 7] = [
    ("self_attn.q_proj", "attn_q", TensorRole::AttnQ),
    ("self_attn.k_proj", "attn_k", TensorRole::AttnK),
    ("self_attn.v_proj", "attn_v", TensorRole::AttnV),
    ("self_attn.o_proj", "attn_output", TensorRole::AttnOutput),
    ("mlp.gate_proj", "ffn_gate", TensorRole::FfnGate),
    ("mlp.up_proj", "ffn_up", TensorRole::FfnUp),
    ("mlp.down_proj", "ffn_down", TensorRole::FfnDown),
];

/// Refuse, before any work, a model llama.cpp's `llama` architecture would not compute
/// as transformers does, naming the config key.
pub fn check_exportable(cfg: &LlamaConfig) -> Result<()> {
    let refuse = |what: String| Err(Error::option("--format gguf", what));
    if !matches!(cfg.family, Family::Llama | Family::Mistral) {
        return refuse(format!(
            "model_type {:?}: GGUF export writes llama.cpp's llama architecture (llama, mistral) so far",
            cfg.model_type
        ));
    }
    if cfg.attention_bias || cfg.qkv_bias || cfg.mlp_bias {
        return refuse("attention_bias / mlp_bias: biases are not exported to GGUF yet".into());
    }
    if let Some(w) = cfg.sliding_window.iter().flatten().next() {
        return refuse(format!("sliding_window = {w}: llama.cpp's llama architecture has no sliding window"));
    }
    if cfg.rope.rotary_dim != cfg.head_dim {
        return refuse(format!("partial rotary ({} of {} dims) is not exported", cfg.rope.rotary_dim, cfg.head_dim));
    }
    match cfg.rope.scaling {
        RopeScaling::Default | RopeScaling::Linear { .. } => Ok(()),
        ref s => refuse(format!("rope_scaling {s:?} is not exported to GGUF yet (default and linear are)")),
    }
}

/// The scheme of every block linear under `preset` (llama.cpp's mix and fallbacks),
/// printing each fallback as llama-quantize does; a linear that no block type of the
/// preset fits is left out (written F16). `imatrix`: calibration statistics are used.
pub fn preset_policy(cfg: &LlamaConfig, preset: Preset, imatrix: bool) -> Result<SchemePolicy> {
    let mut policy = SchemePolicy::uniform(QuantScheme::ggml(preset.base)?);
    let mut fallbacks = 0;
    for b in 0..cfg.num_layers {
        for (short, _, role) in LINEARS {
            let name = format!("model.layers.{b}.{short}");
            let cols = linear_cols(cfg, role);
            let gqa = cfg.num_heads / cfg.num_kv_heads.max(1);
            let c = preset.tensor_type(role, b, cfg.num_layers, cols, cfg.tie_word_embeddings, imatrix, gqa);
            if let Some(note) = &c.fallback {
                fallbacks += 1;
                if fallbacks <= 3 {
                    eprintln!("gguf {}: {name}: {note}", preset.name);
                }
            }
            let target =
                crate::format::compressed_tensors::Target::new(name.as_str()).expect("a plain name is a target");
            if c.ty == GgmlType::F16 {
                policy.ignore.push(target);
            } else if c.ty != preset.base {
                policy.overrides.push((vec![target], QuantScheme::ggml(c.ty)?));
            }
        }
    }
    if fallbacks > 3 {
        eprintln!("gguf {}: {} tensors in all took a fallback type (as llama-quantize does)", preset.name, fallbacks);
    }
    Ok(policy)
}

fn linear_cols(cfg: &LlamaConfig, role: TensorRole) -> usize {
    match role {
        TensorRole::AttnOutput => cfg.num_heads * cfg.head_dim,
        TensorRole::FfnDown => cfg.intermediate_size,
        _ => cfg.hidden_size,
    }
}

fn linear_rows(cfg: &LlamaConfig, role: TensorRole) -> usize {
    match role {
        TensorRole::AttnQ => cfg.num_heads * cfg.head_dim,
        TensorRole::AttnK | TensorRole::AttnV => cfg.num_kv_heads * cfg.head_dim,
        TensorRole::FfnGate | TensorRole::FfnUp => cfg.intermediate_size,
        _ => cfg.hidden_size,
    }
}

/// The permutation llama.cpp's converter applies to q/k rows: within each head of `hd`
/// rows, GGUF row `2i + j` holds Hugging Face row `j·hd/2 + i`. Returns, for each GGUF row,
/// its source row.
fn rope_row_order(rows: usize, n_heads: usize) -> Vec<usize> {
    let hd = rows / n_heads;
    let half = hd / 2;
    (0..rows)
        .map(|g| {
            let (h, k) = (g / hd, g % hd);
            let (i, j) = (k / 2, k % 2);
            h * hd + j * half + i
        })
        .collect()
}

/// The GGUF file being written: the layout is fixed up front, tensors land as they come.
pub struct GgufExport {
    writer: GgufWriter,
    cfg: LlamaConfig,
    /// Dense tensors a transform changed (folded norms), by Hugging Face name.
    replaced: BTreeMap<String, Vec<f32>>,
    /// GGUF type of each tensor, by GGUF name.
    types: BTreeMap<String, GgmlType>,
}

impl GgufExport {
    /// Lay out `dest` for the model in `dir` under `policy` (the linears' schemes).
    #[allow(clippy::too_many_arguments)]
    pub fn create(
        dir: &Path,
        dest: &Path,
        cfg: &LlamaConfig,
        store: &SafetensorsStore,
        preset: Preset,
        policy: &SchemePolicy,
        imatrix: bool,
        meta: &BTreeMap<String, String>,
    ) -> Result<Self> {
        check_exportable(cfg)?;
        let tokenizer = GgufTokenizer::from_hf_dir(dir)?;
        if tokenizer.tokens.len() != cfg.vocab_size {
            return Err(Error::format(
                dir.join("tokenizer.json"),
                format!("{} tokens, but config.json has vocab_size = {}", tokenizer.tokens.len(), cfg.vocab_size),
            ));
        }
        let tied = !store.contains("lm_head.weight");
        let (h, n) = (cfg.hidden_size as u64, cfg.num_layers);
        let mut entries = vec![];
        let mut types = BTreeMap::new();
        let mut push = |name: String, ty: GgmlType, dims: Vec<u64>| {
            types.insert(name.clone(), ty);
            entries.push(TensorEntry { name, ty, dims });
        };
        let gqa = cfg.num_heads / cfg.num_kv_heads.max(1);
        let embd = preset.tensor_type(TensorRole::TokenEmbd, 0, n, cfg.hidden_size, tied, imatrix, gqa);
        push("token_embd.weight".into(), embd.ty, vec![h, cfg.vocab_size as u64]);
        for b in 0..n {
            push(format!("blk.{b}.attn_norm.weight"), GgmlType::F32, vec![h]);
            push(format!("blk.{b}.ffn_norm.weight"), GgmlType::F32, vec![h]);
            for (short, gg, role) in LINEARS {
                let ty = policy.scheme_for(&format!("model.layers.{b}.{short}")).map_or(Ok(GgmlType::F16), |s| {
                    s.ggml_type().ok_or_else(|| {
                        Error::option(
                            "--format gguf",
                            format!("model.layers.{b}.{short} has scheme {s}, not a GGUF type"),
                        )
                    })
                })?;
                push(
                    format!("blk.{b}.{gg}.weight"),
                    ty,
                    vec![linear_cols(cfg, role) as u64, linear_rows(cfg, role) as u64],
                );
            }
        }
        push("output_norm.weight".into(), GgmlType::F32, vec![h]);
        if !tied {
            let out = preset.tensor_type(TensorRole::Output, 0, n, cfg.hidden_size, false, imatrix, gqa);
            push("output.weight".into(), out.ty, vec![h, cfg.vocab_size as u64]);
        }
        let mut md = metadata(cfg, dir, preset, meta)?;
        md.extend(tokenizer.gguf_metadata());
        let writer = GgufWriter::create(dest, &md, entries)?;
        Ok(Self { writer, cfg: cfg.clone(), replaced: BTreeMap::new(), types })
    }

    /// A quantized block linear (`model.layers.B.SHORT`), encoded in its block type.
    pub fn add_quantized(&mut self, module: &str, q: &QuantizedTensor) -> Result<()> {
        let (gguf, role) = gguf_linear_name(module)?;
        let want = self.types[&gguf];
        let (Some(ty), Some(_)) = (q.scheme.ggml_type(), q.ggml.as_ref()) else {
            return Err(Error::tensor(module, format!("scheme {} is not a GGUF block type", q.scheme)));
        };
        if ty != want {
            return Err(Error::tensor(module, format!("quantized as {ty}, but the GGUF layout has {want}")));
        }
        let bytes = encode_rows(ty, q, &self.row_order(role, q.rows));
        self.writer.write_tensor(&gguf, &bytes)
    }

    /// A dense tensor a transform changed (a norm weight), written with its block.
    pub fn replace_dense(&mut self, name: &str, values: &[f32]) -> Result<()> {
        self.replaced.insert(name.to_string(), values.to_vec());
        Ok(())
    }

    fn row_order(&self, role: TensorRole, rows: usize) -> Vec<usize> {
        match role {
            TensorRole::AttnQ => rope_row_order(rows, self.cfg.num_heads),
            TensorRole::AttnK => rope_row_order(rows, self.cfg.num_kv_heads),
            _ => (0..rows).collect(),
        }
    }

    fn dense(&mut self, store: &SafetensorsStore, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        match self.replaced.remove(name) {
            Some(v) => Ok(v),
            None => store.f32_shaped(name, shape),
        }
    }

    /// Block `b` is done: its norms, and its linears left unquantized (F16).
    pub fn block_done(&mut self, store: &SafetensorsStore, b: usize) -> Result<()> {
        let h = self.cfg.hidden_size;
        for (hf, gg) in [("input_layernorm", "attn_norm"), ("post_attention_layernorm", "ffn_norm")] {
            let v = self.dense(store, &format!("model.layers.{b}.{hf}.weight"), &[h])?;
            self.writer.write_tensor(&format!("blk.{b}.{gg}.weight"), &f32_bytes(&v))?;
        }
        for (short, gg, role) in LINEARS {
            let name = format!("blk.{b}.{gg}.weight");
            if self.types[&name] == GgmlType::F16 && !self.writer.is_written(&name) {
                let (rows, cols) = (linear_rows(&self.cfg, role), linear_cols(&self.cfg, role));
                let w = store.f32_shaped(&format!("model.layers.{b}.{short}.weight"), &[rows, cols])?;
                let mut bytes = Vec::with_capacity(rows * cols * 2);
                for r in self.row_order(role, rows) {
                    bytes.extend(w[r * cols..(r + 1) * cols].iter().flat_map(|&x| f16::from_f32(x).to_le_bytes()));
                }
                self.writer.write_tensor(&name, &bytes)?;
            }
        }
        Ok(())
    }

    /// The embedding, the final norm and an untied head; then rename into place.
    pub fn finish(mut self, store: &SafetensorsStore) -> Result<PathBuf> {
        let (h, v) = (self.cfg.hidden_size, self.cfg.vocab_size);
        let norm = self.dense(store, "model.norm.weight", &[h])?;
        self.writer.write_tensor("output_norm.weight", &f32_bytes(&norm))?;
        for (hf, gg) in [("model.embed_tokens.weight", "token_embd.weight"), ("lm_head.weight", "output.weight")] {
            let Some(&ty) = self.types.get(gg) else { continue };
            let w = store.f32_shaped(hf, &[v, h])?;
            let bytes = match ty {
                GgmlType::F16 => w.iter().flat_map(|&x| f16::from_f32(x).to_le_bytes()).collect(),
                GgmlType::F32 => f32_bytes(&w),
                ty => encode_rows(ty, &quantize_tensor(hf, &w, v, h, ty, None)?, &(0..v).collect::<Vec<_>>()),
            };
            self.writer.write_tensor(gg, &bytes)?;
        }
        self.writer.finish()
    }
}

/// The ggml bytes of `q` (a tensor of block type `ty`), its rows in `order`.
fn encode_rows(ty: GgmlType, q: &QuantizedTensor, order: &[usize]) -> Vec<u8> {
    let params = q.ggml.as_ref().expect("a ggml tensor carries its block headers");
    let bpr = q.cols / ty.block_size();
    let mut bytes = Vec::with_capacity(order.len() * bpr * ty.type_size());
    for &r in order {
        encode_row(ty, &params.headers[r * bpr..(r + 1) * bpr], &q.codes[r * q.cols..(r + 1) * q.cols], &mut bytes);
    }
    bytes
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// `model.layers.3.self_attn.q_proj` -> (`blk.3.attn_q.weight`, role).
fn gguf_linear_name(module: &str) -> Result<(String, TensorRole)> {
    let rest = module.strip_prefix("model.layers.");
    let parsed = rest.and_then(|r| r.split_once('.')).and_then(|(b, short)| {
        let b: usize = b.parse().ok()?;
        LINEARS.iter().find(|l| l.0 == short).map(|l| (format!("blk.{b}.{}.weight", l.1), l.2))
    });
    parsed.ok_or_else(|| Error::tensor(module, "is not a block linear of the llama architecture".to_string()))
}

/// `general.*` and `llama.*` metadata, plus this tool's run record (`quantize.*`).
fn metadata(
    cfg: &LlamaConfig,
    dir: &Path,
    preset: Preset,
    meta: &BTreeMap<String, String>,
) -> Result<Vec<(String, Value)>> {
    let s = |v: &str| Value::String(v.to_string());
    let u = |v: usize| Value::U32(v as u32);
    let name = dir
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "model".into());
    let mut m = vec![
        ("general.architecture".to_string(), s("llama")),
        ("general.type".to_string(), s("model")),
        ("general.name".to_string(), s(&name)),
        ("general.file_type".to_string(), Value::U32(preset.ftype)),
        ("general.quantization_version".to_string(), Value::U32(2)),
        ("llama.context_length".to_string(), u(cfg.max_position_embeddings)),
        ("llama.embedding_length".to_string(), u(cfg.hidden_size)),
        ("llama.block_count".to_string(), u(cfg.num_layers)),
        ("llama.feed_forward_length".to_string(), u(cfg.intermediate_size)),
        ("llama.attention.head_count".to_string(), u(cfg.num_heads)),
        ("llama.attention.head_count_kv".to_string(), u(cfg.num_kv_heads)),
        ("llama.rope.freq_base".to_string(), Value::F32(cfg.rope.theta)),
        ("llama.attention.layer_norm_rms_epsilon".to_string(), Value::F32(cfg.rms_norm_eps)),
        ("llama.vocab_size".to_string(), u(cfg.vocab_size)),
        ("llama.rope.dimension_count".to_string(), u(cfg.rope.rotary_dim)),
    ];
    // As convert_hf_to_gguf.py writes them (needed when head_dim != hidden / heads).
    m.push(("llama.attention.key_length".to_string(), u(cfg.head_dim)));
    m.push(("llama.attention.value_length".to_string(), u(cfg.head_dim)));
    if let RopeScaling::Linear { factor } = cfg.rope.scaling {
        m.push(("llama.rope.scaling.type".to_string(), s("linear")));
        m.push(("llama.rope.scaling.factor".to_string(), Value::F32(factor)));
    }
    for (k, v) in meta {
        let key = k.strip_prefix("quantize_").unwrap_or(k);
        m.push((format!("quantize.{key}"), s(v)));
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_order_inverts_the_converter() {
        let (rows, cols, heads) = (12, 2, 2);
        let hf: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
        let order = rope_row_order(rows, heads);
        let mut gguf: Vec<f32> = order.iter().flat_map(|&r| hf[r * cols..(r + 1) * cols].to_vec()).collect();
        crate::convert::unpermute_rows(&mut gguf, rows, cols, heads).unwrap();
        assert_eq!(gguf, hf);
    }

    #[test]
    fn linear_names() {
        assert_eq!(gguf_linear_name("model.layers.12.mlp.down_proj").unwrap().0, "blk.12.ffn_down.weight");
        assert!(gguf_linear_name("model.layers.x.mlp.down_proj").is_err());
        assert!(gguf_linear_name("lm_head").is_err());
    }
}
