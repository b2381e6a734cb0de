//! One error type for the library. Every message names the file, tensor or option
//! and the value at fault, so a user can act on it without a debugger.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The OS error is part of the message, not a `source`: `{:#}` would repeat it.
    #[error("{path}: {cause}")]
    Io { path: PathBuf, cause: std::io::Error },
    /// A file whose bytes do not follow its format (GGUF, safetensors, JSON...).
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },
    /// A model config that is missing a key, or names something unsupported.
    #[error("{path}: {msg}")]
    Config { path: PathBuf, msg: String },
    /// A tensor that is missing, has the wrong shape or dtype, or holds NaN/Inf.
    #[error("tensor {name}: {msg}")]
    Tensor { name: String, msg: String },
    /// An option or a combination of options that cannot work.
    #[error("invalid option {option}: {msg}")]
    InvalidOption { option: String, msg: String },
    /// Refuse to overwrite anything the user already has.
    #[error("{path} already exists; refusing to overwrite it (choose another output path or remove it)")]
    OutputExists { path: PathBuf },
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), cause: source }
    }
    pub fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Format { path: path.into(), msg: msg.into() }
    }
    pub fn config(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Config { path: path.into(), msg: msg.into() }
    }
    pub fn tensor(name: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Tensor { name: name.into(), msg: msg.into() }
    }
    pub fn option(option: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::InvalidOption { option: option.into(), msg: msg.into() }
    }
}

impl Error {
    pub fn other_msg(msg: impl Into<String>) -> Self {
        Error::Other(msg.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 15.9: an I/O error reads once, with and without anyhow's chain format.
    #[test]
    fn io_errors_do_not_repeat_the_os_message() {
        let e = Error::io("/x/y", std::io::Error::from_raw_os_error(28));
        let chain = format!("{:#}", anyhow::Error::from(e));
        assert_eq!(chain.matches("No space left on device").count(), 1, "{chain}");
        assert!(chain.starts_with("/x/y: "), "{chain}");
    }
}
