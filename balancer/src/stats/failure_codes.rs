//! Which gRPC status codes count against the endpoint that returned them, for the channel's
//! accounting (the policies' failure signals) and outlier detection.

use tonic::Code;

use super::Outcome;

/// A set of gRPC status codes that say the *endpoint* is unwell, as opposed to the
/// application rejecting the request (`NOT_FOUND`, `INVALID_ARGUMENT`, ...), which says
/// nothing about the endpoint's health.
///
/// The default, [`FailureCodes::DEFAULT`], is `UNKNOWN`, `INTERNAL`, `UNAVAILABLE`,
/// `DATA_LOSS` and `RESOURCE_EXHAUSTED`: the codes gRPC's transport and overloaded servers
/// produce (gRPC's status-code guide; Envoy's outlier detection counts the same family as
/// "5xx" for gRPC). `DEADLINE_EXCEEDED` from a server is left out: it usually means the
/// caller's budget was short. A deadline that *meshless* enforces counts as a failure
/// whatever this set says, because the endpoint did not answer in time.
///
/// ```
/// use meshless_balancer::{FailureCodes, Outcome};
/// use tonic::Code;
///
/// let codes = FailureCodes::DEFAULT.with(Code::DeadlineExceeded).without(Code::ResourceExhausted);
/// assert_eq!(codes.outcome(Code::DeadlineExceeded), Outcome::Failure);
/// assert_eq!(codes.outcome(Code::ResourceExhausted), Outcome::Success);
/// assert_eq!(codes.outcome(Code::NotFound), Outcome::Success);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct FailureCodes(CodeSet);

impl FailureCodes {
    /// `UNKNOWN`, `INTERNAL`, `UNAVAILABLE`, `DATA_LOSS`, `RESOURCE_EXHAUSTED`.
    pub const DEFAULT: FailureCodes = FailureCodes(CodeSet::of(&[
        Code::Unknown,
        Code::Internal,
        Code::Unavailable,
        Code::DataLoss,
        Code::ResourceExhausted,
    ]));

    /// No code counts against an endpoint (only transport failures and expired deadlines do).
    pub const fn none() -> Self {
        FailureCodes(CodeSet::EMPTY)
    }

    /// This set and `code`.
    #[must_use]
    pub const fn with(self, code: Code) -> Self {
        FailureCodes(self.0.with(code))
    }

    /// This set without `code`.
    #[must_use]
    pub const fn without(self, code: Code) -> Self {
        FailureCodes(self.0.without(code))
    }

    /// Whether `code` counts against the endpoint. `OK` never does.
    pub const fn contains(self, code: Code) -> bool {
        self.0.contains(code)
    }

    /// The codes, as a plain set.
    pub const fn codes(self) -> CodeSet {
        self.0
    }

    /// What a call that ended with `code` says about its endpoint.
    pub const fn outcome(self, code: Code) -> Outcome {
        if self.contains(code) {
            Outcome::Failure
        } else {
            Outcome::Success
        }
    }
}

impl From<CodeSet> for FailureCodes {
    fn from(codes: CodeSet) -> Self {
        FailureCodes(codes)
    }
}

/// A set of gRPC status codes, a bit per code: the one representation of "these codes"
/// that every code list of meshless uses: [`FailureCodes`], a retry policy's
/// `retryableStatusCodes`, a hedging policy's `nonFatalStatusCodes` and the codes adaptive
/// throttling takes for a refusal. `OK` is never in a set.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CodeSet(u32);

const fn bit(code: Code) -> u32 {
    1 << (code as i32 as u32)
}

impl CodeSet {
    /// No code.
    pub const EMPTY: CodeSet = CodeSet(0);

    /// The set of `codes` (`OK` left out).
    pub const fn of(codes: &[Code]) -> Self {
        let mut set = CodeSet::EMPTY;
        let mut i = 0;
        while i < codes.len() {
            set = set.with(codes[i]);
            i += 1;
        }
        set
    }

    /// This set and `code` (`OK` is never added).
    #[must_use]
    pub const fn with(self, code: Code) -> Self {
        if matches!(code, Code::Ok) {
            return self;
        }
        CodeSet(self.0 | bit(code))
    }

    /// This set without `code`.
    #[must_use]
    pub const fn without(self, code: Code) -> Self {
        CodeSet(self.0 & !bit(code))
    }

    /// Whether `code` is in the set.
    pub const fn contains(self, code: Code) -> bool {
        !matches!(code, Code::Ok) && self.0 & bit(code) != 0
    }

    /// Whether the set holds no code.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The codes of the set, by number.
    pub fn iter(self) -> impl Iterator<Item = Code> {
        (1..=16)
            .map(Code::from_i32)
            .filter(move |&c| self.contains(c))
    }
}

/// gRPC's names of the status codes, by number (`CODE_NAMES[14]` is `UNAVAILABLE`), as the
/// gRPC spec, service config and gRFC metric attributes write them.
pub const CODE_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// gRPC's name of `code`, such as `UNAVAILABLE`.
pub fn code_name(code: Code) -> &'static str {
    CODE_NAMES
        .get(code as i32 as usize)
        .copied()
        .unwrap_or("UNKNOWN")
}

/// The code gRPC names `name` (any case), if any.
pub fn code_from_name(name: &str) -> Option<Code> {
    let up = name.trim().to_ascii_uppercase();
    CODE_NAMES
        .iter()
        .position(|c| *c == up)
        .map(|i| Code::from_i32(i as i32))
}

impl Default for FailureCodes {
    fn default() -> Self {
        FailureCodes::DEFAULT
    }
}

impl FromIterator<Code> for FailureCodes {
    fn from_iter<I: IntoIterator<Item = Code>>(iter: I) -> Self {
        FailureCodes(iter.into_iter().collect())
    }
}

impl FromIterator<Code> for CodeSet {
    fn from_iter<I: IntoIterator<Item = Code>>(iter: I) -> Self {
        iter.into_iter().fold(CodeSet::EMPTY, CodeSet::with)
    }
}

impl std::fmt::Debug for FailureCodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::fmt::Debug for CodeSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_both_ways() {
        for i in 0..=16 {
            let c = Code::from_i32(i);
            assert_eq!(code_from_name(code_name(c)), Some(c));
        }
        assert_eq!(code_name(Code::Unavailable), "UNAVAILABLE");
        assert_eq!(
            code_from_name("resource_exhausted"),
            Some(Code::ResourceExhausted)
        );
        assert_eq!(code_from_name("BUSY"), None);
    }

    #[test]
    fn default_set_and_edits() {
        let d = FailureCodes::default();
        for c in [
            Code::Unknown,
            Code::Internal,
            Code::Unavailable,
            Code::DataLoss,
            Code::ResourceExhausted,
        ] {
            assert!(d.contains(c), "{c:?}");
        }
        for c in [
            Code::Ok,
            Code::Cancelled,
            Code::InvalidArgument,
            Code::DeadlineExceeded,
            Code::NotFound,
            Code::PermissionDenied,
            Code::Unimplemented,
        ] {
            assert!(!d.contains(c), "{c:?}");
        }
        let all: FailureCodes = (0..=16).map(Code::from_i32).collect();
        assert!(!all.contains(Code::Ok), "OK never counts");
        assert_eq!(
            FailureCodes::none()
                .with(Code::Aborted)
                .outcome(Code::Aborted),
            Outcome::Failure
        );
        assert_eq!(
            format!("{:?}", FailureCodes::none().with(Code::Internal)),
            "{Internal}"
        );
    }
}
