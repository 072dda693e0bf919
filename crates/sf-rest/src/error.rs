//! The error type of this crate, classified by what the caller should do.

use std::fmt;

/// The operation that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// [`crate::OrderApi::fetch_order`].
    FetchOrder,
    /// [`crate::OrderApi::update_order`].
    UpdateOrder,
    /// [`crate::OrderApi::list_approved_orders`].
    ListApprovedOrders,
    /// [`crate::OrderIntakeApi::account_customer_number`].
    ReadAccount,
    /// [`crate::OrderIntakeApi::pricebook_entries`].
    ListPricebookEntries,
    /// [`crate::OrderIntakeApi::find_order_by_request_id`].
    FindOrderByRequestId,
    /// [`crate::OrderIntakeApi::create_order`].
    CreateOrder,
    /// [`crate::RestOrderApi::describe`].
    Describe,
}

impl Action {
    /// The `action` label of the request metric: the name with `_` for spaces.
    pub fn metric_label(self) -> &'static str {
        match self {
            Action::FetchOrder => "fetch_order",
            Action::UpdateOrder => "update_order",
            Action::ListApprovedOrders => "list_approved_orders",
            Action::ReadAccount => "read_account",
            Action::ListPricebookEntries => "list_pricebook_entries",
            Action::FindOrderByRequestId => "find_order_by_request_id",
            Action::CreateOrder => "create_order",
            Action::Describe => "describe_sobject",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::FetchOrder => "fetch order",
            Action::UpdateOrder => "update order",
            Action::ListApprovedOrders => "list approved orders",
            Action::ReadAccount => "read account",
            Action::ListPricebookEntries => "list pricebook entries",
            Action::FindOrderByRequestId => "find order by request id",
            Action::CreateOrder => "create order",
            Action::Describe => "describe sobject",
        })
    }
}

/// What the caller should do about an [`Error`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorClass {
    /// Try again later (5xx, 503, timeouts, network, `UNABLE_TO_LOCK_ROW`, API limit).
    Retryable,
    /// Trying again cannot help (validation, picklist, not found, malformed data): give up on
    /// this order.
    Permanent,
    /// An operator must fix configuration or permissions (credentials, field access, an
    /// endpoint that answers with a redirect).
    Reconfigure,
}

/// Errors of the Salesforce REST client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The id is not a 15/18-character Salesforce id; no request was made.
    #[error("invalid salesforce id \"{id}\": {reason}")]
    InvalidId {
        /// The offending id, escaped and truncated.
        id: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// No such Order (empty query result or 404 `NOT_FOUND`).
    #[error("{action}: order {order_id} not found")]
    NotFound {
        /// The operation.
        action: Action,
        /// The Order id.
        order_id: String,
    },

    /// The org has no sObject of this name, or the integration user cannot see it (404
    /// `NOT_FOUND` on describe): check the object's permissions in the user's profile or
    /// permission set.
    #[error("{action}: salesforce has no sobject {sobject} visible to the integration user")]
    UnknownSObject {
        /// The operation.
        action: Action,
        /// The sObject API name asked for.
        sobject: String,
    },

    /// Salesforce answered an error (`[{message, errorCode, fields}]`).
    #[error("{action}: salesforce answered http {status} {code}: {message}")]
    Api {
        /// The operation.
        action: Action,
        /// HTTP status.
        status: u16,
        /// The first error's `errorCode` (empty when the body had none).
        code: String,
        /// The first error's `message`.
        message: String,
        /// The first error's `fields`.
        fields: Vec<String>,
    },

    /// Salesforce still answered 401 `INVALID_SESSION_ID` with a freshly minted token.
    #[error("{action}: salesforce rejected a freshly minted session (INVALID_SESSION_ID)")]
    SessionRejected {
        /// The operation.
        action: Action,
    },

    /// No token could be had.
    #[error("{action}: {source}")]
    Auth {
        /// The operation.
        action: Action,
        /// Why.
        #[source]
        source: sf_auth::Error,
    },

    /// Network failure or timeout.
    #[error("{action}: {reason}")]
    Transport {
        /// The operation.
        action: Action,
        /// Whether it was a timeout.
        timeout: bool,
        /// What happened.
        reason: String,
    },

    /// A success status with a body that is not what Salesforce sends.
    #[error("{action}: unexpected answer from salesforce: {reason}")]
    InvalidResponse {
        /// The operation.
        action: Action,
        /// What is wrong (never record values).
        reason: String,
    },

    /// Refused before anything was sent: the request cannot be right (too many items, a
    /// quantity out of range, config options that are not a JSON object, a bad request id).
    #[error("{action}: {reason}")]
    InvalidRequest {
        /// The operation.
        action: Action,
        /// What is wrong (never a value that may be secret).
        reason: String,
    },

    /// Salesforce refused to create a record because a unique field already holds this value
    /// (`DUPLICATE_VALUE`): for [`crate::OrderIntakeApi::create_order`] on
    /// `Portal_Request_Id__c`, the Order exists; look it up with
    /// [`crate::OrderIntakeApi::find_order_by_request_id`].
    #[error("{action}: salesforce already holds a record with this {field} (DUPLICATE_VALUE)")]
    Duplicate {
        /// The operation.
        action: Action,
        /// The unique field, e.g. `Portal_Request_Id__c`.
        field: String,
    },

    /// The request may or may not have taken effect (a timeout or a connection lost after it
    /// was sent, an answer that could not be read). For
    /// [`crate::OrderIntakeApi::create_order`]: resolve it with
    /// [`crate::OrderIntakeApi::find_order_by_request_id`]; sending the create again is safe too,
    /// as the unique request id turns a second Order into [`Error::Duplicate`].
    #[error("{action}: outcome unknown, look the record up before trying again: {reason}")]
    UnknownOutcome {
        /// The operation.
        action: Action,
        /// What happened.
        reason: String,
    },

    /// The Order's data cannot be provisioned as it is (e.g. quantity 1.5, config options that
    /// are not a JSON object).
    #[error("order {order_id}: {reason}")]
    InvalidRecord {
        /// The Order id.
        order_id: String,
        /// What is wrong (never the value of a secret field).
        reason: String,
    },
}

impl Error {
    /// What the caller should do.
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::InvalidId { .. }
            | Error::NotFound { .. }
            | Error::InvalidRecord { .. }
            | Error::InvalidRequest { .. }
            | Error::Duplicate { .. }
            | Error::InvalidResponse { .. } => ErrorClass::Permanent,
            Error::UnknownOutcome { .. } => ErrorClass::Retryable,
            Error::SessionRejected { .. } | Error::UnknownSObject { .. } => ErrorClass::Reconfigure,
            Error::Transport { .. } => ErrorClass::Retryable,
            Error::Auth { source, .. } if source.is_retryable() => ErrorClass::Retryable,
            Error::Auth { .. } => ErrorClass::Reconfigure,
            Error::Api { status, code, .. } => classify_api(*status, code),
        }
    }

    /// Shorthand for `class() == ErrorClass::Retryable`.
    pub fn is_retryable(&self) -> bool {
        self.class() == ErrorClass::Retryable
    }

    /// Whether the request may have taken effect although it failed
    /// ([`Error::UnknownOutcome`]): look the record up before acting on the failure.
    pub fn is_unknown_outcome(&self) -> bool {
        matches!(self, Error::UnknownOutcome { .. })
    }
}

fn classify_api(status: u16, code: &str) -> ErrorClass {
    match code {
        "UNABLE_TO_LOCK_ROW"
        | "SERVER_UNAVAILABLE"
        | "REQUEST_LIMIT_EXCEEDED"
        | "REQUEST_RUNNING_TOO_LONG"
        | "QUERY_TIMEOUT" => return ErrorClass::Retryable,
        "INVALID_SESSION_ID"
        | "INSUFFICIENT_ACCESS"
        | "INSUFFICIENT_ACCESS_OR_READONLY"
        | "API_DISABLED_FOR_ORG"
        | "API_CURRENTLY_DISABLED" => return ErrorClass::Reconfigure,
        _ => {}
    }
    match status {
        408 | 429 | 500..=599 => ErrorClass::Retryable,
        // A redirect is not followed: the configured endpoint is not where the API answers.
        300..=399 | 401 | 403 => ErrorClass::Reconfigure,
        _ => ErrorClass::Permanent,
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, code: &str) -> Error {
        Error::Api {
            action: Action::UpdateOrder,
            status,
            code: code.into(),
            message: String::new(),
            fields: Vec::new(),
        }
    }

    #[test]
    fn the_metric_label_is_the_name_with_underscores() {
        for action in [
            Action::FetchOrder,
            Action::UpdateOrder,
            Action::ListApprovedOrders,
            Action::ReadAccount,
            Action::ListPricebookEntries,
            Action::FindOrderByRequestId,
            Action::CreateOrder,
            Action::Describe,
        ] {
            assert_eq!(action.metric_label(), action.to_string().replace(' ', "_"));
        }
    }

    #[test]
    fn api_errors_are_classified_by_code_then_status() {
        let check = |status, code: &str, want| assert_eq!(api(status, code).class(), want);
        check(503, "SERVER_UNAVAILABLE", ErrorClass::Retryable);
        check(500, "UNKNOWN_EXCEPTION", ErrorClass::Retryable);
        check(400, "UNABLE_TO_LOCK_ROW", ErrorClass::Retryable);
        check(403, "REQUEST_LIMIT_EXCEEDED", ErrorClass::Retryable);
        check(
            400,
            "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
            ErrorClass::Permanent,
        );
        check(
            400,
            "FIELD_CUSTOM_VALIDATION_EXCEPTION",
            ErrorClass::Permanent,
        );
        check(400, "INVALID_FIELD", ErrorClass::Permanent);
        check(404, "NOT_FOUND", ErrorClass::Permanent);
        check(403, "INSUFFICIENT_ACCESS", ErrorClass::Reconfigure);
        check(401, "INVALID_SESSION_ID", ErrorClass::Reconfigure);
        check(302, "", ErrorClass::Reconfigure);
        check(301, "", ErrorClass::Reconfigure);
    }

    #[test]
    fn auth_errors_follow_the_token_source() {
        let retry = Error::Auth {
            action: Action::FetchOrder,
            source: sf_auth::Error::Unavailable {
                status: None,
                reason: "connect failed".into(),
            },
        };
        assert!(retry.is_retryable());
        let fix = Error::Auth {
            action: Action::FetchOrder,
            source: sf_auth::Error::InvalidAssertion,
        };
        assert_eq!(fix.class(), ErrorClass::Reconfigure);
    }
}
