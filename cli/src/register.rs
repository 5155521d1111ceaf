//! `meshless register`: keep a server registered in a registry (Consul, etcd) until Ctrl-C or
//! `--duration`, printing each change of the registration's state, then deregister.

use std::time::Duration;

use clap::Args;
use meshless::discovery::{Instance, Registrar, RegistrationState, RegistrationStatus};
use serde::Serialize;

use crate::error::CliError;
use crate::output;

/// Arguments of `meshless register`.
#[derive(Debug, Args)]
pub struct RegisterArgs {
    /// Where to register: `consul://AGENT-HOST:8500[?token=..&format=go-zero|kratos&ttl=20s]`
    /// or `etcd://HOST:2379[,HOST:2379][?format=go-zero|kratos&ttl=10s&user=..&password=..]`.
    #[arg(value_name = "REGISTRY")]
    pub registry: String,
    /// The server's address, `HOST:PORT` (an IP the clients can reach, not 0.0.0.0).
    #[arg(long, value_name = "HOST:PORT")]
    pub addr: String,
    /// The service name clients look up.
    #[arg(long)]
    pub name: String,
    /// The record format: `go-zero` or `kratos`.
    #[arg(long, value_name = "FORMAT")]
    pub format: Option<String>,
    /// The TTL of the registration's check or lease (default: the format's own).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub ttl: Option<Duration>,
    /// The instance id (default: the format's, e.g. `<name>-<host>-<port>`).
    #[arg(long)]
    pub id: Option<String>,
    /// The server's version (kratos's `version=` tag).
    #[arg(long)]
    pub version: Option<String>,
    /// The instance's weight.
    #[arg(long)]
    pub weight: Option<u32>,
    /// Metadata, `KEY=VALUE`; repeat for more.
    #[arg(long = "meta", value_name = "KEY=VALUE")]
    pub meta: Vec<String>,
    /// Stop (and deregister) after this long instead of at Ctrl-C.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Print one JSON object per state change instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct StateJson<'a> {
    key: &'a str,
    state: &'a str,
    registrations: u64,
    last_error: Option<String>,
}

fn state_name(s: RegistrationState) -> &'static str {
    match s {
        RegistrationState::Registering => "registering",
        RegistrationState::Registered => "registered",
        RegistrationState::Retrying => "retrying",
        RegistrationState::Deregistered => "deregistered",
        _ => "unknown",
    }
}

/// `r` with the `--format` and `--ttl` the command line gives, through the registrar's own
/// setters.
#[cfg(any(feature = "consul", feature = "etcd"))]
fn configured<R, F: std::str::FromStr<Err = String>>(
    mut r: R,
    args: &RegisterArgs,
    format: impl FnOnce(R, F) -> R,
    ttl: impl FnOnce(R, Duration) -> R,
) -> Result<R, CliError> {
    if let Some(f) = &args.format {
        let f = f
            .parse()
            .map_err(|e: String| CliError::Usage(format!("--format: {e}")))?;
        r = format(r, f);
    }
    if let Some(t) = args.ttl {
        r = ttl(r, t);
    }
    Ok(r)
}

/// The registrar a `--registry` names.
fn registrar(args: &RegisterArgs) -> Result<Box<dyn Registrar>, CliError> {
    let scheme = args
        .registry
        .split_once("://")
        .map(|(s, _)| s)
        .unwrap_or("");
    match scheme {
        #[cfg(feature = "consul")]
        "consul" => {
            use meshless::discovery::consul::ConsulRegistrar;
            let r = ConsulRegistrar::from_target(&args.registry)
                .map_err(|e| CliError::Usage(e.to_string()))?;
            Ok(Box::new(configured(
                r,
                args,
                ConsulRegistrar::format,
                ConsulRegistrar::ttl,
            )?))
        }
        #[cfg(feature = "etcd")]
        "etcd" => {
            use meshless::discovery::etcd::EtcdRegistrar;
            let r = EtcdRegistrar::from_target(&args.registry)
                .map_err(|e| CliError::Usage(e.to_string()))?;
            Ok(Box::new(configured(
                r,
                args,
                EtcdRegistrar::format,
                EtcdRegistrar::ttl,
            )?))
        }
        _ => {
            let mut known = Vec::new();
            if cfg!(feature = "consul") {
                known.push("consul://AGENT-HOST:8500");
            }
            if cfg!(feature = "etcd") {
                known.push("etcd://HOST:2379[,HOST:2379]");
            }
            Err(CliError::Usage(format!(
                "cannot register in `{}`: registries are {} (a build without a backend's \
                 cargo feature lacks it)",
                meshless::discovery::redact_target(&args.registry),
                if known.is_empty() {
                    "none in this build; build with --features consul or --features etcd".to_owned()
                } else {
                    known.join(" and ")
                }
            )))
        }
    }
}

fn instance(args: &RegisterArgs) -> Result<Instance, CliError> {
    let mut i = Instance::new(&args.name, &args.addr);
    if let Some(id) = &args.id {
        i = i.with_id(id);
    }
    if let Some(v) = &args.version {
        i = i.with_version(v);
    }
    if let Some(w) = args.weight {
        i = i.with_weight(w);
    }
    for m in &args.meta {
        let Some((k, v)) = m.split_once('=').filter(|(k, _)| !k.is_empty()) else {
            return Err(CliError::Usage(format!("--meta `{m}` is not KEY=VALUE")));
        };
        i = i.with_metadata(k, v);
    }
    i.validate().map_err(|e| CliError::Usage(e.to_string()))?;
    Ok(i)
}

fn print(status: &RegistrationStatus, json: bool) -> Result<(), CliError> {
    let error = status.last_error.as_ref().map(|e| e.to_string());
    if json {
        return output::json_line(&StateJson {
            key: &status.key,
            state: state_name(status.state),
            registrations: status.registrations,
            last_error: error,
        });
    }
    let mut line = format!("{}: {}", status.key, state_name(status.state));
    if status.state != RegistrationState::Registered
        && let Some(e) = error
    {
        line.push_str(&format!(" (last error: {e})"));
    }
    output::line(&line)
}

/// Runs the command until Ctrl-C or `--duration`; then deregisters (bounded).
pub async fn run(args: RegisterArgs) -> Result<(), CliError> {
    let registrar = registrar(&args)?;
    let instance = instance(&args)?;
    let registration = registrar
        .register(instance)
        .map_err(|e| CliError::Usage(e.to_string()))?;
    let mut changes = registration.status_changes();
    let mut shown: Option<(RegistrationState, Option<String>)> = None;
    let stop_at = args.duration.map(|d| tokio::time::Instant::now() + d);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let status = changes.borrow_and_update().clone();
        let now = (
            status.state,
            status.last_error.as_ref().map(|e| e.to_string()),
        );
        if shown.as_ref() != Some(&now) {
            print(&status, args.json)?;
            shown = Some(now);
        }
        let until = async {
            match stop_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = changes.changed() => if r.is_err() { break },
            _ = &mut ctrl_c => break,
            _ = until => break,
        }
    }
    let last = registration.status();
    registration.deregister().await;
    let mut end = last.clone();
    end.state = RegistrationState::Deregistered;
    print(&end, args.json)?;
    if last.registrations == 0 {
        return Err(CliError::Discovery(format!(
            "{} was never registered{}",
            last.key,
            last.last_error
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        )));
    }
    Ok(())
}
