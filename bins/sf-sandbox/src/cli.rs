//! Command line (every flag can also come from an `SF_SANDBOX_*` environment variable).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Runs loopback emulators of Salesforce (OAuth JWT bearer, REST, Pub/Sub gRPC) and WHMCS,
/// seeds an org, and prints the environment a provisioner needs to talk to them.
///
/// The environment goes to stdout as `KEY=value` lines ending with `# ready`, and to
/// `--state-file` if given (load it with `set -a; . FILE; set +a`); status goes to stderr.
/// Runs until SIGINT or SIGTERM, then exits 0.
///
/// To re-approve an Order and publish its event again while a provisioner runs:
/// `curl -X POST "$SF_LOGIN_URL/sandbox/orders/<order id>" -d '{"status": "Approved",
/// "publish": true}'` (both fields optional; `GET` on that path shows the Order).
/// `GET $SF_LOGIN_URL/sandbox/patches` lists the Order PATCHes with the user who sent each
/// (kept only with `--record-requests`). `GET $SF_LOGIN_URL/sandbox/stats` counts the Orders a
/// PATCH moved to `Activated` (`?latencies=true` adds p50/p99/max of publish-to-activation,
/// ms); `GET .../sandbox/stats` on the WHMCS server counts orders and duplicates (more than
/// one WHMCS order carrying one Salesforce Order Id).
///
/// The WHMCS server has admin routes beside its API (`$WHMCS_API_URL` without
/// `/includes/api.php`; no credentials): `POST /sandbox/faults` with
/// `{"action": "AddOrder", "fault": "hold", "ms": 8000, "times": 1}` arms a fault on a
/// running sandbox (`fault`: `hold` = commit after `ms` even if the client gave up, `latency`
/// (`ms`), `html500`, `commit_then_drop`; without `times`: every call), `DELETE
/// /sandbox/faults` removes them all; `GET /sandbox/orders` shows the WHMCS orders (status,
/// AcceptOrder calls committed, module creates and custom fields per service);
/// `GET /sandbox/requests` the calls received with the credential identifier each was sent
/// with (kept only with `--record-requests`).
///
/// Several callers (provisioner instances) can be told apart: give each its own Salesforce
/// user (`--extra-username`) and WHMCS credential (`--whmcs-extra-credential`).
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
pub(crate) struct Cli {
    /// Port of the Salesforce login (OAuth token) endpoint; 0 = ephemeral. A fixed port is
    /// forwarded to the sandbox's own ephemeral port, which stays the REST instance URL.
    #[arg(long, env = "SF_SANDBOX_SF_PORT", default_value_t = 0)]
    pub(crate) sf_port: u16,
    /// Port of the Pub/Sub gRPC endpoint; 0 = ephemeral (a fixed port is forwarded).
    #[arg(long, env = "SF_SANDBOX_PUBSUB_PORT", default_value_t = 0)]
    pub(crate) pubsub_port: u16,
    /// Port of the WHMCS API; 0 = ephemeral (a fixed port is forwarded).
    #[arg(long, env = "SF_SANDBOX_WHMCS_PORT", default_value_t = 0)]
    pub(crate) whmcs_port: u16,

    /// Customers to seed: an Account with `Customer_Number__c` and an Active WHMCS client each.
    #[arg(long, env = "SF_SANDBOX_CUSTOMERS", default_value_t = 0)]
    pub(crate) customers: u32,
    /// Orders per customer, each Approved with one OrderItem.
    #[arg(long, env = "SF_SANDBOX_ORDERS_PER_CUSTOMER", default_value_t = 1)]
    pub(crate) orders_per_customer: u32,
    /// `Quantity` of each seeded OrderItem.
    #[arg(long, env = "SF_SANDBOX_QUANTITY", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub(crate) quantity: u32,
    /// `Billing_Cycle__c` of each seeded OrderItem.
    #[arg(long, env = "SF_SANDBOX_BILLING_CYCLE", default_value = "monthly")]
    pub(crate) billing_cycle: String,
    /// `Config_Options__c` of each seeded OrderItem: a JSON object `{"<option id>": value}`;
    /// the WHMCS product gets a text option of each id.
    #[arg(long, env = "SF_SANDBOX_ITEM_CONFIG_OPTIONS", value_parser = parse_config_options)]
    pub(crate) item_config_options: Option<ConfigOptions>,
    /// The Order `Status` the seeded Orders get (`SF_ORDER_STATUS_APPROVED`).
    #[arg(long, env = "SF_SANDBOX_APPROVED_STATUS", default_value = "Approved")]
    pub(crate) approved_status: String,
    /// Id of the WHMCS product custom field holding the Salesforce Order Id.
    #[arg(long, env = "SF_SANDBOX_ORDER_REF_FIELD_ID", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) order_ref_field_id: u64,
    /// WHMCS products in the catalogue. With more than one, product k gets the ref field id
    /// k*10+1 (custom fields are rows per product; `--order-ref-field-id` is then unused),
    /// Orders order them in turn, and the printed `WHMCS_ORDER_REF_FIELD_ID` lists
    /// `pid:fieldid` pairs.
    #[arg(long, env = "SF_SANDBOX_PRODUCTS", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub(crate) products: u32,
    /// Publish one `OrderProvisionRequested__e` per seeded Order.
    #[arg(long, env = "SF_SANDBOX_PUBLISH")]
    pub(crate) publish: bool,
    /// With `--publish`: publish the events paced at this many per second instead of all at
    /// once before `# ready`, starting when the first client subscribes on the Pub/Sub endpoint
    /// (so a provisioner started after the announcement sees a steady stream, not a backlog).
    /// `GET $SF_LOGIN_URL/sandbox/stats?latencies=true` then gives the time from each event's
    /// publish to its Order's `Status = Activated` PATCH (p50, p99, max, in ms).
    #[arg(long, env = "SF_SANDBOX_PUBLISH_RATE", requires = "publish",
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub(crate) publish_rate: Option<u32>,
    /// The platform event channel (Pub/Sub topic).
    #[arg(long, env = "SF_SANDBOX_CHANNEL", default_value = sf_pubsub::DEFAULT_TOPIC)]
    pub(crate) channel: String,

    /// Probability (0..=1) of a fault on each Salesforce REST query/PATCH/composite create
    /// (503; the composite create also "commit, then drop the connection") and WHMCS call
    /// (HTML 500; AddOrder/AcceptOrder also "commit, then drop the connection"); Pub/Sub
    /// streams end every round(1/rate) events.
    #[arg(long, env = "SF_SANDBOX_FAULT_RATE", default_value_t = 0.0, value_parser = parse_rate)]
    pub(crate) fault_rate: f64,
    /// Seed of the fault dice, so a run repeats.
    #[arg(long, env = "SF_SANDBOX_FAULT_SEED", default_value_t = 1)]
    pub(crate) fault_seed: u64,
    /// End every Pub/Sub stream after this many events (0 = never); overrides the value
    /// derived from `--fault-rate`.
    #[arg(long, env = "SF_SANDBOX_PUBSUB_END_STREAM_EVERY")]
    pub(crate) pubsub_end_stream_every: Option<u64>,

    /// How long an issued access token works, e.g. `2h`, `15m`, `90s`, `500ms`.
    #[arg(long, env = "SF_SANDBOX_TOKEN_LIFETIME", default_value = "2h", value_parser = parse_duration)]
    pub(crate) token_lifetime: Duration,
    /// The connected app's consumer key (default: the sandbox's).
    #[arg(long, env = "SF_SANDBOX_CLIENT_ID")]
    pub(crate) client_id: Option<String>,
    /// The pre-authorised integration username (default: the sandbox's).
    #[arg(long, env = "SF_SANDBOX_USERNAME")]
    pub(crate) username: Option<String>,
    /// WHMCS API credential identifier (default: the sandbox's).
    #[arg(long, env = "SF_SANDBOX_WHMCS_IDENTIFIER")]
    pub(crate) whmcs_identifier: Option<String>,
    /// WHMCS API credential secret (default: the sandbox's). A test-only value: it is printed.
    #[arg(long, env = "SF_SANDBOX_WHMCS_SECRET", hide_env_values = true)]
    pub(crate) whmcs_secret: Option<String>,

    /// More pre-authorised Salesforce usernames besides `--username` (repeat the flag, or
    /// comma-separate them in the environment variable): one per provisioner instance, so
    /// that `GET /sandbox/patches` tells who wrote what. Only the main one is printed.
    #[arg(
        long = "extra-username",
        env = "SF_SANDBOX_EXTRA_USERNAMES",
        value_delimiter = ','
    )]
    pub(crate) extra_usernames: Vec<String>,
    /// More WHMCS API credentials, `IDENTIFIER:SECRET` (repeat the flag, or comma-separate them
    /// in the environment variable): one per provisioner instance, so that
    /// `GET /sandbox/requests` tells who sent what. Only the main one is printed.
    #[arg(long = "whmcs-extra-credential", env = "SF_SANDBOX_WHMCS_EXTRA_CREDENTIALS",
          value_delimiter = ',', value_parser = parse_credential, hide_env_values = true)]
    pub(crate) whmcs_extra_credentials: Vec<(String, String)>,
    /// Hold WHMCS AddOrder calls this long, then commit them even if the client gave up:
    /// `DUR` (every call) or `DURxN` (the next N calls), e.g. `5s` or `5sx1`.
    #[arg(long, env = "SF_SANDBOX_WHMCS_HOLD_ADD_ORDER", value_parser = parse_hold)]
    pub(crate) whmcs_hold_add_order: Option<Hold>,
    /// Hold WHMCS AcceptOrder calls this long (the server module running), then commit them
    /// even if the client gave up: `DUR` or `DURxN`, as for `--whmcs-hold-add-order`.
    #[arg(long, env = "SF_SANDBOX_WHMCS_HOLD_ACCEPT_ORDER", value_parser = parse_hold)]
    pub(crate) whmcs_hold_accept_order: Option<Hold>,
    /// Keep the WHMCS request log and the Salesforce PATCH log (the most recent 100,000
    /// entries each) for `GET /sandbox/requests` and `GET /sandbox/patches`; off by default,
    /// so a long-running sandbox keeps only the org in memory.
    #[arg(long, env = "SF_SANDBOX_RECORD_REQUESTS")]
    pub(crate) record_requests: bool,

    /// Trust this RSA private key (PKCS#8 or PKCS#1 PEM; its public key is derived) instead of
    /// generating a fresh 2048-bit key pair at start. `SF_PRIVATE_KEY_FILE` then names this
    /// file, which is left in place on exit; a generated key goes to a private temporary
    /// file, removed on exit.
    #[arg(long, env = "SF_SANDBOX_PRIVATE_KEY_FILE")]
    pub(crate) private_key_file: Option<PathBuf>,

    /// Also write the environment lines to this file (replaced atomically, removed on exit).
    #[arg(long, env = "SF_SANDBOX_STATE_FILE")]
    pub(crate) state_file: Option<PathBuf>,
}

/// A WHMCS hold: how long, and for how many calls (`None`: every call).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hold {
    /// How long each call is held before it commits.
    pub(crate) delay: Duration,
    /// How many calls are held.
    pub(crate) times: Option<u32>,
}

/// `DUR` or `DURxN` (N at least 1).
fn parse_hold(text: &str) -> Result<Hold, String> {
    let text = text.trim();
    let (duration, times) = match text.rsplit_once('x') {
        Some((duration, n)) => {
            let n: u32 = n
                .parse()
                .map_err(|_| format!("{text:?}: expected DUR or DURxN, e.g. 5s or 5sx1"))?;
            if n == 0 {
                return Err(format!("{text:?}: N must be at least 1"));
            }
            (duration, Some(n))
        }
        None => (text, None),
    };
    Ok(Hold {
        delay: parse_duration(duration)?,
        times,
    })
}

/// `IDENTIFIER:SECRET`, both non-empty.
fn parse_credential(text: &str) -> Result<(String, String), String> {
    match text.split_once(':') {
        Some((identifier, secret)) if !identifier.is_empty() && !secret.is_empty() => {
            Ok((identifier.to_owned(), secret.to_owned()))
        }
        _ => Err("expected IDENTIFIER:SECRET".to_owned()),
    }
}

pub(crate) use sandbox::seed::ConfigOptions;

fn parse_config_options(text: &str) -> Result<ConfigOptions, String> {
    let object: BTreeMap<String, serde_json::Value> =
        serde_json::from_str(text).map_err(|e| format!("not a JSON object: {e}"))?;
    let ids = object
        .keys()
        .map(|k| {
            k.parse::<u64>()
                .map_err(|_| format!("option id {k:?} is not a number"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let json = serde_json::to_string(&object).map_err(|e| e.to_string())?;
    Ok(ConfigOptions { ids, json })
}

fn parse_rate(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(rate) if (0.0..=1.0).contains(&rate) => Ok(rate),
        Ok(_) => Err("must be between 0 and 1".to_owned()),
        Err(e) => Err(e.to_string()),
    }
}

/// `500ms`, `90s`, `15m`, `2h`, `1d`, or a bare number of seconds.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 90s, 15m or 2h"))?;
    let seconds = |factor: u64| {
        n.checked_mul(factor)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("{text:?} is too long"))
    };
    let duration = match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "" | "s" => seconds(1),
        "m" => seconds(60),
        "h" => seconds(60 * 60),
        "d" => seconds(24 * 60 * 60),
        other => Err(format!("unknown unit {other:?} (use ms, s, m, h or d)")),
    }?;
    if duration.is_zero() {
        return Err("must be longer than zero".to_owned());
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        let cases = [
            ("500ms", Some(Duration::from_millis(500))),
            ("90", Some(Duration::from_secs(90))),
            ("90s", Some(Duration::from_secs(90))),
            ("15m", Some(Duration::from_secs(900))),
            ("2h", Some(Duration::from_secs(7200))),
            ("1d", Some(Duration::from_secs(86_400))),
            ("0s", None),
            ("h", None),
            ("5w", None),
            ("-5s", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_duration(text).ok(), want, "{text}");
        }
    }

    #[test]
    fn holds_take_a_duration_and_an_optional_count() {
        let hold = |secs, times| {
            Some(Hold {
                delay: Duration::from_secs(secs),
                times,
            })
        };
        let cases = [
            ("5s", hold(5, None)),
            ("5sx1", hold(5, Some(1))),
            ("2mx3", hold(120, Some(3))),
            ("5sx0", None),
            ("5sx", None),
            ("x2", None),
            ("0sx1", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_hold(text).ok(), want, "{text}");
        }
        assert_eq!(
            parse_hold("1500msx2").unwrap().delay,
            Duration::from_millis(1500)
        );
    }

    #[test]
    fn credentials_need_both_halves() {
        assert_eq!(
            parse_credential("id-b:se:cret"),
            Ok(("id-b".to_owned(), "se:cret".to_owned()))
        );
        assert!(parse_credential("id-b").is_err());
        assert!(parse_credential(":s").is_err());
        assert!(parse_credential("i:").is_err());
    }

    #[test]
    fn rates_must_be_probabilities() {
        assert_eq!(parse_rate("0.1"), Ok(0.1));
        assert_eq!(parse_rate("1"), Ok(1.0));
        assert!(parse_rate("1.5").is_err());
        assert!(parse_rate("-0.1").is_err());
        assert!(parse_rate("often").is_err());
    }

    #[test]
    fn config_options_need_numeric_ids() {
        let parsed = parse_config_options(r#"{"7":"s3cret","4":2}"#).unwrap();
        assert_eq!(parsed.ids, vec![4, 7]);
        assert_eq!(parsed.json, r#"{"4":2,"7":"s3cret"}"#);
        assert!(parse_config_options(r#"{"pw":"x"}"#).is_err());
        assert!(parse_config_options("[1]").is_err());
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }
}
