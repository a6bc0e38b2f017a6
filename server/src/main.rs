//! `llama-server`: the command line is defined in the library (`llama_server::app`).

use std::process::ExitCode;

use clap::Parser;
use llama_server::app::{Cli, run};

fn main() -> ExitCode {
    run(&Cli::parse())
}
