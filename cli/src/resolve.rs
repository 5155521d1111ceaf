//! `meshless resolve`: run discovery once and print the endpoints.

use std::time::Duration;

use clap::Args;
use futures_util::StreamExt;
use meshless::discovery::{Endpoint, Update};
use serde::Serialize;

use meshless::Channel;
use meshless::balancer::ConnectivityState;

use crate::bench::{build_error, settle};
use crate::error::{CliError, one_line};
use crate::output::{self, EndpointView, NOT_APPLICABLE};
use crate::target::TargetArgs;
use crate::tls::TlsArgs;

/// Default bound on discovery's first answer.
pub const DEFAULT_TIMEOUT: &str = "10s";

/// Arguments of `meshless resolve`.
#[derive(Debug, Args)]
pub struct ResolveArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Also connect to every endpoint (HTTP/2, with TLS when a --tls-* option is given) and
    /// show whether it accepts the connection; any --tls-* option implies it.
    #[arg(long)]
    pub connect: bool,
    #[command(flatten)]
    pub tls: TlsArgs,
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
    /// With `--connect` (or TLS): how each endpoint answered a connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    connections: Option<Vec<ConnectionView>>,
}

/// How one endpoint answered a connection.
#[derive(Serialize)]
struct ConnectionView {
    address: String,
    /// `ready`, `transient_failure`, or `connecting` when it had not answered in time.
    state: String,
    /// Why it did not connect.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// Runs the command.
pub async fn run(args: ResolveArgs) -> Result<(), CliError> {
    let (target, discovery) = args.target.discovery()?;
    let endpoints = first_set(&target, discovery.watch(), args.timeout).await?;
    let views: Vec<EndpointView> = endpoints.iter().map(EndpointView::from).collect();
    let connections = if args.connect || args.tls.enabled() {
        Some(connect_all(&args, &target, &views).await?)
    } else {
        None
    };
    let failed = connections
        .as_ref()
        .and_then(|c| connect_failure(&target, c));
    if args.json {
        output::json_line(&ResolveJson {
            target: &target,
            endpoints: views,
            connections,
        })?;
        return failed.map_or(Ok(()), Err);
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
    let mut header: Vec<String> = ["ADDRESS", "WEIGHT", "ZONE", "READINESS", "METADATA"]
        .map(String::from)
        .to_vec();
    if connections.is_some() {
        header.push("CONNECTION".to_owned());
    }
    let mut rows = vec![header];
    for (i, v) in views.iter().enumerate() {
        let mut row = vec![
            v.address.clone(),
            v.weight.to_string(),
            v.zone.clone().unwrap_or_else(|| "-".to_owned()),
            v.readiness
                .clone()
                .unwrap_or_else(|| NOT_APPLICABLE.to_owned()),
            v.metadata_text(),
        ];
        if let Some(c) = connections.as_ref().and_then(|c| c.get(i)) {
            row.push(match &c.error {
                Some(e) => format!("{}: {e}", c.state),
                None => c.state.clone(),
            });
        }
        rows.push(row);
    }
    for l in output::table(&rows, &[]) {
        output::line(&l)?;
    }
    failed.map_or(Ok(()), Err)
}

/// Connects to every endpoint through a channel built like `bench`'s (round robin, so it
/// connects to each), and reports each endpoint's state once all have answered or
/// `--timeout` has passed; in the order of `views`.
async fn connect_all(
    args: &ResolveArgs,
    target: &str,
    views: &[EndpointView],
) -> Result<Vec<ConnectionView>, CliError> {
    let builder = Channel::builder(target.to_owned())
        .registry(args.target.registry()?)
        .policy("round_robin");
    let channel = args.tls.apply(builder)?.build().map_err(build_error)?;
    let status = settle(&channel, args.timeout).await;
    Ok(views
        .iter()
        .map(|v| {
            let found = status
                .endpoints
                .iter()
                .find(|e| e.address.to_string() == v.address);
            match found {
                Some(e) => ConnectionView {
                    address: v.address.clone(),
                    state: e.state.to_string(),
                    error: (e.state != ConnectivityState::Ready)
                        .then(|| e.last_error.as_deref().map(one_line))
                        .flatten(),
                },
                // Discovery changed between the two reads.
                None => ConnectionView {
                    address: v.address.clone(),
                    state: "unknown".to_owned(),
                    error: Some("no longer in the endpoint set".to_owned()),
                },
            }
        })
        .collect())
}

/// The error to exit with when some endpoint did not connect.
fn connect_failure(target: &str, connections: &[ConnectionView]) -> Option<CliError> {
    let failed: Vec<&ConnectionView> = connections.iter().filter(|c| c.state != "ready").collect();
    let first = failed.first()?;
    Some(CliError::Calls(format!(
        "{target}: {} of {} endpoints did not connect; {}: {}",
        failed.len(),
        connections.len(),
        first.address,
        first.error.as_deref().unwrap_or(&first.state)
    )))
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
