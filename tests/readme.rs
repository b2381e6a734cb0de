//! Issue 16: every command line of README.md's "Using it" and "Running the result" blocks
//! runs, in order, as one bash script in a fresh directory outside the repository, with
//! `R` = this checkout and `QUANTIZE_ASSETS` = the asset cache the tests use.
//!
//! Kept as written, except: `cargo build` and `Q=...` are not run (`Q` is the binary under
//! test), and each line gets flags that make it small, placed after its own so that they
//! win (`args_override_self`): calibrated runs `--nsamples 2 --seqlen 64`, evals
//! `--max-windows 2 --ctx 128`, generation `--max-tokens 8`, bench `-p 16 -n 4 -r 1`, AWQ
//! `--awq-grid 2`, and the shipped recipe is read from a copy made as small.

mod common;

use clap::{CommandFactory, FromArgMatches};
use quantize::cli::{quantize::Given, Cli, Command};
use quantize::pipeline::recipe::ModifierSpec;
use std::path::Path;

/// The lines of the ```sh blocks under `heading`, comments removed.
fn block_lines(readme: &str, heading: &str) -> Vec<String> {
    let start = readme.find(heading).unwrap_or_else(|| panic!("README.md has no {heading:?}"));
    let rest = &readme[start..];
    let open = rest.find("```sh\n").expect("a ```sh block") + 6;
    let close = rest[open..].find("```").expect("a closed block") + open;
    rest[open..close]
        .lines()
        .map(|l| match l.find(" #") {
            Some(i) => l[..i].trim_end(),
            None => l.trim_end(),
        })
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// The flags that make one `$Q ...` line small (see the module doc).
fn small_flags(words: &[&str]) -> Vec<&'static str> {
    let args: Vec<&str> = std::iter::once("quantize").chain(words.iter().copied()).collect();
    let m = Cli::command().try_get_matches_from(&args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
    let cli = Cli::from_arg_matches(&m).unwrap();
    match cli.command {
        Some(Command::Eval(_)) => vec!["--max-windows", "2", "--ctx", "128"],
        Some(Command::Generate(_)) => vec!["--max-tokens", "8"],
        Some(Command::Bench(_)) => vec!["-p", "16", "-n", "4", "-r", "1"],
        Some(Command::Convert(_)) | Some(Command::Report(_)) => vec![],
        None if cli.quantize.recipe.is_some() => vec![],
        None => {
            let recipe = cli.quantize.to_recipe(&Given::from_matches(&m)).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            let mut flags = vec![];
            if recipe.calibration.is_some() {
                flags.extend(["--nsamples", "2", "--seqlen", "64"]);
            }
            if recipe.modifiers.iter().any(|m| matches!(m, ModifierSpec::Awq { .. })) {
                flags.extend(["--awq-grid", "2"]);
            }
            flags
        }
    }
}

/// A copy of a shipped recipe with the small calibration.
fn small_recipe(path: &Path, dir: &Path) -> String {
    let mut v: toml::Table = std::fs::read_to_string(path).unwrap().parse().unwrap();
    let c = v.entry("calibration").or_insert(toml::Value::Table(Default::default()));
    let c = c.as_table_mut().unwrap();
    c.insert("nsamples".into(), 2.into());
    c.insert("seqlen".into(), 64.into());
    for m in v.get_mut("modifier").and_then(toml::Value::as_array_mut).into_iter().flatten() {
        if m.get("type").and_then(toml::Value::as_str) == Some("awq") {
            m.as_table_mut().unwrap().insert("grid".into(), 2.into());
        }
    }
    let out = dir.join(path.file_name().unwrap());
    std::fs::write(&out, toml::to_string(&v).unwrap()).unwrap();
    out.to_str().unwrap().to_string()
}

#[test]
fn every_readme_line_runs_from_another_directory() {
    let root = common::repo_root();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut script = String::from("set -euo pipefail\n");
    let mut ran = 0;
    for heading in ["## Using it", "## Running the result"] {
        for line in block_lines(&readme, heading) {
            if line.starts_with("cargo build") || line.starts_with("Q=") {
                continue;
            }
            let mut line = line.replace("$R/recipes/", &format!("{}/recipes/", root.display()));
            let Some(at) = line.find("$Q ") else {
                assert!(line.starts_with("A="), "a README line this test does not know how to run: {line}");
                script += &format!("echo '::: {line}' >&2\n{line}\n");
                continue;
            };
            let words = shlex::split(&line[at + 3..]).unwrap_or_else(|| panic!("unbalanced quotes: {line}"));
            // A shipped recipe is read from a small copy.
            if let Some(i) = words.iter().position(|w| w == "--recipe") {
                let r = &words[i + 1];
                if let Some(shipped) = r.strip_prefix(&format!("{}/", root.display())) {
                    line = line.replace(r.as_str(), &small_recipe(&root.join(shipped), tmp.path()));
                }
            }
            let flags = small_flags(&words.iter().map(String::as_str).collect::<Vec<_>>()).join(" ");
            let stdin = if line.contains('|') { "" } else { " <<< 'What is two plus two?'" };
            script += &format!(
                "echo '::: {line}' >&2\nstart=$SECONDS\n{line} {flags}{stdin} >/dev/null\necho \"::: $((SECONDS - start)) s\" >&2\n"
            );
            ran += 1;
        }
    }
    assert!(ran >= 20, "only {ran} README lines found: {script}");
    let work = tmp.path().join("elsewhere");
    std::fs::create_dir(&work).unwrap();
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(&work)
        .env("R", &root)
        .env("Q", env!("CARGO_BIN_EXE_quantize"))
        .env("QUANTIZE_ASSETS", common::assets())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().rfind(|l| l.starts_with(":::")).unwrap_or("(none)");
    assert!(out.status.success(), "README line failed: {last}\n{}", &err[err.len().saturating_sub(3000)..]);
    // Each line and its time (cargo test -- --nocapture shows them).
    eprintln!("{}", err.lines().filter(|l| l.starts_with(":::")).collect::<Vec<_>>().join("\n"));
    for made in ["out/smollm2-gptq", "out/smollm2-awq-gptq", "out/smollm2-Q4_K_M.gguf", "out/ppl-vs-bpw.svg"] {
        assert!(work.join(made).exists(), "{made} was not written");
    }
}
