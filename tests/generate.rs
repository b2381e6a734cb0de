//! Generation: the KV cache against the full forward for every family and format, greedy
//! output against transformers' `generate`, the chat template, and bad input.

mod common;

use quantize::generate::chat::{ChatTemplate, Message};
use quantize::generate::sampler::{Sampler, Sampling};
use quantize::generate::{Session, Stop};
use quantize::io::tokenizer::Tokenizer;
use quantize::model::load::load_model;
use quantize::model::LlamaModel;
use std::path::{Path, PathBuf};

const FAMILIES: [&str; 8] = ["llama3", "llama_bias_linear", "qwen2", "qwen3", "mistral", "phi3", "gemma2", "gemma3"];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/families").join(name)
}

/// Largest |a - b| over the largest |b|.
fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    let scale = b.iter().fold(0.0f64, |m, &v| m.max(v.abs() as f64));
    a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).abs()).fold(0.0, f64::max) / scale
}

/// Runs `tokens` through the cache in pieces (a prompt of 7, one of 5, then one at a time)
/// and checks each piece's last logits against the full forward of the prefix.
fn check_cache_against_full_forward(model: &LlamaModel, tokens: &[u32], what: &str) {
    check_cache_within(model, tokens, what, 2e-5)
}

/// [`check_cache_against_full_forward`] within `tol`.
fn check_cache_within(model: &LlamaModel, tokens: &[u32], what: &str, tol: f64) {
    let full = model.forward(tokens, 1, tokens.len()).unwrap();
    let vocab = model.config.vocab_size;
    let mut cache = model.new_cache(tokens.len()).unwrap();
    let mut cuts = vec![7, 12];
    cuts.extend(13..=tokens.len());
    let mut from = 0;
    for to in cuts {
        let last = model.forward_cached(&tokens[from..to], &mut cache).unwrap();
        let want = &full[(to - 1) * vocab..to * vocab];
        // The cached path runs the same kernels; only GEMM blockings of different row
        // counts (and the quantized linear's few-token dot path) reorder sums.
        let e = rel_err(&last, want);
        assert!(e < tol, "{what}: logits at position {} differ from the full forward by {e:.2e}", to - 1);
        assert_eq!(cache.len(), to);
        from = to;
    }
    // The cache is full: one more token is refused, naming the context.
    let err = model.forward_cached(&tokens[..1], &mut cache).unwrap_err().to_string();
    assert!(err.contains("context is full"), "{err}");
}

#[test]
fn the_kv_cache_gives_the_full_forward_logits_in_every_family() {
    // 40 tokens: past mistral's and gemma's sliding windows of 16 and phi3's of 24.
    for name in FAMILIES {
        let dir = fixture(name);
        let model = LlamaModel::load(&dir).unwrap();
        let tokens: Vec<u32> = (0..40u32).map(|i| (i * 37 + 11) % model.config.vocab_size as u32).collect();
        check_cache_against_full_forward(&model, &tokens, name);
    }
}

/// phi3's longrope picks its factors by the sequence length so far, as transformers'
/// `dynamic_rope_update` does: a cache with room beyond `original_max_position_embeddings`
/// (4096) still runs a 40-token sequence on the short factors, as the 40-token forward does.
#[test]
fn a_long_cache_keeps_longrope_on_its_short_factors_for_short_sequences() {
    let model = LlamaModel::load(&fixture("phi3")).unwrap();
    let tokens: Vec<u32> = (0..40u32).map(|i| (i * 37 + 11) % model.config.vocab_size as u32).collect();
    let full = model.forward(&tokens, 1, tokens.len()).unwrap();
    let vocab = model.config.vocab_size;
    let mut cache = model.new_cache(5000).unwrap();
    let last = model.forward_cached(&tokens, &mut cache).unwrap();
    let e = rel_err(&last, &full[39 * vocab..]);
    assert!(e < 2e-5, "a 5000-position cache moved the logits by {e:.2e}");
}

#[test]
fn the_kv_cache_works_for_every_quantized_format() {
    let root = tempfile::tempdir().unwrap();
    let runs: [(&str, &str, &[&str]); 4] = [
        ("rtn", "gptq", &["--bits", "4", "--group-size", "32", "--asym"]),
        ("rtn", "compressed-tensors", &["--bits", "8", "--per-channel"]),
        ("rtn", "awq", &["--bits", "4", "--group-size", "32", "--asym"]),
        ("fp8", "compressed-tensors", &[]),
    ];
    for name in ["llama3", "phi3", "gemma3"] {
        for (method, format, extra) in runs {
            let out = root.path().join(format!("{name}-{method}-{format}"));
            let mut args = vec![fixture(name).to_str().unwrap().to_string(), "--method".into(), method.into()];
            args.extend(["--format".into(), format.into(), "-o".into(), out.to_str().unwrap().into()]);
            args.extend(extra.iter().map(|s| s.to_string()));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let (ok, err) = common::quantize(&args);
            assert!(ok, "{args:?}: {err}");
            let (model, info) = load_model(&out).unwrap();
            assert!(info.quantized_linears > 0);
            let tokens: Vec<u32> = (0..24u32).map(|i| (i * 53 + 5) % model.config.vocab_size as u32).collect();
            check_cache_against_full_forward(&model, &tokens, &format!("{name} {method} {format}"));
        }
    }
}

/// `--dot int8`: the cached path gives the full forward's logits (the row kernels and the
/// GEMM on the same rounded inputs), the logits stay near the exact arithmetic's but are not its, and the
/// option is refused where it cannot apply (naming it).
#[test]
fn int8_inputs_run_cached_as_full_and_near_the_exact_logits() {
    use quantize::model::load::{cpu_quantized_linear_int8_dot, load_model_with};
    let root = tempfile::tempdir().unwrap();
    for (what, extra) in [
        ("int4 g64", &["--bits", "4", "--group-size", "64", "--asym"][..]),
        ("int8", &["--bits", "8", "--per-channel"][..]),
    ] {
        let out = root.path().join(what.replace(' ', "-"));
        let fx = fixture("llama3");
        let mut args = vec![fx.to_str().unwrap(), "--method", "rtn", "-o", out.to_str().unwrap()];
        args.extend(extra);
        let (ok, err) = common::quantize(&args);
        assert!(ok, "{args:?}: {err}");
        let (exact, _) = load_model(&out).unwrap();
        let (int8, _) = load_model_with(&out, &cpu_quantized_linear_int8_dot).unwrap();
        let tokens: Vec<u32> = (0..24u32).map(|i| (i * 53 + 5) % exact.config.vocab_size as u32).collect();
        check_cache_within(&int8, &tokens, &format!("{what} --dot int8"), 2e-5);
        let (a, b) = (int8.forward(&tokens, 1, 24).unwrap(), exact.forward(&tokens, 1, 24).unwrap());
        let e = rel_err(&a, &b);
        assert!(e > 0.0 && e < 0.05, "{what}: int8 inputs moved the logits by {e:.2e}");
    }
    let m = root.path().join("int8");
    let json = root.path().join("bench.json");
    let args = ["bench", "--model", m.to_str().unwrap(), "-p", "8", "-n", "4", "-r", "1", "--dot", "int8", "--json"];
    let (ok, err) = common::quantize(&[&args[..], &[json.to_str().unwrap()]].concat());
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!((v[0]["dot"].as_str(), v[0]["load"]["dot"].as_str()), (Some("int8"), Some("int8")));
    common::fails_with(
        &["eval", "--model", m.to_str().unwrap(), "--dot", "int8", "--device", "gpu"],
        &["--dot int8", "--device gpu"],
    );
    let gguf = common::smollm2_gguf();
    common::fails_with(
        &["bench", "--model", gguf.to_str().unwrap(), "--dot", "int8", "-n", "1"],
        &["--dot int8", "GGUF"],
    );
    common::fails_with(
        &["generate", "--model", m.to_str().unwrap(), "--dot", "int4", "--prompt", "Hi"],
        &["--dot", "int4"],
    );
}

#[derive(serde::Deserialize)]
struct Case {
    prompt: String,
    chat: bool,
    rendered: String,
    prompt_ids: Vec<u32>,
    generated_ids: Vec<u32>,
}

#[derive(serde::Deserialize)]
struct Fixture {
    new_tokens: usize,
    cases: Vec<Case>,
}

/// transformers' greedy `generate` on SmolLM2 (scripts/reference_generate/make_fixtures.py):
/// the same prompt ids (plain and chat-templated) and the same 64 tokens.
#[test]
fn greedy_generation_matches_transformers_token_for_token() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/generate/greedy.json");
    let fx: Fixture = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let dir = common::smollm2_dir();
    let (model, _) = load_model(&dir).unwrap();
    let tok = Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    let template = ChatTemplate::from_model_dir(&dir).unwrap().expect("SmolLM2 has a chat template");
    for case in &fx.cases {
        let ids = if case.chat {
            let text = template.render(&[Message::new("user", &case.prompt)], true).unwrap();
            assert_eq!(text, case.rendered, "chat template rendering");
            tok.encode(&text).unwrap()
        } else {
            tok.encode_prompt(&case.prompt).unwrap()
        };
        assert_eq!(ids, case.prompt_ids, "prompt ids of {:?}", case.prompt);
        let mut session = Session::new(&model, ids.len() + fx.new_tokens).unwrap();
        let mut sampler = Sampler::new(Sampling::default()).unwrap();
        let mut out = vec![];
        let stats = session
            .generate(&ids, fx.new_tokens, &[], &mut sampler, |t| {
                out.push(t);
                Ok(())
            })
            .unwrap();
        assert_eq!(stats.stop, Stop::MaxTokens);
        assert_eq!(out, case.generated_ids, "greedy tokens of {:?}", case.prompt);
    }
}

/// A second turn reuses the cached prefix and runs only the new tokens, with the same
/// result as a fresh session on the whole context.
#[test]
fn a_later_turn_reuses_the_cached_prefix() {
    let model = LlamaModel::load(&fixture("qwen3")).unwrap();
    let run = |session: &mut Session, ctx: &[u32]| {
        let mut out = vec![];
        let mut sampler = Sampler::new(Sampling::default()).unwrap();
        let stats = session
            .generate(ctx, 8, &[], &mut sampler, |t| {
                out.push(t);
                Ok(())
            })
            .unwrap();
        (out, stats)
    };
    let first: Vec<u32> = (0..10).collect();
    let mut session = Session::new(&model, 64).unwrap();
    let (reply, stats) = run(&mut session, &first);
    assert_eq!(stats.prefill_tokens, 10);
    let mut second = first.clone();
    second.extend(&reply);
    second.extend([20, 21, 22]);
    let (again, stats) = run(&mut session, &second);
    // The last reply token was never run (nothing read its logits), so it is new here.
    assert_eq!(stats.prefill_tokens, 4, "only the unseen tokens are run");
    let (fresh, _) = run(&mut Session::new(&model, 64).unwrap(), &second);
    assert_eq!(again, fresh);
    // A context that departs from the cache early re-runs from there.
    let (_, stats) = run(&mut session, &[0, 1, 9, 9]);
    assert_eq!(stats.prefill_tokens, 2);
}

#[test]
fn generation_stops_at_a_stop_token_and_at_a_full_context() {
    let model = LlamaModel::load(&fixture("llama3")).unwrap();
    let ctx: Vec<u32> = (5..15).collect();
    let mut sampler = Sampler::new(Sampling::default()).unwrap();
    let mut all = vec![];
    Session::new(&model, 64)
        .unwrap()
        .generate(&ctx, 12, &[], &mut sampler, |t| {
            all.push(t);
            Ok(())
        })
        .unwrap();
    // Stopping at the 4th greedy token: three are handed over.
    let mut got = vec![];
    let stats = Session::new(&model, 64)
        .unwrap()
        .generate(&ctx, 12, &[all[3]], &mut sampler, |t| {
            got.push(t);
            Ok(())
        })
        .unwrap();
    let first_stop = all.iter().position(|&t| t == all[3]).unwrap();
    assert_eq!((stats.stop, &got[..]), (Stop::StopToken, &all[..first_stop]));
    // A context of 13 holds the prompt and 3 generated tokens' keys; the 4th is made last.
    let mut got = vec![];
    let stats = Session::new(&model, 13)
        .unwrap()
        .generate(&ctx, 12, &[], &mut sampler, |t| {
            got.push(t);
            Ok(())
        })
        .unwrap();
    assert_eq!((stats.stop, &got[..]), (Stop::ContextFull, &all[..4]));
}

#[test]
fn generate_command_streams_text_and_refuses_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = common::smollm2_dir();
    let m = dir.to_str().unwrap();
    let bin = env!("CARGO_BIN_EXE_quantize");
    let out = std::process::Command::new(bin)
        .args(["generate", "--model", m, "--prompt", "The capital of France is", "--max-tokens", "8"])
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.starts_with(" Paris."), "{stdout}");
    let stdout_first = stdout.to_string();
    assert!(stderr.contains("tokens/s"), "{stderr}");
    // The chat template wraps the prompt: SmolLM2 answers and stops at <|im_end|>.
    let out = std::process::Command::new(bin)
        .args(["generate", "--model", m, "--chat", "--prompt", "What is the capital of France?", "--max-tokens", "40"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("Paris") && !stdout.contains("<|im_end|>"), "{stdout}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("end-of-sequence"));

    common::fails_with(&["generate", "--model", m, "--prompt", ""], &["prompt is empty"]);
    common::fails_with(&["generate", "--threads", "0", "--model", m, "--prompt", "Hi"], &["--threads", "0"]);
    // One thread gives the same greedy text as the default pool.
    let one = std::process::Command::new(bin)
        .args(["generate", "--threads", "1", "--model", m, "--prompt", "The capital of France is", "--max-tokens", "8"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&one.stdout), stdout_first);
    common::fails_with(&["generate", "--model", m, "--prompt", "Hi", "--top-p", "2"], &["--top-p", "2"]);
    common::fails_with(&["generate", "--model", m, "--prompt", "Hi", "--temperature", "-1"], &["--temperature", "-1"]);
    common::fails_with(
        &["generate", "--model", m, "--prompt", "one two three four five six", "--ctx", "4"],
        &["prompt is", "tokens", "--ctx"],
    );
    common::fails_with(
        &["generate", "--model", m, "--prompt", "Hi", "--ctx", "9000"],
        &["--ctx", "9000", "max_position_embeddings"],
    );
    // A chat template that fails to render names its file and the template's message.
    let broken = common::dir_with_config(&dir, tmp.path(), "broken", |_| {});
    std::fs::write(broken.join("chat_template.jinja"), "{{ raise_exception('roles must alternate') }}").unwrap();
    common::fails_with(
        &["generate", "--model", broken.to_str().unwrap(), "--chat", "--prompt", "Hi"],
        &["chat_template.jinja", "roles must alternate"],
    );
    let no_template = common::dir_with_config(&dir, tmp.path(), "plain", |_| {});
    std::fs::remove_file(no_template.join("tokenizer_config.json")).unwrap();
    common::fails_with(
        &["generate", "--model", no_template.to_str().unwrap(), "--chat", "--prompt", "Hi"],
        &["--chat", "chat_template"],
    );
}

#[test]
fn bench_reports_prefill_and_decode_rates() {
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("bench.json");
    let fx = fixture("llama3");
    let (ok, err) = common::quantize(&[
        "bench",
        "--model",
        fx.to_str().unwrap(),
        "-p",
        "32",
        "-n",
        "8",
        "-r",
        "2",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let results = v[0]["results"].as_array().unwrap();
    assert_eq!(results.iter().map(|r| r["test"].as_str().unwrap()).collect::<Vec<_>>(), ["pp32", "tg8"]);
    for r in results {
        let rates = r["rates"].as_array().unwrap();
        assert_eq!(rates.len(), 2);
        assert!(rates.iter().all(|x| x.as_f64().unwrap() > 0.0));
    }
    common::fails_with(&["bench", "--model", fx.to_str().unwrap(), "-r", "0"], &["--repetitions", "0"]);
}

/// A small calibration text the fixtures' tokenizers cover.
fn fixture_text(root: &Path) -> PathBuf {
    let p = root.join("text.txt");
    let para = "Beautiful is better than ugly. Explicit is better than implicit. Simple is better than \
                complex. Complex is better than complicated. Flat is better than nested. Readability counts. ";
    std::fs::write(&p, para.repeat(20)).unwrap();
    p
}

/// An FP8 KV cache (compressed-tensors `kv_cache_scheme`): scales measured and written per
/// block, read back; the cached E4M3 codes give what evaluation's fake quantization gives;
/// a quarter of the f32 cache's bytes; a small but real change of the logits.
#[test]
fn an_fp8_kv_cache_is_written_read_and_decoded_as_evaluated() {
    let root = tempfile::tempdir().unwrap();
    let text = fixture_text(root.path());
    for name in ["llama3", "mistral"] {
        let src = fixture(name);
        let (plain, kv) = (root.path().join(format!("{name}-plain")), root.path().join(format!("{name}-kv")));
        let calib = ["--kv-cache", "fp8", "--calib", text.to_str().unwrap(), "--nsamples", "4", "--seqlen", "32"];
        for (out, extra) in [(&plain, &[][..]), (&kv, &calib[..])] {
            let mut args = vec![src.to_str().unwrap(), "--method", "rtn", "--bits", "8", "--per-channel"];
            args.extend(["--format", "compressed-tensors", "-o", out.to_str().unwrap()]);
            args.extend(extra);
            let (ok, err) = common::quantize(&args);
            assert!(ok, "{args:?}: {err}");
        }
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(kv.join("config.json")).unwrap()).unwrap();
        let scheme = &cfg["quantization_config"]["kv_cache_scheme"];
        assert_eq!(
            (scheme["type"].as_str(), scheme["num_bits"].as_u64(), scheme["strategy"].as_str()),
            (Some("float"), Some(8), Some("tensor"))
        );
        let (model, _) = load_model(&kv).unwrap();
        for b in &model.blocks {
            let [k, v] = b.kv_scales.expect("every block has its scales");
            assert!(k > 0.0 && v > 0.0 && k.is_finite() && v.is_finite());
        }
        let (reference, _) = load_model(&plain).unwrap();
        assert!(reference.blocks.iter().all(|b| b.kv_scales.is_none()));
        assert_eq!(
            model.new_cache(8).unwrap().bytes_per_token() * 4,
            reference.new_cache(8).unwrap().bytes_per_token(),
            "E4M3 codes are a quarter of f32"
        );
        let tokens: Vec<u32> = (0..30u32).map(|i| (i * 41 + 7) % model.config.vocab_size as u32).collect();
        // The cached codes are those fake quantization gives for the same keys, but a key
        // that one path computes 1e-7 apart can round to the neighbouring E4M3 code (6%
        // apart): a few such flips move the logits by ~1e-4, never more than 1e-3.
        check_cache_within(&model, &tokens, &format!("{name} with an FP8 KV cache"), 1e-3);
        let (a, b) = (model.forward(&tokens, 1, 30).unwrap(), reference.forward(&tokens, 1, 30).unwrap());
        let e = rel_err(&a, &b);
        // Random weights, random tokens (keys beyond the calibrated range are clamped): a
        // real change, far from garbage. SmolLM2's perplexity cost is in docs/BENCHMARKS.md.
        assert!(e > 1e-6 && e < 0.25, "{name}: the FP8 cache moves the logits by {e:.2e}");
    }
}

#[test]
fn kv_cache_options_and_configs_that_do_not_fit_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let text = fixture_text(root.path());
    let (src, t) = (fixture("llama3"), text.to_str().unwrap());
    let out = root.path().join("never");
    let o = out.to_str().unwrap();
    let s = src.to_str().unwrap();
    common::fails_with(
        &[s, "--method", "rtn", "--kv-cache", "fp8", "--format", "gptq", "--calib", t, "-o", o],
        &["--kv-cache", "compressed-tensors"],
    );
    common::fails_with(&[s, "--method", "rtn", "--kv-cache", "int4", "-o", o], &["--kv-cache", "int4"]);
    assert!(!out.exists());
    // A checkpoint declaring another KV scheme, or missing a scale, is refused by name.
    let kv = root.path().join("kv");
    let args = [
        s,
        "--method",
        "rtn",
        "--bits",
        "8",
        "--per-channel",
        "--kv-cache",
        "fp8",
        "--calib",
        t,
        "--nsamples",
        "4",
        "--seqlen",
        "32",
        "-o",
        kv.to_str().unwrap(),
    ];
    let (ok, err) = common::quantize(&args);
    assert!(ok, "{err}");
    let channel = common::dir_with_config(&kv, root.path(), "channel", |c| {
        c["quantization_config"]["kv_cache_scheme"]["strategy"] = serde_json::json!("channel")
    });
    let e = load_model(&channel).err().expect("refused").to_string();
    assert!(e.contains("kv_cache_scheme.strategy") && e.contains("channel"), "{e}");
    let fixture_cfg = common::dir_with_config(&src, root.path(), "declares", |c| {
        c["quantization_config"] = serde_json::json!({"kv_cache_scheme": quantize::format::kv_cache::to_ct_json()})
    });
    let e = LlamaModel::load(&fixture_cfg).err().expect("refused").to_string();
    assert!(e.contains("model.layers.0.self_attn.k_scale") && e.contains("missing"), "{e}");
}
