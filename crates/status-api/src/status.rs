//! The `GET /v1/orders/{orderId}/status` answer: what a job looks like to the portal, and the
//! shapes of the inputs that are accepted.

use chrono::{DateTime, SecondsFormat, Utc};
use provisioner_store::Job;
use serde::{Deserialize, Serialize, Serializer};

/// Longest `error` text returned, in characters (the size of Salesforce's
/// `Provisioning_Error__c`).
pub const MAX_ERROR_CHARS: usize = 255;

/// Longest `X-Customer-Number` accepted, in bytes.
pub const MAX_CUSTOMER_NUMBER_LEN: usize = 64;

/// The portal-facing state of an order: the store's [`provisioner_store::JobView`], so the
/// status API, the operator's `jobs list --state` and the store's job filter share one mapping
/// ([`provisioner_store::JobView::of`]).
pub use provisioner_store::JobView as OrderStatus;

/// The 200 body, a contract with the portal (README, Status API); every key is always present.
///
/// It holds ids, a state, a time and a sanitised error only: no customer data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OrderStatusBody {
    /// Salesforce Order Id.
    pub order_id: String,
    /// Portal-facing state.
    pub status: OrderStatus,
    /// WHMCS order id, once known.
    pub whmcs_order_id: Option<String>,
    /// WHMCS service ids, once known (empty before).
    pub service_ids: Vec<String>,
    /// Last change, RFC 3339 in UTC with milliseconds.
    #[serde(serialize_with = "rfc3339")]
    pub updated_at: DateTime<Utc>,
    /// Why it failed (the stored, sanitised reason), only when `status` is `failed`.
    pub error: Option<String>,
}

impl OrderStatusBody {
    /// The body for `job`.
    pub fn from_job(job: &Job) -> Self {
        let status = OrderStatus::of(job);
        let error = match status {
            OrderStatus::Failed => Some(
                job.last_error
                    .as_deref()
                    .map_or_else(|| "provisioning failed".to_owned(), truncate_error),
            ),
            _ => None,
        };
        Self {
            order_id: job.order_id.clone(),
            status,
            whmcs_order_id: job.whmcs_order_id.clone(),
            service_ids: job.service_ids.clone(),
            updated_at: job.updated_at,
            error,
        }
    }
}

impl OrderStatusBody {
    /// The body for an Order the order intake created that has no job yet: waiting for its
    /// approval (`updated_at`: when it was created).
    pub fn pending_review(order_id: &str, updated_at: DateTime<Utc>) -> Self {
        Self {
            order_id: order_id.to_owned(),
            status: OrderStatus::PendingReview,
            whmcs_order_id: None,
            service_ids: Vec::new(),
            updated_at,
            error: None,
        }
    }
}

fn rfc3339<S: Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&at.to_rfc3339_opts(SecondsFormat::Millis, true))
}

fn truncate_error(error: &str) -> String {
    match error.char_indices().nth(MAX_ERROR_CHARS) {
        Some((cut, _)) => error[..cut].to_owned(),
        None => error.to_owned(),
    }
}

/// Whether `id` has the shape of a Salesforce record id: 15 or 18 ASCII letters and digits.
/// Anything else is answered 404 without a store lookup.
pub fn is_order_id(id: &str) -> bool {
    matches!(id.len(), 15 | 18) && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// The 18-character form of a Salesforce id, as jobs are stored (events carry 18-character
/// ids): an 18-character id as given; a 15-character (case-sensitive) id with its 3-character
/// case checksum appended; `None` when `id` is not [id-shaped](is_order_id).
pub fn canonical_order_id(id: &str) -> Option<String> {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ012345";
    if !is_order_id(id) {
        return None;
    }
    if id.len() == 18 {
        return Some(id.to_owned());
    }
    let mut full = String::with_capacity(18);
    full.push_str(id);
    for chunk in id.as_bytes().chunks(5) {
        let bits = chunk
            .iter()
            .enumerate()
            .filter(|(_, b)| b.is_ascii_uppercase())
            .fold(0usize, |acc, (i, _)| acc | (1 << i));
        full.push(char::from(ALPHABET[bits]));
    }
    Some(full)
}

/// Whether `number` is an acceptable `X-Customer-Number`: 1 to
/// [`MAX_CUSTOMER_NUMBER_LEN`] bytes of `A-Z a-z 0-9 . _ : -` (the id alphabet the security
/// alerts accept, so a customer number always reaches an alert unredacted).
pub fn is_customer_number(number: &str) -> bool {
    !number.is_empty()
        && number.len() <= MAX_CUSTOMER_NUMBER_LEN
        && number
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use chrono::TimeZone;
    use provisioner_store::{JobSource, JobState, Step};

    use super::*;

    fn job(state: JobState, step: Step, attempts: u32) -> Job {
        let at = Utc.with_ymd_and_hms(2026, 11, 29, 1, 2, 3).unwrap();
        Job {
            seq: 1,
            order_id: "801000000000001AAA".into(),
            customer_number: "C-1".into(),
            account_id: Some("001000000000001AAA".into()),
            event_id: Some("evt-1".into()),
            source: JobSource::Event,
            state,
            step,
            whmcs_order_id: None,
            service_ids: vec![],
            attempts,
            next_attempt_at: at,
            lease_owner: None,
            lease_until: None,
            last_error: Some("whmcs: service unavailable".into()),
            created_at: at,
            updated_at: at,
            reopened_by: None,
            reopened_at: None,
            writeback_since: None,
            stuck_alerted_at: None,
            claim_epoch: 1,
            intent: None,
        }
    }

    #[test]
    fn error_is_only_reported_for_failed_jobs() {
        let retrying = OrderStatusBody::from_job(&job(JobState::Pending, Step::Checked, 1));
        assert_eq!(retrying.error, None);
        let failed = OrderStatusBody::from_job(&job(JobState::Failed, Step::Checked, 3));
        assert_eq!(failed.error.as_deref(), Some("whmcs: service unavailable"));
        let mut without_reason = job(JobState::Failed, Step::Checked, 3);
        without_reason.last_error = None;
        assert_eq!(
            OrderStatusBody::from_job(&without_reason).error.as_deref(),
            Some("provisioning failed")
        );
    }

    #[test]
    fn long_errors_are_cut_at_a_char_boundary() {
        let mut failed = job(JobState::Failed, Step::Checked, 3);
        failed.last_error = Some("é".repeat(300));
        let error = OrderStatusBody::from_job(&failed).error.unwrap();
        assert_eq!(error.chars().count(), MAX_ERROR_CHARS);
    }

    #[test]
    fn every_key_is_present_even_when_empty() {
        let body = OrderStatusBody::from_job(&job(JobState::Pending, Step::Received, 0));
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r#"{"orderId":"801000000000001AAA","status":"received","whmcsOrderId":null,"serviceIds":[],"updatedAt":"2026-11-29T01:02:03.000Z","error":null}"#
        );
    }

    #[test]
    fn order_id_shapes() {
        for ok in ["801000000000001", "801000000000001AAA", "a1B2c3D4e5F6g7H"] {
            assert!(is_order_id(ok), "{ok}");
        }
        for bad in [
            "",
            "80100000000001",
            "8010000000000010",
            "801000000000001AAAA",
            "801000000000001AA-",
            "80100000000000é",
            "801000000000001 AA",
        ] {
            assert!(!is_order_id(bad), "{bad}");
        }
    }

    #[test]
    fn fifteen_character_ids_get_their_checksum() {
        // The documented example pair, and ids that are all digits or all upper case.
        assert_eq!(
            canonical_order_id("a0D30000001n7Pi").as_deref(),
            Some("a0D30000001n7PiEAI")
        );
        assert_eq!(
            canonical_order_id("801000000000001").as_deref(),
            Some("801000000000001AAA")
        );
        assert_eq!(
            canonical_order_id("ABCDEABCDEABCDE").as_deref(),
            Some("ABCDEABCDEABCDE555")
        );
        assert_eq!(
            canonical_order_id("801000000000001AAA").as_deref(),
            Some("801000000000001AAA")
        );
        assert_eq!(canonical_order_id("80100000000000-"), None);
    }

    #[test]
    fn customer_number_shapes() {
        for ok in ["C-000123", "A", "cust.1_2:3", &"9".repeat(64)] {
            assert!(is_customer_number(ok), "{ok}");
        }
        for bad in ["", "a b", "j@example.com", "x/y", &"9".repeat(65), "é"] {
            assert!(!is_customer_number(bad), "{bad}");
        }
    }
}
