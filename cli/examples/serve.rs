//! Starts loopback gRPC servers that answer `grpc.health.v1.Health/Check`, prints a
//! `static:///` target for them and runs until killed: something to point `meshless bench`
//! at on a laptop.
//!
//! ```sh
//! cargo run -p meshless-cli --example serve -- 4      # prints static:///127.0.0.1:PORT,...
//! meshless bench static:///127.0.0.1:PORT,... --policy round_robin
//! ```

use meshless_integration::server::TestServer;

/// Servers started when no count is given.
const DEFAULT_SERVERS: usize = 3;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let count = match std::env::args().nth(1) {
        Some(n) => n
            .parse()
            .map_err(|e| format!("`{n}` is not a server count: {e}"))?,
        None => DEFAULT_SERVERS,
    };
    let handles = (0..count)
        .map(|i| TestServer::new(format!("server-{i}")).spawn())
        .collect::<Result<Vec<_>, _>>()?;
    let addrs: Vec<String> = handles.iter().map(|h| h.addr().to_string()).collect();
    println!("static:///{}", addrs.join(","));
    loop {
        std::thread::park();
    }
}
