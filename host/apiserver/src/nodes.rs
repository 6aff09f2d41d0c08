//! Reaching node agents: `pods/log` is answered by the agent that runs the pod, over TLS in
//! both directions.
//!
//! The API server proves itself with a client certificate signed by the cluster CA, which
//! agents trust. An agent's serving certificate is its own; it publishes the certificate's
//! SHA-256 in its Node's `flotilla.dev/serving-certificate-sha256` annotation, and the API
//! server accepts exactly that certificate — the Node object, which only the node and
//! administrators may write, is what vouches for it. The address is the Node's InternalIP and
//! `status.daemonEndpoints.kubeletEndpoint.Port`.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The Node annotation holding the SHA-256 (hex) of the agent's serving certificate (DER).
pub const SERVING_CERTIFICATE_ANNOTATION: &str = "flotilla.dev/serving-certificate-sha256";

/// How long connecting to an agent may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The API server's identity towards node agents.
pub struct NodeClient {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for NodeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeClient").finish_non_exhaustive()
    }
}

/// Accepts exactly the certificate whose SHA-256 the Node published.
#[derive(Debug)]
struct Pinned {
    fingerprint: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if hex::encode(Sha256::digest(end_entity.as_ref())) == self.fingerprint {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "the node's certificate is not the one its Node object names".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Where a node's agent serves, from its Node object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Endpoint {
    pub address: String,
    pub port: u16,
    pub fingerprint: String,
}

impl Endpoint {
    /// Reads the endpoint from a Node; the error says what the Node lacks.
    pub(crate) fn of(node: &Value) -> Result<Self, String> {
        let name = node["metadata"]["name"].as_str().unwrap_or_default();
        let address = node["status"]["addresses"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["type"] == "InternalIP")
            .and_then(|a| a["address"].as_str())
            .ok_or_else(|| format!("node {name} has no InternalIP address"))?;
        let port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("node {name} does not say where its agent serves"))?;
        let fingerprint = node["metadata"]["annotations"][SERVING_CERTIFICATE_ANNOTATION]
            .as_str()
            .ok_or_else(|| format!("node {name} does not name its agent's certificate"))?;
        Ok(Self {
            address: address.to_owned(),
            port,
            fingerprint: fingerprint.to_owned(),
        })
    }
}

impl NodeClient {
    /// The identity in a client certificate and key (PEM) signed by the cluster CA.
    pub fn new(cert_pem: &str, key_pem: &str) -> Result<Self, String> {
        let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("the node client certificate: {e}"))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| format!("the node client key: {e}"))?;
        Ok(Self { chain, key })
    }

    /// Sends `GET path` to the agent and returns its response, body streaming.
    pub(crate) async fn get(
        &self,
        endpoint: &Endpoint,
        path: &str,
    ) -> Result<hyper::Response<hyper::body::Incoming>, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = Arc::new(Pinned {
            fingerprint: endpoint.fingerprint.clone(),
            provider: provider.clone(),
        });
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| format!("the node client certificate: {e}"))?;
        let target = format!("{}:{}", endpoint.address, endpoint.port);
        let unreachable =
            |e: &dyn std::fmt::Display| format!("cannot reach the agent at {target}: {e}");
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&target))
            .await
            .map_err(|e| unreachable(&e))?
            .map_err(|e| unreachable(&e))?;
        let name = ServerName::try_from(endpoint.address.clone()).map_err(|e| unreachable(&e))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| unreachable(&e))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| unreachable(&e))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let request = hyper::Request::get(path)
            .header(hyper::header::HOST, &target)
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .map_err(|e| e.to_string())?;
        sender
            .send_request(request)
            .await
            .map_err(|e| unreachable(&e))
    }
}
