//! Issue 21: group sizes the formats' loaders refuse. SmolLM2's 576-wide linears do not
//! hold groups of 128 (compressed-tensors: "tensor column shape must be divisible by the
//! given group_size"; vLLM's kernels and AutoAWQ likewise), so those linears fall back to
//! a group that divides them, written as each format's own per-module override, or the run
//! is refused before any work.

mod common;

use quantize::format::QuantScheme;
use quantize::io::checkpoint::read_quantized_checkpoint;
use serde_json::Value;
use std::path::Path;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn quantization_config(dir: &Path) -> Value {
    let cfg: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    cfg["quantization_config"].clone()
}

fn int4_asym(group: usize) -> QuantScheme {
    QuantScheme::int(4).unwrap().group(group).unwrap().asymmetric().unwrap()
}

/// The default (`--group-fallback auto`): compressed-tensors keeps `down_proj` (1536 wide)
/// at 128 and gives the 576-wide linears 64, as two config groups; gptq and awq, whose
/// configs transformers reads as one scheme, take 64 throughout; all three read back here
/// with the same weights where the schemes agree, and an explicit recipe with
/// `group_fallback = 64` gives the same tensors.
#[test]
fn the_fallback_is_written_as_each_formats_per_module_override() {
    let tmp = tempfile::tempdir().unwrap();
    let m = common::smollm2_dir();
    let out = |f: &str| tmp.path().join(f);
    for f in ["gptq", "compressed-tensors", "awq"] {
        let (ok, err) = common::quantize(&[s(&m), "--method", "rtn", "--format", f, "-o", s(&out(f))]);
        assert!(ok, "{f}: {err}");
        assert!(err.contains("group fallback"), "{f}: the fallback is said: {err}");
    }

    let gptq = quantization_config(&out("gptq"));
    assert_eq!(gptq["group_size"], 64, "{gptq}");
    assert!(gptq.get("dynamic").is_none(), "{gptq}");

    let ct = quantization_config(&out("compressed-tensors"));
    let groups = ct["config_groups"].as_object().unwrap();
    let mut sizes: Vec<(i64, usize)> = groups
        .values()
        .map(|g| (g["weights"]["group_size"].as_i64().unwrap(), g["targets"].as_array().unwrap().len()))
        .collect();
    sizes.sort();
    assert_eq!(sizes, vec![(64, 180), (128, 30)], "{ct}");

    let awq = quantization_config(&out("awq"));
    assert_eq!(awq["group_size"], 64, "{awq}");

    // The same weights in every layout where the schemes agree.
    let read = |f: &str| read_quantized_checkpoint(&out(f)).unwrap().quantized;
    let (g, c, a) = (read("gptq"), read("compressed-tensors"), read("awq"));
    assert_eq!(g.len(), 210);
    for (name, q) in &g {
        assert_eq!(q.scheme, int4_asym(64), "{name}");
        assert_eq!(q.dequantize(), a[name].dequantize(), "{name}: gptq and awq differ");
        let want = if name.ends_with("down_proj") { int4_asym(128) } else { int4_asym(64) };
        assert_eq!(c[name].scheme, want, "{name}");
        if !name.ends_with("down_proj") {
            assert_eq!(q.dequantize(), c[name].dequantize(), "{name}: gptq and compressed-tensors differ");
        }
    }

    // A recipe saying the same thing explicitly writes the same tensors.
    let recipe = tmp.path().join("r.toml");
    std::fs::write(
        &recipe,
        "format = \"compressed-tensors\"\ngroup_fallback = 64\n[scheme]\ntype = \"int4\"\ngroup_size = 128\n\
         symmetric = false\n[[modifier]]\ntype = \"rtn\"\n",
    )
    .unwrap();
    let (ok, err) = common::quantize(&[s(&m), "--recipe", s(&recipe), "-o", s(&out("recipe"))]);
    assert!(ok, "{err}");
    // (The shards' metadata hold each run's own recipe text: compare the tensors.)
    let (a, b) = (
        std::fs::read(out("recipe").join("model.safetensors")).unwrap(),
        std::fs::read(out("compressed-tensors").join("model.safetensors")).unwrap(),
    );
    let (a, b) =
        (safetensors::SafeTensors::deserialize(&a).unwrap(), safetensors::SafeTensors::deserialize(&b).unwrap());
    let mut names = a.names();
    names.sort();
    assert_eq!(names.len(), b.names().len());
    for n in names {
        assert!(a.tensor(n).unwrap().data() == b.tensor(n).unwrap().data(), "{n}: recipe and flags differ");
    }
    assert_eq!(quantization_config(&out("recipe")), ct);
}

/// Recipe overrides in the gptq layout are GPTQModel `dynamic` entries (what GPTQModel and
/// vLLM read), said to be unreadable by transformers, and read back here.
#[test]
fn gptq_overrides_are_dynamic_entries() {
    let tmp = tempfile::tempdir().unwrap();
    let m = common::smollm2_dir();
    let recipe = tmp.path().join("r.toml");
    std::fs::write(
        &recipe,
        "format = \"gptq\"\n[scheme]\ntype = \"int4\"\ngroup_size = 64\nsymmetric = false\n\
         [[modifier]]\ntype = \"rtn\"\n[[override]]\ntargets = [\"re:.*down_proj$\"]\n\
         [override.scheme]\ntype = \"int8\"\n",
    )
    .unwrap();
    let out = tmp.path().join("out");
    let (ok, err) = common::quantize(&[s(&m), "--recipe", s(&recipe), "-o", s(&out)]);
    assert!(ok, "{err}");
    assert!(err.contains("transformers (optimum) reads one gptq scheme"), "{err}");
    let qc = quantization_config(&out);
    let dynamic = qc["dynamic"].as_object().unwrap();
    let (key, over) = dynamic.iter().find(|(k, _)| k.starts_with("+:")).unwrap();
    assert!(key.contains("down_proj"), "{key}");
    assert_eq!(over, &serde_json::json!({"bits": 8, "group_size": -1, "sym": true}));
    let q = read_quantized_checkpoint(&out).unwrap().quantized;
    for (name, t) in &q {
        let want = if name.ends_with("down_proj") { QuantScheme::int(8).unwrap().per_channel() } else { int4_asym(64) };
        assert_eq!(t.scheme, want, "{name}");
    }
}

/// Without a fallback (a recipe without the key) the run is refused before any work,
/// naming the tensor, its width and the group sizes that fit; a fallback that does not
/// fit either, or given where nothing is grouped, is refused too; nothing is written.
#[test]
fn a_group_the_loaders_refuse_is_an_error_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let m = common::smollm2_dir();
    let out = tmp.path().join("out");
    let recipe = tmp.path().join("r.toml");
    std::fs::write(
        &recipe,
        "format = \"compressed-tensors\"\n[scheme]\ntype = \"int4\"\ngroup_size = 128\n\
         [calibration]\nnsamples = 2\nseqlen = 64\n[[modifier]]\ntype = \"gptq\"\n",
    )
    .unwrap();
    let t0 = std::time::Instant::now();
    common::fails_with(
        &[s(&m), "--recipe", s(&recipe), "-o", s(&out)],
        &["model.layers.0.self_attn.q_proj", "576 input columns", "group size 128", "64, 32", "group_fallback = 64"],
    );
    assert!(t0.elapsed().as_secs() < 30, "refused before calibration");
    common::fails_with(
        &[s(&m), "--method", "rtn", "--group-fallback", "100", "-o", s(&out)],
        &["--group-fallback", "100 does not divide the 576 input columns of model.layers.0.self_attn.q_proj"],
    );
    common::fails_with(
        &[s(&m), "--method", "rtn", "--format", "gptq", "--group-fallback", "100", "-o", s(&out)],
        &["--group-fallback", "100 does not divide every linear's width", "gptq holds one group size"],
    );
    common::fails_with(
        &[s(&m), "--method", "rtn", "--group-fallback", "some", "-o", s(&out)],
        &["--group-fallback", "\"some\""],
    );
    common::fails_with(
        &[s(&m), "--method", "rtn", "--per-channel", "--group-fallback", "64", "-o", s(&out)],
        &["--group-fallback", "does not apply"],
    );
    common::fails_with(
        &[s(&m), "--method", "rtn", "--format", "awq", "--group-fallback", "partial", "-o", s(&out)],
        &["AutoAWQ", "576", "group size 128"],
    );
    // compressed-tensors 0.19 removed actorder "group" (a g_idx per column).
    common::fails_with(
        &[
            s(&m),
            "--method",
            "gptq",
            "--group-size",
            "64",
            "--no-static-groups",
            "--nsamples",
            "2",
            "--seqlen",
            "64",
            "-o",
            s(&out),
        ],
        &["--no-static-groups", "g_idx", "compressed-tensors 0.19", "--format gptq"],
    );
    assert!(!out.exists());
}
