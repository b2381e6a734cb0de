//! compressed-tensors' `kv_cache_scheme` in the one form vLLM runs: FP8 E4M3 keys and
//! values (keys after RoPE), one static scale per tensor per layer, symmetric:
//! `quantization_config.kv_cache_scheme = {"num_bits": 8, "type": "float", "strategy":
//! "tensor", "dynamic": false, "symmetric": true, ...}`, with the scales stored as
//! `model.layers.{i}.self_attn.k_scale` / `v_scale` (f32, shape `[1]`). A cached value is
//! `e4m3(clamp(x / scale, ±448)) · scale` (compressed-tensors' `fake_quantize`; vLLM's
//! `reshape_and_cache` divides by the same scale); the scale is `max|x| / 448` over the
//! calibration tokens (llm-compressor's static min-max observer).

use super::fp8;
use super::NumberFormat;
use crate::error::{Error, Result};
use serde_json::{json, Value};
use std::path::Path;

/// Largest E4M3 value.
pub const E4M3_MAX: f32 = 448.0;

/// The `kv_cache_scheme` this tool writes.
pub fn to_ct_json() -> Value {
    json!({
        "num_bits": 8,
        "type": "float",
        "symmetric": true,
        "group_size": null,
        "strategy": "tensor",
        "block_structure": null,
        "dynamic": false,
        "actorder": null,
        "observer": "minmax",
        "observer_kwargs": {},
    })
}

/// Whether `quantization_config` (of `path`) declares an FP8 KV cache: `false` without a
/// `kv_cache_scheme` (or `null`); an error naming the key and value for any scheme other
/// than the one vLLM supports.
pub fn declared(qc: &Value, path: &Path) -> Result<bool> {
    let s = match qc.get("kv_cache_scheme") {
        None | Some(Value::Null) => return Ok(false),
        Some(s) => s,
    };
    let bad = |key: &str, want: &str| {
        Err(Error::config(
            path,
            format!(
                "quantization_config.kv_cache_scheme.{key} = {} is not supported (only {want}: an FP8 E4M3 cache with \
                 one static scale per tensor, as vLLM runs it)",
                s.get(key).unwrap_or(&Value::Null)
            ),
        ))
    };
    if s.get("num_bits").and_then(Value::as_u64) != Some(8) {
        return bad("num_bits", "8");
    }
    if s.get("type").and_then(Value::as_str) != Some("float") {
        return bad("type", "\"float\"");
    }
    if s.get("strategy").and_then(Value::as_str) != Some("tensor") {
        return bad("strategy", "\"tensor\"");
    }
    if s.get("dynamic").and_then(Value::as_bool).unwrap_or(false) {
        return bad("dynamic", "false");
    }
    if !s.get("symmetric").and_then(Value::as_bool).unwrap_or(true) {
        return bad("symmetric", "true");
    }
    Ok(true)
}

/// Tensor names of block `layer`'s key and value scales.
pub fn scale_names(layer: usize) -> [String; 2] {
    [format!("model.layers.{layer}.self_attn.k_scale"), format!("model.layers.{layer}.self_attn.v_scale")]
}

/// The static scale for values whose largest magnitude is `absmax` (1 for all-zero inputs).
pub fn scale_for(absmax: f32) -> f32 {
    if absmax > 0.0 {
        absmax / E4M3_MAX
    } else {
        1.0
    }
}

/// The E4M3 code of `x` at `scale`.
pub fn encode(x: f32, scale: f32) -> u8 {
    fp8::encode(NumberFormat::Fp8E4M3, x / scale)
}

/// Replace each value by its cached value (quantize, then dequantize), in place.
pub fn fake_quantize(x: &mut [f32], scale: f32) {
    let table = fp8::decode_table(NumberFormat::Fp8E4M3);
    for v in x {
        *v = table[encode(*v, scale) as usize] * scale;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_vllms_scheme_is_accepted_and_the_rest_named() {
        let p = Path::new("/m/config.json");
        assert!(!declared(&json!({}), p).unwrap());
        assert!(!declared(&json!({"kv_cache_scheme": null}), p).unwrap());
        assert!(declared(&json!({"kv_cache_scheme": to_ct_json()}), p).unwrap());
        for (key, value) in
            [("num_bits", json!(4)), ("type", json!("int")), ("strategy", json!("channel")), ("dynamic", json!(true))]
        {
            let mut s = to_ct_json();
            s[key] = value.clone();
            let e = declared(&json!({"kv_cache_scheme": s}), p).unwrap_err().to_string();
            assert!(e.contains("/m/config.json") && e.contains(&format!("kv_cache_scheme.{key} = {value}")), "{e}");
        }
    }

    #[test]
    fn fake_quantization_keeps_the_range_and_fp8_precision() {
        let mut x: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) * 0.013).collect();
        let absmax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        let s = scale_for(absmax);
        let orig = x.clone();
        fake_quantize(&mut x, s);
        assert_eq!(x[0], orig[0], "the extreme maps to ±448 exactly");
        for (a, b) in x.iter().zip(&orig) {
            // E4M3 keeps 3 mantissa bits: relative error at most 2^-4 above the subnormals.
            assert!((a - b).abs() <= b.abs() / 16.0 + s * 2f32.powi(-10), "{a} vs {b}");
        }
        assert_eq!(scale_for(0.0), 1.0);
    }
}
