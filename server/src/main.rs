//! `llama-server`: subcommands `generate` and `bench` (engine) — the serving side adds `serve` here as
//! `Serve(llama_server::serve::ServeArgs)` with its own dispatch arm.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use llama_server::cli;

#[derive(Debug, Parser)]
#[command(name = "llama-server", version, about = "GGUF Llama inference server")]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Debug, Subcommand)]
enum Commands {
    /// Generate a completion for one prompt and print it.
    Generate(cli::GenerateArgs),
    /// Measure prefill and decode speed.
    Bench(cli::BenchArgs),
    /// Serve the OpenAI-compatible HTTP API with continuous batching.
    Serve(llama_server::serve::ServeArgs),
    /// Load-test a running OpenAI-compatible server (concurrency levels, tok/s, TTFT, ITL).
    BenchServe(llama_server::bench_serve::BenchServeArgs),
}

fn main() -> ExitCode {
    let args = Cli::parse();
    let result = match &args.command {
        Commands::Generate(g) => {
            if let Some(code) = cli::apply_threads(g.model.threads) {
                return code;
            }
            cli::run_generate(g)
        }
        Commands::Bench(b) => cli::run_bench(b),
        Commands::Serve(s) => return llama_server::serve::main(s),
        Commands::BenchServe(b) => llama_server::bench_serve::run(b),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("llama-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}
