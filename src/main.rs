use clap::Parser;

fn main() {
    quantize::keep_freed_memory();
    let cli = quantize::cli::Cli::parse();
    if let Err(e) = quantize::cli::run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
