//! Workload identities: SPIFFE IDs of the Istio form
//! `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
//!
//! Read the SPIFFE ID specification (SPIFFE-ID.md, section 2) first: trust domains are
//! lowercase letters, digits, `.`, `-` and `_`; path segments are letters, digits, `.`,
//! `-` and `_`, never empty, never `.` or `..`. Parsing is strict: anything that is not
//! exactly the Istio shape is refused, so a certificate with a surprising URI SAN never
//! turns into an identity.

use std::fmt;
use std::str::FromStr;

/// The URI scheme prefix of every SPIFFE ID.
pub const SPIFFE_PREFIX: &str = "spiffe://";

/// Longest SPIFFE ID accepted (the SPIFFE specification caps URIs at 2048 bytes).
pub const MAX_SPIFFE_ID_LEN: usize = 2048;

/// A workload identity: `spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    /// The trust domain, e.g. `cluster.local`.
    pub trust_domain: String,
    /// The Kubernetes namespace.
    pub namespace: String,
    /// The Kubernetes service account.
    pub service_account: String,
}

/// Why a string is not an Istio SPIFFE ID.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    /// The string does not start with `spiffe://`.
    #[error("not a SPIFFE ID: {0:?} does not start with \"spiffe://\"")]
    MissingScheme(String),
    /// Longer than [`MAX_SPIFFE_ID_LEN`].
    #[error("SPIFFE ID is {0} bytes long, the limit is 2048")]
    TooLong(usize),
    /// The trust domain is empty or has characters outside `[a-z0-9._-]`.
    #[error(
        "SPIFFE ID {0:?}: invalid trust domain (allowed: lowercase letters, digits, '.', '-', '_')"
    )]
    BadTrustDomain(String),
    /// The path is not `/ns/<namespace>/sa/<service-account>`.
    #[error("SPIFFE ID {0:?}: path must be /ns/<namespace>/sa/<service-account>")]
    BadPath(String),
    /// A namespace or service account segment is empty, `.`/`..`, or has characters
    /// outside `[A-Za-z0-9._-]`.
    #[error(
        "SPIFFE ID {0:?}: invalid path segment {1:?} (allowed: letters, digits, '.', '-', '_')"
    )]
    BadSegment(String, String),
}

fn valid_trust_domain(td: &str) -> bool {
    !td.is_empty()
        && td.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        })
}

fn valid_segment(seg: &str) -> bool {
    !seg.is_empty()
        && seg != "."
        && seg != ".."
        && seg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

impl SpiffeId {
    /// Builds an identity from its parts, validating each.
    pub fn new(
        trust_domain: impl Into<String>,
        namespace: impl Into<String>,
        service_account: impl Into<String>,
    ) -> Result<Self, SpiffeIdError> {
        let id = SpiffeId {
            trust_domain: trust_domain.into(),
            namespace: namespace.into(),
            service_account: service_account.into(),
        };
        // Round-trip through the parser so the two ways of building agree exactly.
        id.to_string().parse()
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() > MAX_SPIFFE_ID_LEN {
            return Err(SpiffeIdError::TooLong(s.len()));
        }
        let rest = s
            .strip_prefix(SPIFFE_PREFIX)
            .ok_or_else(|| SpiffeIdError::MissingScheme(s.to_owned()))?;
        let (td, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if !valid_trust_domain(td) {
            return Err(SpiffeIdError::BadTrustDomain(s.to_owned()));
        }
        let mut parts = path.split('/');
        // A path starts with '/', so the first split element is empty.
        let (Some(""), Some("ns"), Some(ns), Some("sa"), Some(sa), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(SpiffeIdError::BadPath(s.to_owned()));
        };
        for seg in [ns, sa] {
            if !valid_segment(seg) {
                return Err(SpiffeIdError::BadSegment(s.to_owned(), seg.to_owned()));
            }
        }
        Ok(SpiffeId {
            trust_domain: td.to_owned(),
            namespace: ns.to_owned(),
            service_account: sa.to_owned(),
        })
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SPIFFE_PREFIX}{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

/// Reads the URI SANs of a DER certificate and returns those that are SPIFFE IDs of
/// the Istio form (others are skipped), in certificate order.
pub fn spiffe_ids_from_cert(der: &[u8]) -> Result<Vec<SpiffeId>, CertParseError> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).map_err(|_| CertParseError::BadEncoding)?;
    let mut ids = Vec::new();
    let san = cert
        .subject_alternative_name()
        .map_err(|_| CertParseError::BadEncoding)?;
    if let Some(san) = san {
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name {
                if let Ok(id) = uri.parse::<SpiffeId>() {
                    ids.push(id);
                }
            }
        }
    }
    Ok(ids)
}

/// A certificate could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CertParseError {
    /// Not a DER X.509 certificate, or a malformed subjectAltName extension.
    #[error("certificate is not valid DER X.509 (or its subjectAltName is malformed)")]
    BadEncoding,
}

/// Formats a list of identities as ztunnel does in its errors: comma separated.
pub(crate) fn display_list(ids: &[SpiffeId]) -> String {
    ids.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display_round_trip() {
        let s = "spiffe://cluster.local/ns/default/sa/bookinfo-productpage";
        let id: SpiffeId = s.parse().unwrap();
        assert_eq!(id.trust_domain, "cluster.local");
        assert_eq!(id.namespace, "default");
        assert_eq!(id.service_account, "bookinfo-productpage");
        assert_eq!(id.to_string(), s);
        assert_eq!(
            SpiffeId::new("cluster.local", "default", "bookinfo-productpage").unwrap(),
            id
        );
    }

    #[test]
    fn strict_parse_refuses() {
        let cases: &[(&str, SpiffeIdError)] = &[
            (
                "http://td/ns/a/sa/b",
                SpiffeIdError::MissingScheme("http://td/ns/a/sa/b".into()),
            ),
            (
                "spiffe:///ns/a/sa/b",
                SpiffeIdError::BadTrustDomain("spiffe:///ns/a/sa/b".into()),
            ),
            (
                "spiffe://TD/ns/a/sa/b",
                SpiffeIdError::BadTrustDomain("spiffe://TD/ns/a/sa/b".into()),
            ),
            ("spiffe://td", SpiffeIdError::BadPath("spiffe://td".into())),
            (
                "spiffe://td/ns/a",
                SpiffeIdError::BadPath("spiffe://td/ns/a".into()),
            ),
            (
                "spiffe://td/ns/a/sa/b/",
                SpiffeIdError::BadPath("spiffe://td/ns/a/sa/b/".into()),
            ),
            (
                "spiffe://td/ns/a/sa/b/c",
                SpiffeIdError::BadPath("spiffe://td/ns/a/sa/b/c".into()),
            ),
            (
                "spiffe://td/sa/a/ns/b",
                SpiffeIdError::BadPath("spiffe://td/sa/a/ns/b".into()),
            ),
            (
                "spiffe://td/ns//sa/b",
                SpiffeIdError::BadSegment("spiffe://td/ns//sa/b".into(), "".into()),
            ),
            (
                "spiffe://td/ns/../sa/b",
                SpiffeIdError::BadSegment("spiffe://td/ns/../sa/b".into(), "..".into()),
            ),
            (
                "spiffe://td/ns/a/sa/b%20c",
                SpiffeIdError::BadSegment("spiffe://td/ns/a/sa/b%20c".into(), "b%20c".into()),
            ),
        ];
        for (s, want) in cases {
            assert_eq!(s.parse::<SpiffeId>().as_ref(), Err(want), "{s}");
        }
        let long = format!("spiffe://td/ns/{}/sa/b", "a".repeat(2048));
        assert_eq!(
            long.parse::<SpiffeId>(),
            Err(SpiffeIdError::TooLong(long.len()))
        );
    }

    #[test]
    fn error_messages() {
        assert_eq!(
            "spiffe://td/ns/a"
                .parse::<SpiffeId>()
                .unwrap_err()
                .to_string(),
            "SPIFFE ID \"spiffe://td/ns/a\": path must be /ns/<namespace>/sa/<service-account>"
        );
    }
}
