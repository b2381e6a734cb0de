//! `config.json` of the LLaMA family (llama, mistral, qwen2), with a clear error for
//! anything else. Keys and defaults follow transformers' `LlamaConfig`/`Qwen2Config`.

use crate::error::{Error, Result};
use serde_json::Value;
use std::path::Path;

#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    pub model_type: String,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// q/k/v projections carry a bias (always for qwen2; `attention_bias` for llama).
    pub qkv_bias: bool,
    /// Raw JSON, kept so writers can copy it through with additions.
    pub raw: Value,
}

const SUPPORTED: &[&str] = &["llama", "mistral", "qwen2"];

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
        if !SUPPORTED.contains(&model_type.as_str()) {
            return Err(Error::config(
                path,
                format!("unsupported architecture model_type = \"{model_type}\"; supported: {}", SUPPORTED.join(", ")),
            ));
        }
        let req = |key: &str| -> Result<usize> {
            let v = raw.get(key).ok_or_else(|| Error::config(path, format!("missing required key \"{key}\"")))?;
            v.as_u64()
                .filter(|&n| n > 0)
                .map(|n| n as usize)
                .ok_or_else(|| Error::config(path, format!("key \"{key}\" must be a positive integer, found {v}")))
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
        let hidden_size = req("hidden_size")?;
        let num_heads = req("num_attention_heads")?;
        let num_kv_heads = if raw.get("num_key_value_heads").is_some_and(|v| !v.is_null()) {
            req("num_key_value_heads")?
        } else {
            num_heads
        };
        let head_dim = if raw.get("head_dim").is_some_and(|v| !v.is_null()) {
            req("head_dim")?
        } else if hidden_size % num_heads != 0 {
            return Err(Error::config(
                path,
                format!(
                    "hidden_size ({hidden_size}) is not a multiple of num_attention_heads ({num_heads}) and no \
                     head_dim is given"
                ),
            ));
        } else {
            hidden_size / num_heads
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
        if let Some(rs) = raw.get("rope_scaling").filter(|v| !v.is_null()) {
            return Err(Error::config(
                path,
                format!("rope_scaling {rs} is not supported yet (only plain RoPE with rope_theta)"),
            ));
        }
        let act = raw.get("hidden_act").and_then(Value::as_str).unwrap_or("silu");
        if act != "silu" {
            return Err(Error::config(path, format!("hidden_act \"{act}\" is not supported (only silu / SwiGLU)")));
        }
        let qkv_bias = model_type == "qwen2" || raw.get("attention_bias").and_then(Value::as_bool).unwrap_or(false);
        Ok(Self {
            hidden_size,
            intermediate_size: req("intermediate_size")?,
            num_layers: req("num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim,
            vocab_size: req("vocab_size")?,
            rms_norm_eps: opt_f("rms_norm_eps", 1e-6)?,
            rope_theta: opt_f("rope_theta", 10000.0)?,
            max_position_embeddings: raw.get("max_position_embeddings").and_then(Value::as_u64).unwrap_or(2048)
                as usize,
            tie_word_embeddings: raw.get("tie_word_embeddings").and_then(Value::as_bool).unwrap_or(false),
            qkv_bias,
            model_type,
            raw,
        })
    }

    /// Parameters of one block's linears plus norms (for bits-per-weight counts).
    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }
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
        assert_eq!((c.head_dim, c.num_kv_heads, c.rope_theta, c.qkv_bias), (16, 2, 10000.0, false));
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
