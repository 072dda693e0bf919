//! Request and response types of the actions this crate calls.
//!
//! Requests encode themselves into a [`FormBody`]; responses are read leniently: WHMCS
//! returns ids and counts as numbers or numeric strings, booleans as `true`/`1`/`"1"`/`"on"`,
//! lists nested one level deeper (`orders.order[]`) and an empty list as `""`. Types that carry personal data or secrets have hand-written `Debug`
//! impls that leave those values out.

use std::collections::BTreeMap;
use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::encoding::{FormBody, PhpKey, PhpValue, serialized_base64};
use crate::lenient;

// ---------------------------------------------------------------------------------------------
// custom fields and config options

/// Custom field values keyed by custom field id (`tblcustomfields.id`), e.g. the external-ref
/// field holding the Salesforce Order Id. `Debug` shows the ids only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct CustomFields(pub BTreeMap<u64, String>);

impl CustomFields {
    /// No fields.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the value of field `id`.
    pub fn with(mut self, id: u64, value: impl Into<String>) -> Self {
        self.0.insert(id, value.into());
        self
    }

    /// Whether there are no fields.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The PHP array `array(id => "value", ...)`.
    pub fn to_php(&self) -> PhpValue {
        PhpValue::Array(
            self.0
                .iter()
                .map(|(id, value)| (php_id(*id), PhpValue::Str(value.clone())))
                .collect(),
        )
    }

    /// `base64(serialize(array(id => "value", ...)))`.
    pub fn encode(&self) -> String {
        let mut php = self.to_php();
        let encoded = serialized_base64(&php);
        zeroize::Zeroize::zeroize(&mut php);
        encoded
    }
}

impl fmt::Debug for CustomFields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// The value of one configurable option. Values may be secrets (a root password entered on the
/// order), so `Debug` never shows them.
#[derive(Clone)]
pub enum ConfigOptionValue {
    /// Dropdown or radio: the chosen option's sub-id (`options.option[].id` in GetProducts).
    Choice(u64),
    /// Quantity option: the number ordered.
    Quantity(u64),
    /// Quantity option in the nested form `array('optionid' => X, 'qty' => N)`.
    OptionQuantity {
        /// The option's sub-id.
        option_id: u64,
        /// The number ordered.
        qty: u64,
    },
    /// Yes/no option (`b:1;`/`b:0;`).
    Flag(bool),
    /// Free text, possibly secret.
    Text(SecretString),
}

impl ConfigOptionValue {
    fn to_php(&self) -> PhpValue {
        match self {
            ConfigOptionValue::Choice(id) | ConfigOptionValue::Quantity(id) => php_int(*id),
            ConfigOptionValue::OptionQuantity { option_id, qty } => PhpValue::Array(vec![
                (PhpKey::Str("optionid".to_owned()), php_int(*option_id)),
                (PhpKey::Str("qty".to_owned()), php_int(*qty)),
            ]),
            ConfigOptionValue::Flag(b) => PhpValue::Bool(*b),
            ConfigOptionValue::Text(secret) => PhpValue::Str(secret.expose_secret().to_owned()),
        }
    }
}

impl fmt::Debug for ConfigOptionValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self {
            ConfigOptionValue::Choice(_) => "Choice",
            ConfigOptionValue::Quantity(_) => "Quantity",
            ConfigOptionValue::OptionQuantity { .. } => "OptionQuantity",
            ConfigOptionValue::Flag(_) => "Flag",
            ConfigOptionValue::Text(_) => "Text",
        };
        write!(f, "{kind}([REDACTED])")
    }
}

/// Config option values keyed by configurable option id. `Debug` shows ids and kinds only.
#[derive(Clone, Default)]
pub struct ConfigOptions(pub BTreeMap<u64, ConfigOptionValue>);

impl ConfigOptions {
    /// No options.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) option `id`.
    pub fn with(mut self, id: u64, value: ConfigOptionValue) -> Self {
        self.0.insert(id, value);
        self
    }

    /// Whether there are no options.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Reads the Salesforce `Config_Options__c` JSON object `{"<option id>": value}`: a
    /// string is [`ConfigOptionValue::Text`] (kept secret), a whole non-negative number a
    /// [`ConfigOptionValue::Choice`] (dropdown sub-id or quantity: the same on the wire), a
    /// boolean a [`ConfigOptionValue::Flag`], `{"optionid": X, "qty": N}` a
    /// [`ConfigOptionValue::OptionQuantity`], `null` is skipped. Errors name the option id,
    /// never the value.
    pub fn from_json(json: &serde_json::Value) -> crate::Result<Self> {
        use serde_json::Value as J;
        let invalid = |reason: String| crate::Error::InvalidInput { reason };
        let J::Object(map) = json else {
            return Err(invalid("config options must be a json object".to_owned()));
        };
        let whole = |v: &J| {
            lenient::opt_u64_value(v)
                .ok()
                .flatten()
                .filter(|_| !v.is_string())
        };
        let mut options = ConfigOptions::new();
        for (key, value) in map {
            let id: u64 = key
                .trim()
                .parse()
                .map_err(|_| invalid(format!("config option key {key:?} is not an option id")))?;
            let parsed = match value {
                J::Null => continue,
                J::String(s) => ConfigOptionValue::Text(SecretString::from(s.clone())),
                J::Bool(b) => ConfigOptionValue::Flag(*b),
                J::Number(_) => whole(value).map(ConfigOptionValue::Choice).ok_or_else(|| {
                    invalid(format!(
                        "config option {id} must be a whole non-negative number"
                    ))
                })?,
                J::Object(fields) => {
                    let option_id = fields.get("optionid").and_then(whole);
                    let qty = fields.get("qty").and_then(whole);
                    match (option_id, qty) {
                        (Some(option_id), Some(qty)) => {
                            ConfigOptionValue::OptionQuantity { option_id, qty }
                        }
                        _ => {
                            return Err(invalid(format!(
                                "config option {id} object needs numeric optionid and qty"
                            )));
                        }
                    }
                }
                J::Array(_) => {
                    return Err(invalid(format!("config option {id} cannot be a list")));
                }
            };
            options.0.insert(id, parsed);
        }
        Ok(options)
    }

    /// The PHP array `array(id => value, ...)`.
    pub fn to_php(&self) -> PhpValue {
        PhpValue::Array(
            self.0
                .iter()
                .map(|(id, value)| (php_id(*id), value.to_php()))
                .collect(),
        )
    }

    /// `base64(serialize(array(id => value, ...)))`; the intermediate text is wiped.
    pub fn encode(&self) -> String {
        let mut php = self.to_php();
        let encoded = serialized_base64(&php);
        zeroize::Zeroize::zeroize(&mut php);
        encoded
    }
}

impl fmt::Debug for ConfigOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.0.iter()).finish()
    }
}

fn php_int(n: u64) -> PhpValue {
    PhpValue::Int(i64::try_from(n).unwrap_or(i64::MAX))
}

fn php_id(n: u64) -> PhpKey {
    PhpKey::Int(i64::try_from(n).unwrap_or(i64::MAX))
}

// ---------------------------------------------------------------------------------------------
// requests

/// One cart line of [`NewOrder`]. Salesforce quantity N becomes N lines.
#[derive(Debug, Clone)]
pub struct OrderLine {
    /// WHMCS product id (`pid`).
    pub product_id: u64,
    /// WHMCS cycle name: `monthly`, `annually`, `onetime`, ...
    pub billing_cycle: String,
    /// Domain for the line, if the product uses one.
    pub domain: Option<String>,
    /// Product custom fields (the external-ref field goes here on every line).
    pub custom_fields: CustomFields,
    /// Configurable options.
    pub config_options: ConfigOptions,
}

impl OrderLine {
    /// A line for `product_id` on `billing_cycle`, no domain, fields or options.
    pub fn new(product_id: u64, billing_cycle: impl Into<String>) -> Self {
        Self {
            product_id,
            billing_cycle: billing_cycle.into(),
            domain: None,
            custom_fields: CustomFields::new(),
            config_options: ConfigOptions::new(),
        }
    }
}

/// An `AddOrder` request.
#[derive(Debug, Clone)]
pub struct NewOrder {
    /// WHMCS client id.
    pub client_id: u64,
    /// Gateway system name; `None` uses the client's configured default.
    pub payment_method: Option<String>,
    /// Cart lines; at least one.
    pub lines: Vec<OrderLine>,
    /// `noemail`: do not send the order confirmation.
    pub no_email: bool,
    /// `noinvoice`: create no invoice.
    pub no_invoice: bool,
    /// When the client gives up on the request at the latest (before its configured
    /// timeout runs out, if earlier); once it has passed, the request is not sent at all and
    /// the call ends as a timeout. A caller that records the call's intent (with its time)
    /// before sending it sets this to the moment it began that record + the timeout: however
    /// long the record took to write or the process was paused after it, the request is
    /// never out past the recorded time + the timeout.
    pub deadline: Option<tokio::time::Instant>,
}

impl NewOrder {
    /// An order for `client_id` with `lines`, emails and invoice left to WHMCS's defaults.
    pub fn new(client_id: u64, lines: Vec<OrderLine>) -> Self {
        Self {
            client_id,
            payment_method: None,
            lines,
            no_email: false,
            no_invoice: false,
            deadline: None,
        }
    }

    /// Writes the action parameters. Every parallel array gets the same explicit indices
    /// `0..lines.len()`; an optional array is sent for every line as soon as one line uses it
    /// (an empty PHP array `a:0:{}` for lines without custom fields or options).
    pub(crate) fn write_form(&self, default_payment_method: &str, body: &mut FormBody) {
        body.push("clientid", self.client_id.to_string());
        body.push(
            "paymentmethod",
            self.payment_method
                .as_deref()
                .unwrap_or(default_payment_method),
        );
        let any_domain = self.lines.iter().any(|l| l.domain.is_some());
        let any_fields = self.lines.iter().any(|l| !l.custom_fields.is_empty());
        let any_options = self.lines.iter().any(|l| !l.config_options.is_empty());
        for (i, line) in self.lines.iter().enumerate() {
            body.push_indexed("pid", i, line.product_id.to_string());
            body.push_indexed("billingcycle", i, line.billing_cycle.clone());
            if any_domain {
                body.push_indexed("domain", i, line.domain.clone().unwrap_or_default());
            }
            if any_fields {
                body.push_indexed("customfields", i, line.custom_fields.encode());
            }
            if any_options {
                body.push_indexed("configoptions", i, line.config_options.encode());
            }
        }
        if self.no_email {
            body.push_bool("noemail", true);
        }
        if self.no_invoice {
            body.push_bool("noinvoice", true);
        }
    }
}

/// An `AcceptOrder` request.
#[derive(Debug, Clone)]
pub struct AcceptOrderRequest {
    /// The Pending order to accept.
    pub order_id: u64,
    /// `autosetup`: run the product modules (provision) now.
    pub auto_setup: bool,
    /// `sendemail`: send welcome emails.
    pub send_email: bool,
    /// When the client gives up on the request at the latest: as [`NewOrder::deadline`].
    pub deadline: Option<tokio::time::Instant>,
}

impl AcceptOrderRequest {
    /// Accept `order_id` with `autosetup=1`.
    pub fn provision(order_id: u64, send_email: bool) -> Self {
        Self {
            order_id,
            auto_setup: true,
            send_email,
            deadline: None,
        }
    }

    pub(crate) fn write_form(&self, body: &mut FormBody) {
        body.push("orderid", self.order_id.to_string());
        body.push_bool("autosetup", self.auto_setup);
        body.push_bool("sendemail", self.send_email);
    }
}

/// Filters of `GetClientsProducts` (paging is added by the client).
#[derive(Debug, Clone, Default)]
pub struct ProductsQuery {
    /// `clientid`
    pub client_id: Option<u64>,
    /// `serviceid`
    pub service_id: Option<u64>,
    /// `pid`
    pub product_id: Option<u64>,
    /// `domain`
    pub domain: Option<String>,
}

impl ProductsQuery {
    /// All services of one client.
    pub fn client(client_id: u64) -> Self {
        Self {
            client_id: Some(client_id),
            ..Self::default()
        }
    }

    pub(crate) fn write_form(&self, body: &mut FormBody) {
        if let Some(id) = self.client_id {
            body.push("clientid", id.to_string());
        }
        if let Some(id) = self.service_id {
            body.push("serviceid", id.to_string());
        }
        if let Some(id) = self.product_id {
            body.push("pid", id.to_string());
        }
        if let Some(domain) = &self.domain {
            body.push("domain", domain.clone());
        }
    }
}

/// Filters of `GetOrders` (paging is added by the client).
#[derive(Debug, Clone, Default)]
pub struct OrdersQuery {
    /// `id`: one order.
    pub order_id: Option<u64>,
    /// `userid`: a client's orders.
    pub client_id: Option<u64>,
    /// `status`: `Pending`, `Active`, `Fraud`, `Cancelled`, ...
    pub status: Option<String>,
}

impl OrdersQuery {
    /// One order by id.
    pub fn order(order_id: u64) -> Self {
        Self {
            order_id: Some(order_id),
            ..Self::default()
        }
    }

    pub(crate) fn write_form(&self, body: &mut FormBody) {
        if let Some(id) = self.order_id {
            body.push("id", id.to_string());
        }
        if let Some(id) = self.client_id {
            body.push("userid", id.to_string());
        }
        if let Some(status) = &self.status {
            body.push("status", status.clone());
        }
    }
}

/// A page request: `limitstart`/`limitnum`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// `limitstart`: offset of the first record.
    pub start: u64,
    /// `limitnum`: records per page.
    pub size: u64,
}

impl Page {
    /// The first page of `size` records.
    pub fn first(size: u64) -> Self {
        Self { start: 0, size }
    }

    pub(crate) fn write_form(self, body: &mut FormBody) {
        body.push("limitstart", self.start.to_string());
        body.push("limitnum", self.size.to_string());
    }
}

/// An `AddClient` request. `Debug` leaves personal data out.
#[derive(Clone, Default)]
pub struct NewClient {
    /// `firstname`
    pub first_name: String,
    /// `lastname`
    pub last_name: String,
    /// `companyname`
    pub company_name: Option<String>,
    /// `email`
    pub email: String,
    /// `address1`
    pub address1: String,
    /// `city`
    pub city: String,
    /// `state`
    pub state: String,
    /// `postcode`
    pub postcode: String,
    /// `country`: two-letter ISO code.
    pub country: String,
    /// `phonenumber`
    pub phone_number: String,
    /// `password2`: needed when no `owner_user_id` is given.
    pub password: Option<SecretString>,
    /// `owner_user_id` (8.0+): attach to an existing user.
    pub owner_user_id: Option<u64>,
    /// `customfields`: client custom fields, sent as ONE base64 string.
    pub custom_fields: CustomFields,
    /// `noemail`: no welcome email.
    pub no_email: bool,
    /// `skipvalidation`: skip required-field checks.
    pub skip_validation: bool,
}

impl fmt::Debug for NewClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewClient")
            .field("country", &self.country)
            .field("owner_user_id", &self.owner_user_id)
            .field("custom_fields", &self.custom_fields)
            .finish_non_exhaustive()
    }
}

impl NewClient {
    pub(crate) fn write_form(&self, body: &mut FormBody) {
        body.push("firstname", self.first_name.clone());
        body.push("lastname", self.last_name.clone());
        if let Some(company) = &self.company_name {
            body.push("companyname", company.clone());
        }
        body.push("email", self.email.clone());
        body.push("address1", self.address1.clone());
        body.push("city", self.city.clone());
        body.push("state", self.state.clone());
        body.push("postcode", self.postcode.clone());
        body.push("country", self.country.clone());
        body.push("phonenumber", self.phone_number.clone());
        if let Some(password) = &self.password {
            body.push("password2", password.expose_secret().to_owned());
        }
        if let Some(owner) = self.owner_user_id {
            body.push("owner_user_id", owner.to_string());
        }
        if !self.custom_fields.is_empty() {
            body.push("customfields", self.custom_fields.encode());
        }
        if self.no_email {
            body.push_bool("noemail", true);
        }
        if self.skip_validation {
            body.push_bool("skipvalidation", true);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// responses

/// A client's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientStatus {
    /// `Active`
    Active,
    /// `Inactive`
    Inactive,
    /// `Closed`
    Closed,
    /// Anything else, as sent.
    Other(String),
}

impl ClientStatus {
    fn parse(s: &str) -> Self {
        match s.trim().to_ascii_lowercase().as_str() {
            "active" => ClientStatus::Active,
            "inactive" => ClientStatus::Inactive,
            "closed" => ClientStatus::Closed,
            _ => ClientStatus::Other(s.to_owned()),
        }
    }
}

impl<'de> Deserialize<'de> for ClientStatus {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = lenient::string_any(d)?;
        Ok(ClientStatus::parse(&s))
    }
}

/// A custom field value as WHMCS returns it.
#[derive(Clone, Deserialize, PartialEq, Eq)]
pub struct FieldValue {
    /// Custom field id.
    #[serde(deserialize_with = "lenient::u64_any", default)]
    pub id: u64,
    /// Field name (GetClientsProducts only).
    #[serde(deserialize_with = "lenient::string_any", default)]
    pub name: String,
    /// Stored value.
    #[serde(deserialize_with = "lenient::string_any", default)]
    pub value: String,
}

impl fmt::Debug for FieldValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FieldValue")
            .field("id", &self.id)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// `GetClientsDetails`: the client. `Debug` shows id and status only.
#[derive(Clone, Deserialize)]
#[serde(from = "RawClientDetails")]
pub struct ClientDetails {
    /// Client id (`id`, `client_id` or `userid`).
    pub id: u64,
    /// Status.
    pub status: ClientStatus,
    /// `firstname`
    pub first_name: String,
    /// `lastname`
    pub last_name: String,
    /// `companyname`
    pub company_name: String,
    /// `email`
    pub email: String,
    /// `customfields: [{id, value}]`
    pub custom_fields: Vec<FieldValue>,
    /// `email_verified` (any WHMCS boolean spelling).
    pub email_verified: bool,
}

/// WHMCS sends the id under up to three names at once.
#[derive(Deserialize)]
struct RawClientDetails {
    #[serde(deserialize_with = "lenient::u64_any", default)]
    id: u64,
    #[serde(deserialize_with = "lenient::u64_any", default)]
    client_id: u64,
    #[serde(deserialize_with = "lenient::u64_any", default)]
    userid: u64,
    #[serde(default = "unknown_status")]
    status: ClientStatus,
    #[serde(deserialize_with = "lenient::string_any", default)]
    firstname: String,
    #[serde(deserialize_with = "lenient::string_any", default)]
    lastname: String,
    #[serde(deserialize_with = "lenient::string_any", default)]
    companyname: String,
    #[serde(deserialize_with = "lenient::string_any", default)]
    email: String,
    #[serde(deserialize_with = "lenient::plain_list", default)]
    customfields: Vec<FieldValue>,
    #[serde(deserialize_with = "lenient::bool_any", default)]
    email_verified: bool,
}

impl From<RawClientDetails> for ClientDetails {
    fn from(raw: RawClientDetails) -> Self {
        let id = [raw.id, raw.client_id, raw.userid]
            .into_iter()
            .find(|id| *id != 0)
            .unwrap_or_default();
        ClientDetails {
            id,
            status: raw.status,
            first_name: raw.firstname,
            last_name: raw.lastname,
            company_name: raw.companyname,
            email: raw.email,
            custom_fields: raw.customfields,
            email_verified: raw.email_verified,
        }
    }
}

fn unknown_status() -> ClientStatus {
    ClientStatus::Other(String::new())
}

impl fmt::Debug for ClientDetails {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientDetails")
            .field("id", &self.id)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

impl ClientDetails {
    /// Whether the client may order.
    pub fn is_active(&self) -> bool {
        self.status == ClientStatus::Active
    }
}

/// A config option of a service as GetClientsProducts shows it; the value may be a secret.
#[derive(Clone, Deserialize)]
pub struct ServiceConfigOption {
    /// Configurable option id.
    #[serde(deserialize_with = "lenient::u64_any", default)]
    pub id: u64,
    /// Option name.
    #[serde(deserialize_with = "lenient::string_any", default)]
    pub option: String,
    /// Option type.
    #[serde(rename = "type", deserialize_with = "lenient::string_any", default)]
    pub kind: String,
    /// Value, kept secret.
    #[serde(deserialize_with = "secret_any", default = "empty_secret")]
    pub value: SecretString,
}

fn secret_any<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SecretString, D::Error> {
    lenient::string_any(d).map(SecretString::from)
}

fn empty_secret() -> SecretString {
    SecretString::from(String::new())
}

impl fmt::Debug for ServiceConfigOption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceConfigOption")
            .field("id", &self.id)
            .field("option", &self.option)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// A service (a product a client holds), from `GetClientsProducts`. The service password is
/// not read.
#[derive(Debug, Clone, Deserialize)]
pub struct Service {
    /// Service id.
    #[serde(deserialize_with = "lenient::u64_any", default)]
    pub id: u64,
    /// Client id.
    #[serde(rename = "clientid", deserialize_with = "lenient::u64_any", default)]
    pub client_id: u64,
    /// Order id.
    #[serde(rename = "orderid", deserialize_with = "lenient::u64_any", default)]
    pub order_id: u64,
    /// Product id.
    #[serde(rename = "pid", deserialize_with = "lenient::u64_any", default)]
    pub product_id: u64,
    /// Product name.
    #[serde(deserialize_with = "lenient::string_any", default)]
    pub name: String,
    /// Domain.
    #[serde(deserialize_with = "lenient::string_any", default)]
    pub domain: String,
    /// `Pending`, `Active`, `Suspended`, ...
    #[serde(deserialize_with = "lenient::string_any", default)]
    pub status: String,
    /// Billing cycle as WHMCS shows it.
    #[serde(
        rename = "billingcycle",
        deserialize_with = "lenient::string_any",
        default
    )]
    pub billing_cycle: String,
    /// Service username.
    #[serde(deserialize_with = "lenient::string_any", default)]
    pub username: String,
    /// `customfields.customfield[]`
    #[serde(
        rename = "customfields",
        deserialize_with = "lenient::nested_list",
        default
    )]
    pub custom_fields: Vec<FieldValue>,
    /// `configoptions.configoption[]`
    #[serde(
        rename = "configoptions",
        deserialize_with = "lenient::nested_list",
        default
    )]
    pub config_options: Vec<ServiceConfigOption>,
}

impl Service {
    /// The value of custom field `field_id`, if the service has it.
    pub fn custom_field(&self, field_id: u64) -> Option<&str> {
        self.custom_fields
            .iter()
            .find(|f| f.id == field_id)
            .map(|f| f.value.as_str())
    }
}

/// A service as the external-ref lookup reads it: its ids and its custom field values, and
/// nothing else of `GetClientsProducts`' item (names, dates, amounts, config options and
/// secrets are skipped unread), so a client with many services costs less to walk.
#[derive(Clone, Deserialize, PartialEq, Eq)]
pub struct ServiceRef {
    /// Service id.
    #[serde(deserialize_with = "lenient::u64_any", default)]
    pub id: u64,
    /// Order id.
    #[serde(rename = "orderid", deserialize_with = "lenient::u64_any", default)]
    pub order_id: u64,
    /// Product id.
    #[serde(rename = "pid", deserialize_with = "lenient::u64_any", default)]
    pub product_id: u64,
    /// `customfields.customfield[]`: id and value of each.
    #[serde(
        rename = "customfields",
        deserialize_with = "lenient::nested_list",
        default
    )]
    pub custom_fields: Vec<FieldRef>,
}

impl ServiceRef {
    /// The value of custom field `field_id`, if the service has it.
    pub fn custom_field(&self, field_id: u64) -> Option<&str> {
        self.custom_fields
            .iter()
            .find(|f| f.id == field_id)
            .map(|f| f.value.as_str())
    }
}

impl From<&Service> for ServiceRef {
    fn from(s: &Service) -> Self {
        ServiceRef {
            id: s.id,
            order_id: s.order_id,
            product_id: s.product_id,
            custom_fields: s
                .custom_fields
                .iter()
                .map(|f| FieldRef {
                    id: f.id,
                    value: f.value.clone(),
                })
                .collect(),
        }
    }
}

impl fmt::Debug for ServiceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceRef")
            .field("id", &self.id)
            .field("order_id", &self.order_id)
            .field("product_id", &self.product_id)
            .field("custom_fields", &self.custom_fields)
            .finish()
    }
}

/// A custom field's id and value, as [`ServiceRef`] reads them (the name is skipped).
#[derive(Clone, Deserialize, PartialEq, Eq)]
pub struct FieldRef {
    /// Custom field id.
    #[serde(deserialize_with = "lenient::u64_any", default)]
    pub id: u64,
    /// Stored value.
    #[serde(deserialize_with = "lenient::string_any", default)]
    pub value: String,
}

impl fmt::Debug for FieldRef {
    // Values are customer data: like `FieldValue`, only the id is shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FieldRef")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// One page of a list action.
#[derive(Debug, Clone)]
pub struct ListPage<T> {
    /// `totalresults`: records matching the filters.
    pub total_results: u64,
    /// `startnumber`
    pub start_number: u64,
    /// `numreturned`
    pub num_returned: u64,
    /// The records.
    pub items: Vec<T>,
}

/// A `GetClientsProducts` reply, its envelope fields included, so a success page is checked
/// and read in one pass over its bytes (`reply::check_one_pass`). The envelope fields are those
/// of the envelope check, so a reply with one of them twice fails both readings alike.
#[derive(Deserialize)]
#[serde(bound(deserialize = "T: serde::de::DeserializeOwned"))]
pub(crate) struct ProductsEnvelope<T = Service> {
    #[serde(default)]
    pub(crate) result: Option<serde_json::Value>,
    #[serde(default)]
    pub(crate) status: Option<serde_json::Value>,
    #[serde(default, rename = "message")]
    _message: Option<serde::de::IgnoredAny>,
    #[serde(default, rename = "warning")]
    _warning: Option<serde::de::IgnoredAny>,
    #[serde(default, rename = "error")]
    _error: Option<serde::de::IgnoredAny>,
    #[serde(
        rename = "totalresults",
        deserialize_with = "lenient::u64_any",
        default
    )]
    pub(crate) total_results: u64,
    #[serde(rename = "startnumber", deserialize_with = "lenient::u64_any", default)]
    pub(crate) start_number: u64,
    #[serde(rename = "numreturned", deserialize_with = "lenient::u64_any", default)]
    pub(crate) num_returned: u64,
    #[serde(deserialize_with = "lenient::nested_list", default)]
    pub(crate) products: Vec<T>,
}

/// A line item of an order (`lineitems.lineitem[]`).
#[derive(Debug, Clone, Deserialize)]
pub struct LineItem {
    /// `product`, `domain`, `addon`, ...
    #[serde(rename = "type", deserialize_with = "lenient::string_any", default)]
    pub kind: String,
    /// `relid`: the service id for product lines.
    #[serde(rename = "relid", deserialize_with = "lenient::u64_any", default)]
    pub rel_id: u64,
    /// Product name.
    #[serde(deserialize_with = "lenient::string_any", default)]
    pub product: String,
    /// Domain.
    #[serde(deserialize_with = "lenient::string_any", default)]
    pub domain: String,
    /// Billing cycle.
    #[serde(
        rename = "billingcycle",
        deserialize_with = "lenient::string_any",
        default
    )]
    pub billing_cycle: String,
    /// Amount as text.
    #[serde(deserialize_with = "lenient::string_any", default)]
    pub amount: String,
    /// Item status.
    #[serde(deserialize_with = "lenient::string_any", default)]
    pub status: String,
}

/// An order from `GetOrders`.
#[derive(Debug, Clone, Deserialize)]
pub struct Order {
    /// Order id.
    #[serde(deserialize_with = "lenient::u64_any", default)]
    pub id: u64,
    /// Order number.
    #[serde(rename = "ordernum", deserialize_with = "lenient::string_any", default)]
    pub order_number: String,
    /// Client id.
    #[serde(rename = "userid", deserialize_with = "lenient::u64_any", default)]
    pub client_id: u64,
    /// `Pending`, `Active`, `Fraud`, `Cancelled`, ...
    #[serde(deserialize_with = "lenient::string_any", default)]
    pub status: String,
    /// Gateway.
    #[serde(
        rename = "paymentmethod",
        deserialize_with = "lenient::string_any",
        default
    )]
    pub payment_method: String,
    /// Invoice id, if any.
    #[serde(rename = "invoiceid", deserialize_with = "lenient::opt_id", default)]
    pub invoice_id: Option<u64>,
    /// Amount as text.
    #[serde(deserialize_with = "lenient::string_any", default)]
    pub amount: String,
    /// Order date as text.
    #[serde(deserialize_with = "lenient::string_any", default)]
    pub date: String,
    /// `lineitems.lineitem[]`
    #[serde(
        rename = "lineitems",
        deserialize_with = "lenient::nested_list",
        default
    )]
    pub line_items: Vec<LineItem>,
}

impl Order {
    /// Whether the order is `Active` (accepted).
    pub fn is_active(&self) -> bool {
        self.status.eq_ignore_ascii_case("active")
    }

    /// Service ids of the product lines.
    pub fn service_ids(&self) -> Vec<u64> {
        self.line_items
            .iter()
            .filter(|l| l.kind.eq_ignore_ascii_case("product") && l.rel_id != 0)
            .map(|l| l.rel_id)
            .collect()
    }
}

#[derive(Deserialize)]
pub(crate) struct OrdersEnvelope {
    #[serde(
        rename = "totalresults",
        deserialize_with = "lenient::u64_any",
        default
    )]
    pub(crate) total_results: u64,
    #[serde(rename = "startnumber", deserialize_with = "lenient::u64_any", default)]
    pub(crate) start_number: u64,
    #[serde(rename = "numreturned", deserialize_with = "lenient::u64_any", default)]
    pub(crate) num_returned: u64,
    #[serde(deserialize_with = "lenient::nested_list", default)]
    pub(crate) orders: Vec<Order>,
}

/// What `AddOrder` created.
///
/// WHMCS names the service ids `serviceids` (since 7.8) and still sends the same list under the
/// legacy key `productids`; either or both may be present. Both are read: `serviceids` wins, and
/// a reply where the two disagree is refused (it cannot be trusted as the order's services).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawPlacedOrder")]
pub struct PlacedOrder {
    /// The new order's id.
    pub order_id: u64,
    /// Service ids, one per product line (`serviceids`, or the legacy `productids`).
    pub service_ids: Vec<u64>,
    /// Addon ids.
    pub addon_ids: Vec<u64>,
    /// Domain ids.
    pub domain_ids: Vec<u64>,
    /// Invoice id, if one was made.
    pub invoice_id: Option<u64>,
}

/// The `AddOrder` reply as sent, both service id keys kept apart.
#[derive(Deserialize)]
struct RawPlacedOrder {
    #[serde(rename = "orderid", deserialize_with = "lenient::u64_any")]
    order_id: u64,
    #[serde(rename = "serviceids", deserialize_with = "some_id_list", default)]
    service_ids: Option<Vec<u64>>,
    #[serde(rename = "productids", deserialize_with = "some_id_list", default)]
    product_ids: Option<Vec<u64>>,
    #[serde(rename = "addonids", deserialize_with = "lenient::id_list", default)]
    addon_ids: Vec<u64>,
    #[serde(rename = "domainids", deserialize_with = "lenient::id_list", default)]
    domain_ids: Vec<u64>,
    #[serde(rename = "invoiceid", deserialize_with = "lenient::opt_id", default)]
    invoice_id: Option<u64>,
}

fn some_id_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<u64>>, D::Error> {
    lenient::id_list(d).map(Some)
}

impl TryFrom<RawPlacedOrder> for PlacedOrder {
    type Error = String;

    fn try_from(raw: RawPlacedOrder) -> Result<Self, String> {
        let service_ids = match (raw.service_ids, raw.product_ids) {
            (Some(services), Some(products)) if services != products => {
                return Err(format!(
                    "serviceids ({} ids) and productids ({} ids) disagree",
                    services.len(),
                    products.len()
                ));
            }
            (Some(ids), _) | (None, Some(ids)) => ids,
            (None, None) => Vec::new(),
        };
        Ok(PlacedOrder {
            order_id: raw.order_id,
            service_ids,
            addon_ids: raw.addon_ids,
            domain_ids: raw.domain_ids,
            invoice_id: raw.invoice_id,
        })
    }
}

#[derive(Deserialize)]
pub(crate) struct ClientDetailsEnvelope {
    pub(crate) client: Option<ClientDetails>,
}

#[derive(Deserialize)]
pub(crate) struct AddClientEnvelope {
    #[serde(rename = "clientid", deserialize_with = "lenient::u64_any")]
    pub(crate) client_id: u64,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::encoding::php_serialize;
    use serde_json::json;

    fn body_of(order: &NewOrder) -> Vec<(String, String)> {
        let mut body = FormBody::new();
        order.write_form("banktransfer", &mut body);
        body.pairs().to_vec()
    }

    #[test]
    fn one_line_order_uses_index_zero_everywhere() {
        let mut line = OrderLine::new(5, "monthly");
        line.custom_fields = CustomFields::new().with(1, "Google");
        let pairs = body_of(&NewOrder::new(9, vec![line]));
        let text: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        expect_test::expect![[r#"
            [
                "clientid=9",
                "paymentmethod=banktransfer",
                "pid[0]=5",
                "billingcycle[0]=monthly",
                "customfields[0]=YToxOntpOjE7czo2OiJHb29nbGUiO30=",
            ]
        "#]]
        .assert_debug_eq(&text);
    }

    #[test]
    fn optional_arrays_cover_every_line() {
        let mut first = OrderLine::new(1, "monthly");
        first.domain = Some("a.example".into());
        let mut second = OrderLine::new(2, "annually");
        second.config_options = ConfigOptions::new().with(3, ConfigOptionValue::Quantity(15));
        let mut order = NewOrder::new(9, vec![first, second]);
        order.no_email = true;
        let pairs = body_of(&order);
        let names: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "clientid",
                "paymentmethod",
                "pid[0]",
                "billingcycle[0]",
                "domain[0]",
                "configoptions[0]",
                "pid[1]",
                "billingcycle[1]",
                "domain[1]",
                "configoptions[1]",
                "noemail"
            ]
        );
        // an empty PHP array for the line without options, `a:1:{i:3;i:15;}` for the other
        assert_eq!(pairs[5].1, "YTowOnt9");
        assert_eq!(pairs[9].1, "YToxOntpOjM7aToxNTt9");
        assert_eq!(pairs[10].1, "1");
    }

    #[test]
    fn debug_hides_option_values_and_personal_data() {
        let options = ConfigOptions::new().with(
            4,
            ConfigOptionValue::Text(SecretString::from("s3cr3t-root".to_owned())),
        );
        let shown = format!("{options:?}");
        assert!(shown.contains('4') && !shown.contains("s3cr3t"), "{shown}");
        let client = NewClient {
            email: "jane@example.com".into(),
            first_name: "Jane".into(),
            ..NewClient::default()
        };
        let shown = format!("{client:?}");
        assert!(
            !shown.contains("jane") && !shown.contains("Jane"),
            "{shown}"
        );
    }

    #[test]
    fn config_options_from_salesforce_json() {
        let options = ConfigOptions::from_json(&json!({
            "4": "s3cr3t", "5": 51, "6": {"optionid": 61, "qty": 2.0}, "7": true, "8": null
        }))
        .unwrap();
        assert_eq!(
            options.0.keys().copied().collect::<Vec<_>>(),
            vec![4, 5, 6, 7]
        );
        assert_eq!(
            php_serialize(&options.to_php()),
            r#"a:4:{i:4;s:6:"s3cr3t";i:5;i:51;i:6;a:2:{s:8:"optionid";i:61;s:3:"qty";i:2;}i:7;b:1;}"#
        );
        for bad in [
            json!({"x": 1}),
            json!({"4": 1.5}),
            json!({"4": [1]}),
            json!([1]),
            json!({"4": {"qty": 1}}),
        ] {
            let err = ConfigOptions::from_json(&bad).unwrap_err();
            assert_eq!(err.class(), crate::ErrorClass::Configuration);
        }
        let err = ConfigOptions::from_json(&json!({"4": -3})).unwrap_err();
        assert!(!err.to_string().contains("-3"), "{err}");
    }

    #[test]
    fn placed_order_reads_strings_and_lists() {
        let placed: PlacedOrder = serde_json::from_value(json!({
            "result": "success", "orderid": "1", "serviceids": "1,2",
            "addonids": "", "domainids": "", "invoiceid": 0
        }))
        .unwrap();
        assert_eq!(
            placed,
            PlacedOrder {
                order_id: 1,
                service_ids: vec![1, 2],
                addon_ids: vec![],
                domain_ids: vec![],
                invoice_id: None
            }
        );
        let legacy: PlacedOrder =
            serde_json::from_value(json!({"orderid": 3, "productids": "7", "invoiceid": "12"}))
                .unwrap();
        assert_eq!(legacy.service_ids, vec![7]);
        assert_eq!(legacy.invoice_id, Some(12));
    }

    #[test]
    fn placed_order_reads_serviceids_beside_the_legacy_productids() {
        // What WHMCS sends: both keys, the same list.
        let both: PlacedOrder = serde_json::from_value(json!({
            "result": "success", "orderid": 9, "serviceids": "4,5", "productids": "4,5",
            "addonids": "", "domainids": "", "invoiceid": 0
        }))
        .unwrap();
        assert_eq!((both.order_id, both.service_ids), (9, vec![4, 5]));
        // Either key alone, and neither.
        for key in ["serviceids", "productids"] {
            let one: PlacedOrder = serde_json::from_value(json!({"orderid": 9, key: "6"})).unwrap();
            assert_eq!(one.service_ids, vec![6], "{key}");
        }
        let none: PlacedOrder = serde_json::from_value(json!({"orderid": 9})).unwrap();
        assert!(none.service_ids.is_empty());
        // Disagreeing lists are not trusted.
        let err = serde_json::from_value::<PlacedOrder>(
            json!({"orderid": 9, "serviceids": "4,5", "productids": "4"}),
        )
        .unwrap_err();
        assert!(err.to_string().contains("disagree"), "{err}");
    }

    #[test]
    fn products_page_reads_mixed_types_and_empty_lists() {
        let page: ProductsEnvelope = serde_json::from_value(json!({
            "result": "success", "totalresults": "2", "startnumber": 0, "numreturned": 2,
            "products": {"product": [
                {"id": 1, "clientid": "4", "orderid": 9, "pid": "5", "status": "Active",
                 "customfields": {"customfield": [{"id": "8", "name": "Ref", "value": "801xx"}]},
                 "configoptions": {"configoption": [{"id": 3, "option": "Root", "type": "text", "value": "pw"}]},
                 "password": "never-read", "unknown": {"x": 1}},
                {"id": "2", "customfields": "", "configoptions": ""}
            ]}
        }))
        .unwrap();
        assert_eq!(page.total_results, 2);
        assert_eq!(page.products.len(), 2);
        assert_eq!(page.products[0].client_id, 4);
        assert_eq!(page.products[0].custom_field(8), Some("801xx"));
        assert_eq!(page.products[1].custom_fields.len(), 0);
        assert!(!format!("{:?}", page.products[0]).contains("pw\""));
        let empty: ProductsEnvelope =
            serde_json::from_value(json!({"totalresults": 0, "numreturned": 0, "products": ""}))
                .unwrap();
        assert!(empty.products.is_empty());
    }

    #[test]
    fn orders_page_reads_line_items() {
        let page: OrdersEnvelope = serde_json::from_value(json!({
            "totalresults": 1, "startnumber": 0, "numreturned": 1,
            "orders": {"order": [{"id": 1, "ordernum": 123, "userid": 4, "status": "Active",
                "invoiceid": 0, "lineitems": {"lineitem": [
                    {"type": "product", "relid": 1, "product": "VPS"},
                    {"type": "product", "relid": "2"}]}}]}
        }))
        .unwrap();
        assert_eq!(page.orders[0].service_ids(), vec![1, 2]);
        assert!(page.orders[0].is_active());
        assert_eq!(page.orders[0].order_number, "123");
    }

    #[test]
    fn client_details_statuses() {
        let env: ClientDetailsEnvelope = serde_json::from_value(json!({
            "client": {"id": 4, "client_id": "4", "userid": 4, "status": "Closed",
                "customfields": [], "email_verified": "on"}
        }))
        .unwrap();
        let client = env.client.unwrap();
        assert_eq!(client.id, 4);
        assert_eq!(client.status, ClientStatus::Closed);
        assert!(!client.is_active());
        assert!(client.email_verified);
    }
}
