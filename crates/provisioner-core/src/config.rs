//! What the engine is told: picklist values, WHMCS order options, retry and pacing policy.

use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroU32;
use std::time::Duration;

/// The default of `CUSTOMER_PROVISION_RATE`: 30 provisionings an hour per customer, burst 30.
pub const DEFAULT_PROVISION_RATE: security::Rate = security::Rate::new(
    match NonZeroU32::new(30) {
        Some(count) => count,
        None => panic!("30 is not zero"),
    },
    security::Period::Hour,
);

/// The Order `Status` picklist values the engine reads and writes (`SF_ORDER_STATUS_*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderStatuses {
    /// Approved by an operator: ready to provision (`Approved`).
    pub approved: String,
    /// Written while provisioning; `None` skips that PATCH (`Provisioning`).
    pub provisioning: Option<String>,
    /// Written on success (`Activated`).
    pub provisioned: String,
    /// Written on permanent failure (`Provisioning Failed`).
    pub failed: String,
}

impl Default for OrderStatuses {
    fn default() -> Self {
        OrderStatuses {
            approved: "Approved".into(),
            provisioning: Some("Provisioning".into()),
            provisioned: "Activated".into(),
            failed: "Provisioning Failed".into(),
        }
    }
}

/// Which WHMCS product custom field holds the Salesforce Order Id (`WHMCS_ORDER_REF_FIELD_ID`).
///
/// WHMCS product custom fields are rows per product, so the same "Salesforce Order" field has
/// another id on every product, and AddOrder silently drops a value whose field id is not
/// defined for the ordered product. One id therefore only fits a one-product catalogue;
/// otherwise every orderable product needs its own entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefFields {
    /// One field id used for every product (`12`).
    Every(u64),
    /// The field id of each product (`3:12,4:15`); a product without an entry cannot be
    /// ordered (`no_ref_field_for_product`).
    PerProduct(BTreeMap<u64, u64>),
}

impl RefFields {
    /// The field id holding the Salesforce Order Id on services of product `pid`.
    pub fn field_for(&self, pid: u64) -> Option<u64> {
        match self {
            RefFields::Every(field) => Some(*field),
            RefFields::PerProduct(fields) => fields.get(&pid).copied(),
        }
    }
}

impl From<u64> for RefFields {
    fn from(field: u64) -> Self {
        RefFields::Every(field)
    }
}

impl fmt::Display for RefFields {
    /// The `WHMCS_ORDER_REF_FIELD_ID` spelling: `12` or `3:12,4:15`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RefFields::Every(field) => write!(f, "{field}"),
            RefFields::PerProduct(fields) => {
                for (i, (pid, field)) in fields.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{pid}:{field}")?;
                }
                Ok(())
            }
        }
    }
}

/// Retries of retryable errors: exponential backoff with full jitter, bounded by attempts and
/// by the job's age.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Delay before the first retry (doubles each attempt).
    pub base: Duration,
    /// Longest delay between attempts.
    pub max_delay: Duration,
    /// Attempts after which a retryable error becomes a failure.
    pub max_attempts: u32,
    /// Age after which a retryable error becomes a failure.
    pub max_age: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base: Duration::from_secs(2),
            max_delay: Duration::from_secs(600),
            max_attempts: 12,
            max_age: Duration::from_secs(24 * 3600),
        }
    }
}

impl RetryPolicy {
    /// The delay before attempt `attempt + 1` (attempt counts from 0), with full jitter:
    /// uniformly in `[cap/2, cap]` where `cap = min(max_delay, base * 2^attempt)`, so retries of
    /// many jobs spread out but never come back immediately.
    pub fn delay(&self, attempt: u32, unit_random: f64) -> Duration {
        let exp = self
            .base
            .checked_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
            .unwrap_or(self.max_delay);
        let cap = exp.min(self.max_delay);
        let r = unit_random.clamp(0.0, 1.0);
        cap.mul_f64(0.5 + r / 2.0)
    }

    /// Whether a job that has made `attempts` attempts and is `age` old may try again.
    pub fn may_retry(&self, attempts: u32, age: Duration) -> bool {
        attempts < self.max_attempts && age < self.max_age
    }
}

/// Everything the engine needs besides its ports.
///
/// [`EngineConfig::default`] holds the defaults of the configuration contract's engine settings
/// (`SF_PROVISION_EVENT_CHANNEL`, `SF_ORDER_STATUS_*`, `WHMCS_PAYMENT_METHOD`, `WHMCS_SEND_EMAIL`,
/// `WHMCS_NO_INVOICE`, `JOB_LEASE`, `ENCRYPTION_KEY_ROTATION_DAYS`, `PROVISIONER_CONCURRENCY`,
/// `RECONCILE_INTERVAL`, `WHMCS_TIMEOUT`, `WHMCS_ACCEPT_TIMEOUT`, `WHMCS_SETTLE`); the binary's configuration takes its defaults from here.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Picklist values.
    pub statuses: OrderStatuses,
    /// Topic events come from (for checkpoints).
    pub topic: String,
    /// AddOrder `paymentmethod` (`WHMCS_PAYMENT_METHOD`).
    pub payment_method: String,
    /// Product custom field(s) holding the Salesforce Order Id (`WHMCS_ORDER_REF_FIELD_ID`):
    /// one id for every product, or one per product.
    pub order_ref_fields: Option<RefFields>,
    /// `WHMCS_SEND_EMAIL`: false sends `noemail=1` and `sendemail=0`.
    pub send_email: bool,
    /// `WHMCS_NO_INVOICE`.
    pub no_invoice: bool,
    /// Jobs at work at once (`PROVISIONER_CONCURRENCY`). A job waiting between two attempts
    /// of a call lends its slot to another job ([`crate::pause_outside_slot`]), and so does a
    /// job waiting for its store write to commit; every Salesforce and WHMCS call is made
    /// holding a slot. Jobs claimed at once stay at most [`crate::CLAIMED_PER_SLOT`] times
    /// this.
    pub concurrency: usize,
    /// Lease of a claimed job (`JOB_LEASE`).
    pub lease: Duration,
    /// Retry policy.
    pub retry: RetryPolicy,
    /// How often the reconcile sweep runs (`RECONCILE_INTERVAL`).
    pub reconcile_interval: Duration,
    /// Only Orders approved at least this long ago are swept (gives events time to arrive).
    pub reconcile_min_age: Duration,
    /// `ENCRYPTION_KEY_ROTATION_DAYS`.
    pub key_rotation_days: u32,
    /// How often idle workers look for due retries.
    pub poll_interval: Duration,
    /// Longest time shutdown waits for in-flight steps.
    pub shutdown_grace: Duration,
    /// Name of this instance (lease owner prefix, audit `instance`).
    pub instance: String,
    /// How long a write-back to Salesforce may keep failing after WHMCS accepted before
    /// `writeback_stuck` is raised (once per Order; the job keeps retrying).
    pub writeback_stuck_after: Duration,
    /// Client timeout of AddOrder (`WHMCS_TIMEOUT`): recorded with its intent. Give the WHMCS
    /// client the same value.
    pub whmcs_timeout: Duration,
    /// Client timeout of AcceptOrder (`WHMCS_ACCEPT_TIMEOUT`): recorded with its intent.
    pub whmcs_accept_timeout: Duration,
    /// `WHMCS_SETTLE`: an AddOrder or AcceptOrder whose outcome is unknown is repeated only
    /// after a lookup made no earlier than its sent time + its timeout + this still finds
    /// nothing.
    pub whmcs_settle: Duration,
}

/// The default of `WHMCS_SETTLE`.
pub const DEFAULT_WHMCS_SETTLE: Duration = Duration::from_secs(30);

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            statuses: OrderStatuses::default(),
            topic: sf_pubsub::DEFAULT_TOPIC.into(),
            payment_method: "banktransfer".into(),
            order_ref_fields: None,
            send_email: true,
            no_invoice: false,
            concurrency: 16,
            lease: Duration::from_secs(30),
            retry: RetryPolicy::default(),
            reconcile_interval: Duration::from_secs(15 * 60),
            reconcile_min_age: Duration::from_secs(120),
            key_rotation_days: 90,
            poll_interval: Duration::from_millis(200),
            shutdown_grace: Duration::from_secs(25),
            instance: "provisioner".into(),
            writeback_stuck_after: Duration::from_secs(3600),
            whmcs_timeout: whmcs_client::DEFAULT_READ_TIMEOUT,
            whmcs_accept_timeout: whmcs_client::DEFAULT_PROVISIONING_TIMEOUT,
            whmcs_settle: DEFAULT_WHMCS_SETTLE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let p = RetryPolicy::default();
        assert_eq!(p.delay(0, 1.0), Duration::from_secs(2));
        assert_eq!(p.delay(0, 0.0), Duration::from_secs(1));
        assert_eq!(p.delay(3, 1.0), Duration::from_secs(16));
        assert_eq!(p.delay(20, 1.0), Duration::from_secs(600));
        assert_eq!(p.delay(u32::MAX, 0.0), Duration::from_secs(300));
        assert!(p.may_retry(11, Duration::from_secs(10)));
        assert!(!p.may_retry(12, Duration::from_secs(10)));
        assert!(!p.may_retry(1, Duration::from_secs(24 * 3600)));
    }

    #[test]
    fn ref_fields_per_product_or_one_for_all() {
        let one = RefFields::from(12);
        assert_eq!((one.field_for(3), one.field_for(99)), (Some(12), Some(12)));
        assert_eq!(one.to_string(), "12");
        let per = RefFields::PerProduct(BTreeMap::from([(4, 15), (3, 12)]));
        assert_eq!(
            (per.field_for(3), per.field_for(4), per.field_for(5)),
            (Some(12), Some(15), None)
        );
        assert_eq!(per.to_string(), "3:12,4:15");
    }
}
