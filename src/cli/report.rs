//! `quantize report`: earlier eval reports merged into one table and, with `--plot`, one
//! SVG of perplexity increase against bits per weight.

use crate::eval::merge::{read_peers, read_reports, table};
use crate::Error;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// Eval reports (`quantize eval --baseline B --model M... --json FILE`), all measured on
    /// one text, baseline and protocol.
    #[arg(required = true, num_args = 1..)]
    pub reports: Vec<PathBuf>,
    /// Draw perplexity increase against bits/weight, one point per checkpoint, into this
    /// SVG file (must not exist).
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Other tools' measured points as a CSV (`name,bits_per_weight,perplexity_delta_pct,protocol`;
    /// docs/peers.csv holds llama.cpp's on SmolLM2); rows of another protocol are left out, said.
    #[arg(long)]
    pub peers: Option<PathBuf>,
    /// Title of the plot.
    #[arg(long, default_value = "Perplexity increase against bits per weight")]
    pub title: String,
}

pub fn run(a: ReportArgs) -> anyhow::Result<()> {
    if let Some(p) = a.plot.as_ref() {
        crate::io::atomic::refuse_existing("--plot", p)?;
        if p.extension().is_none_or(|e| e != "svg") {
            Err(Error::option("--plot", format!("{}: the plot is written as SVG; name it *.svg", p.display())))?;
        }
    }
    let entries = read_reports(&a.reports)?;
    let mut peers = match &a.peers {
        Some(p) => read_peers(p)?,
        None => vec![],
    };
    let protocol = &entries[0].setting.protocol;
    let other: Vec<String> = peers.iter().filter(|p| &p.protocol != protocol).map(|p| p.name.clone()).collect();
    if !other.is_empty() {
        eprintln!(
            "warning: --peers: left out {} (measured with another protocol than the reports' {protocol})",
            other.join(", ")
        );
        peers.retain(|p| &p.protocol == protocol);
    }
    print!("{}", table(&entries, &peers));
    if let Some(p) = &a.plot {
        let svg = crate::eval::plot::svg(&entries, &peers, &a.title).map_err(|e| Error::option("--plot", e))?;
        let file = crate::io::atomic::AtomicFile::create(p)?;
        std::fs::write(file.path(), svg).map_err(|e| Error::io(file.path(), e))?;
        let done = file.commit()?;
        eprintln!("plot: {}", done.display());
    }
    Ok(())
}
