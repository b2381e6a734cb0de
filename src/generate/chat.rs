//! Chat templates: the Jinja template a model ships in `tokenizer_config.json`
//! (`chat_template`, a string or a list of named templates) or in `chat_template.jinja`,
//! rendered by minijinja as transformers' `apply_chat_template` renders it
//! (`trim_blocks`, `lstrip_blocks`, `raise_exception`, Python string methods).

use crate::error::{Error, Result};
use minijinja::{context, Environment, ErrorKind};
use serde::Serialize;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// One turn of a conversation.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Self {
        Self { role: role.into(), content: content.into() }
    }
}

pub struct ChatTemplate {
    env: Environment<'static>,
    /// Where the template came from, for errors.
    path: PathBuf,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    /// The template of the model in `dir`, or `None` when it has none.
    pub fn from_model_dir(dir: &Path) -> Result<Option<Self>> {
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: Value = match std::fs::read_to_string(&cfg_path) {
            Ok(s) => serde_json::from_str(&s)
                .map_err(|e| Error::format(&cfg_path, format!("tokenizer_config.json is not valid JSON: {e}")))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Value::Null,
            Err(e) => return Err(Error::io(&cfg_path, e)),
        };
        let jinja = dir.join("chat_template.jinja");
        let (source, path) = if jinja.exists() {
            (std::fs::read_to_string(&jinja).map_err(|e| Error::io(&jinja, e))?, jinja)
        } else {
            match &cfg["chat_template"] {
                Value::Null => return Ok(None),
                Value::String(s) => (s.clone(), cfg_path.clone()),
                // [{"name": "default", "template": "..."}, {"name": "tool_use", ...}]
                Value::Array(list) => {
                    let named = |n: &str| list.iter().find(|t| t["name"] == n).and_then(|t| t["template"].as_str());
                    let t = named("default").ok_or_else(|| {
                        Error::format(&cfg_path, "chat_template is a list without a template named \"default\"")
                    })?;
                    (t.to_string(), cfg_path.clone())
                }
                other => {
                    return Err(Error::format(
                        &cfg_path,
                        format!("chat_template is neither a string nor a list: {other}"),
                    ))
                }
            }
        };
        let token = |key: &str| match &cfg[key] {
            Value::String(s) => s.clone(),
            Value::Object(o) => o.get("content").and_then(Value::as_str).unwrap_or_default().to_string(),
            _ => String::new(),
        };
        Self::new(&source, path, token("bos_token"), token("eos_token")).map(Some)
    }

    /// Compile `source`; `path` names it in errors.
    pub fn new(source: &str, path: PathBuf, bos_token: String, eos_token: String) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        minijinja_contrib::add_to_environment(&mut env);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| Error::format(&path, format!("the chat template does not compile: {}", describe(&e))))?;
        Ok(Self { env, path, bos_token, eos_token })
    }

    /// The prompt text for `messages`, ending with the assistant's header when
    /// `add_generation_prompt`.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let t = self.env.get_template("chat").expect("compiled in new");
        t.render(context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
        })
        .map_err(|e| Error::format(&self.path, format!("the chat template failed to render: {}", describe(&e))))
    }
}

/// minijinja's error with its line, without the debug dump.
fn describe(e: &minijinja::Error) -> String {
    let what = e.detail().map_or_else(|| e.kind().to_string(), |d| format!("{}: {d}", e.kind()));
    match e.line() {
        Some(l) => format!("{what} (template line {l})"),
        None => what,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SmolLM2-Instruct's template (tokenizer_config.json of HuggingFaceTB/SmolLM2-135M-Instruct).
    const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    fn template(src: &str) -> ChatTemplate {
        ChatTemplate::new(src, "t.json".into(), "<s>".into(), "</s>".into()).unwrap()
    }

    #[test]
    fn smollm2_template_renders_as_transformers() {
        let t = template(SMOLLM2);
        let out = t.render(&[Message::new("user", "Hi")], true).unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
             <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn python_methods_block_trimming_and_special_tokens() {
        // Llama/Qwen templates call .strip() and rely on trim_blocks / lstrip_blocks;
        // the expected text is what Jinja2 (transformers' renderer) gives for this template.
        let t = template(
            "{{ bos_token }}{% for m in messages %}\n  {% if m['content'] %}{{ m['content'].strip() | upper }}|{% endif %}\n{% endfor %}",
        );
        assert_eq!(
            t.render(&[Message::new("user", "  a  "), Message::new("assistant", "b")], false).unwrap(),
            "<s>A|B|"
        );
    }

    #[test]
    fn failures_are_clear_errors() {
        let t = template("{{ raise_exception('Conversation roles must alternate') }}");
        let e = t.render(&[], true).unwrap_err().to_string();
        assert!(e.contains("t.json") && e.contains("Conversation roles must alternate"), "{e}");
        let e =
            ChatTemplate::new("{% for %}", "t.json".into(), String::new(), String::new()).err().unwrap().to_string();
        assert!(e.contains("does not compile") && e.contains("t.json"), "{e}");
    }
}
