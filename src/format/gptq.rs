//! The GPTQ checkpoint layout (AutoGPTQ `auto_gptq/nn_modules/qlinear/qlinear_cuda_old.py`
//! `QuantLinear.pack`; GPTQModel writes the same with `checkpoint_format: "gptq"`; read by
//! transformers/optimum and vLLM `quantization/gptq.py`).
//!
//! Per quantized linear `<p>` (e.g. `model.layers.0.self_attn.q_proj`), with `b` bits,
//! `in`/`out` features and `G = ceil(in / group_size)` groups (1 for `group_size = -1`):
//!
//! | tensor        | dtype | shape            | content                                         |
//! |---------------|-------|------------------|-------------------------------------------------|
//! | `<p>.qweight` | I32   | `[in·b/32, out]` | codes packed along the input dim ([`PackRule::Stream`]) |
//! | `<p>.qzeros`  | I32   | `[G, out·b/32]`  | `(zero - 1) mod 2^b` packed along the output dim (Stream) |
//! | `<p>.scales`  | F16   | `[G, out]`       | scales                                          |
//! | `<p>.g_idx`   | I32   | `[in]`           | group of each input column                      |
//!
//! `w[o][i] = scales[g][o] · (q[i][o] - (stored_zero[g][o] + 1))`, `g = g_idx[i]`. The
//! "minus one" is the historical v1 convention (`zeros -= 1` in `pack`; every kernel adds 1
//! back per field). A zero point of 0 is therefore not storable: AutoGPTQ writes -1, whose
//! bits spill into the neighbouring fields, and kernels would read `2^b`. The writer refuses
//! it (symmetric schemes never produce it; see docs/FORMATS.md). `checkpoint_format:
//! "gptq_v2"` (GPTQModel) stores zeros without the offset; it is read, never written.
//!
//! Shapes: AutoGPTQ allocates `qweight` as `[in // 32 · b, out]` and `qzeros` as
//! `[G, out // 32 · b]`, so `in` and `out` must be multiples of 32. Per-tensor integer
//! schemes are expanded to per-channel (`group_size = -1`) with every row holding the one
//! scale and zero: lossless, and GPTQ has no per-tensor form.

use super::pack::{check_tensor, pack_matrix, read_floats, read_ints, unpack_tensor};
use super::pack::{Axis, PackRule, RawTensor};
use super::{Granularity, NumberFormat, QuantScheme, QuantizedTensor};
use crate::error::{Error, Result};
use safetensors::tensor::TensorView;
use serde_json::{json, Value};
use std::path::Path;

/// Both `in` and `out` must be multiples of this (AutoGPTQ's `// 32 * bits` shapes).
pub const GPTQ_DIM_MULTIPLE: usize = 32;

/// The `quantization_config` of a GPTQ checkpoint: one scheme for every quantized linear.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GptqConfig {
    pub bits: u8,
    /// `None` is `group_size: -1` (one group per output channel).
    pub group_size: Option<usize>,
    /// Act-order: `g_idx` holds the real group of each column (not `c / group_size`).
    pub desc_act: bool,
    pub sym: bool,
    /// `checkpoint_format: "gptq_v2"`: zeros stored as is (read only).
    pub v2: bool,
}

fn gptq_group_size(s: &QuantScheme) -> Option<usize> {
    match s.granularity {
        Granularity::Group(n) => Some(n),
        _ => None,
    }
}

impl GptqConfig {
    /// The config of one linear's scheme (`desc_act` false; the layout sets it).
    fn of_tensor(name: &str, q: &QuantizedTensor) -> Result<Self> {
        let bits = match q.scheme.format {
            NumberFormat::Int { bits } => bits,
            _ => return Err(unstorable(name, &q.scheme)),
        };
        Ok(GptqConfig {
            bits,
            group_size: gptq_group_size(&q.scheme),
            desc_act: false,
            sym: q.scheme.symmetric,
            v2: false,
        })
    }

    /// The one config that stores all `tensors` (module name, tensor); errors name two
    /// tensors whose schemes differ, or a scheme GPTQ cannot store.
    pub fn for_tensors<'a>(tensors: impl IntoIterator<Item = (&'a str, &'a QuantizedTensor)>) -> Result<Self> {
        let layout = GptqLayout::for_tensors(tensors)?;
        match layout.overrides.first() {
            None => Ok(layout.base),
            Some((c, names)) => Err(Error::option(
                "format",
                format!("expected one scheme for every linear: {} is {c:?}, the others {:?}", names[0], layout.base),
            )),
        }
    }

    /// Parse `quantization_config` (or `quantize_config.json`); `path` is for messages.
    pub fn from_json(v: &Value, path: &Path) -> Result<Self> {
        let int = |k: &str| v.get(k).and_then(Value::as_i64);
        let bits =
            int("bits").ok_or_else(|| Error::config(path, "gptq quantization_config has no integer \"bits\""))?;
        if !matches!(bits, 2 | 3 | 4 | 8) {
            return Err(Error::config(path, format!("gptq bits = {bits}; supported: 2, 3, 4, 8")));
        }
        let group_size = match int("group_size").unwrap_or(-1) {
            -1 => None,
            g if g > 0 => Some(g as usize),
            g => return Err(Error::config(path, format!("gptq group_size = {g}; expected -1 or > 0"))),
        };
        let flag = |k: &str, default: bool| v.get(k).and_then(Value::as_bool).unwrap_or(default);
        let v2 = match v.get("checkpoint_format").and_then(Value::as_str) {
            None | Some("gptq") => false,
            Some("gptq_v2") => true,
            Some(other) => {
                return Err(Error::config(
                    path,
                    format!("gptq checkpoint_format {other:?} is not supported (gptq, gptq_v2)"),
                ))
            }
        };
        Ok(Self { bits: bits as u8, group_size, desc_act: flag("desc_act", false), sym: flag("sym", true), v2 })
    }

    /// The `quantization_config` entry of config.json (what transformers and vLLM read).
    pub fn quantization_config(&self) -> Value {
        json!({
            "quant_method": "gptq",
            "bits": self.bits,
            "group_size": self.group_size.map_or(-1, |g| g as i64),
            "desc_act": self.desc_act,
            "sym": self.sym,
            "static_groups": false,
            "true_sequential": true,
            "lm_head": false,
            "checkpoint_format": if self.v2 { "gptq_v2" } else { "gptq" },
        })
    }

    /// quantize_config.json (AutoGPTQ / GPTQModel / vLLM's `get_config_filenames`).
    pub fn quantize_config(&self) -> Value {
        let mut v = self.quantization_config();
        v["model_name_or_path"] = Value::Null;
        v["model_file_base_name"] = json!("model");
        v
    }

    /// The scheme of a linear stored under this config.
    pub fn scheme(&self) -> QuantScheme {
        let granularity = self.group_size.map_or(Granularity::PerChannel, Granularity::Group);
        QuantScheme { format: NumberFormat::Int { bits: self.bits }, granularity, symmetric: self.sym }
    }
}

/// The gptq config of a checkpoint whose linears may differ: the scheme most linears have
/// is the base `quantization_config`; every other scheme is a GPTQModel `dynamic` entry
/// (`"+:regex": {bits, group_size, sym}`, matched with `re.match`; read by GPTQModel,
/// transformers through it, and vLLM's gptq / gptq_marlin) naming its modules.
#[derive(Clone, Debug, PartialEq)]
pub struct GptqLayout {
    pub base: GptqConfig,
    /// Other configs with their module names, in first-seen order.
    pub overrides: Vec<(GptqConfig, Vec<String>)>,
}

impl GptqLayout {
    pub fn for_tensors<'a>(tensors: impl IntoIterator<Item = (&'a str, &'a QuantizedTensor)>) -> Result<Self> {
        let mut by_cfg: Vec<(GptqConfig, Vec<String>)> = vec![];
        let mut desc_act = false;
        for (name, q) in tensors {
            let cfg = GptqConfig::of_tensor(name, q)?;
            desc_act |= q.g_idx.is_some();
            match by_cfg.iter_mut().find(|(c, _)| *c == cfg) {
                Some((_, names)) => names.push(name.to_string()),
                None => by_cfg.push((cfg, vec![name.to_string()])),
            }
        }
        if by_cfg.is_empty() {
            return Err(Error::option("format", "no quantized tensors to write"));
        }
        // The most common config is the base (the first on a tie: deterministic).
        let most = (0..by_cfg.len()).fold(0, |m, k| if by_cfg[k].1.len() > by_cfg[m].1.len() { k } else { m });
        let (mut base, _) = by_cfg.remove(most);
        base.desc_act = desc_act;
        for (c, _) in &mut by_cfg {
            c.desc_act = desc_act;
        }
        Ok(Self { base, overrides: by_cfg })
    }

    /// The `dynamic` entries of the overrides: key `+:pattern`, value the keys that differ
    /// from the base.
    pub fn dynamic(&self) -> Vec<(String, Value)> {
        self.overrides
            .iter()
            .map(|(c, names)| {
                let mut v = serde_json::Map::new();
                if c.bits != self.base.bits {
                    v.insert("bits".into(), json!(c.bits));
                }
                if c.group_size != self.base.group_size {
                    v.insert("group_size".into(), json!(c.group_size.map_or(-1, |g| g as i64)));
                }
                if c.sym != self.base.sym {
                    v.insert("sym".into(), json!(c.sym));
                }
                (format!("+:{}", modules_regex(names)), Value::Object(v))
            })
            .collect()
    }
}

/// Escape `text` for a Python regular expression.
pub fn py_escape(text: &str) -> String {
    let mut s = String::with_capacity(text.len());
    for c in text.chars() {
        if !c.is_ascii_alphanumeric() && c != '_' {
            s.push('\\');
        }
        s.push(c);
    }
    s
}

/// One anchored pattern matching exactly `names`: block linears are grouped by projection,
/// projections over the same blocks share one alternation
/// (`model\.layers\.(?:0|1)\.(?:self_attn\.q_proj|...)`). Where q/k/v (gate/up) are all
/// there, vLLM's fused `qkv_proj` (`gate_up_proj`) is matched too: vLLM looks overrides up
/// by the fused layer's name.
fn modules_regex(names: &[String]) -> String {
    let mut by_proj: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    let mut other: Vec<&str> = vec![];
    for n in names {
        match n.strip_prefix("model.layers.").and_then(|r| r.split_once('.')) {
            Some((b, proj)) if b.bytes().all(|c| c.is_ascii_digit()) => by_proj.entry(proj).or_default().push(b),
            _ => other.push(n),
        }
    }
    // Projections grouped by their set of blocks.
    let mut groups: Vec<(Vec<&str>, Vec<String>)> = vec![];
    for (proj, blocks) in by_proj {
        match groups.iter_mut().find(|(b, _)| *b == blocks) {
            Some((_, projs)) => projs.push(proj.to_string()),
            None => groups.push((blocks, vec![proj.to_string()])),
        }
    }
    let mut alts: Vec<String> = other.iter().map(|n| py_escape(n)).collect();
    for (blocks, mut projs) in groups {
        for (parts, fused) in [
            (["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"].as_slice(), "self_attn.qkv_proj"),
            (["mlp.gate_proj", "mlp.up_proj"].as_slice(), "mlp.gate_up_proj"),
        ] {
            if parts.iter().all(|p| projs.iter().any(|q| q == p)) && !projs.iter().any(|q| q == fused) {
                projs.push(fused.to_string());
            }
        }
        let projs: Vec<String> = projs.iter().map(|p| py_escape(p)).collect();
        let block = if blocks.len() == 1 { blocks[0].to_string() } else { format!("(?:{})", blocks.join("|")) };
        alts.push(format!("model\\.layers\\.{block}\\.(?:{})", projs.join("|")));
    }
    format!("^(?:{})$", alts.join("|"))
}

fn unstorable(name: &str, s: &QuantScheme) -> Error {
    Error::tensor(name, format!("scheme {s} cannot be stored in gptq (integer codes only); use compressed-tensors"))
}

/// The GPTQ tensors of one linear (`prefix` = module name), in name order.
pub fn to_tensors(q: &QuantizedTensor, prefix: &str) -> Result<Vec<RawTensor>> {
    let bits = match q.scheme.format {
        NumberFormat::Int { bits } => bits,
        _ => return Err(unstorable(prefix, &q.scheme)),
    };
    check_tensor(prefix, q)?;
    let (rows, cols) = (q.rows, q.cols);
    if rows % GPTQ_DIM_MULTIPLE != 0 || cols % GPTQ_DIM_MULTIPLE != 0 {
        return Err(Error::tensor(
            prefix,
            format!("shape [{rows}, {cols}]: gptq needs in and out features divisible by {GPTQ_DIM_MULTIPLE} (AutoGPTQ allocates qweight as [in // 32 * bits, out])"),
        ));
    }
    let zeros = q.zeros.as_ref().expect("checked: integer tensors carry zero points");
    let half = 1u8 << (bits - 1);
    if let Some(i) = zeros.iter().position(|&z| z == 0 || (q.scheme.symmetric && z != half)) {
        let why = if zeros[i] == 0 {
            "gptq stores zero - 1 per field, so zero point 0 cannot be stored (use --sym or compressed-tensors)"
                .to_string()
        } else {
            format!("symmetric scheme needs zero point {half}")
        };
        return Err(Error::tensor(prefix, format!("zero point {} at parameter index {i}: {why}", zeros[i])));
    }
    // Per-group parameters [G, out] (transposed); a per-tensor scheme expands to per-channel.
    let groups = q.groups_per_row();
    let param = |r: usize, g: usize| q.param_index(r, g);
    let mut scales_t = vec![0.0f32; groups * rows];
    let mut zeros_t = vec![0u8; groups * rows];
    for g in 0..groups {
        for r in 0..rows {
            scales_t[g * rows + r] = q.scales[param(r, g)];
            zeros_t[g * rows + r] = (zeros[param(r, g)] - 1) & ((1u16 << bits) - 1) as u8;
        }
    }
    let mut codes_t = vec![0u8; rows * cols]; // [in, out]
    for r in 0..rows {
        for c in 0..cols {
            codes_t[c * rows + r] = q.codes[r * cols + c];
        }
    }
    let (qweight, qw_shape) = pack_matrix(&codes_t, cols, rows, Axis::Rows, bits, PackRule::Stream);
    let (qzeros, qz_shape) = pack_matrix(&zeros_t, groups, rows, Axis::Cols, bits, PackRule::Stream);
    let g_idx: Vec<i32> = q.column_groups().iter().map(|&g| g as i32).collect();
    Ok(vec![
        RawTensor::from_i32(format!("{prefix}.g_idx"), &[cols], &g_idx),
        RawTensor::from_words(format!("{prefix}.qweight"), &qw_shape, &qweight),
        RawTensor::from_words(format!("{prefix}.qzeros"), &qz_shape, &qzeros),
        RawTensor::from_f16(format!("{prefix}.scales"), &[groups, rows], &scales_t),
    ])
}

/// Rebuild one linear from its GPTQ tensors (`get` looks a tensor up by full name),
/// checking every shape against `cfg`; a contradiction names the tensor and both values.
pub fn from_tensors<'a>(
    prefix: &str,
    get: &dyn Fn(&str) -> Option<TensorView<'a>>,
    cfg: &GptqConfig,
) -> Result<QuantizedTensor> {
    let name = |s: &str| format!("{prefix}.{s}");
    let need = |s: &str| {
        get(&name(s)).ok_or_else(|| Error::tensor(name(s), "missing (gptq linears need qweight, qzeros, scales)"))
    };
    let (qweight, qzeros, scales) = (need("qweight")?, need("qzeros")?, need("scales")?);
    let g_idx_view = get(&name("g_idx"));
    let bits = cfg.bits as usize;
    if scales.shape().len() != 2 || qweight.shape().len() != 2 {
        return Err(Error::tensor(
            name("scales"),
            format!("shape {:?} / qweight {:?}: expected 2-D", scales.shape(), qweight.shape()),
        ));
    }
    let (groups, out) = (scales.shape()[0], scales.shape()[1]);
    let cols = match &g_idx_view {
        Some(g) => g.shape().first().copied().unwrap_or(0),
        None => qweight.shape()[0] * 32 / bits,
    };
    if cols * bits % 32 != 0 || out * bits % 32 != 0 {
        return Err(Error::tensor(
            prefix,
            format!("in = {cols}, out = {out} cannot be packed in whole words at bits = {bits} (config)"),
        ));
    }
    for (t, view, shape) in
        [("qweight", &qweight, [cols * bits / 32, out]), ("qzeros", &qzeros, [groups, out * bits / 32])]
    {
        if view.shape() != shape {
            let msg = format!(
                "shape {:?}, but config bits = {bits} with in = {cols}, out = {out} needs {shape:?}",
                view.shape()
            );
            return Err(Error::tensor(name(t), msg));
        }
    }
    let expect_groups = cfg.group_size.map_or(1, |g| cols.div_ceil(g));
    if groups != expect_groups {
        return Err(Error::tensor(
            name("scales"),
            format!(
                "{groups} groups, but config group_size = {} with in = {cols} gives {expect_groups}",
                cfg.group_size.map_or(-1, |g| g as i64)
            ),
        ));
    }
    let codes_t = unpack_tensor(&name("qweight"), &qweight, cols, out, Axis::Rows, cfg.bits, PackRule::Stream)?;
    let fields = unpack_tensor(&name("qzeros"), &qzeros, groups, out, Axis::Cols, cfg.bits, PackRule::Stream)?;
    let scales_t = read_floats(&name("scales"), &scales)?;
    let offset = if cfg.v2 { 0 } else { 1 };
    let half = 1u16 << (bits - 1);
    let mut codes = vec![0u8; out * cols];
    for r in 0..out {
        for c in 0..cols {
            codes[r * cols + c] = codes_t[c * out + r];
        }
    }
    let (mut sc, mut zs) = (vec![0.0f32; out * groups], vec![0u8; out * groups]);
    for g in 0..groups {
        for r in 0..out {
            let z = fields[g * out + r] as u16 + offset;
            if cfg.sym && z != half {
                return Err(Error::tensor(
                    name("qzeros"),
                    format!("zero point {z} at group {g} column {r}, but config sym = true needs {half}"),
                ));
            }
            // 8-bit v1 field 255 means zero 256 to the kernels: not representable here.
            zs[r * groups + g] = u8::try_from(z).map_err(|_| {
                Error::tensor(name("qzeros"), format!("zero point {z} at group {g} column {r} exceeds 8 bits"))
            })?;
            sc[r * groups + g] = scales_t[g * out + r];
        }
    }
    if let Some(i) = sc.iter().position(|s| *s <= 0.0) {
        return Err(Error::tensor(
            name("scales"),
            format!("scale {} at row {} group {} is not positive", sc[i], i / groups, i % groups),
        ));
    }
    let scheme = cfg.scheme();
    let g_idx = match g_idx_view {
        None if cfg.desc_act => {
            return Err(Error::tensor(name("g_idx"), "missing, but config desc_act = true needs it"))
        }
        None => None,
        Some(v) => {
            let g = read_ints(&name("g_idx"), &v)?;
            if let Some(c) = g.iter().position(|&x| x < 0 || x as usize >= groups) {
                return Err(Error::tensor(
                    name("g_idx"),
                    format!("g_idx[{c}] = {} but there are {groups} groups", g[c]),
                ));
            }
            let width = scheme.group_width(cols);
            match (0..cols).find(|&c| g[c] as usize != c / width) {
                _ if cfg.desc_act => Some(g.iter().map(|&x| x as u32).collect()),
                None => None,
                Some(c) => {
                    return Err(Error::tensor(
                        name("g_idx"),
                        format!(
                            "g_idx[{c}] = {} but config desc_act = false with group width {width} means {}",
                            g[c],
                            c / width
                        ),
                    ))
                }
            }
        }
    };
    Ok(QuantizedTensor { scheme, rows: out, cols, codes, scales: sc, zeros: Some(zs), g_idx, ggml: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup<'a>(ts: &'a [RawTensor]) -> impl Fn(&str) -> Option<TensorView<'a>> + 'a {
        move |n| ts.iter().find(|t| t.name == n).map(RawTensor::view)
    }

    fn tensor(scheme: QuantScheme, rows: usize, cols: usize) -> QuantizedTensor {
        let groups = scheme.groups_per_row(cols);
        let n = if scheme.granularity == Granularity::PerTensor { 1 } else { rows * groups };
        let maxq = scheme.maxq() as usize;
        let codes = (0..rows * cols).map(|i| ((i * 7 + i / 3) % (maxq + 1)) as u8).collect();
        let zeros =
            (0..n).map(|i| if scheme.symmetric { (maxq as u8 / 2) + 1 } else { 1 + (i % maxq) as u8 }).collect();
        let scales = (0..n).map(|i| 0.5 + i as f32 / 64.0).collect();
        QuantizedTensor { scheme, rows, cols, codes, scales, zeros: Some(zeros), g_idx: None, ggml: None }
    }

    #[test]
    fn round_trip_every_bit_width_and_granularity() {
        for bits in [2u8, 3, 4, 8] {
            let base = QuantScheme::int(bits).unwrap();
            for s in
                [base, base.group(32).unwrap(), base.group(48).unwrap(), base.asymmetric().unwrap().group(32).unwrap()]
            {
                let q = tensor(s, 64, 96);
                let ts = to_tensors(&q, "m").unwrap();
                let cfg = GptqConfig::for_tensors([("m", &q)]).unwrap();
                let back = from_tensors("m", &lookup(&ts), &cfg).unwrap();
                assert_eq!(back, q, "{s}");
            }
        }
    }

    #[test]
    fn per_tensor_expands_losslessly_and_act_order_keeps_g_idx() {
        let q = tensor(QuantScheme::int(4).unwrap().per_tensor(), 32, 64);
        let ts = to_tensors(&q, "m").unwrap();
        let cfg = GptqConfig::for_tensors([("m", &q)]).unwrap();
        assert_eq!(cfg.group_size, None);
        let back = from_tensors("m", &lookup(&ts), &cfg).unwrap();
        assert_eq!(back.scheme.granularity, Granularity::PerChannel);
        assert_eq!(back.dequantize(), q.dequantize());

        let mut q = tensor(QuantScheme::int(3).unwrap().group(16).unwrap(), 32, 64);
        q.g_idx = Some((0..64).map(|c| ((c * 5) % 4) as u32).collect());
        let cfg = GptqConfig::for_tensors([("m", &q)]).unwrap();
        assert!(cfg.desc_act);
        let back = from_tensors("m", &lookup(&to_tensors(&q, "m").unwrap()), &cfg).unwrap();
        assert_eq!(back, q);
        // The same tensors under a config claiming desc_act = false: a contradiction.
        let e = from_tensors("m", &lookup(&to_tensors(&q, "m").unwrap()), &GptqConfig { desc_act: false, ..cfg })
            .unwrap_err();
        assert!(e.to_string().contains("desc_act = false"), "{e}");
    }

    #[test]
    fn unstorable_inputs_are_refused_with_reason() {
        let e = to_tensors(&tensor(QuantScheme::int(4).unwrap(), 32, 40), "m").unwrap_err().to_string();
        assert!(e.contains("divisible by 32"), "{e}");
        let mut q = tensor(QuantScheme::int(4).unwrap().asymmetric().unwrap(), 32, 32);
        q.zeros.as_mut().unwrap()[3] = 0;
        let e = to_tensors(&q, "m").unwrap_err().to_string();
        assert!(e.contains("zero point 0"), "{e}");
        let fp8 = QuantizedTensor {
            scheme: QuantScheme::fp8_e4m3(),
            rows: 32,
            cols: 32,
            codes: vec![0; 1024],
            scales: vec![1.0; 32],
            zeros: None,
            g_idx: None,
            ggml: None,
        };
        assert!(to_tensors(&fp8, "m").unwrap_err().to_string().contains("cannot be stored in gptq"));
        let a = tensor(QuantScheme::int(4).unwrap(), 32, 32);
        let b = tensor(QuantScheme::int(8).unwrap(), 32, 32);
        assert!(GptqConfig::for_tensors([("a", &a), ("b", &b)]).unwrap_err().to_string().contains("one scheme"));
    }

    #[test]
    fn mixed_schemes_become_dynamic_entries_matching_exactly_their_modules() {
        use crate::format::compressed_tensors::PyMatch;
        let s64 = QuantScheme::int(4).unwrap().group(64).unwrap();
        let s128 = QuantScheme::int(4).unwrap().group(128).unwrap();
        let names: Vec<String> = (0..4)
            .flat_map(|b| {
                ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.down_proj"]
                    .map(|p| format!("model.layers.{b}.{p}"))
            })
            .collect();
        let qs: Vec<QuantizedTensor> = names
            .iter()
            .map(|n| {
                let late = n.starts_with("model.layers.2.") || n.starts_with("model.layers.3.");
                tensor(if n.ends_with("down_proj") || late { s128 } else { s64 }, 64, 256)
            })
            .collect();
        let layout = GptqLayout::for_tensors(names.iter().map(String::as_str).zip(&qs)).unwrap();
        assert_eq!(layout.base.group_size, Some(128), "the most common scheme is the base");
        let dynamic = layout.dynamic();
        assert_eq!(dynamic.len(), 1);
        let (key, v) = &dynamic[0];
        assert_eq!(v, &json!({"group_size": 64}));
        let re = PyMatch::new(key.strip_prefix("+:").unwrap()).unwrap();
        for (n, q) in names.iter().zip(&qs) {
            assert_eq!(re.matches(n), q.scheme == s64, "{n} against {key}");
        }
        // vLLM looks the fused projection up by its own name.
        assert!(re.matches("model.layers.0.self_attn.qkv_proj") && !re.matches("model.layers.2.self_attn.qkv_proj"));
        assert!(!re.matches("model.layers.0.self_attn.q_proj_x") && !re.matches("model.layers.10.self_attn.q_proj"));
        assert!(GptqConfig::for_tensors(names.iter().map(String::as_str).zip(&qs)).is_err());
    }

    #[test]
    fn config_json_round_trips() {
        let cfg = GptqConfig { bits: 3, group_size: Some(128), desc_act: true, sym: false, v2: false };
        let v = cfg.quantization_config();
        assert_eq!(v["quant_method"], "gptq");
        assert_eq!(v["checkpoint_format"], "gptq");
        assert_eq!(GptqConfig::from_json(&v, Path::new("config.json")).unwrap(), cfg);
        let v = GptqConfig { group_size: None, ..cfg.clone() }.quantize_config();
        assert_eq!(v["group_size"], -1);
        assert!(GptqConfig::from_json(&json!({"bits": 5}), Path::new("c")).is_err());
    }
}
