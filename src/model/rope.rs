//! Rotary position embedding parameters from `config.json` (`rope_theta`, `rope_scaling` /
//! transformers 5's `rope_parameters`, `partial_rotary_factor`) and the inverse frequencies
//! they give. Each scaling follows transformers' `modeling_rope_utils.py` (5.24) operation
//! by operation in f32, so the tables match its `inv_freq` and `attention_scaling`.

use crate::error::{Error, Result};
use serde_json::Value;
use std::path::Path;

/// How the inverse frequencies are derived from `theta`.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE: `inv_freq[i] = 1 / theta^(2i/dim)`.
    Default,
    /// `rope_type = "linear"`: every frequency divided by `factor` (position interpolation).
    Linear { factor: f32 },
    /// `rope_type = "llama3"` (Llama 3.1 / 3.2): low frequencies divided by `factor`,
    /// high ones kept, a smooth blend between.
    Llama3 { factor: f32, low_freq_factor: f32, high_freq_factor: f32, original_max_position_embeddings: f64 },
    /// `rope_type = "yarn"`: NTK-by-parts interpolation and a cos/sin scale.
    Yarn { factor: f64, attention_factor: f64, beta_fast: f64, beta_slow: f64, original: f64, truncate: bool },
    /// `rope_type = "longrope"` (also `"su"`, Phi-3): per-frequency factors, `short` for
    /// sequences up to `original` positions and `long` beyond, and a cos/sin scale.
    LongRope { short: Vec<f32>, long: Vec<f32>, original: usize, attention_factor: f64 },
}

#[derive(Clone, Debug, PartialEq)]
pub struct RopeConfig {
    pub theta: f32,
    /// Rotated dimensions of each head (`head_dim · partial_rotary_factor`); the rest pass through.
    pub rotary_dim: usize,
    pub scaling: RopeScaling,
}

impl RopeConfig {
    /// Read the RoPE keys of `raw` (a config.json object), standardized as transformers'
    /// `convert_rope_params_to_dict` does: `rope_parameters`, else `rope_scaling`; `rope_theta`
    /// and `partial_rotary_factor` inside it or at the top level; a top-level
    /// `original_max_position_embeddings` (Phi-3) wins over the one inside.
    pub fn from_json(raw: &Value, head_dim: usize, max_positions: usize, path: &Path) -> Result<Self> {
        let params = match (raw.get("rope_parameters"), raw.get("rope_scaling")) {
            (Some(p), _) if !p.is_null() => Some(("rope_parameters", p)),
            (_, Some(p)) if !p.is_null() => Some(("rope_scaling", p)),
            _ => None,
        };
        let empty = serde_json::Map::new();
        let (key, map) = match params {
            Some((key, p)) => (
                key,
                p.as_object().ok_or_else(|| Error::config(path, format!("\"{key}\" must be an object, found {p}")))?,
            ),
            None => ("rope_scaling", &empty),
        };
        let bad = |what: &str, v: &Value| Error::config(path, format!("\"{key}\".{what} has an invalid value {v}"));
        let num = |name: &str| -> Result<Option<f64>> {
            match map.get(name).or_else(|| {
                if name == "rope_theta" || name == "partial_rotary_factor" {
                    raw.get(name)
                } else {
                    None
                }
            }) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v.as_f64().filter(|x| x.is_finite()).map(Some).ok_or_else(|| bad(name, v)),
            }
        };
        let need = |name: &str, rope_type: &str| -> Result<f64> {
            num(name)?.ok_or_else(|| {
                Error::config(path, format!("\"{key}\" of rope_type \"{rope_type}\" needs \"{name}\" (a number)"))
            })
        };
        let theta = num("rope_theta")?.unwrap_or(10000.0);
        if theta <= 1.0 {
            return Err(Error::config(path, format!("rope_theta = {theta} must be greater than 1")));
        }
        let partial = num("partial_rotary_factor")?.unwrap_or(1.0);
        if !(partial > 0.0 && partial <= 1.0) {
            return Err(Error::config(path, format!("partial_rotary_factor = {partial} must be in (0, 1]")));
        }
        // transformers: `dim = int(head_dim * partial_rotary_factor)`.
        let rotary_dim = (head_dim as f64 * partial) as usize;
        if rotary_dim == 0 || rotary_dim % 2 != 0 {
            return Err(Error::config(
                path,
                format!("head_dim {head_dim} × partial_rotary_factor {partial} = {rotary_dim} rotated dimensions: must be even and positive"),
            ));
        }
        let rope_type = match map.get("rope_type").or_else(|| map.get("type")) {
            None | Some(Value::Null) => "default".to_string(),
            Some(Value::String(s)) => s.clone(),
            Some(v) => return Err(bad("rope_type", v)),
        };
        let original = || -> Result<f64> {
            let top = raw.get("original_max_position_embeddings").filter(|v| !v.is_null());
            match top.or_else(|| map.get("original_max_position_embeddings").filter(|v| !v.is_null())) {
                None => Ok(max_positions as f64),
                Some(v) => v
                    .as_u64()
                    .filter(|&n| n > 0)
                    .map(|n| n as f64)
                    .ok_or_else(|| bad("original_max_position_embeddings", v)),
            }
        };
        let positive = |name: &str, x: f64| -> Result<f64> {
            if x > 0.0 {
                Ok(x)
            } else {
                Err(Error::config(path, format!("\"{key}\".{name} = {x} must be positive")))
            }
        };
        let known: &[&str] = match rope_type.as_str() {
            "default" => &[],
            "linear" => &["factor"],
            "llama3" => &["factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"],
            "yarn" => &[
                "factor",
                "attention_factor",
                "beta_fast",
                "beta_slow",
                "mscale",
                "mscale_all_dim",
                "original_max_position_embeddings",
                "truncate",
            ],
            "longrope" | "su" => {
                &["short_factor", "long_factor", "factor", "attention_factor", "original_max_position_embeddings"]
            }
            other => {
                return Err(Error::config(
                    path,
                    format!(
                        "\"{key}\".rope_type = \"{other}\" is not supported (supported: default, linear, llama3, yarn, \
                         longrope); \"dynamic\" rescales with each sequence's length and is not implemented"
                    ),
                ))
            }
        };
        for k in map.keys() {
            if !known.contains(&k.as_str())
                && !["rope_type", "type", "rope_theta", "partial_rotary_factor"].contains(&k.as_str())
            {
                return Err(Error::config(
                    path,
                    format!("\"{key}\".{k} = {} is not understood for rope_type \"{rope_type}\"", map[k]),
                ));
            }
        }
        let scaling = match rope_type.as_str() {
            "default" => RopeScaling::Default,
            "linear" => RopeScaling::Linear { factor: positive("factor", need("factor", "linear")?)? as f32 },
            "llama3" => {
                let (low, high) = (need("low_freq_factor", "llama3")?, need("high_freq_factor", "llama3")?);
                if !(high > low && low > 0.0) {
                    return Err(Error::config(
                        path,
                        format!(
                            "\"{key}\": high_freq_factor ({high}) must be greater than low_freq_factor ({low}) > 0"
                        ),
                    ));
                }
                RopeScaling::Llama3 {
                    factor: positive("factor", need("factor", "llama3")?)? as f32,
                    low_freq_factor: low as f32,
                    high_freq_factor: high as f32,
                    original_max_position_embeddings: original()?,
                }
            }
            "yarn" => {
                let original = original()?;
                let factor = positive("factor", num("factor")?.unwrap_or(max_positions as f64 / original))?;
                let mscale_of = |scale: f64, m: f64| if scale <= 1.0 { 1.0 } else { 0.1 * m * scale.ln() + 1.0 };
                let attention_factor = match (num("attention_factor")?, num("mscale")?, num("mscale_all_dim")?) {
                    (Some(a), _, _) => a,
                    (None, Some(m), Some(all)) if m != 0.0 && all != 0.0 => {
                        mscale_of(factor, m) / mscale_of(factor, all)
                    }
                    _ => mscale_of(factor, 1.0),
                };
                let truncate = match map.get("truncate") {
                    None | Some(Value::Null) => true,
                    Some(Value::Bool(b)) => *b,
                    Some(v) => return Err(bad("truncate", v)),
                };
                // transformers: `get("beta_fast") or 32` (a 0 also falls back).
                let or = |x: Option<f64>, d: f64| x.filter(|&v| v != 0.0).unwrap_or(d);
                RopeScaling::Yarn {
                    factor,
                    attention_factor,
                    beta_fast: or(num("beta_fast")?, 32.0),
                    beta_slow: or(num("beta_slow")?, 1.0),
                    original,
                    truncate,
                }
            }
            _ => {
                let list = |name: &str| -> Result<Vec<f32>> {
                    let v = map.get(name).ok_or_else(|| {
                        Error::config(path, format!("\"{key}\" of rope_type \"longrope\" needs \"{name}\" (a list)"))
                    })?;
                    let xs = v
                        .as_array()
                        .and_then(|a| {
                            a.iter()
                                .map(|x| x.as_f64().filter(|f| *f > 0.0).map(|f| f as f32))
                                .collect::<Option<Vec<_>>>()
                        })
                        .ok_or_else(|| bad(name, v))?;
                    if xs.len() != rotary_dim / 2 {
                        return Err(Error::config(
                            path,
                            format!(
                                "\"{key}\".{name} has {} factors, but {rotary_dim} rotated dimensions need {}",
                                xs.len(),
                                rotary_dim / 2
                            ),
                        ));
                    }
                    Ok(xs)
                };
                let original = original()?;
                let factor = num("factor")?.unwrap_or(max_positions as f64 / original);
                let attention_factor = match num("attention_factor")? {
                    Some(a) => a,
                    None if factor <= 1.0 => 1.0,
                    None => (1.0 + factor.ln() / original.ln()).sqrt(),
                };
                RopeScaling::LongRope {
                    short: list("short_factor")?,
                    long: list("long_factor")?,
                    original: original as usize,
                    attention_factor,
                }
            }
        };
        Ok(Self { theta: theta as f32, rotary_dim, scaling })
    }

    /// Plain RoPE over all of `head_dim`.
    pub fn plain(theta: f32, head_dim: usize) -> Self {
        Self { theta, rotary_dim: head_dim, scaling: RopeScaling::Default }
    }

    /// longrope's `original_max_position_embeddings` (where its long factors begin).
    pub fn longrope_original(&self) -> Option<usize> {
        match self.scaling {
            RopeScaling::LongRope { original, .. } => Some(original),
            _ => None,
        }
    }

    /// `(inv_freq [rotary_dim/2], attention_scaling)` for a forward over sequences of `seq`
    /// positions (only longrope depends on it: the long factors beyond `original`).
    pub fn inv_freq(&self, seq: usize) -> (Vec<f32>, f32) {
        let dim = self.rotary_dim;
        let half = dim / 2;
        // `arange(0, dim, 2).float() / dim`, then `base ** that`.
        let exponent = |i: usize| (2 * i) as f32 / dim as f32;
        let base_pow: Vec<f32> = (0..half).map(|i| self.theta.powf(exponent(i))).collect();
        let plain: Vec<f32> = base_pow.iter().map(|p| 1.0 / p).collect();
        match &self.scaling {
            RopeScaling::Default => (plain, 1.0),
            RopeScaling::Linear { factor } => (plain.iter().map(|f| f / factor).collect(), 1.0),
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
                let old = *original_max_position_embeddings;
                let low_wavelen = (old / *low_freq_factor as f64) as f32;
                let high_wavelen = (old / *high_freq_factor as f64) as f32;
                let two_pi = (2.0 * std::f64::consts::PI) as f32;
                let span = (*high_freq_factor as f64 - *low_freq_factor as f64) as f32;
                let inv = plain
                    .iter()
                    .map(|&f| {
                        // torch's `scalar / tensor` is `tensor.reciprocal() * scalar`.
                        let wavelen = (1.0 / f) * two_pi;
                        let scaled = if wavelen > low_wavelen { f / factor } else { f };
                        let smooth = ((1.0 / wavelen) * old as f32 - low_freq_factor) / span;
                        let smoothed = (1.0 - smooth) * scaled / factor + smooth * scaled;
                        let medium = !(wavelen < high_wavelen) && !(wavelen > low_wavelen);
                        if medium {
                            smoothed
                        } else {
                            scaled
                        }
                    })
                    .collect();
                (inv, 1.0)
            }
            RopeScaling::Yarn { factor, attention_factor, beta_fast, beta_slow, original, truncate } => {
                let base = self.theta as f64;
                let correction_dim =
                    |rot: f64| (dim as f64 * (original / (rot * 2.0 * std::f64::consts::PI)).ln()) / (2.0 * base.ln());
                let (mut low, mut high) = (correction_dim(*beta_fast), correction_dim(*beta_slow));
                if *truncate {
                    low = low.floor();
                    high = high.ceil();
                }
                let (low, mut high) = (low.max(0.0), high.min((dim - 1) as f64));
                if low == high {
                    high += 0.001;
                }
                let factor32 = *factor as f32;
                let inv = (0..half)
                    .map(|i| {
                        let extrapolation = 1.0 / base_pow[i];
                        let interpolation = 1.0 / (factor32 * base_pow[i]);
                        let ramp = ((i as f32 - low as f32) / (high - low) as f32).clamp(0.0, 1.0);
                        let extra = 1.0 - ramp;
                        interpolation * (1.0 - extra) + extrapolation * extra
                    })
                    .collect();
                (inv, *attention_factor as f32)
            }
            RopeScaling::LongRope { short, long, original, attention_factor } => {
                let ext = if seq > *original { long } else { short };
                let inv = ext.iter().zip(&base_pow).map(|(e, p)| 1.0 / (e * p)).collect();
                (inv, *attention_factor as f32)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rope(v: Value) -> Result<RopeConfig> {
        RopeConfig::from_json(&v, 64, 131072, Path::new("config.json"))
    }

    #[test]
    fn plain_matches_the_formula_and_llama3_keeps_high_frequencies() {
        let r = rope(json!({"rope_theta": 500000.0})).unwrap();
        let (inv, scale) = r.inv_freq(16);
        assert_eq!(scale, 1.0);
        assert_eq!(inv[0], 1.0);
        assert_eq!(inv[1], 1.0 / 500000f32.powf(2.0 / 64.0));
        let l3 = rope(json!({"rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3", "factor": 32.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}))
        .unwrap();
        let (inv3, _) = l3.inv_freq(16);
        assert_eq!(inv3[0], inv[0], "the highest frequency is kept");
        assert!((inv3[31] - inv[31] / 32.0).abs() <= inv[31] * 1e-6, "the lowest is divided by factor");
    }

    #[test]
    fn refuses_unknown_types_keys_and_missing_values() {
        let e = rope(json!({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}})).unwrap_err().to_string();
        assert!(e.contains("dynamic") && e.contains("not supported"), "{e}");
        let e = rope(json!({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}})).unwrap_err().to_string();
        assert!(e.contains("low_freq_factor"), "{e}");
        let e = rope(json!({"rope_scaling": {"type": "linear", "factor": 2.0, "magic": 1}})).unwrap_err().to_string();
        assert!(e.contains("magic"), "{e}");
        let e = rope(json!({"partial_rotary_factor": 1.5})).unwrap_err().to_string();
        assert!(e.contains("partial_rotary_factor"), "{e}");
        let e = rope(json!({"rope_scaling": {"type": "longrope", "short_factor": [1.0], "long_factor": [1.0]}}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("short_factor has 1 factors"), "{e}");
    }
}
