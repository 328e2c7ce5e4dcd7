//! rustls configurations for HBONE, as ztunnel builds them (`src/tls/lib.rs`,
//! `src/tls/workload.rs` in istio/ztunnel).
//!
//! - TLS 1.3 only, TLS13_AES_256_GCM_SHA384 and TLS13_AES_128_GCM_SHA256 only (aws-lc-rs).
//! - Key exchange X25519, P-256, P-384, X25519MLKEM768 (X25519 preferred).
//! - ALPN `h2` on both sides; the connection state machines refuse a handshake that did
//!   not negotiate it (rustls itself accepts a peer that ignores ALPN).
//! - The client sends no SNI and does not resume; the server issues no tickets and keeps
//!   no session cache.
//! - Server: a client certificate is required, chained to the mesh roots, with a SPIFFE
//!   URI SAN in the server's trust domain.
//! - Client: the server's chain must verify against the mesh roots (DNS names and IP SANs
//!   are ignored) and some URI SAN must equal one of the expected identities.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::{aws_lc_rs, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{NoServerSessionStorage, ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    RootCertStore, ServerConfig, SignatureScheme,
};

use crate::certs::WorkloadCert;
use crate::identity::{display_list, spiffe_ids_from_cert, SpiffeId};

/// The ALPN protocol of HBONE.
pub const ALPN_H2: &[u8] = b"h2";

/// Errors building a TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    /// rustls refused the certificate/key or the protocol selection.
    #[error("TLS configuration refused by rustls: {0}")]
    Rustls(#[from] rustls::Error),
    /// No trust root could be added.
    #[error("no usable trust roots: {0}")]
    Roots(String),
    /// The client verifier could not be built.
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// A peer certificate was refused for its identity; carried inside
/// `rustls::Error::InvalidCertificate(CertificateError::Other(..))`.
///
/// The messages are ztunnel's (`TlsError::SanError`, `TlsError::SanTrustDomainError`).
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The server's certificate does not carry the destination's identity.
    #[error(
        "identity verification error: peer did not present the expected SAN ({}), got {}",
        display_list(.expected),
        display_list(.presented)
    )]
    SanMismatch {
        /// Identities any one of which would have been accepted.
        expected: Vec<SpiffeId>,
        /// SPIFFE IDs in the peer certificate.
        presented: Vec<SpiffeId>,
    },
    /// The client's certificate has no SPIFFE ID in our trust domain.
    #[error(
        "identity verification error: peer did not present the expected trustdomain ({}), got {}",
        .expected,
        display_list(.presented)
    )]
    TrustDomainMismatch {
        /// Our trust domain.
        expected: String,
        /// SPIFFE IDs in the peer certificate.
        presented: Vec<SpiffeId>,
    },
}

// rustls prints `OtherError` with Display, but other layers use Debug: make both read well.
impl fmt::Debug for IdentityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl IdentityError {
    /// Finds an identity refusal inside a rustls error, if that is what it is.
    pub fn from_rustls(e: &rustls::Error) -> Option<&IdentityError> {
        match e {
            rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) => {
                inner.downcast_ref::<IdentityError>()
            }
            _ => None,
        }
    }

    fn into_rustls(self) -> rustls::Error {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(self))))
    }
}

/// Seeds the crypto library's random number generator now rather than in the first
/// handshake. aws-lc seeds it on first use from CPU jitter entropy
/// (`tree_jitter_initialize_once`), which measured 45–50 ms of CPU once per process on
/// this project's machines: unwarmed, the first tunnel of a fresh dataplane paid it on
/// each side, its handshake taking 97 ms instead of about 1. A worker calls this before
/// it reports itself running (each thread: the generator's state is also per thread).
pub fn warm_up() -> Result<(), rustls::Error> {
    let mut b = [0u8; 32];
    provider()
        .secure_random
        .fill(&mut b)
        .map_err(|_| rustls::Error::FailedToGetRandomBytes)
}

/// The crypto provider HBONE uses: aws-lc-rs, TLS 1.3 AES-GCM suites, X25519 first.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(CryptoProvider {
        cipher_suites: vec![
            aws_lc_rs::cipher_suite::TLS13_AES_256_GCM_SHA384,
            aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256,
        ],
        kx_groups: vec![
            aws_lc_rs::kx_group::X25519,
            aws_lc_rs::kx_group::SECP256R1,
            aws_lc_rs::kx_group::SECP384R1,
            aws_lc_rs::kx_group::X25519MLKEM768,
        ],
        ..aws_lc_rs::default_provider()
    })
}

fn root_store(roots: &[CertificateDer<'static>]) -> Result<Arc<RootCertStore>, TlsConfigError> {
    let mut store = RootCertStore::empty();
    let (added, ignored) = store.add_parsable_certificates(roots.iter().cloned());
    if added == 0 {
        return Err(TlsConfigError::Roots(format!(
            "{} certificate(s) given, {ignored} unparsable",
            roots.len()
        )));
    }
    Ok(Arc::new(store))
}

/// The server side: client certificate required, chained to `roots`, with a SPIFFE ID
/// in `trust_domain`.
pub fn server_config(
    own: &WorkloadCert,
    roots: &[CertificateDer<'static>],
    trust_domain: &str,
) -> Result<Arc<ServerConfig>, TlsConfigError> {
    let provider = provider();
    let roots = root_store(roots)?;
    let inner = WebPkiClientVerifier::builder_with_provider(roots, provider.clone()).build()?;
    let verifier = Arc::new(TrustDomainVerifier {
        inner,
        trust_domain: trust_domain.to_owned(),
    });
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(own.cert_chain_der.clone(), own.key_der.clone_key())?;
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    cfg.session_storage = Arc::new(NoServerSessionStorage {});
    cfg.send_tls13_tickets = 0;
    cfg.max_early_data_size = 0;
    Ok(Arc::new(cfg))
}

/// The client side: present `own`, accept only a server chained to `roots` whose
/// certificate has one of the `expected` identities as a URI SAN.
pub fn client_config(
    own: &WorkloadCert,
    roots: &[CertificateDer<'static>],
    expected: Vec<SpiffeId>,
) -> Result<Arc<ClientConfig>, TlsConfigError> {
    let provider = provider();
    let verifier = Arc::new(IdentityVerifier {
        roots: root_store(roots)?,
        expected,
        algs: provider.signature_verification_algorithms,
    });
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(own.cert_chain_der.clone(), own.key_der.clone_key())?;
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    cfg.enable_sni = false;
    cfg.resumption = Resumption::disabled();
    Ok(Arc::new(cfg))
}

/// The name the client gives rustls: the destination IP. rustls never sends an IP
/// address as SNI, and our verifier ignores it.
pub fn server_name(ip: std::net::IpAddr) -> ServerName<'static> {
    ServerName::IpAddress(ip.into())
}

/// Server-side verifier: webpki chain verification, then the trust-domain check.
#[derive(Debug)]
struct TrustDomainVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    trust_domain: String,
}

impl ClientCertVerifier for TrustDomainVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // ztunnel sends no hints either; clients have exactly one certificate.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let presented = spiffe_ids_from_cert(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        if presented
            .iter()
            .any(|id| id.trust_domain == self.trust_domain)
        {
            Ok(ClientCertVerified::assertion())
        } else {
            Err(IdentityError::TrustDomainMismatch {
                expected: self.trust_domain.clone(),
                presented,
            }
            .into_rustls())
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Client-side verifier: chain to the roots (names ignored), then URI SAN match.
#[derive(Debug)]
struct IdentityVerifier {
    roots: Arc<RootCertStore>,
    expected: Vec<SpiffeId>,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for IdentityVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algs.all,
        )?;
        let presented = spiffe_ids_from_cert(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        if presented.iter().any(|id| self.expected.contains(id)) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(IdentityError::SanMismatch {
                expected: self.expected.clone(),
                presented,
            }
            .into_rustls())
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}
