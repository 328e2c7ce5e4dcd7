//! `manifest.json`, the identity directory's table of contents: the one contract
//! between `xdpmesh-control`, which writes it, and the dataplane, which reads it.
//! Both use this type; neither spells the format itself.
//!
//! ```json
//! {
//!   "generation": 7,
//!   "trust_domain": "cluster.local",
//!   "identities": [
//!     {
//!       "spiffe": "spiffe://cluster.local/ns/default/sa/client",
//!       "cert": "default~client.crt",
//!       "key": "default~client.key"
//!     }
//!   ],
//!   "roots": "roots.pem"
//! }
//! ```
//!
//! - `generation` (u64): the shared-memory tables generation these identities were
//!   published with (`xdpmesh-control run` passes the generation it just published);
//!   it changes on every publication.
//! - `trust_domain` (string): the config's trust domain; servers accept only peers in it.
//! - `identities` (array, sorted by `spiffe`, no duplicates): one entry per distinct
//!   identity of the node's local workloads; `cert` and `key` are file names relative
//!   to the directory holding the manifest (never paths). May be empty.
//! - `roots` (string): file name of the trust roots, relative to the same directory.
//!
//! No other fields are written; a reader ignores unknown fields.
//!
//! [`Manifest::from_json`] and [`Manifest::to_json`] check what serde cannot
//! ([`Manifest::validate`]): every `spiffe` is an Istio SPIFFE ID of the manifest's
//! trust domain and appears once, and every file name is a bare name.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::identity::{SpiffeId, SpiffeIdError};

/// The manifest's file name in the identity directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// `manifest.json` (see the module documentation for the contract).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The publication's generation.
    pub generation: u64,
    /// The config's trust domain.
    pub trust_domain: String,
    /// One entry per identity, sorted by SPIFFE ID.
    pub identities: Vec<ManifestIdentity>,
    /// The trust roots' file name.
    pub roots: String,
}

/// One identity in the manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestIdentity {
    /// `spiffe://<td>/ns/<namespace>/sa/<service-account>`.
    pub spiffe: String,
    /// Certificate chain file name (PEM, leaf first).
    pub cert: String,
    /// Private key file name (PEM).
    pub key: String,
}

/// Why a manifest is refused.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not JSON of the manifest's shape.
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    /// A `cert`, `key` or `roots` entry that is not a bare file name.
    #[error("{field} {name:?} is not a file name in the identity directory")]
    BadFileName {
        /// `cert`, `key` or `roots`.
        field: &'static str,
        /// The entry.
        name: String,
    },
    /// An identity that is not an Istio SPIFFE ID.
    #[error("identity: {0}")]
    BadSpiffeId(#[from] SpiffeIdError),
    /// An identity of another trust domain than the manifest's.
    #[error("identity {spiffe} is not in the manifest's trust domain {trust_domain:?}")]
    ForeignTrustDomain {
        /// The identity.
        spiffe: String,
        /// The manifest's trust domain.
        trust_domain: String,
    },
    /// The same identity twice.
    #[error("identity {0} is listed twice")]
    DuplicateIdentity(String),
}

/// Whether `name` names a file directly in the manifest's directory.
fn check_file_name(field: &'static str, name: &str) -> Result<(), ManifestError> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(ManifestError::BadFileName {
            field,
            name: name.to_owned(),
        });
    }
    Ok(())
}

impl Manifest {
    /// Parses and validates the manifest's bytes.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ManifestError> {
        let m: Manifest = serde_json::from_slice(bytes)?;
        m.validate()?;
        Ok(m)
    }

    /// The manifest as written to disk: validated, pretty-printed, ending in a newline.
    pub fn to_json(&self) -> Result<Vec<u8>, ManifestError> {
        self.validate()?;
        let mut json = serde_json::to_vec_pretty(self)?;
        json.push(b'\n');
        Ok(json)
    }

    /// Checks what serde does not (see the module documentation).
    pub fn validate(&self) -> Result<(), ManifestError> {
        check_file_name("roots", &self.roots)?;
        let mut seen = BTreeSet::new();
        for i in &self.identities {
            let id: SpiffeId = i.spiffe.parse()?;
            if id.trust_domain != self.trust_domain {
                return Err(ManifestError::ForeignTrustDomain {
                    spiffe: i.spiffe.clone(),
                    trust_domain: self.trust_domain.clone(),
                });
            }
            if !seen.insert(i.spiffe.as_str()) {
                return Err(ManifestError::DuplicateIdentity(i.spiffe.clone()));
            }
            check_file_name("cert", &i.cert)?;
            check_file_name("key", &i.key)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest {
            generation: 7,
            trust_domain: "cluster.local".into(),
            identities: vec![ManifestIdentity {
                spiffe: "spiffe://cluster.local/ns/default/sa/client".into(),
                cert: "default~client.crt".into(),
                key: "default~client.key".into(),
            }],
            roots: "roots.pem".into(),
        }
    }

    #[test]
    fn encoding_is_exact_and_round_trips() {
        let json = manifest().to_json().unwrap();
        assert_eq!(
            String::from_utf8(json.clone()).unwrap(),
            r#"{
  "generation": 7,
  "trust_domain": "cluster.local",
  "identities": [
    {
      "spiffe": "spiffe://cluster.local/ns/default/sa/client",
      "cert": "default~client.crt",
      "key": "default~client.key"
    }
  ],
  "roots": "roots.pem"
}
"#
        );
        assert_eq!(Manifest::from_json(&json).unwrap(), manifest());
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let m = Manifest::from_json(
            br#"{"generation": 3, "trust_domain": "td", "roots": "r.pem", "identities": [], "x": 1}"#,
        )
        .unwrap();
        assert_eq!((m.generation, m.identities.len()), (3, 0));
    }

    #[test]
    fn refusals_say_why() {
        let refused = |f: fn(&mut Manifest)| {
            let mut m = manifest();
            f(&mut m);
            let e = m.to_json().unwrap_err().to_string();
            let read = Manifest::from_json(&serde_json::to_vec(&m).unwrap());
            assert_eq!(read.unwrap_err().to_string(), e);
            e
        };
        assert_eq!(
            refused(|m| m.roots = "../roots.pem".into()),
            "roots \"../roots.pem\" is not a file name in the identity directory"
        );
        assert_eq!(
            refused(|m| m.identities[0].key = String::new()),
            "key \"\" is not a file name in the identity directory"
        );
        assert_eq!(
            refused(|m| m.identities[0].spiffe = "spiffe://cluster.local/sa/x".into()),
            "identity: SPIFFE ID \"spiffe://cluster.local/sa/x\": path must be \
             /ns/<namespace>/sa/<service-account>"
        );
        assert_eq!(
            refused(|m| m.trust_domain = "other.local".into()),
            "identity spiffe://cluster.local/ns/default/sa/client is not in the manifest's \
             trust domain \"other.local\""
        );
        assert_eq!(
            refused(|m| m.identities.push(m.identities[0].clone())),
            "identity spiffe://cluster.local/ns/default/sa/client is listed twice"
        );
        let e = Manifest::from_json(b"{\"generation\": 1}").unwrap_err();
        assert_eq!(
            e.to_string(),
            "missing field `trust_domain` at line 1 column 17"
        );
    }
}
