//! Issue 15: the inputs an adversary found that crashed the tool or made it exit 0 with a
//! broken result, and interrupted runs. Each is a clear error naming the culprit (or is
//! handled), found before any long work, with nothing left behind.

mod common;

use common::{dir_with_config, fails_with, model_with_config, quantize};
use serde_json::json;
use std::path::Path;
use std::process::Command;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// 15.1: a quantized checkpoint whose linears contradict config.json used to panic in
/// `QuantizedLinear::forward`; 15.5 for eval: extra blocks are refused too.
#[test]
fn quantized_checkpoint_contradicting_its_config() {
    let tmp = tempfile::tempdir().unwrap();
    let q = tmp.path().join("q");
    let (ok, err) =
        quantize(&["--method", "rtn", "--bits", "4", "--group-size", "64", s(&common::smollm2_dir()), "-o", s(&q)]);
    assert!(ok, "{err}");
    let text = common::brown_heldout();
    let ffn = dir_with_config(&q, tmp.path(), "ffn", |c| c["intermediate_size"] = json!(1600));
    fails_with(
        &["eval", "--model", s(&ffn), "--text", s(&text), "--max-windows", "1"],
        &["model.layers.0.mlp.gate_proj", "1536 x 576", "1600 x 576", "intermediate_size"],
    );
    let fewer = dir_with_config(&q, tmp.path(), "fewer", |c| c["num_hidden_layers"] = json!(29));
    fails_with(
        &["eval", "--model", s(&fewer), "--text", s(&text), "--max-windows", "1"],
        &["model.layers.29", "num_hidden_layers = 29"],
    );
}

/// 15.5: one validation of the weights against config.json, at load, for every method
/// (RTN used to exit 0 and write a checkpoint its own eval rejects).
#[test]
fn weights_are_checked_against_the_config_before_any_method() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let vocab = model_with_config(tmp.path(), "vocab", |c| c["vocab_size"] = json!(49153));
    let layers = model_with_config(tmp.path(), "layers", |c| c["num_hidden_layers"] = json!(29));
    let heads = model_with_config(tmp.path(), "heads", |c| {
        c["num_attention_heads"] = json!(27);
        c.as_object_mut().unwrap().remove("head_dim");
    });
    let ffn = model_with_config(tmp.path(), "ffn", |c| c["intermediate_size"] = json!(1500));
    for method in ["rtn", "gptq", "awq", "fp8"] {
        fails_with(
            &["--method", method, s(&vocab), "-o", s(&out)],
            &["model.embed_tokens.weight", "[49152, 576]", "vocab_size = 49153"],
        );
        fails_with(&["--method", method, s(&layers), "-o", s(&out)], &["model.layers.29.", "num_hidden_layers = 29"]);
        fails_with(
            &["--method", method, s(&heads), "-o", s(&out)],
            &["hidden_size (576)", "num_attention_heads (27)", "head_dim"],
        );
        fails_with(
            &["--method", method, s(&ffn), "-o", s(&out)],
            &["model.layers.0.mlp.gate_proj.weight", "[1536, 576]", "intermediate_size = 1500"],
        );
    }
    let text = common::brown_heldout();
    fails_with(&["eval", "--model", s(&vocab), "--text", s(&text)], &["vocab_size = 49153"]);
    assert!(!out.exists());
}

/// 15.6: group sizes that cannot work, and windows beyond the model's positions, are
/// said before any work; a group that leaves a partial last group is a warning.
#[test]
fn group_sizes_and_window_lengths_the_model_cannot_take() {
    let tmp = tempfile::tempdir().unwrap();
    let m = common::smollm2_dir();
    let out = tmp.path().join("out");
    fails_with(
        &["--method", "rtn", "--group-size", "100000", s(&m), "-o", s(&out)],
        &["--group-size", "100000", "576 input columns", "model.layers.0.self_attn.q_proj"],
    );
    fails_with(
        &["--method", "gptq", "--seqlen", "100000", s(&m), "-o", s(&out)],
        &["--seqlen", "100000", "max_position_embeddings = 8192"],
    );
    assert!(!out.exists());
    let (ok, err) =
        quantize(&["--method", "rtn", "--group-size", "7", "--group-fallback", "partial", s(&m), "-o", s(&out)]);
    assert!(ok, "{err}");
    assert!(err.contains("warning: group size 7 does not divide 576 columns"), "{err}");
    let text = common::brown_heldout();
    fails_with(
        &["eval", "--model", s(&m), "--text", s(&text), "--ctx", "9000"],
        &["--ctx", "9000", "max_position_embeddings = 8192"],
    );
}

/// Issue 16's silently wrong eval cases that sit at the same boundary.
#[test]
fn eval_options_that_gave_nonsense() {
    let tmp = tempfile::tempdir().unwrap();
    let m = common::smollm2_dir();
    let text = common::brown_heldout();
    fails_with(&["eval", "--model", s(&m), "--text", s(&text), "--max-windows", "0"], &["--max-windows", "0"]);
    let json = tmp.path().join("report.json");
    std::fs::write(&json, "mine").unwrap();
    fails_with(
        &["eval", "--model", s(&m), "--text", s(&text), "--json", s(&json), "--max-windows", "1"],
        &["--json", "report.json", "already exists"],
    );
    assert_eq!(std::fs::read_to_string(&json).unwrap(), "mine");
    // A baseline of another vocabulary gave a perplexity of about 2 billion.
    let other = common::repo_root().join("tests/fixtures/families/llama3");
    fails_with(
        &["eval", "--model", s(&m), "--baseline", s(&other), "--text", s(&text), "--max-windows", "1"],
        &["--baseline", "vocab_size", "384", "49152"],
    );
    // quantize --json refuses an existing report before the run, not after it.
    let out = tmp.path().join("q");
    fails_with(
        &["--method", "rtn", s(&m), "-o", s(&out), "--json", s(&json)],
        &["--json", "report.json", "already exists"],
    );
    assert!(!out.exists(), "nothing is written");
    assert_eq!(std::fs::read_to_string(&json).unwrap(), "mine");
}

/// 15.8: a dangling symlink at `-o` and an output under a regular file are refused
/// before calibration starts (they used to fail only after the whole run).
#[test]
fn output_location_is_probed_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let m = common::smollm2_dir();
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(tmp.path().join("nowhere"), &link).unwrap();
    fails_with(&["--method", "gptq", s(&m), "-o", s(&link)], &["link", "already exists"]);
    let file = tmp.path().join("plain");
    std::fs::write(&file, "").unwrap();
    let (ok, err) = quantize(&["--method", "gptq", s(&m), "-o", s(&file.join("out"))]);
    assert!(!ok && err.contains("plain is not a directory"), "{err}");
    assert!(!err.contains("windows x"), "the error must come before calibration: {err}");
    fails_with(
        &["--method", "gptq", s(&m), "-o", s(&tmp.path().join("o2")), "--save-stats", s(&link)],
        &["link", "already exists"],
    );
    assert!(!tmp.path().join("o2").exists());
}

/// 15.7: SIGTERM / SIGINT while `convert` writes removes the hidden temporary directory
/// (it used to stay, up to 538 MB); 15.9: a converted model is readable by others.
#[test]
fn interrupted_convert_leaves_nothing_and_outputs_are_world_readable() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let out = tmp.path().join("conv");
        let mut child = Command::new(env!("CARGO_BIN_EXE_quantize"))
            .args(["convert", s(&common::smollm2_gguf()), "-o", s(&out)])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Wait until the temporary directory holds a partial model.safetensors.
        let t0 = std::time::Instant::now();
        let partial = loop {
            let found = std::fs::read_dir(tmp.path())
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .find(|p| p.join("model.safetensors").exists());
            if let Some(p) = found {
                break p;
            }
            assert!(t0.elapsed().as_secs() < 120, "convert never started writing");
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        unsafe { libc::kill(child.id() as i32, signal) };
        let status = child.wait().unwrap();
        let mut err = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
        if status.success() {
            // The signal came after the rename: a whole output, which is also correct.
            assert!(out.join("model.safetensors").exists());
            std::fs::remove_dir_all(&out).unwrap();
        } else {
            assert_eq!(status.code(), Some(130), "{err}");
            assert!(err.contains("interrupted"), "{err}");
            assert!(!out.exists());
        }
        assert!(!partial.exists(), "{} left behind after signal {signal}", partial.display());
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0, "stray files after signal {signal}");
    }
    let out = tmp.path().join("conv");
    let (ok, err) = quantize(&["convert", s(&common::smollm2_gguf()), "-o", s(&out)]);
    assert!(ok, "{err}");
    for f in std::fs::read_dir(&out).unwrap().flatten() {
        let mode = f.metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o044, 0o044, "{} has mode {mode:o}", f.path().display());
    }
}

/// Issue 16: naming `dir/other.safetensors` used to quantize `dir/model.safetensors`; a
/// GGUF given as MODEL gets the convert hint.
#[test]
fn model_argument_names_what_is_read() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = model_with_config(tmp.path(), "m", |_| {});
    std::os::unix::fs::symlink(dir.join("model.safetensors"), dir.join("other.safetensors")).unwrap();
    let out = tmp.path().join("out");
    fails_with(
        &["--method", "rtn", s(&dir.join("other.safetensors")), "-o", s(&out)],
        &["other.safetensors", "name the directory"],
    );
    fails_with(&["--method", "rtn", s(&common::smollm2_gguf()), "-o", s(&out)], &["GGUF", "quantize convert"]);
    let (ok, err) = quantize(&["--method", "rtn", s(&dir.join("model.safetensors")), "-o", s(&out)]);
    assert!(ok, "{err}");
}
