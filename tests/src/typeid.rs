//! A raw TypeID JSON client (`{"TypeID":..,"Body":..}` text frames) and
//! the frames the tests send.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// A TypeID client socket.
pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Open a socket.
pub async fn open(url: &str) -> anyhow::Result<Ws> {
    Ok(tokio_tungstenite::connect_async(url).await?.0)
}

/// Send a frame.
pub async fn send(ws: &mut Ws, v: Value) -> anyhow::Result<()> {
    ws.send(WsMessage::text(v.to_string())).await?;
    Ok(())
}

/// Next frame as JSON, or None once closed.
pub async fn recv(ws: &mut Ws) -> anyhow::Result<Option<Value>> {
    loop {
        match tokio::time::timeout(Duration::from_secs(15), ws.next()).await? {
            None | Some(Err(_)) | Some(Ok(WsMessage::Close(_))) => return Ok(None),
            Some(Ok(WsMessage::Text(t))) => return Ok(Some(serde_json::from_str(&t)?)),
            Some(Ok(_)) => continue,
        }
    }
}

/// A JoinRequest.
pub fn join(session: &str, user: i64, version: &str) -> Value {
    json!({"TypeID": -2101997347, "Body": {"CipherAlgorithm": 0, "CipherStrength": 0, "ClientVersion": version,
        "MachineKey": "mk", "PublicKey": null, "SessionID": session, "Status": 1, "UserID": user}})
}

/// A ConversationMessageRequest.
pub fn request(conversation: &str, client: &str) -> Value {
    json!({"TypeID": -2124552136, "Body": {"ConversationID": conversation, "AttachmentID": null, "ClientID": client, "Message": "hi"}})
}

/// Open and join; fails unless the JoinResponse has Status 1.
pub async fn joined(url: &str, session: &str, user: i64) -> anyhow::Result<Ws> {
    let mut ws = open(url).await?;
    send(&mut ws, join(session, user, "7.0.30")).await?;
    let r = recv(&mut ws).await?.expect("join response");
    anyhow::ensure!(
        r["TypeID"] == -815187584 && r["Body"]["Status"] == 1,
        "join failed: {r}"
    );
    Ok(ws)
}

/// A `ConversationMessageNotification` event for `users` of `account`.
pub fn notification(account: &str, users: &[&str], body: &str) -> Value {
    json!({"type": "ConversationMessageNotification", "account_id": account, "audience": {"users": users},
        "payload": {"ClientID": "c1", "ServerID": "s1", "ConversationID": "conv-1", "ContactID": null,
            "RootConversationID": "conv-1", "ConversationType": 1, "Timestamp": 1795600000000u64,
            "SenderID": 9, "SenderName": "Grace", "SenderPermissions": null, "SenderRoles": [],
            "SenderVanityRole": 0, "Mentions": [], "RecipientID": null, "Body": body, "IsDeleted": false,
            "DeletedTimestamp": 0, "DeletedUserID": 0, "DeletedUsername": null, "EditedTimestamp": 0,
            "EditedUserID": 0, "EditedUsername": null, "LikeCount": 0, "LikeUserIDs": [], "LikeUsernames": [],
            "ContentTags": [], "Attachments": [], "NotificationType": 0}})
}
