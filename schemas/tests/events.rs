//! The event catalogue end to end: every type maps to the family docs/events.md
//! gives it, a valid sample of every type passes both the Rust validation and
//! an independent JSON Schema validator run on the generated topic schema,
//! and wrong shapes are rejected by both with a precise reason.

use std::collections::BTreeSet;

use herald_schemas::{
    Envelope, Family, SchemaError, event_types, family_of, topic_schema, validate, validate_payload,
};
use serde_json::Value;
use serde_json::value::RawValue;

/// The catalogue (docs/events.md), written out independently of the crate's own table.
const FAMILIES: &[(&str, Family)] = &[
    // Airy
    ("message.created", Family::Message),
    ("message.updated", Family::Message),
    ("unread_count.updated", Family::UnreadCount),
    ("channel.connected", Family::Channel),
    ("channel.disconnected", Family::Channel),
    ("channel.updated", Family::Channel),
    ("metadata.updated", Family::Metadata),
    ("tag.updated", Family::Tag),
    ("conversation.updated", Family::Conversation),
    ("component.updated", Family::Channel),
    // Chatwoot
    ("conversation.created", Family::Conversation),
    ("conversation.read", Family::Conversation),
    ("conversation.status_changed", Family::Conversation),
    ("conversation.typing_on", Family::Conversation),
    ("conversation.typing_off", Family::Conversation),
    ("conversation.contact_changed", Family::Conversation),
    ("assignee.changed", Family::Conversation),
    ("team.changed", Family::Conversation),
    ("contact.created", Family::Contact),
    ("contact.updated", Family::Contact),
    ("presence.update", Family::Presence),
    ("presence.heartbeat", Family::Presence),
    ("notification_created", Family::Notification),
    // Pulse: account
    ("removed_account", Family::Account),
    ("updated_account", Family::Account),
    ("cleaned_account", Family::Account),
    ("update_setting", Family::Account),
    ("update_subscription", Family::Account),
    ("update_primary_device", Family::Account),
    ("feature_flag", Family::Account),
    ("dismissed_notification", Family::Account),
    ("forward_to_phone", Family::Account),
    // Pulse: message
    ("added_message", Family::Message),
    ("update_message_type", Family::Message),
    ("updated_message", Family::Message),
    ("removed_message", Family::Message),
    ("cleanup_messages", Family::Message),
    ("cleanup_conversation_messages", Family::Message),
    // Pulse: contact
    ("added_contact", Family::Contact),
    ("updated_contact", Family::Contact),
    ("removed_contact", Family::Contact),
    ("removed_contact_by_id", Family::Contact),
    ("added_blacklist", Family::Contact),
    ("removed_blacklist", Family::Contact),
    // Pulse: conversation (with drafts, scheduled messages, folders,
    // templates and auto replies)
    ("added_conversation", Family::Conversation),
    ("updated_conversation", Family::Conversation),
    ("removed_conversation", Family::Conversation),
    ("update_conversation_snippet", Family::Conversation),
    ("update_conversation_title", Family::Conversation),
    ("read_conversation", Family::Conversation),
    ("seen_conversation", Family::Conversation),
    ("archive_conversation", Family::Conversation),
    ("seen_conversations", Family::Conversation),
    ("added_draft", Family::Conversation),
    ("replaced_drafts", Family::Conversation),
    ("removed_drafts", Family::Conversation),
    ("added_scheduled_message", Family::Conversation),
    ("updated_scheduled_message", Family::Conversation),
    ("removed_scheduled_message", Family::Conversation),
    ("added_folder", Family::Conversation),
    ("updated_folder", Family::Conversation),
    ("add_conversation_to_folder", Family::Conversation),
    ("remove_conversation_from_folder", Family::Conversation),
    ("removed_folder", Family::Conversation),
    ("added_template", Family::Conversation),
    ("updated_template", Family::Conversation),
    ("removed_template", Family::Conversation),
    ("added_auto_reply", Family::Conversation),
    ("updated_auto_reply", Family::Conversation),
    ("removed_auto_reply", Family::Conversation),
    // TypeID
    ("ConversationMessageNotification", Family::Message),
    ("UserChangeNotification", Family::Presence),
    ("ConversationMessageRequest", Family::ClientCommands),
];

/// The Pulse operations (docs/protocols/actioncable.md, "NotificationsChannel"), verbatim.
const PULSE_OPERATIONS: &str = "removed_account, updated_account, cleaned_account,
  added_message, update_message_type, updated_message, removed_message,
  cleanup_messages, cleanup_conversation_messages, added_contact, updated_contact,
  removed_contact, removed_contact_by_id, added_conversation,
  update_conversation_snippet, update_conversation_title, updated_conversation,
  removed_conversation, read_conversation, seen_conversation,
  archive_conversation, seen_conversations, added_draft, replaced_drafts,
  removed_drafts, added_blacklist, removed_blacklist, added_scheduled_message,
  updated_scheduled_message, removed_scheduled_message, added_folder,
  add_conversation_to_folder, remove_conversation_from_folder, updated_folder,
  removed_folder, added_template, updated_template, removed_template,
  added_auto_reply, updated_auto_reply, removed_auto_reply, update_setting,
  dismissed_notification, update_subscription, update_primary_device,
  feature_flag, forward_to_phone";

/// A valid payload of every event type (some types have several shapes).
const SAMPLES: &[(&str, &str)] = &[
    // Airy, Airy's events API (new API)
    (
        "message.created",
        r#"{"conversation_id":"7d1c","channel_id":"0b5e","message":{"id":"m-1","content":{"text":"Hello World"},"delivery_state":"pending","from_contact":true,"sent_at":"2026-11-22T10:00:00.000Z","source":"facebook","sender":{"id":"github:12345"}}}"#,
    ),
    // Airy, Airy's old queue API (old `/queue/message`): content is a JSON string.
    (
        "message.updated",
        r#"{"conversation_id":"7d1c","channel_id":"0b5e","message":{"id":"m-1","content":"{\"text\":\"Hello World\"}","delivery_state":"DELIVERED","sender_type":"source_contact","sent_at":"2026-11-22T10:00:00.000Z"}}"#,
    ),
    // Chatwoot, Chatwoot's RoomChannel API
    (
        "message.created",
        r#"{"id":101,"content":"Hi there","message_type":0,"content_attributes":{},"sender":{"id":9,"type":"contact"},"private":false,"created_at":1763805600,"conversation_id":5,"account_id":1}"#,
    ),
    (
        "message.updated",
        r#"{"id":"101","content":null,"message_type":"outgoing","private":true}"#,
    ),
    (
        "unread_count.updated",
        r#"{"conversation_id":"7d1c","unread_message_count":42,"timestamp":"2026-11-22T10:00:00.000Z"}"#,
    ),
    (
        "channel.connected",
        r#"{"id":"0b5e","name":"my page 1","source":"facebook","source_channel_id":"fb-page-id-1","image_url":"http://example.org/avatar.jpeg"}"#,
    ),
    (
        "channel.disconnected",
        r#"{"id":"0b5e","name":"my page 1","source":"facebook","source_channel_id":"fb-page-id-1"}"#,
    ),
    (
        "channel.updated",
        r#"{"id":"0b5e","source":"facebook","source_channel_id":"fb-page-id-1","connected":false}"#,
    ),
    (
        "metadata.updated",
        r#"{"subject":"conversation","identifier":"7d1c","metadata":{"contact":{"displayName":"Grace"},"isUserTyping":true}}"#,
    ),
    (
        "tag.updated",
        r#"{"id":"t-1","name":"flag","color":"tag-red"}"#,
    ),
    (
        "conversation.updated",
        r#"{"id":"7d1c","metadata":{"state":"OPEN"},"anything":[1,2]}"#,
    ),
    (
        "component.updated",
        r#"{"name":"sources-facebook","enabled":true,"healthy":true}"#,
    ),
    // Chatwoot
    (
        "conversation.created",
        r#"{"id":5,"inbox_id":1,"status":"open","channel":"Channel::WebWidget","contact_inbox":{"source_id":"abc"},"messages":[{"id":101}],"meta":{"sender":{"id":9,"name":"Grace"},"assignee":null},"account_id":1}"#,
    ),
    ("conversation.read", r#"{"id":5}"#),
    (
        "conversation.status_changed",
        r#"{"id":5,"status":"resolved","meta":null}"#,
    ),
    ("conversation.contact_changed", r#"{"id":"5"}"#),
    (
        "assignee.changed",
        r#"{"id":5,"meta":{"assignee":{"id":7,"name":"Agent Smith"}}}"#,
    ),
    ("team.changed", r#"{"id":5,"meta":{"team":{"id":2}}}"#),
    (
        "conversation.typing_on",
        r#"{"conversation":{"id":5},"user":{"id":7,"name":"Agent Smith","type":"user"},"is_private":false}"#,
    ),
    (
        "conversation.typing_off",
        r#"{"conversation":{"id":5,"status":"open"},"user":{"id":9,"type":"contact"},"is_private":true}"#,
    ),
    (
        "contact.created",
        r#"{"id":9,"name":"Grace","email":"grace@example.org","phone_number":"+15555550100","identifier":null,"thumbnail":"","additional_attributes":{"city":"Oslo"}}"#,
    ),
    ("contact.updated", r#"{"id":9,"name":"Grace H."}"#),
    (
        "presence.update",
        r#"{"account_id":1,"users":{"7":"online","8":"busy"},"contacts":{"9":"offline"}}"#,
    ),
    ("presence.update", r#"{"account_id":"1","users":{}}"#),
    ("presence.heartbeat", r#"{"kind":"user","id":"7"}"#),
    (
        "notification_created",
        r#"{"id":3,"notification_type":"conversation_assignment","primary_actor":{"id":5},"read_at":null,"created_at":1763805600}"#,
    ),
    // Pulse: account
    ("removed_account", r#"{"id":"8f2a9c"}"#),
    (
        "updated_account",
        r#"{"id":"8f2a9c","real_name":"Luke","phone_number":"5555555555"}"#,
    ),
    ("cleaned_account", r#"{"id":12}"#),
    (
        "update_setting",
        r#"{"pref":"dark_theme","type":"boolean","value":true}"#,
    ),
    (
        "update_subscription",
        r#"{"type":3,"expiration":"1763805600000","from_admin":true}"#,
    ),
    ("update_subscription", r#"{}"#),
    (
        "update_primary_device",
        r#"{"new_primary_device_id":"1234"}"#,
    ),
    (
        "feature_flag",
        r#"{"id":"new_ui","value":true,"rollout":50}"#,
    ),
    ("dismissed_notification", r#"{"id":"42"}"#),
    ("dismissed_notification", r#"{"id":42,"device_id":"1234"}"#),
    // The seed's own example.
    (
        "forward_to_phone",
        r#"{"to":"5555555555","message":"test","mime_type":"text/plain","sent_device":0}"#,
    ),
    // Pulse: message
    (
        "added_message",
        r#"{"id":1,"conversation_id":"2","type":0,"timestamp":1608150458000,"read":false,"seen":false,"sent_device":3,"data":"aXY=-:-Y2lwaGVy","mime_type":"aXY=-:-dGV4dA==","from":null,"color":null}"#,
    ),
    (
        "added_message",
        r#"{"id":"1","conversation_id":2,"type":"1","timestamp":"1608150458000","read":true,"seen":true,"data":"aXY=-:-Y2lwaGVy","mime_type":"aXY=-:-dGV4dA==","from":"aXY=-:-ZnJvbQ==","color":-16777216}"#,
    ),
    ("update_message_type", r#"{"id":1,"message_type":2}"#),
    (
        "updated_message",
        r#"{"id":1,"type":2,"timestamp":"1608150458000"}"#,
    ),
    ("removed_message", r#"{"id":"1"}"#),
    ("cleanup_messages", r#"{"timestamp":1608150458000}"#),
    (
        "cleanup_conversation_messages",
        r#"{"timestamp":1608150458000,"conversation_id":2}"#,
    ),
    // Pulse: contact
    (
        "added_contact",
        r#"{"phone_number":"aXY=-:-cGhvbmU=","name":"aXY=-:-bmFtZQ==","color":-16777216,"color_dark":1,"color_light":2,"color_accent":"3"}"#,
    ),
    (
        "updated_contact",
        r#"{"phone_number":"aXY=-:-cGhvbmU=","name":"aXY=-:-bmFtZQ==","color":1,"color_dark":2,"color_light":3,"color_accent":4,"device_id":5}"#,
    ),
    (
        "removed_contact",
        r#"{"phone_number":"5555555555","device_id":5}"#,
    ),
    ("removed_contact_by_id", r#"{"id":"1,2,3"}"#),
    ("removed_contact_by_id", r#"{"id":1}"#),
    (
        "added_blacklist",
        r#"{"id":1,"phone_number":"aXY=-:-cGhvbmU="}"#,
    ),
    ("removed_blacklist", r#"{"id":1}"#),
    // Pulse: conversation
    (
        "added_conversation",
        r#"{"id":2,"color":1,"color_dark":2,"color_light":3,"color_accent":4,"led_color":5,"pinned":false,"read":true,"timestamp":1608150458000,"title":"aXY=-:-dA==","phone_numbers":"aXY=-:-cA==","snippet":"aXY=-:-cw==","ringtone":null,"id_matcher":"aXY=-:-aQ==","mute":false,"archive":false}"#,
    ),
    (
        "updated_conversation",
        r#"{"id":2,"title":"aXY=-:-dA==","color":1,"color_dark":2,"color_light":3,"color_accent":4,"led_color":5,"pinned":true,"ringtone":"aXY=-:-cg==","mute":false,"read":true,"archive":false,"private_notifications":false}"#,
    ),
    ("removed_conversation", r#"{"id":2}"#),
    (
        "update_conversation_snippet",
        r#"{"id":2,"read":true,"timestamp":1608150458000,"snippet":"aXY=-:-cw==","archive":false}"#,
    ),
    (
        "update_conversation_title",
        r#"{"id":2,"title":"aXY=-:-dA=="}"#,
    ),
    ("read_conversation", r#"{"id":2,"android_device":"1234"}"#),
    ("seen_conversation", r#"{"id":2}"#),
    ("archive_conversation", r#"{"id":2,"archive":true}"#),
    ("seen_conversations", r#"{}"#),
    (
        "added_draft",
        r#"{"id":1,"conversation_id":2,"data":"aXY=-:-ZA==","mime_type":"aXY=-:-bQ=="}"#,
    ),
    ("replaced_drafts", r#"{"conversation_id":2,"drafts":[]}"#),
    ("removed_drafts", r#"{"id":2,"android_device":1234}"#),
    (
        "added_scheduled_message",
        r#"{"id":1,"to":"aXY=-:-dG8=","data":"aXY=-:-ZA==","mime_type":"aXY=-:-bQ==","timestamp":1608150458000,"title":"aXY=-:-dA=="}"#,
    ),
    (
        "updated_scheduled_message",
        r#"{"id":"1","to":"aXY=-:-dG8=","data":"aXY=-:-ZA==","mime_type":"aXY=-:-bQ==","timestamp":"1608150458000","title":"aXY=-:-dA=="}"#,
    ),
    ("removed_scheduled_message", r#"{"id":1}"#),
    (
        "added_folder",
        r#"{"device_id":1,"name":"aXY=-:-bg==","color":1,"color_dark":2,"color_light":3,"color_accent":4}"#,
    ),
    (
        "updated_folder",
        r#"{"device_id":"1","name":"aXY=-:-bg==","color":1,"color_dark":2,"color_light":3,"color_accent":4}"#,
    ),
    ("add_conversation_to_folder", r#"{"id":2,"folder_id":1}"#),
    ("remove_conversation_from_folder", r#"{"id":2}"#),
    ("removed_folder", r#"{"id":1}"#),
    ("added_template", r#"{"device_id":1,"text":"aXY=-:-dA=="}"#),
    (
        "updated_template",
        r#"{"device_id":1,"text":"aXY=-:-dA=="}"#,
    ),
    ("removed_template", r#"{"id":1}"#),
    (
        "added_auto_reply",
        r#"{"device_id":1,"type":"vacation","pattern":"aXY=-:-cA==","response":"aXY=-:-cg=="}"#,
    ),
    (
        "updated_auto_reply",
        r#"{"device_id":1,"type":"driving","pattern":"aXY=-:-cA==","response":"aXY=-:-cg=="}"#,
    ),
    ("removed_auto_reply", r#"{"id":1}"#),
    // TypeID, the TypeID API: nulls written out.
    (
        "ConversationMessageNotification",
        r#"{"Attachments":[],"Body":"hello","ClientID":"3f0c8f1e-8a4e-4c1e-9a55-0c1f0d6f4b11","ContactID":null,"ContentTags":[],"ConversationID":"0b7e1d3c-5f2a-4c4b-8c6e-2d9f1a7b3c4d","ConversationType":1,"DeletedTimestamp":0,"DeletedUserID":0,"DeletedUsername":null,"EditedTimestamp":0,"EditedUserID":0,"EditedUsername":null,"IsDeleted":false,"LikeCount":0,"LikeUserIDs":[],"LikeUsernames":[],"Mentions":[],"NotificationType":0,"RecipientID":null,"RootConversationID":"0b7e1d3c-5f2a-4c4b-8c6e-2d9f1a7b3c4d","SenderID":7,"SenderName":"grace","SenderPermissions":null,"SenderRoles":[1,2],"SenderVanityRole":0,"ServerID":"9d8c7b6a-5f4e-4d3c-2b1a-0f9e8d7c6b5a","Timestamp":1608150458000}"#,
    ),
    (
        "ConversationMessageNotification",
        r#"{"ConversationID":"c","ServerID":"s","SenderID":7,"Timestamp":1608150458000}"#,
    ),
    (
        "UserChangeNotification",
        r#"{"User":{"UserID":7,"Username":"grace","ConnectionStatus":1,"CustomStatusMessage":null,"CustomStatusTimestamp":null,"AvatarUrl":null,"CurrentGameID":null}}"#,
    ),
    (
        "ConversationMessageRequest",
        r#"{"ConversationID":"0b7e1d3c-5f2a-4c4b-8c6e-2d9f1a7b3c4d","AttachmentID":null,"ClientID":"3f0c8f1e-8a4e-4c1e-9a55-0c1f0d6f4b11","Message":"hi"}"#,
    ),
];

/// Wrong payloads, the reason the Rust validation must give (a substring),
/// and whether the JSON Schema must reject them too.
const REJECTS: &[(&str, &str, &str, bool)] = &[
    (
        "tag.updated",
        r#"{"id":"t-1","name":"flag"}"#,
        "missing field `color`",
        true,
    ),
    (
        "message.created",
        r#"{"conversation_id":"c","channel_id":"ch","message":{"id":"m","content":{},"delivery_state":"pending"}}"#,
        "matched neither the Airy message shape (missing field `sent_at` at `message`) nor the Chatwoot message shape (missing field `id`)",
        true,
    ),
    (
        "message.updated",
        r#"{"conversation_id":"c","channel_id":"ch","message":["m",{},"pending","2026-11-22T10:00:00Z"]}"#,
        "invalid type: sequence, expected struct AiryMessage at `message`",
        true,
    ),
    (
        "message.created",
        r#"{"id":101,"content":7,"message_type":0}"#,
        "the Chatwoot message shape (invalid type: integer `7`, expected a string at `content`)",
        true,
    ),
    (
        "added_message",
        r#"{"id":"x","conversation_id":2,"type":0,"timestamp":1,"read":false,"seen":false,"data":"d","mime_type":"m"}"#,
        r#"invalid value: string "x", expected an integer or a numeric string at `id`"#,
        true,
    ),
    (
        "added_message",
        r#"{"id":1,"conversation_id":2,"type":0,"timestamp":1.5,"read":false,"seen":false,"data":"d","mime_type":"m"}"#,
        "invalid type: floating point `1.5`, expected an integer or a numeric string at `timestamp`",
        true,
    ),
    (
        "added_message",
        r#"{"id":1,"conversation_id":2,"type":0,"timestamp":1,"read":"false","seen":false,"data":"d","mime_type":"m"}"#,
        r#"invalid type: string "false", expected a boolean at `read`"#,
        true,
    ),
    (
        "read_conversation",
        r#"{"id":2}"#,
        "missing field `android_device`",
        true,
    ),
    (
        "update_setting",
        r#"[{"pref":"p","type":"boolean","value":true}]"#,
        "expected a JSON object, found an array",
        true,
    ),
    (
        "seen_conversations",
        r#""x""#,
        "expected a JSON object, found a string",
        true,
    ),
    (
        "conversation.updated",
        "null",
        "expected a JSON object, found null",
        true,
    ),
    (
        "metadata.updated",
        r#"{"subject":"user","identifier":"u","metadata":{}}"#,
        "unknown variant `user`, expected one of `conversation`, `channel`, `message` at `subject`",
        true,
    ),
    (
        "channel.updated",
        r#"{"id":"c","source":"s","source_channel_id":"x","connected":"yes"}"#,
        r#"invalid type: string "yes", expected a boolean at `connected`"#,
        true,
    ),
    (
        "presence.update",
        r#"{"account_id":1,"users":{"7":1}}"#,
        "invalid type: integer `1`, expected a string at `users.7`",
        true,
    ),
    (
        "conversation.typing_on",
        r#"{"conversation":{"id":5},"user":{"id":7}}"#,
        "missing field `is_private`",
        true,
    ),
    (
        "conversation.typing_off",
        r#"{"conversation":{"status":"open"},"user":{"id":7},"is_private":false}"#,
        "missing field `id` at `conversation`",
        true,
    ),
    (
        "contact.created",
        r#"{"name":"Grace"}"#,
        "missing field `id`",
        true,
    ),
    (
        "unread_count.updated",
        r#"{"conversation_id":"c","unread_message_count":-1,"timestamp":"t"}"#,
        "invalid value: integer `-1`, expected u64 at `unread_message_count`",
        true,
    ),
    (
        "ConversationMessageNotification",
        r#"{"ConversationID":"c","ServerID":"s","Timestamp":1}"#,
        "missing field `SenderID`",
        true,
    ),
    (
        "ConversationMessageNotification",
        r#"{"ConversationID":"c","ServerID":"s","SenderID":"7","Timestamp":1}"#,
        r#"invalid type: string "7", expected i64 at `SenderID`"#,
        true,
    ),
    (
        "ConversationMessageNotification",
        r#"{"ConversationID":"c","ServerID":"s","SenderID":7,"Timestamp":1,"LikeUserIDs":{"a":1}}"#,
        "invalid type: map, expected a sequence at `LikeUserIDs`",
        true,
    ),
    (
        "UserChangeNotification",
        r#"{"User":{"Username":"grace"}}"#,
        "missing field `UserID` at `User`",
        true,
    ),
    (
        "ConversationMessageRequest",
        r#"{"ConversationID":"c","ClientID":"x"}"#,
        "missing field `Message`",
        true,
    ),
    (
        "removed_contact_by_id",
        r#"{"id":true}"#,
        "invalid type: boolean `true`, expected a string or an integer at `id`",
        true,
    ),
    // JSON Schema's `integer` admits 5.0; the Android client does not.
    (
        "removed_message",
        r#"{"id":5.0}"#,
        "invalid type: floating point `5.0`, expected an integer or a numeric string at `id`",
        false,
    ),
];

fn raw(json: &str) -> Box<RawValue> {
    RawValue::from_string(json.to_owned()).unwrap()
}

fn envelope_json(event_type: &str, payload: &str) -> String {
    format!(
        r#"{{"id":"evt-1","type":"{event_type}","account_id":"42","occurred_at":"2026-11-22T10:00:00.000Z","audience":{{"users":["7"],"roles":["agent"]}},"payload":{payload}}}"#
    )
}

fn schema_validator(family: Family) -> jsonschema::Validator {
    jsonschema::options()
        .should_validate_formats(true)
        .build(&topic_schema(family))
        .unwrap_or_else(|err| panic!("{family}: invalid JSON Schema: {err}"))
}

fn schema_errors(validator: &jsonschema::Validator, instance: &Value) -> Vec<String> {
    validator
        .iter_errors(instance)
        .map(|err| format!("{} at {}", err, err.instance_path()))
        .collect()
}

#[test]
fn every_type_maps_to_its_family() {
    let known: BTreeSet<&str> = event_types().iter().copied().collect();
    let expected: BTreeSet<&str> = FAMILIES.iter().map(|(name, _)| *name).collect();
    assert_eq!(
        known, expected,
        "the catalogue and the documented list disagree"
    );
    assert_eq!(event_types().len(), FAMILIES.len(), "duplicate type names");
    for (name, family) in FAMILIES {
        assert_eq!(family_of(name), Some(*family), "{name}");
    }
    assert_eq!(family_of("message.deleted"), None);
    assert_eq!(family_of(""), None);
    assert_eq!(family_of("MESSAGE.CREATED"), None);
}

#[test]
fn every_pulse_operation_of_the_seed_is_known() {
    let operations: Vec<&str> = PULSE_OPERATIONS
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .collect();
    assert_eq!(operations.len(), 47);
    for operation in operations {
        assert!(
            family_of(operation).is_some(),
            "{operation} is not in the catalogue"
        );
    }
}

#[test]
fn every_family_has_events() {
    for family in Family::ALL {
        assert!(
            FAMILIES.iter().any(|(_, f)| *f == family),
            "{family} has no event type"
        );
    }
}

#[test]
fn every_type_has_a_sample() {
    let sampled: BTreeSet<&str> = SAMPLES.iter().map(|(name, _)| *name).collect();
    let missing: Vec<&&str> = event_types()
        .iter()
        .filter(|name| !sampled.contains(**name))
        .collect();
    assert!(missing.is_empty(), "no sample for {missing:?}");
}

#[test]
fn valid_samples_pass_rust_validation() {
    for (event_type, payload) in SAMPLES {
        let family = validate_payload(event_type, &raw(payload))
            .unwrap_or_else(|err| panic!("{event_type}: {err}\n{payload}"));
        assert_eq!(Some(family), family_of(event_type));

        let record = envelope_json(event_type, payload);
        let envelope =
            Envelope::decode(record.as_bytes()).unwrap_or_else(|err| panic!("{event_type}: {err}"));
        assert_eq!(validate(&envelope), Ok(family), "{event_type}");
        assert_eq!(envelope.payload.get(), *payload, "payload bytes changed");
    }
}

#[test]
fn valid_samples_pass_the_topic_json_schema() {
    for family in Family::ALL {
        let validator = schema_validator(family);
        for (event_type, payload) in SAMPLES {
            let record: Value = serde_json::from_str(&envelope_json(event_type, payload)).unwrap();
            let errors = schema_errors(&validator, &record);
            if family_of(event_type) == Some(family) {
                assert!(errors.is_empty(), "{event_type} on {family}: {errors:#?}");
            } else {
                assert!(
                    !errors.is_empty(),
                    "{event_type} accepted on the {family} topic"
                );
            }
        }
    }
}

#[test]
fn wrong_shapes_are_rejected_with_a_precise_reason() {
    for (event_type, payload, reason, _) in REJECTS {
        let err = validate_payload(event_type, &raw(payload)).unwrap_err();
        let SchemaError::InvalidPayload {
            event_type: named,
            reason: actual,
        } = &err
        else {
            panic!("{event_type}: unexpected error {err:?}");
        };
        assert_eq!(named, event_type);
        assert!(
            actual.contains(reason),
            "{event_type} {payload}\n  expected reason containing: {reason}\n  actual: {actual}"
        );
        assert!(
            err.to_string()
                .starts_with(&format!("invalid payload for `{event_type}`: "))
        );
    }
}

#[test]
fn wrong_shapes_are_rejected_by_the_topic_json_schema() {
    for (event_type, payload, _, schema_rejects) in REJECTS {
        let family = family_of(event_type).unwrap();
        let record: Value = serde_json::from_str(&envelope_json(event_type, payload)).unwrap();
        let errors = schema_errors(&schema_validator(family), &record);
        assert_eq!(
            !errors.is_empty(),
            *schema_rejects,
            "{event_type} {payload}: {errors:#?}"
        );
    }
}

#[test]
fn generated_schemas_are_valid_against_the_meta_schema() {
    for family in Family::ALL {
        let schema = topic_schema(family);
        if let Err(err) = jsonschema::meta::validate(&schema) {
            panic!("{family}: {err}");
        }
    }
}

#[test]
fn the_schema_checks_the_envelope_too() {
    let validator = schema_validator(Family::Tag);
    let payload = r#"{"id":"t-1","name":"flag","color":"tag-red"}"#;
    for bad in [
        format!(r#"{{"type":"tag.updated","account_id":"42","payload":{payload}}}"#),
        format!(r#"{{"id":"","type":"tag.updated","account_id":"42","payload":{payload}}}"#),
        format!(r#"{{"id":" ","type":"tag.updated","account_id":"42","payload":{payload}}}"#),
        format!(
            r#"{{"id":"e","type":"tag.updated","account_id":"42","audience":{{"users":[""]}},"payload":{payload}}}"#
        ),
        format!(
            r#"{{"id":"e","type":"tag.updated","account_id":"42","audience":{{"roles":[" "]}},"payload":{payload}}}"#
        ),
        format!(r#"{{"id":"e","type":"tag.updated","account_id":"","payload":{payload}}}"#),
        format!(r#"{{"id":"e","type":"tag.updated","account_id":4.2,"payload":{payload}}}"#),
        format!(
            r#"{{"id":"e","type":"tag.updated","account_id":"42","occurred_at":"yesterday","payload":{payload}}}"#
        ),
        format!(
            r#"{{"id":"e","type":"tag.updated","account_id":"42","audience":{{"users":[true]}},"payload":{payload}}}"#
        ),
        r#"{"id":"e","type":"tag.updated","account_id":"42"}"#.to_owned(),
    ] {
        let record: Value = serde_json::from_str(&bad).unwrap();
        assert!(!validator.is_valid(&record), "accepted: {bad}");
    }
    let good = format!(
        r#"{{"id":"e","type":"tag.updated","account_id":42,"audience":{{"users":[7,"8"],"contacts":null}},"extra":true,"payload":{payload}}}"#
    );
    let record: Value = serde_json::from_str(&good).unwrap();
    assert!(
        validator.is_valid(&record),
        "{:#?}",
        schema_errors(&validator, &record)
    );
}
