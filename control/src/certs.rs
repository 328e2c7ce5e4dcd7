//! Workload identities: where the gateway's workload certificates come from, and the
//! identity directory the control process writes for the dataplane.
//!
//! # Sources ([`IdentitySource`])
//!
//! 1. **Local CA** (default, `--ca-dir`, default `/var/lib/xdpmesh/ca`): `ca.crt` and
//!    `ca.key` (PEM) in the directory, created on first use (directory 0700, key 0600,
//!    certificate 0644) and reused afterwards, so every gateway on one machine shares
//!    one CA. The CA's organization name is its trust domain; a CA directory made for
//!    another trust domain than the config's is refused with an error that names both.
//!    Concurrent first use is safe: the files are published with `link(2)`, which
//!    fails when the name exists, so exactly one process's CA wins.
//! 2. **Mesh CA** (`--ca-cert FILE --ca-key FILE`): an existing CA (PEM certificate,
//!    PKCS#8 PEM key) issues the certificates: join a mesh whose CA exists.
//! 3. **Ready-made certificates** (`--identity-dir DIR`): `DIR/roots.pem` and, for every
//!    local workload, `DIR/<namespace>/<service-account>.crt` (chain, leaf first) and
//!    `DIR/<namespace>/<service-account>.key`. No CA is involved; a local workload
//!    without its certificate is an error that names the missing file, and a
//!    certificate whose SPIFFE ID is not the workload's is refused.
//!
//! Issued certificates live `--cert-validity-hours` (default 24). A certificate issued
//! earlier by this process is reused on a later publication while more than half of
//! its validity is left (and the CA has not changed); otherwise a new one is issued.
//!
//! # The identity directory
//!
//! [`publish_identities`] writes, for every workload on the local node (one entry per
//! distinct SPIFFE ID `spiffe://<td>/ns/<namespace>/sa/<service-account>`), into the
//! output directory (default `/run/xdpmesh/<instance>/identity/`, mode 0700):
//!
//! | file                         | mode | content                                   |
//! |------------------------------|------|-------------------------------------------|
//! | `roots.pem`                  | 0644 | trust roots (PEM certificates)            |
//! | `<namespace>~<sa>.crt`       | 0644 | certificate chain, leaf first, no root    |
//! | `<namespace>~<sa>.key`       | 0600 | the leaf's private key (PKCS#8 PEM)       |
//! | `manifest.json`              | 0644 | what is in force, see below               |
//!
//! Namespaces and service accounts are DNS-1123 names, so `~` never occurs in them.
//!
//! ## `manifest.json` (the contract with the dataplane)
//!
//! The format and its checks are [`xdpmesh_hbone::manifest`]'s, shared with the
//! dataplane that reads it: [`Manifest`], written with [`Manifest::to_json`].
//!
//! ## Writing and reading protocol
//!
//! Every file is written under a temporary name (`.<name>.tmp.<pid>.<n>`), synced, given
//! its mode and renamed into place; files whose content is unchanged are not rewritten.
//! `manifest.json` is renamed **last**, then files no longer named by it are removed.
//! A reader therefore reads `manifest.json` first, then the files it names; if a named
//! file is missing, or a certificate and key do not match (the writer replaced them in
//! between), it re-reads the manifest and tries again. Key material is written only
//! into this directory (and the CA directory) and never logged.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
pub use xdpmesh_hbone::manifest::{Manifest, ManifestIdentity, MANIFEST_FILE};
use xdpmesh_hbone::{roots_from_pem, Ca, SpiffeId, Validity, WorkloadCert};

use crate::config::MeshConfig;

/// Default local CA directory.
pub const DEFAULT_CA_DIR: &str = "/var/lib/xdpmesh/ca";
/// The CA certificate's file name in a CA directory.
pub const CA_CERT_FILE: &str = "ca.crt";
/// The CA key's file name in a CA directory.
pub const CA_KEY_FILE: &str = "ca.key";
/// The trust roots' file name in the identity directory (and in `--identity-dir`).
pub const ROOTS_FILE: &str = "roots.pem";
/// Default certificate lifetime.
pub const DEFAULT_VALIDITY: Duration = Duration::from_secs(24 * 3600);

/// Mode of directories holding keys.
pub const DIR_MODE: u32 = 0o700;
/// Mode of private key files.
pub const KEY_MODE: u32 = 0o600;
/// Mode of certificate and manifest files.
pub const CERT_MODE: u32 = 0o644;

/// The default identity directory of an instance: `/run/xdpmesh/<instance>/identity`.
pub fn default_identity_out(instance: &str) -> PathBuf {
    PathBuf::from(format!("/run/xdpmesh/{instance}/identity"))
}

/// The base file name (without extension) of an identity: `<namespace>~<sa>`.
pub fn identity_file_stem(id: &SpiffeId) -> String {
    format!("{}~{}", id.namespace, id.service_account)
}

/// Where certificates come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceKind {
    /// A local CA in this directory, created on first use.
    LocalCa {
        /// Holds `ca.crt` and `ca.key`.
        dir: PathBuf,
    },
    /// An existing mesh CA.
    MeshCa {
        /// CA certificate (PEM).
        cert: PathBuf,
        /// CA private key (PKCS#8 PEM).
        key: PathBuf,
    },
    /// Ready-made certificates: `roots.pem` and `<ns>/<sa>.crt` / `.key`.
    ReadyMade {
        /// The directory.
        dir: PathBuf,
    },
}

/// An identity source and the certificates it has issued so far (kept in memory for
/// reuse on later publications).
pub struct IdentitySource {
    kind: SourceKind,
    validity: Duration,
    /// Extra trust roots (PEM files) published beside the issuing CA's root: how a
    /// CA rollover trusts the old and the new root at once.
    extra_roots: Vec<PathBuf>,
    /// Issued certificates, valid for the CA whose root is `cache_root`.
    cache: HashMap<SpiffeId, WorkloadCert>,
    cache_root: String,
}

impl std::fmt::Debug for IdentitySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentitySource")
            .field("kind", &self.kind)
            .field("validity", &self.validity)
            .field("cached", &self.cache.len())
            .finish_non_exhaustive()
    }
}

/// What one publication did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Published {
    /// The manifest's generation.
    pub generation: u64,
    /// Identities written.
    pub identities: usize,
    /// Of those, newly issued certificates (0 for ready-made certificates).
    pub issued: usize,
    /// Of those, certificates reused from an earlier publication.
    pub reused: usize,
    /// The manifest's path.
    pub manifest: PathBuf,
}

/// Roots and one certificate per identity, as a source hands them out.
struct Obtained {
    roots_pem: String,
    certs: Vec<WorkloadCert>,
    issued: usize,
    reused: usize,
}

impl IdentitySource {
    /// A source of the given kind, issuing certificates valid for `validity`.
    pub fn new(kind: SourceKind, validity: Duration) -> Self {
        IdentitySource {
            kind,
            validity,
            extra_roots: Vec::new(),
            cache: HashMap::new(),
            cache_root: String::new(),
        }
    }

    /// The local CA in `dir`.
    pub fn local_ca(dir: impl Into<PathBuf>) -> Self {
        Self::new(SourceKind::LocalCa { dir: dir.into() }, DEFAULT_VALIDITY)
    }

    /// An existing mesh CA.
    pub fn mesh_ca(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        Self::new(
            SourceKind::MeshCa {
                cert: cert.into(),
                key: key.into(),
            },
            DEFAULT_VALIDITY,
        )
    }

    /// Ready-made certificates in `dir`.
    pub fn ready_made(dir: impl Into<PathBuf>) -> Self {
        Self::new(SourceKind::ReadyMade { dir: dir.into() }, DEFAULT_VALIDITY)
    }

    /// Also trusts the roots in these PEM files (read at every publication, so a
    /// changed file takes effect with the next one).
    pub fn with_extra_roots(mut self, files: Vec<PathBuf>) -> Self {
        self.extra_roots = files;
        self
    }

    /// The roots published: `own` (the issuing CA's, or the ready-made directory's)
    /// then each extra root not already among them.
    fn trust_bundle(&self, own: &str) -> Result<String> {
        let mut pem = own.trim_end().to_owned();
        pem.push('\n');
        let mut have: Vec<Vec<u8>> = roots_from_pem(own)
            .map(|r| r.iter().map(|c| c.to_vec()).collect())
            .unwrap_or_default();
        for file in &self.extra_roots {
            let text = read_text(file)?;
            let roots = roots_from_pem(&text)
                .with_context(|| format!("--trust-roots {}", file.display()))?;
            for (der, block) in roots.iter().zip(pem_blocks(&text)) {
                if !have.iter().any(|h| h.as_slice() == der.as_ref()) {
                    have.push(der.to_vec());
                    pem.push_str(block.trim_end());
                    pem.push('\n');
                }
            }
        }
        Ok(pem)
    }

    /// Sets the lifetime of issued certificates.
    pub fn with_validity(mut self, validity: Duration) -> Self {
        self.validity = validity;
        self
    }

    /// The kind of source.
    pub fn kind(&self) -> &SourceKind {
        &self.kind
    }

    fn obtain(&mut self, trust_domain: &str, ids: &[SpiffeId]) -> Result<Obtained> {
        let ca = match &self.kind {
            SourceKind::LocalCa { dir } => load_or_create_ca(dir, trust_domain)?.0,
            SourceKind::MeshCa { cert, key } => load_ca_files(cert, key)?,
            SourceKind::ReadyMade { dir } => {
                let mut o = obtain_ready_made(dir, ids)?;
                o.roots_pem = self.trust_bundle(&o.roots_pem)?;
                return Ok(o);
            }
        };
        if ca.root_pem() != self.cache_root {
            self.cache.clear();
            self.cache_root = ca.root_pem().to_owned();
        }
        let now = SystemTime::now();
        let (mut issued, mut reused) = (0, 0);
        let mut certs = Vec::with_capacity(ids.len());
        for id in ids {
            let cert = match self.cache.get(id) {
                Some(c) if now < renewal_time(&c.validity, self.validity) => {
                    reused += 1;
                    c.clone()
                }
                _ => {
                    let c = ca
                        .issue(id, Validity::for_duration(self.validity))
                        .with_context(|| format!("issuing a certificate for {id}"))?;
                    self.cache.insert(id.clone(), c.clone());
                    issued += 1;
                    c
                }
            };
            certs.push(cert);
        }
        // Forget identities that left the node.
        self.cache.retain(|id, _| ids.contains(id));
        Ok(Obtained {
            roots_pem: self.trust_bundle(ca.root_pem())?,
            certs,
            issued,
            reused,
        })
    }
}

impl IdentitySource {
    /// When the first issued certificate reaches half its lifetime and is renewed at
    /// the next publication (`None`: nothing issued, e.g. ready-made certificates,
    /// which their owner renews).
    pub fn next_renewal(&self) -> Option<SystemTime> {
        self.cache
            .values()
            .map(|c| renewal_time(&c.validity, self.validity))
            .min()
    }

    /// The lifetime of issued certificates.
    pub fn validity(&self) -> Duration {
        self.validity
    }
}

/// When a certificate issued for `ttl` is renewed: at half its lifetime, counted from
/// its end (`not_before` is backdated for clock skew, so counting from it would renew a
/// short-lived certificate at once).
fn renewal_time(v: &Validity, ttl: Duration) -> SystemTime {
    let total = v
        .not_after
        .duration_since(v.not_before)
        .unwrap_or_default()
        .min(ttl);
    v.not_after - total / 2
}

fn obtain_ready_made(dir: &Path, ids: &[SpiffeId]) -> Result<Obtained> {
    let roots_path = dir.join(ROOTS_FILE);
    let roots_pem = read_text(&roots_path)?;
    roots_from_pem(&roots_pem).with_context(|| format!("{}", roots_path.display()))?;
    let mut certs = Vec::with_capacity(ids.len());
    for id in ids {
        let base = dir.join(&id.namespace).join(&id.service_account);
        let cert_path = base.with_extension("crt");
        let key_path = base.with_extension("key");
        let chain = read_text(&cert_path)
            .with_context(|| format!("no certificate for local workload identity {id}"))?;
        let key = read_text(&key_path)
            .with_context(|| format!("no private key for local workload identity {id}"))?;
        let wc = WorkloadCert::from_pem(&chain, &key)
            .with_context(|| format!("{} / {}", cert_path.display(), key_path.display()))?;
        if &wc.identity != id {
            bail!(
                "{}: certificate is for {}, expected {id}",
                cert_path.display(),
                wc.identity
            );
        }
        if wc.validity.not_after <= SystemTime::now() {
            tracing::warn!(identity = %id, file = %cert_path.display(), "ready-made certificate has expired");
        }
        certs.push(wc);
    }
    Ok(Obtained {
        roots_pem,
        certs,
        issued: 0,
        reused: 0,
    })
}

/// The `-----BEGIN CERTIFICATE----- … -----END CERTIFICATE-----` blocks of a PEM text,
/// in order (what `roots_from_pem` parsed, as text to publish).
fn pem_blocks(text: &str) -> Vec<&str> {
    const END: &str = "-----END CERTIFICATE-----";
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN CERTIFICATE-----") {
        let Some(end) = rest[start..].find(END) else {
            break;
        };
        let stop = start + end + END.len();
        out.push(&rest[start..stop]);
        rest = &rest[stop..];
    }
    out
}

fn read_text(path: &Path) -> Result<String> {
    fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// The identities of the workloads on `node`: one per distinct SPIFFE ID, sorted.
pub fn local_identities(cfg: &MeshConfig, node: &str) -> Result<Vec<SpiffeId>> {
    let mut ids = BTreeMap::new();
    for w in cfg.workloads_on(node) {
        let s = w.spiffe_id(&cfg.trust_domain);
        let id: SpiffeId = s
            .parse()
            .with_context(|| format!("workload {}", w.qualified_name()))?;
        ids.insert(s, id);
    }
    Ok(ids.into_values().collect())
}

/// Obtains a certificate for every workload on `node` from `source` and writes the
/// identity directory `out` with a manifest of generation `generation` (see the module
/// documentation). On error nothing in force is replaced, except files the old
/// manifest does not name.
pub fn publish_identities(
    source: &mut IdentitySource,
    cfg: &MeshConfig,
    node: &str,
    out: &Path,
    generation: u64,
) -> Result<Published> {
    let td = cfg.trust_domain.as_str();
    let ids = local_identities(cfg, node)?;
    let obtained = source.obtain(td, &ids)?;

    create_private_dir(out)?;
    write_if_changed(
        &out.join(ROOTS_FILE),
        obtained.roots_pem.as_bytes(),
        CERT_MODE,
    )?;
    let mut entries = Vec::with_capacity(obtained.certs.len());
    for wc in &obtained.certs {
        let stem = identity_file_stem(&wc.identity);
        let (chain, key) = wc.to_pem();
        let cert_name = format!("{stem}.crt");
        let key_name = format!("{stem}.key");
        write_if_changed(&out.join(&key_name), key.as_bytes(), KEY_MODE)?;
        write_if_changed(&out.join(&cert_name), chain.as_bytes(), CERT_MODE)?;
        entries.push(ManifestIdentity {
            spiffe: wc.identity.to_string(),
            cert: cert_name,
            key: key_name,
        });
    }
    let manifest = Manifest {
        generation,
        trust_domain: td.to_owned(),
        identities: entries,
        roots: ROOTS_FILE.to_owned(),
    };
    let json = manifest.to_json()?;
    let manifest_path = out.join(MANIFEST_FILE);
    write_atomic(&manifest_path, &json, CERT_MODE)?;
    sync_dir(out);
    remove_stale(out, &manifest);
    Ok(Published {
        generation,
        identities: manifest.identities.len(),
        issued: obtained.issued,
        reused: obtained.reused,
        manifest: manifest_path,
    })
}

/// Removes `.crt`/`.key` files and temporary files the manifest does not name.
fn remove_stale(out: &Path, m: &Manifest) {
    let Ok(rd) = fs::read_dir(out) else { return };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let named = m.identities.iter().any(|i| i.cert == name || i.key == name);
        let ours = name.ends_with(".crt")
            || name.ends_with(".key")
            || (name.starts_with('.') && name.contains(".tmp."));
        if ours && !named {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// Creates `dir` (and parents) and gives it mode 0700.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE))
        .with_context(|| format!("setting the mode of {}", dir.display()))
}

fn temp_name(path: &Path) -> Result<PathBuf> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow!("{}: not a file path", path.display()))?;
    // Unique per process and call: threads of one process may write the same name.
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    Ok(path.with_file_name(format!(".{name}.tmp.{}.{seq}", std::process::id())))
}

/// Writes `bytes` to a synced temporary file next to `path` with exactly `mode`.
fn write_temp(path: &Path, bytes: &[u8], mode: u32) -> Result<PathBuf> {
    let tmp = temp_name(path)?;
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    // The umask may have cleared bits of `mode`; set it exactly.
    f.set_permissions(fs::Permissions::from_mode(mode))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    Ok(tmp)
}

/// Writes `path` atomically (temporary file, then rename) with exactly `mode`.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let tmp = write_temp(path, bytes, mode)?;
    fs::rename(&tmp, path).with_context(|| {
        let _ = fs::remove_file(&tmp);
        format!("renaming {} to {}", tmp.display(), path.display())
    })
}

/// Like [`write_atomic`], but leaves a file that already has this content and mode.
fn write_if_changed(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    if let (Ok(old), Ok(meta)) = (fs::read(path), fs::metadata(path)) {
        if old == bytes && meta.permissions().mode() & 0o7777 == mode {
            return Ok(());
        }
    }
    write_atomic(path, bytes, mode)
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// The trust domain a CA certificate was made for: its organization name (what
/// [`Ca::generate`] writes).
pub fn ca_trust_domain(cert_pem: &str) -> Option<String> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let der = roots_from_pem(cert_pem).ok()?.into_iter().next()?;
    let (_, cert) = X509Certificate::from_der(&der).ok()?;
    let o = cert.subject().iter_organization().next()?;
    o.as_str().ok().map(str::to_owned)
}

/// Loads a CA from a certificate and a key file.
pub fn load_ca_files(cert: &Path, key: &Path) -> Result<Ca> {
    let cert_pem = read_text(cert)?;
    let key_pem = read_text(key)?;
    Ca::from_pem(&cert_pem, &key_pem)
        .with_context(|| format!("loading the CA {} / {}", cert.display(), key.display()))
}

/// Loads the CA in `dir` if there is one (no trust-domain check).
pub fn load_ca_dir(dir: &Path) -> Result<Option<Ca>> {
    let cert = dir.join(CA_CERT_FILE);
    let key = dir.join(CA_KEY_FILE);
    match (cert.exists(), key.exists()) {
        (false, false) => Ok(None),
        (true, true) => load_ca_files(&cert, &key).map(Some),
        (true, false) => bail!(
            "CA directory {} has {CA_CERT_FILE} but no {CA_KEY_FILE}; remove the directory to create a new CA",
            dir.display()
        ),
        (false, true) => {
            // Another process may be creating the CA right now: it links the key
            // first, then the certificate.
            for _ in 0..100 {
                std::thread::sleep(Duration::from_millis(50));
                if cert.exists() {
                    return load_ca_files(&cert, &key).map(Some);
                }
            }
            bail!(
                "CA directory {} has {CA_KEY_FILE} but no {CA_CERT_FILE}; remove the directory to create a new CA",
                dir.display()
            )
        }
    }
}

/// Loads the CA in `dir`, or creates one for `trust_domain` (directory 0700, key 0600,
/// certificate 0644). Returns the CA and whether it was created now. An existing CA
/// made for another trust domain is an error.
pub fn load_or_create_ca(dir: &Path, trust_domain: &str) -> Result<(Ca, bool)> {
    let (ca, created) = match load_ca_dir(dir)? {
        Some(ca) => (ca, false),
        None => create_ca(dir, trust_domain)?,
    };
    match ca_trust_domain(ca.root_pem()) {
        Some(td) if td == trust_domain => Ok((ca, created)),
        Some(td) => bail!(
            "the CA in {} was made for trust domain {td:?}, not {trust_domain:?}; \
             use another --ca-dir, or remove {} to create a new CA",
            dir.display(),
            dir.display()
        ),
        None => bail!(
            "the CA certificate {} names no trust domain (organization); expected {trust_domain:?}",
            dir.join(CA_CERT_FILE).display()
        ),
    }
}

fn create_ca(dir: &Path, trust_domain: &str) -> Result<(Ca, bool)> {
    create_private_dir(dir)?;
    let ca = Ca::generate(trust_domain).context("generating the CA")?;
    let cert = dir.join(CA_CERT_FILE);
    let key = dir.join(CA_KEY_FILE);
    let key_tmp = write_temp(&key, ca.key_pem().as_bytes(), KEY_MODE)?;
    let cert_tmp = write_temp(&cert, ca.root_pem().as_bytes(), CERT_MODE)?;
    // link(2) fails if the name exists: of several processes creating the CA at
    // once, exactly one publishes its key; the others load the winner's CA.
    let won = match fs::hard_link(&key_tmp, &key) {
        Ok(()) => {
            let r = fs::hard_link(&cert_tmp, &cert)
                .with_context(|| format!("creating {}", cert.display()));
            let _ = fs::remove_file(&key_tmp);
            let _ = fs::remove_file(&cert_tmp);
            r?;
            true
        }
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            let _ = fs::remove_file(&key_tmp);
            let _ = fs::remove_file(&cert_tmp);
            false
        }
        Err(e) => {
            let _ = fs::remove_file(&key_tmp);
            let _ = fs::remove_file(&cert_tmp);
            return Err(e).with_context(|| format!("creating {}", key.display()));
        }
    };
    sync_dir(dir);
    if won {
        Ok((ca, true))
    } else {
        let ca = load_ca_dir(dir)?
            .ok_or_else(|| anyhow!("CA in {} vanished while loading it", dir.display()))?;
        Ok((ca, false))
    }
}

/// Issues a certificate for `id` from `ca` and writes the chain (0644) and key (0600)
/// atomically.
pub fn issue_to_files(
    ca: &Ca,
    id: &SpiffeId,
    validity: Validity,
    cert: &Path,
    key: &Path,
) -> Result<WorkloadCert> {
    let wc = ca
        .issue(id, validity)
        .with_context(|| format!("issuing a certificate for {id}"))?;
    let (chain, key_pem) = wc.to_pem();
    write_atomic(key, key_pem.as_bytes(), KEY_MODE)?;
    write_atomic(cert, chain.as_bytes(), CERT_MODE)?;
    Ok(wc)
}

/// A validity window entirely in the past: notBefore two hours ago, notAfter one hour
/// ago (whole seconds), for expired-certificate tests.
pub fn expired_validity() -> Validity {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let at = |s: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
    Validity::between(at(now - 7200), at(now - 3600))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_at_half_life_counted_from_the_end() {
        let now = SystemTime::now();
        let h = Duration::from_secs(3600);
        let day = 24 * h;
        // Issued for 3 h, 1 h ago: renewed 1.5 h before its end, i.e. in 30 min.
        assert_eq!(
            renewal_time(&Validity::between(now - h, now + 2 * h), day),
            now + h / 2
        );
        // A 10 s certificate backdated 60 s for clock skew is renewed 5 s before its
        // end, not at once.
        let ten = Duration::from_secs(10);
        let v = Validity::for_duration(ten);
        let at = renewal_time(&v, ten);
        assert_eq!(
            v.not_after.duration_since(at).unwrap(),
            Duration::from_secs(5)
        );
        assert!(at > now);
        assert!(renewal_time(&expired_validity(), day) < now);
    }

    #[test]
    fn extra_roots_join_the_bundle_once_each() {
        let dir = tempfile::tempdir().unwrap();
        let (one, two) = (
            Ca::generate("cluster.local").unwrap(),
            Ca::generate("cluster.local").unwrap(),
        );
        let file = dir.path().join("extra.pem");
        // The issuing root listed again, and a new one: the bundle has each once.
        std::fs::write(&file, format!("{}{}", one.root_pem(), two.root_pem())).unwrap();
        let src = IdentitySource::local_ca(dir.path().join("ca")).with_extra_roots(vec![file]);
        let bundle = src.trust_bundle(one.root_pem()).unwrap();
        let roots = roots_from_pem(&bundle).unwrap();
        assert_eq!(roots.len(), 2);
        assert_eq!(
            roots[0].as_ref(),
            roots_from_pem(one.root_pem()).unwrap()[0].as_ref()
        );
        assert_eq!(
            roots[1].as_ref(),
            roots_from_pem(two.root_pem()).unwrap()[0].as_ref()
        );
        let missing = IdentitySource::local_ca(dir.path().join("ca"))
            .with_extra_roots(vec![dir.path().join("nope.pem")]);
        let e = missing.trust_bundle(one.root_pem()).unwrap_err();
        assert!(format!("{e:#}").contains("nope.pem"), "{e:#}");
    }

    #[test]
    fn stem() {
        let id: SpiffeId = "spiffe://cluster.local/ns/default/sa/web".parse().unwrap();
        assert_eq!(identity_file_stem(&id), "default~web");
    }
}
