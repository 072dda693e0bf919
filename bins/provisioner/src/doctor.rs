//! `provisioner doctor`: read-only pre-flight checks of the configured org, WHMCS, database and
//! alert webhook. One line per check: `ok`, `warn` or `fail`, with what to do; exit 1 when any
//! check fails. It never writes anything (no Order, no WHMCS call that changes data, no
//! migration, no alert) and never prints a secret: checks report field names, ids, statuses and
//! error kinds, never a URL that may carry a token, a credential or a value.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use secrecy::ExposeSecret as _;
use sf_auth::TokenSource as _;
use sf_rest::{FieldType, SObjectDescribe};

use crate::cli::Failure;
use crate::config::Config;

/// How a check ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Level {
    Ok,
    Warn,
    Fail,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Level::Ok => "ok",
            Level::Warn => "warn",
            Level::Fail => "fail",
        })
    }
}

/// One line of the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Line {
    pub(crate) level: Level,
    pub(crate) check: &'static str,
    pub(crate) detail: String,
}

impl Line {
    fn ok(check: &'static str, detail: impl Into<String>) -> Self {
        Self {
            level: Level::Ok,
            check,
            detail: detail.into(),
        }
    }

    fn warn(check: &'static str, detail: impl Into<String>) -> Self {
        Self {
            level: Level::Warn,
            check,
            detail: detail.into(),
        }
    }

    fn fail(check: &'static str, detail: impl Into<String>) -> Self {
        Self {
            level: Level::Fail,
            check,
            detail: detail.into(),
        }
    }

    fn skipped(check: &'static str, because: &str) -> Self {
        Self::warn(check, format!("not checked: {because}"))
    }
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:<4}  {}: {}", self.level, self.check, self.detail)
    }
}

/// How the product uses a field of Order or OrderItem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Need {
    /// Selected and read as text (or a whole number read as text).
    Read,
    /// Written by the provisioner's PATCH (text).
    Update,
    /// Written by the provisioner's PATCH as a date/time.
    UpdateDateTime,
    /// Compared with a string in a `WHERE` and set by the order intake's create.
    RequestId,
    /// Set by the order intake's create (and read by the provisioner).
    Create,
}

/// Every field of Order and OrderItem the product reads or writes (besides `Id`); the unit
/// test `the_field_list_is_the_codes` keeps it equal to the custom fields of sf-rest's queries
/// and request bodies.
const FIELDS: [(&str, &str, Need); 15] = [
    ("Order", "OrderNumber", Need::Read),
    ("Order", "Status", Need::Update),
    ("Order", "AccountId", Need::Read),
    ("Order", "Customer_Number__c", Need::Read),
    ("Order", "WHMCS_Client_Id__c", Need::Read),
    ("Order", "WHMCS_Order_Id__c", Need::Update),
    ("Order", "WHMCS_Service_Ids__c", Need::Update),
    ("Order", "Provisioned_At__c", Need::UpdateDateTime),
    ("Order", "Provisioning_Error__c", Need::Update),
    ("Order", "Portal_Request_Id__c", Need::RequestId),
    ("OrderItem", "Quantity", Need::Read),
    ("OrderItem", "WHMCS_Product_Id__c", Need::Read),
    ("OrderItem", "Billing_Cycle__c", Need::Create),
    ("OrderItem", "Config_Options__c", Need::Create),
    ("Order", "LastModifiedDate", Need::Read),
];

/// Why `field` of type `kind` (updateable / createable as given) does not suit `need`.
fn unsuitable(
    need: Need,
    kind: &FieldType,
    updateable: bool,
    createable: bool,
    intake: bool,
) -> Option<String> {
    let text = matches!(
        kind,
        FieldType::String | FieldType::TextArea | FieldType::Picklist
    );
    let readable = text
        || matches!(
            kind,
            FieldType::Double
                | FieldType::Int
                | FieldType::Id
                | FieldType::Reference
                | FieldType::DateTime
        );
    match need {
        Need::Read if !readable => Some(format!("is {kind:?}: read as text or a number")),
        Need::Update | Need::UpdateDateTime if !updateable => {
            Some("is not editable by the integration user: grant edit access".into())
        }
        Need::Update if !text => Some(format!("is {kind:?}: the provisioner writes text")),
        Need::UpdateDateTime if *kind != FieldType::DateTime => {
            Some(format!("is {kind:?}: the provisioner writes a date/time"))
        }
        Need::RequestId if !matches!(kind, FieldType::String) => Some(format!(
            "is {kind:?}: a text field (External ID, Unique) is compared with the request id"
        )),
        Need::RequestId | Need::Create if intake && !createable => {
            Some("cannot be set by the integration user: grant create access".into())
        }
        Need::Create if !text => Some(format!("is {kind:?}: read and written as text")),
        _ => None,
    }
}

/// The fields line of `object`: missing and unsuitable fields, or ok.
fn fields_line(
    check: &'static str,
    object: &str,
    describe: &SObjectDescribe,
    intake: bool,
) -> Line {
    let mut problems = Vec::new();
    if !describe.queryable {
        problems.push(format!("{object} is not readable by the integration user"));
    }
    if object == "Order" && !describe.updateable {
        problems.push("Orders are not editable by the integration user".to_owned());
    }
    let mut count = 0;
    for (_, name, need) in FIELDS.iter().filter(|(o, _, _)| *o == object) {
        count += 1;
        match describe.field(name) {
            None => problems.push(format!("{object}.{name} is missing")),
            Some(field) => {
                if let Some(why) = unsuitable(
                    *need,
                    &field.field_type,
                    field.updateable,
                    field.createable,
                    intake,
                ) {
                    problems.push(format!("{object}.{name} {why}"));
                }
            }
        }
    }
    if problems.is_empty() {
        Line::ok(
            check,
            format!("{count} fields present with compatible types"),
        )
    } else {
        Line::fail(
            check,
            format!(
                "{} (deploy the metadata in salesforce/ or create the fields as the README's Salesforce setup lists them)",
                problems.join("; ")
            ),
        )
    }
}

/// `provisioner doctor`.
pub(crate) async fn doctor(config: &Config) -> Result<(), Failure> {
    let lines = run_checks(config).await;
    let mut text = String::new();
    for line in &lines {
        text.push_str(&line.to_string());
        text.push('\n');
    }
    let failed = lines.iter().filter(|l| l.level == Level::Fail).count();
    text.push_str(&match failed {
        0 => "doctor: every check passed\n".to_owned(),
        n => format!("doctor: {n} check(s) failed\n"),
    });
    {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .map_err(|e| Failure::Runtime(anyhow!(e).context("writing to stdout")))?;
    }
    if failed == 0 {
        Ok(())
    } else {
        Err(Failure::Runtime(anyhow!("{failed} check(s) failed")))
    }
}

/// Every check, in order; a check whose precondition failed is reported as not checked.
async fn run_checks(config: &Config) -> Vec<Line> {
    let mut lines = Vec::new();
    salesforce_checks(config, &mut lines).await;
    whmcs_checks(config, &mut lines).await;
    lines.push(database_check(config).await);
    lines.push(webhook_check(config).await);
    lines
}

async fn salesforce_checks(config: &Config, lines: &mut Vec<Line>) {
    const LOGIN: &str = "salesforce login";
    const TOPIC: &str = "platform event topic";
    const ORDER: &str = "Order fields";
    const ITEM: &str = "OrderItem fields";
    const STATUS: &str = "Order Status values";
    let skip_all = |lines: &mut Vec<Line>, why: &str| {
        for check in [TOPIC, ORDER, ITEM, STATUS] {
            lines.push(Line::skipped(check, why));
        }
    };
    let tokens = match config
        .jwt_config()
        .and_then(|c| Ok(sf_auth::JwtBearer::new(c)?))
    {
        Ok(tokens) => Arc::new(tokens),
        Err(e) => {
            lines.push(Line::fail(LOGIN, format!("{e:#}")));
            return skip_all(lines, "no Salesforce login");
        }
    };
    match tokens.token().await {
        Ok(token) => lines.push(Line::ok(
            LOGIN,
            format!(
                "JWT bearer token for org {} at {}",
                token.org_id, token.instance_url
            ),
        )),
        Err(e) => {
            lines.push(Line::fail(LOGIN, e.to_string()));
            return skip_all(lines, "no Salesforce login");
        }
    }

    lines.push(if config.events_enabled {
        topic_check(config, Arc::clone(&tokens) as Arc<dyn sf_auth::TokenSource>).await
    } else {
        Line::warn(
            TOPIC,
            "SF_EVENTS_ENABLED is false: no subscriber runs, only the reconcile sweep finds Orders",
        )
    });

    let rest = match sf_rest::RestOrderApi::new(
        tokens,
        sf_rest::RestConfig {
            api_version: config.api_version.clone(),
            approved_status: config.statuses.approved.clone(),
            retry: sf_rest::RetryPolicy {
                max_attempts: 2,
                ..sf_rest::RetryPolicy::default()
            },
            ..sf_rest::RestConfig::default()
        },
    ) {
        Ok(rest) => rest,
        Err(e) => {
            for check in [ORDER, ITEM, STATUS] {
                lines.push(Line::fail(check, e.to_string()));
            }
            return;
        }
    };
    let intake = config.pricebook_id.is_some();
    let order = rest.describe("Order").await;
    match &order {
        Ok(describe) => lines.push(fields_line(ORDER, "Order", describe, intake)),
        Err(e) => lines.push(Line::fail(ORDER, format!("describe Order: {e}"))),
    }
    lines.push(match rest.describe("OrderItem").await {
        Ok(describe) => fields_line(ITEM, "OrderItem", &describe, intake),
        Err(e) => Line::fail(ITEM, format!("describe OrderItem: {e}")),
    });
    lines.push(match &order {
        Ok(describe) => status_line(STATUS, config, describe),
        Err(_) => Line::skipped(STATUS, "Order could not be described"),
    });
}

/// The configured Order statuses against the Status picklist.
fn status_line(check: &'static str, config: &Config, describe: &SObjectDescribe) -> Line {
    let Some(status) = describe.field("Status") else {
        return Line::fail(check, "Order has no Status field");
    };
    let s = &config.statuses;
    let mut wanted = vec![
        ("SF_ORDER_STATUS_APPROVED", s.approved.as_str()),
        ("SF_ORDER_STATUS_PROVISIONED", s.provisioned.as_str()),
        ("SF_ORDER_STATUS_FAILED", s.failed.as_str()),
    ];
    if let Some(provisioning) = &s.provisioning {
        wanted.push(("SF_ORDER_STATUS_PROVISIONING", provisioning.as_str()));
    }
    if config.pricebook_id.is_some() {
        wanted.push(("SF_ORDER_STATUS_NEW", config.new_order_status.as_str()));
    }
    let missing: Vec<String> = wanted
        .iter()
        .filter(|(_, value)| !status.has_active_value(value))
        .map(|(name, value)| format!("{value:?} ({name})"))
        .collect();
    if missing.is_empty() {
        Line::ok(
            check,
            format!(
                "{} configured statuses are active picklist values",
                wanted.len()
            ),
        )
    } else {
        Line::fail(
            check,
            format!(
                "no active Status value {}: add it to the Order Status picklist or change the variable",
                missing.join(", ")
            ),
        )
    }
}

/// The topic exists and its current schema has every event field the subscriber decodes.
async fn topic_check(config: &Config, tokens: Arc<dyn sf_auth::TokenSource>) -> Line {
    const TOPIC: &str = "platform event topic";
    let mut client_config = sf_pubsub::ClientConfig::new(&config.pubsub_endpoint);
    if let Some(path) = &config.pubsub_ca_file {
        match std::fs::read(path) {
            Ok(pem) => client_config = client_config.with_ca_pem(pem),
            Err(e) => return Line::fail(TOPIC, format!("SF_PUBSUB_CA_FILE: {e}")),
        }
    }
    let client = match sf_pubsub::PubSubClient::new(client_config, tokens) {
        Ok(client) => client,
        Err(e) => return Line::fail(TOPIC, format!("SF_PUBSUB_ENDPOINT: {e}")),
    };
    let topic = match tokio::time::timeout(CALL_TIMEOUT, client.get_topic(&config.channel)).await {
        Ok(Ok(topic)) => topic,
        Ok(Err(e)) => {
            return Line::fail(
                TOPIC,
                format!(
                    "{}: {e} (deploy the platform event, or set SF_EVENTS_CHANNEL)",
                    config.channel
                ),
            );
        }
        Err(_) => return Line::fail(TOPIC, "the Pub/Sub API did not answer GetTopic in time"),
    };
    let schema = match tokio::time::timeout(CALL_TIMEOUT, client.get_schema(&topic.schema_id)).await
    {
        Ok(Ok(schema)) => schema,
        Ok(Err(e)) => return Line::fail(TOPIC, format!("GetSchema: {e}")),
        Err(_) => return Line::fail(TOPIC, "the Pub/Sub API did not answer GetSchema in time"),
    };
    let names: Vec<String> = serde_json::from_str::<serde_json::Value>(schema.json())
        .ok()
        .and_then(|s| s.get("fields").and_then(|f| f.as_array()).cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|f| f.get("name").and_then(|n| n.as_str()).map(str::to_owned))
        .collect();
    let missing: Vec<&str> = sf_pubsub::OrderProvisionRequested::FIELDS
        .iter()
        .copied()
        .filter(|field| !names.iter().any(|n| n == field))
        .collect();
    if missing.is_empty() {
        Line::ok(
            TOPIC,
            format!(
                "{} has the fields {}",
                config.channel,
                sf_pubsub::OrderProvisionRequested::FIELDS.join(", ")
            ),
        )
    } else {
        Line::fail(
            TOPIC,
            format!(
                "the event of {} lacks {}: add the field(s) to the platform event and set them in the Flow",
                config.channel,
                missing.join(", ")
            ),
        )
    }
}

/// How long one outside call of a check may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

async fn whmcs_checks(config: &Config, lines: &mut Vec<Line>) {
    const CREDENTIALS: &str = "whmcs credentials";
    const PAYMENT: &str = "whmcs payment method";
    const PRODUCTS: &str = "whmcs products";
    let client = match config
        .whmcs_config()
        .and_then(|c| Ok(whmcs_client::HttpWhmcsClient::new(c)?))
    {
        Ok(client) => client,
        Err(e) => {
            lines.push(Line::fail(CREDENTIALS, format!("{e:#}")));
            lines.push(Line::skipped(PAYMENT, "no WHMCS client"));
            lines.push(Line::skipped(PRODUCTS, "no WHMCS client"));
            return;
        }
    };
    // GetPaymentMethods reads only; it proves the URL, the credential and its API role.
    let methods = match client.payment_methods().await {
        Ok(methods) => {
            lines.push(Line::ok(
                CREDENTIALS,
                "the API credential is accepted (GetPaymentMethods)",
            ));
            methods
        }
        Err(e) => {
            lines.push(Line::fail(
                CREDENTIALS,
                format!(
                    "{e} (check WHMCS_API_URL, the API credential and its role: it needs GetPaymentMethods and GetProducts besides the provisioning actions)"
                ),
            ));
            lines.push(Line::skipped(PAYMENT, "the WHMCS credential failed"));
            lines.push(Line::skipped(PRODUCTS, "the WHMCS credential failed"));
            return;
        }
    };
    lines.push(
        if methods.iter().any(|m| m.module == config.payment_method) {
            Line::ok(
                PAYMENT,
                format!("{} is an active gateway", config.payment_method),
            )
        } else {
            Line::fail(
                PAYMENT,
                format!(
                    "{} is not an active gateway (active: {}): activate it in WHMCS or set WHMCS_PAYMENT_METHOD",
                    config.payment_method,
                    methods
                        .iter()
                        .map(|m| m.module.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        },
    );
    lines.push(match &config.order_ref_fields {
        None => Line::fail(PRODUCTS, "WHMCS_ORDER_REF_FIELD_ID is not set"),
        Some(provisioner_core::RefFields::Every(field)) => Line::ok(
            PRODUCTS,
            format!("custom field {field} holds the Salesforce Order Id on every product"),
        ),
        Some(provisioner_core::RefFields::PerProduct(map)) => match client.get_products(None).await
        {
            Err(e) => Line::fail(PRODUCTS, format!("GetProducts: {e}")),
            Ok(products) => {
                let unknown: Vec<String> = map
                    .keys()
                    .filter(|pid| !products.iter().any(|p| p.pid == **pid))
                    .map(u64::to_string)
                    .collect();
                if unknown.is_empty() {
                    Line::ok(
                        PRODUCTS,
                        format!("the {} products of the ref map exist", map.len()),
                    )
                } else {
                    Line::fail(
                        PRODUCTS,
                        format!(
                            "no WHMCS product {} (named in WHMCS_ORDER_REF_FIELD_ID): fix the map",
                            unknown.join(", ")
                        ),
                    )
                }
            }
        },
    });
}

async fn database_check(config: &Config) -> Line {
    const CHECK: &str = "database";
    match provisioner_store::migration_status(config.database_url.expose_secret()).await {
        Ok(status) if status.pending.is_empty() => Line::ok(
            CHECK,
            format!("opens; {} migrations applied, none pending", status.applied),
        ),
        Ok(status) => Line::fail(
            CHECK,
            format!(
                "migrations pending: {} (run `provisioner migrate`)",
                status.pending.join(", ")
            ),
        ),
        // The store's errors name the operation and the database's complaint, never the URL.
        Err(e) => Line::fail(
            CHECK,
            format!("DATABASE_URL: {e} (run `provisioner migrate` to create it)"),
        ),
    }
}

async fn webhook_check(config: &Config) -> Line {
    const CHECK: &str = "alert webhook";
    let Some(url) = &config.alert_webhook else {
        return Line::warn(
            CHECK,
            "SECURITY_ALERT_WEBHOOK is not set: alerts go to the log only",
        );
    };
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(client) => client,
        Err(e) => return Line::fail(CHECK, e.to_string()),
    };
    // A HEAD sends nothing: any HTTP answer shows the receiver is there.
    match client.head(url.expose_secret()).send().await {
        Ok(answer) => Line::ok(
            CHECK,
            format!("answers (HTTP {} to HEAD)", answer.status().as_u16()),
        ),
        // The URL may carry a token: only the kind of failure is shown.
        Err(e) => Line::fail(
            CHECK,
            format!(
                "SECURITY_ALERT_WEBHOOK does not answer ({}): check the URL and that the receiver runs",
                if e.is_timeout() {
                    "timed out"
                } else if e.is_connect() {
                    "connection failed"
                } else {
                    "request failed"
                }
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::collections::BTreeSet;

    use super::*;

    /// The custom fields named in `text` (`Word__c`, with any relationship prefix dropped).
    fn custom_fields(text: &str) -> BTreeSet<String> {
        text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
            .filter(|w| w.ends_with("__c"))
            .map(|w| w.rsplit('.').next().unwrap_or(w).to_owned())
            .collect()
    }

    #[test]
    fn the_field_list_is_the_codes() {
        let id = sf_rest::OrderId::parse("801A0000006Vm9rIAC").unwrap();
        let update = sf_rest::OrderUpdate {
            status: Some("Activated".into()),
            whmcs_order_id: Some("1".into()),
            whmcs_service_ids: Some(vec!["1".into()]),
            provisioned_at: Some(chrono::Utc::now()),
            provisioning_error: Some("x".into()),
            deadline: None,
        };
        let order = sf_rest::NewOrder {
            account_id: "001A0000006Vm9rIAC".into(),
            effective_date: chrono::NaiveDate::from_ymd_opt(2026, 1, 1).unwrap(),
            status: "Pending Review".into(),
            pricebook_id: "01sA0000006Vm9rIAC".into(),
            request_id: "C-1:key-0001".into(),
            items: vec![sf_rest::NewOrderItem {
                pricebook_entry_id: "01uA0000006Vm9rIAC".into(),
                quantity: 1,
                unit_price: 1.0,
                billing_cycle: "monthly".into(),
                config_options_json: "{}".into(),
            }],
        };
        let code = [
            sf_rest::order_soql(&id),
            sf_rest::approved_orders_soql("Approved", chrono::Utc::now()),
            sf_rest::order_by_request_id_soql("C-1:key"),
            update.to_json().to_string(),
            order
                .composite_body(sf_rest::DEFAULT_API_VERSION)
                .to_string(),
        ]
        .join(" ");
        let listed: BTreeSet<String> = FIELDS
            .iter()
            .map(|(_, name, _)| (*name).to_owned())
            .filter(|name| name.ends_with("__c"))
            .collect();
        assert_eq!(listed, custom_fields(&code));
    }

    #[test]
    fn unsuitable_types_and_access_are_named() {
        let s = FieldType::String;
        assert_eq!(unsuitable(Need::Read, &s, false, false, false), None);
        assert!(unsuitable(Need::Update, &s, false, true, false).is_some());
        assert!(unsuitable(Need::Update, &FieldType::Double, true, true, false).is_some());
        assert!(unsuitable(Need::UpdateDateTime, &s, true, true, false).is_some());
        assert_eq!(
            unsuitable(
                Need::UpdateDateTime,
                &FieldType::DateTime,
                true,
                true,
                false
            ),
            None
        );
        assert!(unsuitable(Need::RequestId, &FieldType::TextArea, true, true, false).is_some());
        assert!(unsuitable(Need::Create, &s, true, false, true).is_some());
        assert_eq!(unsuitable(Need::Create, &s, true, false, false), None);
        assert!(unsuitable(Need::Read, &FieldType::Boolean, true, true, false).is_some());
    }

    #[test]
    fn a_line_reads_level_check_and_detail() {
        assert_eq!(Line::fail("database", "x").to_string(), "fail  database: x");
        assert_eq!(Line::ok("database", "y").to_string(), "ok    database: y");
    }
}
