//! The hub's domain error: an Azure IoT Hub error code plus a human message.
//!
//! Every layer above (REST, MQTT, CLI) turns a [`HubError`] into its own wire
//! form; the mapping from [`ErrorCode`] to an HTTP status lives here, in one
//! exhaustive match, so no caller can forget a variant.

use std::fmt;

/// Azure IoT Hub error codes that ferrohub answers with. The names are the
/// ones Azure puts in `iothub-errorcode` and in the legacy
/// `ErrorCode:<Name>;...` message, which the Node service SDK parses into its
/// typed errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// A request argument is invalid (bad id, bad field value, bad query).
    ArgumentInvalid,
    /// A required argument is missing.
    ArgumentNull,
    /// The request's `api-version` is missing or not one the hub serves.
    InvalidProtocolVersion,
    /// The body is not valid JSON or has the wrong shape.
    IotHubFormatError,
    /// The operation is not allowed in the current state.
    InvalidOperation,
    /// A bulk request names the same device twice.
    DeviceDefinedMultipleTimes,
    /// A bulk registry request failed for at least one device.
    BulkRegistryOperationFailure,
    /// Missing, malformed, forged or expired credentials.
    IotHubUnauthorizedAccess,
    /// Valid credentials without the permission the operation needs. Azure
    /// answers this with 401 too (the .NET SDK raises UnauthorizedException).
    IotHubUnauthorized,
    /// A quota of the hub is used up.
    IotHubQuotaExceeded,
    /// A device's cloud-to-device queue is full.
    DeviceMaximumQueueDepthExceeded,
    /// The device identity does not exist.
    DeviceNotFound,
    /// The device is not connected (or not listening for methods).
    DeviceNotOnline,
    /// The route does not exist.
    IotHubNotFound,
    /// A create named a device that already exists.
    DeviceAlreadyExists,
    /// If-Match did not match the current etag.
    PreconditionFailed,
    /// A cloud-to-device message (or feedback batch) was settled with a lock
    /// token that is not the current one: wrong, expired or already used.
    DeviceMessageLockLost,
    /// The request body is larger than the hub accepts.
    MessageTooLarge,
    /// Too many devices in one request or in the hub.
    TooManyDevices,
    /// The caller is over a rate limit.
    ThrottlingException,
    /// Something failed inside the hub.
    ServerError,
    /// The device did not answer in time.
    GatewayTimeout,
    /// The hub cannot serve the request right now (e.g. shutting down).
    ServiceUnavailable,
    /// Storing this would leave the hub's disk with less free space than it
    /// keeps in reserve (HTTP 507; Azure has no such code, ferrohub's
    /// firmware store answers it).
    InsufficientStorage,
    /// A configuration's target condition is not a valid condition.
    InvalidConfigurationTargetCondition,
    /// A configuration's content is malformed or not supported.
    InvalidConfigurationContent,
    /// An update tried to change a configuration's content.
    CannotModifyImmutableConfigurationContent,
    /// A configuration's custom metrics are invalid (bad query, too many).
    InvalidConfigurationCustomMetricsQuery,
    /// The configuration does not exist.
    ConfigurationNotFound,
    /// A create named a configuration that already exists.
    ConfigurationAlreadyExists,
    /// The hub holds as many configurations as it may.
    ConfigurationCountLimitExceeded,
}

impl ErrorCode {
    /// The name Azure uses for this code.
    pub fn name(self) -> &'static str {
        match self {
            Self::ArgumentInvalid => "ArgumentInvalid",
            Self::ArgumentNull => "ArgumentNull",
            Self::InvalidProtocolVersion => "InvalidProtocolVersion",
            Self::IotHubFormatError => "IotHubFormatError",
            Self::InvalidOperation => "InvalidOperation",
            Self::DeviceDefinedMultipleTimes => "DeviceDefinedMultipleTimes",
            Self::BulkRegistryOperationFailure => "BulkRegistryOperationFailure",
            Self::IotHubUnauthorizedAccess => "IotHubUnauthorizedAccess",
            Self::IotHubUnauthorized => "IotHubUnauthorized",
            Self::IotHubQuotaExceeded => "IotHubQuotaExceeded",
            Self::DeviceMaximumQueueDepthExceeded => "DeviceMaximumQueueDepthExceeded",
            Self::DeviceNotFound => "DeviceNotFound",
            Self::DeviceNotOnline => "DeviceNotOnline",
            Self::IotHubNotFound => "IotHubNotFound",
            Self::DeviceAlreadyExists => "DeviceAlreadyExists",
            Self::PreconditionFailed => "PreconditionFailed",
            Self::DeviceMessageLockLost => "DeviceMessageLockLost",
            Self::MessageTooLarge => "MessageTooLarge",
            Self::TooManyDevices => "TooManyDevices",
            Self::ThrottlingException => "ThrottlingException",
            Self::ServerError => "ServerError",
            Self::GatewayTimeout => "GatewayTimeout",
            Self::ServiceUnavailable => "ServiceUnavailable",
            Self::InsufficientStorage => "InsufficientStorage",
            Self::InvalidConfigurationTargetCondition => "InvalidConfigurationTargetCondition",
            Self::InvalidConfigurationContent => "InvalidConfigurationContent",
            Self::CannotModifyImmutableConfigurationContent => "CannotModifyImmutableConfigurationContent",
            Self::InvalidConfigurationCustomMetricsQuery => "InvalidConfigurationCustomMetricsQuery",
            Self::ConfigurationNotFound => "ConfigurationNotFound",
            Self::ConfigurationAlreadyExists => "ConfigurationAlreadyExists",
            Self::ConfigurationCountLimitExceeded => "ConfigurationCountLimitExceeded",
        }
    }

    /// The HTTP status Azure answers this code with.
    pub fn http_status(self) -> u16 {
        match self {
            Self::ArgumentInvalid
            | Self::ArgumentNull
            | Self::InvalidProtocolVersion
            | Self::IotHubFormatError
            | Self::InvalidOperation
            | Self::DeviceDefinedMultipleTimes
            | Self::BulkRegistryOperationFailure
            | Self::InvalidConfigurationTargetCondition
            | Self::InvalidConfigurationContent
            | Self::CannotModifyImmutableConfigurationContent
            | Self::InvalidConfigurationCustomMetricsQuery => 400,
            Self::IotHubUnauthorizedAccess | Self::IotHubUnauthorized => 401,
            Self::IotHubQuotaExceeded | Self::DeviceMaximumQueueDepthExceeded => 403,
            Self::DeviceNotFound
            | Self::IotHubNotFound
            | Self::DeviceNotOnline
            | Self::ConfigurationNotFound => 404,
            Self::DeviceAlreadyExists | Self::ConfigurationAlreadyExists => 409,
            Self::PreconditionFailed | Self::DeviceMessageLockLost => 412,
            Self::MessageTooLarge | Self::TooManyDevices | Self::ConfigurationCountLimitExceeded => 413,
            Self::ThrottlingException => 429,
            Self::ServerError => 500,
            Self::GatewayTimeout => 504,
            Self::ServiceUnavailable => 503,
            Self::InsufficientStorage => 507,
        }
    }

    /// Azure's six-digit code (status × 1000 + sub-code), as sent in bulk
    /// results and in MQTT twin error bodies. The configuration codes
    /// (4004xx, 404301, 409401, 413101) are the ones listed on Microsoft's
    /// "Understand and resolve Azure IoT Hub errors" page
    /// (MicrosoftDocs/azure-docs `articles/iot-hub/troubleshoot-error-codes.md`),
    /// not observed on a live hub.
    pub fn numeric(self) -> u32 {
        match self {
            Self::ArgumentInvalid => 400004,
            Self::ArgumentNull => 400005,
            Self::InvalidProtocolVersion => 400001,
            Self::IotHubFormatError => 400006,
            Self::InvalidOperation => 400003,
            Self::DeviceDefinedMultipleTimes => 400011,
            Self::BulkRegistryOperationFailure => 400013,
            Self::IotHubUnauthorizedAccess => 401002,
            Self::IotHubUnauthorized => 401003,
            Self::IotHubQuotaExceeded => 403002,
            Self::DeviceMaximumQueueDepthExceeded => 403004,
            Self::DeviceNotFound => 404001,
            Self::DeviceNotOnline => 404103,
            Self::IotHubNotFound => 404000,
            Self::DeviceAlreadyExists => 409001,
            Self::PreconditionFailed => 412001,
            Self::DeviceMessageLockLost => 412002,
            Self::MessageTooLarge => 413001,
            Self::TooManyDevices => 413002,
            Self::ThrottlingException => 429001,
            Self::ServerError => 500001,
            Self::GatewayTimeout => 504101,
            Self::ServiceUnavailable => 503001,
            Self::InsufficientStorage => 507001,
            Self::InvalidConfigurationTargetCondition => 400401,
            Self::InvalidConfigurationContent => 400402,
            Self::CannotModifyImmutableConfigurationContent => 400403,
            Self::InvalidConfigurationCustomMetricsQuery => 400404,
            Self::ConfigurationNotFound => 404301,
            Self::ConfigurationAlreadyExists => 409401,
            Self::ConfigurationCountLimitExceeded => 413101,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A failed hub operation: what went wrong (the code) and why (the message,
/// safe to show to the caller).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct HubError {
    /// The Azure error code.
    pub code: ErrorCode,
    /// A message for the caller.
    pub message: String,
    /// When the caller may try again (a throttle's refusal); HTTP sends it
    /// as `Retry-After`.
    pub retry_after: Option<std::time::Duration>,
}

impl HubError {
    /// An error with the given code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), retry_after: None }
    }

    /// 429 ThrottlingException: over the `what` rate, try again after `wait`.
    pub fn throttled(what: &str, wait: std::time::Duration) -> Self {
        Self {
            code: ErrorCode::ThrottlingException,
            message: format!(
                "The {what} throttle of the hub is exceeded; retry after {} ms",
                wait.as_millis()
            ),
            retry_after: Some(wait),
        }
    }

    /// The `Retry-After` value in whole seconds, rounded up (at least 1):
    /// a client that waits that long finds the bucket refilled.
    pub fn retry_after_secs(&self) -> Option<u64> {
        self.retry_after.map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0)).map(|s| s.max(1))
    }

    /// 400 ArgumentInvalid.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::ArgumentInvalid, message)
    }

    /// 400 IotHubFormatError (malformed body).
    pub fn format(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::IotHubFormatError, message)
    }

    /// 404 DeviceNotFound for the given id.
    pub fn device_not_found(device_id: &str) -> Self {
        Self::new(ErrorCode::DeviceNotFound, format!("Device {device_id} not registered"))
    }

    /// 412 PreconditionFailed.
    pub fn precondition_failed() -> Self {
        Self::new(
            ErrorCode::PreconditionFailed,
            "Precondition failed: the etag does not match the current one",
        )
    }

    /// 412 DeviceMessageLockLost: the lock token does not hold the message
    /// (or feedback batch) any more, or never did.
    pub fn lock_lost(lock_token: &str) -> Self {
        Self::new(
            ErrorCode::DeviceMessageLockLost,
            format!("The lock token {lock_token} does not hold a message: it is unknown, expired or already settled"),
        )
    }

    /// 401 IotHubUnauthorizedAccess.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::IotHubUnauthorizedAccess, message)
    }

    /// 500 ServerError; the detail is logged by the caller, not sent.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::ServerError, message)
    }
}

/// Result type of the core and service layers.
pub type HubResult<T> = Result<T, HubError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_codes_agree_with_http_status() {
        let all = [
            ErrorCode::ArgumentInvalid,
            ErrorCode::ArgumentNull,
            ErrorCode::InvalidProtocolVersion,
            ErrorCode::IotHubFormatError,
            ErrorCode::InvalidOperation,
            ErrorCode::DeviceDefinedMultipleTimes,
            ErrorCode::BulkRegistryOperationFailure,
            ErrorCode::IotHubUnauthorizedAccess,
            ErrorCode::IotHubUnauthorized,
            ErrorCode::IotHubQuotaExceeded,
            ErrorCode::DeviceMaximumQueueDepthExceeded,
            ErrorCode::DeviceNotFound,
            ErrorCode::DeviceNotOnline,
            ErrorCode::GatewayTimeout,
            ErrorCode::IotHubNotFound,
            ErrorCode::DeviceAlreadyExists,
            ErrorCode::PreconditionFailed,
            ErrorCode::DeviceMessageLockLost,
            ErrorCode::MessageTooLarge,
            ErrorCode::TooManyDevices,
            ErrorCode::ThrottlingException,
            ErrorCode::ServerError,
            ErrorCode::ServiceUnavailable,
            ErrorCode::InsufficientStorage,
            ErrorCode::InvalidConfigurationTargetCondition,
            ErrorCode::InvalidConfigurationContent,
            ErrorCode::CannotModifyImmutableConfigurationContent,
            ErrorCode::InvalidConfigurationCustomMetricsQuery,
            ErrorCode::ConfigurationNotFound,
            ErrorCode::ConfigurationAlreadyExists,
            ErrorCode::ConfigurationCountLimitExceeded,
        ];
        for code in all {
            assert_eq!(code.numeric() / 1000, u32::from(code.http_status()), "{code}");
        }
        let names: std::collections::HashSet<_> = all.iter().map(|c| c.name()).collect();
        let numbers: std::collections::HashSet<_> = all.iter().map(|c| c.numeric()).collect();
        assert_eq!((names.len(), numbers.len()), (all.len(), all.len()), "names and codes are unique");
    }

    #[test]
    fn a_throttle_refusal_is_429_with_a_retry_after_rounded_up() {
        let e = HubError::throttled("twin-read", std::time::Duration::from_millis(1200));
        assert_eq!((e.code.http_status(), e.code.numeric()), (429, 429001));
        assert_eq!(e.retry_after_secs(), Some(2));
        assert_eq!(HubError::throttled("x", std::time::Duration::ZERO).retry_after_secs(), Some(1));
        assert_eq!(HubError::invalid("x").retry_after_secs(), None);
    }
}
