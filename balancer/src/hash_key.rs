//! Where `ring_hash` and `maglev` find a request's hash key.

use http::HeaderName;
use xxhash_rust::xxh64::{Xxh64, xxh64};

use crate::PickRequest;

/// The seed of every xxHash64 meshless computes: 0, the seed gRPC (A61, A76) and Envoy
/// use, so a key hashes to the same value as it would there.
pub(crate) const XXH64_SEED: u64 = 0;

/// A hash key the application puts in the request's extensions for `ring_hash` and
/// `maglev` (`req.extensions_mut().insert(RequestHashKey(user_id_hash))`). It takes
/// precedence over the configured header. Requests with the same key go to the same
/// endpoint for as long as it stays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestHashKey(pub u64);

impl RequestHashKey {
    /// The key for `bytes`, hashed with xxHash64 like a header value.
    pub fn of(bytes: &[u8]) -> Self {
        RequestHashKey(xxh64(bytes, XXH64_SEED))
    }
}

/// Where the hashing policies take a request's key from, in order: a [`RequestHashKey`] in
/// the extensions, then the header [`request_hash_header`](Self::request_hash_header).
/// A request with neither is sent to a random endpoint (gRPC A76).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HashKeyConfig {
    /// The header whose value is hashed (gRPC A76 `request_hash_header`). When it appears
    /// more than once, the values are joined with `,` before hashing, as gRPC does.
    /// Default: none (only [`RequestHashKey`] is used).
    pub request_hash_header: Option<HeaderName>,
}

impl HashKeyConfig {
    /// Sets [`request_hash_header`](Self::request_hash_header).
    #[must_use]
    pub fn request_hash_header(mut self, header: HeaderName) -> Self {
        self.request_hash_header = Some(header);
        self
    }

    /// The request's hash, or `None` when it carries no key. Allocates nothing: several
    /// header values are hashed as a stream.
    #[inline]
    pub(crate) fn hash(&self, req: &PickRequest<'_>) -> Option<u64> {
        if let Some(key) = req.extensions.get::<RequestHashKey>() {
            return Some(key.0);
        }
        let name = self.request_hash_header.as_ref()?;
        let mut values = req.headers.get_all(name).iter();
        let first = values.next()?;
        let Some(second) = values.next() else {
            return Some(xxh64(first.as_bytes(), XXH64_SEED));
        };
        let mut h = Xxh64::new(XXH64_SEED);
        h.update(first.as_bytes());
        for v in std::iter::once(second).chain(values) {
            h.update(b",");
            h.update(v.as_bytes());
        }
        Some(h.digest())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash_of(req: &http::Request<()>, cfg: &HashKeyConfig) -> Option<u64> {
        cfg.hash(&PickRequest::from_request(req))
    }

    #[test]
    fn extension_then_header_joined() {
        let cfg = HashKeyConfig::default().request_hash_header(HeaderName::from_static("x-user"));
        let mut req = http::Request::new(());
        assert_eq!(hash_of(&req, &cfg), None);
        req.headers_mut().append("x-user", "alice".parse().unwrap());
        assert_eq!(hash_of(&req, &cfg), Some(xxh64(b"alice", 0)));
        req.headers_mut().append("x-user", "bob".parse().unwrap());
        assert_eq!(hash_of(&req, &cfg), Some(xxh64(b"alice,bob", 0)));
        req.extensions_mut().insert(RequestHashKey(42));
        assert_eq!(hash_of(&req, &cfg), Some(42));
        // Without a configured header only the extension counts.
        let req = http::Request::new(());
        assert_eq!(hash_of(&req, &HashKeyConfig::default()), None);
    }
}
