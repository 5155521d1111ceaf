//! `meshless watch`: print every change to a target's endpoint set as it happens.

use std::collections::BTreeMap;
use std::time::Duration;

use clap::Args;
use futures_util::StreamExt;
use meshless::discovery::{Address, DiscoveryError, Endpoint, ErrorKind, Update};
use serde::Serialize;

use crate::error::{CliError, one_line};
use crate::output::{self, EndpointView};
use crate::target::TargetArgs;

/// Arguments of `meshless watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Print one JSON object per event, one per line.
    #[arg(long)]
    pub json: bool,
    /// Stop after this long (for example `30s`, `5m`); default: until Ctrl-C.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
}

/// What one event changed in the set, found by diffing the snapshots before and after it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Diff {
    /// Endpoints that were not in the set.
    pub added: Vec<Endpoint>,
    /// Endpoints whose weight, zone or metadata changed.
    pub changed: Vec<Endpoint>,
    /// Addresses that left the set.
    pub removed: Vec<Address>,
}

/// The endpoint set as the updates so far make it, keyed (and so printed) by address.
#[derive(Debug, Default)]
pub struct Snapshot {
    set: BTreeMap<Address, Endpoint>,
}

impl Snapshot {
    /// Applies `update` and returns what it changed.
    pub fn apply(&mut self, update: Update) -> Diff {
        let next = match update {
            Update::Reset(eps) => eps.into_iter().map(|e| (e.addr.clone(), e)).collect(),
            Update::Add(eps) => {
                let mut next = self.set.clone();
                next.extend(eps.into_iter().map(|e| (e.addr.clone(), e)));
                next
            }
            Update::Remove(addrs) => {
                let mut next = self.set.clone();
                for a in &addrs {
                    next.remove(a);
                }
                next
            }
        };
        let mut diff = Diff::default();
        for (addr, ep) in &next {
            match self.set.get(addr) {
                None => diff.added.push(ep.clone()),
                Some(old) if old != ep => diff.changed.push(ep.clone()),
                Some(_) => {}
            }
        }
        diff.removed = self
            .set
            .keys()
            .filter(|a| !next.contains_key(a))
            .cloned()
            .collect();
        self.set = next;
        diff
    }

    /// How many endpoints the set holds.
    pub fn len(&self) -> usize {
        self.set.len()
    }
}

/// One printed event.
#[derive(Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum Event {
    /// A full set (after a (re)list), and what it changed.
    Reset(SetChange),
    /// Endpoints added or changed.
    Add(SetChange),
    /// Endpoints removed.
    Remove(SetChange),
    /// Discovery failed; the backend keeps its last good set and retries.
    Error { kind: &'static str, message: String },
    /// The backend's stream ended: the set will not change again (a static list).
    End { message: &'static str },
}

#[derive(Serialize)]
struct SetChange {
    /// How many endpoints the set holds after the event.
    endpoints: usize,
    added: Vec<EndpointView>,
    changed: Vec<EndpointView>,
    removed: Vec<String>,
}

#[derive(Serialize)]
struct Stamped<'a> {
    ts: String,
    #[serde(flatten)]
    event: &'a Event,
}

const END_MESSAGE: &str = "discovery stream ended: this target's set will not change";

/// Runs the command until Ctrl-C, `--duration` or the end of the backend's stream.
pub async fn run(args: WatchArgs) -> Result<(), CliError> {
    let (_, discovery) = args.target.discovery()?;
    let mut stream = discovery.watch();
    let mut snapshot = Snapshot::default();
    let stop_at = args.duration.map(|d| tokio::time::Instant::now() + d);
    let stop = async {
        match stop_at {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(stop);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut failing: Option<String> = None;
    loop {
        let item = tokio::select! {
            item = stream.next() => item,
            _ = &mut stop => break,
            _ = &mut ctrl_c => break,
        };
        let event = match item {
            Some(Ok(update)) => {
                failing = None;
                let wrap: fn(SetChange) -> Event = match &update {
                    Update::Reset(_) => Event::Reset,
                    Update::Add(_) => Event::Add,
                    Update::Remove(_) => Event::Remove,
                };
                let diff = snapshot.apply(update);
                wrap(SetChange {
                    endpoints: snapshot.len(),
                    added: diff.added.iter().map(EndpointView::from).collect(),
                    changed: diff.changed.iter().map(EndpointView::from).collect(),
                    removed: diff.removed.iter().map(Address::to_string).collect(),
                })
            }
            Some(Err(e)) => {
                failing = Some(e.to_string());
                error_event(&e)
            }
            None => {
                print(
                    &Event::End {
                        message: END_MESSAGE,
                    },
                    args.json,
                )?;
                break;
            }
        };
        print(&event, args.json)?;
    }
    match failing {
        Some(e) => Err(CliError::Discovery(format!(
            "discovery was still failing when the watch stopped: {e}"
        ))),
        None => Ok(()),
    }
}

fn error_event(e: &DiscoveryError) -> Event {
    Event::Error {
        kind: kind_name(e.kind()),
        message: one_line(e.message()),
    }
}

/// The snake_case name of an error kind, as printed.
fn kind_name(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Unavailable => "unavailable",
        ErrorKind::Forbidden => "forbidden",
        ErrorKind::Unauthenticated => "unauthenticated",
        ErrorKind::NotFound => "not_found",
        ErrorKind::Malformed => "malformed",
        ErrorKind::Resolve => "resolve",
        _ => "other",
    }
}

fn print(event: &Event, json: bool) -> Result<(), CliError> {
    let ts = output::now_rfc3339();
    if json {
        return output::json_line(&Stamped { ts, event });
    }
    let (name, change) = match event {
        Event::Reset(c) => ("reset", c),
        Event::Add(c) => ("add", c),
        Event::Remove(c) => ("remove", c),
        Event::Error { kind, message } => {
            return output::line(&format!("{ts}  error   [{kind}] {message}"));
        }
        Event::End { message } => return output::line(&format!("{ts}  end     {message}")),
    };
    output::line(&format!(
        "{ts}  {name:<6}  {} endpoint{} (+{} ~{} -{})",
        change.endpoints,
        if change.endpoints == 1 { "" } else { "s" },
        change.added.len(),
        change.changed.len(),
        change.removed.len()
    ))?;
    for v in &change.added {
        output::line(&format!("    + {}  {}", v.address, v.facts()))?;
    }
    for v in &change.changed {
        output::line(&format!("    ~ {}  {}", v.address, v.facts()))?;
    }
    for a in &change.removed {
        output::line(&format!("    - {a}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    fn ep(port: u16) -> Endpoint {
        Endpoint::new(SocketAddr::from(([10, 0, 0, 1], port)))
    }

    #[test]
    fn diffs_follow_resets_adds_and_removes() {
        let mut s = Snapshot::default();
        let d = s.apply(Update::Reset(vec![ep(1), ep(2)]));
        assert_eq!((d.added.len(), d.changed.len(), d.removed.len()), (2, 0, 0));

        // A relist that drops 1, keeps 2 and brings 3.
        let d = s.apply(Update::Reset(vec![ep(2), ep(3)]));
        assert_eq!(d.added, vec![ep(3)]);
        assert_eq!(d.removed, vec![ep(1).addr]);
        assert!(d.changed.is_empty());

        // Add of a known address with a new weight is a change, not an addition.
        let d = s.apply(Update::Add(vec![ep(2).with_weight(5), ep(4)]));
        assert_eq!(d.added, vec![ep(4)]);
        assert_eq!(d.changed, vec![ep(2).with_weight(5)]);

        // Removing an unknown address changes nothing.
        let d = s.apply(Update::Remove(vec![ep(3).addr, ep(9).addr]));
        assert_eq!(d.removed, vec![ep(3).addr]);
        assert_eq!(s.len(), 2);

        // The same set again: no change at all.
        let d = s.apply(Update::Reset(vec![ep(2).with_weight(5), ep(4)]));
        assert_eq!(d, Diff::default());
    }
}
