//! Drives a bounded number of calls at a fixed concurrency and collects what happened.
//!
//! ```no_run
//! # async fn demo(mut client: meshless_integration::greeter::greeter_client::GreeterClient<tonic::transport::Channel>) {
//! use meshless_integration::greeter::HelloRequest;
//! use meshless_integration::load;
//!
//! let outcome = load::run(32, 4000, |i| {
//!     let mut client = client.clone();
//!     async move {
//!         let request = HelloRequest { name: format!("call {i}"), ..Default::default() };
//!         // Ok carries the label of the backend that answered.
//!         client.say_hello(request).await.map(|r| r.into_inner().server)
//!     }
//! })
//! .await;
//! println!("{} ok, {:?} errors", outcome.ok(), outcome.errors);
//! # }
//! ```

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};
use tonic::Status;

use crate::greeter::HelloRequest;
use crate::greeter::greeter_client::GreeterClient;
use crate::report::Latencies;

/// The bound [`run`] puts on a whole run. Generous: a run that needs this long is broken.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// What a load run observed.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct LoadOutcome {
    /// Latency of every successful call.
    pub latencies: Latencies,
    /// Successful calls per backend label (the `Ok` value of each call).
    pub backends: BTreeMap<String, u64>,
    /// Failed calls per gRPC status code name (`"Unavailable"`, `"DeadlineExceeded"`, ...).
    pub errors: BTreeMap<String, u64>,
    /// Calls not finished, or not started, when the overall timeout fired.
    pub unfinished: u64,
    /// Wall-clock time of the whole run.
    pub elapsed: Duration,
}

impl LoadOutcome {
    /// The number of successful calls.
    pub fn ok(&self) -> u64 {
        self.backends.values().sum()
    }

    /// The number of failed calls (unfinished ones not included).
    pub fn failed(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Successful calls per second of wall-clock time.
    pub fn throughput(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.ok() as f64 / secs
        } else {
            0.0
        }
    }
}

/// Runs `requests` calls, `call(0)` to `call(requests - 1)`, with at most `concurrency` in
/// flight, bounded by [`DEFAULT_TIMEOUT`] overall. Each call answers `Ok(backend label)` or the
/// status it failed with.
pub async fn run<F, Fut>(concurrency: usize, requests: usize, call: F) -> LoadOutcome
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = Result<String, Status>>,
{
    run_with_timeout(concurrency, requests, DEFAULT_TIMEOUT, call).await
}

/// [`run`] with an overall bound of `timeout`. Calls still running when it fires are dropped
/// (cancelled) and counted in [`LoadOutcome::unfinished`].
pub async fn run_with_timeout<F, Fut>(
    concurrency: usize,
    requests: usize,
    timeout: Duration,
    mut call: F,
) -> LoadOutcome
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = Result<String, Status>>,
{
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut calls = stream::iter(0..requests)
        .map(|i| {
            let call = call(i);
            async move {
                let begun = Instant::now();
                let result = call.await;
                (result, begun.elapsed())
            }
        })
        .buffer_unordered(concurrency.max(1));

    let mut outcome = LoadOutcome::default();
    let mut finished = 0u64;
    while let Ok(Some((result, latency))) = tokio::time::timeout_at(deadline, calls.next()).await {
        finished += 1;
        match result {
            Ok(backend) => {
                outcome.latencies.record(latency);
                *outcome.backends.entry(backend).or_default() += 1;
            }
            Err(status) => {
                *outcome
                    .errors
                    .entry(format!("{:?}", status.code()))
                    .or_default() += 1;
            }
        }
    }
    outcome.unfinished = requests as u64 - finished;
    outcome.elapsed = start.elapsed();
    outcome
}

// ===== the load examples' command line and call =====

/// The options every load example takes: `--requests N`, `--concurrency C` and `--json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadArgs {
    /// Calls to send.
    pub requests: usize,
    /// Calls in flight at once.
    pub concurrency: usize,
    /// Print one JSON object instead of tables.
    pub json: bool,
}

impl LoadArgs {
    /// Parses the process's arguments for the example `program`, with these defaults.
    pub fn from_env(program: &str, requests: usize, concurrency: usize) -> Result<Self, String> {
        Self::parse(program, requests, concurrency, std::env::args().skip(1))
    }

    /// Parses `args` (without the program name); the error is a line to print.
    pub fn parse(
        program: &str,
        requests: usize,
        concurrency: usize,
        args: impl IntoIterator<Item = String>,
    ) -> Result<Self, String> {
        let mut out = LoadArgs {
            requests,
            concurrency,
            json: false,
        };
        let mut it = args.into_iter();
        while let Some(a) = it.next() {
            let mut number = |name: &str| -> Result<usize, String> {
                let v = it.next().ok_or(format!("{name} needs a value"))?;
                match v.parse::<usize>() {
                    Ok(n) if n > 0 => Ok(n),
                    _ => Err(format!("{name}: `{v}` is not a positive number")),
                }
            };
            match a.as_str() {
                "--requests" => out.requests = number("--requests")?,
                "--concurrency" => out.concurrency = number("--concurrency")?,
                "--json" => out.json = true,
                "-h" | "--help" => {
                    return Err(format!(
                        "usage: {program} [--requests N] [--concurrency C] [--json]"
                    ));
                }
                other => return Err(format!("unknown argument `{other}`; try --help")),
            }
        }
        Ok(out)
    }
}

/// The error type tonic's clients box.
type StdError = Box<dyn std::error::Error + Send + Sync>;

/// A transport that tonic-generated clients can use from spawned tasks: what the load
/// helpers and the benches need of meshless's channels and tonic's alike.
pub trait Transport:
    tonic::client::GrpcService<
        tonic::body::Body,
        Future: Send,
        Error: Into<StdError>,
        ResponseBody: http_body::Body<Data = bytes::Bytes, Error: Into<StdError> + Send>
                          + Send
                          + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<T> Transport for T where
    T: tonic::client::GrpcService<
            tonic::body::Body,
            Future: Send,
            Error: Into<StdError>,
            ResponseBody: http_body::Body<Data = bytes::Bytes, Error: Into<StdError> + Send>
                              + Send
                              + 'static,
        > + Clone
        + Send
        + 'static
{
}

/// Sends `args.requests` `SayHello` calls through `client` at `args.concurrency`; each
/// successful call counts for the server that answered.
pub async fn say_hello<T: Transport>(client: GreeterClient<T>, args: &LoadArgs) -> LoadOutcome {
    run(args.concurrency, args.requests, |i| {
        let mut c = client.clone();
        async move {
            let req = HelloRequest {
                name: format!("call {i}"),
                ..Default::default()
            };
            c.say_hello(req).await.map(|r| r.into_inner().server)
        }
    })
    .await
}

#[cfg(test)]
mod args_tests {
    use super::LoadArgs;

    fn parse(args: &[&str]) -> Result<LoadArgs, String> {
        LoadArgs::parse("demo", 4000, 32, args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn defaults_overrides_and_errors() {
        assert_eq!(
            parse(&[]).unwrap(),
            LoadArgs {
                requests: 4000,
                concurrency: 32,
                json: false
            }
        );
        assert_eq!(
            parse(&["--requests", "10", "--concurrency", "2", "--json"]).unwrap(),
            LoadArgs {
                requests: 10,
                concurrency: 2,
                json: true
            }
        );
        assert!(
            parse(&["--requests"])
                .unwrap_err()
                .contains("needs a value")
        );
        assert!(
            parse(&["--requests", "0"])
                .unwrap_err()
                .contains("not a positive number")
        );
        assert!(
            parse(&["--bogus"])
                .unwrap_err()
                .contains("unknown argument `--bogus`")
        );
        assert!(parse(&["--help"]).unwrap_err().starts_with("usage: demo"));
    }
}
