//! `quantize report`: earlier `eval --baseline ... --json` reports merged into one table
//! and one plot of perplexity increase against bits per weight, with measured peers
//! (a CSV) as reference points.

use crate::error::{Error, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// One quantized model of an eval report.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// The model directory's name.
    pub name: String,
    /// The method that made it (`load.method`), when the report says.
    pub method: Option<String>,
    /// The checkpoint's format (`gptq`, `compressed-tensors`, `gguf`...).
    pub format: Option<String>,
    pub bits_per_weight: f64,
    pub perplexity: f64,
    pub perplexity_stderr: f64,
    pub delta_pct: f64,
    pub kl: f64,
    pub top1: f64,
    /// What the numbers were measured on: they compare only when these agree.
    pub setting: Setting,
    pub source: PathBuf,
}

impl Entry {
    /// The plot's series: the method, and GGUF files apart (computed as llama.cpp does).
    pub fn series(&self) -> String {
        let method = self.method.as_deref().unwrap_or("other");
        match self.format.as_deref() {
            Some("gguf") => format!("{method} (GGUF)"),
            _ => method.to_string(),
        }
    }
}

/// The evaluation setting of a report: protocol, window length, windows, the baseline's
/// perplexity (which pins the text and the baseline model).
#[derive(Clone, Debug, PartialEq)]
pub struct Setting {
    pub protocol: String,
    pub ctx: u64,
    pub windows: u64,
    pub baseline_perplexity: f64,
}

impl Setting {
    /// The same text, baseline and protocol (the baseline perplexities equal to 1e-6).
    pub fn compares_with(&self, other: &Setting) -> bool {
        self.protocol == other.protocol
            && self.ctx == other.ctx
            && self.windows == other.windows
            && (self.baseline_perplexity - other.baseline_perplexity).abs() <= 1e-6 * self.baseline_perplexity
    }
}

impl std::fmt::Display for Setting {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "protocol {}, ctx {}, {} windows, baseline perplexity {:.4}",
            self.protocol, self.ctx, self.windows, self.baseline_perplexity
        )
    }
}

/// A measured point of another tool (`docs/peers.csv`).
#[derive(Clone, Debug, PartialEq)]
pub struct Peer {
    pub name: String,
    pub bits_per_weight: f64,
    pub delta_pct: f64,
    pub protocol: String,
}

fn field<'a>(v: &'a Value, path: &[&str], file: &Path) -> Result<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(k)).ok_or_else(|| {
        Error::format(
            file,
            format!("no `{}`: not a report of `quantize eval --baseline B --model M --json FILE`", path.join(".")),
        )
    })
}

fn number(v: &Value, path: &[&str], file: &Path) -> Result<f64> {
    let x = field(v, path, file)?;
    x.as_f64().ok_or_else(|| Error::format(file, format!("`{}` is {x}, not a number", path.join("."))))
}

fn entry(m: &Value, file: &Path) -> Result<Entry> {
    let model = field(m, &["model"], file)?.as_str().unwrap_or_default();
    let name = Path::new(model).file_name().map_or(model.to_string(), |n| n.to_string_lossy().into_owned());
    let base = &["comparison", "baseline"];
    let text = |path: &[&str]| -> Result<String> {
        let v = field(m, path, file)?;
        Ok(v.as_str().map_or_else(|| v.to_string(), str::to_string))
    };
    Ok(Entry {
        name,
        method: m.pointer("/load/method").and_then(Value::as_str).map(str::to_string),
        format: m.pointer("/load/format").and_then(Value::as_str).map(str::to_string),
        bits_per_weight: number(m, &["size", "bits_per_weight"], file)?,
        perplexity: number(m, &["comparison", "quantized", "perplexity"], file)?,
        perplexity_stderr: number(m, &["comparison", "quantized", "perplexity_stderr"], file)?,
        delta_pct: number(m, &["comparison", "perplexity_delta_pct"], file)?,
        kl: number(m, &["comparison", "mean_kl_divergence"], file)?,
        top1: number(m, &["comparison", "top1_agreement"], file)?,
        setting: Setting {
            protocol: text(&[base[0], base[1], "protocol"])?,
            ctx: number(m, &[base[0], base[1], "ctx"], file)? as u64,
            windows: number(m, &[base[0], base[1], "windows"], file)? as u64,
            baseline_perplexity: number(m, &[base[0], base[1], "perplexity"], file)?,
        },
        source: file.to_path_buf(),
    })
}

/// The entries of one eval report (one model, or several against one baseline).
pub fn read_report(file: &Path) -> Result<Vec<Entry>> {
    let text = std::fs::read_to_string(file).map_err(|e| Error::io(file, e))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| Error::format(file, format!("not JSON: {e}")))?;
    if v.get("layers").is_some() && v.get("method").is_some() {
        return Err(Error::format(
            file,
            "is the report of a quantize run; `report` merges eval reports (quantize eval --baseline B --model M --json FILE)",
        ));
    }
    match v.get("models").and_then(Value::as_array) {
        Some(models) => models.iter().map(|m| entry(m, file)).collect(),
        None => Ok(vec![entry(&v, file)?]),
    }
}

/// Every report's entries, refused when two were measured in different settings
/// (their perplexity deltas would not compare).
pub fn read_reports(files: &[PathBuf]) -> Result<Vec<Entry>> {
    let mut all: Vec<Entry> = Vec::new();
    for f in files {
        for e in read_report(f)? {
            if let Some(first) = all.first() {
                if !first.setting.compares_with(&e.setting) {
                    return Err(Error::format(
                        f,
                        format!(
                            "{} was measured with {}, but {} with {}: reports compare only on one text, \
                             baseline and protocol",
                            e.name,
                            e.setting,
                            first.source.display(),
                            first.setting
                        ),
                    ));
                }
            }
            all.push(e);
        }
    }
    Ok(all)
}

/// `name,bits_per_weight,perplexity_delta_pct,protocol` rows (a header line first; `#`
/// lines are comments).
pub fn read_peers(file: &Path) -> Result<Vec<Peer>> {
    let text = std::fs::read_to_string(file).map_err(|e| Error::io(file, e))?;
    let mut rows = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty() && !l.starts_with('#'));
    let header = "name,bits_per_weight,perplexity_delta_pct,protocol";
    match rows.next() {
        Some((_, h)) if h.trim() == header => {}
        other => {
            return Err(Error::format(
                file,
                format!("the first line must be `{header}`, found {:?}", other.map_or("", |(_, l)| l)),
            ))
        }
    }
    rows.map(|(i, l)| {
        let cols: Vec<&str> = l.split(',').map(str::trim).collect();
        let bad = |what: &str| Error::format(file, format!("line {}: {what}: {l:?}", i + 1));
        let [name, bits, delta, protocol] = cols[..] else { return Err(bad("expected 4 comma-separated values")) };
        Ok(Peer {
            name: name.to_string(),
            bits_per_weight: bits.parse().map_err(|_| bad("bits_per_weight is not a number"))?,
            delta_pct: delta.parse().map_err(|_| bad("perplexity_delta_pct is not a number"))?,
            protocol: protocol.to_string(),
        })
    })
    .collect()
}

/// The merged table, by bits per weight then perplexity.
pub fn table(entries: &[Entry], peers: &[Peer]) -> String {
    let mut rows: Vec<&Entry> = entries.iter().collect();
    rows.sort_by(|a, b| a.bits_per_weight.total_cmp(&b.bits_per_weight).then(a.perplexity.total_cmp(&b.perplexity)));
    let w = rows.iter().map(|e| e.name.len()).chain(peers.iter().map(|p| p.name.len())).max().unwrap_or(5).max(5);
    let mut s = match entries.first() {
        Some(e) => format!("{}\n", e.setting),
        None => String::new(),
    };
    s += &format!(
        "{:<w$}  {:<10}  {:>6}  {:>19}  {:>9}  {:>8}  {:>7}\n",
        "model", "method", "bits/w", "perplexity", "delta", "KL", "top-1"
    );
    for e in rows {
        s += &format!(
            "{:<w$}  {:<10}  {:>6.3}  {:>10.4} ± {:<6.4}  {:>+8.2}%  {:>8.4}  {:>6.2}%\n",
            e.name,
            e.series(),
            e.bits_per_weight,
            e.perplexity,
            e.perplexity_stderr,
            e.delta_pct,
            e.kl,
            e.top1 * 100.0
        );
    }
    for p in peers {
        s += &format!(
            "{:<w$}  {:<10}  {:>6.3}  {:>19}  {:>+8.2}%  {:>8}  {:>7}\n",
            p.name, "peer", p.bits_per_weight, "-", p.delta_pct, "-", "-"
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(model: &str, bits: f64, ppl: f64, base: f64, protocol: &str) -> Value {
        serde_json::json!({
            "model": model,
            "load": {"method": "gptq"},
            "size": {"bits_per_weight": bits},
            "comparison": {
                "baseline": {"perplexity": base, "protocol": protocol, "ctx": 512, "windows": 40},
                "quantized": {"perplexity": ppl, "perplexity_stderr": 0.5},
                "perplexity_delta_pct": (ppl - base) / base * 100.0,
                "mean_kl_divergence": 0.1,
                "top1_agreement": 0.8,
            }
        })
    }

    #[test]
    fn reports_merge_and_settings_must_agree() {
        let tmp = tempfile::tempdir().unwrap();
        let a = tmp.path().join("a.json");
        let b = tmp.path().join("b.json");
        let c = tmp.path().join("c.json");
        std::fs::write(&a, report("out/x-int4", 4.17, 40.0, 38.0, "llama.cpp").to_string()).unwrap();
        let many = serde_json::json!({"baseline": "out/base", "models": [
            report("out/y-int3", 3.16, 50.0, 38.0, "llama.cpp"), report("out/z-int8", 8.02, 38.1, 38.0, "llama.cpp")]});
        std::fs::write(&b, many.to_string()).unwrap();
        let e = read_reports(&[a.clone(), b.clone()]).unwrap();
        assert_eq!(e.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), ["x-int4", "y-int3", "z-int8"]);
        assert_eq!(e[0].method.as_deref(), Some("gptq"));
        let t = table(&e, &[]);
        let order: Vec<&str> = t.lines().skip(2).map(|l| l.split_whitespace().next().unwrap()).collect();
        assert_eq!(order, ["y-int3", "x-int4", "z-int8"], "sorted by bits/weight:\n{t}");

        std::fs::write(&c, report("out/w", 4.0, 40.0, 38.0, "chunks").to_string()).unwrap();
        let err = read_reports(&[a.clone(), c.clone()]).unwrap_err().to_string();
        assert!(err.contains("c.json") && err.contains("chunks") && err.contains("llama.cpp"), "{err}");
        std::fs::write(&c, report("out/w", 4.0, 40.0, 39.0, "llama.cpp").to_string()).unwrap();
        let err = read_reports(&[a, c.clone()]).unwrap_err().to_string();
        assert!(err.contains("39.0000") && err.contains("38.0000"), "another baseline is refused: {err}");

        std::fs::write(&c, r#"{"method": "gptq", "layers": []}"#).unwrap();
        let err = read_reports(std::slice::from_ref(&c)).unwrap_err().to_string();
        assert!(err.contains("quantize run"), "{err}");
        std::fs::write(&c, r#"{"model": "m", "perplexity": {}}"#).unwrap();
        let err = read_reports(&[c]).unwrap_err().to_string();
        assert!(err.contains("size.bits_per_weight") && err.contains("--baseline"), "{err}");
    }

    #[test]
    fn peers_are_read_with_their_protocol_and_bad_lines_named() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("peers.csv");
        std::fs::write(&p, "# measured\nname,bits_per_weight,perplexity_delta_pct,protocol\nQ4_0,4.5,8.4,llama.cpp\n")
            .unwrap();
        assert_eq!(
            read_peers(&p).unwrap(),
            [Peer { name: "Q4_0".into(), bits_per_weight: 4.5, delta_pct: 8.4, protocol: "llama.cpp".into() }]
        );
        std::fs::write(&p, "name,bits_per_weight,perplexity_delta_pct,protocol\nQ4_0,four,8.4,llama.cpp\n").unwrap();
        let err = read_peers(&p).unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("bits_per_weight"), "{err}");
        std::fs::write(&p, "a,b\n").unwrap();
        assert!(read_peers(&p).unwrap_err().to_string().contains("first line"));
    }
}
