//! Conflation: which events make older undelivered ones obsolete.
//!
//! Some events carry the whole current state of one subject (an unread
//! count per conversation, a metadata object, an account's presence): a
//! client that has not yet been sent the older one needs only the newer.
//! For the families configured to conflate (`--conflate-families`), such an
//! event gets a *subject*: its type, account and the payload fields that
//! name what it is about (the catalogue's `subject_fields`). A connection's
//! queue then keeps only the latest undelivered frame per subject and
//! subscription instead of cutting a slow client off (docs/security.md,
//! "Conflation instead of disconnection").

use std::sync::Arc;

use herald_schemas::{Envelope, Family, family_of, subject_fields};

/// The families whose superseding events conflate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Conflation {
    families: Vec<Family>,
}

impl Conflation {
    /// Conflate the superseding events of `families`.
    pub fn new(families: impl IntoIterator<Item = Family>) -> Self {
        let mut families: Vec<Family> = families.into_iter().collect();
        families.dedup();
        Conflation { families }
    }

    /// The families that conflate.
    pub fn families(&self) -> &[Family] {
        &self.families
    }

    /// What `envelope` is about, when its family conflates and its type
    /// supersedes: `type`, account and the subject fields' JSON values,
    /// joined by NUL (which JSON text never contains unescaped). `None` when
    /// the event must be delivered whatever follows it, or when its payload
    /// lacks a subject field.
    pub fn subject(
        &self,
        envelope: &Envelope,
        payload: Option<&serde_json::Value>,
    ) -> Option<Arc<str>> {
        let family = family_of(&envelope.event_type)?;
        if !self.families.contains(&family) {
            return None;
        }
        let fields = subject_fields(&envelope.event_type)?;
        let mut subject = format!("{}\0{}", envelope.event_type, envelope.account_id);
        for field in fields {
            let value = payload?.get(field)?;
            subject.push('\0');
            subject.push_str(&value.to_string());
        }
        Some(Arc::from(subject))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(event_type: &str, account: &str, payload: &str) -> Envelope {
        serde_json::from_str(&format!(
            r#"{{"id":"e","type":"{event_type}","account_id":"{account}","payload":{payload}}}"#
        ))
        .expect("envelope")
    }

    fn subject(c: &Conflation, e: &Envelope) -> Option<Arc<str>> {
        let payload: serde_json::Value = serde_json::from_str(e.payload.get()).ok()?;
        c.subject(e, Some(&payload))
    }

    #[test]
    fn only_superseding_events_of_configured_families_have_a_subject() {
        let c = Conflation::new([Family::UnreadCount, Family::Presence]);
        let unread = |conv: &str, n: u32| {
            envelope(
                "unread_count.updated",
                "1",
                &format!(
                    r#"{{"conversation_id":"{conv}","unread_message_count":{n},"timestamp":1}}"#
                ),
            )
        };
        // Same conversation: same subject, whatever the count.
        assert_eq!(subject(&c, &unread("a", 1)), subject(&c, &unread("a", 2)));
        assert!(subject(&c, &unread("a", 1)).is_some());
        // Another conversation, another account: different subjects.
        assert_ne!(subject(&c, &unread("a", 1)), subject(&c, &unread("b", 1)));
        let other_account = envelope(
            "unread_count.updated",
            "2",
            r#"{"conversation_id":"a","unread_message_count":1,"timestamp":1}"#,
        );
        assert_ne!(subject(&c, &unread("a", 1)), subject(&c, &other_account));
        // Presence snapshots are about the account.
        let presence = |account: &str| envelope("presence.update", account, r#"{"users":{}}"#);
        assert_eq!(subject(&c, &presence("1")), subject(&c, &presence("1")));
        assert_ne!(subject(&c, &presence("1")), subject(&c, &presence("2")));
        // Messages never conflate; metadata does not here (not configured).
        let message = envelope("message.created", "1", r#"{"conversation_id":"a"}"#);
        assert_eq!(subject(&c, &message), None);
        let metadata = envelope(
            "metadata.updated",
            "1",
            r#"{"subject":"conversation","identifier":"a","metadata":{}}"#,
        );
        assert_eq!(subject(&c, &metadata), None);
        // Nothing conflates by default.
        assert_eq!(subject(&Conflation::default(), &unread("a", 1)), None);
    }

    #[test]
    fn a_payload_without_its_subject_field_does_not_conflate() {
        let c = Conflation::new([Family::UnreadCount]);
        let e = envelope("unread_count.updated", "1", r#"{"unread_message_count":1}"#);
        assert_eq!(subject(&c, &e), None);
        assert_eq!(c.subject(&e, None), None);
    }
}
