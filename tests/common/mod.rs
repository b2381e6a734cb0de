//! Shared test fixtures: the real assets (fetched by scripts/fetch_assets.sh, which
//! .ci/run calls first) and the converted SmolLM2 directory, made once per target dir.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The asset cache; a missing asset is a test failure, never a skip.
pub fn assets() -> PathBuf {
    let dir =
        std::env::var_os("QUANTIZE_ASSETS").map(PathBuf::from).unwrap_or_else(|| repo_root().join(".cache/assets"));
    let gguf = dir.join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        gguf.exists(),
        "missing {}: run scripts/fetch_assets.sh first (CI runs it before the tests)",
        gguf.display()
    );
    dir
}

pub fn smollm2_gguf() -> PathBuf {
    assets().join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
}

pub fn brown_heldout() -> PathBuf {
    assets().join("brown/brown_heldout.txt")
}

pub fn brown_calib() -> PathBuf {
    assets().join("brown/brown_calib.txt")
}

/// SmolLM2 converted to an f32 Hugging Face directory, shared by all tests of a run.
/// Tests of one binary run on several threads: the conversion happens once under a lock
/// (its temporary directory is named by process id, so two threads must not race on it).
pub fn smollm2_dir() -> PathBuf {
    static CONVERTED: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    CONVERTED
        .get_or_init(|| {
            let dir = repo_root().join("target/test-models/smollm2-f32");
            if !dir.join("config.json").exists() {
                std::fs::create_dir_all(dir.parent().unwrap()).unwrap();
                match quantize::convert::convert_gguf(&smollm2_gguf(), &dir, quantize::convert::OutDType::F32) {
                    Ok(_) | Err(quantize::Error::OutputExists { .. }) => {}
                    Err(e) => panic!("converting the test model failed: {e}"),
                }
            }
            dir
        })
        .clone()
}

/// `|a - b| <= max(rel * (|a| + |b|) / 2, abs)`.
pub fn close(a: f64, b: f64, rel: f64, abs: f64) -> bool {
    (a - b).abs() <= (rel * (a.abs() + b.abs()) / 2.0).max(abs)
}

pub fn tmp_out(root: &Path, name: &str) -> PathBuf {
    root.join(name)
}
