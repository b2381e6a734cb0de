//! Replays, on the stable toolchain, every input the fuzz targets were seeded with
//! (`fuzz/seeds/<target>/`, made by `fuzz/src/bin/make_seeds.rs`) and every crash
//! input a fuzzing campaign found (`fuzz/regressions/<target>/`), through the same
//! harness the libFuzzer targets run (`fuzz/src/harness.rs`). Each must return
//! without a panic. See docs/RELIABILITY.md.

#[path = "../fuzz/src/harness.rs"]
#[allow(dead_code)]
mod harness;

use std::path::Path;

fn replay(kind: &str) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join(kind);
    let mut n = 0;
    for (target, run) in harness::TARGETS {
        let Ok(entries) = std::fs::read_dir(root.join(target)) else { continue };
        let mut files: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        files.sort();
        for f in files {
            let data = std::fs::read(&f).unwrap();
            let r = std::panic::catch_unwind(|| run(&data));
            assert!(r.is_ok(), "fuzz target {target} panicked on {}", f.display());
            n += 1;
        }
    }
    n
}

#[test]
fn seeds_and_crash_inputs_run_clean() {
    let seeds = replay("seeds");
    assert!(seeds >= 15, "only {seeds} seed inputs under fuzz/seeds (run make_seeds)");
    replay("regressions");
}

/// The checkpoint seeds are whole, valid checkpoints (so fuzzing starts from inputs that
/// reach the loader and the forward, not from ones refused at the first byte).
#[test]
fn checkpoint_seeds_load_and_run() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/checkpoint");
    let tmp = tempfile::tempdir().unwrap();
    let mut n = 0;
    for e in std::fs::read_dir(root).unwrap().flatten() {
        let data = std::fs::read(e.path()).unwrap();
        let cut = data.iter().position(|&b| b == 0).unwrap();
        let dir = tmp.path().join(e.file_name());
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("config.json"), &data[..cut]).unwrap();
        std::fs::write(dir.join("model.safetensors"), &data[cut + 1..]).unwrap();
        let (model, info) = quantize::model::load::load_model(&dir).unwrap();
        assert!(info.quantized_linears > 0, "{}", e.path().display());
        let logits = model.forward(&[0, 1], 1, 2).unwrap();
        assert!(logits.iter().all(|v| v.is_finite()));
        n += 1;
    }
    assert_eq!(n, 5);
}
