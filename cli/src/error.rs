//! What can go wrong in an operator command, and the exit code each kind
//! gets, so scripts can tell "the credential is refused" from "the gateway
//! is down" without parsing messages.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | done |
//! | 1 | the request was refused or invalid (bad event, bad identity, unknown destination) |
//! | 2 | bad command line (clap) |
//! | 3 | the credential was refused, revoked or has expired (HTTP 401/403, STOMP `401`, ActionCable `unauthorized`/rejection, TypeID status 4) |
//! | 4 | `--timeout-secs` passed before `--count` events arrived |
//! | 5 | the service is unreachable, unavailable, or dropped the connection |

/// An operator command's failure. `Display` is the whole message printed
/// on stderr; it never contains a secret.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The request was refused or is invalid.
    #[error("{0}")]
    Refused(String),
    /// The credential was refused, revoked or has expired.
    #[error("{0}")]
    Unauthorized(String),
    /// The deadline passed.
    #[error("{0}")]
    Timeout(String),
    /// The service is unreachable or dropped the connection.
    #[error("{0}")]
    Unavailable(String),
    /// Anything else (local I/O, development mode).
    #[error("{0:#}")]
    Other(#[from] anyhow::Error),
}

impl CliError {
    /// The process exit code of this failure (see the module docs).
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Refused(_) | CliError::Other(_) => 1,
            CliError::Unauthorized(_) => 3,
            CliError::Timeout(_) => 4,
            CliError::Unavailable(_) => 5,
        }
    }
}

/// Result of an operator command.
pub type CliResult<T> = Result<T, CliError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_distinct_per_kind() {
        assert_eq!(CliError::Refused("x".into()).exit_code(), 1);
        assert_eq!(CliError::Unauthorized("x".into()).exit_code(), 3);
        assert_eq!(CliError::Timeout("x".into()).exit_code(), 4);
        assert_eq!(CliError::Unavailable("x".into()).exit_code(), 5);
        assert_eq!(CliError::Other(anyhow::anyhow!("x")).exit_code(), 1);
    }
}
