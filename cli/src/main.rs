//! The `meshless` command: see what discovery returns for a target (`resolve`), watch it
//! change (`watch`), and send calls through a `meshless::Channel` to see where they go
//! (`bench`), with the same discovery and balancing code the library uses; and keep a
//! server registered in a registry (`register`).

mod bench;
mod check_config;
mod error;
mod output;
mod percentiles;
mod register;
mod resilience;
mod resolve;
mod scrape;
mod target;
mod tls;
mod top;
mod watch;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::error::{CliError, EXIT_CODES_HELP, EXIT_OK, EXIT_USAGE, one_line};

/// How long the runtime waits, at exit, for blocking tasks (a system host lookup still
/// running) before the process ends anyway.
const SHUTDOWN_BOUND: Duration = Duration::from_millis(500);

/// See what discovery returns for a target, watch it change, and load-test it through a
/// meshless Channel.
#[derive(Debug, Parser)]
#[command(name = "meshless", version, after_help = EXIT_CODES_HELP)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run discovery once and print the endpoints: address, weight, zone, readiness and
    /// metadata.
    #[command(after_help = EXIT_CODES_HELP)]
    Resolve(resolve::ResolveArgs),
    /// Print every change to the endpoint set (timestamped added, removed and reset sets,
    /// and errors) until Ctrl-C or --duration.
    #[command(after_help = EXIT_CODES_HELP)]
    Watch(watch::WatchArgs),
    /// Send grpc.health.v1.Health/Check calls through a meshless Channel; print each
    /// endpoint's share, latency percentiles and errors by status code.
    #[command(after_help = EXIT_CODES_HELP)]
    Bench(Box<bench::BenchArgs>),
    /// Keep a server registered (Consul or etcd: go-zero or kratos format) until Ctrl-C or
    /// --duration, printing each change of the registration's state; then deregister.
    #[command(after_help = EXIT_CODES_HELP)]
    Register(register::RegisterArgs),
    /// Like bench, with a live view that refreshes every second: each endpoint's state,
    /// share, rate, calls in flight, failures, ejection and latency estimate. With
    /// --scrape URL, the same view of a running application, from its metrics exporter.
    #[command(after_help = EXIT_CODES_HELP)]
    Top(Box<top::TopArgs>),
    /// Validate a config file (.yaml, .toml, .json) and print every problem with its line,
    /// column and key path.
    #[command(after_help = EXIT_CODES_HELP)]
    CheckConfig(check_config::CheckConfigArgs),
}

fn main() -> ExitCode {
    // A bug must still end in one line, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
        eprintln!(
            "meshless: internal error (a bug, please report it): {}",
            one_line(&info.to_string())
        );
    }));
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return fail(&CliError::Internal(format!(
                "cannot start the runtime: {e}"
            )));
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Resolve(args) => resolve::run(args).await,
            Command::Watch(args) => watch::run(args).await,
            Command::Bench(args) => bench::run(*args).await,
            Command::CheckConfig(args) => check_config::run(args),
            Command::Top(args) => top::run(*args).await,
            Command::Register(args) => register::run(args).await,
        }
    });
    runtime.shutdown_timeout(SHUTDOWN_BOUND);
    match result {
        Ok(()) => ExitCode::from(EXIT_OK),
        // The reader of our output went away (`| head`): stop quietly.
        Err(e) if e.is_broken_pipe() => ExitCode::from(EXIT_OK),
        Err(e) => fail(&e),
    }
}

fn fail(e: &CliError) -> ExitCode {
    eprintln!("meshless: {}", one_line(&e.to_string()));
    ExitCode::from(e.exit_code())
}

/// Help and version go to stdout as clap renders them; usage errors become one line.
fn usage_error(e: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            ExitCode::from(
                if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                    EXIT_USAGE
                } else {
                    EXIT_OK
                },
            )
        }
        _ => {
            // clap's message is the lines before its usage block; tips included.
            let text = e.render().to_string();
            let message: Vec<&str> = text
                .lines()
                .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
                .collect();
            let message = one_line(&message.join(" "));
            let first = message.strip_prefix("error: ").unwrap_or(&message);
            eprintln!("meshless: {first} (see `meshless --help`)");
            ExitCode::from(EXIT_USAGE)
        }
    }
}
