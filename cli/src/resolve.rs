//! `meshless resolve`: run discovery once and print the endpoints.

use std::time::Duration;

use clap::Args;
use futures_util::StreamExt;
use meshless::discovery::{Endpoint, Update};
use serde::Serialize;

use crate::error::CliError;
use crate::output::{self, EndpointView, NOT_APPLICABLE};
use crate::target::TargetArgs;

/// Default bound on discovery's first answer.
pub const DEFAULT_TIMEOUT: &str = "10s";

/// Arguments of `meshless resolve`.
#[derive(Debug, Args)]
pub struct ResolveArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// How long to wait for discovery's first answer.
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_TIMEOUT, value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

#[derive(Serialize)]
struct ResolveJson<'a> {
    target: &'a str,
    endpoints: Vec<EndpointView>,
}

/// Runs the command.
pub async fn run(args: ResolveArgs) -> Result<(), CliError> {
    let (target, discovery) = args.target.discovery()?;
    let endpoints = first_set(&target, discovery.watch(), args.timeout).await?;
    let views: Vec<EndpointView> = endpoints.iter().map(EndpointView::from).collect();
    if args.json {
        return output::json_line(&ResolveJson {
            target: &target,
            endpoints: views,
        });
    }
    if views.is_empty() {
        return output::line(&format!(
            "{target}: discovery succeeded and found no endpoints (the set is empty)"
        ));
    }
    output::line(&format!(
        "{target}: {} endpoint{}",
        views.len(),
        if views.len() == 1 { "" } else { "s" }
    ))?;
    let mut rows = vec![
        ["ADDRESS", "WEIGHT", "ZONE", "READINESS", "METADATA"]
            .map(String::from)
            .to_vec(),
    ];
    for v in &views {
        rows.push(vec![
            v.address.clone(),
            v.weight.to_string(),
            v.zone.clone().unwrap_or_else(|| "-".to_owned()),
            v.readiness
                .clone()
                .unwrap_or_else(|| NOT_APPLICABLE.to_owned()),
            v.metadata_text(),
        ]);
    }
    for l in output::table(&rows, &[]) {
        output::line(&l)?;
    }
    Ok(())
}

/// The first complete endpoint set of `stream`: its first `Reset`, or its first error.
async fn first_set(
    target: &str,
    mut stream: meshless::discovery::UpdateStream,
    timeout: Duration,
) -> Result<Vec<Endpoint>, CliError> {
    let first = tokio::time::timeout(timeout, async {
        loop {
            match stream.next().await {
                Some(Ok(Update::Reset(set))) => return Ok(set),
                // A backend sends a Reset first; anything before it is not a complete set.
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(CliError::Discovery(e.to_string())),
                None => {
                    return Err(CliError::Discovery(format!(
                        "{target}: discovery ended without producing an endpoint set"
                    )));
                }
            }
        }
    })
    .await;
    first.unwrap_or_else(|_| {
        Err(CliError::Discovery(format!(
            "{target}: discovery gave no answer within {} (raise --timeout, or check that the backend is reachable)",
            humantime::format_duration(timeout)
        )))
    })
}
