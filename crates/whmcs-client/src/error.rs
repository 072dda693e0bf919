//! The crate's error type, classified by what the caller should do next.

use std::fmt;

/// The WHMCS API actions this crate calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Action {
    /// `GetClientsDetails`
    GetClientsDetails,
    /// `GetClientsProducts`
    GetClientsProducts,
    /// `AddOrder`
    AddOrder,
    /// `AcceptOrder`
    AcceptOrder,
    /// `GetOrders`
    GetOrders,
    /// `ModuleCreate`
    ModuleCreate,
    /// `AddClient`
    AddClient,
    /// `GetProducts`
    GetProducts,
    /// `GetPaymentMethods`
    GetPaymentMethods,
}

impl Action {
    /// The `action` field value (WHMCS matches it case-insensitively; we send the documented
    /// CamelCase).
    pub fn as_str(self) -> &'static str {
        match self {
            Action::GetClientsDetails => "GetClientsDetails",
            Action::GetClientsProducts => "GetClientsProducts",
            Action::AddOrder => "AddOrder",
            Action::AcceptOrder => "AcceptOrder",
            Action::GetOrders => "GetOrders",
            Action::ModuleCreate => "ModuleCreate",
            Action::AddClient => "AddClient",
            Action::GetProducts => "GetProducts",
            Action::GetPaymentMethods => "GetPaymentMethods",
        }
    }

    /// Whether the action changes WHMCS and is not idempotent: a lost answer means the change
    /// may or may not have happened.
    pub fn is_mutating(self) -> bool {
        matches!(
            self,
            Action::AddOrder | Action::AcceptOrder | Action::ModuleCreate | Action::AddClient
        )
    }

    /// Whether the action may run a server module (control panel) inside the request and so
    /// gets the long provisioning timeout.
    pub fn provisions(self) -> bool {
        matches!(self, Action::AcceptOrder | Action::ModuleCreate)
    }

    /// Whether the action is a list that takes `limitstart`/`limitnum`.
    pub fn is_list(self) -> bool {
        matches!(self, Action::GetClientsProducts | Action::GetOrders)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the caller should do about an [`Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// Credentials, IP allow-list, API role, payment method, URL: fix the configuration. Never
    /// retry (WHMCS may ban an address after repeated failed logins).
    Configuration,
    /// WHMCS refused the request on business rules (client not found or closed, order not
    /// pending, required custom field missing, ...). Retrying the same request will not help.
    Business,
    /// The request did not take effect or is safe to repeat (network failure before sending,
    /// HTTP 5xx or a non-JSON body on a read): retry with backoff.
    Transient,
    /// A non-idempotent request (AddOrder, AcceptOrder, ModuleCreate, AddClient) was sent but
    /// its answer was lost (timeout, connection dropped, unreadable reply). WHMCS may have
    /// applied it. **Reconcile before any retry**: look the order up by its external-ref
    /// custom field (`find_service_by_custom_field`) or with `GetOrders`.
    UnknownOutcome,
}

/// Errors of the WHMCS client.
///
/// Messages never contain credentials or request values; WHMCS's own message is kept (capped)
/// because operators need it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// WHMCS answered with an error about access: credentials, IP, API role, payment method.
    #[error("whmcs {action} refused by configuration (http {http_status}): {message}")]
    Configuration {
        /// The action called.
        action: Action,
        /// HTTP status of the reply.
        http_status: u16,
        /// WHMCS's message.
        message: String,
    },
    /// WHMCS answered with a business-rule error.
    #[error("whmcs {action} failed (http {http_status}): {message}")]
    Business {
        /// The action called.
        action: Action,
        /// HTTP status of the reply.
        http_status: u16,
        /// WHMCS's message.
        message: String,
    },
    /// The call failed in a way that is safe to retry.
    #[error("whmcs {action} transport failure: {reason}")]
    Transient {
        /// The action called.
        action: Action,
        /// HTTP status when a reply arrived.
        http_status: Option<u16>,
        /// What went wrong.
        reason: String,
    },
    /// A non-idempotent call whose outcome is unknown: reconcile before retrying.
    #[error("whmcs {action} outcome unknown, reconcile before retrying: {reason}")]
    UnknownOutcome {
        /// The action called.
        action: Action,
        /// HTTP status when a (broken) reply arrived.
        http_status: Option<u16>,
        /// What went wrong.
        reason: String,
    },
    /// The client is misconfigured or the request cannot be built (bad URL, empty order).
    #[error("invalid whmcs client configuration or request: {reason}")]
    InvalidInput {
        /// What is wrong.
        reason: String,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// WHMCS messages that mean "fix the configuration".
const CONFIGURATION_MESSAGES: &[&str] = &[
    "authentication failed",
    "invalid or missing credentials",
    "invalid ip",
    "forbidden ip",
    "invalid permissions",
    "invalid access key",
    "empty action request",
    "invalid payment method",
    "command not found",
];

const MAX_MESSAGE_CHARS: usize = 300;

impl Error {
    /// What the caller should do.
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::Configuration { .. } | Error::InvalidInput { .. } => ErrorClass::Configuration,
            Error::Business { .. } => ErrorClass::Business,
            Error::Transient { .. } => ErrorClass::Transient,
            Error::UnknownOutcome { .. } => ErrorClass::UnknownOutcome,
        }
    }

    /// True only for [`ErrorClass::Transient`]: an unknown outcome must be reconciled first.
    pub fn is_retryable(&self) -> bool {
        self.class() == ErrorClass::Transient
    }

    /// The action, when the error came from a call.
    pub fn action(&self) -> Option<Action> {
        match self {
            Error::Configuration { action, .. }
            | Error::Business { action, .. }
            | Error::Transient { action, .. }
            | Error::UnknownOutcome { action, .. } => Some(*action),
            Error::InvalidInput { .. } => None,
        }
    }

    /// WHMCS's own error message, when WHMCS answered with one.
    pub fn whmcs_message(&self) -> Option<&str> {
        match self {
            Error::Configuration { message, .. } | Error::Business { message, .. } => Some(message),
            _ => None,
        }
    }

    /// `Order ID not found or Status not Pending` (AcceptOrder on an order already accepted):
    /// check `GetOrders` and count an `Active` order as done.
    pub fn is_order_not_pending(&self) -> bool {
        self.whmcs_message().is_some_and(|m| {
            m.to_ascii_lowercase()
                .starts_with("order id not found or status not pending")
        })
    }

    /// `Client Not Found` / `Client ID Not Found`.
    pub fn is_client_not_found(&self) -> bool {
        self.whmcs_message().is_some_and(|m| {
            let m = m.to_ascii_lowercase();
            m.starts_with("client not found") || m.starts_with("client id not found")
        })
    }

    /// Builds the error for a WHMCS error envelope.
    pub(crate) fn from_envelope(action: Action, http_status: u16, message: &str) -> Self {
        let message: String = message.trim().chars().take(MAX_MESSAGE_CHARS).collect();
        let lower = message.to_ascii_lowercase();
        let is_config = CONFIGURATION_MESSAGES.iter().any(|p| lower.starts_with(p))
            || http_status == 401
            || http_status == 403;
        if is_config {
            Error::Configuration {
                action,
                http_status,
                message,
            }
        } else {
            Error::Business {
                action,
                http_status,
                message,
            }
        }
    }

    /// A failure after the request was (or may have been) sent: unknown for mutating actions,
    /// transient for reads.
    pub(crate) fn after_send(action: Action, http_status: Option<u16>, reason: String) -> Self {
        if action.is_mutating() {
            Error::UnknownOutcome {
                action,
                http_status,
                reason,
            }
        } else {
            Error::Transient {
                action,
                http_status,
                reason,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class_of(action: Action, status: u16, message: &str) -> ErrorClass {
        Error::from_envelope(action, status, message).class()
    }

    #[test]
    fn configuration_messages() {
        use ErrorClass::*;
        for (status, message) in [
            (403, "Authentication Failed"),
            (403, "Invalid or missing credentials"),
            (400, "Invalid IP 10.1.2.3"),
            (
                403,
                "Invalid Permissions: API action \"addorder\" is not allowed",
            ),
            (
                200,
                "Invalid Payment Method. Valid options include banktransfer",
            ),
            (403, "something new"),
        ] {
            assert_eq!(
                class_of(Action::AddOrder, status, message),
                Configuration,
                "{message}"
            );
        }
    }

    #[test]
    fn business_messages() {
        for message in [
            "Client ID Not Found",
            "Client Not Found",
            "Order ID not found or Status not Pending",
            "Unable to add order when client status is Closed",
            "Expecting parameter 'pid' to be an array",
            "You did not provide required custom field value for External Ref",
        ] {
            assert_eq!(
                class_of(Action::AddOrder, 200, message),
                ErrorClass::Business,
                "{message}"
            );
        }
        assert!(
            Error::from_envelope(
                Action::AcceptOrder,
                200,
                "Order ID not found or Status not Pending"
            )
            .is_order_not_pending()
        );
        assert!(
            Error::from_envelope(Action::GetClientsDetails, 200, "Client Not Found")
                .is_client_not_found()
        );
    }

    #[test]
    fn lost_answers_depend_on_the_action() {
        assert_eq!(
            Error::after_send(Action::AddOrder, None, "x".into()).class(),
            ErrorClass::UnknownOutcome
        );
        assert_eq!(
            Error::after_send(Action::GetOrders, None, "x".into()).class(),
            ErrorClass::Transient
        );
        assert!(!Error::after_send(Action::AcceptOrder, None, "x".into()).is_retryable());
    }

    #[test]
    fn long_messages_are_capped() {
        let long = "x".repeat(5000);
        let err = Error::from_envelope(Action::AddOrder, 200, &long);
        assert_eq!(err.whmcs_message().map(str::len), Some(MAX_MESSAGE_CHARS));
    }
}
