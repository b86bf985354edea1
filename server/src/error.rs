//! Every failure a call can meet, and its gRPC status: the one place codes are chosen.

use tonic::{Code, Status};

use crate::admission::Overloaded;
use crate::batcher::BatchError;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("the model is still loading")]
    NotReady,
    #[error(transparent)]
    Overloaded(#[from] Overloaded),
    #[error(transparent)]
    Batch(#[from] BatchError),
    #[error("tokenization failed: {0}")]
    Tokenize(String),
    #[error("internal error: {0}")]
    Internal(String),
    #[error("deadline exceeded after {0} ms, while tokenizing (no pair of the call had run)")]
    DeadlineTokenizing(u64),
}

impl ServeError {
    pub fn code(&self) -> Code {
        match self {
            Self::InvalidArgument(_) | Self::Tokenize(_) => Code::InvalidArgument,
            Self::NotReady => Code::Unavailable,
            Self::Overloaded(_) | Self::Batch(BatchError::QueueFull { .. }) => {
                Code::ResourceExhausted
            }
            Self::Batch(BatchError::DeadlineExceeded { .. }) | Self::DeadlineTokenizing(_) => {
                Code::DeadlineExceeded
            }
            Self::Batch(BatchError::ShuttingDown | BatchError::Unavailable(_)) => Code::Unavailable,
            Self::Batch(BatchError::Inference(_)) | Self::Internal(_) => Code::Internal,
        }
    }
}

impl From<ServeError> for Status {
    fn from(e: ServeError) -> Self {
        Status::new(e.code(), e.to_string())
    }
}
