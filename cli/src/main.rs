//! `herald`: the command line.
//!
//! - `herald dev` runs an embedded Kafka broker (librdkafka's in-memory mock
//!   cluster), creates the topics, and runs the producer and the gateway in
//!   this process;
//! - the operator commands, for when a dashboard "does not update":
//!   `herald token` mints a JWT, `herald identity register|revoke` manages
//!   opaque tokens, `herald publish` sends a test event, and `herald tail`
//!   connects like a client with a given credential and prints what arrives.
//!
//! Exit codes are in [`error`]; every flag also reads a `HERALD_*` variable.

mod api;
mod dev;
mod error;
mod identity;
mod publish;
mod tail;
mod token;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use error::CliResult;

/// Herald command line.
#[derive(Debug, Parser)]
#[command(
    name = "herald",
    version,
    about,
    after_help = "Exit codes: 0 done; 1 request refused or invalid; 2 bad command line; \
                  3 credential refused, revoked or expired; 4 --timeout-secs passed before --count events; \
                  5 service unreachable or connection lost."
)]
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
    /// Register or revoke an opaque token (pubsub_token, SessionID) through the producer.
    #[command(subcommand)]
    Identity(identity::IdentityCommand),
    /// Publish a test event through the producer; prints where it landed.
    Publish(publish::PublishArgs),
    /// Connect to a gateway like a client with a credential and print every event it receives.
    Tail(tail::TailArgs),
}

async fn run(command: Command) -> CliResult<()> {
    match command {
        Command::Dev(args) => Ok(dev::run(args).await?),
        Command::Token(args) => {
            println!("{}", token::mint(&args)?);
            Ok(())
        }
        Command::Identity(command) => identity::run(command).await,
        Command::Publish(args) => publish::run(args).await,
        Command::Tail(args) => tail::run(args).await,
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
