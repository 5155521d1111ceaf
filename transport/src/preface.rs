//! Waiting for the server's HTTP/2 preface before calling a connection ready.
//!
//! h2's client handshake only writes our preface; it returns before the server has said
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
/// The length of an HTTP/2 frame header (RFC 9113 §4.1).
const FRAME_HEADER_LEN: usize = 9;
/// SETTINGS_MAX_CONCURRENT_STREAMS (RFC 9113 §6.5.2).
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
/// How much of the server's first SETTINGS payload is read: 6 bytes a setting, and servers
/// send a handful. A longer frame is read this far; the settings past it are missed.
const MAX_SETTINGS_READ: usize = 16 * 6;

/// What the first bytes from the server were.
#[derive(Debug)]
pub(crate) enum Preface {
    /// A SETTINGS frame: the server speaks HTTP/2, and allows this many concurrent streams
    /// (`None`: no limit announced).
    Http2 {
        /// The server's SETTINGS_MAX_CONCURRENT_STREAMS in its first SETTINGS frame.
        max_concurrent_streams: Option<u32>,
    },
    /// A TLS record (a handshake or an alert): the port wants TLS.
    Tls,
    /// An HTTP/1 response.
    Http1,
    /// Something else.
    Other,
    /// The connection closed before the server said anything.
    Closed,
    /// Reading failed before the server said anything (with TLS: the server's alert).
    Failed(io::Error),
}

impl PartialEq for Preface {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (
                Preface::Http2 {
                    max_concurrent_streams: a,
                },
                Preface::Http2 {
                    max_concurrent_streams: b,
                },
            ) => a == b,
            (Preface::Failed(a), Preface::Failed(b)) => a.kind() == b.kind(),
            (a, b) => std::mem::discriminant(a) == std::mem::discriminant(b),
        }
    }
}

pin_project_lite::pin_project! {
    /// An IO that reports, once, what the server's first bytes were.
    pub(crate) struct PrefaceWatch<T> {
        #[pin]
        io: T,
        head: [u8; FRAME_HEADER_LEN + MAX_SETTINGS_READ],
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
                head: [0; FRAME_HEADER_LEN + MAX_SETTINGS_READ],
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
            && let Poll::Ready(Err(e)) = &res
            && let Some(tx) = this.report.take()
        {
            // io::Error is not Clone: the report gets a copy of its kind, message and,
            // for a TLS alert, rustls's error (what the description needs).
            let _ = tx.send(Preface::Failed(copy_error(e)));
        }
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
                if let Some(kind) = classify(&this.head[..*this.seen])
                    && let Some(tx) = this.report.take()
                {
                    let _ = tx.send(kind);
                }
            }
        }
        res
    }
}

/// A copy of `e` that keeps what describing it needs.
fn copy_error(e: &io::Error) -> io::Error {
    #[cfg(feature = "tls")]
    if let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        return io::Error::new(e.kind(), tls.clone());
    }
    io::Error::new(e.kind(), e.to_string())
}

/// TLS record types a server may answer with: alert (21) and handshake (22), RFC 8446 §5.1.
const TLS_ALERT: u8 = 0x15;
const TLS_HANDSHAKE: u8 = 0x16;

/// What the first `head` bytes from the server say, once they say enough.
fn classify(head: &[u8]) -> Option<Preface> {
    if head.len() <= TYPE_OFFSET {
        return None;
    }
    // A record header: type, then version 3.x. No HTTP/2 SETTINGS frame starts so (its
    // first byte is the top of a length far above any frame size).
    if matches!(head[0], TLS_ALERT | TLS_HANDSHAKE) && head[1] == 3 && head[2] <= 4 {
        return Some(Preface::Tls);
    }
    if head.starts_with(b"HTTP/") {
        return Some(Preface::Http1);
    }
    if head[TYPE_OFFSET] != SETTINGS_FRAME_TYPE {
        return Some(Preface::Other);
    }
    if head.len() < FRAME_HEADER_LEN {
        return None;
    }
    let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
    let want = len.min(MAX_SETTINGS_READ);
    let payload = &head[FRAME_HEADER_LEN..];
    if payload.len() < want {
        return None;
    }
    let max_concurrent_streams = payload[..want]
        .chunks_exact(6)
        .rev()
        .find(|s| u16::from_be_bytes([s[0], s[1]]) == SETTINGS_MAX_CONCURRENT_STREAMS)
        .map(|s| u32::from_be_bytes([s[2], s[3], s[4], s[5]]));
    Some(Preface::Http2 {
        max_concurrent_streams,
    })
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
        let none = Preface::Http2 {
            max_concurrent_streams: None,
        };
        assert_eq!(first_bytes(&[&[0, 0, 0, 4, 0, 0, 0, 0, 0]]).await, none);
        // The same, one byte at a time.
        let bytes: Vec<[u8; 1]> = [0u8, 0, 0, 4, 0, 0, 0, 0, 0].iter().map(|&b| [b]).collect();
        let chunks: Vec<&[u8]> = bytes.iter().map(|b| &b[..]).collect();
        assert_eq!(first_bytes(&chunks).await, none);
        // SETTINGS with INITIAL_WINDOW_SIZE and MAX_CONCURRENT_STREAMS = 100, split.
        let frame = [
            0, 0, 12, 4, 0, 0, 0, 0, 0, 0, 4, 0, 1, 0, 0, 0, 3, 0, 0, 0, 100,
        ];
        assert_eq!(
            first_bytes(&[&frame[..5], &frame[5..14], &frame[14..]]).await,
            Preface::Http2 {
                max_concurrent_streams: Some(100)
            }
        );
        assert_eq!(
            first_bytes(&[b"HTTP/1.1 400 Bad Request\r\n"]).await,
            Preface::Http1
        );
        assert_eq!(
            first_bytes(&[&[0x16, 0x03, 0x01, 0x00]]).await,
            Preface::Tls
        );
        // A TLS alert, as a TLS server answers an h2c preface.
        assert_eq!(
            first_bytes(&[&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x32]]).await,
            Preface::Tls
        );
        assert_eq!(
            first_bytes(&[b"SSH-2.0-OpenSSH_9.6\r\n"]).await,
            Preface::Other
        );
        assert_eq!(first_bytes(&[]).await, Preface::Closed);
    }
}
