//! Handshake refusals, each with its exact error on both sides.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use xdpmesh_hbone::{client_config, server_config, Ca, ConnError, IdentityError, Validity};

/// Runs the handshake to the end; returns (client error, server error) as strings.
fn handshake(p: &mut Pair) -> (Option<String>, Option<String>) {
    p.run();
    (
        p.client_err.as_ref().map(ToString::to_string),
        p.server_err.as_ref().map(ToString::to_string),
    )
}

#[test]
fn client_refuses_server_without_expected_identity() {
    let mesh = Mesh::new();
    let c = client_config(
        &mesh.client,
        &mesh.roots(),
        vec![id("reviews"), id("ratings")],
    )
    .unwrap();
    let mut p = Pair::new(c, mesh.server_cfg());
    let (c, s) = handshake(&mut p);
    assert_eq!(
        c.as_deref(),
        Some(
            "TLS error: invalid peer certificate: identity verification error: peer did not present the expected SAN (spiffe://cluster.local/ns/default/sa/reviews,spiffe://cluster.local/ns/default/sa/ratings), got spiffe://cluster.local/ns/default/sa/server"
        )
    );
    assert_eq!(
        s.as_deref(),
        Some("TLS error: received fatal alert: CertificateUnknown")
    );
    assert_eq!(
        p.client_err.as_ref().unwrap().identity_error(),
        Some(&IdentityError::SanMismatch {
            expected: vec![id("reviews"), id("ratings")],
            presented: vec![id("server")],
        })
    );
    assert!(p.client_events.is_empty() && p.server_events.is_empty());
}

#[test]
fn server_refuses_client_from_other_trust_domain() {
    let mesh = Mesh::new();
    let foreign: xdpmesh_hbone::SpiffeId =
        "spiffe://evil.local/ns/default/sa/client".parse().unwrap();
    let cert = mesh.ca.issue(&foreign, Validity::default()).unwrap();
    let c = client_config(&cert, &mesh.roots(), vec![id("server")]).unwrap();
    let mut p = Pair::new(c, mesh.server_cfg());
    let (c, s) = handshake(&mut p);
    assert_eq!(
        s.as_deref(),
        Some(
            "TLS error: invalid peer certificate: identity verification error: peer did not present the expected trustdomain (cluster.local), got spiffe://evil.local/ns/default/sa/client"
        )
    );
    assert_eq!(
        c.as_deref(),
        Some("TLS error: received fatal alert: CertificateUnknown")
    );
    // The server never got as far as HTTP/2.
    assert!(p.server_events.is_empty(), "{:?}", p.server_events);
}

#[test]
fn server_refuses_expired_client_cert() {
    let mesh = Mesh::new();
    let not_after = UNIX_EPOCH
        + Duration::from_secs(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs()
                - 3600,
        );
    let cert = mesh
        .ca
        .issue(
            &id("client"),
            Validity::between(not_after - Duration::from_secs(86400), not_after),
        )
        .unwrap();
    let c = client_config(&cert, &mesh.roots(), vec![id("server")]).unwrap();
    let mut p = Pair::new(c, mesh.server_cfg());
    let (c, s) = handshake(&mut p);
    let s = s.unwrap();
    let na = not_after.duration_since(UNIX_EPOCH).unwrap().as_secs();
    // "... verification time <now> (UNIX), but certificate is not valid after <na> (<now-na> seconds ago)"
    let prefix = "TLS error: invalid peer certificate: certificate expired: verification time ";
    assert!(s.starts_with(prefix), "{s}");
    let rest = &s[prefix.len()..];
    let now: u64 = rest.split(' ').next().unwrap().parse().unwrap();
    assert_eq!(
        s,
        format!(
            "{prefix}{now} (UNIX), but certificate is not valid after {na} ({} seconds ago)",
            now - na
        )
    );
    assert_eq!(
        c.as_deref(),
        Some("TLS error: received fatal alert: CertificateExpired")
    );
}

#[test]
fn server_refuses_client_from_unknown_ca() {
    let mesh = Mesh::new();
    // A CA with another name: webpki finds no issuer at all.
    let other = Ca::generate("other-ca.example").unwrap();
    let cert = other.issue(&id("client"), Validity::default()).unwrap();
    // The client trusts the mesh root, so only the server can object.
    let c = client_config(&cert, &mesh.roots(), vec![id("server")]).unwrap();
    let mut p = Pair::new(c, mesh.server_cfg());
    let (c, s) = handshake(&mut p);
    assert_eq!(
        s.as_deref(),
        Some("TLS error: invalid peer certificate: UnknownIssuer")
    );
    assert_eq!(
        c.as_deref(),
        Some("TLS error: received fatal alert: UnknownCA")
    );
}

#[test]
fn client_refuses_server_from_unknown_ca() {
    let mesh = Mesh::new();
    let other = Ca::generate("other-ca.example").unwrap();
    let cert = other.issue(&id("server"), Validity::default()).unwrap();
    let s = server_config(&cert, &[other.root_der(), mesh.ca.root_der()], TD).unwrap();
    let mut p = Pair::new(mesh.client_cfg(), s);
    let (c, s) = handshake(&mut p);
    assert_eq!(
        c.as_deref(),
        Some("TLS error: invalid peer certificate: UnknownIssuer")
    );
    assert_eq!(
        s.as_deref(),
        Some("TLS error: received fatal alert: UnknownCA")
    );
}

#[test]
fn server_refuses_client_without_certificate() {
    let mesh = Mesh::new();
    // Our client config, minus the client certificate.
    #[derive(Debug)]
    struct NoCert;
    impl rustls::client::ResolvesClientCert for NoCert {
        fn resolve(
            &self,
            _hints: &[&[u8]],
            _schemes: &[rustls::SignatureScheme],
        ) -> Option<Arc<rustls::sign::CertifiedKey>> {
            None
        }
        fn has_certs(&self) -> bool {
            false
        }
    }
    let mut c = (*mesh.client_cfg()).clone();
    c.client_auth_cert_resolver = Arc::new(NoCert);
    let mut p = Pair::new(Arc::new(c), mesh.server_cfg());
    let (c, s) = handshake(&mut p);
    assert_eq!(s.as_deref(), Some("TLS error: peer sent no certificates"));
    assert_eq!(
        c.as_deref(),
        Some("TLS error: received fatal alert: CertificateRequired")
    );
}

#[test]
fn client_refuses_tls12_only_server() {
    let mesh = Mesh::new();
    let mut s = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        mesh.server.cert_chain_der.clone(),
        mesh.server.key_der.clone_key(),
    )
    .unwrap();
    s.alpn_protocols = vec![b"h2".to_vec()];
    let mut p = Pair::new(mesh.client_cfg(), Arc::new(s));
    let (c, s) = handshake(&mut p);
    assert_eq!(
        s.as_deref(),
        Some("TLS error: peer is incompatible: Tls12NotOfferedOrEnabled")
    );
    assert_eq!(
        c.as_deref(),
        Some("TLS error: received fatal alert: ProtocolVersion")
    );
}

#[test]
fn client_refuses_server_that_ignores_alpn() {
    let mesh = Mesh::new();
    let mut s = (*mesh.server_cfg()).clone();
    s.alpn_protocols.clear();
    let mut p = Pair::new(mesh.client_cfg(), Arc::new(s));
    let (c, _s) = handshake(&mut p);
    assert_eq!(
        c.as_deref(),
        Some("ALPN mismatch: peer did not negotiate \"h2\" (negotiated: none)")
    );
    assert!(matches!(p.client_err, Some(ConnError::AlpnMismatch(_))));
    // The refused peer never saw a byte of HTTP/2.
    assert!(p
        .server_events
        .iter()
        .all(|e| !matches!(e, xdpmesh_hbone::Event::Request(_))));
}

#[test]
fn server_without_h2_refuses_client_offering_only_h2() {
    let mesh = Mesh::new();
    let mut s = (*mesh.server_cfg()).clone();
    s.alpn_protocols = vec![b"http/1.1".to_vec()];
    let mut p = Pair::new(mesh.client_cfg(), Arc::new(s));
    let (c, s) = handshake(&mut p);
    assert_eq!(
        s.as_deref(),
        Some("TLS error: peer doesn't support any known protocol")
    );
    assert_eq!(
        c.as_deref(),
        Some("TLS error: received fatal alert: NoApplicationProtocol")
    );
}

#[test]
fn server_refuses_client_without_alpn() {
    let mesh = Mesh::new();
    let mut c = (*mesh.client_cfg()).clone();
    c.alpn_protocols.clear();
    let mut p = Pair::new(Arc::new(c), mesh.server_cfg());
    let (c, s) = handshake(&mut p);
    assert_eq!(
        s.as_deref(),
        Some("ALPN mismatch: peer did not negotiate \"h2\" (negotiated: none)")
    );
    assert_eq!(
        c.as_deref(),
        Some("ALPN mismatch: peer did not negotiate \"h2\" (negotiated: none)")
    );
}

#[test]
fn client_sends_no_sni() {
    // A server that records the SNI it saw: none.
    let mesh = Mesh::new();
    let mut raw = rustls::ServerConnection::new(mesh.server_cfg()).unwrap();
    let mut c = xdpmesh_hbone::HboneClientConn::new(mesh.client_cfg(), server_ip()).unwrap();
    let mut hello = Vec::new();
    c.take_ciphertext(&mut hello);
    raw.read_tls(&mut hello.as_slice()).unwrap();
    raw.process_new_packets().unwrap();
    assert_eq!(raw.server_name(), None);
}

#[test]
fn server_refuses_client_from_impostor_ca_with_the_same_name() {
    // A second CA with the mesh CA's very name: webpki finds the "issuer" by name and
    // the signature does not verify.
    let mesh = Mesh::new();
    let impostor = Ca::generate(TD).unwrap();
    let cert = impostor.issue(&id("client"), Validity::default()).unwrap();
    let c = client_config(&cert, &mesh.roots(), vec![id("server")]).unwrap();
    let mut p = Pair::new(c, mesh.server_cfg());
    let (c, s) = handshake(&mut p);
    assert_eq!(
        s.as_deref(),
        Some("TLS error: invalid peer certificate: BadSignature")
    );
    assert_eq!(
        c.as_deref(),
        Some("TLS error: received fatal alert: DecryptError")
    );
}
