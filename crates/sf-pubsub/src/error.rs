//! The crate's one error type, classified by what the caller should do ([`Action`]).

/// Prefix of every Pub/Sub `error-code` trailer.
pub(crate) const CODE_PREFIX: &str = "sfdc.platform.eventbus.grpc.";

/// What a caller should do about an [`Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// Transient: back off and try again (resubscribe with the stored replay id).
    Retry,
    /// The token was rejected: invalidate it, mint a new one, try again.
    Reauthenticate,
    /// The replay id is unknown, expired or malformed: start again from a preset.
    ChangeReplay,
    /// Configuration is wrong (endpoint, topic, permissions): fix it; retrying does not help.
    Reconfigure,
    /// This input can never succeed (a bad event, a bad schema): set it aside.
    Permanent,
}

/// Errors of the Pub/Sub client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting is invalid.
    #[error("invalid pub/sub configuration: {what}")]
    Config {
        /// What is wrong.
        what: String,
    },
    /// The token source failed.
    #[error("cannot obtain a salesforce access token")]
    Token {
        /// Why.
        #[source]
        source: sf_auth::Error,
    },
    /// Token, instance URL or org id cannot be sent as gRPC metadata.
    #[error("access token data is not valid gRPC metadata ({field})")]
    Metadata {
        /// Which metadata key.
        field: &'static str,
    },
    /// A gRPC call ended with a status.
    #[error(
        "pub/sub {rpc} failed: {code:?}, error-code {error_code:?}, rpc-id {rpc_id:?}: {message}"
    )]
    Rpc {
        /// The RPC (`Subscribe`, `GetSchema`, ...).
        rpc: &'static str,
        /// gRPC status code.
        code: tonic::Code,
        /// The `error-code` trailer, e.g. `sfdc.platform.eventbus.grpc.service.unavailable`.
        error_code: Option<String>,
        /// The `rpc-id` trailer, for Salesforce support.
        rpc_id: Option<String>,
        /// The status message.
        message: String,
    },
    /// No message arrived on a stream within the watchdog period.
    #[error("pub/sub {rpc} stream silent for {seconds:.1}s, torn down")]
    Silent {
        /// The RPC.
        rpc: &'static str,
        /// How long it was silent.
        seconds: f64,
    },
    /// A schema from `GetSchema` cannot be parsed.
    #[error("schema {schema_id} cannot be parsed: {reason}")]
    Schema {
        /// The schema id.
        schema_id: String,
        /// Parser message.
        reason: String,
    },
    /// A payload is not a valid Avro datum of its writer schema.
    #[error("malformed avro payload at byte {offset}: {reason}")]
    MalformedPayload {
        /// Byte offset where decoding failed.
        offset: usize,
        /// What was wrong.
        reason: String,
    },
    /// A required field is absent from the schema or null in the event.
    #[error("required field {field} is missing or null")]
    MissingField {
        /// The Avro field name.
        field: &'static str,
    },
    /// A field's schema type does not fit the typed record.
    #[error("field {field} has type {found}, expected {expected}")]
    MistypedField {
        /// The Avro field name.
        field: &'static str,
        /// What the typed record accepts.
        expected: &'static str,
        /// What the writer schema says.
        found: String,
    },
    /// Encoding a record for publishing failed.
    #[error("cannot encode event with schema {schema_id}: {reason}")]
    Encode {
        /// The schema id.
        schema_id: String,
        /// Why.
        reason: String,
    },
    /// The subscription kept failing and gave up.
    #[error("subscription to {topic} gave up after {attempts} consecutive failures")]
    GaveUp {
        /// Topic.
        topic: String,
        /// Consecutive failed attempts.
        attempts: u32,
        /// The last failure.
        #[source]
        last: Box<Error>,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Builds an [`Error::Rpc`] from a gRPC status, reading the `error-code` and `rpc-id`
    /// trailers Salesforce adds to a failed call.
    pub fn from_status(rpc: &'static str, status: &tonic::Status) -> Self {
        let text = |key: &str| {
            status
                .metadata()
                .get(key)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        Error::Rpc {
            rpc,
            code: status.code(),
            error_code: text("error-code"),
            rpc_id: text("rpc-id"),
            message: status.message().to_owned(),
        }
    }

    /// The `error-code` trailer without its `sfdc.platform.eventbus.grpc.` prefix, if any.
    pub fn error_code(&self) -> Option<&str> {
        match self {
            Error::Rpc {
                error_code: Some(code),
                ..
            } => Some(code.strip_prefix(CODE_PREFIX).unwrap_or(code)),
            _ => None,
        }
    }

    /// What the caller should do about this error.
    pub fn action(&self) -> Action {
        match self {
            Error::Config { .. } | Error::Metadata { .. } => Action::Reconfigure,
            Error::Token { source } if source.needs_reconfiguration() => Action::Reconfigure,
            Error::Token { .. } | Error::Silent { .. } | Error::GaveUp { .. } => Action::Retry,
            Error::Schema { .. }
            | Error::MalformedPayload { .. }
            | Error::MissingField { .. }
            | Error::MistypedField { .. }
            | Error::Encode { .. } => Action::Permanent,
            Error::Rpc { code, .. } => {
                let code_text = self.error_code().unwrap_or("");
                if code_text.starts_with("subscription.fetch.replayid.") {
                    return Action::ChangeReplay;
                }
                if code_text.starts_with("service.auth.") || *code == tonic::Code::Unauthenticated {
                    return Action::Reauthenticate;
                }
                if code_text == "service.unavailable" {
                    return Action::Retry;
                }
                if !code_text.is_empty() {
                    // topic.not.found, limit.exceeded, tenant.license, ...: a person must act.
                    return Action::Reconfigure;
                }
                match code {
                    tonic::Code::Unavailable
                    | tonic::Code::Internal
                    | tonic::Code::Unknown
                    | tonic::Code::Cancelled
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::ResourceExhausted
                    | tonic::Code::Aborted => Action::Retry,
                    _ => Action::Reconfigure,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn status(code: tonic::Code, error_code: Option<&str>) -> Error {
        let mut status = tonic::Status::new(code, "x");
        if let Some(c) = error_code {
            status
                .metadata_mut()
                .insert("error-code", c.parse().unwrap());
        }
        Error::from_status("Subscribe", &status)
    }

    #[test]
    fn classifies_trailer_codes() {
        use tonic::Code::*;
        let p = |s: &str| format!("{CODE_PREFIX}{s}");
        let cases = [
            (
                status(
                    InvalidArgument,
                    Some(&p("subscription.fetch.replayid.corrupted")),
                ),
                Action::ChangeReplay,
            ),
            (
                status(
                    InvalidArgument,
                    Some(&p("subscription.fetch.replayid.validation.failed")),
                ),
                Action::ChangeReplay,
            ),
            (
                status(Unauthenticated, Some(&p("service.auth.error"))),
                Action::Reauthenticate,
            ),
            (status(Unauthenticated, None), Action::Reauthenticate),
            (
                status(Internal, Some(&p("service.unavailable"))),
                Action::Retry,
            ),
            (
                status(NotFound, Some(&p("topic.not.found"))),
                Action::Reconfigure,
            ),
            (status(Unavailable, None), Action::Retry),
            (status(PermissionDenied, None), Action::Reconfigure),
        ];
        for (err, want) in cases {
            assert_eq!(err.action(), want, "{err}");
        }
        assert_eq!(
            status(Internal, Some(&p("service.unavailable"))).error_code(),
            Some("service.unavailable")
        );
    }
}
