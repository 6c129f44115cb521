//! The one error edge: every error that leaves the stack or a front end is classified here
//! into an HTTP status and a gRPC code together, so the two protocols never disagree.

use http::StatusCode;
use infergate_runtime::{RuntimeError, TensorError};

/// Errors inside the stack travel boxed; layers define small named types.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The error classes of the architecture's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidInput,
    TooLarge,
    NotFound,
    Overloaded,
    RateLimited,
    DeadlineExceeded,
    /// The client did not send its request in time (slow body).
    RequestTimeout,
    NotReady,
    Unauthenticated,
    Forbidden,
    /// The target is not in a state that allows the action (a finished canary, a promotion
    /// the gates refuse).
    Conflict,
    Internal,
}

impl ErrorKind {
    pub fn http_status(self) -> StatusCode {
        match self {
            Self::InvalidInput => StatusCode::BAD_REQUEST,
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::Overloaded | Self::NotReady => StatusCode::SERVICE_UNAVAILABLE,
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::Unauthenticated => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::Conflict => StatusCode::CONFLICT,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn grpc_code(self) -> tonic::Code {
        match self {
            Self::InvalidInput => tonic::Code::InvalidArgument,
            Self::TooLarge | Self::RateLimited => tonic::Code::ResourceExhausted,
            Self::NotFound => tonic::Code::NotFound,
            Self::Overloaded | Self::NotReady => tonic::Code::Unavailable,
            Self::DeadlineExceeded | Self::RequestTimeout => tonic::Code::DeadlineExceeded,
            Self::Unauthenticated => tonic::Code::Unauthenticated,
            Self::Forbidden => tonic::Code::PermissionDenied,
            Self::Conflict => tonic::Code::FailedPrecondition,
            Self::Internal => tonic::Code::Internal,
        }
    }

    /// Label for metrics (`outcome`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidInput => "invalid_input",
            Self::TooLarge => "too_large",
            Self::NotFound => "not_found",
            Self::Overloaded => "overloaded",
            Self::RateLimited => "rate_limited",
            Self::DeadlineExceeded => "deadline_exceeded",
            Self::RequestTimeout => "request_timeout",
            Self::NotReady => "not_ready",
            Self::Unauthenticated => "unauthenticated",
            Self::Forbidden => "forbidden",
            Self::Conflict => "conflict",
            Self::Internal => "internal",
        }
    }
}

/// An error with its class and a precise, lowercase message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ServeError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ServeError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    /// Classifies any error from the stack. This is the only place errors become classes.
    pub fn classify(error: &(dyn std::error::Error + 'static)) -> Self {
        if let Some(e) = error.downcast_ref::<ServeError>() {
            return e.clone();
        }
        if let Some(e) = error.downcast_ref::<RuntimeError>() {
            let kind = match e {
                RuntimeError::InvalidInput(_) | RuntimeError::Tensor(_) => ErrorKind::InvalidInput,
                RuntimeError::QueueFull(_) => ErrorKind::Overloaded,
                RuntimeError::Unavailable(_) => ErrorKind::NotReady,
                RuntimeError::DeadlineExceeded(_) => ErrorKind::DeadlineExceeded,
                _ => ErrorKind::Internal,
            };
            return Self::new(kind, e.to_string());
        }
        if let Some(e) = error.downcast_ref::<TensorError>() {
            return Self::invalid(e.to_string());
        }
        Self::internal(error.to_string())
    }

    /// The gRPC status for this error.
    pub fn to_status(&self) -> tonic::Status {
        tonic::Status::new(self.kind.grpc_code(), self.message.clone())
    }
}

impl From<BoxError> for ServeError {
    fn from(error: BoxError) -> Self {
        Self::classify(error.as_ref())
    }
}

impl From<ServeError> for tonic::Status {
    fn from(e: ServeError) -> Self {
        e.to_status()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_and_grpc_agree_for_every_class() {
        let table = [
            (ErrorKind::InvalidInput, 400, tonic::Code::InvalidArgument),
            (ErrorKind::TooLarge, 413, tonic::Code::ResourceExhausted),
            (ErrorKind::NotFound, 404, tonic::Code::NotFound),
            (ErrorKind::Overloaded, 503, tonic::Code::Unavailable),
            (ErrorKind::RateLimited, 429, tonic::Code::ResourceExhausted),
            (
                ErrorKind::DeadlineExceeded,
                504,
                tonic::Code::DeadlineExceeded,
            ),
            (ErrorKind::NotReady, 503, tonic::Code::Unavailable),
            (
                ErrorKind::Unauthenticated,
                401,
                tonic::Code::Unauthenticated,
            ),
            (ErrorKind::Forbidden, 403, tonic::Code::PermissionDenied),
            (ErrorKind::Internal, 500, tonic::Code::Internal),
        ];
        for (kind, status, code) in table {
            assert_eq!(kind.http_status().as_u16(), status, "{kind:?}");
            assert_eq!(kind.grpc_code(), code, "{kind:?}");
        }
    }

    #[test]
    fn runtime_errors_are_classified() {
        let full: BoxError = Box::new(RuntimeError::QueueFull("m:1".into()));
        assert_eq!(ServeError::from(full).kind, ErrorKind::Overloaded);
        let bad: BoxError = Box::new(RuntimeError::Backend("boom".into()));
        assert_eq!(ServeError::from(bad).kind, ErrorKind::Internal);
        let nul: BoxError = Box::new(RuntimeError::InvalidInput("nul".into()));
        assert_eq!(ServeError::from(nul).kind, ErrorKind::InvalidInput);
        let late: BoxError = Box::new(RuntimeError::DeadlineExceeded("m".into()));
        assert_eq!(ServeError::from(late).kind, ErrorKind::DeadlineExceeded);
    }
}
