//! `herald`: the command line. `herald dev` runs a Kafka-compatible broker
//! (a managed `tansu` child with in-memory storage), creates the topics, and
//! runs the producer and the gateway in this process; `herald token` mints a
//! JWT for development and debugging.

mod dev;
mod token;

use clap::{Parser, Subcommand};

/// Herald command line.
#[derive(Debug, Parser)]
#[command(name = "herald", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Development mode: broker, producer and gateway in one command.
    Dev(dev::DevArgs),
    /// Mint a JWT (HS256) for a user or contact of an account.
    Token(token::TokenArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Dev(args) => dev::run(args).await,
        Command::Token(args) => {
            println!("{}", token::mint(&args)?);
            Ok(())
        }
    }
}
