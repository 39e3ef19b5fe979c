//! WireGuard message framing (the whitepaper, section 5.4): type, sizes, indices.

use super::headers::{view, WgHeader};

/// Handshake initiation.
pub const INITIATION: u8 = 1;
/// Handshake response.
pub const RESPONSE: u8 = 2;
/// Cookie reply.
pub const COOKIE_REPLY: u8 = 3;
/// Transport data.
pub const DATA: u8 = 4;

/// Size of a handshake initiation.
pub const INITIATION_LEN: usize = 148;
/// Size of a handshake response.
pub const RESPONSE_LEN: usize = 92;
/// Size of a cookie reply.
pub const COOKIE_REPLY_LEN: usize = 64;
/// Header (16) plus tag (16) of transport data: the smallest data message (a keepalive).
pub const DATA_MIN_LEN: usize = 32;

/// A WireGuard message, classified by type and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message {
    /// Type 1.
    Initiation {
        /// The initiator's index.
        sender: u32,
    },
    /// Type 2.
    Response {
        /// The responder's index.
        sender: u32,
        /// Our index.
        receiver: u32,
    },
    /// Type 3.
    CookieReply {
        /// Our index.
        receiver: u32,
    },
    /// Type 4.
    Data {
        /// Our index.
        receiver: u32,
        /// Nonce counter.
        counter: u64,
    },
}

impl Message {
    /// Classify a datagram. `None` when it is not a well-formed WireGuard message: unknown
    /// type, reserved bytes set, or the wrong size for its type.
    #[inline]
    pub fn classify(d: &[u8]) -> Option<Message> {
        let h: &WgHeader = view(d).ok()?;
        if h.reserved != [0; 3] {
            return None;
        }
        let u32_at = |i: usize| Some(u32::from_le_bytes(d.get(i..i + 4)?.try_into().ok()?));
        match (h.ty, d.len()) {
            (INITIATION, INITIATION_LEN) => Some(Message::Initiation { sender: u32_at(4)? }),
            (RESPONSE, RESPONSE_LEN) => Some(Message::Response {
                sender: u32_at(4)?,
                receiver: u32_at(8)?,
            }),
            (COOKIE_REPLY, COOKIE_REPLY_LEN) => Some(Message::CookieReply {
                receiver: u32_at(4)?,
            }),
            (DATA, n) if n >= DATA_MIN_LEN => Some(Message::Data {
                receiver: u32_at(4)?,
                counter: u64::from_le_bytes(d.get(8..16)?.try_into().ok()?),
            }),
            _ => None,
        }
    }

    /// The receiver index (ours), for messages that carry one.
    #[inline]
    pub fn receiver_index(&self) -> Option<u32> {
        match *self {
            Message::Initiation { .. } => None,
            Message::Response { receiver, .. }
            | Message::CookieReply { receiver }
            | Message::Data { receiver, .. } => Some(receiver),
        }
    }

    /// The type byte.
    pub fn message_type(&self) -> u8 {
        match self {
            Message::Initiation { .. } => INITIATION,
            Message::Response { .. } => RESPONSE,
            Message::CookieReply { .. } => COOKIE_REPLY,
            Message::Data { .. } => DATA,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_by_type_and_size() {
        let mut d = vec![0u8; INITIATION_LEN];
        d[0] = INITIATION;
        d[4..8].copy_from_slice(&7u32.to_le_bytes());
        assert_eq!(
            Message::classify(&d),
            Some(Message::Initiation { sender: 7 })
        );
        d.truncate(INITIATION_LEN - 1);
        assert_eq!(Message::classify(&d), None);
        let mut r = vec![0u8; RESPONSE_LEN];
        r[0] = RESPONSE;
        r[8..12].copy_from_slice(&0x0102_0300u32.to_le_bytes());
        assert_eq!(
            Message::classify(&r).and_then(|m| m.receiver_index()),
            Some(0x0102_0300)
        );
        let mut data = vec![0u8; DATA_MIN_LEN];
        data[0] = DATA;
        data[8] = 9;
        assert_eq!(
            Message::classify(&data),
            Some(Message::Data {
                receiver: 0,
                counter: 9
            })
        );
        data[1] = 1;
        assert_eq!(
            Message::classify(&data),
            None,
            "reserved bytes must be zero"
        );
        assert_eq!(Message::classify(&[DATA, 0, 0]), None);
    }

    proptest::proptest! {
        #[test]
        fn never_panics(d in proptest::collection::vec(0u8.., 0..300)) {
            if let Some(m) = Message::classify(&d) {
                proptest::prop_assert_eq!(m.message_type(), d[0]);
            }
        }
    }
}
