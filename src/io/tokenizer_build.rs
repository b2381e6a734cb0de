//! Build a Hugging Face `tokenizer.json` (and a minimal `tokenizer_config.json`)
//! from the tokenizer stored in GGUF metadata.
//!
//! Supported: `tokenizer.ggml.model = gpt2` (byte-level BPE). GGUF stores the
//! vocabulary already in byte-level form (`Ġworld`) and the merges as `"a b"`
//! strings, exactly as `vocab.json` / `merges.txt` do, so they are copied as is.
//! Pre-tokenizers (`tokenizer.ggml.pre`, names from llama.cpp's `llama-vocab.cpp`):
//! `smollm` = split every digit, then the GPT-2 byte-level regex; `gpt2`/`default`
//! = the GPT-2 byte-level regex alone. Token types (`tokenizer.ggml.token_type`):
//! 3 (control) become special added tokens, 4 (user-defined) plain added tokens.
//! SentencePiece (`llama`) vocabularies store scores, not merges; they are refused.

use crate::error::{Error, Result};
use crate::io::gguf::{GgufFile, Value as GgufValue};
use serde_json::{json, Map, Value as Json};
use std::path::Path;

/// llama.cpp's token types (`llama_token_type`).
pub mod token_type {
    pub const NORMAL: i64 = 1;
    pub const UNKNOWN: i64 = 2;
    pub const CONTROL: i64 = 3;
    pub const USER_DEFINED: i64 = 4;
    pub const UNUSED: i64 = 5;
    pub const BYTE: i64 = 6;
}

/// The pre-tokenizers this module can express (from `tokenizer.ggml.pre`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PreTokenizer {
    /// GPT-2: the byte-level regex `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`.
    Gpt2,
    /// SmolLM: every digit its own piece (`\p{N}`), then the GPT-2 regex.
    SmolLm,
}

/// The byte-level BPE tokenizer described by GGUF metadata.
#[derive(Clone, Debug)]
pub struct GgufTokenizer {
    /// Token strings by id (byte-level encoded).
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type` by id (all [`token_type::NORMAL`] when absent).
    pub token_types: Vec<i64>,
    /// Merges in rank order, as `(left, right)`.
    pub merges: Vec<(String, String)>,
    pub pre: PreTokenizer,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub unk: Option<u32>,
    pub pad: Option<u32>,
    pub add_bos: bool,
    pub add_eos: bool,
    pub chat_template: Option<String>,
}

fn opt_id(g: &GgufFile, key: &str, n: usize) -> Result<Option<u32>> {
    match g.metadata(key) {
        None => Ok(None),
        Some(v) => match v.as_u64() {
            Some(id) if (id as usize) < n => Ok(Some(id as u32)),
            _ => Err(Error::format(g.path(), format!("{key} = {v:?} is not a token id below the vocabulary size {n}"))),
        },
    }
}

impl GgufTokenizer {
    /// Read the tokenizer from GGUF metadata; a clear error for unsupported models.
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let path = g.path();
        let model = g.get_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(Error::format(
                path,
                format!(
                    "tokenizer.ggml.model = {model:?} is not supported: only \"gpt2\" (byte-level BPE) can be \
                     converted to tokenizer.json (SentencePiece \"llama\" vocabularies carry scores, not merges)"
                ),
            ));
        }
        let pre = match g.metadata("tokenizer.ggml.pre").and_then(|v| v.as_str()).unwrap_or("default") {
            "smollm" => PreTokenizer::SmolLm,
            "gpt2" | "default" => PreTokenizer::Gpt2,
            other => {
                return Err(Error::format(
                    path,
                    format!("tokenizer.ggml.pre = {other:?} is not supported (supported: smollm, gpt2, default)"),
                ))
            }
        };
        let tokens: Vec<String> = g.get_str_array("tokenizer.ggml.tokens")?.into_iter().map(String::from).collect();
        let n = tokens.len();
        let token_types = match g.metadata("tokenizer.ggml.token_type") {
            None => vec![token_type::NORMAL; n],
            Some(_) => {
                let a = g.get_array("tokenizer.ggml.token_type")?;
                let t: Option<Vec<i64>> = a.iter().map(|v| v.as_i64()).collect();
                match t {
                    Some(t) if t.len() == n => t,
                    _ => {
                        return Err(Error::format(
                            path,
                            format!("tokenizer.ggml.token_type must be {n} integers, got {} values", a.len()),
                        ))
                    }
                }
            }
        };
        let merges = g
            .get_str_array("tokenizer.ggml.merges")?
            .into_iter()
            .enumerate()
            .map(|(i, m)| {
                // llama.cpp splits at the first space after the first character.
                match m.char_indices().skip(1).find(|&(_, c)| c == ' ') {
                    Some((at, _)) => Ok((m[..at].to_string(), m[at + 1..].to_string())),
                    None => Err(Error::format(path, format!("tokenizer.ggml.merges[{i}] = {m:?} has no space"))),
                }
            })
            .collect::<Result<Vec<(String, String)>>>()?;
        // tokenizers refuses to load a BPE whose merge names a token not in the
        // vocabulary (both sides and their concatenation must be tokens).
        let vocab: std::collections::HashSet<&str> = tokens.iter().map(String::as_str).collect();
        for (i, (a, b)) in merges.iter().enumerate() {
            let joined = format!("{a}{b}");
            let missing = [a.as_str(), b.as_str(), joined.as_str()].into_iter().find(|t| !vocab.contains(t));
            if let Some(missing) = missing {
                return Err(Error::format(
                    path,
                    format!(
                        "tokenizer.ggml.merges[{i}] = \"{a} {b}\" names {missing:?}, which is not in tokenizer.ggml.tokens"
                    ),
                ));
            }
        }
        let flag = |k: &str, default: bool| g.metadata(k).and_then(|v| v.as_bool()).unwrap_or(default);
        Ok(Self {
            tokens,
            token_types,
            merges,
            pre,
            bos: opt_id(g, "tokenizer.ggml.bos_token_id", n)?,
            eos: opt_id(g, "tokenizer.ggml.eos_token_id", n)?,
            unk: opt_id(g, "tokenizer.ggml.unknown_token_id", n)?,
            pad: opt_id(g, "tokenizer.ggml.padding_token_id", n)?,
            add_bos: flag("tokenizer.ggml.add_bos_token", false),
            add_eos: flag("tokenizer.ggml.add_eos_token", false),
            chat_template: g.metadata("tokenizer.chat_template").and_then(|v| v.as_str()).map(String::from),
        })
    }

    /// The tokenizer of a Hugging Face model directory (`tokenizer.json`,
    /// `tokenizer_config.json`, optionally `chat_template.jinja`), for GGUF export: a
    /// byte-level BPE with one of the pre-tokenizers above; anything else is an error
    /// naming what llama.cpp could not be told.
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let read = |p: &Path| -> Result<Json> {
            let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
            serde_json::from_str(&text).map_err(|e| Error::format(p, format!("not valid JSON: {e}")))
        };
        let tj = read(&path)?;
        let bad = |msg: String| Error::format(&path, msg);
        let model = &tj["model"];
        if model["type"] != "BPE" {
            return Err(bad(format!(
                "model.type = {} is not BPE: only byte-level BPE tokenizers are exported to GGUF",
                model["type"]
            )));
        }
        let pre = match &tj["pre_tokenizer"] {
            p if p["type"] == "ByteLevel" && p["use_regex"] != false => PreTokenizer::Gpt2,
            p if p["type"] == "Sequence"
                && p["pretokenizers"].as_array().is_some_and(|a| {
                    a.len() == 2
                        && a[0]["type"] == "Digits"
                        && a[0]["individual_digits"] == true
                        && a[1]["type"] == "ByteLevel"
                        && a[1]["use_regex"] != false
                }) =>
            {
                PreTokenizer::SmolLm
            }
            p => {
                return Err(bad(format!(
                    "pre_tokenizer {} is not one llama.cpp knows by name here (GPT-2 byte-level: gpt2; digits then byte-level: smollm)",
                    p
                )))
            }
        };
        let vocab = model["vocab"].as_object().ok_or_else(|| bad("model.vocab is not an object".into()))?;
        let mut by_id: Vec<Option<String>> = vec![];
        let put = |id: u64, t: &str, by_id: &mut Vec<Option<String>>| -> Result<()> {
            let id = id as usize;
            if id >= 1 << 24 {
                return Err(bad(format!("token id {id} of {t:?} is implausibly large")));
            }
            if by_id.len() <= id {
                by_id.resize(id + 1, None);
            }
            by_id[id] = Some(t.to_string());
            Ok(())
        };
        for (t, id) in vocab {
            let id = id.as_u64().ok_or_else(|| bad(format!("model.vocab[{t:?}] = {id} is not a token id")))?;
            put(id, t, &mut by_id)?;
        }
        let mut kinds: Vec<(usize, bool)> = vec![];
        for a in tj["added_tokens"].as_array().into_iter().flatten() {
            let (Some(id), Some(t)) = (a["id"].as_u64(), a["content"].as_str()) else {
                return Err(bad(format!("added_tokens entry {a} has no id or content")));
            };
            put(id, t, &mut by_id)?;
            kinds.push((id as usize, a["special"] == true));
        }
        let tokens: Vec<String> = by_id
            .into_iter()
            .enumerate()
            .map(|(i, t)| t.ok_or_else(|| bad(format!("token id {i} has no token (ids must be 0..n without gaps)"))))
            .collect::<Result<_>>()?;
        let mut token_types = vec![token_type::NORMAL; tokens.len()];
        for (id, special) in kinds {
            token_types[id] = if special { token_type::CONTROL } else { token_type::USER_DEFINED };
        }
        let merges = model["merges"]
            .as_array()
            .ok_or_else(|| bad("model.merges is not an array".into()))?
            .iter()
            .enumerate()
            .map(|(i, m)| match m {
                Json::String(s) => match s.char_indices().skip(1).find(|&(_, c)| c == ' ') {
                    Some((at, _)) => Ok((s[..at].to_string(), s[at + 1..].to_string())),
                    None => Err(bad(format!("model.merges[{i}] = {s:?} has no space"))),
                },
                Json::Array(a) if a.len() == 2 && a.iter().all(Json::is_string) => {
                    Ok((a[0].as_str().unwrap_or_default().to_string(), a[1].as_str().unwrap_or_default().to_string()))
                }
                other => Err(bad(format!("model.merges[{i}] = {other} is neither \"a b\" nor [a, b]"))),
            })
            .collect::<Result<Vec<_>>>()?;
        let config_path = dir.join("tokenizer_config.json");
        let config = if config_path.exists() { read(&config_path)? } else { Json::Null };
        let id_of = |key: &str| -> Result<Option<u32>> {
            let v = &config[key];
            let name = v.as_str().or_else(|| v["content"].as_str());
            match name {
                None => Ok(None),
                Some(n) => tokens.iter().position(|t| t == n).map(|i| Some(i as u32)).ok_or_else(|| {
                    Error::format(&config_path, format!("{key} = {n:?} is not a token of tokenizer.json"))
                }),
            }
        };
        let jinja = dir.join("chat_template.jinja");
        let chat_template = match config["chat_template"].as_str() {
            Some(t) => Some(t.to_string()),
            None if jinja.exists() => Some(std::fs::read_to_string(&jinja).map_err(|e| Error::io(&jinja, e))?),
            None => None,
        };
        Ok(Self {
            pre,
            bos: id_of("bos_token")?,
            eos: id_of("eos_token")?,
            unk: id_of("unk_token")?,
            pad: id_of("pad_token")?,
            add_bos: config["add_bos_token"] == true,
            add_eos: config["add_eos_token"] == true,
            chat_template,
            tokens,
            token_types,
            merges,
        })
    }

    /// The `tokenizer.*` metadata llama.cpp reads (`llama-vocab.cpp`).
    pub fn gguf_metadata(&self) -> Vec<(String, GgufValue)> {
        let s = |v: &str| GgufValue::String(v.to_string());
        let pre = match self.pre {
            PreTokenizer::Gpt2 => "gpt2",
            PreTokenizer::SmolLm => "smollm",
        };
        let mut m = vec![
            ("tokenizer.ggml.model".to_string(), s("gpt2")),
            ("tokenizer.ggml.pre".to_string(), s(pre)),
            ("tokenizer.ggml.tokens".to_string(), GgufValue::Array(self.tokens.iter().map(|t| s(t)).collect())),
            (
                "tokenizer.ggml.token_type".to_string(),
                GgufValue::Array(self.token_types.iter().map(|&t| GgufValue::I32(t as i32)).collect()),
            ),
            (
                "tokenizer.ggml.merges".to_string(),
                GgufValue::Array(self.merges.iter().map(|(a, b)| s(&format!("{a} {b}"))).collect()),
            ),
        ];
        for (key, id) in [
            ("bos_token_id", self.bos),
            ("eos_token_id", self.eos),
            ("unknown_token_id", self.unk),
            ("padding_token_id", self.pad),
        ] {
            if let Some(id) = id {
                m.push((format!("tokenizer.ggml.{key}"), GgufValue::U32(id)));
            }
        }
        m.push(("tokenizer.ggml.add_bos_token".to_string(), GgufValue::Bool(self.add_bos)));
        m.push(("tokenizer.ggml.add_eos_token".to_string(), GgufValue::Bool(self.add_eos)));
        if let Some(t) = &self.chat_template {
            m.push(("tokenizer.chat_template".to_string(), s(t)));
        }
        m
    }

    fn token(&self, id: Option<u32>) -> Json {
        id.map_or(Json::Null, |i| json!(self.tokens[i as usize]))
    }

    /// The `tokenizer.json` document (tokenizers serialization format 1.0).
    pub fn tokenizer_json(&self) -> Json {
        let byte_level = |prefix: bool, trim: bool| json!({"type": "ByteLevel", "add_prefix_space": prefix, "trim_offsets": trim, "use_regex": true});
        let added: Vec<Json> = self
            .token_types
            .iter()
            .enumerate()
            .filter(|(_, &t)| t == token_type::CONTROL || t == token_type::USER_DEFINED)
            .map(|(id, &t)| {
                json!({"id": id, "content": self.tokens[id], "single_word": false, "lstrip": false,
                       "rstrip": false, "normalized": false, "special": t == token_type::CONTROL})
            })
            .collect();
        let pre_tokenizer = match self.pre {
            PreTokenizer::Gpt2 => byte_level(false, true),
            PreTokenizer::SmolLm => json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true},
                byte_level(false, true),
            ]}),
        };
        let mut post = vec![byte_level(true, false)];
        if self.add_bos || self.add_eos {
            post.push(self.template_processing());
        }
        let post_processor =
            if post.len() == 1 { post.remove(0) } else { json!({"type": "Sequence", "processors": post}) };
        let mut vocab = Map::new();
        for (id, t) in self.tokens.iter().enumerate() {
            vocab.entry(t.clone()).or_insert(json!(id));
        }
        let merges: Vec<Json> = self.merges.iter().map(|(a, b)| json!([a, b])).collect();
        json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": pre_tokenizer,
            "post_processor": post_processor,
            "decoder": byte_level(true, true),
            "model": {
                "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                "ignore_merges": false, "vocab": vocab, "merges": merges,
            },
        })
    }

    /// `TemplateProcessing` adding BOS and/or EOS around each sequence.
    fn template_processing(&self) -> Json {
        let mut special = Map::new();
        let mut wrap = |seq: &str, type_id: u32| {
            let mut v = Vec::new();
            let mut push = |id: Option<u32>, on: bool, v: &mut Vec<Json>| {
                if let (Some(id), true) = (id, on) {
                    let t = &self.tokens[id as usize];
                    special.insert(t.clone(), json!({"id": t, "ids": [id], "tokens": [t]}));
                    v.push(json!({"SpecialToken": {"id": t, "type_id": type_id}}));
                }
            };
            push(self.bos, self.add_bos, &mut v);
            v.push(json!({"Sequence": {"id": seq, "type_id": type_id}}));
            push(self.eos, self.add_eos, &mut v);
            v
        };
        let single = wrap("A", 0);
        let mut pair = wrap("A", 0);
        pair.extend(wrap("B", 1));
        json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": special})
    }

    /// A minimal `tokenizer_config.json`.
    pub fn tokenizer_config_json(&self, model_max_length: Option<u64>) -> Json {
        let mut c = json!({
            "tokenizer_class": "GPT2Tokenizer",
            "add_bos_token": self.add_bos,
            "add_eos_token": self.add_eos,
            "add_prefix_space": false,
            "clean_up_tokenization_spaces": false,
            "bos_token": self.token(self.bos),
            "eos_token": self.token(self.eos),
            "unk_token": self.token(self.unk),
            "pad_token": self.token(self.pad),
        });
        if let Some(n) = model_max_length {
            c["model_max_length"] = json!(n);
        }
        if let Some(t) = &self.chat_template {
            c["chat_template"] = json!(t);
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;
    use tokenizers::Tokenizer;

    /// GPT-2's `bytes_to_unicode`: printable bytes map to themselves, the rest to
    /// U+0100 upwards in byte order.
    fn byte_char(b: u8) -> char {
        let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
        if printable(b) {
            return b as char;
        }
        let n = (0..b).filter(|&x| !printable(x)).count() as u32;
        char::from_u32(256 + n).unwrap()
    }

    fn tiny(pre: PreTokenizer, add_bos: bool) -> GgufTokenizer {
        let mut tokens = vec!["<|endoftext|>".to_string(), "<|im_start|>".to_string()];
        tokens.extend((0..=255u8).map(|b| byte_char(b).to_string()));
        let merges: Vec<(String, String)> = [("h", "e"), ("l", "l"), ("he", "ll"), ("Ġ", "w"), ("1", "2")]
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        tokens.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
        let mut token_types = vec![token_type::NORMAL; tokens.len()];
        token_types[0] = token_type::CONTROL;
        token_types[1] = token_type::CONTROL;
        GgufTokenizer {
            tokens,
            token_types,
            merges,
            pre,
            bos: Some(1),
            eos: Some(0),
            unk: None,
            pad: None,
            add_bos,
            add_eos: false,
            chat_template: Some("{{ x }}".into()),
        }
    }

    fn load(t: &GgufTokenizer) -> Tokenizer {
        Tokenizer::from_str(&t.tokenizer_json().to_string()).unwrap()
    }

    #[test]
    fn byte_level_bpe_round_trips_and_splits_digits() {
        let t = tiny(PreTokenizer::SmolLm, false);
        let tok = load(&t);
        let text = "hello world 12 <|im_start|>é\n";
        let enc = tok.encode(text, false).unwrap();
        let pieces = enc.get_tokens();
        assert_eq!(&pieces[..3], &["hell", "o", "Ġw"], "{pieces:?}");
        assert!(pieces.contains(&"1".to_string()) && !pieces.contains(&"12".to_string()), "digits: {pieces:?}");
        assert_eq!(enc.get_ids().iter().filter(|&&id| id == 1).count(), 1, "special token: {pieces:?}");
        assert_eq!(tok.decode(enc.get_ids(), false).unwrap(), text);
        // Without the Digits step the "12" merge applies.
        let enc = load(&tiny(PreTokenizer::Gpt2, false)).encode("a 12", false).unwrap();
        assert_eq!(enc.get_tokens(), &["a", "Ġ", "12"]);
    }

    #[test]
    fn add_bos_prepends_bos_only_when_asked() {
        let plain = load(&tiny(PreTokenizer::SmolLm, false)).encode("he", true).unwrap();
        assert_eq!(plain.get_tokens(), &["he"]);
        let bos = load(&tiny(PreTokenizer::SmolLm, true)).encode("he", true).unwrap();
        assert_eq!(bos.get_tokens(), &["<|im_start|>", "he"]);
    }

    /// tokenizer.json (as built here) back to the GGUF description: the same tokenizer.
    #[test]
    fn hf_dir_round_trips_to_gguf_metadata() {
        for pre in [PreTokenizer::SmolLm, PreTokenizer::Gpt2] {
            let t = tiny(pre, true);
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("tokenizer.json"), t.tokenizer_json().to_string()).unwrap();
            std::fs::write(dir.path().join("tokenizer_config.json"), t.tokenizer_config_json(None).to_string())
                .unwrap();
            let back = GgufTokenizer::from_hf_dir(dir.path()).unwrap();
            assert_eq!(back.tokens, t.tokens);
            assert_eq!(back.token_types, t.token_types);
            assert_eq!(back.merges, t.merges);
            assert_eq!((back.pre, back.bos, back.eos, back.add_bos), (pre, Some(1), Some(0), true));
            assert_eq!(back.chat_template.as_deref(), Some("{{ x }}"));
            let m = back.gguf_metadata();
            let get = |k: &str| m.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
            let want_pre = if pre == PreTokenizer::SmolLm { "smollm" } else { "gpt2" };
            assert_eq!(get("tokenizer.ggml.pre"), Some(GgufValue::String(want_pre.into())));
            assert_eq!(get("tokenizer.ggml.bos_token_id"), Some(GgufValue::U32(1)));
            assert_eq!(get("tokenizer.ggml.merges").unwrap().as_array().unwrap()[0], GgufValue::String("h e".into()));
        }
        let dir = tempfile::tempdir().unwrap();
        let mut j = tiny(PreTokenizer::Gpt2, false).tokenizer_json();
        j["pre_tokenizer"] = json!({"type": "Metaspace"});
        std::fs::write(dir.path().join("tokenizer.json"), j.to_string()).unwrap();
        let e = GgufTokenizer::from_hf_dir(dir.path()).unwrap_err().to_string();
        assert!(e.contains("tokenizer.json") && e.contains("Metaspace"), "{e}");
    }

    #[test]
    fn config_names_special_tokens() {
        let c = tiny(PreTokenizer::SmolLm, false).tokenizer_config_json(Some(8192));
        assert_eq!(c["bos_token"], "<|im_start|>");
        assert_eq!(c["eos_token"], "<|endoftext|>");
        assert_eq!(c["add_bos_token"], false);
        assert_eq!(c["model_max_length"], 8192);
        assert_eq!(c["chat_template"], "{{ x }}");
        assert!(c["pad_token"].is_null());
    }
}
