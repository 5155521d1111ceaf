//! Status codes of failures after the response headers, as an application sees them.
//!
//! This crate does not enable tonic's `server` feature, and without it tonic maps every
//! transport error it is handed to UNKNOWN. The channel maps them itself, so a stream reset
//! or a connection lost mid-body has the code gRPC specifies whichever tonic features the
//! application enables. Run alone (`cargo test -p meshless-transport`) to build tonic
//! without `server`, as `scripts/test.sh` does: in a whole-workspace build other crates turn
//! it on.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use http::uri::PathAndQuery;
use meshless_transport::Channel;
use tonic::Code;
use tonic_prost::ProstCodec;

#[derive(Clone, PartialEq, prost::Message)]
struct Msg {
    #[prost(string, tag = "1")]
    text: String,
}

/// How the server ends each stream after its headers and one message.
#[derive(Clone, Copy)]
enum End {
    /// RST_STREAM with this reason.
    Reset(h2::Reason),
    /// Drops the whole connection.
    Drop,
}

/// A raw HTTP/2 server answering every call with headers and one message, then `end`.
async fn server(end: End) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(sock).await else {
                    return;
                };
                let Some(Ok((_req, mut respond))) = conn.accept().await else {
                    return;
                };
                let head = http::Response::builder()
                    .header("content-type", "application/grpc")
                    .body(())
                    .unwrap();
                let mut send = respond.send_response(head, false).unwrap();
                let msg = prost::Message::encode_to_vec(&Msg { text: "one".into() });
                let mut frame = BytesMut::new();
                frame.put_u8(0);
                frame.put_u32(msg.len() as u32);
                frame.put_slice(&msg);
                send.send_data(frame.freeze(), false).unwrap();
                // Let the message reach the client before the stream ends badly.
                let deadline = tokio::time::sleep(Duration::from_millis(50));
                tokio::pin!(deadline);
                loop {
                    tokio::select! {
                        _ = &mut deadline => break,
                        a = conn.accept() => if a.is_none() { return },
                    }
                }
                match end {
                    End::Reset(reason) => {
                        send.send_reset(reason);
                        // Keep driving the connection so the reset is written.
                        while conn.accept().await.is_some() {}
                    }
                    End::Drop => drop(conn),
                }
            });
        }
    });
    addr
}

/// Opens a server-streaming call, reads the first message, and returns the status the
/// second read gives.
async fn second_read(addr: SocketAddr) -> tonic::Status {
    let channel = Channel::builder(format!("static:///{addr}"))
        .build()
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let resp = grpc
        .server_streaming(
            tonic::Request::new(Msg { text: "hi".into() }),
            PathAndQuery::from_static("/test.T/Stream"),
            ProstCodec::<Msg, Msg>::default(),
        )
        .await
        .expect("headers arrive");
    let mut stream = resp.into_inner();
    let first = stream.message().await.expect("first message");
    assert_eq!(first.map(|m| m.text).as_deref(), Some("one"));
    stream.message().await.expect_err("the stream ends badly")
}

#[tokio::test]
async fn a_stream_reset_after_the_headers_has_grpcs_code() {
    for (reason, code) in [
        (h2::Reason::INTERNAL_ERROR, Code::Internal),
        (h2::Reason::CANCEL, Code::Cancelled),
        (h2::Reason::REFUSED_STREAM, Code::Unavailable),
        (h2::Reason::ENHANCE_YOUR_CALM, Code::ResourceExhausted),
    ] {
        let status = second_read(server(End::Reset(reason)).await).await;
        assert_eq!(status.code(), code, "{reason:?}: {status}");
    }
}

#[tokio::test]
async fn a_connection_lost_after_the_headers_is_unavailable() {
    let status = second_read(server(End::Drop).await).await;
    assert_eq!(status.code(), Code::Unavailable, "{status}");
}
