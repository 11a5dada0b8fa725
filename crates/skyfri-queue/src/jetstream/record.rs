//! What the `skyfri_calls` bucket holds per call, and how ids and function names become NATS
//! keys, subject tokens and consumer names.

use base64::Engine;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{AsyncCall, CallRecord, CallState, QueueError};

/// One call's entry in the bucket: the [`CallRecord`] that `get` shows (its fields at the top
/// level, so that `nats kv get skyfri_calls ID` reads like the API) and what the backend needs
/// to hand the call out exactly once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Stored {
    #[serde(flatten)]
    pub record: CallRecord,
    /// The stream sequence of the message that carries the call once it was handed out
    /// (running or retrying). A delivery of another message for the same call is a stray copy
    /// (see the module documentation) and is dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// The `Nats-Msg-Id` of the message that carries the call while it is queued: the key for
    /// a new call, `KEY.rREVISION` for a redriven one. Publishing again with it is a no-op
    /// within the stream's duplicate window.
    pub publish_id: String,
    /// When this backend accepted the call (listing order; `enqueued_at` is the caller's).
    pub accepted_at: DateTime<Utc>,
}

impl Stored {
    pub fn new(call: AsyncCall, now: DateTime<Utc>) -> Stored {
        let publish_id = key(&call.id);
        Stored {
            record: CallRecord {
                call,
                state: CallState::Queued,
                updated_at: now,
            },
            seq: None,
            publish_id,
            accepted_at: now,
        }
    }

    pub fn encode(&self) -> Result<Bytes, QueueError> {
        serde_json::to_vec(self).map(Bytes::from).map_err(|e| {
            QueueError::Backend(format!("call {:?}: encoding: {e}", self.record.call.id))
        })
    }

    pub fn decode(key: &str, value: &[u8]) -> Result<Stored, QueueError> {
        serde_json::from_slice(value).map_err(|e| {
            QueueError::Backend(format!(
                "the record of call key {key:?} is not readable ({e}); \
                 was it written by another program or a newer skyfri?"
            ))
        })
    }

    /// Moves to `state`, now.
    pub fn set(&mut self, state: CallState) {
        self.record.state = state;
        self.record.updated_at = Utc::now();
    }
}

/// The bucket key of a call id. Ids are printable ASCII; KV keys allow fewer characters and
/// treat `.` as a separator, so an id with anything but letters, digits and `-` (UUIDs and
/// skyfri's own ids have none) is stored as `_` and its URL-safe base64.
pub(super) fn key(id: &str) -> String {
    token(id)
}

/// A function name as one subject token and part of a consumer name (the same rule as
/// [`key`]; DNS-1123 labels, which skyfri requires, come out unchanged).
pub(super) fn token(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        s.to_owned()
    } else {
        format!(
            "_{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
        )
    }
}

/// The inverse of [`token`]; `None` for a token it cannot have made.
pub(super) fn untoken(t: &str) -> Option<String> {
    match t.strip_prefix('_') {
        Some(encoded) => base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(encoded)
            .ok()
            .and_then(|b| String::from_utf8(b).ok()),
        None if !t.is_empty() && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') => {
            Some(t.to_owned())
        }
        None => None,
    }
}

/// The attempt a hand-out of a call in `state` is (attempts count hand-outs since enqueue or
/// redrive, as in the embedded queue).
pub(super) fn next_attempt(state: &CallState) -> u32 {
    match state {
        CallState::Running { attempt } | CallState::Retrying { attempt, .. } => {
            attempt.saturating_add(1)
        }
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_stay_readable() {
        for (plain, expect) in [
            ("echo", "echo"),
            ("0193-abcd-EF", "0193-abcd-EF"),
            ("a.b", "_YS5i"),
            ("", "_"),
            ("with space/and*stars>", "_d2l0aCBzcGFjZS9hbmQqc3RhcnM-"),
            ("_x", "_X3g"),
        ] {
            assert_eq!(token(plain), expect, "{plain:?}");
            assert_eq!(untoken(expect).as_deref(), Some(plain));
        }
        assert_eq!(untoken("a.b"), None);
    }

    #[test]
    fn records_round_trip() {
        let call = AsyncCall {
            id: "c/1".into(),
            function: "f".into(),
            method: "POST".into(),
            path: "/".into(),
            query: String::new(),
            headers: vec![("a".into(), "b".into())],
            body: Bytes::from_static(b"\x00\xff"),
            callback_url: None,
            enqueued_at: DateTime::from_timestamp(1_750_000_000, 123_456_789).unwrap_or_default(),
        };
        let mut stored = Stored::new(call, Utc::now());
        assert_eq!(stored.publish_id, "_Yy8x");
        for state in [
            CallState::Queued,
            CallState::Running { attempt: 2 },
            CallState::Retrying {
                attempt: 3,
                next_at: Utc::now(),
                last_status: 503,
                last_error: Some("busy".into()),
            },
            CallState::Done {
                attempt: 1,
                status: 200,
                duration_ms: 5,
            },
            CallState::Dead {
                attempt: 4,
                status: 500,
                reason: "no".into(),
            },
            CallState::Cancelled,
        ] {
            stored.set(state);
            stored.seq = Some(7);
            let bytes = stored.encode().expect("encode");
            assert_eq!(Stored::decode("k", &bytes).expect("decode"), stored);
        }
        let text = String::from_utf8(stored.encode().expect("encode").to_vec()).expect("utf8");
        assert!(text.contains("\"state\":\"cancelled\""), "{text}");
    }
}
