//! A greeter server registers itself in Consul, in the format kratos reads, and a client
//! finds it through meshless and calls it; then a second server joins, the client spreads
//! its calls over both, and the first deregisters and stops getting calls.
//!
//! ```text
//! cargo run --example registry_consul --features consul                  # the kit's agent double
//! CONSUL_HTTP_ADDR=127.0.0.1:8500 cargo run --example registry_consul --features consul
//! ```
//!
//! With `CONSUL_HTTP_ADDR` it uses that agent (`consul agent -dev` on this machine: the
//! servers listen on loopback); otherwise it starts the loopback Consul double from
//! meshless's test kit.

use std::error::Error;
use std::time::Duration;

use meshless::Channel;
use meshless::discovery::consul::{ConsulFormat, ConsulRegistrar};
use meshless::discovery::{Instance, Registrar};
use meshless_integration::consul::ConsulAgent;
use meshless_integration::greeter::HelloRequest;
use meshless_integration::greeter::greeter_client::GreeterClient;
use meshless_integration::server::{ServerHandle, TestServer};

const BOUND: Duration = Duration::from_secs(10);

async fn calls(
    client: &mut GreeterClient<Channel>,
    n: usize,
    servers: &[&ServerHandle],
) -> Result<String, Box<dyn Error>> {
    let before: Vec<u64> = servers.iter().map(|s| s.calls()).collect();
    for _ in 0..n {
        client
            .say_hello(HelloRequest {
                name: "example".into(),
                ..Default::default()
            })
            .await?;
    }
    Ok(servers
        .iter()
        .zip(before)
        .map(|(s, b)| format!("{} {}", s.name(), s.calls() - b))
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
    let (_double, agent) = match std::env::var("CONSUL_HTTP_ADDR") {
        Ok(a) if !a.is_empty() => (None, a.trim_start_matches("http://").to_owned()),
        _ => {
            let d = ConsulAgent::start_new().await?;
            let a = d.addr().to_string();
            println!("started the Consul agent double on {a}");
            (Some(d), a)
        }
    };
    let registrar = ConsulRegistrar::new(&agent).format(ConsulFormat::Kratos);

    // Server 1 starts, then registers; its registration lives as long as the value.
    let one = TestServer::new("server-1").spawn()?;
    let reg_one = registrar.register(
        Instance::new("helloworld", one.addr().to_string())
            .with_version("v1.0.0")
            .with_metadata("zone", "a"),
    )?;
    reg_one.wait_registered(BOUND).await?;
    println!("server-1 registered as {}", reg_one.status().key);

    let channel = Channel::builder(format!("consul://{agent}/helloworld?wait=10s"))
        .policy("round_robin")
        .build()?;
    let mut client = GreeterClient::new(channel.clone());
    wait_for(&channel, 1).await?;
    let two = TestServer::new("server-2").spawn()?;
    println!(
        "100 calls: {}",
        calls(&mut client, 100, &[&one, &two]).await?
    );

    // Server 2 joins.
    let reg_two = registrar
        .register(Instance::new("helloworld", two.addr().to_string()).with_version("v1.0.0"))?;
    reg_two.wait_registered(BOUND).await?;
    wait_for(&channel, 2).await?;
    println!(
        "server-2 registered; 100 calls: {}",
        calls(&mut client, 100, &[&one, &two]).await?
    );

    // Server 1 deregisters (a graceful shutdown would do this before stopping).
    reg_one.deregister().await;
    wait_for(&channel, 1).await?;
    println!(
        "server-1 deregistered; 100 calls: {}",
        calls(&mut client, 100, &[&one, &two]).await?
    );
    reg_two.deregister().await;
    Ok(())
}
