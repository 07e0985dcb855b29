//! ChaCha20-Poly1305 record protection for rustls that keeps only the key and IV of each
//! direction, and the provider RingMQ's TLS listeners run with.
//!
//! Owns: the record encrypter and decrypter of the three ChaCha20-Poly1305 suites (TLS 1.3
//! `TLS13_CHACHA20_POLY1305_SHA256`, TLS 1.2 `TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256`
//! and `TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256`); the provider: `ring`'s, with those
//! three suites' record protection replaced by these and, for
//! `tls_cipher_preference = "compact"`, the suites put first.
//!
//! Why: an idle connection keeps one encrypter and one decrypter. `ring`'s keep a
//! `LessSafeKey`, which is as large as `ring`'s largest algorithm's key, the AES-GCM key
//! schedule with its GHASH table, whatever the algorithm: 560 bytes a direction (a 640-byte
//! allocation in mimalloc), more than a tenth of the 4 KB an idle TLS connection may cost.
//! ChaCha20 has no key schedule: its state is set up from the 32-byte key for each record.
//! So these keep the key and the 12-byte IV, 44 bytes a direction, and make `ring`'s
//! ChaCha20-Poly1305 key on the stack for each record they seal or open (about 30 ns more a
//! record than a kept key, against 300-1,100 ns for sealing 80-1,400 bytes). The cipher is
//! `ring`'s; only the glue to rustls's traits is ours. The wire format is the standard one
//! (RFC 8446 section 5.2 for TLS 1.3, RFC 7905 for TLS 1.2): nonce = IV XOR the record
//! sequence number, TLS 1.3 additional data = the record header with the inner content type
//! inside the ciphertext, TLS 1.2 additional data = sequence number, type, version, length.
//! Unit tests check it against rustls's own `ring` record protection both ways.
//!
//! The RustCrypto `chacha20poly1305` crate (0.11), whose cipher keeps only its key too, was
//! tried first and dropped for its speed: sealing an 80-byte record took it 2.4 us against
//! 0.34 us for `ring`'s key made per record (1,400 bytes: 4.1 us against 1.1 us; 16 KiB:
//! 12.6 us against 6.2 us; same run on the project's 2-core VM, 2026-12-05).
//!
//! Must never: panic on a record (a short or forged one is `Error::DecryptError`, which
//! rustls answers with a bad_record_mac alert), or keep more than the key and IV.

use std::sync::{Arc, LazyLock};

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, UnboundKey};
use rustls::crypto::CryptoProvider;
use rustls::crypto::cipher::{
    AeadKey, InboundOpaqueMessage, InboundPlainMessage, Iv, KeyBlockShape, MessageDecrypter,
    MessageEncrypter, NONCE_LEN, Nonce, OutboundOpaqueMessage, OutboundPlainMessage,
    PrefixedPayload, Tls12AeadAlgorithm, Tls13AeadAlgorithm, UnsupportedOperationError,
    make_tls12_aad, make_tls13_aad,
};
use rustls::{
    CipherSuite, ConnectionTrafficSecrets, ContentType, Error, ProtocolVersion,
    SupportedCipherSuite, Tls12CipherSuite, Tls13CipherSuite,
};
use zeroize::Zeroize;

use crate::config::TlsCipherPreference as CipherPreference;

/// Poly1305 tag length.
const TAG_LEN: usize = 16;

/// ChaCha20-Poly1305 key length.
const KEY_LEN: usize = 32;

/// Largest plaintext of a record (2^14 bytes).
const MAX_FRAGMENT_LEN: usize = 16_384;

/// A direction's key: the 32 bytes, wiped when dropped.
struct ChaChaKey([u8; KEY_LEN]);

impl ChaChaKey {
    /// `None` when `key` is not 32 bytes (rustls hands over `key_len()` bytes, so never in
    /// practice).
    fn new(key: &AeadKey) -> Option<ChaChaKey> {
        <[u8; KEY_LEN]>::try_from(key.as_ref()).ok().map(ChaChaKey)
    }

    /// `ring`'s key, made for one record (on the stack; ChaCha20 has no key schedule).
    fn ring(&self) -> Option<LessSafeKey> {
        UnboundKey::new(&CHACHA20_POLY1305, &self.0)
            .ok()
            .map(LessSafeKey::new)
    }
}

impl Drop for ChaChaKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// The TLS 1.3 algorithm (RFC 8446 section 5.2).
#[derive(Debug)]
struct Tls13ChaCha;

impl Tls13AeadAlgorithm for Tls13ChaCha {
    fn encrypter(&self, key: AeadKey, iv: Iv) -> Box<dyn MessageEncrypter> {
        match ChaChaKey::new(&key) {
            Some(key) => Box::new(Tls13Encrypter { key, iv }),
            None => Box::new(Refused),
        }
    }

    fn decrypter(&self, key: AeadKey, iv: Iv) -> Box<dyn MessageDecrypter> {
        match ChaChaKey::new(&key) {
            Some(key) => Box::new(Tls13Decrypter { key, iv }),
            None => Box::new(Refused),
        }
    }

    fn key_len(&self) -> usize {
        KEY_LEN
    }

    fn extract_keys(
        &self,
        key: AeadKey,
        iv: Iv,
    ) -> Result<ConnectionTrafficSecrets, UnsupportedOperationError> {
        Ok(ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv })
    }

    fn fips(&self) -> bool {
        false
    }
}

/// The TLS 1.2 algorithm (RFC 7905: a 12-byte IV from the key block, no explicit nonce).
#[derive(Debug)]
struct Tls12ChaCha;

fn iv12(iv: &[u8]) -> Option<Iv> {
    <[u8; NONCE_LEN]>::try_from(iv).ok().map(Iv::from)
}

impl Tls12AeadAlgorithm for Tls12ChaCha {
    fn encrypter(&self, key: AeadKey, iv: &[u8], _explicit: &[u8]) -> Box<dyn MessageEncrypter> {
        match (ChaChaKey::new(&key), iv12(iv)) {
            (Some(key), Some(iv)) => Box::new(Tls12Encrypter { key, iv }),
            _ => Box::new(Refused),
        }
    }

    fn decrypter(&self, key: AeadKey, iv: &[u8]) -> Box<dyn MessageDecrypter> {
        match (ChaChaKey::new(&key), iv12(iv)) {
            (Some(key), Some(iv)) => Box::new(Tls12Decrypter { key, iv }),
            _ => Box::new(Refused),
        }
    }

    fn key_block_shape(&self) -> KeyBlockShape {
        KeyBlockShape {
            enc_key_len: KEY_LEN,
            fixed_iv_len: NONCE_LEN,
            explicit_nonce_len: 0,
        }
    }

    fn extract_keys(
        &self,
        key: AeadKey,
        iv: &[u8],
        _explicit: &[u8],
    ) -> Result<ConnectionTrafficSecrets, UnsupportedOperationError> {
        let iv = iv12(iv).ok_or(UnsupportedOperationError)?;
        Ok(ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv })
    }

    fn fips(&self) -> bool {
        false
    }
}

/// Seals `payload` (which holds the plaintext) in place and appends the tag.
fn seal<const N: usize>(
    key: &ChaChaKey,
    iv: &Iv,
    seq: u64,
    aad: [u8; N],
    payload: &mut PrefixedPayload,
) -> Result<(), Error> {
    let key = key.ring().ok_or(Error::EncryptError)?;
    let nonce = ring::aead::Nonce::assume_unique_for_key(Nonce::new(iv, seq).0);
    let tag = key
        .seal_in_place_separate_tag(nonce, Aad::from(aad), payload.as_mut())
        .map_err(|_| Error::EncryptError)?;
    payload.extend_from_slice(tag.as_ref());
    Ok(())
}

/// Opens `payload` (ciphertext and tag) in place; returns the plaintext length.
fn open<const N: usize>(
    key: &ChaChaKey,
    iv: &Iv,
    seq: u64,
    aad: [u8; N],
    payload: &mut [u8],
) -> Result<usize, Error> {
    if payload.len() < TAG_LEN {
        return Err(Error::DecryptError);
    }
    let key = key.ring().ok_or(Error::DecryptError)?;
    let nonce = ring::aead::Nonce::assume_unique_for_key(Nonce::new(iv, seq).0);
    let plain = key
        .open_in_place(nonce, Aad::from(aad), payload)
        .map_err(|_| Error::DecryptError)?;
    Ok(plain.len())
}

/// TLS 1.3 record encryption: the key and IV, nothing else.
struct Tls13Encrypter {
    key: ChaChaKey,
    iv: Iv,
}

impl MessageEncrypter for Tls13Encrypter {
    fn encrypt(
        &mut self,
        msg: OutboundPlainMessage<'_>,
        seq: u64,
    ) -> Result<OutboundOpaqueMessage, Error> {
        let total_len = self.encrypted_payload_len(msg.payload.len());
        let mut payload = PrefixedPayload::with_capacity(total_len);
        payload.extend_from_chunks(&msg.payload);
        payload.extend_from_slice(&msg.typ.to_array());
        seal(
            &self.key,
            &self.iv,
            seq,
            make_tls13_aad(total_len),
            &mut payload,
        )?;
        // TLS 1.3 records carry the legacy version 1.2 (RFC 8446 section 5.1).
        Ok(OutboundOpaqueMessage::new(
            ContentType::ApplicationData,
            ProtocolVersion::TLSv1_2,
            payload,
        ))
    }

    fn encrypted_payload_len(&self, payload_len: usize) -> usize {
        payload_len + 1 + TAG_LEN
    }
}

/// TLS 1.3 record decryption.
struct Tls13Decrypter {
    key: ChaChaKey,
    iv: Iv,
}

impl MessageDecrypter for Tls13Decrypter {
    fn decrypt<'a>(
        &mut self,
        mut msg: InboundOpaqueMessage<'a>,
        seq: u64,
    ) -> Result<InboundPlainMessage<'a>, Error> {
        let aad = make_tls13_aad(msg.payload.len());
        let plain_len = open(&self.key, &self.iv, seq, aad, &mut msg.payload)?;
        msg.payload.truncate(plain_len);
        msg.into_tls13_unpadded_message()
    }
}

/// TLS 1.2 record encryption (RFC 7905).
struct Tls12Encrypter {
    key: ChaChaKey,
    iv: Iv,
}

impl MessageEncrypter for Tls12Encrypter {
    fn encrypt(
        &mut self,
        msg: OutboundPlainMessage<'_>,
        seq: u64,
    ) -> Result<OutboundOpaqueMessage, Error> {
        let total_len = self.encrypted_payload_len(msg.payload.len());
        let mut payload = PrefixedPayload::with_capacity(total_len);
        payload.extend_from_chunks(&msg.payload);
        let aad = make_tls12_aad(seq, msg.typ, msg.version, msg.payload.len());
        seal(&self.key, &self.iv, seq, aad, &mut payload)?;
        Ok(OutboundOpaqueMessage::new(msg.typ, msg.version, payload))
    }

    fn encrypted_payload_len(&self, payload_len: usize) -> usize {
        payload_len + TAG_LEN
    }
}

/// TLS 1.2 record decryption (RFC 7905).
struct Tls12Decrypter {
    key: ChaChaKey,
    iv: Iv,
}

impl MessageDecrypter for Tls12Decrypter {
    fn decrypt<'a>(
        &mut self,
        mut msg: InboundOpaqueMessage<'a>,
        seq: u64,
    ) -> Result<InboundPlainMessage<'a>, Error> {
        let plain_len = msg
            .payload
            .len()
            .checked_sub(TAG_LEN)
            .ok_or(Error::DecryptError)?;
        let aad = make_tls12_aad(seq, msg.typ, msg.version, plain_len);
        open(&self.key, &self.iv, seq, aad, &mut msg.payload)?;
        if plain_len > MAX_FRAGMENT_LEN {
            return Err(Error::PeerSentOversizedRecord);
        }
        msg.payload.truncate(plain_len);
        Ok(msg.into_plain_message())
    }
}

/// Stands in for a cipher whose key or IV had the wrong length: every record fails.
struct Refused;

impl MessageEncrypter for Refused {
    fn encrypt(
        &mut self,
        _msg: OutboundPlainMessage<'_>,
        _seq: u64,
    ) -> Result<OutboundOpaqueMessage, Error> {
        Err(Error::EncryptError)
    }

    fn encrypted_payload_len(&self, payload_len: usize) -> usize {
        payload_len + 1 + TAG_LEN
    }
}

impl MessageDecrypter for Refused {
    fn decrypt<'a>(
        &mut self,
        _msg: InboundOpaqueMessage<'a>,
        _seq: u64,
    ) -> Result<InboundPlainMessage<'a>, Error> {
        Err(Error::DecryptError)
    }
}

/// `ring`'s suite `base` with its record protection replaced by ours; `None` if `base` is
/// not the TLS version expected (it is, for the three suites replaced).
fn tls13_suite(base: SupportedCipherSuite) -> Option<SupportedCipherSuite> {
    static AEAD: Tls13ChaCha = Tls13ChaCha;
    let SupportedCipherSuite::Tls13(base) = base else {
        return None;
    };
    let suite: &'static Tls13CipherSuite = Box::leak(Box::new(Tls13CipherSuite {
        common: rustls::CipherSuiteCommon {
            suite: base.common.suite,
            hash_provider: base.common.hash_provider,
            confidentiality_limit: base.common.confidentiality_limit,
        },
        hkdf_provider: base.hkdf_provider,
        aead_alg: &AEAD,
        quic: base.quic,
    }));
    Some(SupportedCipherSuite::Tls13(suite))
}

fn tls12_suite(base: SupportedCipherSuite) -> Option<SupportedCipherSuite> {
    static AEAD: Tls12ChaCha = Tls12ChaCha;
    let SupportedCipherSuite::Tls12(base) = base else {
        return None;
    };
    let suite: &'static Tls12CipherSuite = Box::leak(Box::new(Tls12CipherSuite {
        common: rustls::CipherSuiteCommon {
            suite: base.common.suite,
            hash_provider: base.common.hash_provider,
            confidentiality_limit: base.common.confidentiality_limit,
        },
        prf_provider: base.prf_provider,
        kx: base.kx,
        sign: base.sign,
        aead_alg: &AEAD,
    }));
    Some(SupportedCipherSuite::Tls12(suite))
}

/// Our three suites, built once (leaked: they live as long as the process, like `ring`'s).
static COMPACT_SUITES: LazyLock<Vec<SupportedCipherSuite>> = LazyLock::new(|| {
    use rustls::crypto::ring::cipher_suite as ring;
    [
        tls13_suite(ring::TLS13_CHACHA20_POLY1305_SHA256),
        tls12_suite(ring::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256),
        tls12_suite(ring::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256),
    ]
    .into_iter()
    .flatten()
    .collect()
});

/// Our replacement for `suite`, if it is one of the three ChaCha20-Poly1305 suites.
fn compact(suite: CipherSuite) -> Option<SupportedCipherSuite> {
    COMPACT_SUITES.iter().copied().find(|s| s.suite() == suite)
}

/// The provider every TLS listener uses: `ring` (builds with a plain C compiler, quickly;
/// aws-lc-rs builds a large C library), with the ChaCha20-Poly1305 suites' record
/// protection replaced by this module's. `Compact` lists them first (the server then picks
/// them whenever offered: see `ignores_client_order`); `Client` keeps `ring`'s order.
/// rustls 0.23.48 deprecates `ring` because it has no post-quantum key exchange
/// (X25519MLKEM768): with it clients agree on X25519, P-256 or P-384.
#[allow(deprecated)]
pub fn provider(preference: CipherPreference) -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    for s in &mut provider.cipher_suites {
        if let Some(ours) = compact(s.suite()) {
            *s = ours;
        }
    }
    if preference == CipherPreference::Compact {
        // Stable: the rest keep `ring`'s order.
        provider
            .cipher_suites
            .sort_by_key(|s| compact(s.suite()).is_none());
    }
    Arc::new(provider)
}

/// Whether the server picks by its own suite order (`ServerConfig::ignore_client_order`).
pub fn ignores_client_order(preference: CipherPreference) -> bool {
    preference == CipherPreference::Compact
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::crypto::cipher::OutboundChunks;

    const KEY: [u8; 32] = *b"0123456789abcdef0123456789ABCDEF";
    const IV: [u8; 12] = *b"twelve bytes";

    fn key() -> AeadKey {
        AeadKey::from(KEY)
    }

    /// `ring`'s and our TLS 1.3 algorithms.
    fn tls13_pair() -> [&'static dyn Tls13AeadAlgorithm; 2] {
        let ours = provider(CipherPreference::Compact);
        let theirs = rustls::crypto::ring::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256;
        let ours = ours
            .cipher_suites
            .iter()
            .find_map(|s| match s {
                SupportedCipherSuite::Tls13(t)
                    if t.common.suite == CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 =>
                {
                    Some(t.aead_alg)
                }
                _ => None,
            })
            .expect("our TLS 1.3 suite");
        let SupportedCipherSuite::Tls13(theirs) = theirs else {
            panic!("ring's suite is TLS 1.3")
        };
        [ours, theirs.aead_alg]
    }

    fn tls12_pair() -> [&'static dyn Tls12AeadAlgorithm; 2] {
        let ours = provider(CipherPreference::Compact);
        let name = CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256;
        let ours = ours
            .cipher_suites
            .iter()
            .find_map(|s| match s {
                SupportedCipherSuite::Tls12(t) if t.common.suite == name => Some(t.aead_alg),
                _ => None,
            })
            .expect("our TLS 1.2 suite");
        let theirs =
            rustls::crypto::ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256;
        let SupportedCipherSuite::Tls12(theirs) = theirs else {
            panic!("ring's suite is TLS 1.2")
        };
        [ours, theirs.aead_alg]
    }

    fn plain(typ: ContentType, version: ProtocolVersion, data: &[u8]) -> OutboundPlainMessage<'_> {
        OutboundPlainMessage {
            typ,
            version,
            payload: OutboundChunks::from(data),
        }
    }

    /// The record body (after the 5-byte header) of an encrypted message.
    fn body(msg: OutboundOpaqueMessage) -> (ContentType, ProtocolVersion, Vec<u8>) {
        let wire = msg.encode();
        let typ = ContentType::from(wire[0]);
        let version = ProtocolVersion::from(u16::from_be_bytes([wire[1], wire[2]]));
        (typ, version, wire[5..].to_vec())
    }

    const DATA: &[u8] = b"\x30\x0b\x00\x03a/bhello";

    #[test]
    fn tls13_records_match_ring_both_ways() {
        let [ours, ring] = tls13_pair();
        for seq in [0, 1, 7, u64::MAX - 1] {
            for (enc, dec) in [(ours, ring), (ring, ours), (ours, ours)] {
                let mut e = enc.encrypter(key(), Iv::from(IV));
                let mut d = dec.decrypter(key(), Iv::from(IV));
                let sealed = e
                    .encrypt(
                        plain(ContentType::ApplicationData, ProtocolVersion::TLSv1_3, DATA),
                        seq,
                    )
                    .expect("encrypt");
                let (typ, version, mut wire) = body(sealed);
                assert_eq!(
                    (typ, version),
                    (ContentType::ApplicationData, ProtocolVersion::TLSv1_2)
                );
                assert_eq!(wire.len(), e.encrypted_payload_len(DATA.len()));
                let mut copy = wire.clone();
                let opened = d
                    .decrypt(InboundOpaqueMessage::new(typ, version, &mut copy), seq)
                    .expect("decrypt");
                assert_eq!(opened.payload, DATA);
                assert_eq!(opened.typ, ContentType::ApplicationData);
                // Another sequence number, a flipped tag bit or a short record: refused.
                let mut copy = wire.clone();
                let other = d.decrypt(InboundOpaqueMessage::new(typ, version, &mut copy), seq ^ 1);
                assert!(matches!(other, Err(Error::DecryptError)));
                let last = wire.len() - 1;
                wire[last] ^= 1;
                let forged = d.decrypt(InboundOpaqueMessage::new(typ, version, &mut wire), seq);
                assert!(matches!(forged, Err(Error::DecryptError)));
                let mut short = [0u8; 15];
                let short = d.decrypt(InboundOpaqueMessage::new(typ, version, &mut short), seq);
                assert!(matches!(short, Err(Error::DecryptError)));
            }
        }
    }

    #[test]
    fn tls13_same_bytes_as_ring() {
        let [ours, ring] = tls13_pair();
        let msg = || plain(ContentType::Handshake, ProtocolVersion::TLSv1_3, DATA);
        let a = ours.encrypter(key(), Iv::from(IV)).encrypt(msg(), 42);
        let b = ring.encrypter(key(), Iv::from(IV)).encrypt(msg(), 42);
        assert_eq!(
            a.expect("ours").encode(),
            b.expect("ring's").encode(),
            "same key, IV, sequence number: same record"
        );
    }

    #[test]
    fn tls12_records_match_ring_both_ways() {
        let [ours, ring] = tls12_pair();
        for seq in [0, 1, 7, u64::MAX - 1] {
            for (enc, dec) in [(ours, ring), (ring, ours), (ours, ours)] {
                let mut e = enc.encrypter(key(), &IV, &[]);
                let mut d = dec.decrypter(key(), &IV);
                let typ = ContentType::ApplicationData;
                let version = ProtocolVersion::TLSv1_2;
                let sealed = e.encrypt(plain(typ, version, DATA), seq).expect("encrypt");
                let (t, v, mut wire) = body(sealed);
                assert_eq!((t, v), (typ, version));
                assert_eq!(wire.len(), e.encrypted_payload_len(DATA.len()));
                let mut copy = wire.clone();
                let opened = d
                    .decrypt(InboundOpaqueMessage::new(typ, version, &mut copy), seq)
                    .expect("decrypt");
                assert_eq!(opened.payload, DATA);
                // The type is authenticated.
                let mut copy = wire.clone();
                let retyped = d.decrypt(
                    InboundOpaqueMessage::new(ContentType::Handshake, version, &mut copy),
                    seq,
                );
                assert!(matches!(retyped, Err(Error::DecryptError)));
                wire[0] ^= 0x80;
                let forged = d.decrypt(InboundOpaqueMessage::new(typ, version, &mut wire), seq);
                assert!(matches!(forged, Err(Error::DecryptError)));
                let mut short = [0u8; 15];
                let short = d.decrypt(InboundOpaqueMessage::new(typ, version, &mut short), seq);
                assert!(matches!(short, Err(Error::DecryptError)));
            }
        }
        let a = ours
            .encrypter(key(), &IV, &[])
            .encrypt(plain(ContentType::Alert, ProtocolVersion::TLSv1_2, DATA), 3);
        let b = ring
            .encrypter(key(), &IV, &[])
            .encrypt(plain(ContentType::Alert, ProtocolVersion::TLSv1_2, DATA), 3);
        assert_eq!(a.expect("ours").encode(), b.expect("ring's").encode());
    }

    #[test]
    fn a_wrong_iv_length_refuses_every_record() {
        // rustls hands over `key_block_shape()`'s lengths; were it not to, no panic.
        let [ours, _] = tls12_pair();
        let mut e = ours.encrypter(key(), &IV[..4], &[]);
        let r = e.encrypt(
            plain(ContentType::ApplicationData, ProtocolVersion::TLSv1_2, DATA),
            0,
        );
        assert!(matches!(r, Err(Error::EncryptError)));
        let mut d = ours.decrypter(key(), &IV[..8]);
        let mut wire = [0u8; 32];
        let r = d.decrypt(
            InboundOpaqueMessage::new(
                ContentType::ApplicationData,
                ProtocolVersion::TLSv1_2,
                &mut wire,
            ),
            0,
        );
        assert!(matches!(r, Err(Error::DecryptError)));
    }

    #[test]
    fn compact_lists_chacha_first_and_client_keeps_rings_order() {
        let names = |p: &CryptoProvider| -> Vec<CipherSuite> {
            p.cipher_suites.iter().map(|s| s.suite()).collect()
        };
        let compact = provider(CipherPreference::Compact);
        let names_compact = names(&compact);
        assert_eq!(
            names_compact[..3],
            [
                CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
                CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
                CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
            ]
        );
        #[allow(deprecated)]
        let ring = rustls::crypto::ring::default_provider();
        let client = provider(CipherPreference::Client);
        assert_eq!(names(&client), names(&ring));
        let mut sorted = names_compact.clone();
        sorted.sort_by_key(|s| u16::from(*s));
        let mut ring_sorted = names(&ring);
        ring_sorted.sort_by_key(|s| u16::from(*s));
        assert_eq!(sorted, ring_sorted, "the same suites");
        // In both, the ChaCha20 suites are ours.
        for p in [&compact, &client] {
            for s in &p.cipher_suites {
                let ours = COMPACT_SUITES
                    .iter()
                    .any(|c| std::ptr::eq(suite_ptr(c), suite_ptr(s)));
                assert_eq!(ours, compact_name(s.suite()), "{:?}", s.suite());
            }
        }
        assert!(ignores_client_order(CipherPreference::Compact));
        assert!(!ignores_client_order(CipherPreference::Client));
    }

    fn compact_name(s: CipherSuite) -> bool {
        matches!(
            s,
            CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
                | CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
                | CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
        )
    }

    fn suite_ptr(s: &SupportedCipherSuite) -> *const u8 {
        match s {
            SupportedCipherSuite::Tls13(t) => *t as *const Tls13CipherSuite as *const u8,
            SupportedCipherSuite::Tls12(t) => *t as *const Tls12CipherSuite as *const u8,
        }
    }

    #[test]
    fn a_direction_keeps_the_key_and_iv_only() {
        assert_eq!(std::mem::size_of::<Tls13Encrypter>(), 44);
        assert_eq!(std::mem::size_of::<Tls13Decrypter>(), 44);
        assert_eq!(std::mem::size_of::<Tls12Decrypter>(), 44);
    }
}
