//! The header every generated payload starts with: run tag, publisher id, sequence number and
//! send timestamp. The rest of the payload is padding. Little-endian, fixed offsets, so the
//! publisher patches it in place and the subscriber reads it without parsing.

/// Bytes taken by the header; the smallest payload the generator can send.
pub const HEADER_LEN: usize = 24;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayloadHeader {
    /// Random per run: messages left over from another run (retained, queued in a persistent
    /// session, a concurrent generator) carry another tag and are counted as foreign.
    pub tag: u32,
    pub publisher: u32,
    pub seq: u64,
    /// Nanoseconds since the process's epoch: the actual send time (closed loop) or the
    /// scheduled send time (open loop).
    pub sent_ns: u64,
}

impl PayloadHeader {
    /// `out` must be exactly `HEADER_LEN` bytes (the template guarantees it).
    pub fn encode(&self, out: &mut [u8]) {
        out[0..4].copy_from_slice(&self.tag.to_le_bytes());
        out[4..8].copy_from_slice(&self.publisher.to_le_bytes());
        out[8..16].copy_from_slice(&self.seq.to_le_bytes());
        out[16..24].copy_from_slice(&self.sent_ns.to_le_bytes());
    }

    /// `None` when the payload is shorter than a header.
    pub fn decode(payload: &[u8]) -> Option<PayloadHeader> {
        let h = payload.get(..HEADER_LEN)?;
        let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&h[i..i + 8]);
            u64::from_le_bytes(b)
        };
        Some(PayloadHeader {
            tag: u32_at(0),
            publisher: u32_at(4),
            seq: u64_at(8),
            sent_ns: u64_at(16),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_layout() {
        let h = PayloadHeader {
            tag: 0x04030201,
            publisher: 0x0a,
            seq: 0x0102,
            sent_ns: 0xff,
        };
        let mut buf = [0u8; HEADER_LEN];
        h.encode(&mut buf);
        assert_eq!(
            buf,
            [
                1, 2, 3, 4, 10, 0, 0, 0, 2, 1, 0, 0, 0, 0, 0, 0, 0xff, 0, 0, 0, 0, 0, 0, 0
            ]
        );
        assert_eq!(PayloadHeader::decode(&buf), Some(h));
        assert_eq!(PayloadHeader::decode(&buf[..HEADER_LEN - 1]), None);
    }
}
