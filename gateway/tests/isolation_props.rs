//! Tenant and audience isolation through the real router, as properties.
//!
//! Random accounts, principals (agents, admins, contacts; ids and accounts
//! drawn from small pools with near-collisions such as `7`/`07` and a user
//! and a contact sharing an id), connections, audiences and events go through
//! [`Router::dispatch`], interleaved with connections leaving. Each connection
//! records what the router offers it; real RoomChannel subscriptions
//! ([`CableRecipient`]) are registered too and their queued frames read back
//! through the connection's writer.
//!
//! The expected outcome is computed from the rules as documented
//! (docs/events.md, and docs/protocols/actioncable.md, "RoomChannel"), not from the gateway's code:
//! - an event is offered only to connections of its account whose principal
//!   the audience admits, to each such live connection exactly once, in order;
//! - a RoomChannel subscription gets only RoomChannel events; a contact's
//!   only the contact events, never private notes, never other contacts'
//!   presence; a typist never gets their own typing event; every frame
//!   carries the subscription's own identifier and the event's own payload.

use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use herald_gateway::{
    core::{
        event::RoutedEvent,
        identity::{Identity, PrincipalKind},
    },
    metrics::Metrics,
    protocols::cable::{
        channel::{CableRecipient, ChannelKind, room_accepts},
        protocol::json_string,
    },
    routing::{
        gate::ResumeGate,
        router::{FrameCache, Recipient, Router},
    },
    transport::connection::{self, Outbound, Writer},
};
use herald_schemas::{Audience, Envelope};
use proptest::prelude::*;
use serde_json::{Value, json};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{Message, protocol::Role},
};
use tokio_util::sync::CancellationToken;

/// Accounts, with a near-collision (`01` is not `1`).
const ACCOUNTS: [&str; 3] = ["1", "2", "01"];
/// Principal ids, shared by users and contacts on purpose.
const IDS: [&str; 4] = ["7", "8", "07", "c9"];
/// Roles an audience may name (`Agent` is not `agent`).
const AUDIENCE_ROLES: [&str; 5] = ["agent", "admin", "administrator", "contact", "Agent"];
/// User roles a credential may carry.
const USER_ROLES: [&str; 3] = ["agent", "admin", "administrator"];

/// RoomChannel events (Chatwoot's RoomChannel API), written out from docs/protocols/actioncable.md, "RoomChannel".
const ROOM_EVENTS: [&str; 14] = [
    "conversation.created",
    "conversation.read",
    "message.created",
    "message.updated",
    "conversation.status_changed",
    "conversation.typing_on",
    "conversation.typing_off",
    "assignee.changed",
    "team.changed",
    "conversation.contact_changed",
    "contact.created",
    "contact.updated",
    "presence.update",
    "notification_created",
];
/// The RoomChannel events a contact may receive (docs/protocols/actioncable.md, "RoomChannel").
const CONTACT_ROOM_EVENTS: [&str; 7] = [
    "conversation.created",
    "conversation.status_changed",
    "message.created",
    "message.updated",
    "conversation.typing_on",
    "conversation.typing_off",
    "presence.update",
];
/// Events of other protocols, offered by the router but never RoomChannel frames.
const OTHER_EVENTS: [&str; 4] = [
    "tag.updated",
    "added_message",
    "ConversationMessageNotification",
    "unread_count.updated",
];

#[derive(Debug, Clone)]
struct PrincipalSpec {
    account: usize,
    contact: bool,
    role: usize,
    id: usize,
    /// Connections this principal opens (some with a RoomChannel subscription).
    conns: Vec<bool>,
}

#[derive(Debug, Clone)]
struct AudienceSpec {
    users: Vec<usize>,
    contacts: Vec<usize>,
    roles: Vec<usize>,
}

#[derive(Debug, Clone)]
struct EventSpec {
    account: usize,
    ty: usize,
    audience: Option<AudienceSpec>,
    /// 0: no flag, 1: `private: true`, 2: `is_private: true`, 3: `private: false`.
    private: u8,
    /// The typist of a typing event: (id, is a contact, id written as a JSON number).
    typist: (usize, bool, bool),
}

#[derive(Debug, Clone)]
enum Step {
    Dispatch(EventSpec),
    /// Disconnect the n-th connection (modulo the number of connections).
    Leave(usize),
}

fn principal() -> impl Strategy<Value = PrincipalSpec> {
    (
        0..ACCOUNTS.len(),
        any::<bool>(),
        0..USER_ROLES.len(),
        0..IDS.len(),
        prop::collection::vec(any::<bool>(), 1..3),
    )
        .prop_map(|(account, contact, role, id, conns)| PrincipalSpec {
            account,
            contact,
            role,
            id,
            conns,
        })
}

fn audience() -> impl Strategy<Value = AudienceSpec> {
    (
        prop::collection::vec(0..IDS.len(), 0..3),
        prop::collection::vec(0..IDS.len(), 0..3),
        prop::collection::vec(0..AUDIENCE_ROLES.len(), 0..3),
    )
        .prop_map(|(users, contacts, roles)| AudienceSpec {
            users,
            contacts,
            roles,
        })
}

fn event() -> impl Strategy<Value = EventSpec> {
    (
        0..ACCOUNTS.len(),
        0..ROOM_EVENTS.len() + OTHER_EVENTS.len(),
        prop::option::weighted(0.7, audience()),
        0..4u8,
        (0..IDS.len(), any::<bool>(), any::<bool>()),
    )
        .prop_map(|(account, ty, audience, private, typist)| EventSpec {
            account,
            ty,
            audience,
            private,
            typist,
        })
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        prop_oneof![
            6 => event().prop_map(Step::Dispatch),
            1 => any::<usize>().prop_map(Step::Leave),
        ],
        1..40,
    )
}

/// A connection that records the sequence numbers of the events offered to it.
struct Recorder {
    identity: Identity,
    offered: Mutex<Vec<u64>>,
}

impl Recipient for Recorder {
    fn identity(&self) -> &Identity {
        &self.identity
    }

    fn offer(&self, event: &Arc<RoutedEvent>, _cache: &mut FrameCache) {
        let seq = event.payload_json().and_then(|p| p["seq"].as_u64());
        self.offered
            .lock()
            .unwrap()
            .push(seq.expect("every test event carries its seq"));
    }
}

fn identity(p: &PrincipalSpec) -> Identity {
    Identity {
        account_id: ACCOUNTS[p.account].into(),
        kind: if p.contact {
            PrincipalKind::Contact
        } else {
            PrincipalKind::User
        },
        id: IDS[p.id].to_owned(),
        role: if p.contact {
            "contact".to_owned()
        } else {
            USER_ROLES[p.role].to_owned()
        },
        expires_at: None,
        token_key: None,
        conversations: None,
    }
}

fn event_type(e: &EventSpec) -> &'static str {
    ROOM_EVENTS
        .get(e.ty)
        .copied()
        .unwrap_or_else(|| OTHER_EVENTS[e.ty - ROOM_EVENTS.len()])
}

fn payload(e: &EventSpec, seq: u64) -> Value {
    let ty = event_type(e);
    let mut p = json!({"seq": seq, "account_id": ACCOUNTS[e.account]});
    match e.private {
        1 => p["private"] = json!(true),
        2 => p["is_private"] = json!(true),
        3 => p["private"] = json!(false),
        _ => {}
    }
    if ty.starts_with("conversation.typing_") {
        let (id, contact, numeric) = e.typist;
        let id = match IDS[id].parse::<u64>() {
            Ok(n) if numeric => json!(n),
            _ => json!(IDS[id]),
        };
        p["user"] = json!({"id": id, "type": if contact { "contact" } else { "user" }});
    }
    if ty == "presence.update" {
        p["users"] = json!({"7": "online"});
        p["contacts"] = json!({"c9": "online", "7": "busy"});
    }
    p
}

fn routed(e: &EventSpec, seq: u64) -> Arc<RoutedEvent> {
    let audience = e.audience.as_ref().map(|a| Audience {
        users: a.users.iter().map(|&i| IDS[i].to_owned()).collect(),
        contacts: a.contacts.iter().map(|&i| IDS[i].to_owned()).collect(),
        roles: a
            .roles
            .iter()
            .map(|&i| AUDIENCE_ROLES[i].to_owned())
            .collect(),
    });
    let envelope = Envelope {
        id: format!("evt-{seq}"),
        event_type: event_type(e).to_owned(),
        account_id: ACCOUNTS[e.account].to_owned(),
        occurred_at: None,
        audience,
        payload: serde_json::value::RawValue::from_string(payload(e, seq).to_string()).unwrap(),
    };
    Arc::new(RoutedEvent::new(
        "herald.test".into(),
        0,
        seq as i64,
        envelope,
        None,
    ))
}

/// The documented audience rule (docs/events.md).
fn spec_entitled(p: &PrincipalSpec, e: &EventSpec) -> bool {
    if ACCOUNTS[p.account] != ACCOUNTS[e.account] {
        return false;
    }
    let id = IDS[p.id];
    let names = |list: &[usize], pool: &[&str]| list.iter().any(|&i| pool[i] == id);
    match (&e.audience, p.contact) {
        (None, contact) => !contact,
        (Some(a), true) => names(&a.contacts, &IDS),
        (Some(a), false) => {
            let role = USER_ROLES[p.role];
            (a.users.is_empty() && a.roles.is_empty())
                || names(&a.users, &IDS)
                || a.roles.iter().any(|&r| AUDIENCE_ROLES[r] == role)
        }
    }
}

/// The documented RoomChannel rule (docs/protocols/actioncable.md, "RoomChannel"), for an entitled principal.
fn spec_room(p: &PrincipalSpec, e: &EventSpec) -> bool {
    let ty = event_type(e);
    if !ROOM_EVENTS.contains(&ty) {
        return false;
    }
    if p.contact && (!CONTACT_ROOM_EVENTS.contains(&ty) || matches!(e.private, 1 | 2)) {
        return false;
    }
    // The typist as the payload names them: a numeric id written as a JSON
    // number reads back as its decimal text (`07` as 7 is user `7`).
    let (typist, typist_is_contact, numeric) = e.typist;
    let typist_id = match IDS[typist].parse::<u64>() {
        Ok(n) if numeric => n.to_string(),
        _ => IDS[typist].to_owned(),
    };
    let is_typist = typist_id == IDS[p.id] && typist_is_contact == p.contact;
    !(ty.starts_with("conversation.typing_") && is_typist)
}

/// One registered connection and what it should have been offered.
struct Conn {
    principal: usize,
    account: &'static str,
    conn_id: u64,
    recorder: Arc<Recorder>,
    /// A RoomChannel subscription on the same identity, with its writer.
    cable: Option<(Arc<CableRecipient>, Writer, String)>,
    live: bool,
    expected: Vec<u64>,
    expected_frames: Vec<u64>,
}

/// Close the subscription's queue and collect the text frames its writer
/// writes, read back by a WebSocket client over an in-memory pipe.
fn written_frames(cable: &CableRecipient, writer: Writer) -> Vec<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        assert!(
            cable
                .conn
                .send(Outbound::Close {
                    code: 1000,
                    reason: "end of test",
                })
                .await
        );
        let (server, client) = tokio::io::duplex(64 * 1024);
        let reader = tokio::spawn(async move {
            let mut ws = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
            let mut texts = Vec::new();
            while let Some(Ok(message)) = ws.next().await {
                match message {
                    Message::Text(t) => texts.push(t.as_str().to_owned()),
                    Message::Close(_) => break,
                    _ => {}
                }
            }
            texts
        });
        writer.run(server, None, CancellationToken::new()).await;
        reader.await.unwrap()
    })
}

fn check(principals: &[PrincipalSpec], steps: &[Step]) -> Result<(), TestCaseError> {
    let router = Router::new();
    let mut conns: Vec<Conn> = Vec::new();
    let mut next_id = 1u64;
    for (i, p) in principals.iter().enumerate() {
        for &with_room in &p.conns {
            let conn_id = next_id;
            next_id += 1;
            let recorder = Arc::new(Recorder {
                identity: identity(p),
                offered: Mutex::new(Vec::new()),
            });
            router.insert(conn_id, recorder.clone());
            let cable = with_room.then(|| {
                let (tx, writer) = connection::channel(
                    &connection::ConnLimits {
                        frames: 4096,
                        ..Default::default()
                    },
                    "cable",
                    &Metrics::new(),
                );
                let identifier = format!(
                    r#"{{"channel":"RoomChannel","pubsub_token":"token-{conn_id}","account_id":"{}"}}"#,
                    ACCOUNTS[p.account]
                );
                let recipient = Arc::new(CableRecipient {
                    identity: identity(p),
                    channel: ChannelKind::Room,
                    identifier_json: json_string(&identifier),
                    shared_key: None,
                    conn: tx,
                    ext_epochs: None,
                    gate: ResumeGate::open(),
                    lane: conn_id,
                });
                // A second id: the router indexes connections, not identities.
                router.insert(conn_id + 1_000_000, recipient.clone());
                (recipient, writer, identifier)
            });
            conns.push(Conn {
                principal: i,
                account: ACCOUNTS[p.account],
                conn_id,
                recorder,
                cable,
                live: true,
                expected: Vec::new(),
                expected_frames: Vec::new(),
            });
        }
    }

    let mut cache = FrameCache::default();
    let mut events: Vec<(EventSpec, Arc<RoutedEvent>)> = Vec::new();
    for (seq, step) in steps.iter().enumerate() {
        let seq = seq as u64;
        match step {
            Step::Leave(n) => {
                let len = conns.len();
                let c = &mut conns[n % len];
                router.remove(c.account, c.conn_id);
                router.remove(c.account, c.conn_id + 1_000_000);
                c.live = false;
            }
            Step::Dispatch(e) => {
                let event = routed(e, seq);
                let mut entitled = 0;
                for c in conns.iter_mut().filter(|c| c.live) {
                    let p = &principals[c.principal];
                    let spec = spec_entitled(p, e);
                    if ACCOUNTS[p.account] == ACCOUNTS[e.account] {
                        // The gateway's own rule agrees with the documented one.
                        prop_assert_eq!(
                            c.recorder
                                .identity
                                .entitled(event.envelope.audience.as_ref()),
                            spec,
                            "Identity::entitled disagrees for {:?} / {:?}",
                            p,
                            e
                        );
                    }
                    if spec {
                        entitled += 1;
                        c.expected.push(seq);
                        if let Some((cable, _, _)) = &c.cable {
                            entitled += 1;
                            prop_assert_eq!(room_accepts(&cable.identity, &event), spec_room(p, e));
                            if spec_room(p, e) {
                                c.expected_frames.push(seq);
                            }
                        }
                    }
                }
                let offered = router.dispatch(&event, &mut cache);
                prop_assert_eq!(offered, entitled, "offer count for {:?}", e);
                events.push((e.clone(), event));
            }
        }
    }

    for c in conns {
        let p = &principals[c.principal];
        let offered = c.recorder.offered.lock().unwrap().clone();
        prop_assert_eq!(
            &offered,
            &c.expected,
            "connection {} of {:?} was offered the wrong events",
            c.conn_id,
            p
        );
        let Some((cable, writer, identifier)) = c.cable else {
            continue;
        };
        let frames = written_frames(&cable, writer);
        let mut got = Vec::new();
        for text in frames {
            let frame: Value = serde_json::from_str(&text).expect("frames are JSON");
            prop_assert_eq!(frame["identifier"].as_str(), Some(identifier.as_str()));
            let message = &frame["message"];
            let data = &message["data"];
            let seq = data["seq"]
                .as_u64()
                .expect("frame data is the event payload");
            let (spec, event) = &events
                .iter()
                .find(|(_, ev)| ev.offset == seq as i64)
                .expect("a frame of a dispatched event");
            prop_assert_eq!(message["event"].as_str(), Some(event_type(spec)));
            let mut want = event.payload_json().cloned().unwrap();
            if p.contact && event_type(spec) == "presence.update" {
                // Contacts never see other contacts' presence.
                want.as_object_mut().unwrap().remove("contacts");
            }
            prop_assert_eq!(data, &want, "frame body for {:?}", p);
            got.push(seq);
        }
        prop_assert_eq!(
            &got,
            &c.expected_frames,
            "RoomChannel subscription of {:?} got the wrong frames",
            p
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// No event reaches a connection it is not entitled to, and every
    /// entitled live connection is offered it exactly once, in order.
    #[test]
    fn events_reach_exactly_the_entitled_connections(
        principals in prop::collection::vec(principal(), 1..8),
        steps in steps(),
    ) {
        check(&principals, &steps)?;
    }
}

/// The cases the rules are most easily got wrong on, spelled out.
#[test]
fn near_collisions_do_not_leak() {
    let agent7 = PrincipalSpec {
        account: 0,
        contact: false,
        role: 0,
        id: 0,
        conns: vec![true],
    };
    let contact7 = PrincipalSpec {
        contact: true,
        ..agent7.clone()
    };
    let agent07 = PrincipalSpec {
        id: 2,
        ..agent7.clone()
    };
    let other_account = PrincipalSpec {
        account: 2,
        ..agent7.clone()
    };
    let base = EventSpec {
        account: 0,
        ty: 2, // message.created
        audience: None,
        private: 0,
        typist: (0, false, false),
    };
    let steps = vec![
        // To user "7" only: not contact "7", not user "07", not account "01".
        Step::Dispatch(EventSpec {
            audience: Some(AudienceSpec {
                users: vec![0],
                contacts: vec![],
                roles: vec![],
            }),
            ..base.clone()
        }),
        // To contact "7": every user of the account too (no users/roles named).
        Step::Dispatch(EventSpec {
            audience: Some(AudienceSpec {
                users: vec![],
                contacts: vec![0],
                roles: vec![],
            }),
            ..base.clone()
        }),
        // A private note to contact "7": users only.
        Step::Dispatch(EventSpec {
            audience: Some(AudienceSpec {
                users: vec![],
                contacts: vec![0],
                roles: vec![],
            }),
            private: 1,
            ..base.clone()
        }),
        // Agent-only RoomChannel event naming the contact.
        Step::Dispatch(EventSpec {
            ty: 7, // assignee.changed
            audience: Some(AudienceSpec {
                users: vec![],
                contacts: vec![0],
                roles: vec![],
            }),
            ..base.clone()
        }),
        // Contact "7" typing: not echoed to them, but to agent "7".
        Step::Dispatch(EventSpec {
            ty: 5,
            audience: Some(AudienceSpec {
                users: vec![],
                contacts: vec![0],
                roles: vec![],
            }),
            typist: (0, true, true),
            ..base.clone()
        }),
        // Role "Agent" is not role "agent".
        Step::Dispatch(EventSpec {
            audience: Some(AudienceSpec {
                users: vec![],
                contacts: vec![],
                roles: vec![4],
            }),
            ..base.clone()
        }),
        // Presence to everyone including contact "7": contacts' part stripped for them.
        Step::Dispatch(EventSpec {
            ty: 12,
            audience: Some(AudienceSpec {
                users: vec![],
                contacts: vec![0],
                roles: vec![],
            }),
            ..base
        }),
    ];
    check(&[agent7, contact7, agent07, other_account], &steps).unwrap();
}

/// Regression for a fail-open found while probing the envelope decoder with
/// deeply nested input:
/// `Envelope::decode` keeps the payload as raw JSON without a depth limit,
/// but `RoutedEvent::payload_json` parses it with serde_json's recursion
/// limit (128), so a payload nested deeper parses to `None`, and the
/// private-note check (`is_private` in gateway/src/protocols/cable/channel.rs) then
/// reads "not private": the note reaches contacts. It must fail closed.
#[test]
fn a_private_note_too_deep_to_parse_never_reaches_contacts() {
    let depth = 200;
    let payload = format!(
        r#"{{"id":101,"content":"internal only","private":true,"content_attributes":{}{}}}"#,
        "[".repeat(depth),
        "]".repeat(depth)
    );
    let record = format!(
        r#"{{"id":"evt-deep","type":"message.created","account_id":"1","audience":{{"contacts":["c9"]}},"payload":{payload}}}"#
    );
    let envelope = Envelope::decode(record.as_bytes()).expect("a valid envelope");
    let event = Arc::new(RoutedEvent::new(
        "herald.message".into(),
        0,
        0,
        envelope,
        None,
    ));
    let contact = identity(&PrincipalSpec {
        account: 0,
        contact: true,
        role: 0,
        id: 3,
        conns: vec![true],
    });
    assert!(contact.entitled(event.envelope.audience.as_ref()));
    assert!(
        !room_accepts(&contact, &event),
        "a private note (payload too deep to parse) would be sent to a contact"
    );
}
