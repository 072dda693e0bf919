//! Typed audit records, and the rules that keep PII out of them.
//!
//! # The no-PII rule
//!
//! The audit log holds identifiers and outcomes, never personal data. The types make
//! that the path of least resistance rather than a matter of discipline:
//!
//! - There is no free-text field. [`Actor`] and [`Action`] are snake_case tokens
//!   (`[a-z][a-z0-9_]*`, at most 64 bytes) — they name *kinds* of things, not people.
//! - The subject is identified only by [`SubjectId`]s (Salesforce Order Id, customer number):
//!   1..=64 bytes of `[A-Za-z0-9._:-]`, so no spaces (names, addresses) and no `@` (emails).
//! - [`Details`] keys come from the closed [`DetailKey`] allow-list, and every key has a value
//!   *shape*: numbers, comma-separated number lists, IP addresses, 256-bit hex MACs, RFC 3339
//!   times, or short code tokens (1..=128 bytes of `[A-Za-z0-9._:/+=-]`, again no spaces or
//!   `@`). A name, e-mail address, postal address or card number does not fit any shape that
//!   would accept it by accident (a card number would need a numeric key; none of those is for
//!   card data, and reviewers should keep it so).
//! - Validation runs in constructors *and* in deserialisation, so a record read back from storage
//!   obeys the same rules. Error messages name the field and the rule, never the rejected value.
//!
//! Adding a [`DetailKey`] is the one place where a reviewer must ask "can this carry PII?".

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::key::Mac;

const MAX_NAME_LEN: usize = 64;
const MAX_SUBJECT_LEN: usize = 64;
const MAX_TOKEN_LEN: usize = 128;
const MAX_NUMBER_LEN: usize = 20;
const MAX_NUMBER_LIST_LEN: usize = 1024;
const MAX_TIMESTAMP_LEN: usize = 40;

fn check_name(field: &'static str, s: &str) -> Result<()> {
    let invalid = |reason| Error::InvalidField { field, reason };
    if s.is_empty() {
        return Err(invalid("must not be empty"));
    }
    if s.len() > MAX_NAME_LEN {
        return Err(invalid("longer than 64 bytes"));
    }
    let mut bytes = s.bytes();
    if !bytes.next().is_some_and(|b| b.is_ascii_lowercase()) {
        return Err(invalid("must start with a lowercase ascii letter"));
    }
    if !bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
        return Err(invalid(
            "must be snake_case: lowercase ascii letters, digits and `_`",
        ));
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $ty:ident, $field:literal, { $($(#[$cdoc:meta])* $c:ident = $v:literal,)* }) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
        #[serde(try_from = "String")]
        pub struct $ty(Cow<'static, str>);

        // By reference: serde's `into` would clone the name for every record written.
        impl Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl $ty {
            $( $(#[$cdoc])* pub const $c: $ty = $ty(Cow::Borrowed($v)); )*

            /// Validates a snake_case name (`[a-z][a-z0-9_]*`, at most 64 bytes).
            pub fn new(name: impl Into<String>) -> Result<Self> {
                let name = name.into();
                check_name($field, &name)?;
                Ok($ty(Cow::Owned(name)))
            }

            /// The name as written to storage and into the canonical bytes.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $ty {
            type Error = Error;
            fn try_from(s: String) -> Result<Self> {
                $ty::new(s)
            }
        }

        impl From<$ty> for String {
            fn from(v: $ty) -> String {
                v.0.into_owned()
            }
        }

        impl FromStr for $ty {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                $ty::new(s)
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($ty), &*self.0)
            }
        }
    };
}

name_type!(
    /// Who (which component or role) did something: a snake_case token, never a person's name.
    ///
    /// The constants cover the product's components; [`Actor::new`] accepts any other valid
    /// snake_case name (e.g. an operator command), so new actors need no release of this crate.
    Actor, "actor", {
        /// The workflow engine (provisioner-core).
        ENGINE = "engine",
        /// The Pub/Sub subscriber.
        SUBSCRIBER = "subscriber",
        /// A job worker.
        WORKER = "worker",
        /// The periodic reconcile sweep.
        RECONCILER = "reconciler",
        /// An operator command (`provisioner keys rotate`, `dlq retry`, ...).
        OPERATOR = "operator",
        /// Retention (`provisioner audit purge` or the scheduled purge).
        RETENTION = "retention",
        /// The suspicious-activity detectors.
        SECURITY = "security",
        /// Key management (rotation, re-encryption).
        KEY_MANAGER = "key_manager",
        /// The portal's order intake (`POST /v1/orders`).
        PORTAL = "portal",
    }
);

name_type!(
    /// What happened: a snake_case token.
    ///
    /// The constants are the actions the product records; [`Action::new`] accepts other valid
    /// snake_case names. The stored form is the name, so renaming a constant's *value* would
    /// change what new records say (old records keep verifying: the MAC covers their stored name).
    Action, "action", {
        /// A platform event was received and stored in the inbox.
        EVENT_RECEIVED = "event_received",
        /// A platform event was a duplicate of one already stored.
        EVENT_DUPLICATE = "event_duplicate",
        /// An event or order was refused (not approved, customer mismatch, inactive client).
        ORDER_REFUSED = "order_refused",
        /// A workflow step succeeded.
        STEP_SUCCEEDED = "step_succeeded",
        /// A workflow step failed (outcome says retry, failed or unknown).
        STEP_FAILED = "step_failed",
        /// The order was provisioned.
        ORDER_PROVISIONED = "order_provisioned",
        /// The order failed permanently.
        ORDER_FAILED = "order_failed",
        /// A job went to the dead-letter table.
        DEAD_LETTERED = "dead_lettered",
        /// An operator retried a dead letter.
        DEAD_LETTER_RETRIED = "dead_letter_retried",
        /// An operator discarded a dead letter.
        DEAD_LETTER_DISCARDED = "dead_letter_discarded",
        /// A refused or failed job was reopened (a new event, the reconcile sweep or an
        /// operator found its Order approved again).
        JOB_REOPENED = "job_reopened",
        /// The reconcile sweep enqueued an approved order that had no job.
        RECONCILE_ENQUEUED = "reconcile_enqueued",
        /// A new data key was created and became primary.
        KEY_ROTATED = "key_rotated",
        /// Stored fields were re-encrypted under the primary key.
        KEYS_REENCRYPTED = "keys_reencrypted",
        /// A security alert was raised.
        ALERT_RAISED = "alert_raised",
        /// An order intake request ended: the Order created (success), refused (a rule, the
        /// caller's input) or failed; the Order Id when there is one, never a submitted value.
        ORDER_INTAKE = "order_intake",
        /// Retention removed old records; written by every purge (see [`crate::purge_record`]).
        RETENTION_PURGE = "retention_purge",
    }
);

/// How it ended, classified by what it means for the order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It worked.
    Success,
    /// Refused by a rule (not an error: e.g. the order is not approved).
    Refused,
    /// Failed permanently.
    Failed,
    /// Failed transiently; will be retried.
    Retry,
    /// Outcome not known (e.g. a timeout on a non-idempotent call); reconcile before retrying.
    Unknown,
}

impl Outcome {
    /// The stored name (also used in the canonical bytes).
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Refused => "refused",
            Outcome::Failed => "failed",
            Outcome::Retry => "retry",
            Outcome::Unknown => "unknown",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An identifier of the record's subject (Salesforce Order Id, customer number):
/// 1..=64 bytes of `[A-Za-z0-9._:-]`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct SubjectId(String);

impl Serialize for SubjectId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl SubjectId {
    /// Validates an identifier.
    pub fn new(id: impl Into<String>) -> Result<Self> {
        Self::for_field("subject id", id.into())
    }

    fn for_field(field: &'static str, id: String) -> Result<Self> {
        let invalid = |reason| Error::InvalidField { field, reason };
        if id.is_empty() {
            return Err(invalid("must not be empty"));
        }
        if id.len() > MAX_SUBJECT_LEN {
            return Err(invalid("longer than 64 bytes"));
        }
        if !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
        {
            return Err(invalid(
                "only ascii letters, digits and `._:-` are allowed (ids, never names)",
            ));
        }
        Ok(SubjectId(id))
    }

    /// The identifier.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for SubjectId {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        SubjectId::new(s)
    }
}

impl From<SubjectId> for String {
    fn from(v: SubjectId) -> String {
        v.0
    }
}

impl fmt::Display for SubjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SubjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SubjectId({:?})", self.0)
    }
}

/// The shape a detail value must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// 1..=20 ascii digits.
    Number,
    /// Numbers separated by single commas (`12,13`), at most 1024 bytes.
    NumberList,
    /// 1..=128 bytes of `[A-Za-z0-9._:/+=-]` (no spaces, no `@`).
    Token,
    /// An IPv4 or IPv6 address as `std::net::IpAddr` parses it.
    Ip,
    /// 64 lowercase hex digits (a MAC).
    Hex256,
    /// An RFC 3339 timestamp.
    Timestamp,
}

macro_rules! detail_keys {
    ($($(#[$doc:meta])* $v:ident = $name:literal : $shape:ident,)*) => {
        /// The allow-list of detail keys. Every key has a fixed value shape (see the module docs);
        /// none is meant for personal data.
        ///
        /// Ordering is by stored name, which is also the order used in the canonical bytes.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        #[non_exhaustive]
        pub enum DetailKey {
            $( $(#[$doc])* $v, )*
        }

        impl DetailKey {
            /// Every key, for documentation and tests.
            pub const ALL: &'static [DetailKey] = &[$(DetailKey::$v,)*];

            /// The stored name (also used in the canonical bytes).
            pub fn as_str(self) -> &'static str {
                match self { $(DetailKey::$v => $name,)* }
            }

            fn shape(self) -> Shape {
                match self { $(DetailKey::$v => Shape::$shape,)* }
            }
        }

        impl FromStr for DetailKey {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                match s {
                    $($name => Ok(DetailKey::$v),)*
                    _ => Err(Error::InvalidField {
                        field: "detail key",
                        reason: "not in the detail key allow-list",
                    }),
                }
            }
        }
    };
}

detail_keys! {
    /// The platform event's wrapper id (`ConsumerEvent.event.id`).
    EventId = "event_id": Token,
    /// A Pub/Sub replay id (base64).
    ReplayId = "replay_id": Token,
    /// A Pub/Sub topic name.
    Channel = "channel": Token,
    /// WHMCS order id.
    WhmcsOrderId = "whmcs_order_id": Number,
    /// WHMCS client id.
    WhmcsClientId = "whmcs_client_id": Number,
    /// WHMCS service ids, comma separated.
    ServiceIds = "service_ids": NumberList,
    /// Workflow step name (`fetch_order`, `add_order`, ...).
    Step = "step": Token,
    /// Attempt number.
    Attempt = "attempt": Number,
    /// A remote or internal error code (`INVALID_SESSION_ID`, `timeout`, ...).
    ErrorCode = "error_code": Token,
    /// An HTTP status code.
    HttpStatus = "http_status": Number,
    /// Why something was refused, as a code (`not_approved`, `customer_mismatch`, ...).
    ReasonCode = "reason_code": Token,
    /// A field-crypto data key id.
    KeyId = "key_id": Token,
    /// The previous data key id (on rotation).
    PreviousKeyId = "previous_key_id": Token,
    /// A client IP address.
    Ip = "ip": Ip,
    /// A security alert type (`auth_failure_burst`, ...).
    Alert = "alert": Token,
    /// A count (records purged, fields re-encrypted, ...).
    Count = "count": Number,
    /// A retention cutoff time.
    Cutoff = "cutoff": Timestamp,
    /// Sequence number of a retention anchor.
    AnchorSeq = "anchor_seq": Number,
    /// MAC of a retention anchor.
    AnchorMac = "anchor_mac": Hex256,
    /// First sequence number of a range (e.g. verified).
    FromSeq = "from_seq": Number,
    /// Last sequence number of a range.
    ToSeq = "to_seq": Number,
    /// An instance / host identifier.
    Instance = "instance": Token,
    /// A duration in milliseconds.
    DurationMs = "duration_ms": Number,
}

impl PartialOrd for DetailKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for DetailKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl fmt::Display for DetailKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn check_detail(key: DetailKey, v: &str) -> Result<()> {
    let invalid = |reason| Error::InvalidDetail { key, reason };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match key.shape() {
        Shape::Number => {
            if v.len() > MAX_NUMBER_LEN || !digits(v) {
                return Err(invalid("must be 1 to 20 ascii digits"));
            }
        }
        Shape::NumberList => {
            if v.len() > MAX_NUMBER_LIST_LEN || !v.split(',').all(digits) {
                return Err(invalid(
                    "must be ascii digit numbers separated by single commas (at most 1024 bytes)",
                ));
            }
        }
        Shape::Token => {
            if v.is_empty()
                || v.len() > MAX_TOKEN_LEN
                || !v.bytes().all(|b| {
                    b.is_ascii_alphanumeric()
                        || matches!(b, b'.' | b'_' | b':' | b'/' | b'+' | b'=' | b'-')
                })
            {
                return Err(invalid(
                    "must be 1 to 128 bytes of ascii letters, digits and `._:/+=-` (a code or id, not text)",
                ));
            }
        }
        Shape::Ip => {
            if v.parse::<std::net::IpAddr>().is_err() {
                return Err(invalid("must be an ipv4 or ipv6 address"));
            }
        }
        Shape::Hex256 => {
            if v.len() != 64 || !v.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                return Err(invalid("must be 64 lowercase hex digits"));
            }
        }
        Shape::Timestamp => {
            if v.len() > MAX_TIMESTAMP_LEN || DateTime::parse_from_rfc3339(v).is_err() {
                return Err(invalid("must be an rfc 3339 timestamp"));
            }
        }
    }
    Ok(())
}

/// A record's details: allow-listed [`DetailKey`]s with values of the key's shape.
///
/// Values are stored exactly as given (no normalisation), because the MAC covers them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "BTreeMap<DetailKey, String>")]
pub struct Details(BTreeMap<DetailKey, String>);

/// A map in key order, by reference (serde's `into` would clone the map for every record).
impl Serialize for Details {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_map(&self.0)
    }
}

impl Details {
    /// No details.
    pub fn new() -> Self {
        Details::default()
    }

    /// Sets `key` to `value` after checking the value's shape (replacing an earlier value).
    pub fn insert(&mut self, key: DetailKey, value: impl Into<String>) -> Result<()> {
        let value = value.into();
        check_detail(key, &value)?;
        self.0.insert(key, value);
        Ok(())
    }

    /// Builder form of [`Details::insert`].
    pub fn with(mut self, key: DetailKey, value: impl Into<String>) -> Result<Self> {
        self.insert(key, value)?;
        Ok(self)
    }

    /// The value for `key`.
    pub fn get(&self, key: DetailKey) -> Option<&str> {
        self.0.get(&key).map(String::as_str)
    }

    /// Entries in canonical (name) order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (DetailKey, &str)> {
        self.0.iter().map(|(k, v)| (*k, v.as_str()))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl TryFrom<BTreeMap<DetailKey, String>> for Details {
    type Error = Error;
    fn try_from(map: BTreeMap<DetailKey, String>) -> Result<Self> {
        for (k, v) in &map {
            check_detail(*k, v)?;
        }
        Ok(Details(map))
    }
}

impl From<Details> for BTreeMap<DetailKey, String> {
    fn from(d: Details) -> Self {
        d.0
    }
}

/// A record before it joins the chain (no sequence number, no MAC yet): what callers append.
///
/// `at` defaults to now and is truncated to whole microseconds (the precision of PostgreSQL
/// `timestamptz` and of the canonical bytes), so a record survives a database round trip intact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAuditRecord {
    /// When it happened.
    pub(crate) at: DateTime<Utc>,
    pub(crate) actor: Actor,
    pub(crate) action: Action,
    pub(crate) order_id: Option<SubjectId>,
    pub(crate) customer_number: Option<SubjectId>,
    pub(crate) outcome: Outcome,
    pub(crate) details: Details,
}

impl NewAuditRecord {
    /// A record of `action` by `actor` with `outcome`, stamped now.
    pub fn new(actor: Actor, action: Action, outcome: Outcome) -> Self {
        NewAuditRecord {
            at: Utc::now().trunc_subsecs(6),
            actor,
            action,
            order_id: None,
            customer_number: None,
            outcome,
            details: Details::new(),
        }
    }

    /// Overrides the time (truncated to microseconds).
    pub fn at(mut self, at: DateTime<Utc>) -> Self {
        self.at = at.trunc_subsecs(6);
        self
    }

    /// Sets the Salesforce Order Id the record is about.
    pub fn order_id(mut self, id: impl Into<String>) -> Result<Self> {
        self.order_id = Some(SubjectId::for_field("order_id", id.into())?);
        Ok(self)
    }

    /// Sets the customer number the record is about.
    pub fn customer_number(mut self, number: impl Into<String>) -> Result<Self> {
        self.customer_number = Some(SubjectId::for_field("customer_number", number.into())?);
        Ok(self)
    }

    /// Adds one detail (checked against the key's shape).
    pub fn detail(mut self, key: DetailKey, value: impl Into<String>) -> Result<Self> {
        self.details.insert(key, value)?;
        Ok(self)
    }

    /// Replaces all details.
    pub fn details(mut self, details: Details) -> Self {
        self.details = details;
        self
    }

    /// The time the record will carry.
    pub fn time(&self) -> DateTime<Utc> {
        self.at
    }

    /// Gives the record its place in the chain.
    pub(crate) fn with_seq(self, seq: u64) -> AuditRecord {
        AuditRecord {
            seq,
            at: self.at,
            actor: self.actor,
            action: self.action,
            order_id: self.order_id,
            customer_number: self.customer_number,
            outcome: self.outcome,
            details: self.details,
        }
    }
}

/// One audit record with its place in the chain. Every field is a validated type, so a record
/// cannot hold free text; see the module docs for the rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// Position in the chain: 1 for the first record ever, strictly +1 after that.
    pub seq: u64,
    /// When it happened (microsecond precision).
    pub at: DateTime<Utc>,
    /// Who did it.
    pub actor: Actor,
    /// What happened.
    pub action: Action,
    /// The Salesforce Order Id it is about.
    pub order_id: Option<SubjectId>,
    /// The customer number it is about.
    pub customer_number: Option<SubjectId>,
    /// How it ended.
    pub outcome: Outcome,
    /// Allow-listed details.
    pub details: Details,
}

/// A record as stored: the record and its chain MAC
/// (`HMAC-SHA256(audit key, previous MAC || canonical bytes)`).
///
/// Serialises as one flat JSON object (`seq, at, actor, action, order_id, customer_number,
/// outcome, details, mac`); the MAC is lowercase hex.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "SealedRepr")]
pub struct SealedRecord {
    /// The record.
    pub record: AuditRecord,
    /// Its chain MAC.
    pub mac: Mac,
}

impl SealedRecord {
    /// Shortcut for `self.record.seq`.
    pub fn seq(&self) -> u64 {
        self.record.seq
    }
}

/// Written field by field from a borrowed record, in the order it is read back: nothing is
/// cloned, and `at` is written without `core::fmt`. Every record stored passes here once.
impl Serialize for SealedRecord {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let r = &self.record;
        let mut st = s.serialize_struct("SealedRepr", 9)?;
        st.serialize_field("seq", &r.seq)?;
        st.serialize_field("at", &Rfc3339(r.at))?;
        st.serialize_field("actor", &r.actor)?;
        st.serialize_field("action", &r.action)?;
        st.serialize_field("order_id", &r.order_id)?;
        st.serialize_field("customer_number", &r.customer_number)?;
        st.serialize_field("outcome", &r.outcome)?;
        st.serialize_field("details", &r.details)?;
        st.serialize_field("mac", &self.mac)?;
        st.end()
    }
}

/// A UTC instant written as chrono's serde writes it (RFC 3339, `Z`, the fraction in 0, 3, 6
/// or 9 digits, whichever is exact), without the formatting machinery: digits into a stack
/// buffer. Years outside 0..=9999 and leap seconds go through chrono.
struct Rfc3339(DateTime<Utc>);

impl Serialize for Rfc3339 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match rfc3339_fast(&self.0) {
            Some((buf, len)) => match std::str::from_utf8(buf.get(..len).unwrap_or_default()) {
                Ok(text) => s.serialize_str(text),
                Err(_) => self.0.serialize(s),
            },
            None => self.0.serialize(s),
        }
    }
}

/// `at` in the form of [`Rfc3339`], or `None` where chrono must write it.
fn rfc3339_fast(at: &DateTime<Utc>) -> Option<([u8; 32], usize)> {
    use chrono::{Datelike, Timelike};
    let year = u32::try_from(at.year()).ok().filter(|y| *y <= 9999)?;
    let nanos = at.nanosecond();
    if nanos >= 1_000_000_000 {
        return None;
    }
    let mut out = Digits::default();
    out.number(year, 4);
    out.byte(b'-');
    out.number(at.month(), 2);
    out.byte(b'-');
    out.number(at.day(), 2);
    out.byte(b'T');
    out.number(at.hour(), 2);
    out.byte(b':');
    out.number(at.minute(), 2);
    out.byte(b':');
    out.number(at.second(), 2);
    if nanos != 0 {
        out.byte(b'.');
        if nanos.is_multiple_of(1_000_000) {
            out.number(nanos / 1_000_000, 3);
        } else if nanos.is_multiple_of(1_000) {
            out.number(nanos / 1_000, 6);
        } else {
            out.number(nanos, 9);
        }
    }
    out.byte(b'Z');
    Some((out.buf, out.len))
}

/// A short ASCII text built in place (at most 32 bytes; the longest [`rfc3339_fast`] writes is
/// 30).
#[derive(Default)]
struct Digits {
    buf: [u8; 32],
    len: usize,
}

impl Digits {
    fn byte(&mut self, b: u8) {
        if let Some(slot) = self.buf.get_mut(self.len) {
            *slot = b;
        }
        self.len += 1;
    }

    /// `value` in `width` decimal digits, zero-padded (`value` < 10^`width`).
    fn number(&mut self, value: u32, width: u32) {
        for i in (0..width).rev() {
            let digit = (value / 10_u32.pow(i)) % 10;
            self.byte(b'0' + u8::try_from(digit).unwrap_or(0));
        }
    }
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct SealedRepr {
    seq: u64,
    at: DateTime<Utc>,
    actor: Actor,
    action: Action,
    order_id: Option<SubjectId>,
    customer_number: Option<SubjectId>,
    outcome: Outcome,
    details: Details,
    mac: Mac,
}

impl From<SealedRepr> for SealedRecord {
    fn from(r: SealedRepr) -> Self {
        SealedRecord {
            record: AuditRecord {
                seq: r.seq,
                at: r.at,
                actor: r.actor,
                action: r.action,
                order_id: r.order_id,
                customer_number: r.customer_number,
                outcome: r.outcome,
                details: r.details,
            },
            mac: r.mac,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// The stored `at` is byte for byte what chrono's serde writes, for every fraction width,
    /// the edges of the year range, and (through chrono itself) years and leap seconds outside
    /// the fast path.
    #[test]
    fn at_is_written_as_chrono_writes_it() {
        use chrono::TimeZone;
        let mut instants = Vec::new();
        for (secs, nanos) in [
            (0_i64, 0_u32),
            (1_767_225_599, 0),
            (1_767_225_599, 1),
            (1_767_225_599, 7_000_000),
            (1_767_225_599, 120_000),
            (1_767_225_599, 123_456_000),
            (1_767_225_599, 123_456_789),
            (1_767_225_599, 999_999_999),
            (1_767_225_599, 100_000_000),
            (253_402_300_799, 999_000), // 9999-12-31T23:59:59
            (-62_167_219_200, 5),       // 0000-01-01T00:00:00
            (-62_167_219_201, 5),       // year -1: chrono writes it
            (253_402_300_800, 0),       // year 10000: chrono writes it
        ] {
            instants.push(Utc.timestamp_opt(secs, nanos).single().unwrap());
        }
        // A leap second (nanoseconds past 10^9): chrono writes it.
        let leap = chrono::NaiveDate::from_ymd_opt(2016, 12, 31)
            .unwrap()
            .and_hms_nano_opt(23, 59, 59, 1_500_000_000)
            .unwrap()
            .and_utc();
        instants.push(leap);
        // A spread of ordinary instants, microseconds as the audit clock keeps them.
        let mut x: i64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..2_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let micros = x.rem_euclid(300_000_000_000_000_000);
            instants.push(
                Utc.timestamp_micros(micros - 62_000_000_000_000_000)
                    .single()
                    .unwrap(),
            );
        }
        for at in instants {
            let ours = serde_json::to_string(&Rfc3339(at)).unwrap();
            let chrono = serde_json::to_string(&at).unwrap();
            assert_eq!(ours, chrono, "{at:?}");
        }
    }

    /// A sealed record serialises by reference to the same flat object it is read from.
    #[test]
    fn a_sealed_record_round_trips_through_its_json() {
        let record = AuditRecord {
            seq: 42,
            at: chrono::TimeZone::timestamp_micros(&Utc, 1_767_225_599_123_456)
                .single()
                .unwrap(),
            actor: Actor::new("engine").unwrap(),
            action: Action::new("whmcs_ordered").unwrap(),
            order_id: Some(SubjectId::new("801000000000001AAA").unwrap()),
            customer_number: None,
            outcome: Outcome::Success,
            details: Details::new().with(DetailKey::WhmcsOrderId, "17").unwrap(),
        };
        let sealed = SealedRecord {
            record,
            mac: crate::Mac([7; 32]),
        };
        let json = serde_json::to_string(&sealed).unwrap();
        assert_eq!(
            json,
            format!(
                "{{\"seq\":42,\"at\":\"2025-12-31T23:59:59.123456Z\",\"actor\":\"engine\",\
                 \"action\":\"whmcs_ordered\",\"order_id\":\"801000000000001AAA\",\
                 \"customer_number\":null,\"outcome\":\"success\",\
                 \"details\":{{\"whmcs_order_id\":\"17\"}},\"mac\":\"{}\"}}",
                "07".repeat(32)
            )
        );
        let back: SealedRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back, sealed);
    }

    #[test]
    fn names_must_be_snake_case() {
        assert!(Actor::new("engine_2").is_ok());
        for bad in [
            "",
            "Engine",
            "2engine",
            "john smith",
            "a-b",
            "x@y",
            &"a".repeat(65),
        ] {
            let err = Action::new(bad).unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::InvalidField {
                        field: "action",
                        ..
                    }
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn constants_are_valid_names() {
        for a in [
            Action::EVENT_RECEIVED,
            Action::RETENTION_PURGE,
            Action::KEY_ROTATED,
        ] {
            assert_eq!(Action::new(a.as_str()).unwrap(), a);
        }
        assert_eq!(Actor::new("engine").unwrap(), Actor::ENGINE);
    }

    #[test]
    fn detail_key_names_match_serde_and_from_str() {
        for &k in DetailKey::ALL {
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(json, format!("\"{}\"", k.as_str()));
            assert_eq!(k.as_str().parse::<DetailKey>().unwrap(), k);
        }
        assert!("email".parse::<DetailKey>().is_err());
    }

    #[test]
    fn detail_values_must_fit_their_shape() {
        let ok = [
            (DetailKey::Attempt, "3"),
            (DetailKey::ServiceIds, "12,13,14"),
            (DetailKey::Ip, "2001:db8::1"),
            (DetailKey::Ip, "192.0.2.7"),
            (DetailKey::EventId, "7f9c1e2a-0b7e-4a8e-9d2c-1f0e5b6a7c8d"),
            (DetailKey::ReplayId, "AAAAAAAB+/="),
            (DetailKey::AnchorMac, &"ab".repeat(32)),
            (DetailKey::Cutoff, "2026-01-01T00:00:00Z"),
        ];
        for (k, v) in ok {
            Details::new().with(k, v).unwrap();
        }
        let bad = [
            (DetailKey::Attempt, "three"),
            (DetailKey::ServiceIds, "12,,13"),
            (DetailKey::ServiceIds, ",12"),
            (DetailKey::Ip, "localhost"),
            (DetailKey::ReasonCode, "customer John Smith"),
            (DetailKey::ErrorCode, "jane@example.com"),
            (DetailKey::Step, ""),
            (DetailKey::AnchorMac, &"AB".repeat(32)),
            (DetailKey::Cutoff, "yesterday"),
        ];
        for (k, v) in bad {
            let err = Details::new().with(k, v).unwrap_err();
            assert!(
                matches!(err, Error::InvalidDetail { key, .. } if key == k),
                "{k} {v:?}"
            );
            assert!(
                !err.to_string().contains(v) || v.is_empty(),
                "value echoed: {err}"
            );
        }
    }

    #[test]
    fn subject_ids_reject_free_text() {
        let r = NewAuditRecord::new(Actor::ENGINE, Action::EVENT_RECEIVED, Outcome::Success);
        assert!(r.clone().order_id("801xx000003DIsYAAW").is_ok());
        assert!(r.clone().customer_number("C-1001").is_ok());
        assert!(r.clone().customer_number("Jane Doe").is_err());
        assert!(r.order_id("jane@example.com").is_err());
    }

    #[test]
    fn deserialising_applies_the_same_rules() {
        let bad = r#"{"seq":1,"at":"2026-01-01T00:00:00Z","actor":"engine","action":"event_received","order_id":null,"customer_number":"Jane Doe","outcome":"success","details":{},"mac":"0000000000000000000000000000000000000000000000000000000000000000"}"#;
        assert!(serde_json::from_str::<SealedRecord>(bad).is_err());
        let bad_detail = bad
            .replace("\"Jane Doe\"", "null")
            .replace("{}", r#"{"email":"x"}"#);
        assert!(serde_json::from_str::<SealedRecord>(&bad_detail).is_err());
        let good = bad.replace("\"Jane Doe\"", "\"C-1\"");
        let rec: SealedRecord = serde_json::from_str(&good).unwrap();
        assert_eq!(serde_json::to_string(&rec).unwrap(), good);
    }

    #[test]
    fn time_is_truncated_to_microseconds() {
        let t = DateTime::parse_from_rfc3339("2026-05-01T10:00:00.123456789Z")
            .unwrap()
            .with_timezone(&Utc);
        let r = NewAuditRecord::new(Actor::ENGINE, Action::EVENT_RECEIVED, Outcome::Success).at(t);
        assert_eq!(r.time().timestamp_subsec_nanos(), 123_456_000);
    }
}
