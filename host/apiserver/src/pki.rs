//! The cluster's certificates: a CA made at first start and kept in the data directory, and a
//! serving certificate signed by it, made afresh at every start for the names the server is
//! reached by. Clients trust the CA (it goes into the kubeconfig), so the serving certificate can
//! change with the listen address without touching any client.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

/// What can go wrong making or reading the certificates.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("cannot make a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// The CA and the serving certificate of one server.
pub struct Pki {
    ca_pem: String,
    ca_key_pem: String,
    server_cert_pem: String,
    server_key_pem: String,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").finish_non_exhaustive()
    }
}

const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const SERVER_CERT: &str = "server.crt";
const SERVER_KEY: &str = "server.key";

/// The CA's parameters. They are rebuilt the same way on every start, so a CA key read back
/// from disk issues certificates whose issuer matches the stored CA certificate.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "flotilla-ca");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

impl Pki {
    /// Reads the CA from `dir`, making it first if there is none, and issues a serving
    /// certificate for `names` (DNS names or IP addresses). Private keys are written readable by
    /// the owner only.
    pub fn load_or_create(dir: &Path, names: &[String]) -> Result<Self, PkiError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| PkiError::Io { path, source }
        };
        fs::create_dir_all(dir).map_err(io(dir))?;
        let (ca_cert, ca_key) = (dir.join(CA_CERT), dir.join(CA_KEY));
        let (ca_pem, key) = if ca_key.exists() {
            let key_pem = fs::read_to_string(&ca_key).map_err(io(&ca_key))?;
            let key = KeyPair::from_pem(&key_pem).map_err(|e| PkiError::Invalid {
                path: ca_key.clone(),
                message: e.to_string(),
            })?;
            (fs::read_to_string(&ca_cert).map_err(io(&ca_cert))?, key)
        } else {
            let key = KeyPair::generate()?;
            let cert = ca_params().self_signed(&key)?;
            write_private(&ca_key, &key.serialize_pem()).map_err(io(&ca_key))?;
            fs::write(&ca_cert, cert.pem()).map_err(io(&ca_cert))?;
            (cert.pem(), key)
        };
        let issuer = Issuer::new(ca_params(), key);
        let mut params = CertificateParams::new(names.to_vec())?;
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, "flotilla-apiserver");
        params.distinguished_name = name;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let server_key = KeyPair::generate()?;
        let server_cert = params.signed_by(&server_key, &issuer)?;
        let (cert_path, key_path) = (dir.join(SERVER_CERT), dir.join(SERVER_KEY));
        write_private(&key_path, &server_key.serialize_pem()).map_err(io(&key_path))?;
        fs::write(&cert_path, server_cert.pem()).map_err(io(&cert_path))?;
        Ok(Self {
            ca_pem,
            ca_key_pem: issuer.key().serialize_pem(),
            server_cert_pem: server_cert.pem(),
            server_key_pem: server_key.serialize_pem(),
        })
    }

    /// The CA certificate, PEM: what clients trust.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A client certificate signed by the CA, for `common_name`: how the API server proves
    /// itself to node agents. Returns the certificate and its key, PEM.
    pub fn issue_client(&self, common_name: &str) -> Result<(String, String), PkiError> {
        let ca_key = KeyPair::from_pem(&self.ca_key_pem)?;
        let issuer = Issuer::new(ca_params(), ca_key);
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, common_name);
        params.distinguished_name = name;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// The SHA-256 of the CA certificate's PEM, hex: what a join token pins.
    pub fn ca_hash(&self) -> String {
        hex::encode(Sha256::digest(self.ca_pem.as_bytes()))
    }

    /// A rustls server configuration serving the certificate over HTTP/2 and HTTP/1.1.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, PkiError> {
        let invalid = |message: String| PkiError::Invalid {
            path: PathBuf::from(SERVER_CERT),
            message,
        };
        let certs = CertificateDer::pem_slice_iter(self.server_cert_pem.as_bytes())
            .chain(CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(e.to_string()))?;
        let key = PrivateKeyDer::from_pem_slice(self.server_key_pem.as_bytes())
            .map_err(|e| invalid(e.to_string()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// Writes a file only its owner can read.
fn write_private(path: &Path, contents: &str) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}

/// Writes `contents` to `path` readable by its owner only, replacing it atomically.
pub fn write_secret_file(path: &Path, contents: &str) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    write_private(&tmp, contents)?;
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_survives_restarts_and_signs_each_serving_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let first = Pki::load_or_create(dir.path(), &names).unwrap();
        let second = Pki::load_or_create(dir.path(), &names).unwrap();
        assert_eq!(first.ca_pem(), second.ca_pem());
        assert_eq!(first.ca_hash(), second.ca_hash());
        assert_ne!(first.server_cert_pem, second.server_cert_pem);
        second.server_config().unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.path().join(CA_KEY))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the CA key is private");
    }
}
