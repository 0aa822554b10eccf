//! The event catalogue (docs/events.md): one table maps every event type to its
//! family and its typed payload, and drives [`family_of`], [`event_types`],
//! [`validate_payload`], [`validate`] and [`crate::topic_schema`].

use std::collections::HashMap;
use std::sync::OnceLock;

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use crate::envelope::Envelope;
use crate::error::SchemaError;
use crate::family::Family;
use crate::json::parse_object;
use crate::message::MessagePayload;
use crate::scalar::AnyObject;
use crate::{airy, chatwoot, pulse, typeid};

/// One row of the catalogue.
pub(crate) struct EventSpec {
    /// The event type name, as it appears in the envelope's `type`.
    pub(crate) name: &'static str,
    /// Its family (= topic).
    pub(crate) family: Family,
    /// Checks a payload (JSON text), explaining any mismatch.
    check: fn(&str) -> Result<(), String>,
    /// The payload's JSON Schema, registered in the generator.
    pub(crate) schema: fn(&mut SchemaGenerator) -> Schema,
}

/// Checks that `json` is an object deserialisable as `T`.
fn check<T: DeserializeOwned>(json: &str) -> Result<(), String> {
    parse_object::<T>(json).map(drop)
}

/// Checks a `message.created`/`message.updated` payload against both shapes.
fn check_message(json: &str) -> Result<(), String> {
    MessagePayload::parse(json).map(drop)
}

/// The schema of `T`, a `$ref` into the generator's definitions.
fn schema<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    generator.subschema_for::<T>()
}

/// A catalogue row whose payload is `$ty`.
macro_rules! event {
    ($name:literal, $family:ident, MessagePayload) => {
        EventSpec {
            name: $name,
            family: Family::$family,
            check: check_message,
            schema: schema::<MessagePayload>,
        }
    };
    ($name:literal, $family:ident, $ty:ty) => {
        EventSpec {
            name: $name,
            family: Family::$family,
            check: check::<$ty>,
            schema: schema::<$ty>,
        }
    };
}

/// Every known event type. Names are unique: `message.created` and
/// `message.updated` are shared by Airy and Chatwoot and accept both shapes.
pub(crate) static EVENTS: &[EventSpec] = &[
    // Airy (STOMP): the old queues and the events API.
    event!("message.created", Message, MessagePayload),
    event!("message.updated", Message, MessagePayload),
    event!(
        "unread_count.updated",
        UnreadCount,
        airy::UnreadCountUpdated
    ),
    event!("channel.connected", Channel, airy::AiryChannel),
    event!("channel.disconnected", Channel, airy::AiryChannel),
    event!("channel.updated", Channel, airy::ChannelUpdated),
    event!("metadata.updated", Metadata, airy::MetadataUpdated),
    event!("tag.updated", Tag, airy::TagUpdated),
    event!("conversation.updated", Conversation, AnyObject),
    event!("component.updated", Channel, AnyObject),
    // Chatwoot-style RoomChannel (ActionCable), Chatwoot's RoomChannel API.
    event!("conversation.created", Conversation, chatwoot::Conversation),
    event!("conversation.read", Conversation, chatwoot::Conversation),
    event!(
        "conversation.status_changed",
        Conversation,
        chatwoot::Conversation
    ),
    event!(
        "conversation.contact_changed",
        Conversation,
        chatwoot::Conversation
    ),
    event!("assignee.changed", Conversation, chatwoot::Conversation),
    event!("team.changed", Conversation, chatwoot::Conversation),
    event!(
        "conversation.typing_on",
        Conversation,
        chatwoot::TypingEvent
    ),
    event!(
        "conversation.typing_off",
        Conversation,
        chatwoot::TypingEvent
    ),
    event!("contact.created", Contact, chatwoot::Contact),
    event!("contact.updated", Contact, chatwoot::Contact),
    event!("presence.update", Presence, chatwoot::PresenceUpdate),
    event!("presence.heartbeat", Presence, chatwoot::PresenceHeartbeat),
    event!("notification_created", Notification, chatwoot::Notification),
    // Pulse-style NotificationsChannel (ActionCable), Pulse's NotificationsChannel API: account.
    event!("removed_account", Account, pulse::AccountIdContent),
    event!("updated_account", Account, pulse::UpdatedAccount),
    event!("cleaned_account", Account, pulse::AccountIdContent),
    event!("update_setting", Account, pulse::UpdateSetting),
    event!("update_subscription", Account, pulse::UpdateSubscription),
    event!("update_primary_device", Account, pulse::UpdatePrimaryDevice),
    event!("feature_flag", Account, pulse::FeatureFlag),
    event!(
        "dismissed_notification",
        Account,
        pulse::DismissedNotification
    ),
    event!("forward_to_phone", Account, pulse::ForwardToPhone),
    // Pulse: messages.
    event!("added_message", Message, pulse::AddedMessage),
    event!("update_message_type", Message, pulse::UpdateMessageType),
    event!("updated_message", Message, pulse::UpdatedMessage),
    event!("removed_message", Message, pulse::IdContent),
    event!("cleanup_messages", Message, pulse::CleanupMessages),
    event!(
        "cleanup_conversation_messages",
        Message,
        pulse::CleanupConversationMessages
    ),
    // Pulse: contacts and blacklist.
    event!("added_contact", Contact, pulse::PulseContact),
    event!("updated_contact", Contact, pulse::PulseContact),
    event!("removed_contact", Contact, pulse::RemovedContact),
    event!("removed_contact_by_id", Contact, pulse::RemovedContactById),
    event!("added_blacklist", Contact, pulse::AddedBlacklist),
    event!("removed_blacklist", Contact, pulse::IdContent),
    // Pulse: conversations.
    event!("added_conversation", Conversation, pulse::AddedConversation),
    event!(
        "updated_conversation",
        Conversation,
        pulse::UpdatedConversation
    ),
    event!("removed_conversation", Conversation, pulse::IdContent),
    event!(
        "update_conversation_snippet",
        Conversation,
        pulse::UpdateConversationSnippet
    ),
    event!(
        "update_conversation_title",
        Conversation,
        pulse::UpdateConversationTitle
    ),
    event!("read_conversation", Conversation, pulse::ReadConversation),
    event!("seen_conversation", Conversation, pulse::IdContent),
    event!(
        "archive_conversation",
        Conversation,
        pulse::ArchiveConversation
    ),
    event!("seen_conversations", Conversation, AnyObject),
    // Pulse: drafts.
    event!("added_draft", Conversation, pulse::AddedDraft),
    event!("replaced_drafts", Conversation, AnyObject),
    event!("removed_drafts", Conversation, pulse::RemovedDrafts),
    // Pulse: scheduled messages.
    event!(
        "added_scheduled_message",
        Conversation,
        pulse::ScheduledMessage
    ),
    event!(
        "updated_scheduled_message",
        Conversation,
        pulse::ScheduledMessage
    ),
    event!("removed_scheduled_message", Conversation, pulse::IdContent),
    // Pulse: folders.
    event!("added_folder", Conversation, pulse::Folder),
    event!("updated_folder", Conversation, pulse::Folder),
    event!(
        "add_conversation_to_folder",
        Conversation,
        pulse::AddConversationToFolder
    ),
    event!(
        "remove_conversation_from_folder",
        Conversation,
        pulse::IdContent
    ),
    event!("removed_folder", Conversation, pulse::IdContent),
    // Pulse: templates.
    event!("added_template", Conversation, pulse::Template),
    event!("updated_template", Conversation, pulse::Template),
    event!("removed_template", Conversation, pulse::IdContent),
    // Pulse: auto replies.
    event!("added_auto_reply", Conversation, pulse::AutoReply),
    event!("updated_auto_reply", Conversation, pulse::AutoReply),
    event!("removed_auto_reply", Conversation, pulse::IdContent),
    // TypeID protocol, the TypeID API.
    event!(
        "ConversationMessageNotification",
        Message,
        typeid::ConversationMessageNotification
    ),
    event!(
        "UserChangeNotification",
        Presence,
        typeid::UserChangeNotification
    ),
    event!(
        "ConversationMessageRequest",
        ClientCommands,
        typeid::ConversationMessageRequest
    ),
];

/// Events that carry the whole current state of one subject, so a newer
/// one supersedes an older one about the same subject (docs/events.md,
/// "Conflation"): for each, the payload fields that name the subject within
/// the account (none: the account itself is the subject).
const SUPERSEDING: &[(&str, &[&str])] = &[
    ("unread_count.updated", &["conversation_id"]),
    ("metadata.updated", &["subject", "identifier"]),
    ("presence.update", &[]),
];

/// The payload fields naming what an event of `event_type` is about, when
/// a newer event of that type about the same subject makes an older one
/// obsolete; `None` for events that must each be delivered.
#[must_use]
pub fn subject_fields(event_type: &str) -> Option<&'static [&'static str]> {
    SUPERSEDING
        .iter()
        .find(|(name, _)| *name == event_type)
        .map(|(_, fields)| *fields)
}

/// The catalogue row of `event_type`.
fn spec(event_type: &str) -> Option<&'static EventSpec> {
    static INDEX: OnceLock<HashMap<&'static str, &'static EventSpec>> = OnceLock::new();
    INDEX
        .get_or_init(|| EVENTS.iter().map(|spec| (spec.name, spec)).collect())
        .get(event_type)
        .copied()
}

/// The family (= topic) of an event type, `None` for an unknown type.
#[must_use]
pub fn family_of(event_type: &str) -> Option<Family> {
    spec(event_type).map(|spec| spec.family)
}

/// Every known event type name, in catalogue order.
#[must_use]
pub fn event_types() -> &'static [&'static str] {
    static NAMES: OnceLock<Vec<&'static str>> = OnceLock::new();
    NAMES.get_or_init(|| EVENTS.iter().map(|spec| spec.name).collect())
}

/// Validates an event's payload against the typed struct of its type and
/// returns the type's family.
///
/// The error names the type and what is wrong, with the JSON path of the
/// offending value (`missing field `id` at `message``).
pub fn validate_payload(event_type: &str, payload: &RawValue) -> Result<Family, SchemaError> {
    let spec = spec(event_type).ok_or_else(|| SchemaError::UnknownType(event_type.to_owned()))?;
    (spec.check)(payload.get()).map_err(|reason| SchemaError::InvalidPayload {
        event_type: event_type.to_owned(),
        reason,
    })?;
    Ok(spec.family)
}

/// Validates a whole envelope: non-blank `id`, `type` and `account_id`, a
/// known type, an RFC 3339 `occurred_at` (when present), no blank audience
/// entry, and a payload of the right shape. Returns the family.
pub fn validate(envelope: &Envelope) -> Result<Family, SchemaError> {
    not_blank("id", &envelope.id)?;
    not_blank("type", &envelope.event_type)?;
    not_blank("account_id", &envelope.account_id)?;
    if spec(&envelope.event_type).is_none() {
        return Err(SchemaError::UnknownType(envelope.event_type.clone()));
    }
    if let Some(at) = &envelope.occurred_at
        && !is_rfc3339(at)
    {
        return Err(SchemaError::InvalidField {
            field: "occurred_at",
            reason: format!("`{at}` is not an RFC 3339 date-time (like 2026-11-22T10:00:00.000Z)"),
        });
    }
    if let Some(audience) = &envelope.audience {
        for (list, ids) in [
            ("users", &audience.users),
            ("contacts", &audience.contacts),
            ("roles", &audience.roles),
        ] {
            if let Some(index) = ids.iter().position(|id| id.trim().is_empty()) {
                return Err(SchemaError::InvalidField {
                    field: "audience",
                    reason: format!("`{list}[{index}]` is blank"),
                });
            }
        }
    }
    validate_payload(&envelope.event_type, &envelope.payload)
}

fn not_blank(field: &'static str, value: &str) -> Result<(), SchemaError> {
    if value.trim().is_empty() {
        return Err(SchemaError::InvalidField {
            field,
            reason: "must not be blank".to_owned(),
        });
    }
    Ok(())
}

/// Whether `text` is an RFC 3339 `date-time`
/// (`YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`), with calendar-valid fields.
pub(crate) fn is_rfc3339(text: &str) -> bool {
    let b = text.as_bytes();
    let number = |from: usize, len: usize| -> Option<u32> {
        let digits = b.get(from..from + len)?;
        digits.iter().try_fold(0u32, |acc, &d| {
            d.is_ascii_digit().then(|| acc * 10 + u32::from(d - b'0'))
        })
    };
    let at = |i: usize, allowed: &[u8]| b.get(i).is_some_and(|c| allowed.contains(c));

    let (Some(year), Some(month), Some(day)) = (number(0, 4), number(5, 2), number(8, 2)) else {
        return false;
    };
    let (Some(hour), Some(minute), Some(second)) = (number(11, 2), number(14, 2), number(17, 2))
    else {
        return false;
    };
    if !(at(4, b"-") && at(7, b"-") && at(10, b"Tt") && at(13, b":") && at(16, b":")) {
        return false;
    }
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    if day == 0 || day > days || hour > 23 || minute > 59 || second > 60 {
        return false;
    }

    let mut i = 19;
    if at(i, b".") {
        let digits = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return false;
        }
        i += 1 + digits;
    }
    match b.get(i) {
        Some(b'Z' | b'z') => i + 1 == b.len(),
        Some(b'+' | b'-') => {
            let (Some(offset_hour), Some(offset_minute)) = (number(i + 1, 2), number(i + 4, 2))
            else {
                return false;
            };
            at(i + 3, b":") && i + 6 == b.len() && offset_hour <= 23 && offset_minute <= 59
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique() {
        let mut names = event_types().to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), EVENTS.len());
    }

    #[test]
    fn superseding_events_are_catalogued_and_name_required_payload_fields() {
        for (name, fields) in SUPERSEDING {
            let spec = spec(name).unwrap_or_else(|| panic!("{name} is not catalogued"));
            let mut generator = SchemaGenerator::default();
            let schema = serde_json::to_value((spec.schema)(&mut generator)).expect("schema");
            let defs = serde_json::to_value(generator.definitions()).expect("definitions");
            // The payload type's definition: its required fields must
            // include every subject field, so no event lacks its subject.
            let name_of = schema["$ref"].as_str().and_then(|r| r.rsplit('/').next());
            let required = name_of
                .map(|n| defs[n]["required"].clone())
                .unwrap_or_default();
            for field in *fields {
                assert!(
                    required
                        .as_array()
                        .is_some_and(|r| r.iter().any(|f| f == field)),
                    "{name}: subject field {field} is not a required payload field ({required})"
                );
            }
        }
        assert_eq!(
            subject_fields("unread_count.updated"),
            Some(&["conversation_id"][..])
        );
        assert_eq!(subject_fields("message.created"), None);
    }

    #[test]
    fn rfc3339_accepts_valid_date_times() {
        for ok in [
            "2026-11-22T10:00:00.000Z",
            "2026-11-22T10:00:00Z",
            "2026-11-22t10:00:00z",
            "2024-02-29T23:59:60+01:00",
            "2026-01-01T00:00:00.123456789-05:30",
        ] {
            assert!(is_rfc3339(ok), "{ok}");
        }
    }

    #[test]
    fn rfc3339_rejects_the_rest() {
        for bad in [
            "",
            "2026-11-22",
            "2026-11-22 10:00:00Z",
            "2026-11-22T10:00:00",
            "2026-11-22T10:00:00.Z",
            "2026-13-01T00:00:00Z",
            "2025-02-29T00:00:00Z",
            "2026-11-22T24:00:00Z",
            "2026-11-22T10:00:00+0100",
            "2026-11-22T10:00:00Zjunk",
            "1608150458",
            "2026-11-22T10:00:00+01:00x",
            "２026-11-22T10:00:00Z",
        ] {
            assert!(!is_rfc3339(bad), "{bad}");
        }
    }
}

#[cfg(test)]
mod vocabulary_tests {
    use super::*;

    #[test]
    fn pulse_operations_and_room_events_are_catalogued() {
        for op in crate::pulse::OPERATIONS {
            assert!(family_of(op).is_some(), "{op} missing from the catalogue");
        }
        for ev in crate::chatwoot::ROOM_EVENTS
            .iter()
            .chain(crate::chatwoot::CONTACT_EVENTS.iter())
        {
            assert!(family_of(ev).is_some(), "{ev} missing from the catalogue");
        }
        assert!(
            crate::chatwoot::CONTACT_EVENTS
                .iter()
                .all(|e| crate::chatwoot::ROOM_EVENTS.contains(e))
        );
    }
}
