//! HTTP/2 settings of a channel's connections, with documented defaults.

/// Default stream flow-control window: 2 MiB (hyper's, as tonic uses it).
pub const DEFAULT_STREAM_WINDOW: u32 = 2 * 1024 * 1024;
/// Default connection flow-control window: 5 MiB (hyper's).
pub const DEFAULT_CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;
/// Default largest frame we accept: 16 KiB, the HTTP/2 minimum and default.
pub const DEFAULT_MAX_FRAME_SIZE: u32 = 16 * 1024;
/// Default largest header list (or trailer list) we accept: 1 MiB. hyper's default of 16 KiB
/// rejects the trailers of a gRPC status with rich error details (`grpc-status-details-bin`
/// is base64, so 16 KiB of details is 22 KiB of header); grpc-go allows 16 MiB.
pub const DEFAULT_MAX_HEADER_LIST_SIZE: u32 = 1024 * 1024;

/// HTTP/2 settings of every connection of a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Http2Settings {
    /// SETTINGS_INITIAL_WINDOW_SIZE: how much a stream may receive before it reads.
    /// Default [`DEFAULT_STREAM_WINDOW`].
    pub initial_stream_window: u32,
    /// The connection's flow-control window. Default [`DEFAULT_CONNECTION_WINDOW`].
    pub initial_connection_window: u32,
    /// Grow the windows with the measured bandwidth-delay product (BDP pings), as grpc-go
    /// does; overrides the two windows above. Default `false`.
    pub adaptive_window: bool,
    /// SETTINGS_MAX_FRAME_SIZE. Default [`DEFAULT_MAX_FRAME_SIZE`].
    pub max_frame_size: u32,
    /// SETTINGS_MAX_HEADER_LIST_SIZE: the largest response header or trailer block accepted.
    /// Default [`DEFAULT_MAX_HEADER_LIST_SIZE`].
    pub max_header_list_size: u32,
}

impl Default for Http2Settings {
    fn default() -> Self {
        Http2Settings {
            initial_stream_window: DEFAULT_STREAM_WINDOW,
            initial_connection_window: DEFAULT_CONNECTION_WINDOW,
            adaptive_window: false,
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            max_header_list_size: DEFAULT_MAX_HEADER_LIST_SIZE,
        }
    }
}

impl Http2Settings {
    /// Sets [`initial_stream_window`](Self::initial_stream_window).
    #[must_use]
    pub fn initial_stream_window(mut self, bytes: u32) -> Self {
        self.initial_stream_window = bytes;
        self
    }

    /// Sets [`initial_connection_window`](Self::initial_connection_window).
    #[must_use]
    pub fn initial_connection_window(mut self, bytes: u32) -> Self {
        self.initial_connection_window = bytes;
        self
    }

    /// Sets [`adaptive_window`](Self::adaptive_window).
    #[must_use]
    pub fn adaptive_window(mut self, on: bool) -> Self {
        self.adaptive_window = on;
        self
    }

    /// Sets [`max_frame_size`](Self::max_frame_size) (HTTP/2 allows 16 KiB to 16 MiB − 1;
    /// values outside are clamped when a connection is made).
    #[must_use]
    pub fn max_frame_size(mut self, bytes: u32) -> Self {
        self.max_frame_size = bytes;
        self
    }

    /// Sets [`max_header_list_size`](Self::max_header_list_size).
    #[must_use]
    pub fn max_header_list_size(mut self, bytes: u32) -> Self {
        self.max_header_list_size = bytes;
        self
    }
}
