//! Configuration (the README's Configuration table): environment variables, optionally a TOML
//! file (`--config FILE`, the environment wins), secrets from `<NAME>` or `<NAME>_FILE`. Every
//! problem is reported by variable name, all at once; secrets never appear in messages or in
//! `config check` output.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::Duration;

use provisioner_core::EngineConfig;
use provisioner_core::subscriber::SubscriberConfig;
use secrecy::{ExposeSecret, SecretString};

/// Variables whose values are secrets: read from `<NAME>` or `<NAME>_FILE`, printed redacted.
pub(crate) const SECRETS: &[&str] = &[
    "SF_PRIVATE_KEY",
    "WHMCS_API_IDENTIFIER",
    "WHMCS_API_SECRET",
    "WHMCS_ACCESS_KEY",
    "FIELD_ENCRYPTION_KEY",
    "PORTAL_API_TOKEN",
    "PORTAL_API_TOKEN_PREVIOUS",
    "SECURITY_ALERT_WEBHOOK",
    "DATABASE_URL",
];

/// `url` with the password of its user-info part (`scheme://user:PASSWORD@host`) replaced by
/// `[REDACTED]`: how `DATABASE_URL` is shown.
pub(crate) fn redact_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    // The authority ends at the first `/`, `?` or `#`; its user info at the last `@` in it.
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let Some((user_info, host)) = authority.rsplit_once('@') else {
        return url.to_owned();
    };
    let Some((user, _password)) = user_info.split_once(':') else {
        return url.to_owned();
    };
    format!("{scheme}://{user}:[REDACTED]@{host}{tail}")
}

/// `SF_EVENTS_ENABLED`'s default.
const EVENTS_ENABLED: bool = true;
/// `SF_PUBSUB_ENDPOINT`'s default.
const PUBSUB_ENDPOINT: &str = "https://api.pubsub.salesforce.com:7443";
/// `AUDIT_WITNESS_INTERVAL`'s default.
const AUDIT_WITNESS_INTERVAL: Duration = Duration::from_secs(3600);
/// `DATABASE_URL`'s default.
const DATABASE_URL: &str = "sqlite://provisioner.db";
/// Status of an Order placed through `POST /v1/orders` (a Draft-category value).
pub(crate) const DEFAULT_NEW_ORDER_STATUS: &str =
    provisioner_core::order_intake::DEFAULT_NEW_STATUS;

/// Every variable the provisioner reads, in the README table's order, with its default as text (what
/// `config check` shows and what is parsed when the variable is unset).
///
/// Each default is written once, as a typed value where it is used: the engine's in
/// [`EngineConfig::default`] and [`provisioner_core::DEFAULT_PROVISION_RATE`], the subscriber's
/// in [`SubscriberConfig::default`], the other crates' in their `DEFAULT_*` constants, the
/// binary's own above. This table only renders them.
pub(crate) static VARIABLES: LazyLock<Vec<(&'static str, Option<String>)>> = LazyLock::new(|| {
    let engine = EngineConfig::default();
    let subscriber = SubscriberConfig::default();
    let text = |v: &dyn std::fmt::Display| Some(v.to_string());
    vec![
        ("SF_EVENTS_ENABLED", text(&EVENTS_ENABLED)),
        ("SF_PROVISION_EVENT_CHANNEL", text(&engine.topic)),
        ("SF_EVENTS_REPLAY", text(&subscriber.start)),
        ("SF_LOGIN_URL", text(&sf_auth::DEFAULT_LOGIN_URL)),
        ("SF_AUDIENCE", None),
        ("SF_CLIENT_ID", None),
        ("SF_USERNAME", None),
        ("SF_PRIVATE_KEY", None),
        ("SF_API_VERSION", text(&sf_rest::DEFAULT_API_VERSION)),
        ("SF_PUBSUB_ENDPOINT", text(&PUBSUB_ENDPOINT)),
        ("SF_PUBSUB_CA_FILE", None),
        ("SF_PUBSUB_BATCH", text(&subscriber.batch)),
        ("SF_ORDER_STATUS_APPROVED", text(&engine.statuses.approved)),
        (
            "SF_ORDER_STATUS_PROVISIONING",
            engine.statuses.provisioning.clone(),
        ),
        (
            "SF_ORDER_STATUS_PROVISIONED",
            text(&engine.statuses.provisioned),
        ),
        ("SF_ORDER_STATUS_FAILED", text(&engine.statuses.failed)),
        (
            "SF_ORDER_STATUS_NEW",
            Some(DEFAULT_NEW_ORDER_STATUS.to_owned()),
        ),
        ("SF_PRICEBOOK_ID", None),
        ("WHMCS_API_URL", None),
        ("WHMCS_API_IDENTIFIER", None),
        ("WHMCS_API_SECRET", None),
        ("WHMCS_ACCESS_KEY", None),
        ("WHMCS_PAYMENT_METHOD", text(&engine.payment_method)),
        (
            "WHMCS_ORDER_REF_FIELD_ID",
            engine.order_ref_fields.as_ref().map(ToString::to_string),
        ),
        ("WHMCS_SEND_EMAIL", text(&engine.send_email)),
        ("WHMCS_NO_INVOICE", text(&engine.no_invoice)),
        (
            "WHMCS_TIMEOUT",
            Some(format_duration(whmcs_client::DEFAULT_READ_TIMEOUT)),
        ),
        (
            "WHMCS_ACCEPT_TIMEOUT",
            Some(format_duration(whmcs_client::DEFAULT_PROVISIONING_TIMEOUT)),
        ),
        ("WHMCS_SETTLE", Some(format_duration(engine.whmcs_settle))),
        ("WHMCS_PAGE_SIZE", text(&whmcs_client::DEFAULT_PAGE_SIZE)),
        ("DATABASE_URL", text(&DATABASE_URL)),
        ("JOB_LEASE", Some(format_duration(engine.lease))),
        ("FIELD_ENCRYPTION_KEY", None),
        (
            "ENCRYPTION_KEY_ROTATION_DAYS",
            text(&engine.key_rotation_days),
        ),
        (
            "AUDIT_LOG_RETENTION_DAYS",
            text(&audit::DEFAULT_RETENTION_DAYS),
        ),
        (
            "AUDIT_WITNESS_INTERVAL",
            Some(format_duration(AUDIT_WITNESS_INTERVAL)),
        ),
        ("SECURITY_ALERT_WEBHOOK", None),
        (
            "SECURITY_ALERT_OUTBOX_MAX",
            text(&provisioner_core::DEFAULT_ALERT_OUTBOX_MAX),
        ),
        (
            "SECURITY_ALERT_MAX_BACKOFF",
            Some(format_duration(
                security::WebhookConfig::default().max_backoff,
            )),
        ),
        (
            "PROVISIONER_HTTP_ADDR",
            text(&status_api::DEFAULT_HTTP_ADDR),
        ),
        ("PROVISIONER_TLS_CERT_FILE", None),
        ("PROVISIONER_TLS_KEY_FILE", None),
        ("PORTAL_API_TOKEN", None),
        ("PORTAL_API_TOKEN_PREVIOUS", None),
        ("HTTP_ALLOWED_CIDRS", text(&security::IpAllowlist::DEFAULT)),
        ("HTTP_TRUSTED_PROXIES", None),
        (
            "HTTP_MAX_CONNECTIONS",
            text(&status_api::DEFAULT_MAX_CONNECTIONS),
        ),
        (
            "HTTP_READ_TIMEOUT",
            Some(format_duration(status_api::DEFAULT_HEADER_READ_TIMEOUT)),
        ),
        ("PROVISIONER_CONCURRENCY", text(&engine.concurrency)),
        (
            "CUSTOMER_PROVISION_RATE",
            text(&provisioner_core::DEFAULT_PROVISION_RATE),
        ),
        (
            "CUSTOMER_STATUS_RATE",
            text(&status_api::DEFAULT_STATUS_RATE),
        ),
        ("HTTP_IP_RATE", text(&status_api::DEFAULT_IP_RATE)),
        (
            "CUSTOMER_ORDER_RATE",
            text(&provisioner_core::order_intake::DEFAULT_ORDER_RATE),
        ),
        (
            "RECONCILE_INTERVAL",
            Some(format_duration(engine.reconcile_interval)),
        ),
        ("LOG_FORMAT", None),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", None),
        ("OTEL_SERVICE_NAME", Some(DEFAULT_SERVICE_NAME.to_owned())),
        ("ALLOW_INSECURE_HTTP", text(&false)),
    ]
});

/// `service.name` of exported spans when `OTEL_SERVICE_NAME` is unset.
pub(crate) const DEFAULT_SERVICE_NAME: &str = "provisioner";

/// A duration longer than zero.
fn positive_duration(text: &str) -> Result<Duration, String> {
    parse_duration(text).and_then(|d| {
        if d.is_zero() {
            Err("must be positive".to_owned())
        } else {
            Ok(d)
        }
    })
}

/// Whether `url` (`http://...`) names a loopback host: `localhost`, `127.0.0.0/8` or `::1`.
pub(crate) fn is_loopback_url(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else {
        return false;
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default()
    } else {
        host_port.split(':').next().unwrap_or_default()
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Where the raw values come from.
pub(crate) struct Sources {
    values: BTreeMap<String, String>,
    origin: BTreeMap<String, &'static str>,
    errors: Vec<String>,
}

impl Sources {
    /// The TOML file (if any), overlaid by the process environment.
    pub(crate) fn load(file: Option<&Path>) -> Self {
        Self::from_parts(file, std::env::vars())
    }

    /// Like [`Sources::load`] with an explicit environment (tests).
    pub(crate) fn from_parts(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Self {
        let mut s = Sources {
            values: BTreeMap::new(),
            origin: BTreeMap::new(),
            errors: Vec::new(),
        };
        if let Some(path) = file {
            match std::fs::read_to_string(path) {
                Err(e) => s.errors.push(format!("--config {}: {e}", path.display())),
                Ok(text) => match text.parse::<toml::Table>() {
                    Err(e) => s.errors.push(format!(
                        "--config {}: not valid TOML: {}",
                        path.display(),
                        e.message()
                    )),
                    Ok(table) => {
                        for (k, v) in table {
                            let value = match v {
                                toml::Value::String(s) => s,
                                toml::Value::Integer(i) => i.to_string(),
                                toml::Value::Boolean(b) => b.to_string(),
                                toml::Value::Float(f) => f.to_string(),
                                _ => {
                                    s.errors.push(format!(
                                        "--config {}: {k} must be a string, number or boolean",
                                        path.display()
                                    ));
                                    continue;
                                }
                            };
                            s.values.insert(k.clone(), value);
                            s.origin.insert(k, "file");
                        }
                    }
                },
            }
        }
        let known: Vec<String> = VARIABLES
            .iter()
            .flat_map(|(n, _)| [n.to_string(), format!("{n}_FILE")])
            .collect();
        for (k, v) in env {
            if known.contains(&k) {
                s.values.insert(k.clone(), v);
                s.origin.insert(k, "env");
            }
        }
        // Secrets from files.
        for name in SECRETS {
            let file_key = format!("{name}_FILE");
            if s.values.contains_key(*name) {
                continue;
            }
            if let Some(path) = s.values.get(&file_key).cloned() {
                match std::fs::read_to_string(&path) {
                    Ok(text) => {
                        let text = text.trim_end_matches(['\n', '\r']).to_owned();
                        s.values.insert((*name).to_owned(), text);
                        s.origin.insert((*name).to_owned(), "file");
                    }
                    Err(e) => s
                        .errors
                        .push(format!("{file_key}: cannot read {path}: {e}")),
                }
            }
        }
        s
    }

    fn raw(&self, name: &str) -> Option<&str> {
        self.values
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.trim().is_empty())
    }
}

/// How logs are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LogFormat {
    Pretty,
    Json,
}

/// The effective configuration.
pub(crate) struct Config {
    pub(crate) events_enabled: bool,
    pub(crate) channel: String,
    pub(crate) replay: sf_pubsub::ReplayStart,
    pub(crate) login_url: String,
    pub(crate) audience: Option<String>,
    pub(crate) client_id: Option<String>,
    pub(crate) username: Option<String>,
    pub(crate) private_key: Option<SecretString>,
    pub(crate) api_version: String,
    pub(crate) pubsub_endpoint: String,
    pub(crate) pubsub_ca_file: Option<PathBuf>,
    pub(crate) pubsub_batch: u32,
    pub(crate) statuses: provisioner_core::OrderStatuses,
    pub(crate) whmcs_api_url: Option<String>,
    pub(crate) whmcs_identifier: Option<SecretString>,
    pub(crate) whmcs_secret: Option<SecretString>,
    pub(crate) whmcs_access_key: Option<SecretString>,
    pub(crate) payment_method: String,
    pub(crate) order_ref_fields: Option<provisioner_core::RefFields>,
    pub(crate) send_email: bool,
    pub(crate) no_invoice: bool,
    /// `WHMCS_TIMEOUT`: the client timeout of every WHMCS call but AcceptOrder.
    pub(crate) whmcs_timeout: Duration,
    /// `WHMCS_ACCEPT_TIMEOUT`: the client timeout of AcceptOrder (the server module runs).
    pub(crate) whmcs_accept_timeout: Duration,
    /// `WHMCS_SETTLE`: the wait after a call's timeout before an unknown outcome may be
    /// repeated.
    pub(crate) whmcs_settle: Duration,
    /// `WHMCS_PAGE_SIZE`: `limitnum` of WHMCS list calls (the AddOrder lookup's walk).
    pub(crate) whmcs_page_size: u64,
    /// `DATABASE_URL` (a secret: a password may be in it).
    pub(crate) database_url: SecretString,
    pub(crate) job_lease: Duration,
    pub(crate) encryption_key: Option<SecretString>,
    pub(crate) key_rotation_days: u32,
    pub(crate) audit_retention_days: u32,
    /// `HTTP_TRUSTED_PROXIES`: peers whose `X-Forwarded-For` names the client.
    pub(crate) trusted_proxies: security::IpAllowlist,
    /// `HTTP_IP_RATE`: requests per client address on the status API.
    pub(crate) ip_rate: security::Rate,
    /// `HTTP_MAX_CONNECTIONS`: open connections to the status API at most.
    pub(crate) http_max_connections: usize,
    /// `HTTP_READ_TIMEOUT`: a request head must arrive within it; idle connections close.
    pub(crate) http_read_timeout: Duration,
    /// `AUDIT_WITNESS_INTERVAL`: how often the audit chain's head is published.
    pub(crate) audit_witness_interval: Duration,
    pub(crate) alert_webhook: Option<SecretString>,
    /// `SECURITY_ALERT_OUTBOX_MAX`: alerts kept for the webhook; past it the oldest go.
    pub(crate) alert_outbox_max: u64,
    /// `SECURITY_ALERT_MAX_BACKOFF`: the longest wait between two attempts of one alert.
    pub(crate) alert_max_backoff: Duration,
    pub(crate) http_addr: SocketAddr,
    /// `PROVISIONER_TLS_CERT_FILE` and `PROVISIONER_TLS_KEY_FILE`, read and parsed at start:
    /// the status API serves HTTPS with them (`None`: plain HTTP).
    pub(crate) tls: Option<status_api::TlsConfig>,
    pub(crate) portal_token: Option<SecretString>,
    /// `PORTAL_API_TOKEN_PREVIOUS`: still accepted while the portal switches tokens.
    pub(crate) portal_token_previous: Option<SecretString>,
    pub(crate) allowed_cidrs: security::IpAllowlist,
    pub(crate) concurrency: usize,
    pub(crate) provision_rate: security::Rate,
    pub(crate) status_rate: security::Rate,
    /// `CUSTOMER_ORDER_RATE`: orders per customer through `POST /v1/orders`.
    pub(crate) order_rate: security::Rate,
    /// `SF_PRICEBOOK_ID`: the price book of Orders placed through `POST /v1/orders`; unset,
    /// that route is off (404).
    pub(crate) pricebook_id: Option<String>,
    /// `SF_ORDER_STATUS_NEW`: Status of an Order placed through `POST /v1/orders`.
    pub(crate) new_order_status: String,
    pub(crate) reconcile_interval: Duration,
    pub(crate) log_format: Option<LogFormat>,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`: where spans are exported over OTLP/gRPC; unset, nothing
    /// is exported.
    pub(crate) otlp_endpoint: Option<String>,
    /// `OTEL_SERVICE_NAME`: the `service.name` resource attribute of exported spans.
    pub(crate) service_name: String,
    /// Effective values for `config check`: (name, shown value, origin).
    pub(crate) shown: Vec<(String, String, String)>,
}

/// Parses `500ms`, `30s`, `15m`, `2h`, `1d` (a bare number is seconds).
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 30s, 15m, 2h"))?;
    let secs = match unit.trim() {
        "ms" => return Ok(Duration::from_millis(n)),
        "" | "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        other => {
            return Err(format!(
                "unknown duration unit {other:?} (use ms, s, m, h or d)"
            ));
        }
    };
    Ok(Duration::from_secs(secs))
}

/// `d` as [`parse_duration`] reads it back, in the largest unit that divides it (`30s`, `15m`).
pub(crate) fn format_duration(d: Duration) -> String {
    if d.subsec_nanos() != 0 {
        return format!("{}ms", d.as_millis());
    }
    let secs = d.as_secs();
    for (unit, per) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if secs != 0 && secs.is_multiple_of(per) {
            return format!("{}{unit}", secs / per);
        }
    }
    format!("{secs}s")
}

fn parse_bool(text: &str) -> Result<bool, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("{text:?} is not true or false")),
    }
}

/// `WHMCS_ORDER_REF_FIELD_ID`: one custom field id for every product (`12`), or one per product
/// as `pid:fieldid` pairs separated by commas (`3:12,4:15`).
fn parse_ref_fields(text: &str) -> Result<provisioner_core::RefFields, String> {
    let id = |t: &str, what: &str| {
        t.trim()
            .parse::<u64>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("{:?} is not a {what} (a positive number)", t.trim()))
    };
    let text = text.trim();
    if !text.contains(':') && !text.contains(',') {
        return id(text, "custom field id").map(provisioner_core::RefFields::Every);
    }
    let mut fields = std::collections::BTreeMap::new();
    for entry in text.split(',') {
        let Some((pid, field)) = entry.split_once(':') else {
            return Err(format!(
                "{:?} is not a pid:fieldid pair (one id for every product, or pid:fieldid pairs separated by commas)",
                entry.trim()
            ));
        };
        let pid = id(pid, "product id")?;
        let field = id(field, "custom field id")?;
        if fields.insert(pid, field).is_some() {
            return Err(format!("product {pid} is listed twice"));
        }
    }
    Ok(provisioner_core::RefFields::PerProduct(fields))
}

struct Parser<'a> {
    src: &'a Sources,
    errors: Vec<String>,
}

/// `t` as a whole number from 1 to `max`, else the message a configuration error shows.
fn number_up_to<T>(t: &str, max: T) -> Result<T, String>
where
    T: std::str::FromStr + PartialOrd + From<u8> + std::fmt::Display,
{
    t.trim()
        .parse::<T>()
        .ok()
        .filter(|n| *n >= T::from(1) && *n <= max)
        .ok_or_else(|| format!("{t:?} must be a number from 1 to {max}"))
}

impl Parser<'_> {
    fn text(&self, name: &str) -> Option<String> {
        self.src.raw(name).map(str::to_owned).or_else(|| {
            VARIABLES
                .iter()
                .find(|(n, _)| *n == name)
                .and_then(|(_, d)| d.clone())
        })
    }

    fn parsed<T>(&mut self, name: &str, f: impl FnOnce(&str) -> Result<T, String>) -> Option<T> {
        let text = self.text(name)?;
        match f(&text) {
            Ok(v) => Some(v),
            Err(e) => {
                self.errors.push(format!("{name}: {e}"));
                None
            }
        }
    }

    fn secret(&self, name: &str) -> Option<SecretString> {
        self.src.raw(name).map(|v| SecretString::from(v.to_owned()))
    }
}

/// The status API's TLS configuration from `PROVISIONER_TLS_CERT_FILE` and
/// `PROVISIONER_TLS_KEY_FILE` (both or neither), read now; a problem is recorded in `p` by
/// variable name. The key file's content is a secret: kept in a [`secrecy::SecretSlice`], never
/// in a message.
fn tls_config(p: &mut Parser<'_>) -> Option<status_api::TlsConfig> {
    const CERT: &str = "PROVISIONER_TLS_CERT_FILE";
    const KEY: &str = "PROVISIONER_TLS_KEY_FILE";
    let (cert_path, key_path) = match (p.text(CERT), p.text(KEY)) {
        (None, None) => return None,
        (Some(cert), Some(key)) => (cert, key),
        (Some(_), None) => {
            p.errors.push(format!(
                "{KEY}: required when {CERT} is set (both or neither)"
            ));
            return None;
        }
        (None, Some(_)) => {
            p.errors.push(format!(
                "{CERT}: required when {KEY} is set (both or neither)"
            ));
            return None;
        }
    };
    let cert = std::fs::read(&cert_path)
        .map_err(|e| {
            p.errors
                .push(format!("{CERT}: cannot read {cert_path}: {e}"))
        })
        .ok();
    let key = std::fs::read(&key_path)
        .map(secrecy::SecretSlice::from)
        .map_err(|e| p.errors.push(format!("{KEY}: cannot read {key_path}: {e}")))
        .ok();
    let (cert, key) = (cert?, key?);
    match status_api::TlsConfig::from_pem(&cert, &key) {
        Ok(tls) => Some(tls),
        Err(status_api::Error::Tls { what, reason }) => {
            let name = match what {
                "certificate" => CERT.to_owned(),
                "private key" => KEY.to_owned(),
                _ => format!("{CERT}, {KEY}"),
            };
            p.errors.push(format!("{name}: {reason}"));
            None
        }
        Err(e) => {
            p.errors.push(format!("{CERT}, {KEY}: {e}"));
            None
        }
    }
}

/// `config check`'s view of every variable: (name, shown value, origin), secrets redacted.
/// Works whether or not the configuration parses.
pub(crate) fn shown(src: &Sources) -> Vec<(String, String, String)> {
    VARIABLES
        .iter()
        .map(|(name, default)| {
            let value = match src.raw(name).or(default.as_deref()) {
                None => "(unset)".to_owned(),
                // The URL helps an operator; only its password is a secret.
                Some(v) if *name == "DATABASE_URL" => redact_url_password(v),
                Some(_) if SECRETS.contains(name) => "[REDACTED]".to_owned(),
                Some(v) => v.to_owned(),
            };
            let origin = src.origin.get(*name).copied().unwrap_or("default");
            ((*name).to_owned(), value, origin.to_owned())
        })
        .collect()
}

/// The variables `run` requires that have no value at all, named as
/// [`Config::missing_for_run`] names them (for `config check` when parsing failed, so that
/// missing variables are reported next to malformed ones).
pub(crate) fn missing_required(src: &Sources) -> Vec<String> {
    [
        ("SF_CLIENT_ID", "SF_CLIENT_ID"),
        ("SF_USERNAME", "SF_USERNAME"),
        ("SF_PRIVATE_KEY", "SF_PRIVATE_KEY (or SF_PRIVATE_KEY_FILE)"),
        ("WHMCS_API_URL", "WHMCS_API_URL"),
        ("WHMCS_API_IDENTIFIER", "WHMCS_API_IDENTIFIER"),
        ("WHMCS_API_SECRET", "WHMCS_API_SECRET"),
        ("PORTAL_API_TOKEN", "PORTAL_API_TOKEN"),
        ("FIELD_ENCRYPTION_KEY", "FIELD_ENCRYPTION_KEY"),
    ]
    .into_iter()
    .filter(|(name, _)| src.raw(name).is_none())
    .map(|(_, shown)| format!("{shown}: required"))
    .collect()
}

impl Config {
    /// Parses every variable; `Err` lists every problem by variable name.
    pub(crate) fn parse(src: &Sources) -> Result<Config, Vec<String>> {
        let mut p = Parser {
            src,
            errors: src.errors.clone(),
        };
        // The fallbacks after a failed parse are never returned (that variable's error is),
        // they only keep the code total; they are the defaults, so nothing repeats a value.
        let engine = EngineConfig::default();
        let subscriber = SubscriberConfig::default();
        let events_enabled = p
            .parsed("SF_EVENTS_ENABLED", parse_bool)
            .unwrap_or(EVENTS_ENABLED);
        let replay = p
            .parsed("SF_EVENTS_REPLAY", |t| {
                t.parse::<sf_pubsub::ReplayStart>()
                    .map_err(|e| e.to_string())
            })
            .unwrap_or(subscriber.start);
        let pubsub_batch = p
            .parsed("SF_PUBSUB_BATCH", |t| number_up_to(t, 100_u32))
            .unwrap_or(subscriber.batch);
        let insecure_ok = p.parsed("ALLOW_INSECURE_HTTP", parse_bool).unwrap_or(false);
        // Cleartext only to this machine (a sandbox, a local proxy), unless allowed outright.
        let url = |t: &str| {
            if t.starts_with("https://")
                || (t.starts_with("http://") && (insecure_ok || is_loopback_url(t)))
            {
                Ok(t.trim_end_matches('/').to_owned())
            } else if t.starts_with("http://") {
                Err(format!(
                    "{t:?} is cleartext HTTP to another machine: use https:// (http:// only to \
                     a loopback address, or set ALLOW_INSECURE_HTTP=true)"
                ))
            } else {
                Err(format!(
                    "{t:?} must start with https:// (or http:// to a loopback address)"
                ))
            }
        };
        let login_url = p.parsed("SF_LOGIN_URL", url).unwrap_or_default();
        let audience = p.parsed("SF_AUDIENCE", url);
        let pubsub_endpoint = p.parsed("SF_PUBSUB_ENDPOINT", url).unwrap_or_default();
        let whmcs_api_url = p.parsed("WHMCS_API_URL", url);
        let order_ref_fields = p.parsed("WHMCS_ORDER_REF_FIELD_ID", parse_ref_fields);
        let send_email = p
            .parsed("WHMCS_SEND_EMAIL", parse_bool)
            .unwrap_or(engine.send_email);
        let no_invoice = p
            .parsed("WHMCS_NO_INVOICE", parse_bool)
            .unwrap_or(engine.no_invoice);
        let whmcs_timeout = p
            .parsed("WHMCS_TIMEOUT", parse_duration)
            .unwrap_or(whmcs_client::DEFAULT_READ_TIMEOUT);
        let whmcs_accept_timeout = p
            .parsed("WHMCS_ACCEPT_TIMEOUT", parse_duration)
            .unwrap_or(whmcs_client::DEFAULT_PROVISIONING_TIMEOUT);
        let whmcs_settle = p
            .parsed("WHMCS_SETTLE", parse_duration)
            .unwrap_or(engine.whmcs_settle);
        let whmcs_page_size = p
            .parsed("WHMCS_PAGE_SIZE", |t| {
                number_up_to(t, whmcs_client::MAX_PAGE_SIZE)
            })
            .unwrap_or(whmcs_client::DEFAULT_PAGE_SIZE);
        let database_url = p
            .parsed("DATABASE_URL", |t| {
                if t.starts_with("sqlite://")
                    || t.starts_with("postgres://")
                    || t.starts_with("postgresql://")
                {
                    Ok(SecretString::from(t.to_owned()))
                } else {
                    Err("must be sqlite://path or postgres://...".to_owned())
                }
            })
            .unwrap_or_else(|| SecretString::from(String::new()));
        let job_lease = p
            .parsed("JOB_LEASE", parse_duration)
            .unwrap_or(engine.lease);
        let days = |t: &str| {
            t.trim()
                .parse::<u32>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{t:?} must be a whole number of days, at least 1"))
        };
        let key_rotation_days = p
            .parsed("ENCRYPTION_KEY_ROTATION_DAYS", days)
            .unwrap_or(engine.key_rotation_days);
        let http_max_connections = p
            .parsed("HTTP_MAX_CONNECTIONS", |t| number_up_to(t, 1_000_000_usize))
            .unwrap_or(status_api::DEFAULT_MAX_CONNECTIONS);
        let http_read_timeout = p
            .parsed("HTTP_READ_TIMEOUT", positive_duration)
            .unwrap_or(status_api::DEFAULT_HEADER_READ_TIMEOUT);
        let audit_witness_interval = p
            .parsed("AUDIT_WITNESS_INTERVAL", positive_duration)
            .unwrap_or(AUDIT_WITNESS_INTERVAL);
        let alert_outbox_max = p
            .parsed("SECURITY_ALERT_OUTBOX_MAX", |t| {
                number_up_to(t, 10_000_000_u64)
            })
            .unwrap_or(provisioner_core::DEFAULT_ALERT_OUTBOX_MAX);
        let alert_max_backoff = p
            .parsed("SECURITY_ALERT_MAX_BACKOFF", positive_duration)
            .unwrap_or(security::WebhookConfig::default().max_backoff);
        let audit_retention_days = p
            .parsed("AUDIT_LOG_RETENTION_DAYS", days)
            .unwrap_or(audit::DEFAULT_RETENTION_DAYS);
        let encryption_key = p.secret("FIELD_ENCRYPTION_KEY");
        if let Some(key) = &encryption_key
            && let Err(e) = field_crypto::MasterKey::from_config(key.expose_secret())
        {
            p.errors.push(format!("FIELD_ENCRYPTION_KEY: {e}"));
        }
        let http_addr = p
            .parsed("PROVISIONER_HTTP_ADDR", |t| {
                t.trim()
                    .parse::<SocketAddr>()
                    .map_err(|_| format!("{t:?} is not host:port"))
            })
            .unwrap_or_else(|| SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0)));
        let tls = tls_config(&mut p);
        let allowed_cidrs = p
            .parsed("HTTP_ALLOWED_CIDRS", |t| {
                security::IpAllowlist::parse(t).map_err(|e| e.to_string())
            })
            .unwrap_or_else(security::IpAllowlist::deny_all);
        let concurrency = p
            .parsed("PROVISIONER_CONCURRENCY", |t| number_up_to(t, 1024_usize))
            .unwrap_or(engine.concurrency);
        let rate = |t: &str| security::Rate::parse(t).map_err(|e| e.to_string());
        let provision_rate = p.parsed("CUSTOMER_PROVISION_RATE", rate);
        let status_rate = p.parsed("CUSTOMER_STATUS_RATE", rate);
        let order_rate = p.parsed("CUSTOMER_ORDER_RATE", rate);
        let pricebook_id = p.text("SF_PRICEBOOK_ID").filter(|id| !id.trim().is_empty());
        if let Some(id) = &pricebook_id
            && sf_rest::OrderId::parse(id.trim()).is_err()
        {
            p.errors.push(
                "SF_PRICEBOOK_ID: must be a 15 or 18 character Salesforce id (01s...)".to_owned(),
            );
        }
        let trusted_proxies = p
            .parsed("HTTP_TRUSTED_PROXIES", |t| {
                security::IpAllowlist::parse(t).map_err(|e| e.to_string())
            })
            .unwrap_or_else(security::IpAllowlist::deny_all);
        let ip_rate = p
            .parsed("HTTP_IP_RATE", rate)
            .unwrap_or(status_api::DEFAULT_IP_RATE);
        let reconcile_interval = p
            .parsed("RECONCILE_INTERVAL", positive_duration)
            .unwrap_or(engine.reconcile_interval);
        let log_format = p.parsed("LOG_FORMAT", |t| match t.trim() {
            "json" => Ok(LogFormat::Json),
            "pretty" => Ok(LogFormat::Pretty),
            _ => Err(format!("{t:?} must be json or pretty")),
        });
        let otlp_endpoint = p
            .parsed("OTEL_EXPORTER_OTLP_ENDPOINT", |t| {
                let t = t.trim();
                if t.is_empty() {
                    Ok(None)
                } else if t.starts_with("http://") || t.starts_with("https://") {
                    Ok(Some(t.to_owned()))
                } else {
                    Err(format!("{t:?} must be an http:// or https:// URL"))
                }
            })
            .flatten();
        let service_name = p
            .text("OTEL_SERVICE_NAME")
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_owned());
        let provisioning = p.text("SF_ORDER_STATUS_PROVISIONING");
        let provisioning = match src.values.get("SF_ORDER_STATUS_PROVISIONING") {
            // Explicitly empty: skip that PATCH.
            Some(v) if v.trim().is_empty() => None,
            _ => provisioning,
        };
        let statuses = provisioner_core::OrderStatuses {
            approved: p.text("SF_ORDER_STATUS_APPROVED").unwrap_or_default(),
            provisioning,
            provisioned: p.text("SF_ORDER_STATUS_PROVISIONED").unwrap_or_default(),
            failed: p.text("SF_ORDER_STATUS_FAILED").unwrap_or_default(),
        };
        let pubsub_ca_file = p.text("SF_PUBSUB_CA_FILE").map(PathBuf::from);
        if let Some(path) = &pubsub_ca_file
            && !path.is_file()
        {
            p.errors.push(format!(
                "SF_PUBSUB_CA_FILE: {} is not a file",
                path.display()
            ));
        }
        let shown = shown(src);
        let alert_webhook = {
            let hook = p.secret("SECURITY_ALERT_WEBHOOK");
            // Checked like the other URLs, without ever repeating the (secret) value.
            if let Some(hook) = &hook {
                let hook = hook.expose_secret();
                if hook.starts_with("http://") && !insecure_ok && !is_loopback_url(hook) {
                    p.errors.push(
                        "SECURITY_ALERT_WEBHOOK: cleartext HTTP to another machine: use \
                     https:// (http:// only to a loopback address, or set \
                     ALLOW_INSECURE_HTTP=true)"
                            .to_owned(),
                    );
                } else if !hook.starts_with("http://") && !hook.starts_with("https://") {
                    p.errors
                        .push("SECURITY_ALERT_WEBHOOK: must start with https://".to_owned());
                }
            }
            hook
        };
        if !p.errors.is_empty() {
            return Err(p.errors);
        }
        let (Some(provision_rate), Some(status_rate), Some(order_rate)) =
            (provision_rate, status_rate, order_rate)
        else {
            return Err(vec!["rates missing".to_owned()]);
        };
        Ok(Config {
            events_enabled,
            channel: p.text("SF_PROVISION_EVENT_CHANNEL").unwrap_or_default(),
            replay,
            login_url,
            audience,
            client_id: p.text("SF_CLIENT_ID"),
            username: p.text("SF_USERNAME"),
            private_key: p.secret("SF_PRIVATE_KEY"),
            api_version: p.text("SF_API_VERSION").unwrap_or_default(),
            pubsub_endpoint,
            pubsub_ca_file,
            pubsub_batch,
            statuses,
            whmcs_api_url,
            whmcs_identifier: p.secret("WHMCS_API_IDENTIFIER"),
            whmcs_secret: p.secret("WHMCS_API_SECRET"),
            whmcs_access_key: p.secret("WHMCS_ACCESS_KEY"),
            payment_method: p.text("WHMCS_PAYMENT_METHOD").unwrap_or_default(),
            order_ref_fields,
            send_email,
            no_invoice,
            whmcs_timeout,
            whmcs_accept_timeout,
            whmcs_settle,
            whmcs_page_size,
            database_url,
            job_lease,
            encryption_key,
            key_rotation_days,
            audit_retention_days,
            audit_witness_interval,
            http_max_connections,
            http_read_timeout,
            ip_rate,
            trusted_proxies,
            alert_webhook,
            alert_outbox_max,
            alert_max_backoff,
            http_addr,
            tls,
            portal_token: p.secret("PORTAL_API_TOKEN"),
            portal_token_previous: p.secret("PORTAL_API_TOKEN_PREVIOUS"),
            allowed_cidrs,
            concurrency,
            provision_rate,
            status_rate,
            order_rate,
            pricebook_id: pricebook_id.map(|id| id.trim().to_owned()),
            new_order_status: p.text("SF_ORDER_STATUS_NEW").unwrap_or_default(),
            reconcile_interval,
            log_format,
            otlp_endpoint,
            service_name,
            shown,
        })
    }

    /// The variables `run` needs that are missing.
    pub(crate) fn missing_for_run(&self) -> Vec<String> {
        let mut missing = Vec::new();
        let mut need = |set: bool, name: &str| {
            if !set {
                missing.push(format!("{name}: required"));
            }
        };
        need(self.client_id.is_some(), "SF_CLIENT_ID");
        need(self.username.is_some(), "SF_USERNAME");
        need(
            self.private_key.is_some(),
            "SF_PRIVATE_KEY (or SF_PRIVATE_KEY_FILE)",
        );
        need(self.whmcs_api_url.is_some(), "WHMCS_API_URL");
        need(self.whmcs_identifier.is_some(), "WHMCS_API_IDENTIFIER");
        need(self.whmcs_secret.is_some(), "WHMCS_API_SECRET");
        need(self.portal_token.is_some(), "PORTAL_API_TOKEN");
        missing.extend(self.missing_for_store());
        missing
    }

    /// The variables a store-only command (audit, keys, dlq, migrate, backup) needs.
    pub(crate) fn missing_for_store(&self) -> Vec<String> {
        if self.encryption_key.is_none() {
            vec!["FIELD_ENCRYPTION_KEY: required".to_owned()]
        } else {
            Vec::new()
        }
    }

    /// The master key (validated in [`Config::parse`]).
    pub(crate) fn master_key(&self) -> anyhow::Result<field_crypto::MasterKey> {
        let key = self
            .encryption_key
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("FIELD_ENCRYPTION_KEY: required"))?;
        Ok(field_crypto::MasterKey::from_config(key.expose_secret())?)
    }

    /// The JWT bearer configuration.
    pub(crate) fn jwt_config(&self) -> anyhow::Result<sf_auth::JwtBearerConfig> {
        let (Some(client_id), Some(username), Some(key)) =
            (&self.client_id, &self.username, &self.private_key)
        else {
            anyhow::bail!("SF_CLIENT_ID, SF_USERNAME and SF_PRIVATE_KEY (or _FILE) are required");
        };
        let mut config = sf_auth::JwtBearerConfig::new(
            &self.login_url,
            client_id.clone(),
            username.clone(),
            key.clone(),
        );
        config.audience.clone_from(&self.audience);
        Ok(config)
    }

    /// The WHMCS client configuration.
    pub(crate) fn whmcs_config(&self) -> anyhow::Result<whmcs_client::WhmcsConfig> {
        let (Some(url), Some(id), Some(secret)) = (
            &self.whmcs_api_url,
            &self.whmcs_identifier,
            &self.whmcs_secret,
        ) else {
            anyhow::bail!("WHMCS_API_URL, WHMCS_API_IDENTIFIER and WHMCS_API_SECRET are required");
        };
        let mut config = whmcs_client::WhmcsConfig::new(url.clone(), id.clone(), secret.clone());
        config.access_key.clone_from(&self.whmcs_access_key);
        config.payment_method.clone_from(&self.payment_method);
        config.read_timeout = self.whmcs_timeout;
        config.provisioning_timeout = self.whmcs_accept_timeout;
        config.page_size = self.whmcs_page_size;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_apply_and_every_bad_value_is_named() {
        let src = Sources::from_parts(None, env(&[]));
        let c = Config::parse(&src).unwrap();
        assert!(c.events_enabled);
        assert_eq!(c.job_lease, Duration::from_secs(30));
        assert_eq!(c.reconcile_interval, Duration::from_secs(900));
        assert_eq!(c.statuses.provisioning.as_deref(), Some("Provisioning"));
        assert!(
            c.missing_for_run()
                .iter()
                .any(|m| m.starts_with("SF_CLIENT_ID"))
        );

        let src = Sources::from_parts(
            None,
            env(&[
                ("SF_PUBSUB_BATCH", "500"),
                ("JOB_LEASE", "soon"),
                ("CUSTOMER_PROVISION_RATE", "30/fortnight"),
                ("HTTP_ALLOWED_CIDRS", "10.0.0.0/33"),
                ("FIELD_ENCRYPTION_KEY", "tiny-canary"),
                ("SF_LOGIN_URL", "login.salesforce.com"),
                ("WHMCS_SEND_EMAIL", "maybe"),
            ]),
        );
        let errors = Config::parse(&src).err().unwrap();
        for name in [
            "SF_PUBSUB_BATCH",
            "JOB_LEASE",
            "CUSTOMER_PROVISION_RATE",
            "HTTP_ALLOWED_CIDRS",
            "FIELD_ENCRYPTION_KEY",
            "SF_LOGIN_URL",
            "WHMCS_SEND_EMAIL",
        ] {
            assert!(
                errors.iter().any(|e| e.starts_with(name)),
                "{name}: {errors:?}"
            );
        }
        assert!(
            !errors.iter().any(|e| e.contains("tiny-canary")),
            "no secret in errors"
        );
    }

    #[test]
    fn env_wins_over_the_file_and_secrets_come_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.toml");
        std::fs::write(
            &file,
            "SF_PUBSUB_BATCH = 10\nWHMCS_PAYMENT_METHOD = \"paypal\"\n",
        )
        .unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "s3cr3t-value\n").unwrap();
        let src = Sources::from_parts(
            Some(&file),
            env(&[
                ("SF_PUBSUB_BATCH", "20"),
                ("WHMCS_API_SECRET_FILE", secret.to_str().unwrap()),
                ("SF_ORDER_STATUS_PROVISIONING", ""),
            ]),
        );
        let c = Config::parse(&src).unwrap();
        assert_eq!(c.pubsub_batch, 20);
        assert_eq!(c.payment_method, "paypal");
        assert_eq!(c.whmcs_secret.unwrap().expose_secret(), "s3cr3t-value");
        assert_eq!(c.statuses.provisioning, None);
        let shown: Vec<_> = c.shown.iter().map(|(n, v, _)| format!("{n}={v}")).collect();
        assert!(shown.contains(&"WHMCS_API_SECRET=[REDACTED]".to_owned()));
        assert!(!shown.iter().any(|l| l.contains("s3cr3t")));
    }

    #[test]
    fn the_check_view_needs_no_valid_configuration() {
        let src = Sources::from_parts(
            None,
            env(&[
                ("JOB_LEASE", "soon"),
                ("WHMCS_API_SECRET", "s3cr3t-value"),
                ("SF_CLIENT_ID", "3MVG9"),
            ]),
        );
        assert!(Config::parse(&src).is_err());
        let shown: Vec<_> = shown(&src)
            .iter()
            .map(|(n, v, o)| format!("{n}={v} {o}"))
            .collect();
        assert_eq!(shown.len(), VARIABLES.len());
        assert!(shown.contains(&"WHMCS_API_SECRET=[REDACTED] env".to_owned()));
        assert!(shown.contains(&"JOB_LEASE=soon env".to_owned()));
        assert!(shown.contains(&"SF_PUBSUB_BATCH=100 default".to_owned()));
        let missing = missing_required(&src);
        assert!(missing.contains(&"SF_USERNAME: required".to_owned()));
        assert!(missing.contains(&"FIELD_ENCRYPTION_KEY: required".to_owned()));
        assert!(!missing.iter().any(|m| m.starts_with("SF_CLIENT_ID")));
        assert!(!missing.iter().any(|m| m.starts_with("WHMCS_API_SECRET")));
    }

    /// The README's Configuration table is the contract: the defaults the libraries hold must
    /// render to it.
    #[test]
    fn defaults_render_the_design_table() {
        let expected: &[(&str, Option<&str>)] = &[
            ("SF_EVENTS_ENABLED", Some("true")),
            (
                "SF_PROVISION_EVENT_CHANNEL",
                Some("/event/OrderProvisionRequested__e"),
            ),
            ("SF_EVENTS_REPLAY", Some("LATEST")),
            ("SF_LOGIN_URL", Some("https://login.salesforce.com")),
            ("SF_AUDIENCE", None),
            ("SF_CLIENT_ID", None),
            ("SF_USERNAME", None),
            ("SF_PRIVATE_KEY", None),
            ("SF_API_VERSION", Some("v62.0")),
            (
                "SF_PUBSUB_ENDPOINT",
                Some("https://api.pubsub.salesforce.com:7443"),
            ),
            ("SF_PUBSUB_CA_FILE", None),
            ("SF_PUBSUB_BATCH", Some("100")),
            ("SF_ORDER_STATUS_APPROVED", Some("Approved")),
            ("SF_ORDER_STATUS_PROVISIONING", Some("Provisioning")),
            ("SF_ORDER_STATUS_PROVISIONED", Some("Activated")),
            ("SF_ORDER_STATUS_FAILED", Some("Provisioning Failed")),
            ("SF_ORDER_STATUS_NEW", Some("Pending Review")),
            ("SF_PRICEBOOK_ID", None),
            ("WHMCS_API_URL", None),
            ("WHMCS_API_IDENTIFIER", None),
            ("WHMCS_API_SECRET", None),
            ("WHMCS_ACCESS_KEY", None),
            ("WHMCS_PAYMENT_METHOD", Some("banktransfer")),
            ("WHMCS_ORDER_REF_FIELD_ID", None),
            ("WHMCS_SEND_EMAIL", Some("true")),
            ("WHMCS_NO_INVOICE", Some("false")),
            ("WHMCS_TIMEOUT", Some("30s")),
            ("WHMCS_ACCEPT_TIMEOUT", Some("10m")),
            ("WHMCS_SETTLE", Some("30s")),
            ("WHMCS_PAGE_SIZE", Some("100")),
            ("DATABASE_URL", Some("sqlite://provisioner.db")),
            ("JOB_LEASE", Some("30s")),
            ("FIELD_ENCRYPTION_KEY", None),
            ("ENCRYPTION_KEY_ROTATION_DAYS", Some("90")),
            ("AUDIT_LOG_RETENTION_DAYS", Some("2555")),
            ("AUDIT_WITNESS_INTERVAL", Some("1h")),
            ("SECURITY_ALERT_WEBHOOK", None),
            ("SECURITY_ALERT_OUTBOX_MAX", Some("10000")),
            ("SECURITY_ALERT_MAX_BACKOFF", Some("1m")),
            ("PROVISIONER_HTTP_ADDR", Some("127.0.0.1:8080")),
            ("PROVISIONER_TLS_CERT_FILE", None),
            ("PROVISIONER_TLS_KEY_FILE", None),
            ("PORTAL_API_TOKEN", None),
            ("PORTAL_API_TOKEN_PREVIOUS", None),
            ("HTTP_ALLOWED_CIDRS", Some("127.0.0.0/8,::1/128")),
            ("HTTP_TRUSTED_PROXIES", None),
            ("HTTP_MAX_CONNECTIONS", Some("1024")),
            ("HTTP_READ_TIMEOUT", Some("10s")),
            ("PROVISIONER_CONCURRENCY", Some("16")),
            ("CUSTOMER_PROVISION_RATE", Some("30/hour")),
            ("CUSTOMER_STATUS_RATE", Some("60/minute")),
            ("HTTP_IP_RATE", Some("600/minute")),
            ("CUSTOMER_ORDER_RATE", Some("10/hour")),
            ("RECONCILE_INTERVAL", Some("15m")),
            ("LOG_FORMAT", None),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", None),
            ("OTEL_SERVICE_NAME", Some("provisioner")),
            ("ALLOW_INSECURE_HTTP", Some("false")),
        ];
        let rendered: Vec<(&str, Option<&str>)> = VARIABLES
            .iter()
            .map(|(name, default)| (*name, default.as_deref()))
            .collect();
        assert_eq!(rendered, expected);
        // The engine gets what the table says.
        let c = Config::parse(&Sources::from_parts(None, env(&[]))).unwrap();
        let engine = EngineConfig::default();
        assert_eq!(c.statuses, engine.statuses);
        assert_eq!(c.channel, engine.topic);
        assert_eq!(c.concurrency, engine.concurrency);
        assert_eq!(c.reconcile_interval, engine.reconcile_interval);
        assert_eq!(c.provision_rate, provisioner_core::DEFAULT_PROVISION_RATE);
    }

    #[test]
    fn ref_fields_are_one_id_or_pid_field_pairs() {
        use provisioner_core::RefFields;
        assert_eq!(parse_ref_fields(" 12 "), Ok(RefFields::Every(12)));
        assert_eq!(
            parse_ref_fields("3:12, 4:15"),
            Ok(RefFields::PerProduct(
                [(3, 12), (4, 15)].into_iter().collect()
            ))
        );
        assert_eq!(
            parse_ref_fields("3:12").map(|r| r.to_string()).as_deref(),
            Ok("3:12")
        );
        for (bad, says) in [
            ("0", r#""0" is not a custom field id"#),
            ("x", r#""x" is not a custom field id"#),
            ("3:12,", r#""" is not a pid:fieldid pair"#),
            ("3:12,15", r#""15" is not a pid:fieldid pair"#),
            ("3:x", r#""x" is not a custom field id"#),
            ("0:12", r#""0" is not a product id"#),
            ("3:12,3:13", "product 3 is listed twice"),
            ("3:12:1", r#""12:1" is not a custom field id"#),
        ] {
            let e = parse_ref_fields(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_duration("45").unwrap(), Duration::from_secs(45));
        assert!(parse_duration("1w").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn durations_format_as_they_parse() {
        for text in ["500ms", "30s", "90s", "15m", "2h", "1d", "0s"] {
            assert_eq!(format_duration(parse_duration(text).unwrap()), text);
        }
    }

    #[test]
    fn cleartext_http_only_to_loopback_unless_allowed() {
        for (url, loopback) in [
            ("http://127.0.0.1:8080/api.php", true),
            ("http://127.9.9.9", true),
            ("http://localhost:7443", true),
            ("http://[::1]:7443", true),
            ("http://user:pw@127.0.0.1/x", true),
            ("http://10.0.0.5/includes/api.php", false),
            ("http://whmcs.example.com/includes/api.php", false),
            ("http://127.0.0.1.evil.example/", false),
            ("http://[::2]/", false),
        ] {
            assert_eq!(is_loopback_url(url), loopback, "{url}");
        }
        let remote = [
            ("WHMCS_API_URL", "http://whmcs.example.com/includes/api.php"),
            ("SF_LOGIN_URL", "http://login.example.com"),
            ("SF_PUBSUB_ENDPOINT", "http://pubsub.example.com:7443"),
            (
                "SECURITY_ALERT_WEBHOOK",
                "http://hooks.example.com/x?key=hook-canary",
            ),
        ];
        let Err(errors) = Config::parse(&Sources::from_parts(None, env(&remote))) else {
            panic!("cleartext to other machines is refused");
        };
        for (name, _) in remote {
            assert!(
                errors
                    .iter()
                    .any(|e| e.starts_with(name) && e.contains("ALLOW_INSECURE_HTTP")),
                "{name}: {errors:?}"
            );
        }
        assert!(
            errors.iter().all(|e| !e.contains("hook-canary")),
            "{errors:?}"
        );
        let mut allowed = remote.to_vec();
        allowed.push(("ALLOW_INSECURE_HTTP", "true"));
        assert!(Config::parse(&Sources::from_parts(None, env(&allowed))).is_ok());
    }

    #[test]
    fn only_the_database_password_is_redacted() {
        for (url, shown) in [
            (
                "postgres://app:s3cr3t@db.internal:5432/prov?sslmode=require",
                "postgres://app:[REDACTED]@db.internal:5432/prov?sslmode=require",
            ),
            (
                "postgresql://app:p@ss@db/prov",
                "postgresql://app:[REDACTED]@db/prov",
            ),
            ("postgres://app@db/prov", "postgres://app@db/prov"),
            ("sqlite://provisioner.db", "sqlite://provisioner.db"),
            ("sqlite:///var/lib/p@x/db", "sqlite:///var/lib/p@x/db"),
        ] {
            assert_eq!(redact_url_password(url), shown);
        }
    }

    #[test]
    fn whmcs_page_size_reaches_the_whmcs_client_within_its_bounds() {
        let base = [
            (
                "WHMCS_API_URL",
                "https://whmcs.example.com/includes/api.php",
            ),
            ("WHMCS_API_IDENTIFIER", "id"),
            ("WHMCS_API_SECRET", "secret"),
        ];
        let page = |value: Option<&str>| {
            let mut set = base.to_vec();
            set.extend(value.map(|v| ("WHMCS_PAGE_SIZE", v)));
            Config::parse(&Sources::from_parts(None, env(&set)))
                .map(|c| c.whmcs_config().unwrap().page_size)
        };
        assert_eq!(page(None).unwrap(), 100);
        assert_eq!(page(Some("25")).unwrap(), 25);
        assert_eq!(page(Some(" 500 ")).unwrap(), 500);
        for bad in ["0", "501", "-1", "many"] {
            let Err(errors) = page(Some(bad)) else {
                panic!("WHMCS_PAGE_SIZE={bad:?} is refused")
            };
            assert!(
                errors
                    .iter()
                    .any(|e| e.starts_with("WHMCS_PAGE_SIZE") && e.contains("from 1 to 500")),
                "{bad:?}: {errors:?}"
            );
        }
    }

    #[test]
    fn whmcs_timeouts_reach_the_whmcs_client() {
        let base = [
            (
                "WHMCS_API_URL",
                "https://whmcs.example.com/includes/api.php",
            ),
            ("WHMCS_API_IDENTIFIER", "id"),
            ("WHMCS_API_SECRET", "secret"),
        ];
        let c = Config::parse(&Sources::from_parts(None, env(&base))).unwrap();
        let w = c.whmcs_config().unwrap();
        assert_eq!(
            (w.read_timeout, w.provisioning_timeout),
            (Duration::from_secs(30), Duration::from_secs(600))
        );
        let mut set = base.to_vec();
        set.extend([
            ("WHMCS_TIMEOUT", "3s"),
            ("WHMCS_ACCEPT_TIMEOUT", "90s"),
            ("WHMCS_SETTLE", "4s"),
        ]);
        let c = Config::parse(&Sources::from_parts(None, env(&set))).unwrap();
        let w = c.whmcs_config().unwrap();
        assert_eq!(
            (w.read_timeout, w.provisioning_timeout),
            (Duration::from_secs(3), Duration::from_secs(90))
        );
        // The engine records the same timeouts with its intents, and waits the settle time.
        let e = crate::app::engine_config(&c);
        assert_eq!(
            (e.whmcs_timeout, e.whmcs_accept_timeout, e.whmcs_settle),
            (
                Duration::from_secs(3),
                Duration::from_secs(90),
                Duration::from_secs(4)
            )
        );
        let Err(bad) = Config::parse(&Sources::from_parts(
            None,
            env(&[("WHMCS_TIMEOUT", "soon")]),
        )) else {
            panic!("a malformed WHMCS_TIMEOUT is refused")
        };
        assert!(
            bad.iter().any(|e| e.starts_with("WHMCS_TIMEOUT")),
            "{bad:?}"
        );
    }

    #[test]
    fn otlp_variables() {
        let unset = Config::parse(&Sources::from_parts(None, env(&[]))).unwrap();
        assert_eq!(unset.otlp_endpoint, None);
        assert_eq!(unset.service_name, "provisioner");
        let set = Config::parse(&Sources::from_parts(
            None,
            env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", " http://collector:4317 "),
                ("OTEL_SERVICE_NAME", "provisioner-eu"),
            ]),
        ))
        .unwrap();
        assert_eq!(set.otlp_endpoint.as_deref(), Some("http://collector:4317"));
        assert_eq!(set.service_name, "provisioner-eu");
        let empty = Config::parse(&Sources::from_parts(
            None,
            env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "")]),
        ))
        .unwrap();
        assert_eq!(empty.otlp_endpoint, None);
        let Err(bad) = Config::parse(&Sources::from_parts(
            None,
            env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317")]),
        )) else {
            panic!("a URL without a scheme is refused");
        };
        assert!(
            bad.iter()
                .any(|e| e.starts_with("OTEL_EXPORTER_OTLP_ENDPOINT")),
            "{bad:?}"
        );
    }
}
