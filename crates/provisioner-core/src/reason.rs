//! Why a job stopped short of provisioning, as a typed value with a stable name.

/// Why a job stopped short of provisioning (a refusal, a retry, a failure). The snake_case
/// names are stable: they appear in the audit log (`error_code` / `reason_code`), metric
/// labels, stored job errors and the status API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StopReason {
    /// The store failed (usually transient).
    StoreError,
    /// An audit record could not be stored, so the change it records was not made either.
    AuditError,
    /// Salesforce refused the request for good (a bad field, a missing permission).
    SalesforcePermanent,
    /// Salesforce failed in a way that may pass (timeouts, limits, 5xx).
    SalesforceRetryable,
    /// WHMCS answered with a business error (`result=error`).
    WhmcsBusiness,
    /// A WHMCS write may or may not have happened (timeout, dropped connection).
    WhmcsUnknownOutcome,
    /// WHMCS rejected the credentials or the API access (fix the configuration).
    WhmcsConfiguration,
    /// WHMCS failed in a way that may pass.
    WhmcsTransient,
    /// An internal invariant did not hold (a bug).
    Internal,
    /// The Order's data cannot be provisioned (missing or bad fields).
    InvalidOrder,
    /// The event's Order Id is not a Salesforce id.
    InvalidOrderId,
    /// Salesforce has no such Order.
    OrderNotFound,
    /// The Order is not in the approved status.
    NotApproved,
    /// The event's customer differs from the Order's.
    CustomerMismatch,
    /// The WHMCS client is not Active.
    WhmcsClientInactive,
    /// An AddOrder outcome is unknown and cannot be looked up (no external-ref field).
    UnknownOutcome,
    /// The WHMCS order is neither Pending nor Active.
    WhmcsOrderState,
    /// The Order left the approved status while its job was running (checked again right
    /// before each WHMCS write): the job stopped with nothing more written.
    ApprovalWithdrawn,
    /// `WHMCS_ORDER_REF_FIELD_ID` lists field ids per product and has none for a product the
    /// Order orders: AddOrder would drop the external ref, so nothing is written to WHMCS.
    NoRefFieldForProduct,
    /// An AddOrder or AcceptOrder whose outcome is unknown may still commit (its timeout plus
    /// `WHMCS_SETTLE` has not passed since it was sent) and a lookup did not find it: the job
    /// waits, then looks again before it ever repeats the call.
    OutcomeSettling,
    /// A config option the order intake sealed did not decrypt (tampered, or under a key this
    /// provisioner does not hold): nothing is written to WHMCS, `integrity_failure` is raised.
    IntegrityFailure,
    /// A run of the job found its Order in the failed status an earlier run of this job had
    /// written, with that run's end never stored (it stopped between its PATCH and its end: a
    /// crash, or a restored backup from before the end). The failure stands: the job ends
    /// failed with its dead letter, and nothing is written to the Order or WHMCS.
    EarlierFailure,
}

impl StopReason {
    /// The stable snake_case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            StopReason::StoreError => "store_error",
            StopReason::AuditError => "audit_error",
            StopReason::SalesforcePermanent => "salesforce_permanent",
            StopReason::SalesforceRetryable => "salesforce_retryable",
            StopReason::WhmcsBusiness => "whmcs_business",
            StopReason::WhmcsUnknownOutcome => "whmcs_unknown_outcome",
            StopReason::WhmcsConfiguration => "whmcs_configuration",
            StopReason::WhmcsTransient => "whmcs_transient",
            StopReason::Internal => "internal",
            StopReason::InvalidOrder => "invalid_order",
            StopReason::InvalidOrderId => "invalid_order_id",
            StopReason::OrderNotFound => "order_not_found",
            StopReason::NotApproved => "not_approved",
            StopReason::CustomerMismatch => "customer_mismatch",
            StopReason::WhmcsClientInactive => "whmcs_client_inactive",
            StopReason::UnknownOutcome => "unknown_outcome",
            StopReason::WhmcsOrderState => "whmcs_order_state",
            StopReason::ApprovalWithdrawn => "approval_withdrawn",
            StopReason::NoRefFieldForProduct => "no_ref_field_for_product",
            StopReason::OutcomeSettling => "outcome_settling",
            StopReason::IntegrityFailure => "integrity_failure",
            StopReason::EarlierFailure => "earlier_failure",
        }
    }
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for StopReason {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}
