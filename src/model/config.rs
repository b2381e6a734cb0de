//! `config.json` of the decoder families this tool runs (llama, mistral, qwen2, qwen3,
//! phi3, gemma2, gemma3_text), with a clear error for anything else. Keys and defaults follow
//! transformers 5.24's `LlamaConfig`, `MistralConfig`, `Qwen2Config`, `Qwen3Config`,
//! `Phi3Config`, `Gemma2Config` and `Gemma3TextConfig`; a key that would change the computation and is not
//! implemented is refused, never ignored.

use super::rope::RopeConfig;
use crate::error::{Error, Result};
use serde_json::Value;
use std::path::Path;

/// The decoder family (`model_type`): which linears a block has and what they compute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Llama,
    Mistral,
    Qwen2,
    /// Per-head RMSNorm of q and k before RoPE (`q_norm`, `k_norm`).
    Qwen3,
    /// Fused `qkv_proj` and `gate_up_proj`.
    Phi3,
    /// GeGLU, `(1 + w)` RMSNorms around attention and MLP, a scaled embedding, soft-capped
    /// attention scores and logits, alternating sliding-window blocks.
    Gemma2,
    /// Gemma 3's text model (`gemma3_text`): gemma2's block without soft-capping by
    /// default, `(1 + w)` q/k norms, and its own RoPE base for the sliding blocks.
    Gemma3,
}

impl Family {
    /// Gemma's block: GeGLU, `(1 + w)` norms around attention and MLP, a scaled embedding.
    pub fn is_gemma(self) -> bool {
        matches!(self, Family::Gemma2 | Family::Gemma3)
    }
}

/// The MLP's gate activation (`hidden_act`, gemma's `hidden_activation`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `silu(gate) * up` (SwiGLU).
    Silu,
    /// `gelu_tanh(gate) * up` (GeGLU with torch's tanh approximation, `gelu_pytorch_tanh`).
    GeluTanh,
}

impl Family {
    pub fn from_model_type(s: &str) -> Option<Self> {
        Some(match s {
            "llama" => Family::Llama,
            "mistral" => Family::Mistral,
            "qwen2" => Family::Qwen2,
            "qwen3" => Family::Qwen3,
            "phi3" => Family::Phi3,
            "gemma2" => Family::Gemma2,
            "gemma3_text" => Family::Gemma3,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    pub family: Family,
    pub model_type: String,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f32,
    /// RoPE of full-attention blocks (all blocks but gemma3's sliding ones).
    pub rope: RopeConfig,
    /// RoPE of gemma3's sliding-window blocks (`rope_local_base_freq`, or
    /// `rope_parameters.sliding_attention`).
    pub rope_local: Option<RopeConfig>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// q, k, v and o carry a bias (`attention_bias`: llama, qwen3).
    pub attention_bias: bool,
    /// q, k, v (not o) carry a bias (always for qwen2).
    pub qkv_bias: bool,
    /// gate, up and down carry a bias (`mlp_bias`: llama).
    pub mlp_bias: bool,
    /// Per-head RMSNorm of q and k before RoPE (qwen3).
    pub qk_norm: bool,
    /// The sliding attention window of each block (keys `q - window < k <= q`), or `None`
    /// for full causal attention (mistral `sliding_window`; qwen2/3 `use_sliding_window`,
    /// `max_window_layers`, `layer_types`; phi3 `sliding_window`).
    pub sliding_window: Vec<Option<usize>>,
    /// The MLP's gate activation.
    pub activation: Activation,
    /// Added to every stored RMSNorm weight before it multiplies (gemma's `(1 + w)`: 1).
    pub norm_offset: f32,
    /// The attention scores' factor (`1/√head_dim`; gemma `query_pre_attn_scalar^-0.5`).
    pub attn_scale: f32,
    /// Attention scores become `c·tanh(s/c)` before the mask (gemma2 `attn_logit_softcapping`).
    pub attn_softcap: Option<f32>,
    /// Logits become `c·tanh(l/c)` (gemma2 `final_logit_softcapping`).
    pub final_softcap: Option<f32>,
    /// Embedding rows are multiplied by this (gemma: `√hidden_size`, rounded to f32).
    pub embed_scale: Option<f32>,
    /// RMSNorms of the attention output and the MLP output before each residual add
    /// (gemma2 `post_attention_layernorm`, `post_feedforward_layernorm`); the MLP's input
    /// norm is then `pre_feedforward_layernorm`.
    pub sandwich_norms: bool,
    /// Keys and values are cached in FP8 E4M3 with a static scale per block
    /// (`quantization_config.kv_cache_scheme`; `format::kv_cache`).
    pub kv_cache_fp8: bool,
    /// Raw JSON, kept so writers can copy it through with additions.
    pub raw: Value,
}

const SUPPORTED: &[&str] = &["llama", "mistral", "qwen2", "qwen3", "phi3", "gemma2", "gemma3_text"];

/// Keys that describe the run, not the computation (token ids, dropout, training settings,
/// provenance), or whose only supported value is checked elsewhere.
const INERT_KEYS: &[&str] = &[
    "architectures",
    "_name_or_path",
    "auto_map",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "torch_dtype",
    "dtype",
    "transformers_version",
    "use_cache",
    "initializer_range",
    "attention_dropout",
    "resid_pdrop",
    "embd_pdrop",
    "pretraining_tp",
    "quantization_config",
    "tokenizer_class",
    "_attn_implementation_autoset",
    // Generation settings (gemma2's hybrid cache is a transformers cache class).
    "cache_implementation",
];

/// Keys read for gemma2 and gemma3_text only; on another family they are refused by name.
const GEMMA_KEYS: &[&str] = &[
    "hidden_activation",
    "query_pre_attn_scalar",
    "attn_logit_softcapping",
    "final_logit_softcapping",
    "use_bidirectional_attention",
];

/// Keys read for gemma3_text only.
const GEMMA3_KEYS: &[&str] = &["rope_local_base_freq", "sliding_window_pattern"];

/// Keys this module reads.
const READ_KEYS: &[&str] = &[
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "rms_norm_eps",
    "rope_theta",
    "rope_scaling",
    "rope_parameters",
    "partial_rotary_factor",
    "original_max_position_embeddings",
    "max_position_embeddings",
    "tie_word_embeddings",
    "attention_bias",
    "mlp_bias",
    "hidden_act",
    "sliding_window",
    "use_sliding_window",
    "max_window_layers",
    "layer_types",
];

impl LlamaConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let raw: Value =
            serde_json::from_str(&text).map_err(|e| Error::config(path, format!("not valid JSON: {e}")))?;
        Self::from_json(raw, path)
    }

    pub fn from_json(raw: Value, path: &Path) -> Result<Self> {
        let model_type = raw
            .get("model_type")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::config(path, "missing required key \"model_type\""))?
            .to_string();
        let family = Family::from_model_type(&model_type).ok_or_else(|| {
            Error::config(
                path,
                format!("unsupported architecture model_type = \"{model_type}\"; supported: {}", SUPPORTED.join(", ")),
            )
        })?;
        let obj = raw.as_object().ok_or_else(|| Error::config(path, "config.json is not a JSON object"))?;
        for (k, v) in obj {
            // A null value is transformers' "not set".
            let foreign = (GEMMA_KEYS.contains(&k.as_str()) && !family.is_gemma())
                || (GEMMA3_KEYS.contains(&k.as_str()) && family != Family::Gemma3);
            if !v.is_null() && foreign {
                return Err(Error::config(
                    path,
                    format!("key \"{k}\" = {v} is not part of model_type \"{model_type}\" (it is gemma's)"),
                ));
            }
            if !v.is_null()
                && !READ_KEYS.contains(&k.as_str())
                && !INERT_KEYS.contains(&k.as_str())
                && !GEMMA_KEYS.contains(&k.as_str())
                && !GEMMA3_KEYS.contains(&k.as_str())
            {
                return Err(Error::config(
                    path,
                    format!(
                        "key \"{k}\" = {v} is not understood for model_type \"{model_type}\"; it may change the \
                         computation, so the model is refused rather than run without it"
                    ),
                ));
            }
        }
        let req = |key: &str| -> Result<usize> {
            let v = raw.get(key).ok_or_else(|| Error::config(path, format!("missing required key \"{key}\"")))?;
            v.as_u64()
                .filter(|&n| n > 0)
                .map(|n| n as usize)
                .ok_or_else(|| Error::config(path, format!("key \"{key}\" must be a positive integer, found {v}")))
        };
        let opt_usize = |key: &str| -> Result<Option<usize>> {
            match raw.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(_) => req(key).map(Some),
            }
        };
        let opt_f = |key: &str, default: f64| -> Result<f32> {
            match raw.get(key) {
                None | Some(Value::Null) => Ok(default as f32),
                Some(v) => v
                    .as_f64()
                    .map(|x| x as f32)
                    .ok_or_else(|| Error::config(path, format!("key \"{key}\" must be a number, found {v}"))),
            }
        };
        let opt_bool = |key: &str, default: bool| -> Result<bool> {
            match raw.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(Value::Bool(b)) => Ok(*b),
                Some(v) => Err(Error::config(path, format!("key \"{key}\" must be true or false, found {v}"))),
            }
        };
        let hidden_size = req("hidden_size")?;
        let num_heads = req("num_attention_heads")?;
        let num_layers = req("num_hidden_layers")?;
        let num_kv_heads = opt_usize("num_key_value_heads")?.unwrap_or(num_heads);
        // Qwen3Config's head_dim defaults to 128, Gemma's to 256; the others derive it.
        let head_dim = match (opt_usize("head_dim")?, family) {
            (Some(d), _) => d,
            (None, Family::Qwen3) => 128,
            (None, Family::Gemma2 | Family::Gemma3) => 256,
            (None, _) if hidden_size % num_heads != 0 => {
                return Err(Error::config(
                    path,
                    format!(
                        "hidden_size ({hidden_size}) is not a multiple of num_attention_heads ({num_heads}) and no \
                         head_dim is given"
                    ),
                ))
            }
            (None, _) => hidden_size / num_heads,
        };
        if num_heads % num_kv_heads != 0 {
            return Err(Error::config(
                path,
                format!("num_attention_heads ({num_heads}) is not a multiple of num_key_value_heads ({num_kv_heads})"),
            ));
        }
        if head_dim % 2 != 0 {
            return Err(Error::config(path, format!("head_dim {head_dim} must be even for rotary embeddings")));
        }
        let max_position_embeddings = opt_usize("max_position_embeddings")?.unwrap_or(match family {
            Family::Mistral => 4096 * 32,
            Family::Qwen2 | Family::Qwen3 => 32768,
            Family::Phi3 => 4096,
            Family::Gemma2 => 8192,
            Family::Gemma3 => 131_072,
            Family::Llama => 2048,
        });
        let (rope, rope_local) = if family == Family::Gemma3 {
            gemma3_rope(&raw, head_dim, max_position_embeddings, path)?
        } else {
            (RopeConfig::from_json(&raw, head_dim, max_position_embeddings, path)?, None)
        };
        if raw.get("original_max_position_embeddings").is_some_and(|v| !v.is_null())
            && family != Family::Phi3
            && !matches!(rope.scaling, super::rope::RopeScaling::Llama3 { .. } | super::rope::RopeScaling::Yarn { .. })
        {
            return Err(Error::config(
                path,
                "key \"original_max_position_embeddings\" is set, but no RoPE scaling reads it".to_string(),
            ));
        }
        let activation = activation(&raw, family, path)?;
        let gemma = family.is_gemma();
        if gemma && opt_bool("use_bidirectional_attention", false)? {
            return Err(Error::config(
                path,
                "key \"use_bidirectional_attention\" = true (attention without the causal mask) is not supported",
            ));
        }
        let softcap = |key: &str, default: Option<f64>| -> Result<Option<f32>> {
            let v = match raw.get(key) {
                None => default,
                Some(Value::Null) => None,
                Some(v) => Some(v.as_f64().filter(|c| *c > 0.0).ok_or_else(|| {
                    Error::config(path, format!("key \"{key}\" must be a positive number or null, found {v}"))
                })?),
            };
            Ok(if gemma { v.map(|c| c as f32) } else { None })
        };
        // Gemma2Config: query_pre_attn_scalar 256, soft-capping 50 (scores) and 30 (logits);
        // Gemma3TextConfig: no soft-capping by default.
        let capped = family == Family::Gemma2;
        let attn_scale = if gemma {
            let s = opt_f("query_pre_attn_scalar", 256.0)?;
            if !(s > 0.0) {
                return Err(Error::config(path, format!("key \"query_pre_attn_scalar\" must be positive, found {s}")));
            }
            (s as f64).powf(-0.5) as f32
        } else {
            (head_dim as f64).powf(-0.5) as f32
        };
        let attention_bias = match family {
            Family::Llama | Family::Qwen3 | Family::Gemma2 | Family::Gemma3 => opt_bool("attention_bias", false)?,
            _ => false,
        };
        let mlp_bias = match family {
            Family::Llama => opt_bool("mlp_bias", false)?,
            _ => false,
        };
        for (key, fam_has) in [
            ("attention_bias", matches!(family, Family::Llama | Family::Qwen3) || family.is_gemma()),
            ("mlp_bias", family == Family::Llama),
        ] {
            if !fam_has && opt_bool(key, false)? {
                return Err(Error::config(
                    path,
                    format!("key \"{key}\" = true is not part of model_type \"{model_type}\""),
                ));
            }
        }
        let sliding_window = sliding_windows(&raw, family, num_layers, path)?;
        let kv_cache_fp8 = match raw.get("quantization_config") {
            Some(qc) => crate::format::kv_cache::declared(qc, path)?,
            None => false,
        };
        Ok(Self {
            family,
            hidden_size,
            intermediate_size: req("intermediate_size")?,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            vocab_size: req("vocab_size")?,
            rms_norm_eps: opt_f("rms_norm_eps", if family == Family::Phi3 { 1e-5 } else { 1e-6 })?,
            rope,
            rope_local,
            max_position_embeddings,
            tie_word_embeddings: opt_bool("tie_word_embeddings", false)?,
            attention_bias,
            qkv_bias: family == Family::Qwen2,
            mlp_bias,
            qk_norm: matches!(family, Family::Qwen3 | Family::Gemma3),
            sliding_window,
            activation,
            norm_offset: if gemma { 1.0 } else { 0.0 },
            attn_scale,
            attn_softcap: softcap("attn_logit_softcapping", capped.then_some(50.0))?,
            final_softcap: softcap("final_logit_softcapping", capped.then_some(30.0))?,
            // transformers: torch.tensor(hidden_size ** 0.5), a double rounded to f32.
            embed_scale: gemma.then(|| (hidden_size as f64).sqrt() as f32),
            sandwich_norms: gemma,
            kv_cache_fp8,
            model_type,
            raw,
        })
    }

    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }

    /// q/k/v and gate/up are stored fused (`qkv_proj`, `gate_up_proj`).
    pub fn fused(&self) -> bool {
        self.family == Family::Phi3
    }

    /// Whether the block linear `short` (e.g. `self_attn.o_proj`) has a bias; a fused
    /// linear has one when its parts do.
    pub fn linear_has_bias(&self, short: &str) -> bool {
        match short {
            "self_attn.q_proj" | "self_attn.k_proj" | "self_attn.v_proj" | "self_attn.qkv_proj" => {
                self.attention_bias || self.qkv_bias
            }
            "self_attn.o_proj" => self.attention_bias,
            "mlp.gate_proj" | "mlp.up_proj" | "mlp.down_proj" | "mlp.gate_up_proj" => self.mlp_bias,
            _ => false,
        }
    }

    /// The norm whose output gate/up read: `post_attention_layernorm`, or gemma2's
    /// `pre_feedforward_layernorm` (its `post_attention_layernorm` norms o's output).
    pub fn mlp_norm_name(&self) -> &'static str {
        if self.sandwich_norms {
            "pre_feedforward_layernorm"
        } else {
            "post_attention_layernorm"
        }
    }
}

/// The MLP activation: `hidden_act` (silu only), or gemma2's `hidden_activation` (its MLP
/// reads that key alone; default `gelu_pytorch_tanh`). A gemma `hidden_act` that disagrees
/// with it is refused rather than guessed between.
fn activation(raw: &Value, family: Family, path: &Path) -> Result<Activation> {
    let get = |key: &str| raw.get(key).filter(|v| !v.is_null());
    let name = |key: &str, v: &Value| -> Result<String> {
        v.as_str()
            .map(str::to_string)
            .ok_or_else(|| Error::config(path, format!("key \"{key}\" must be a string, found {v}")))
    };
    if !family.is_gemma() {
        let act = get("hidden_act").map(|v| name("hidden_act", v)).transpose()?.unwrap_or_else(|| "silu".into());
        return match act.as_str() {
            "silu" => Ok(Activation::Silu),
            _ => Err(Error::config(path, format!("hidden_act \"{act}\" is not supported (only silu / SwiGLU)"))),
        };
    }
    let act = get("hidden_activation")
        .map(|v| name("hidden_activation", v))
        .transpose()?
        .unwrap_or_else(|| "gelu_pytorch_tanh".into());
    if let Some(v) = get("hidden_act") {
        let other = name("hidden_act", v)?;
        if other != act {
            return Err(Error::config(
                path,
                format!(
                    "hidden_act \"{other}\" disagrees with hidden_activation \"{act}\" (gemma's MLP reads \
                     hidden_activation)"
                ),
            ));
        }
    }
    match act.as_str() {
        "gelu_pytorch_tanh" => Ok(Activation::GeluTanh),
        _ => Err(Error::config(path, format!("hidden_activation \"{act}\" is not supported (only gelu_pytorch_tanh)"))),
    }
}

/// The attention window of each block, as transformers derives it per family.
fn sliding_windows(raw: &Value, family: Family, layers: usize, path: &Path) -> Result<Vec<Option<usize>>> {
    let window = match raw.get("sliding_window") {
        None => match family {
            // MistralConfig's and Gemma2Config's default is 4096 when the key is absent.
            Family::Mistral | Family::Gemma2 | Family::Gemma3 => Some(4096),
            _ => None,
        },
        Some(Value::Null) => None,
        Some(v) => Some(v.as_u64().filter(|&n| n > 0).map(|n| n as usize).ok_or_else(|| {
            Error::config(path, format!("key \"sliding_window\" must be a positive integer or null, found {v}"))
        })?),
    };
    let use_sliding = raw.get("use_sliding_window").and_then(Value::as_bool).unwrap_or(false);
    match family {
        Family::Llama => {
            if window.is_some() {
                return Err(Error::config(
                    path,
                    "key \"sliding_window\" is not part of model_type \"llama\" (use mistral)",
                ));
            }
            Ok(vec![None; layers])
        }
        Family::Gemma2 | Family::Gemma3 => {
            // Gemma2Config: layer_types alternate, even blocks sliding; Gemma3TextConfig:
            // every `sliding_window_pattern`-th block (default 6) is full, the others slide.
            let pattern = match raw.get("sliding_window_pattern") {
                _ if family == Family::Gemma2 => 2,
                None | Some(Value::Null) => 6,
                Some(v) => v.as_u64().filter(|&n| n > 0).map(|n| n as usize).ok_or_else(|| {
                    Error::config(path, format!("key \"sliding_window_pattern\" must be a positive integer, found {v}"))
                })?,
            };
            let windows = match raw.get("layer_types").filter(|v| !v.is_null()) {
                Some(v) => layer_types(v, layers, window, path)?,
                None => (0..layers).map(|i| if (i + 1) % pattern != 0 { window } else { None }).collect(),
            };
            if family == Family::Gemma3 && window.is_none() {
                return Err(Error::config(
                    path,
                    "key \"sliding_window\" is null: gemma3's sliding blocks need a window (and take their own RoPE)",
                ));
            }
            Ok(windows)
        }
        Family::Mistral | Family::Phi3 => {
            if raw.get("layer_types").is_some_and(|v| !v.is_null()) {
                return Err(Error::config(
                    path,
                    "key \"layer_types\" (alternating attention) is not supported for this model_type",
                ));
            }
            Ok(vec![window; layers])
        }
        Family::Qwen2 | Family::Qwen3 => {
            // Qwen2Config: sliding_window only with use_sliding_window, on blocks >= max_window_layers.
            let window = if use_sliding { window.or(Some(4096)) } else { None };
            match raw.get("layer_types").filter(|v| !v.is_null()) {
                Some(v) => layer_types(v, layers, window, path),
                None => {
                    let first = match raw.get("max_window_layers") {
                        None | Some(Value::Null) => 28,
                        Some(v) => v.as_u64().map(|n| n as usize).ok_or_else(|| {
                            Error::config(path, format!("key \"max_window_layers\" must be an integer, found {v}"))
                        })?,
                    };
                    Ok((0..layers).map(|i| if i >= first { window } else { None }).collect())
                }
            }
        }
    }
}

/// Gemma 3's two RoPEs: `(full_attention, sliding_attention)`, from `rope_parameters`
/// keyed by layer type (transformers 5), or the hub's `rope_theta` (default 1e6) with
/// `rope_scaling` for full blocks and `rope_local_base_freq` (default 1e4, unscaled) for
/// sliding ones (`Gemma3TextConfig.convert_rope_params_to_dict`).
fn gemma3_rope(raw: &Value, head_dim: usize, max_pos: usize, path: &Path) -> Result<(RopeConfig, Option<RopeConfig>)> {
    use serde_json::json;
    let by_type = raw.get("rope_parameters").filter(|p| !p.is_null());
    let part = |layer_type: &str, theta_key: &str, default_theta: f64, scaling: Option<&Value>| -> Result<RopeConfig> {
        let mut params = match by_type {
            Some(p) => p.get(layer_type).cloned().unwrap_or_else(|| json!({"rope_type": "default"})),
            None => scaling.filter(|v| !v.is_null()).cloned().unwrap_or_else(|| json!({"rope_type": "default"})),
        };
        let shown = params.to_string();
        let obj = params.as_object_mut().ok_or_else(|| {
            Error::config(path, format!("rope parameters of \"{layer_type}\" must be an object, found {shown}"))
        })?;
        if !obj.contains_key("rope_theta") {
            obj.insert(
                "rope_theta".into(),
                raw.get(theta_key).filter(|v| !v.is_null()).cloned().unwrap_or(json!(default_theta)),
            );
        }
        let mut one = json!({ "rope_parameters": params });
        if let Some(f) = raw.get("partial_rotary_factor") {
            one["partial_rotary_factor"] = f.clone();
        }
        RopeConfig::from_json(&one, head_dim, max_pos, path)
    };
    if let Some(p) = by_type {
        let keys = p.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>()).unwrap_or_default();
        if let Some(k) = keys.iter().find(|k| *k != "full_attention" && *k != "sliding_attention") {
            return Err(Error::config(
                path,
                format!("\"rope_parameters\".{k}: gemma3_text takes parameters per layer type (full_attention, sliding_attention)"),
            ));
        }
    }
    let full = part("full_attention", "rope_theta", 1_000_000.0, raw.get("rope_scaling"))?;
    let local = part("sliding_attention", "rope_local_base_freq", 10_000.0, None)?;
    Ok((full, Some(local)))
}

/// Each block's window from `layer_types` (`full_attention` / `sliding_attention`).
fn layer_types(v: &Value, layers: usize, window: Option<usize>, path: &Path) -> Result<Vec<Option<usize>>> {
    let types = v
        .as_array()
        .filter(|a| a.len() == layers)
        .ok_or_else(|| Error::config(path, format!("key \"layer_types\" must list {layers} layer types, found {v}")))?;
    types
        .iter()
        .map(|t| match t.as_str() {
            Some("full_attention") => Ok(None),
            Some("sliding_attention") => Ok(window),
            _ => Err(Error::config(path, format!("key \"layer_types\": unknown layer type {t}"))),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> Value {
        json!({"model_type":"llama","hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,
               "num_attention_heads":4,"num_key_value_heads":2,"vocab_size":100})
    }

    #[test]
    fn parses_defaults_and_refuses_bad_configs() {
        let c = LlamaConfig::from_json(base(), Path::new("c.json")).unwrap();
        assert_eq!((c.head_dim, c.num_kv_heads, c.rope.theta, c.qkv_bias), (16, 2, 10000.0, false));
        let mut v = base();
        v.as_object_mut().unwrap().remove("hidden_size");
        let e = LlamaConfig::from_json(v, Path::new("c.json")).unwrap_err().to_string();
        assert!(e.contains("c.json") && e.contains("hidden_size"), "{e}");
        let mut v = base();
        v["model_type"] = json!("gpt2");
        let e = LlamaConfig::from_json(v, Path::new("c.json")).unwrap_err().to_string();
        assert!(e.contains("unsupported architecture") && e.contains("gpt2"), "{e}");
        let mut v = base();
        v["hidden_size"] = json!(66);
        let e = LlamaConfig::from_json(v.clone(), Path::new("c.json")).unwrap_err().to_string();
        assert!(
            e.contains("hidden_size (66)") && e.contains("num_attention_heads (4)") && e.contains("head_dim"),
            "{e}"
        );
        v["head_dim"] = json!(16);
        assert_eq!(LlamaConfig::from_json(v, Path::new("c.json")).unwrap().head_dim, 16);
        let mut v = base();
        v["model_type"] = json!("qwen2");
        assert!(LlamaConfig::from_json(v, Path::new("c.json")).unwrap().qkv_bias);
    }
}
