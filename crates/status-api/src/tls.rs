//! Optional TLS for the status API: a rustls server configuration (the `ring` provider, TLS 1.2
//! and 1.3, HTTP/1.1 by ALPN) made from a PEM certificate chain and private key.
//!
//! [`crate::serve_with`] runs the handshake of each connection in the connection's own task,
//! bounded by [`crate::ServeOptions::header_read_timeout`] and counted under
//! [`crate::ServeOptions::max_connections`]; a failed or stalled handshake closes that
//! connection only.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use secrecy::{ExposeSecret as _, SecretSlice};

use crate::error::{Error, Result};

/// A parsed server certificate chain and key, ready for [`crate::ServeOptions::tls`]. Cheap to
/// clone; `Debug` shows nothing of the key.
#[derive(Clone)]
pub struct TlsConfig {
    server: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig").finish_non_exhaustive()
    }
}

impl TlsConfig {
    /// The configuration of `cert_chain_pem` (one or more `CERTIFICATE` blocks, the server's
    /// own first) and `private_key_pem` (PKCS#8, PKCS#1 or SEC1 PEM, the first key found).
    ///
    /// # Errors
    /// [`Error::Tls`] when either is not usable PEM or the key does not match the certificate.
    pub fn from_pem(cert_chain_pem: &[u8], private_key_pem: &SecretSlice<u8>) -> Result<Self> {
        let chain = CertificateDer::pem_slice_iter(cert_chain_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| tls_error("certificate", format!("not PEM: {}", pem_reason(&e))))?;
        if chain.is_empty() {
            return Err(tls_error(
                "certificate",
                "no `BEGIN CERTIFICATE` block found".to_owned(),
            ));
        }
        // The parser's error names the PEM problem, never the key's bytes.
        let key = PrivateKeyDer::from_pem_slice(private_key_pem.expose_secret()).map_err(|e| {
            tls_error(
                "private key",
                format!("no usable PEM private key: {}", pem_reason(&e)),
            )
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_error("configuration", e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| tls_error("configuration", e.to_string()))?;
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            server: Arc::new(server),
        })
    }

    /// A rustls configuration made elsewhere (it should offer ALPN `http/1.1` or none: the
    /// server speaks HTTP/1.1 only).
    pub fn from_server_config(server: Arc<rustls::ServerConfig>) -> Self {
        Self { server }
    }

    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(Arc::clone(&self.server))
    }
}

fn tls_error(what: &'static str, reason: String) -> Error {
    Error::Tls { what, reason }
}

/// The kind of a PEM failure, without any of the input.
fn pem_reason(e: &rustls::pki_types::pem::Error) -> &'static str {
    use rustls::pki_types::pem::Error as Pem;
    match e {
        Pem::NoItemsFound => {
            "no `BEGIN PRIVATE KEY` (PKCS#8), `BEGIN RSA PRIVATE KEY` or `BEGIN EC PRIVATE KEY` block"
        }
        Pem::MissingSectionEnd { .. } => "a block has no end line",
        Pem::IllegalSectionStart { .. } => "a malformed begin line",
        Pem::Base64Decode(_) => "a block is not valid base64",
        _ => "unreadable PEM",
    }
}
