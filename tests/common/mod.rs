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

/// Run the `quantize` binary (`QUANTIZE_BIN` overrides it, e.g. to pin an older build's
/// outputs): success and stderr; a panic is a test failure.
pub fn quantize(args: &[&str]) -> (bool, String) {
    let bin = std::env::var("QUANTIZE_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_quantize").to_string());
    let out = std::process::Command::new(bin).args(args).output().expect("run quantize");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "quantize {args:?} panicked: {stderr}");
    (out.status.success(), stderr)
}

/// `quantize args` fails, and its message names every one of `needles`.
pub fn fails_with(args: &[&str], needles: &[&str]) {
    let (ok, err) = quantize(args);
    assert!(!ok, "quantize {args:?} should fail");
    for n in needles {
        assert!(err.contains(n), "quantize {args:?}: error should mention {n:?}: {err}");
    }
}

/// The files of a directory (name, bytes), sorted by name.
pub fn files_of(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap()))
        .collect();
    v.sort();
    v
}

/// A copy of the real model's directory with config.json edited by `edit` and links to
/// its other files.
pub fn model_with_config(root: &Path, name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    dir_with_config(&smollm2_dir(), root, name, edit)
}

/// A copy of model directory `src` whose config.json is edited by `edit`; every other
/// file is a symlink to the original.
pub fn dir_with_config(src: &Path, root: &Path, name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir(&dir).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        if e.file_name() != "config.json" {
            std::os::unix::fs::symlink(e.path(), dir.join(e.file_name())).unwrap();
        }
    }
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    dir
}

/// Directories `a` and `b` hold the same files with the same bytes (`what` names the
/// two runs in the message).
pub fn assert_same_files(a: &Path, b: &Path, what: &str) {
    let (fa, fb) = (files_of(a), files_of(b));
    assert_eq!(fa.iter().map(|f| &f.0).collect::<Vec<_>>(), fb.iter().map(|f| &f.0).collect::<Vec<_>>(), "{what}");
    for ((name, x), (_, y)) in fa.iter().zip(&fb) {
        assert!(x == y, "{name} differs {what}");
    }
}
