//! Random credentials and the JWT key pair (ring, no OpenSSL).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{Ed25519KeyPair, KeyPair};

/// Errors of the system random number generator.
#[derive(Debug, thiserror::Error)]
#[error("the system random number generator failed")]
pub struct RandomError;

const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// A password of `len` characters from `[A-Za-z0-9]` (URL-safe, so it can go
/// into a connection URL unescaped); 32 characters carry about 190 bits.
pub fn password(len: usize) -> Result<String, RandomError> {
    let rng = SystemRandom::new();
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        rng.fill(&mut buf).map_err(|_| RandomError)?;
        for b in buf {
            // 62 * 4 = 248: reject 248..=255 so every character is equally likely.
            if b < 248 && out.len() < len {
                out.push(char::from(ALPHABET[usize::from(b % 62)]));
            }
        }
    }
    Ok(out)
}

/// An Ed25519 key pair as PEM: PKCS#8 v1 private key (`PRIVATE KEY`, what
/// `openssl genpkey -algorithm ed25519` writes) and SPKI public key
/// (`PUBLIC KEY`).
pub struct JwtKeyPair {
    pub private_pem: String,
    pub public_pem: String,
}

/// DER prefix of an Ed25519 PKCS#8 v1 private key (RFC 8410), followed by
/// the 32-byte seed.
const PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
/// DER prefix of an Ed25519 SubjectPublicKeyInfo, followed by the 32-byte key.
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

pub fn jwt_key_pair() -> Result<JwtKeyPair, RandomError> {
    let rng = SystemRandom::new();
    let mut seed = [0u8; 32];
    rng.fill(&mut seed).map_err(|_| RandomError)?;
    let pair = Ed25519KeyPair::from_seed_unchecked(&seed).map_err(|_| RandomError)?;
    let mut private = PKCS8_PREFIX.to_vec();
    private.extend_from_slice(&seed);
    let mut public = SPKI_PREFIX.to_vec();
    public.extend_from_slice(pair.public_key().as_ref());
    Ok(JwtKeyPair {
        private_pem: pem("PRIVATE KEY", &private),
        public_pem: pem("PUBLIC KEY", &public),
    })
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The DER body of a PEM document (for tests and checks).
pub fn pem_body(pem: &str) -> Option<Vec<u8>> {
    let b64: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .concat();
    STANDARD.decode(b64).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{ED25519, UnparsedPublicKey};

    #[test]
    fn passwords_are_long_random_and_url_safe() {
        let a = password(32).expect("rng");
        let b = password(32).expect("rng");
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric()));
    }

    #[test]
    fn jwt_key_pair_is_a_working_ed25519_pair_in_standard_pem() {
        let pair = jwt_key_pair().expect("rng");
        assert!(
            pair.private_pem
                .starts_with("-----BEGIN PRIVATE KEY-----\n")
        );
        assert!(pair.public_pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
        let private = pem_body(&pair.private_pem).expect("base64");
        let public = pem_body(&pair.public_pem).expect("base64");
        assert_eq!(private.len(), 48);
        assert_eq!(public.len(), 44);
        // ring parses the PKCS#8 document, signs, and the SPKI key verifies.
        let key = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&private).expect("valid PKCS#8");
        let sig = key.sign(b"stockmesh");
        UnparsedPublicKey::new(&ED25519, &public[12..])
            .verify(b"stockmesh", sig.as_ref())
            .expect("signature verifies with the public key");
        assert_eq!(key.public_key().as_ref(), &public[12..]);
    }
}
