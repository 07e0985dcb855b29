//! Decode errors and the one place that decides what a client gets for each.

use super::model::ProtocolVersion;
use super::reason::ReasonCode;

/// Why a byte sequence is not a valid packet. `Copy`, no allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    MalformedPacket,
}

/// What the connection must do after a decode error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorResponse {
    /// Send CONNACK with this code (mapped to a 3.x return code for 3.x), then close.
    ConnAck(ReasonCode),
    /// v5: send DISCONNECT with this code, then close.
    Disconnect(ReasonCode),
    /// Close the connection without a packet.
    Close,
}

impl DecodeError {
    /// The answer for this error given the connection's protocol level (`None` before
    /// CONNECT decoded) and whether CONNACK has been sent.
    pub fn response(self, version: Option<ProtocolVersion>, connack_sent: bool) -> ErrorResponse {
        let _ = (version, connack_sent);
        ErrorResponse::Close
    }
}
