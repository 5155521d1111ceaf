//! Greeter servers register themselves in etcd in go-zero's format, for as long as they
//! serve (`Registration::serve`), and a client finds them through meshless: one server,
//! then two sharing the calls, then the first shuts down, deregisters on its way out and
//! stops getting calls. A go-zero client on `etcd:///ADDR?key=greeter.rpc` would see the
//! same servers.
//!
//! ```text
//! cargo run --example registry_etcd --features etcd                 # spawns etcd on loopback
//! ETCD_ENDPOINTS=127.0.0.1:2379 cargo run --example registry_etcd --features etcd
//! ```
//!
//! Without `ETCD_ENDPOINTS` it starts Debian's `etcd` (package `etcd-server`) on free
//! loopback ports through meshless's test kit.

use std::error::Error;
use std::pin::Pin;
use std::time::Duration;

use futures_util::Stream;
use meshless::Channel;
use meshless::discovery::etcd::EtcdRegistrar;
use meshless::discovery::{Instance, Registrar};
use meshless_integration::etcd::EtcdServer;
use meshless_integration::greeter::greeter_client::GreeterClient;
use meshless_integration::greeter::greeter_server::{Greeter, GreeterServer};
use meshless_integration::greeter::{HelloReply, HelloRequest};
use tokio::sync::oneshot;
use tonic::{Request, Response, Status, Streaming};

const BOUND: Duration = Duration::from_secs(10);

/// A greeter that says who it is; only the unary call is implemented.
struct Hello(&'static str);

type Replies = Pin<Box<dyn Stream<Item = Result<HelloReply, Status>> + Send>>;

#[tonic::async_trait]
impl Greeter for Hello {
    async fn say_hello(&self, req: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
        Ok(Response::new(HelloReply {
            message: format!("hello {}", req.into_inner().name),
            server: self.0.to_owned(),
        }))
    }

    type StreamRepliesStream = Replies;

    async fn stream_replies(&self, _: Request<HelloRequest>) -> Result<Response<Replies>, Status> {
        Err(Status::unimplemented("only SayHello in this example"))
    }

    async fn collect_hellos(
        &self,
        _: Request<Streaming<HelloRequest>>,
    ) -> Result<Response<HelloReply>, Status> {
        Err(Status::unimplemented("only SayHello in this example"))
    }

    type ChatStream = Replies;

    async fn chat(&self, _: Request<Streaming<HelloRequest>>) -> Result<Response<Replies>, Status> {
        Err(Status::unimplemented("only SayHello in this example"))
    }
}

/// Starts a greeter named `name` registered in etcd as `greeter.rpc` while it serves.
/// Sending on the returned channel shuts it down; the task deregisters, then ends.
async fn serve(
    name: &'static str,
    registrar: &EtcdRegistrar,
) -> Result<(oneshot::Sender<()>, tokio::task::JoinHandle<()>), Box<dyn Error>> {
    // Listen first, so no client is sent to a port that is not open yet.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let registration = registrar.register(Instance::new("greeter.rpc", addr.to_string()))?;
    registration.wait_registered(BOUND).await?;
    println!(
        "{name} on {addr}, registered as {}",
        registration.status().key
    );
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tonic::transport::Server::builder()
        .add_service(GreeterServer::new(Hello(name)))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            async {
                let _ = stopped.await;
            },
        );
    let task = tokio::spawn(async move {
        // Deregisters (revokes the lease) once the server has stopped.
        if let Err(e) = registration.serve(server).await {
            eprintln!("{name}: {e}");
        }
    });
    Ok((stop, task))
}

async fn calls(client: &mut GreeterClient<Channel>, n: usize) -> Result<String, Box<dyn Error>> {
    let mut by_server = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..n {
        let reply = client
            .say_hello(HelloRequest {
                name: "example".into(),
                ..Default::default()
            })
            .await?;
        *by_server.entry(reply.into_inner().server).or_default() += 1;
    }
    Ok(by_server
        .iter()
        .map(|(s, n)| format!("{s} {n}"))
        .collect::<Vec<_>>()
        .join(", "))
}

async fn wait_for(channel: &Channel, ready: usize) -> Result<(), Box<dyn Error>> {
    let deadline = tokio::time::Instant::now() + BOUND;
    while channel.status().ready_count() != ready {
        if tokio::time::Instant::now() > deadline {
            return Err(format!(
                "not {ready} ready endpoints within {BOUND:?}: {:?}",
                channel.status()
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let (_etcd, endpoints) = match std::env::var("ETCD_ENDPOINTS") {
        Ok(e) if !e.is_empty() => (None, e),
        _ => {
            if !meshless_integration::etcd::available() {
                return Err(
                    "etcd is not installed: `apt-get install etcd-server etcd-client`, \
                            or set ETCD_ENDPOINTS=host:2379"
                        .into(),
                );
            }
            let etcd = EtcdServer::start().await?;
            let a = etcd.addr().to_string();
            println!("started etcd on {a}");
            (Some(etcd), a)
        }
    };
    let registrar = EtcdRegistrar::new(endpoints.split(','));

    let (stop_one, one) = serve("server-1", &registrar).await?;
    let channel = Channel::builder(format!("etcd:///{endpoints}?key=greeter.rpc"))
        .policy("round_robin")
        .build()?;
    let mut client = GreeterClient::new(channel.clone());
    wait_for(&channel, 1).await?;
    println!("100 calls: {}", calls(&mut client, 100).await?);

    let (stop_two, two) = serve("server-2", &registrar).await?;
    wait_for(&channel, 2).await?;
    println!(
        "server-2 joined; 100 calls: {}",
        calls(&mut client, 100).await?
    );

    // server-1 shuts down: its registration is revoked as it stops.
    let _ = stop_one.send(());
    one.await?;
    wait_for(&channel, 1).await?;
    println!(
        "server-1 shut down and deregistered; 100 calls: {}",
        calls(&mut client, 100).await?
    );
    let _ = stop_two.send(());
    two.await?;
    Ok(())
}
