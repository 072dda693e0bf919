//! The alert webhook's JSON body, with details that can only hold ids and addresses.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use serde::{Serialize, Serializer};

/// What an alert is about. The serialized names are **stable**: receivers filter on them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AlertKind {
    /// Many failed bearer-token checks from one IP address.
    AuthFailureBurst,
    /// Many 404s on the status API for one customer: someone probing order ids.
    StatusEnumeration,
    /// One key (customer or IP) keeps hitting its rate limit.
    RateLimitAbuse,
    /// A MAC, AEAD tag or key unwrap failed: data was tampered with or the key is wrong.
    IntegrityFailure,
    /// An event arrived for an Order that is not approved or not the event's customer's.
    UnapprovedOrderEvent,
    /// One customer's orders keep failing to provision.
    RepeatedProvisioningFailure,
    /// An Order left the approved status while its job was running: the job stopped before
    /// its next WHMCS write (any WHMCS order already added is left Pending, named in details).
    ApprovalWithdrawn,
    /// WHMCS accepted an order but writing the result back to Salesforce keeps failing.
    WritebackStuck,
    /// The first services ordered of a product do not carry the Salesforce Order Id in the
    /// product's external-ref custom field (a wrong `WHMCS_ORDER_REF_FIELD_ID` entry, or an
    /// admin-only field the WHMCS version does not save): an unknown AddOrder outcome of that
    /// product cannot be looked up.
    RefFieldNotStored,
    /// The audit chain's head (sequence number and MAC), published on start, every
    /// `AUDIT_WITNESS_INTERVAL` and on shutdown, so a copy outside the database can later show
    /// a truncated, wiped or rolled-back chain (`audit verify --expect-head`). Never
    /// deduplicated.
    AuditHead,
}

impl AlertKind {
    /// Every kind, in a fixed order.
    pub const ALL: [Self; 10] = [
        Self::AuthFailureBurst,
        Self::StatusEnumeration,
        Self::RateLimitAbuse,
        Self::IntegrityFailure,
        Self::UnapprovedOrderEvent,
        Self::RepeatedProvisioningFailure,
        Self::ApprovalWithdrawn,
        Self::WritebackStuck,
        Self::RefFieldNotStored,
        Self::AuditHead,
    ];

    /// The stable snake_case name used in the `alert` field.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::AuthFailureBurst => "auth_failure_burst",
            Self::StatusEnumeration => "status_enumeration",
            Self::RateLimitAbuse => "rate_limit_abuse",
            Self::IntegrityFailure => "integrity_failure",
            Self::UnapprovedOrderEvent => "unapproved_order_event",
            Self::RepeatedProvisioningFailure => "repeated_provisioning_failure",
            Self::ApprovalWithdrawn => "approval_withdrawn",
            Self::WritebackStuck => "writeback_stuck",
            Self::RefFieldNotStored => "ref_field_not_stored",
            Self::AuditHead => "audit_head",
        }
    }

    /// The severity every alert of this kind carries.
    pub const fn severity(self) -> Severity {
        match self {
            Self::RateLimitAbuse | Self::AuditHead => Severity::Low,
            Self::AuthFailureBurst
            | Self::StatusEnumeration
            | Self::RepeatedProvisioningFailure
            | Self::ApprovalWithdrawn => Severity::Medium,
            Self::IntegrityFailure
            | Self::UnapprovedOrderEvent
            | Self::WritebackStuck
            | Self::RefFieldNotStored => Severity::High,
        }
    }
}

impl fmt::Display for AlertKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How urgent an alert is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Worth a look.
    Low,
    /// Probably an attack or a broken integration.
    Medium,
    /// Act now.
    High,
}

/// Which integrity check failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum IntegrityCheck {
    /// An encrypted field failed to decrypt (AES-GCM tag mismatch).
    FieldDecrypt,
    /// A wrapped data key failed to unwrap.
    KeyUnwrap,
    /// An audit record's chain MAC did not verify.
    AuditMac,
}

/// A record's place in an audit log of several chains: `SEQ` in chain 0, `CHAIN.SEQ` in
/// another.
pub fn chain_position(chain: u32, seq: u64) -> String {
    if chain == 0 {
        seq.to_string()
    } else {
        format!("{chain}.{seq}")
    }
}

/// An identifier that is safe to put in an alert: at most 64 characters of `A-Z a-z 0-9 . _ : -`.
///
/// Order ids, customer numbers, event ids and key ids all fit. Anything else (an e-mail address,
/// a name with a space, a secret with `+/=`) is replaced by `[redacted]` when the id is built, so
/// PII cannot reach a webhook by mistake.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Id(String);

impl Id {
    /// Longest id kept.
    pub const MAX_LEN: usize = 64;
    /// What replaces a value that is not id-shaped.
    pub const REDACTED: &'static str = "[redacted]";

    /// The id, or [`Id::REDACTED`] when `value` is not id-shaped.
    pub fn new(value: impl AsRef<str>) -> Self {
        Self::try_new(value).unwrap_or_else(|| Self(Self::REDACTED.to_owned()))
    }

    /// The id, or `None` when `value` is not id-shaped.
    pub fn try_new(value: impl AsRef<str>) -> Option<Self> {
        let value = value.as_ref();
        let ok = !value.is_empty()
            && value.len() <= Self::MAX_LEN
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
        ok.then(|| Self(value.to_owned()))
    }

    /// The id's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for Id {
    fn from(value: &str) -> Self {
        Self::new(value)
    }
}

impl From<String> for Id {
    fn from(value: String) -> Self {
        Self::new(value)
    }
}

/// Who or what an alert is about: the key detectors count by and alerts are deduplicated by.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Subject {
    /// A client address.
    Ip(IpAddr),
    /// A customer number.
    Customer(Id),
    /// A Salesforce Order Id.
    Order(Id),
    /// An integrity check.
    Integrity(IntegrityCheck),
    /// A WHMCS product (`pid`).
    Product(u64),
    /// The audit chain.
    AuditChain,
}

impl Subject {
    /// A client address, IPv4-mapped IPv6 folded to IPv4 so one client has one key.
    pub fn ip(addr: IpAddr) -> Self {
        Self::Ip(addr.to_canonical())
    }

    /// A customer number.
    pub fn customer(number: impl AsRef<str>) -> Self {
        Self::Customer(Id::new(number))
    }

    /// Details naming this subject.
    pub fn details(&self) -> Details {
        let details = Details::new();
        match self {
            Self::Ip(ip) => details.ip(*ip),
            Self::Customer(id) => details.customer_number(id.clone()),
            Self::Order(id) => details.order_id(id.clone()),
            Self::Integrity(check) => details.check(*check),
            Self::Product(pid) => details.whmcs_product_id(*pid),
            Self::AuditChain => details,
        }
    }
}

impl From<IpAddr> for Subject {
    fn from(addr: IpAddr) -> Self {
        Self::ip(addr)
    }
}

/// The keys `details` may carry: ids and addresses only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DetailKey {
    /// A client IP address.
    Ip,
    /// A Salesforce Order Id.
    OrderId,
    /// A customer number.
    CustomerNumber,
    /// A Pub/Sub event id.
    EventId,
    /// A data key id.
    KeyId,
    /// The integrity check that failed.
    Check,
    /// A WHMCS order id.
    WhmcsOrderId,
    /// A WHMCS product id (`pid`).
    WhmcsProductId,
    /// A WHMCS custom field id.
    WhmcsFieldId,
    /// An audit record's sequence number.
    AuditSeq,
    /// An audit record's chain MAC (hex).
    AuditMac,
}

/// A value in `details`: built only through [`Details`]' typed setters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
#[non_exhaustive]
pub enum DetailValue {
    /// An IP address.
    Ip(IpAddr),
    /// An id (already sanitised).
    Id(Id),
    /// An integrity check.
    Check(IntegrityCheck),
}

/// The `details` object of an alert. Its keys are [`DetailKey`]s and its values are typed, so
/// only ids and addresses can be put in: there is no free-text entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Details(BTreeMap<DetailKey, DetailValue>);

impl Details {
    /// No details.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `ip` (IPv4-mapped IPv6 shown as IPv4).
    pub fn ip(mut self, ip: IpAddr) -> Self {
        self.0
            .insert(DetailKey::Ip, DetailValue::Ip(ip.to_canonical()));
        self
    }

    /// Sets `order_id`.
    pub fn order_id(mut self, id: impl Into<Id>) -> Self {
        self.0
            .insert(DetailKey::OrderId, DetailValue::Id(id.into()));
        self
    }

    /// Sets `customer_number`.
    pub fn customer_number(mut self, id: impl Into<Id>) -> Self {
        self.0
            .insert(DetailKey::CustomerNumber, DetailValue::Id(id.into()));
        self
    }

    /// Sets `event_id`.
    pub fn event_id(mut self, id: impl Into<Id>) -> Self {
        self.0
            .insert(DetailKey::EventId, DetailValue::Id(id.into()));
        self
    }

    /// Sets `audit_seq` and `audit_mac`: an audit chain head.
    pub fn audit_head(self, seq: u64, mac_hex: &str) -> Self {
        self.audit_chain_head(0, seq, mac_hex)
    }

    /// Sets `audit_seq` and `audit_mac`: the head of audit chain `chain` of a log kept as
    /// several chains. `audit_seq` is `SEQ` for chain 0 and `CHAIN.SEQ` for the others.
    pub fn audit_chain_head(mut self, chain: u32, seq: u64, mac_hex: &str) -> Self {
        self.0.insert(
            DetailKey::AuditSeq,
            DetailValue::Id(Id::new(chain_position(chain, seq))),
        );
        self.0
            .insert(DetailKey::AuditMac, DetailValue::Id(Id::new(mac_hex)));
        self
    }

    /// Sets `audit_seq` alone: the audit record a check is about.
    pub fn audit_seq(self, seq: u64) -> Self {
        self.audit_chain_seq(0, seq)
    }

    /// Sets `audit_seq` alone, for a record of audit chain `chain` (`CHAIN.SEQ` unless the
    /// chain is 0).
    pub fn audit_chain_seq(mut self, chain: u32, seq: u64) -> Self {
        self.0.insert(
            DetailKey::AuditSeq,
            DetailValue::Id(Id::new(chain_position(chain, seq))),
        );
        self
    }

    /// Sets `key_id`.
    pub fn key_id(mut self, id: impl Into<Id>) -> Self {
        self.0.insert(DetailKey::KeyId, DetailValue::Id(id.into()));
        self
    }

    /// Sets `whmcs_order_id`.
    pub fn whmcs_order_id(mut self, id: impl Into<Id>) -> Self {
        self.0
            .insert(DetailKey::WhmcsOrderId, DetailValue::Id(id.into()));
        self
    }

    /// Sets `whmcs_product_id`.
    pub fn whmcs_product_id(mut self, pid: u64) -> Self {
        self.0.insert(
            DetailKey::WhmcsProductId,
            DetailValue::Id(Id::new(pid.to_string())),
        );
        self
    }

    /// Sets `whmcs_field_id`.
    pub fn whmcs_field_id(mut self, field_id: u64) -> Self {
        self.0.insert(
            DetailKey::WhmcsFieldId,
            DetailValue::Id(Id::new(field_id.to_string())),
        );
        self
    }

    /// Sets `check`.
    pub fn check(mut self, check: IntegrityCheck) -> Self {
        self.0.insert(DetailKey::Check, DetailValue::Check(check));
        self
    }

    /// Adds every entry of `other`, overwriting equal keys.
    pub fn merge(mut self, other: Details) -> Self {
        self.0.extend(other.0);
        self
    }

    /// The value under `key`.
    pub fn get(&self, key: DetailKey) -> Option<&DetailValue> {
        self.0.get(&key)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// `true` when there are no entries.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A security alert, serialized as the webhook's JSON body (a contract with whoever receives
/// it): `{"alert", "severity", "at", "count", "windowSeconds", "details"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    /// Stable snake_case type.
    #[serde(rename = "alert")]
    pub kind: AlertKind,
    /// Severity, from the kind.
    pub severity: Severity,
    /// When the alert was raised (RFC 3339, UTC, whole milliseconds).
    #[serde(serialize_with = "rfc3339")]
    pub at: DateTime<Utc>,
    /// How many events it stands for (aggregated over duplicates).
    pub count: u64,
    /// The detector window the count was taken over, in seconds.
    pub window_seconds: u64,
    /// Ids and addresses only.
    pub details: Details,
    /// The deduplication key; not serialized.
    #[serde(skip)]
    pub subject: Subject,
}

impl Alert {
    /// An alert raised now; severity follows from `kind`.
    pub fn new(
        kind: AlertKind,
        subject: Subject,
        count: u64,
        window: Duration,
        details: Details,
    ) -> Self {
        Self {
            kind,
            severity: kind.severity(),
            at: now_millis(),
            count,
            window_seconds: window.as_secs(),
            details,
            subject,
        }
    }

    /// The JSON body the webhook receives.
    pub fn to_json(&self) -> String {
        // Serializing this type cannot fail: no maps with non-string keys, no fallible
        // serializers. Fall back to a minimal body rather than panicking.
        serde_json::to_string(self)
            .unwrap_or_else(|_| format!(r#"{{"alert":"{}","severity":"high"}}"#, self.kind))
    }
}

/// Now, truncated to the milliseconds the JSON carries, so an alert equals its serialized form.
pub(crate) fn now_millis() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(3)
}

fn rfc3339<S: Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&at.to_rfc3339_opts(SecondsFormat::Millis, true))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use chrono::TimeZone;
    use expect_test::expect;

    use super::*;

    #[test]
    fn json_is_the_contract() {
        let mut alert = Alert::new(
            AlertKind::StatusEnumeration,
            Subject::customer("C-000123"),
            20,
            Duration::from_secs(60),
            Details::new()
                .customer_number("C-000123")
                .ip("::ffff:203.0.113.9".parse().unwrap())
                .order_id("801xx000003DIoZAAW"),
        );
        alert.at = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
        expect![[r#"{"alert":"status_enumeration","severity":"medium","at":"2026-01-02T03:04:05.000Z","count":20,"windowSeconds":60,"details":{"ip":"203.0.113.9","order_id":"801xx000003DIoZAAW","customer_number":"C-000123"}}"#]]
            .assert_eq(&alert.to_json());
    }

    #[test]
    fn every_kind_has_a_stable_name_and_severity() {
        let names: Vec<String> = AlertKind::ALL
            .iter()
            .map(|k| format!("{}={}", k, serde_json::to_value(k.severity()).unwrap()))
            .collect();
        expect![[r#"auth_failure_burst="medium" status_enumeration="medium" rate_limit_abuse="low" integrity_failure="high" unapproved_order_event="high" repeated_provisioning_failure="medium" approval_withdrawn="medium" writeback_stuck="high" ref_field_not_stored="high" audit_head="low""#]]
            .assert_eq(&names.join(" "));
        for k in AlertKind::ALL {
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
        }
    }

    #[test]
    fn ids_reject_pii_shapes() {
        for ok in [
            "C-1",
            "801xx000003DIoZAAW",
            "0f8fad5b-d9cb-469f-a165-70867728950e",
            "k:2026.01_a",
        ] {
            assert_eq!(Id::new(ok).as_str(), ok);
        }
        for bad in [
            "jane@example.com",
            "Jane Doe",
            "",
            "abc+/=",
            "x".repeat(65).as_str(),
            "ünï",
        ] {
            assert_eq!(Id::new(bad).as_str(), Id::REDACTED, "{bad}");
            assert!(Id::try_new(bad).is_none());
        }
        let details = Details::new().customer_number("jane@example.com");
        assert_eq!(
            serde_json::to_string(&details).unwrap(),
            r#"{"customer_number":"[redacted]"}"#
        );
    }

    #[test]
    fn subject_folds_mapped_ipv6() {
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(
            Subject::ip(mapped),
            Subject::Ip("10.1.2.3".parse().unwrap())
        );
    }
}
