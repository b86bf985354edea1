//! Every failure a call can meet, and its gRPC status: the one place codes are chosen.

use tonic::{Code, Status};

use crate::batcher::BatchError;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("the model is still loading")]
    NotReady,
    #[error(transparent)]
    Batch(#[from] BatchError),
    #[error("tokenization failed: {0}")]
    Tokenize(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ServeError {
    pub fn code(&self) -> Code {
        match self {
            Self::InvalidArgument(_) | Self::Tokenize(_) => Code::InvalidArgument,
            Self::NotReady => Code::Unavailable,
            Self::Batch(BatchError::QueueFull { .. }) => Code::ResourceExhausted,
            Self::Batch(BatchError::DeadlineExceeded { .. }) => Code::DeadlineExceeded,
            Self::Batch(BatchError::ShuttingDown) => Code::Unavailable,
            Self::Batch(BatchError::Inference(_)) | Self::Internal(_) => Code::Internal,
        }
    }
}

impl From<ServeError> for Status {
    fn from(e: ServeError) -> Self {
        Status::new(e.code(), e.to_string())
    }
}
