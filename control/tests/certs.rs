//! Workload identities: the local CA (created once, reused, trust domain checked), the
//! identity directory (exact files, modes and manifest), certificate reuse on reload,
//! the mesh-CA and ready-made sources, and TLS handshakes with the written files.
//! Everything runs unprivileged in temporary directories.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::json;
use xdpmesh_control::certs::{
    self, load_or_create_ca, publish_identities, IdentitySource, Manifest,
};
use xdpmesh_control::config::MeshConfig;
use xdpmesh_hbone::{
    client_config, roots_from_pem, server_config, Ca, ConnError, Event, HboneClientConn,
    HboneServerConn, SpiffeId, Validity, WorkloadCert,
};

const BIN: &str = env!("CARGO_BIN_EXE_xdpmesh-control");
const TD: &str = "cluster.local";

/// node-a: client (default/client), a second workload with the same identity, and
/// shop/web; node-b: server (default/server).
const CONFIG: &str = "\
trust_domain: cluster.local
nodes:
  - name: node-a
    gateway_addresses: [198.18.0.1]
  - name: node-b
    gateway_addresses: [198.18.0.2]
workloads:
  - name: client
    namespace: default
    service_account: client
    node: node-a
    addresses: [198.18.1.2]
  - name: client-2
    namespace: default
    service_account: client
    node: node-a
    addresses: [198.18.1.3]
  - name: web
    namespace: shop
    service_account: web
    node: node-a
    addresses: [198.18.1.4]
  - name: server
    namespace: default
    service_account: server
    node: node-b
    addresses: [198.18.2.2]
";

fn config(text: &str) -> MeshConfig {
    MeshConfig::from_str_named(text, Path::new("inline.yaml")).unwrap()
}

fn id(ns: &str, sa: &str) -> SpiffeId {
    format!("spiffe://{TD}/ns/{ns}/sa/{sa}").parse().unwrap()
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

fn cli(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "info")
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A workload certificate and the roots PEM as the dataplane would load them from an
/// identity directory: manifest first, then the files it names.
fn load_identity(dir: &Path, spiffe: &str) -> (WorkloadCert, String) {
    let m: Manifest =
        serde_json::from_slice(&fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    let e = m
        .identities
        .iter()
        .find(|i| i.spiffe == spiffe)
        .unwrap_or_else(|| panic!("{spiffe} not in {m:?}"));
    let wc = WorkloadCert::from_pem(
        &fs::read_to_string(dir.join(&e.cert)).unwrap(),
        &fs::read_to_string(dir.join(&e.key)).unwrap(),
    )
    .unwrap();
    (wc, fs::read_to_string(dir.join(&m.roots)).unwrap())
}

/// Client `client` (trusting `client_roots`, expecting the server to be `expected`)
/// against server `server` (trusting `server_roots`, accepting trust domain TD),
/// back to back in memory. Returns (client error, server error); on success both
/// sides saw `Connected` and know the peer's identity.
fn handshake(
    client: &WorkloadCert,
    client_roots: &str,
    expected: &SpiffeId,
    server: &WorkloadCert,
    server_roots: &str,
) -> (Option<String>, Option<String>) {
    let ip = "198.18.2.2".parse().unwrap();
    let ccfg = client_config(
        client,
        &roots_from_pem(client_roots).unwrap(),
        vec![expected.clone()],
    )
    .unwrap();
    let scfg = server_config(server, &roots_from_pem(server_roots).unwrap(), TD).unwrap();
    let mut c = HboneClientConn::new(ccfg, ip).unwrap();
    let mut s = HboneServerConn::new(scfg, ip).unwrap();
    let (mut c2s, mut s2c) = (Vec::new(), Vec::new());
    let (mut cerr, mut serr): (Option<ConnError>, Option<ConnError>) = (None, None);
    let (mut cup, mut sup) = (false, false);
    for _ in 0..1000 {
        let mut moved = c.take_ciphertext_max(&mut c2s, 1 << 16) > 0;
        if !c2s.is_empty() && serr.is_none() {
            match s.feed_ciphertext(&c2s) {
                Ok(k) => {
                    c2s.drain(..k);
                    moved |= k > 0;
                }
                Err(e) => {
                    serr = Some(e);
                    c2s.clear();
                }
            }
        }
        moved |= s.take_ciphertext_max(&mut s2c, 1 << 16) > 0;
        if !s2c.is_empty() && cerr.is_none() {
            match c.feed_ciphertext(&s2c) {
                Ok(k) => {
                    s2c.drain(..k);
                    moved |= k > 0;
                }
                Err(e) => {
                    cerr = Some(e);
                    s2c.clear();
                }
            }
        }
        if cerr.is_none() {
            cerr = c.poll().err();
        }
        if serr.is_none() {
            serr = s.poll().err();
        }
        while let Some(e) = c.poll_event() {
            cup |= matches!(e, Event::Connected);
            moved = true;
        }
        while let Some(e) = s.poll_event() {
            sup |= matches!(e, Event::Connected);
            moved = true;
        }
        if !moved {
            break;
        }
    }
    if cerr.is_none() && serr.is_none() {
        assert!(cup && sup, "handshake did not finish");
        assert_eq!(c.peer_identity(), Some(expected));
        assert_eq!(s.peer_identity(), Some(&client.identity));
    }
    (cerr.map(|e| e.to_string()), serr.map(|e| e.to_string()))
}

#[test]
fn local_ca_is_created_once_and_reused() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("ca");
    let (ca, created) = load_or_create_ca(&dir, TD).unwrap();
    assert!(created);
    let crt = fs::read(dir.join("ca.crt")).unwrap();
    let key = fs::read(dir.join("ca.key")).unwrap();
    assert_eq!(crt, ca.root_pem().as_bytes());
    assert_eq!(key, ca.key_pem().as_bytes());
    assert_eq!(certs::ca_trust_domain(ca.root_pem()).as_deref(), Some(TD));

    let (again, created) = load_or_create_ca(&dir, TD).unwrap();
    assert!(!created);
    assert_eq!(again.root_pem(), ca.root_pem());
    assert_eq!(again.root_der(), ca.root_der());
    assert_eq!(fs::read(dir.join("ca.crt")).unwrap(), crt);
    assert_eq!(fs::read(dir.join("ca.key")).unwrap(), key);
    assert_eq!(names(&dir), ["ca.crt", "ca.key"]);

    // The CLI: idempotent, same files.
    let d = p(&dir);
    assert_eq!(
        ok(&cli(&["ca", "init", "--trust-domain", TD, "--ca-dir", d])),
        format!("{d}: CA for trust domain {TD} exists\n")
    );
    assert_eq!(fs::read(dir.join("ca.crt")).unwrap(), crt);
    let d2 = t.path().join("ca2");
    let d2 = p(&d2);
    assert_eq!(
        ok(&cli(&["ca", "init", "--trust-domain", TD, "--ca-dir", d2])),
        format!("{d2}: CA for trust domain {TD} created\n")
    );
    assert_eq!(
        ok(&cli(&["ca", "init", "--trust-domain", TD, "--ca-dir", d2])),
        format!("{d2}: CA for trust domain {TD} exists\n")
    );
}

#[test]
fn gateways_starting_together_share_one_ca() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("ca");
    let roots: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..8)
            .map(|_| s.spawn(|| load_or_create_ca(&dir, TD).unwrap()))
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap().0.root_pem().to_owned())
            .collect()
    });
    let on_disk = fs::read_to_string(dir.join("ca.crt")).unwrap();
    assert!(roots.iter().all(|r| *r == on_disk));
    assert_eq!(names(&dir), ["ca.crt", "ca.key"]);
}

#[test]
fn ca_of_another_trust_domain_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("ca");
    let d = p(&dir);
    ok(&cli(&[
        "ca",
        "init",
        "--trust-domain",
        "other.local",
        "--ca-dir",
        d,
    ]));
    let expected = format!(
        "the CA in {d} was made for trust domain \"other.local\", not \"cluster.local\"; \
         use another --ca-dir, or remove {d} to create a new CA"
    );
    let e = load_or_create_ca(&dir, TD).unwrap_err();
    assert_eq!(format!("{e:#}"), expected);

    let out = cli(&["ca", "init", "--trust-domain", TD, "--ca-dir", d]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!("xdpmesh-control: error: {expected}\n")
    );

    // publish_identities with the local CA source says the same and writes nothing.
    let out_dir = t.path().join("identity");
    let mut src = IdentitySource::local_ca(&dir);
    let e = publish_identities(&mut src, &config(CONFIG), "node-a", &out_dir, 1).unwrap_err();
    assert_eq!(format!("{e:#}"), expected);
    assert!(!out_dir.exists());
}

#[test]
fn modes_are_exact() {
    let t = tempfile::tempdir().unwrap();
    let ca_dir = t.path().join("var/ca");
    let out = t.path().join("run/identity");
    let mut src = IdentitySource::local_ca(&ca_dir);
    publish_identities(&mut src, &config(CONFIG), "node-a", &out, 1).unwrap();
    assert_eq!(mode(&ca_dir), 0o700);
    assert_eq!(mode(&ca_dir.join("ca.key")), 0o600);
    assert_eq!(mode(&ca_dir.join("ca.crt")), 0o644);
    assert_eq!(mode(&out), 0o700);
    for n in names(&out) {
        let want = if n.ends_with(".key") { 0o600 } else { 0o644 };
        assert_eq!(mode(&out.join(&n)), want, "{n}");
    }

    // An existing directory with a lax mode is tightened.
    fs::set_permissions(&out, fs::Permissions::from_mode(0o755)).unwrap();
    publish_identities(&mut src, &config(CONFIG), "node-a", &out, 2).unwrap();
    assert_eq!(mode(&out), 0o700);

    // The CLI's issue.
    let (c, k) = (t.path().join("x.crt"), t.path().join("x.key"));
    ok(&cli(&[
        "issue",
        "--spiffe",
        "spiffe://cluster.local/ns/default/sa/x",
        "--out-cert",
        p(&c),
        "--out-key",
        p(&k),
        "--ca-dir",
        p(&ca_dir),
    ]));
    assert_eq!(mode(&c), 0o644);
    assert_eq!(mode(&k), 0o600);
}

#[test]
fn manifest_and_files_are_exact() {
    let t = tempfile::tempdir().unwrap();
    let ca_dir = t.path().join("ca");
    let out = t.path().join("identity");
    let mut src = IdentitySource::local_ca(&ca_dir);
    let cfg = config(CONFIG);
    let r = publish_identities(&mut src, &cfg, "node-a", &out, 7).unwrap();
    assert_eq!(
        (r.generation, r.identities, r.issued, r.reused),
        (7, 2, 2, 0)
    );
    assert_eq!(r.manifest, out.join("manifest.json"));
    assert_eq!(
        names(&out),
        [
            "default~client.crt",
            "default~client.key",
            "manifest.json",
            "roots.pem",
            "shop~web.crt",
            "shop~web.key",
        ]
    );
    let m: serde_json::Value =
        serde_json::from_slice(&fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(
        m,
        json!({
            "generation": 7,
            "trust_domain": "cluster.local",
            "identities": [
                {
                    "spiffe": "spiffe://cluster.local/ns/default/sa/client",
                    "cert": "default~client.crt",
                    "key": "default~client.key"
                },
                {
                    "spiffe": "spiffe://cluster.local/ns/shop/sa/web",
                    "cert": "shop~web.crt",
                    "key": "shop~web.key"
                }
            ],
            "roots": "roots.pem"
        })
    );
    assert_eq!(
        fs::read(out.join("roots.pem")).unwrap(),
        fs::read(ca_dir.join("ca.crt")).unwrap()
    );
    for (ns, sa) in [("default", "client"), ("shop", "web")] {
        let (wc, _) = load_identity(&out, &id(ns, sa).to_string());
        assert_eq!(wc.identity, id(ns, sa));
        assert_eq!(wc.cert_chain_der.len(), 1);
        // 24 hours by default.
        let life = wc
            .validity
            .not_after
            .duration_since(wc.validity.not_before)
            .unwrap();
        assert_eq!(life.as_secs(), 24 * 3600 + 60);
    }

    // node-b gets only the server; no key material anywhere else.
    let out_b = t.path().join("identity-b");
    let r = publish_identities(&mut src, &cfg, "node-b", &out_b, 1).unwrap();
    assert_eq!(r.identities, 1);
    assert_eq!(
        names(&out_b),
        [
            "default~server.crt",
            "default~server.key",
            "manifest.json",
            "roots.pem"
        ]
    );
    assert_eq!(names(t.path()), ["ca", "identity", "identity-b"]);

    // A node without workloads: an empty list, roots still written.
    let cfg_empty = config(&CONFIG.replace("node: node-b", "node: node-a"));
    let out_c = t.path().join("identity-c");
    publish_identities(&mut src, &cfg_empty, "node-b", &out_c, 3).unwrap();
    let m: Manifest =
        serde_json::from_slice(&fs::read(out_c.join("manifest.json")).unwrap()).unwrap();
    assert!(m.identities.is_empty());
    assert_eq!(names(&out_c), ["manifest.json", "roots.pem"]);
}

#[test]
fn reload_reuses_valid_certs_and_drops_departed_identities() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("identity");
    let mut src = IdentitySource::local_ca(t.path().join("ca"));
    let cfg = config(CONFIG);
    publish_identities(&mut src, &cfg, "node-a", &out, 1).unwrap();
    let crt = fs::read(out.join("default~client.crt")).unwrap();
    let key = fs::read(out.join("default~client.key")).unwrap();

    let r = publish_identities(&mut src, &cfg, "node-a", &out, 2).unwrap();
    assert_eq!((r.generation, r.issued, r.reused), (2, 0, 2));
    assert_eq!(fs::read(out.join("default~client.crt")).unwrap(), crt);
    assert_eq!(fs::read(out.join("default~client.key")).unwrap(), key);
    let m: Manifest =
        serde_json::from_slice(&fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m.generation, 2);

    // shop/web moves to node-b: its files go, the client keeps its certificate.
    let moved = config(&CONFIG.replace(
        "    node: node-a\n    addresses: [198.18.1.4]",
        "    node: node-b\n    addresses: [198.18.1.4]",
    ));
    let r = publish_identities(&mut src, &moved, "node-a", &out, 3).unwrap();
    assert_eq!((r.identities, r.issued, r.reused), (1, 0, 1));
    assert_eq!(
        names(&out),
        [
            "default~client.crt",
            "default~client.key",
            "manifest.json",
            "roots.pem"
        ]
    );
    assert_eq!(fs::read(out.join("default~client.crt")).unwrap(), crt);

    // A fresh process (empty cache) issues anew from the same CA.
    let mut fresh = IdentitySource::local_ca(t.path().join("ca"));
    let r = publish_identities(&mut fresh, &moved, "node-a", &out, 4).unwrap();
    assert_eq!((r.issued, r.reused), (1, 0));
    assert_ne!(fs::read(out.join("default~client.crt")).unwrap(), crt);

    // Certificates with a one-hour life are reused too (more than half is left).
    let mut short =
        IdentitySource::local_ca(t.path().join("ca")).with_validity(Duration::from_secs(3600));
    publish_identities(&mut short, &moved, "node-a", &out, 5).unwrap();
    let r = publish_identities(&mut short, &moved, "node-a", &out, 6).unwrap();
    assert_eq!((r.issued, r.reused), (0, 1));
}

#[test]
fn issued_certs_handshake() {
    // Two gateways on one machine: one CA directory, two identity directories.
    let t = tempfile::tempdir().unwrap();
    let ca_dir = t.path().join("ca");
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    let cfg = config(CONFIG);
    publish_identities(
        &mut IdentitySource::local_ca(&ca_dir),
        &cfg,
        "node-a",
        &a,
        1,
    )
    .unwrap();
    publish_identities(
        &mut IdentitySource::local_ca(&ca_dir),
        &cfg,
        "node-b",
        &b,
        1,
    )
    .unwrap();
    let (client, croots) = load_identity(&a, "spiffe://cluster.local/ns/default/sa/client");
    let (server, sroots) = load_identity(&b, "spiffe://cluster.local/ns/default/sa/server");
    assert_eq!(croots, sroots);
    assert_eq!(
        handshake(&client, &croots, &id("default", "server"), &server, &sroots),
        (None, None)
    );

    // The client insists on the destination's identity.
    let (c, s) = handshake(&client, &croots, &id("shop", "web"), &server, &sroots);
    assert!(
        c.as_deref().unwrap().starts_with(
            "TLS error: invalid peer certificate: identity verification error: peer did not present the expected SAN"
        ),
        "{c:?}"
    );
    assert_eq!(
        s.as_deref(),
        Some("TLS error: received fatal alert: CertificateUnknown")
    );
}

#[test]
fn mesh_ca_source_issues_from_the_given_ca() {
    let t = tempfile::tempdir().unwrap();
    let ca = Ca::generate(TD).unwrap();
    let (cert, key) = (
        t.path().join("mesh-ca.pem"),
        t.path().join("mesh-ca-key.pem"),
    );
    fs::write(&cert, ca.root_pem()).unwrap();
    fs::write(&key, ca.key_pem()).unwrap();
    let out = t.path().join("identity");
    let mut src = IdentitySource::mesh_ca(&cert, &key);
    let r = publish_identities(&mut src, &config(CONFIG), "node-b", &out, 1).unwrap();
    assert_eq!((r.identities, r.issued), (1, 1));
    assert_eq!(
        fs::read_to_string(out.join("roots.pem")).unwrap(),
        ca.root_pem()
    );
    let (server, roots) = load_identity(&out, "spiffe://cluster.local/ns/default/sa/server");
    // A client issued in process by the same CA connects.
    let client = ca
        .issue(&id("default", "client"), Validity::default())
        .unwrap();
    assert_eq!(
        handshake(&client, &roots, &id("default", "server"), &server, &roots),
        (None, None)
    );

    // CLI: issue from --ca-cert/--ca-key.
    let (c, k) = (t.path().join("c.crt"), t.path().join("c.key"));
    ok(&cli(&[
        "issue",
        "--spiffe",
        "spiffe://cluster.local/ns/default/sa/client",
        "--out-cert",
        p(&c),
        "--out-key",
        p(&k),
        "--ca-cert",
        p(&cert),
        "--ca-key",
        p(&key),
        "--validity-hours",
        "2",
    ]));
    let client = WorkloadCert::from_pem(
        &fs::read_to_string(&c).unwrap(),
        &fs::read_to_string(&k).unwrap(),
    )
    .unwrap();
    let life = client
        .validity
        .not_after
        .duration_since(client.validity.not_before)
        .unwrap();
    assert_eq!(life.as_secs(), 2 * 3600 + 60);
    assert_eq!(
        handshake(&client, &roots, &id("default", "server"), &server, &roots),
        (None, None)
    );

    // A missing CA file is named.
    let mut src = IdentitySource::mesh_ca(t.path().join("nope.pem"), &key);
    let e = publish_identities(&mut src, &config(CONFIG), "node-b", &out, 2).unwrap_err();
    assert!(
        format!("{e:#}").starts_with(&format!("reading {}/nope.pem: ", t.path().display())),
        "{e:#}"
    );
}

/// Builds a ready-made identity directory with the CLI: roots.pem, <ns>/<sa>.crt/.key.
fn ready_made(t: &Path, ca_dir: &Path, ids: &[(&str, &str)]) -> std::path::PathBuf {
    let dir = t.join("ready");
    for (ns, sa) in ids {
        fs::create_dir_all(dir.join(ns)).unwrap();
        ok(&cli(&[
            "issue",
            "--spiffe",
            &id(ns, sa).to_string(),
            "--out-cert",
            p(&dir.join(ns).join(format!("{sa}.crt"))),
            "--out-key",
            p(&dir.join(ns).join(format!("{sa}.key"))),
            "--ca-dir",
            p(ca_dir),
        ]));
    }
    fs::copy(ca_dir.join("ca.crt"), dir.join("roots.pem")).unwrap();
    dir
}

#[test]
fn ready_made_identity_dir() {
    let t = tempfile::tempdir().unwrap();
    let ca_dir = t.path().join("ca");
    let dir = ready_made(
        t.path(),
        &ca_dir,
        &[
            ("default", "client"),
            ("shop", "web"),
            ("default", "server"),
        ],
    );
    let out = t.path().join("identity");
    let mut src = IdentitySource::ready_made(&dir);
    let r = publish_identities(&mut src, &config(CONFIG), "node-a", &out, 1).unwrap();
    assert_eq!((r.identities, r.issued, r.reused), (2, 0, 0));
    let (client, roots) = load_identity(&out, "spiffe://cluster.local/ns/default/sa/client");
    assert_eq!(
        client.cert_chain_der,
        WorkloadCert::from_pem(
            &fs::read_to_string(dir.join("default/client.crt")).unwrap(),
            &fs::read_to_string(dir.join("default/client.key")).unwrap()
        )
        .unwrap()
        .cert_chain_der
    );
    let out_b = t.path().join("identity-b");
    publish_identities(
        &mut IdentitySource::ready_made(&dir),
        &config(CONFIG),
        "node-b",
        &out_b,
        1,
    )
    .unwrap();
    let (server, sroots) = load_identity(&out_b, "spiffe://cluster.local/ns/default/sa/server");
    assert_eq!(
        handshake(&client, &roots, &id("default", "server"), &server, &sroots),
        (None, None)
    );

    // A local workload without a certificate: the error names the missing file, and
    // the directory in force is left as it was.
    fs::remove_file(dir.join("shop/web.crt")).unwrap();
    let before = fs::read(out.join("manifest.json")).unwrap();
    let e = publish_identities(&mut src, &config(CONFIG), "node-a", &out, 2).unwrap_err();
    let want = format!(
        "no certificate for local workload identity spiffe://cluster.local/ns/shop/sa/web: reading {}/shop/web.crt: No such file or directory (os error 2)",
        dir.display()
    );
    assert_eq!(format!("{e:#}"), want);
    assert_eq!(fs::read(out.join("manifest.json")).unwrap(), before);

    // A certificate for someone else is refused.
    fs::copy(dir.join("default/client.crt"), dir.join("shop/web.crt")).unwrap();
    fs::copy(dir.join("default/client.key"), dir.join("shop/web.key")).unwrap();
    let e = publish_identities(&mut src, &config(CONFIG), "node-a", &out, 2).unwrap_err();
    assert_eq!(
        format!("{e:#}"),
        format!(
            "{}/shop/web.crt: certificate is for spiffe://cluster.local/ns/default/sa/client, expected spiffe://cluster.local/ns/shop/sa/web",
            dir.display()
        )
    );

    // Missing roots.
    fs::remove_file(dir.join("roots.pem")).unwrap();
    let e = publish_identities(&mut src, &config(CONFIG), "node-a", &out, 2).unwrap_err();
    assert_eq!(
        format!("{e:#}"),
        format!(
            "reading {}/roots.pem: No such file or directory (os error 2)",
            dir.display()
        )
    );
}

#[test]
fn expired_cert_is_refused_by_the_server() {
    let t = tempfile::tempdir().unwrap();
    let ca_dir = t.path().join("ca");
    let out = t.path().join("identity");
    publish_identities(
        &mut IdentitySource::local_ca(&ca_dir),
        &config(CONFIG),
        "node-b",
        &out,
        1,
    )
    .unwrap();
    let (server, roots) = load_identity(&out, "spiffe://cluster.local/ns/default/sa/server");
    let (c, k) = (t.path().join("old.crt"), t.path().join("old.key"));
    ok(&cli(&[
        "issue",
        "--spiffe",
        "spiffe://cluster.local/ns/default/sa/client",
        "--out-cert",
        p(&c),
        "--out-key",
        p(&k),
        "--ca-dir",
        p(&ca_dir),
        "--not-after-past",
    ]));
    let client = WorkloadCert::from_pem(
        &fs::read_to_string(&c).unwrap(),
        &fs::read_to_string(&k).unwrap(),
    )
    .unwrap();
    let now = std::time::SystemTime::now();
    let ago = |t: std::time::SystemTime| now.duration_since(t).unwrap().as_secs();
    assert!((7199..=7260).contains(&ago(client.validity.not_before)));
    assert!((3599..=3660).contains(&ago(client.validity.not_after)));
    let (ce, se) = handshake(&client, &roots, &id("default", "server"), &server, &roots);
    let se = se.unwrap();
    assert!(
        se.starts_with("TLS error: invalid peer certificate: certificate expired: "),
        "{se}"
    );
    assert_eq!(
        ce.as_deref(),
        Some("TLS error: received fatal alert: CertificateExpired")
    );
}

#[test]
fn foreign_ca_is_refused_by_the_server() {
    let t = tempfile::tempdir().unwrap();
    let (ca_dir, foreign) = (t.path().join("ca"), t.path().join("ca2"));
    let out = t.path().join("identity");
    publish_identities(
        &mut IdentitySource::local_ca(&ca_dir),
        &config(CONFIG),
        "node-b",
        &out,
        1,
    )
    .unwrap();
    ok(&cli(&[
        "ca",
        "init",
        "--trust-domain",
        "other.local",
        "--ca-dir",
        p(&foreign),
    ]));
    let (server, roots) = load_identity(&out, "spiffe://cluster.local/ns/default/sa/server");
    let (c, k) = (t.path().join("f.crt"), t.path().join("f.key"));
    ok(&cli(&[
        "issue",
        "--spiffe",
        "spiffe://cluster.local/ns/default/sa/client",
        "--out-cert",
        p(&c),
        "--out-key",
        p(&k),
        "--ca-dir",
        p(&foreign),
    ]));
    let client = WorkloadCert::from_pem(
        &fs::read_to_string(&c).unwrap(),
        &fs::read_to_string(&k).unwrap(),
    )
    .unwrap();
    assert_eq!(
        handshake(&client, &roots, &id("default", "server"), &server, &roots),
        (
            Some("TLS error: received fatal alert: UnknownCA".into()),
            Some("TLS error: invalid peer certificate: UnknownIssuer".into())
        )
    );
}

/// `run` end to end without root: shared memory in a plain file, no pinned maps (no
/// dataplane), identities written at start and again on SIGHUP.
#[test]
fn run_writes_identities_and_rewrites_them_on_sighup() {
    let t = tempfile::tempdir().unwrap();
    let cfg_path = t.path().join("mesh.yaml");
    fs::write(&cfg_path, CONFIG).unwrap();
    let out = t.path().join("identity");
    let child = Command::new(BIN)
        .args([
            "run",
            "--config",
            p(&cfg_path),
            "--node",
            "node-a",
            "--instance",
            "certs-test",
            "--pin-root",
            p(&t.path().join("no-bpf")),
            "--shm",
            p(&t.path().join("shm")),
            "--shm-area-size",
            "65536",
            "--run-dir",
            p(&t.path().join("run")),
            "--ca-dir",
            p(&t.path().join("ca")),
            "--identity-out",
            p(&out),
        ])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let manifest = |g: u64| -> Option<Manifest> {
        let m: Manifest =
            serde_json::from_slice(&fs::read(out.join("manifest.json")).ok()?).ok()?;
        (m.generation == g).then_some(m)
    };
    let wait = |g: u64| {
        let t0 = Instant::now();
        loop {
            if let Some(m) = manifest(g) {
                return m;
            }
            assert!(t0.elapsed() < Duration::from_secs(20), "no manifest {g}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let m1 = wait(1);
    assert_eq!(m1.identities.len(), 2);
    let crt = fs::read(out.join("default~client.crt")).unwrap();
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    let m2 = wait(2);
    assert_eq!(m2.identities, m1.identities);
    // Reused, not reissued.
    assert_eq!(fs::read(out.join("default~client.crt")).unwrap(), crt);
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success());
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(log.contains("identities=2"), "{log}");
    assert!(log.contains("issued=2 reused=0"), "{log}");
    assert!(log.contains("issued=0 reused=2"), "{log}");
    // Never key material in the log.
    assert!(!log.contains("PRIVATE KEY"), "{log}");
    let key = fs::read_to_string(out.join("default~client.key")).unwrap();
    let body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(!log.contains(&body[..20]));
}
