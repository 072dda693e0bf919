//! The fixed test-only RSA key pairs (2048-bit, PKCS#8, generated once with `openssl genrsa`).
//!
//! They protect nothing, are public on purpose, and must never be configured for a real
//! Salesforce connected app. They live here, in a dev-only crate, so that no crate the
//! `provisioner` binary links carries a private key (a test of the binary checks that);
//! `sandbox::salesforce::KeyPair::generate` makes the keys of `provisioner demo` and
//! `sf-sandbox`. Tests use these so they need not pay for key generation, and so a wrong key
//! is a known one.

/// The private key the tests' Salesforce sandboxes trust (PKCS#8 PEM).
pub const PRIVATE_KEY_PEM: &str = include_str!("keys/test_key_a.pem");
/// The public key matching [`PRIVATE_KEY_PEM`], for `SalesforceConfig::public_key_pem`.
pub const PUBLIC_KEY_PEM: &str = include_str!("keys/test_key_a.pub.pem");
/// A second private key no sandbox trusts ("wrong key" tests).
pub const OTHER_PRIVATE_KEY_PEM: &str = include_str!("keys/test_key_b.pem");
/// The public key matching [`OTHER_PRIVATE_KEY_PEM`].
pub const OTHER_PUBLIC_KEY_PEM: &str = include_str!("keys/test_key_b.pub.pem");
