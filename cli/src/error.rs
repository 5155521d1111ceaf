//! What can go wrong in a command, and the exit code each kind of failure gives.

use std::io;

/// Exit code of a command that did what it was asked.
pub const EXIT_OK: u8 = 0;
/// Exit code when the command itself failed: its output could not be written, or the async
/// runtime could not start.
pub const EXIT_INTERNAL: u8 = 1;
/// Exit code for bad usage: unknown flags, a malformed target, an unknown policy. clap uses 2
/// for its own usage errors, so every usage error shares it.
pub const EXIT_USAGE: u8 = 2;
/// Exit code when discovery failed: the backend's error (forbidden, unreachable, a name that
/// does not resolve), or no answer within `--timeout`.
pub const EXIT_DISCOVERY: u8 = 3;
/// Exit code when calls failed: `bench` reached no endpoint, or some of its calls failed;
/// `resolve --connect`: some endpoint did not connect.
pub const EXIT_CALLS: u8 = 4;

/// Exit code when `top --scrape` read no metrics: no scrape of its URL succeeded during the
/// run (nothing listening, an HTTP error, no answer in time).
pub const EXIT_SCRAPE: u8 = 5;

/// The exit codes, as `meshless --help` shows them.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success (for resolve, an empty endpoint set is a success and is said plainly)
  1  internal error: output could not be written, or the runtime could not start
  2  usage: bad flag, malformed target, unknown scheme or policy
  3  discovery failed: the backend's error (forbidden, unreachable, unknown name),
     or no answer within --timeout; watch: discovery was failing when it stopped;
     register: the instance was never registered
  4  calls failed: bench reached no endpoint, or some of its calls failed;
     resolve --connect (or --tls-*): some endpoint did not connect
  5  top --scrape: no scrape of its URL succeeded during the run";

/// A failed command. Each variant's message is complete: it names what failed and, where the
/// cause is known, what to do.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad input from the user.
    #[error("{0}")]
    Usage(String),
    /// Discovery failed or did not answer.
    #[error("{0}")]
    Discovery(String),
    /// Calls failed.
    #[error("{0}")]
    Calls(String),
    /// `top --scrape` read no metrics.
    #[error("{0}")]
    Scrape(String),
    /// Writing the output failed.
    #[error("cannot write output: {0}")]
    Output(#[from] io::Error),
    /// Anything else that stops the command.
    #[error("{0}")]
    Internal(String),
}

impl CliError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => EXIT_USAGE,
            CliError::Discovery(_) => EXIT_DISCOVERY,
            CliError::Calls(_) => EXIT_CALLS,
            CliError::Scrape(_) => EXIT_SCRAPE,
            CliError::Output(_) | CliError::Internal(_) => EXIT_INTERNAL,
        }
    }

    /// True when stdout was closed by its reader (`meshless watch ... | head`): not a
    /// failure worth a message.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, CliError::Output(e) if e.kind() == io::ErrorKind::BrokenPipe)
    }
}

/// `text` on one line: backends may put line breaks in their messages (API response
/// bodies), and the CLI promises one line per error.
pub fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_joins_lines_and_squeezes_spaces() {
        assert_eq!(
            one_line("forbidden:\n  ask your admin\r\n"),
            "forbidden: ask your admin"
        );
    }
}
