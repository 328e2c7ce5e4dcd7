//! A local mesh CA (rcgen) and workload certificates.
//!
//! Workload certificates are what Istio's CA issues: an EC P-256 key, the SPIFFE ID as
//! the only URI SAN (no DNS SAN), key usage digitalSignature + keyEncipherment and
//! extended key usage serverAuth + clientAuth (the same certificate serves both ends
//! of HBONE). The CA may be generated in process (tests, the embedded default) or
//! loaded from PEM (an existing mesh CA); ready-made workload certificates and trust
//! roots can be loaded from PEM without a CA.

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::identity::{spiffe_ids_from_cert, SpiffeId};

/// Errors from certificate generation and loading.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen refused to build or sign a certificate.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// PEM input could not be parsed; the string names which input.
    #[error("invalid PEM in {0}: {1}")]
    Pem(&'static str, rustls::pki_types::pem::Error),
    /// A PEM input held no certificate.
    #[error("no certificate found in {0}")]
    NoCertificate(&'static str),
    /// The leaf certificate has no URI SAN of the form `spiffe://<td>/ns/<ns>/sa/<sa>`.
    #[error("workload certificate has no SPIFFE URI SAN (spiffe://<td>/ns/<ns>/sa/<sa>)")]
    NoSpiffeId,
    /// The leaf certificate is not DER X.509.
    #[error("workload certificate is not valid X.509")]
    BadCertificate,
}

/// The time window in which a certificate is valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    /// notBefore.
    pub not_before: SystemTime,
    /// notAfter.
    pub not_after: SystemTime,
}

impl Validity {
    /// Valid from one minute ago (clock skew between nodes) for `d` from now.
    pub fn for_duration(d: Duration) -> Self {
        let now = SystemTime::now();
        Validity {
            not_before: now - Duration::from_secs(60),
            not_after: now + d,
        }
    }

    /// An explicit window (use a window in the past for an expired certificate).
    pub fn between(not_before: SystemTime, not_after: SystemTime) -> Self {
        Validity {
            not_before,
            not_after,
        }
    }
}

impl Default for Validity {
    /// 24 hours, as istiod issues workload certificates.
    fn default() -> Self {
        Validity::for_duration(Duration::from_secs(24 * 3600))
    }
}

/// A certificate authority that issues workload certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    root_der: CertificateDer<'static>,
    root_pem: String,
    key_pem: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("root_der_len", &self.root_der.len())
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// Generates a self-signed root CA (EC P-256, valid ten years) for `trust_domain`;
    /// the trust domain is its organization name, as Istio's self-signed CA does.
    pub fn generate(trust_domain: &str) -> Result<Self, CertError> {
        Self::generate_with_validity(
            trust_domain,
            Validity::for_duration(Duration::from_secs(10 * 365 * 24 * 3600)),
        )
    }

    /// Like [`Ca::generate`] with an explicit validity window.
    pub fn generate_with_validity(
        trust_domain: &str,
        validity: Validity,
    ) -> Result<Self, CertError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, trust_domain);
        dn.push(DnType::CommonName, "xdpmesh root CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = validity.not_before.into();
        params.not_after = validity.not_after.into();
        let cert = params.self_signed(&key)?;
        let root_der = cert.der().clone();
        let root_pem = cert.pem();
        let key_pem = key.serialize_pem();
        Ok(Ca {
            issuer: Issuer::new(params, key),
            root_der,
            root_pem,
            key_pem,
        })
    }

    /// Loads an existing CA: its certificate and its private key (PKCS#8 PEM).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CertError> {
        let key = KeyPair::from_pem(key_pem)?;
        let root_der = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .next()
            .ok_or(CertError::NoCertificate("CA certificate"))?
            .map_err(|e| CertError::Pem("CA certificate", e))?;
        let issuer = Issuer::from_ca_cert_der(&root_der, key)?;
        Ok(Ca {
            issuer,
            root_der,
            root_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
        })
    }

    /// The root certificate (DER) that peers must trust.
    pub fn root_der(&self) -> CertificateDer<'static> {
        self.root_der.clone()
    }

    /// The root certificate as PEM.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// The CA private key as PKCS#8 PEM (keep it in a 0600 file).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Issues a workload certificate for `id` (any trust domain: the CA does not police
    /// it, the verifiers do) with a fresh EC P-256 key.
    pub fn issue(&self, id: &SpiffeId, validity: Validity) -> Result<WorkloadCert, CertError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(id.to_string().try_into()?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = validity.not_before.into();
        params.not_after = validity.not_after.into();
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(WorkloadCert {
            identity: id.clone(),
            cert_chain_der: vec![cert.der().clone()],
            key_der: PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
            validity,
        })
    }
}

/// A workload's certificate chain (leaf first, no root) and private key.
#[derive(Debug)]
pub struct WorkloadCert {
    /// The SPIFFE ID in the leaf's URI SAN.
    pub identity: SpiffeId,
    /// Leaf first, then intermediates; the root is not included.
    pub cert_chain_der: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key_der: PrivateKeyDer<'static>,
    /// The leaf's validity window (as issued; `from_pem` reads it from the certificate).
    pub validity: Validity,
}

impl Clone for WorkloadCert {
    fn clone(&self) -> Self {
        WorkloadCert {
            identity: self.identity.clone(),
            cert_chain_der: self.cert_chain_der.clone(),
            key_der: self.key_der.clone_key(),
            validity: self.validity,
        }
    }
}

impl WorkloadCert {
    /// PEM export: (certificate chain, private key).
    pub fn to_pem(&self) -> (String, String) {
        let chain = self
            .cert_chain_der
            .iter()
            .map(|c| pem::encode(&pem::Pem::new("CERTIFICATE", c.as_ref())))
            .collect::<String>();
        let tag = match &self.key_der {
            PrivateKeyDer::Pkcs1(_) => "RSA PRIVATE KEY",
            PrivateKeyDer::Sec1(_) => "EC PRIVATE KEY",
            _ => "PRIVATE KEY",
        };
        let key = pem::encode(&pem::Pem::new(tag, self.key_der.secret_der()));
        (chain, key)
    }

    /// Loads a ready-made workload certificate chain (leaf first) and its key; the
    /// identity is read from the leaf's URI SAN (the first SPIFFE one).
    pub fn from_pem(chain_pem: &str, key_pem: &str) -> Result<Self, CertError> {
        let cert_chain_der = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| CertError::Pem("certificate chain", e))?;
        let leaf = cert_chain_der
            .first()
            .ok_or(CertError::NoCertificate("certificate chain"))?;
        let identity = spiffe_ids_from_cert(leaf)
            .map_err(|_| CertError::BadCertificate)?
            .into_iter()
            .next()
            .ok_or(CertError::NoSpiffeId)?;
        let validity = cert_validity(leaf).ok_or(CertError::BadCertificate)?;
        let key_der = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| CertError::Pem("private key", e))?;
        Ok(WorkloadCert {
            identity,
            cert_chain_der,
            key_der,
            validity,
        })
    }
}

/// Parses trust roots from PEM (one or more certificates).
pub fn roots_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let roots = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::Pem("trust roots", e))?;
    if roots.is_empty() {
        return Err(CertError::NoCertificate("trust roots"));
    }
    Ok(roots)
}

fn cert_validity(der: &[u8]) -> Option<Validity> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let to_system = |t: x509_parser::time::ASN1Time| -> Option<SystemTime> {
        let secs = t.timestamp();
        if secs >= 0 {
            SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs.unsigned_abs()))
        } else {
            SystemTime::UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs()))
        }
    };
    Some(Validity {
        not_before: to_system(cert.validity().not_before)?,
        not_after: to_system(cert.validity().not_after)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_has_only_the_spiffe_uri_san() {
        let ca = Ca::generate("cluster.local").unwrap();
        let id: SpiffeId = "spiffe://cluster.local/ns/default/sa/web".parse().unwrap();
        let wc = ca.issue(&id, Validity::default()).unwrap();
        assert_eq!(wc.cert_chain_der.len(), 1);
        assert_eq!(
            spiffe_ids_from_cert(&wc.cert_chain_der[0]).unwrap(),
            vec![id.clone()]
        );
        use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
        let (_, c) = X509Certificate::from_der(&wc.cert_chain_der[0]).unwrap();
        let san = c.subject_alternative_name().unwrap().unwrap();
        assert_eq!(san.value.general_names.len(), 1);
        assert!(matches!(san.value.general_names[0], GeneralName::URI(u) if u == id.to_string()));
        assert!(!c.is_ca());
    }

    #[test]
    fn pem_round_trip() {
        let ca = Ca::generate("cluster.local").unwrap();
        let id: SpiffeId = "spiffe://cluster.local/ns/a/sa/b".parse().unwrap();
        let wc = ca.issue(&id, Validity::default()).unwrap();
        let (chain, key) = wc.to_pem();
        assert!(chain.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"));
        let back = WorkloadCert::from_pem(&chain, &key).unwrap();
        assert_eq!(back.identity, id);
        assert_eq!(back.cert_chain_der, wc.cert_chain_der);
        assert_eq!(back.key_der.secret_der(), wc.key_der.secret_der());
        // Whole seconds: X.509 times have one-second resolution.
        let secs = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
        assert_eq!(secs(back.validity.not_after), secs(wc.validity.not_after));

        // A CA reloaded from PEM issues certificates that chain to the same root.
        let ca2 = Ca::from_pem(ca.root_pem(), ca.key_pem()).unwrap();
        assert_eq!(ca2.root_der(), ca.root_der());
        assert_eq!(roots_from_pem(ca.root_pem()).unwrap(), vec![ca.root_der()]);
    }

    #[test]
    fn from_pem_errors() {
        assert_eq!(
            WorkloadCert::from_pem("", "").unwrap_err().to_string(),
            "no certificate found in certificate chain"
        );
        assert_eq!(
            roots_from_pem("junk").unwrap_err().to_string(),
            "no certificate found in trust roots"
        );
    }
}
