//! What a transport failure or a gRPC status means: its status code, and how errors are
//! described. Which codes count against an endpoint is `meshless_balancer::FailureCodes`.

use http::{HeaderMap, HeaderName};

use crate::h2client::ConnError;
use tonic::Code;

/// `grpc-status`, parsed once: a lookup by `&str` parses the name on every call.
static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// The status code a `grpc-status` header gives, if it has a readable one (in response
/// headers for a Trailers-Only response, or in trailers). The resilience layers read it
/// too.
pub fn grpc_status(headers: &HeaderMap) -> Option<Code> {
    let v = headers.get(&GRPC_STATUS)?;
    let code = v.to_str().ok()?.parse::<i32>().ok()?;
    Some(Code::from_i32(code))
}

/// The gRPC status code of a transport failure, per gRPC's HTTP/2 mapping
/// (PROTOCOL-HTTP2.md): a call that never left, a refused or drained stream, or a broken
/// connection is UNAVAILABLE; a stream the server cancelled is CANCELLED; ENHANCE_YOUR_CALM
/// is RESOURCE_EXHAUSTED; INADEQUATE_SECURITY is PERMISSION_DENIED; other resets are
/// INTERNAL. Spelled out here rather than taken from tonic, whose mapping depends on which
/// of its cargo features the application happens to enable (without `server`, every error
/// after the response headers would read as UNKNOWN).
pub(crate) fn code_of(err: &ConnError, never_sent: bool) -> Code {
    if never_sent {
        return Code::Unavailable;
    }
    let h2 = match err {
        ConnError::H2(h2) => h2,
        ConnError::KeepaliveTimeout(_) => return Code::Unavailable,
        ConnError::Body(status) => return status.code(),
    };
    if h2.is_io() || h2.is_go_away() {
        return Code::Unavailable;
    }
    match h2.reason() {
        Some(h2::Reason::REFUSED_STREAM) | None => Code::Unavailable,
        Some(h2::Reason::CANCEL) => Code::Cancelled,
        Some(h2::Reason::ENHANCE_YOUR_CALM) => Code::ResourceExhausted,
        Some(h2::Reason::INADEQUATE_SECURITY) => Code::PermissionDenied,
        Some(_) => Code::Internal,
    }
}

pub(crate) use meshless_discovery::text::error_chain as chain;

/// The h2 error behind an error, if there is one.
pub(crate) fn h2_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a h2::Error> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return Some(h2);
        }
        source = e.source();
    }
    None
}

/// A94's `grpc.disconnect_error` for a connection that ended with `err`: the first reason
/// seen, as A94 asks. The server's GOAWAY gives `GOAWAY <its error code>`; a socket error
/// gives `connection reset`, `connection timed out` (with a keepalive ping that went
/// unanswered), `connection aborted` or `socket error`; anything else is `unknown`.
pub(crate) fn disconnect_reason(err: &ConnError) -> &'static str {
    let h2 = match err {
        ConnError::H2(h2) => h2,
        ConnError::KeepaliveTimeout(_) => return "connection timed out",
        ConnError::Body(_) => return "unknown",
    };
    if h2.is_remote() && h2.is_go_away() {
        return go_away_reason(h2.reason().map_or(u32::MAX, u32::from));
    }
    match h2.get_io() {
        Some(io) => io_reason(io),
        None => "unknown",
    }
}

fn io_reason(io: &std::io::Error) -> &'static str {
    match io.kind() {
        std::io::ErrorKind::ConnectionReset => "connection reset",
        std::io::ErrorKind::TimedOut => "connection timed out",
        std::io::ErrorKind::ConnectionAborted => "connection aborted",
        _ => "socket error",
    }
}

/// `GOAWAY <code>` as A94 writes it, with RFC 9113's name of the error code (a code RFC
/// 9113 does not define is `unknown`).
pub(crate) fn go_away_reason(code: u32) -> &'static str {
    const NAMES: [&str; 14] = [
        "GOAWAY NO_ERROR",
        "GOAWAY PROTOCOL_ERROR",
        "GOAWAY INTERNAL_ERROR",
        "GOAWAY FLOW_CONTROL_ERROR",
        "GOAWAY SETTINGS_TIMEOUT",
        "GOAWAY STREAM_CLOSED",
        "GOAWAY FRAME_SIZE_ERROR",
        "GOAWAY REFUSED_STREAM",
        "GOAWAY CANCEL",
        "GOAWAY COMPRESSION_ERROR",
        "GOAWAY CONNECT_ERROR",
        "GOAWAY ENHANCE_YOUR_CALM",
        "GOAWAY INADEQUATE_SECURITY",
        "GOAWAY HTTP_1_1_REQUIRED",
    ];
    usize::try_from(code)
        .ok()
        .and_then(|i| NAMES.get(i))
        .copied()
        .unwrap_or("unknown")
}

/// The error code of the server's GOAWAY behind `err`, if that is what it is.
pub(crate) fn go_away_code(err: &ConnError) -> Option<u32> {
    let h2 = h2_error(err)?;
    (h2.is_remote() && h2.is_go_away()).then(|| h2.reason().map_or(u32::MAX, u32::from))
}

/// True when the server provably did not process the stream: it refused it
/// (`REFUSED_STREAM`) or its GOAWAY's last stream id is below ours. gRPC retries these
/// transparently.
pub(crate) fn never_processed(err: &ConnError) -> bool {
    // h2 gives streams above a GOAWAY's last id the remote GOAWAY error itself; streams
    // below it that die later see a broken pipe instead.
    h2_error(err).is_some_and(|h2| {
        h2.is_remote() && (h2.is_go_away() || h2.reason() == Some(h2::Reason::REFUSED_STREAM))
    })
}

/// True when a connection ended with the server's GOAWAY ENHANCE_YOUR_CALM, which gRPC
/// servers send with "too_many_pings" when our keepalive pings come faster than their
/// policy allows (h2 does not expose the debug data, so the reason stands for it).
pub(crate) fn is_too_many_pings(err: &ConnError) -> bool {
    h2_error(err).is_some_and(|h2| {
        h2.is_remote() && h2.is_go_away() && h2.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM)
    })
}

/// The trailer that carries a status's rich error details, base64-encoded.
static STATUS_DETAILS: HeaderName = HeaderName::from_static("grpc-status-details-bin");

/// tonic's decoding of [`STATUS_DETAILS`]: standard alphabet, padding optional.
const DETAILS_BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// Drops a `grpc-status-details-bin` that is not base64, so that the status still reaches
/// the caller. tonic 0.14's `Status::from_header_map` decodes it with `expect` and would
/// panic the calling task on such a trailer from a buggy or hostile server.
pub(crate) fn sanitize_status_details(headers: &mut HeaderMap) {
    use base64::Engine;
    let bad = headers
        .get(&STATUS_DETAILS)
        .is_some_and(|v| DETAILS_BASE64.decode(v.as_bytes()).is_err());
    if bad {
        tracing::warn!("dropping a grpc-status-details-bin trailer that is not base64");
        headers.remove(&STATUS_DETAILS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_away_reasons_are_named_as_rfc_9113_names_the_codes() {
        assert_eq!(go_away_reason(0), "GOAWAY NO_ERROR");
        assert_eq!(go_away_reason(0xb), "GOAWAY ENHANCE_YOUR_CALM");
        assert_eq!(go_away_reason(0xd), "GOAWAY HTTP_1_1_REQUIRED");
        assert_eq!(go_away_reason(0xe), "unknown");
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(io_reason(&reset), "connection reset");
        let pipe = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        assert_eq!(io_reason(&pipe), "socket error");
    }
}
