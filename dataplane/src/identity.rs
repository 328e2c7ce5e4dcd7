//! Workload identities for HBONE, as published by the control process in its identity
//! directory (`/run/xdpmesh/<instance>/identity/`, root-only), whose table of contents
//! is [`Manifest`] (`manifest.json`, the type the control process writes).
//!
//! The manifest is renamed into place last, so a reader that follows it sees complete
//! files. Keys stay in this process's memory (rustls configs); they are never logged.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use xdpmesh_hbone::certs::{roots_from_pem, WorkloadCert};
use xdpmesh_hbone::identity::SpiffeId;
use xdpmesh_hbone::manifest::{Manifest, MANIFEST_FILE};
use xdpmesh_hbone::CertificateDer;

/// Errors loading identities.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A file could not be read.
    #[error("reading {path}: {source} (is xdpmesh-control running for this instance?)")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The manifest or a certificate is malformed.
    #[error("{path}: {reason}")]
    Invalid {
        /// File.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// The identities of the workloads served by this gateway, and the mesh roots.
#[derive(Debug)]
pub struct IdentityStore {
    /// Manifest generation.
    pub generation: u64,
    /// SPIFFE trust domain.
    pub trust_domain: String,
    /// Trust anchors.
    pub roots: Vec<CertificateDer<'static>>,
    certs: HashMap<String, Arc<WorkloadCert>>,
}

impl IdentityStore {
    /// Loads the identity directory.
    pub fn load(dir: &Path) -> Result<IdentityStore, IdentityError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| IdentityError::Read { path, source })
        };
        let m = Manifest::from_json(read(MANIFEST_FILE)?.as_bytes()).map_err(|e| {
            IdentityError::Invalid {
                path: dir.join(MANIFEST_FILE),
                reason: e.to_string(),
            }
        })?;
        let roots = roots_from_pem(&read(&m.roots)?).map_err(|e| IdentityError::Invalid {
            path: dir.join(&m.roots),
            reason: e.to_string(),
        })?;
        let mut certs = HashMap::new();
        for i in &m.identities {
            let cert = WorkloadCert::from_pem(&read(&i.cert)?, &read(&i.key)?).map_err(|e| {
                IdentityError::Invalid {
                    path: dir.join(&i.cert),
                    reason: e.to_string(),
                }
            })?;
            certs.insert(i.spiffe.clone(), Arc::new(cert));
        }
        Ok(IdentityStore {
            generation: m.generation,
            trust_domain: m.trust_domain,
            roots,
            certs,
        })
    }

    /// A store of certificates already in memory (issued in-process: tests, benches).
    pub fn from_parts(
        generation: u64,
        trust_domain: &str,
        roots: Vec<CertificateDer<'static>>,
        certs: impl IntoIterator<Item = (SpiffeId, WorkloadCert)>,
    ) -> IdentityStore {
        IdentityStore {
            generation,
            trust_domain: trust_domain.to_owned(),
            roots,
            certs: certs
                .into_iter()
                .map(|(id, c)| (id.to_string(), Arc::new(c)))
                .collect(),
        }
    }

    /// An empty store (no HBONE possible until the control process publishes).
    pub fn empty() -> IdentityStore {
        IdentityStore {
            generation: 0,
            trust_domain: String::new(),
            roots: Vec::new(),
            certs: HashMap::new(),
        }
    }

    /// The certificate of a workload served here.
    pub fn cert(&self, id: &SpiffeId) -> Option<&Arc<WorkloadCert>> {
        self.certs.get(&id.to_string())
    }

    /// Every certificate (identity order unspecified).
    pub fn certs(&self) -> impl Iterator<Item = &Arc<WorkloadCert>> {
        self.certs.values()
    }

    /// Number of identities.
    pub fn len(&self) -> usize {
        self.certs.len()
    }

    /// Whether there is no identity.
    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
    }
}
