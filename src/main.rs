use clap::{CommandFactory, FromArgMatches};

fn main() {
    quantize::keep_freed_memory();
    quantize::io::atomic::install_signal_cleanup();
    let matches = quantize::cli::Cli::command().get_matches();
    let cli = quantize::cli::Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let given = quantize::cli::quantize::Given::from_matches(&matches);
    if let Err(e) = quantize::cli::run(cli, &given) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
