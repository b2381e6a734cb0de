//! The block driver and recipes end to end on the real SmolLM2: every method's checkpoint
//! pinned by a digest of its tensors (taken before the one-driver redesign, so a refactor
//! that changes a result fails here), a run repeated byte for byte from its `recipe.toml`,
//! and options or recipes that do not fit refused with a message naming them.

mod common;

use sha2::{Digest, Sha256};
use std::path::Path;
use std::process::Command;

fn quantize(args: &[&str]) -> (bool, String) {
    let bin = std::env::var("QUANTIZE_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_quantize").to_string());
    let out = Command::new(bin).args(args).output().expect("run quantize");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "quantize {args:?} panicked: {stderr}");
    (out.status.success(), stderr)
}

/// sha256 of what a checkpoint computes: every tensor (name, dtype, shape, bytes, in name
/// order) and config.json's `quantization_config`; not the run record in `__metadata__`.
fn digest(dir: &Path) -> String {
    let mut h = Sha256::new();
    let mut files: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    for f in files.iter().filter(|f| f.extension().is_some_and(|e| e == "safetensors")) {
        let bytes = std::fs::read(f).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut names = st.names();
        names.sort();
        for n in names {
            let t = st.tensor(n).unwrap();
            h.update(format!("{n} {:?} {:?}", t.dtype(), t.shape()).as_bytes());
            h.update(t.data());
        }
    }
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    h.update(cfg["quantization_config"].to_string().as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Small calibration: the code paths are the full ones.
const SMALL: [&str; 4] = ["--nsamples", "2", "--seqlen", "64"];

#[test]
fn every_method_gives_the_pinned_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let m = common::smollm2_dir();
    let calib = common::brown_calib();
    let c = calib.to_str().unwrap();
    let runs: [(&str, &[&str], bool, &str); 8] = [
        (
            "rtn-int4-g128",
            &["--method", "rtn", "--bits", "4", "--group-size", "128"],
            false,
            "8bdcfbfb358931c3c6e29f629bb61ae17140903427a8589f36219b8286f00cb2",
        ),
        ("fp8", &["--method", "fp8"], false, "19b414329c28aaa4cef07ee37a8e67df4f55359fd75af83b5daed1eada64a593"),
        (
            "gptq-int4-g128-asym-ao-sg-mse",
            &[
                "--method",
                "gptq",
                "--bits",
                "4",
                "--group-size",
                "128",
                "--asym",
                "--act-order",
                "--static-groups",
                "--mse",
            ],
            true,
            "23b3d47774159aedc7b41caf0526a17de7b437e9a748ee74d591c05631409927",
        ),
        (
            "awq-int4-g64-asym",
            &["--method", "awq", "--group-size", "64", "--asym", "--awq-grid", "2"],
            true,
            "3c5be9966683e054e8205c57aae812b21b4b1bdbb4988dc17d86aa501330f62d",
        ),
        (
            "awq-gptq-int4-g64-asym",
            &["--method", "awq+gptq", "--group-size", "64", "--asym", "--awq-grid", "2", "--act-order"],
            true,
            "b0f02e06b4a220094ee9973548e485553e6c72d58516390a34d28958c8b61c23",
        ),
        (
            "w8a8-int8-static",
            &["--scheme", "w8a8-int8", "--static"],
            true,
            "6d2138d2a34ad437c00ee52ef5db8c6d5152b52a61e709fefd86fc712e9c5f32",
        ),
        (
            "w8a8-int8-dynamic",
            &["--scheme", "w8a8-int8", "--dynamic", "--smooth", "0"],
            false,
            "6d0f9edd0e343253f4228e888ea6cc6699f66e9da7faca546f3fc1a0c39270d2",
        ),
        (
            "w8a8-int8-gptq-static",
            &["--method", "gptq", "--scheme", "w8a8-int8", "--static"],
            true,
            "91d4ef5d028345f3795ff3817d8dd924b03335fb52a9ff0a87bc3aeadbe13b4f",
        ),
    ];
    let mut wrong = vec![];
    for (name, args, calibrated, want) in runs {
        let out = tmp.path().join(name);
        let mut a = vec![m.to_str().unwrap(), "-o", out.to_str().unwrap()];
        a.extend(args);
        if calibrated {
            a.extend(SMALL);
            a.extend(["--calib", c]);
        }
        let (ok, err) = quantize(&a);
        assert!(ok, "{name}: {err}");
        let got = digest(&out);
        if got != want {
            wrong.push(format!("{name}: got {got}"));
        }
    }
    assert!(wrong.is_empty(), "checkpoints changed:\n{}", wrong.join("\n"));
}
