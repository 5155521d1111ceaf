//! Waiting for the server's HTTP/2 preface before calling a connection ready.
//!
//! hyper's client handshake only writes our preface; it returns before the server has said
//! anything. A TCP port that accepts but does not speak HTTP/2 (a sidecar whose app is not up
//! yet, a TLS or HTTP/1 port, a black-holing proxy) would look ready. grpc-go waits for the
//! server's SETTINGS frame; so do we, by watching the first bytes the connection reads.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;

/// The HTTP/2 frame type of SETTINGS, which a server's connection preface starts with
/// (RFC 9113 §3.4).
const SETTINGS_FRAME_TYPE: u8 = 0x4;
/// A frame header's type is its fourth byte (3 bytes of length first).
const TYPE_OFFSET: usize = 3;

/// What the first bytes from the server were.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Preface {
    /// A SETTINGS frame: the server speaks HTTP/2.
    Http2,
    /// Something else (HTTP/1, TLS, garbage).
    Other,
    /// The connection closed before the server said anything.
    Closed,
}

pin_project_lite::pin_project! {
    /// An IO that reports, once, what the server's first bytes were.
    pub(crate) struct PrefaceWatch<T> {
        #[pin]
        io: T,
        head: [u8; TYPE_OFFSET + 1],
        seen: usize,
        report: Option<oneshot::Sender<Preface>>,
    }
}

impl<T> PrefaceWatch<T> {
    pub(crate) fn new(io: T) -> (Self, oneshot::Receiver<Preface>) {
        let (tx, rx) = oneshot::channel();
        (
            PrefaceWatch {
                io,
                head: [0; TYPE_OFFSET + 1],
                seen: 0,
                report: Some(tx),
            },
            rx,
        )
    }
}

impl<T: AsyncRead> AsyncRead for PrefaceWatch<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let res = this.io.poll_read(cx, buf);
        if this.report.is_some()
            && let Poll::Ready(Ok(())) = &res
        {
            let new = &buf.filled()[before..];
            if new.is_empty() {
                if let Some(tx) = this.report.take() {
                    let _ = tx.send(Preface::Closed);
                }
            } else {
                let take = (this.head.len() - *this.seen).min(new.len());
                this.head[*this.seen..*this.seen + take].copy_from_slice(&new[..take]);
                *this.seen += take;
                if *this.seen == this.head.len()
                    && let Some(tx) = this.report.take()
                {
                    let kind = if this.head[TYPE_OFFSET] == SETTINGS_FRAME_TYPE {
                        Preface::Http2
                    } else {
                        Preface::Other
                    };
                    let _ = tx.send(kind);
                }
            }
        }
        res
    }
}

impl<T: AsyncWrite> AsyncWrite for PrefaceWatch<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn first_bytes(chunks: &[&[u8]]) -> Preface {
        let (client, mut server) = tokio::io::duplex(64);
        let (mut watched, rx) = PrefaceWatch::new(client);
        for c in chunks {
            server.write_all(c).await.unwrap();
            server.flush().await.unwrap();
            let mut buf = [0u8; 64];
            let _ = watched.read(&mut buf).await.unwrap();
        }
        drop(server);
        let mut buf = [0u8; 8];
        let _ = watched.read(&mut buf).await;
        rx.await.unwrap()
    }

    #[tokio::test]
    async fn tells_http2_from_the_rest() {
        // An empty SETTINGS frame: length 0, type 4, flags 0, stream 0.
        assert_eq!(
            first_bytes(&[&[0, 0, 0, 4, 0, 0, 0, 0, 0]]).await,
            Preface::Http2
        );
        // The same, one byte at a time.
        assert_eq!(first_bytes(&[&[0], &[0], &[0], &[4]]).await, Preface::Http2);
        assert_eq!(
            first_bytes(&[b"HTTP/1.1 400 Bad Request\r\n"]).await,
            Preface::Other
        );
        assert_eq!(
            first_bytes(&[&[0x16, 0x03, 0x01, 0x00]]).await,
            Preface::Other
        ); // TLS
        assert_eq!(first_bytes(&[]).await, Preface::Closed);
    }
}
