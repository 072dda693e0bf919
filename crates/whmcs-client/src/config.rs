//! Client configuration.

use std::time::Duration;

use secrecy::SecretString;

/// How to reach and authenticate to WHMCS. `Debug` shows the URL and settings, never the
/// identifier, secret or access key.
#[derive(Debug, Clone)]
pub struct WhmcsConfig {
    /// The full `https://<host>/<path>/includes/api.php` URL (`WHMCS_API_URL`).
    pub api_url: String,
    /// API credential identifier (`WHMCS_API_IDENTIFIER`).
    pub identifier: SecretString,
    /// API credential secret (`WHMCS_API_SECRET`).
    pub secret: SecretString,
    /// Optional `$api_access_key` that skips the IP allow-list (`WHMCS_ACCESS_KEY`).
    pub access_key: Option<SecretString>,
    /// Default AddOrder `paymentmethod` (`WHMCS_PAYMENT_METHOD`, default `banktransfer`).
    pub payment_method: String,
    /// TCP/TLS connect timeout.
    pub connect_timeout: Duration,
    /// Whole-request timeout of reads and of AddOrder/AddClient (default 30 s, as WHMCS's
    /// own sample).
    pub read_timeout: Duration,
    /// Whole-request timeout of AcceptOrder and ModuleCreate, which run the control panel's
    /// create call inside the request (default 10 minutes).
    pub provisioning_timeout: Duration,
    /// `limitnum` of list calls (`WHMCS_PAGE_SIZE`, default [`DEFAULT_PAGE_SIZE`]).
    pub page_size: u64,
}

/// Default [`WhmcsConfig::page_size`]: 100 records per list call, not WHMCS's own 25. The
/// AddOrder lookup walks all of a client's services before every first AddOrder, so a client
/// with 90 services costs one call instead of four. WHMCS sets no upper bound on `limitnum`,
/// and a server that returns fewer records than asked is paged through all the same.
pub const DEFAULT_PAGE_SIZE: u64 = 100;

/// The largest [`WhmcsConfig::page_size`] the client accepts: a page of services with custom
/// fields and config options stays well under the client's 8 MiB reply limit.
pub const MAX_PAGE_SIZE: u64 = 500;

/// Default [`WhmcsConfig::read_timeout`] (`WHMCS_TIMEOUT`).
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Default [`WhmcsConfig::provisioning_timeout`] (`WHMCS_ACCEPT_TIMEOUT`).
pub const DEFAULT_PROVISIONING_TIMEOUT: Duration = Duration::from_secs(600);

impl WhmcsConfig {
    /// A configuration with the defaults above.
    pub fn new(api_url: impl Into<String>, identifier: SecretString, secret: SecretString) -> Self {
        Self {
            api_url: api_url.into(),
            identifier,
            secret,
            access_key: None,
            payment_method: "banktransfer".to_owned(),
            connect_timeout: Duration::from_secs(10),
            read_timeout: DEFAULT_READ_TIMEOUT,
            provisioning_timeout: DEFAULT_PROVISIONING_TIMEOUT,
            page_size: DEFAULT_PAGE_SIZE,
        }
    }
}
