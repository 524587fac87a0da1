//! Secrets and signatures, per Standard Webhooks: `whsec_` + base64 of 24 to 64 random bytes;
//! `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, signed by the
//! `standardwebhooks` crate (the reference library) rather than by hand. During a secret's
//! rotation overlap the header carries one signature per live secret, separated by spaces, so a
//! receiver holding either secret verifies.

use base64::{Engine, engine::general_purpose::STANDARD};
use rand::RngCore;

pub const SECRET_PREFIX: &str = "whsec_";
const SECRET_BYTES: usize = 32;
const MIN_SECRET_BYTES: usize = 24;
const MAX_SECRET_BYTES: usize = 64;

/// A fresh random secret.
pub fn generate_secret() -> String {
    let mut key = [0u8; SECRET_BYTES];
    rand::rng().fill_bytes(&mut key);
    format!("{SECRET_PREFIX}{}", STANDARD.encode(key))
}

/// Checks a secret a client chose; the error says what is wrong.
pub fn check_secret(secret: &str) -> Result<(), String> {
    let key = secret
        .strip_prefix(SECRET_PREFIX)
        .ok_or_else(|| format!("a secret starts with {SECRET_PREFIX:?}"))?;
    let bytes = STANDARD
        .decode(key)
        .map_err(|_| format!("after {SECRET_PREFIX:?}, a secret is standard base64"))?;
    if !(MIN_SECRET_BYTES..=MAX_SECRET_BYTES).contains(&bytes.len()) {
        return Err(format!(
            "a secret holds {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes; this one {}",
            bytes.len()
        ));
    }
    Ok(())
}

/// The `webhook-signature` value for message `msg_id` sent at `timestamp` (Unix seconds), one
/// `v1,…` signature per secret.
pub fn signature(
    secrets: &[&str],
    msg_id: &str,
    timestamp: i64,
    body: &str,
) -> Result<String, standardwebhooks::WebhookError> {
    let mut signatures = Vec::with_capacity(secrets.len());
    for secret in secrets {
        let signer = standardwebhooks::Webhook::new(secret)?;
        signatures.push(signer.sign(msg_id, timestamp, body.as_bytes())?);
    }
    Ok(signatures.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_are_valid_and_distinct() {
        let a = generate_secret();
        assert!(check_secret(&a).is_ok(), "{a}");
        assert_ne!(a, generate_secret());
        assert!(check_secret("whsec_short").is_err());
        assert!(check_secret("nope").is_err());
    }

    #[test]
    fn each_secret_of_an_overlap_verifies() {
        let (old, new) = (generate_secret(), generate_secret());
        let header = signature(&[&new, &old], "msg_1", 1_700_000_000, "{}").unwrap();
        assert_eq!(header.split(' ').count(), 2);
        for secret in [&old, &new] {
            let one = signature(&[secret], "msg_1", 1_700_000_000, "{}").unwrap();
            assert!(header.split(' ').any(|s| s == one));
        }
    }
}
