//! Parsing of target strings, following gRPC's naming document where it has a form.
//!
//! A target is `scheme:[//authority/]endpoint`. The scheme picks the discovery backend
//! (see [`Registry`](crate::Registry)); the rest is that backend's to interpret.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

/// Why a target string was rejected. Every message quotes the part of the input that was
/// wrong and, where there is one, the form that would have been accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TargetError {
    /// The input was empty or only whitespace.
    #[error("empty target: expected a target such as `static:///10.0.0.1:50051`")]
    Empty,
    /// The input had no `scheme:` prefix.
    #[error(
        "target `{input}` has no scheme: write `scheme:endpoint`, for example `static:///{input}`{hint}"
    )]
    MissingScheme {
        /// The whole input.
        input: String,
        /// Extra advice (may be empty).
        hint: String,
    },
    /// The scheme is not registered.
    #[error("unknown scheme `{scheme}` in target `{input}`: known schemes are {known}{hint}")]
    UnknownScheme {
        /// The scheme as written.
        scheme: String,
        /// The whole input.
        input: String,
        /// The registered schemes, comma separated.
        known: String,
        /// Extra advice (may be empty).
        hint: String,
    },
    /// The scheme exists but needs a cargo feature that this build lacks.
    #[error(
        "scheme `{scheme}` in target `{input}` needs the `{feature}` cargo feature of meshless"
    )]
    FeatureDisabled {
        /// The scheme as written.
        scheme: String,
        /// The whole input.
        input: String,
        /// The cargo feature to enable.
        feature: &'static str,
    },
    /// The address list was empty.
    #[error("target `{input}` lists no addresses: expected at least one `host:port`")]
    EmptyList {
        /// The whole input.
        input: String,
    },
    /// One element of an address list was empty (for example a trailing comma).
    #[error("target `{input}`: address #{position} is empty (stray comma?)")]
    EmptyAddress {
        /// The whole input.
        input: String,
        /// 1-based position in the list.
        position: usize,
    },
    /// An address had no port.
    #[error("target `{input}`: `{part}` has no port: write `{example}`")]
    MissingPort {
        /// The whole input.
        input: String,
        /// The offending address.
        part: String,
        /// The form that would be accepted.
        example: String,
    },
    /// The port was not a number in 1..=65535.
    #[error("target `{input}`: port `{port}` in `{part}` is not a number in 1..=65535")]
    BadPort {
        /// The whole input.
        input: String,
        /// The offending address.
        part: String,
        /// The port text.
        port: String,
    },
    /// An `ipv4:` element was not an IPv4 address.
    #[error("target `{input}`: `{part}` is not an IPv4 address (expected like `10.0.0.1:50051`)")]
    BadIpv4 {
        /// The whole input.
        input: String,
        /// The offending address.
        part: String,
    },
    /// An `ipv6:` element was not a bracketed IPv6 address.
    #[error("target `{input}`: `{part}` is not an IPv6 address (expected like `[::1]:50051`)")]
    BadIpv6 {
        /// The whole input.
        input: String,
        /// The offending address.
        part: String,
    },
    /// A host name was not a valid DNS name.
    #[error("target `{input}`: `{part}` is not a valid host name")]
    BadHost {
        /// The whole input.
        input: String,
        /// The offending host.
        part: String,
    },
    /// A `unix:` target had no usable path.
    #[error("target `{input}`: {reason}")]
    BadUnixPath {
        /// The whole input.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The scheme takes no authority but one was given.
    #[error(
        "target `{input}`: scheme `{scheme}` takes no authority, but `{authority}` was given; write `{scheme}:///...`"
    )]
    UnexpectedAuthority {
        /// The whole input.
        input: String,
        /// The scheme.
        scheme: String,
        /// The authority as written.
        authority: String,
    },
    /// Anything else a backend rejects.
    #[error("target `{input}`: {reason}")]
    Invalid {
        /// The whole input.
        input: String,
        /// What is wrong.
        reason: String,
    },
}

/// A parsed target: `scheme:[//authority/]endpoint`.
///
/// Parse with [`Target::parse`] (built-in and feature-enabled schemes) or
/// [`Registry::parse`](crate::Registry::parse) (your own schemes too).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    raw: String,
    scheme: String,
    authority: Option<String>,
    endpoint: String,
}

impl Target {
    /// Parses and validates `input` against the default [`Registry`](crate::Registry): the
    /// schemes compiled into this build. For a target of a scheme registered elsewhere, use
    /// [`parse_with`](Self::parse_with) with the registry the channel uses.
    ///
    /// ```
    /// use meshless_discovery::Target;
    /// let t = Target::parse("ipv4:10.0.0.1:50051,10.0.0.2:50051").unwrap();
    /// assert_eq!(t.scheme(), "ipv4");
    /// assert!(Target::parse("ipv4:10.0.0.1").is_err()); // no port
    /// ```
    pub fn parse(input: &str) -> Result<Target, TargetError> {
        crate::Registry::default().parse(input)
    }

    /// Parses and validates `input` against `registry`, so that schemes registered there
    /// (and backends configured there) parse as a channel using it would parse them. The
    /// same as [`Registry::parse`](crate::Registry::parse).
    ///
    /// ```
    /// use meshless_discovery::{Registry, StaticScheme, Target};
    /// let empty = Registry::empty();
    /// assert!(Target::parse_with("static:///10.0.0.1:50051", &empty).is_err());
    /// let mut registry = Registry::empty();
    /// registry.register(StaticScheme);
    /// assert!(Target::parse_with("static:///10.0.0.1:50051", &registry).is_ok());
    /// ```
    pub fn parse_with(input: &str, registry: &crate::Registry) -> Result<Target, TargetError> {
        registry.parse(input)
    }

    /// Splits `input` into scheme, authority and endpoint without asking any backend.
    pub(crate) fn split(input: &str) -> Result<Target, TargetError> {
        let raw = input.trim();
        if raw.is_empty() {
            return Err(TargetError::Empty);
        }
        let Some((scheme, rest)) = raw.split_once(':').filter(|(s, _)| is_scheme(s)) else {
            return Err(TargetError::MissingScheme {
                input: raw.to_owned(),
                hint: String::new(),
            });
        };
        let scheme = scheme.to_ascii_lowercase();
        let (authority, endpoint) = match rest.strip_prefix("//") {
            Some(after) => match after.split_once('/') {
                Some((auth, ep)) => (Some(auth.to_owned()).filter(|a| !a.is_empty()), ep),
                None => (Some(after.to_owned()).filter(|a| !a.is_empty()), ""),
            },
            None => (None, rest),
        };
        Ok(Target {
            raw: raw.to_owned(),
            scheme,
            authority,
            endpoint: endpoint.to_owned(),
        })
    }

    /// The whole target as given (trimmed).
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// The scheme, lower-cased.
    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    /// The authority between `//` and the next `/`, when one was given and non-empty.
    pub fn authority(&self) -> Option<&str> {
        self.authority.as_deref()
    }

    /// Everything after the scheme and authority.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Fails when the target has an authority, for schemes that take none.
    pub fn expect_no_authority(&self) -> Result<(), TargetError> {
        match &self.authority {
            None => Ok(()),
            Some(a) => Err(TargetError::UnexpectedAuthority {
                input: self.raw.clone(),
                scheme: self.scheme.clone(),
                authority: a.clone(),
            }),
        }
    }

    /// Splits the endpoint as a comma-separated, non-empty list of non-empty elements.
    pub fn endpoint_list(&self) -> Result<Vec<&str>, TargetError> {
        if self.endpoint.trim().is_empty() {
            return Err(TargetError::EmptyList {
                input: self.raw.clone(),
            });
        }
        self.endpoint
            .split(',')
            .enumerate()
            .map(|(i, part)| {
                let part = part.trim();
                if part.is_empty() {
                    Err(TargetError::EmptyAddress {
                        input: self.raw.clone(),
                        position: i + 1,
                    })
                } else {
                    Ok(part)
                }
            })
            .collect()
    }

    /// Parses `part` as `host:port` or `[ipv6]:port`, requiring a port.
    pub fn host_port(&self, part: &str) -> Result<HostPort, TargetError> {
        let Some((host, port)) = split_host_port(part) else {
            let bare = part.trim_start_matches('[').trim_end_matches(']');
            if bare.contains(':') && bare.parse::<Ipv6Addr>().is_err() {
                return Err(TargetError::BadHost {
                    input: self.raw.clone(),
                    part: part.to_owned(),
                });
            }
            let example = if bare.contains(':') {
                format!("[{bare}]:PORT")
            } else {
                format!("{part}:PORT")
            };
            return Err(TargetError::MissingPort {
                input: self.raw.clone(),
                part: part.to_owned(),
                example,
            });
        };
        let port = self.port(part, port)?;
        if let Some(inner) = host.strip_prefix('[') {
            let inner = inner.strip_suffix(']').unwrap_or(inner);
            return inner
                .parse::<Ipv6Addr>()
                .map(|ip| HostPort::Ip(SocketAddr::new(ip.into(), port)))
                .map_err(|_| TargetError::BadIpv6 {
                    input: self.raw.clone(),
                    part: part.to_owned(),
                });
        }
        if let Ok(ip) = host.parse::<Ipv4Addr>() {
            return Ok(HostPort::Ip(SocketAddr::new(ip.into(), port)));
        }
        if looks_like_ipv4(host) {
            return Err(TargetError::BadIpv4 {
                input: self.raw.clone(),
                part: part.to_owned(),
            });
        }
        if !is_dns_name(host) {
            return Err(TargetError::BadHost {
                input: self.raw.clone(),
                part: host.to_owned(),
            });
        }
        Ok(HostPort::Name(host.to_owned(), port))
    }

    /// Parses a port number, naming `part` in the error.
    pub fn port(&self, part: &str, port: &str) -> Result<u16, TargetError> {
        match port.parse::<u16>() {
            Ok(p) if p > 0 => Ok(p),
            _ => Err(TargetError::BadPort {
                input: self.raw.clone(),
                part: part.to_owned(),
                port: port.to_owned(),
            }),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl std::str::FromStr for Target {
    type Err = TargetError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Target::parse(s)
    }
}

/// A `host:port` pair from a target: an IP socket address, or a name still to resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPort {
    /// An IP literal and port.
    Ip(SocketAddr),
    /// A host name and port.
    Name(String, u16),
}

/// Splits `host:port` or `[v6]:port`; `None` when there is no port.
fn split_host_port(part: &str) -> Option<(&str, &str)> {
    if part.starts_with('[') {
        let close = part.find(']')?;
        let (host, rest) = part.split_at(close + 1);
        return rest.strip_prefix(':').map(|port| (host, port));
    }
    let (host, port) = part.rsplit_once(':')?;
    if host.contains(':') {
        // An unbracketed IPv6 address: the last group is not a port.
        return None;
    }
    Some((host, port))
}

fn is_scheme(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

fn looks_like_ipv4(host: &str) -> bool {
    !host.is_empty() && host.chars().all(|c| c.is_ascii_digit() || c == '.')
}

/// RFC 1123 host names: labels of letters, digits and hyphens, 1..=63 long, 253 in all.
pub fn is_dns_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

/// `target` with its secrets masked, for status and logs: the password of a
/// `scheme://user:password@host` authority, and the values of query parameters named
/// `token`, `password`, `secret` or `access_token` (any case) become `***`.
///
/// ```
/// use meshless_discovery::redact_target;
/// assert_eq!(
///     redact_target("consul://ops:hunter2@10.0.0.1:8500/web?token=abc&tag=grpc"),
///     "consul://ops:***@10.0.0.1:8500/web?token=***&tag=grpc"
/// );
/// assert_eq!(redact_target("dns:///greeter.prod:50051"), "dns:///greeter.prod:50051");
/// ```
pub fn redact_target(target: &str) -> String {
    let mut out = target.to_owned();
    if let Some(sep) = out.find("://") {
        let rest = &out[sep + 3..];
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@')
            && let Some(colon) = rest[..at].find(':')
        {
            out = format!("{}{}:***{}", &out[..sep + 3], &rest[..colon], &rest[at..]);
        }
    }
    if let Some(q) = out.find('?') {
        let (head, query) = out.split_at(q + 1);
        let query: Vec<String> = query
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((k, _))
                    if ["token", "password", "secret", "access_token"]
                        .iter()
                        .any(|s| k.eq_ignore_ascii_case(s)) =>
                {
                    format!("{k}=***")
                }
                _ => p.to_owned(),
            })
            .collect();
        out = format!("{head}{}", query.join("&"));
    }
    out
}
