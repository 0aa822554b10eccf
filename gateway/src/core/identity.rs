//! Who a connection is and what it may receive: the identity a credential
//! resolves to, its entitlement rule, and why a credential is refused.

use std::sync::Arc;

use herald_schemas::Audience;

/// Whether a principal is staff of the account or one of its contacts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrincipalKind {
    /// An agent or administrator of the account.
    User,
    /// An end customer of the account.
    Contact,
}

/// An authenticated identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The account whose events this identity may receive.
    pub account_id: Arc<str>,
    /// User or contact.
    pub kind: PrincipalKind,
    /// The user's or contact's id.
    pub id: String,
    /// `agent`, `admin`, or `contact`.
    pub role: String,
    /// When the credential stops being valid (unix seconds); live
    /// connections are closed then.
    pub expires_at: Option<i64>,
    /// For opaque tokens: the identities-table key, so a revocation can
    /// find the connections that used it.
    pub token_key: Option<String>,
    /// Conversations the credential grants writes to (TypeID messages);
    /// `None` when the credential lists none.
    pub conversations: Option<Vec<String>>,
}

impl Identity {
    /// Whether an event with this `audience` (inside the identity's account)
    /// may reach this identity.
    ///
    /// Users: no audience, or one naming neither users nor roles, means the
    /// whole staff of the account; otherwise the user's id or role must be
    /// listed. Contacts receive only events whose audience names them.
    pub fn entitled(&self, audience: Option<&Audience>) -> bool {
        match (self.kind, audience) {
            (PrincipalKind::User, None) => true,
            (PrincipalKind::User, Some(a)) => {
                (a.users.is_empty() && a.roles.is_empty())
                    || a.users.contains(&self.id)
                    || a.roles.contains(&self.role)
            }
            (PrincipalKind::Contact, None) => false,
            (PrincipalKind::Contact, Some(a)) => a.contacts.contains(&self.id),
        }
    }
}

/// Why a credential was refused; `as_label` is the bounded metrics label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credential was presented.
    #[error("no credential presented")]
    Missing,
    /// The token has expired.
    #[error("token expired")]
    Expired,
    /// The signature does not verify with any configured key.
    #[error("invalid token signature")]
    BadSignature,
    /// The token is not a well-formed JWT.
    #[error("malformed token")]
    Malformed,
    /// A claim is missing or has a wrong value.
    #[error("invalid token claims: {0}")]
    Claims(String),
    /// An opaque token that is not (or no longer) in the identities table.
    #[error("unknown or revoked token")]
    UnknownToken,
    /// The server has no key to verify tokens with.
    #[error("token authentication is not configured")]
    NotConfigured,
}

impl AuthError {
    /// Bounded label for the `reason` of the auth failure metric.
    pub fn as_label(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Expired => "expired",
            AuthError::BadSignature => "bad_signature",
            AuthError::Malformed => "malformed",
            AuthError::Claims(_) => "claims",
            AuthError::NotConfigured => "not_configured",
            AuthError::UnknownToken => "unknown_token",
        }
    }
}
