//! The error type of the domain layer: every variant is a rule a caller broke.

/// A violated domain rule, with the field it concerns where there is one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// An input value is malformed or out of range.
    #[error("{field}: {message}")]
    Invalid {
        /// The input field, in the public API's spelling (`label`, `scopes[1]`, …).
        field: String,
        /// What is wrong, written for the caller.
        message: String,
    },
}

impl Error {
    /// Builds an [`Error::Invalid`] for `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
