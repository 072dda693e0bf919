//! Self-signed TLS certificates made at run time (rcgen, ECDSA P-256), for HTTPS tests.

/// A certificate for `localhost` and `127.0.0.1` and its private key, both PEM.
pub struct SelfSigned {
    /// The certificate (`BEGIN CERTIFICATE`): what the server presents and the client trusts.
    pub cert_pem: String,
    /// The private key (PKCS#8 `BEGIN PRIVATE KEY`).
    pub key_pem: String,
}

/// A fresh self-signed certificate valid for `localhost` and `127.0.0.1`.
pub fn self_signed() -> SelfSigned {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    SelfSigned {
        cert_pem: certified.cert.pem(),
        key_pem: certified.signing_key.serialize_pem(),
    }
}

/// A reqwest client (no proxy) that trusts `cert_pem` besides the usual roots.
pub fn client_trusting(cert_pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .add_root_certificate(reqwest::Certificate::from_pem(cert_pem.as_bytes()).unwrap())
        .build()
        .unwrap()
}
