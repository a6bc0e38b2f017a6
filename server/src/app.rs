//! The `llama-server` command line: every subcommand, parsed by one clap parser. It lives in the library so
//! the operator's tests parse the arguments it plans for pods with exactly this parser.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::cli;

#[derive(Debug, Parser)]
#[command(name = "llama-server", version, about = "GGUF Llama inference server")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Commands,
}

#[derive(Debug, Subcommand)]
pub enum Commands {
    /// Generate a completion for one prompt and print it.
    Generate(cli::GenerateArgs),
    /// Measure prefill and decode speed.
    Bench(cli::BenchArgs),
    /// Serve the OpenAI-compatible HTTP API with continuous batching.
    Serve(crate::serve::ServeArgs),
    /// Load-test a running OpenAI-compatible server (concurrency levels, tok/s, TTFT, ITL).
    BenchServe(crate::bench_serve::BenchServeArgs),
    /// Download a model file (resume, retries, sha256 check, atomic publish).
    Fetch(crate::fetch::FetchArgs),
}

/// Runs a parsed command line.
pub fn run(args: &Cli) -> ExitCode {
    let result = match &args.command {
        Commands::Generate(g) => {
            if let Some(code) = cli::apply_threads(g.model.threads) {
                return code;
            }
            cli::run_generate(g)
        }
        Commands::Bench(b) => cli::run_bench(b),
        Commands::Serve(s) => return crate::serve::main(s),
        Commands::BenchServe(b) => crate::bench_serve::run(b),
        Commands::Fetch(f) => crate::fetch::run(f),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("llama-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}
