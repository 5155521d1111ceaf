//! `meshless check-config FILE`: validates a config file and prints every problem, with its
//! line, column and key path.

use std::path::PathBuf;

use clap::Args;
use meshless::config::Config;
use serde::Serialize;

use crate::error::CliError;
use crate::output;

/// The file to check.
#[derive(Debug, Args)]
pub struct CheckConfigArgs {
    /// A config file: .yaml, .yml, .toml or .json.
    pub file: PathBuf,
    /// Print one JSON object instead of lines.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Report {
    file: String,
    ok: bool,
    clients: Vec<String>,
    problems: Vec<ProblemJson>,
}

#[derive(Serialize)]
struct ProblemJson {
    line: u32,
    column: u32,
    path: String,
    message: String,
}

/// Runs the command: exit 0 when the file is valid, 2 with every problem listed when not.
pub fn run(args: CheckConfigArgs) -> Result<(), CliError> {
    let file = args.file.display().to_string();
    let (clients, problems) = match Config::from_file(&args.file) {
        Ok(c) => (
            c.client_names().map(str::to_owned).collect::<Vec<_>>(),
            Vec::new(),
        ),
        Err(e) => (Vec::new(), e.problems),
    };
    if args.json {
        output::json_line(&Report {
            file: file.clone(),
            ok: problems.is_empty(),
            clients: clients.clone(),
            problems: problems
                .iter()
                .map(|p| ProblemJson {
                    line: p.pos.line,
                    column: p.pos.column,
                    path: p.path.clone(),
                    message: p.message.clone(),
                })
                .collect(),
        })?;
    } else if problems.is_empty() {
        output::line(&format!(
            "{file}: ok: {} client{}: {}",
            clients.len(),
            if clients.len() == 1 { "" } else { "s" },
            clients.join(", ")
        ))?;
    } else {
        for p in &problems {
            let path = if p.path.is_empty() {
                String::new()
            } else {
                format!("{}: ", p.path)
            };
            output::line(&format!(
                "{file}:{}:{}: {path}{}",
                p.pos.line, p.pos.column, p.message
            ))?;
        }
    }
    match problems.len() {
        0 => Ok(()),
        n => Err(CliError::Usage(format!(
            "{file}: {n} problem{} (listed on stdout)",
            if n == 1 { "" } else { "s" }
        ))),
    }
}
