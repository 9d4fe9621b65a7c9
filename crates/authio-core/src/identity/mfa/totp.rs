//! Time-based one-time passwords (RFC 6238 over RFC 4226's HOTP): HMAC-SHA-1, six digits,
//! 30-second steps, the form every authenticator app reads from an `otpauth://` URI. Pure
//! functions: the time is passed in, the caller keeps the secret sealed and the last step used.
use aws_lc_rs::hmac;
use subtle::ConstantTimeEq;

/// Seconds per step (RFC 6238 4.1, X).
pub const STEP_SECS: i64 = 30;
pub const DIGITS: usize = 6;
/// The secret's length: 160 bits, RFC 4226 4's recommendation for HMAC-SHA-1.
pub const SECRET_LEN: usize = 20;

/// The time step of a Unix time (RFC 6238 4.2: T = floor((now - T0) / X), T0 = 0).
pub fn step_at(unix_secs: i64) -> i64 {
    unix_secs.div_euclid(STEP_SECS)
}

/// HOTP (RFC 4226 5.3): dynamic truncation of HMAC-SHA-1(secret, counter), as a number
/// below 10^6.
fn hotp(key: &hmac::Key, step: i64) -> u32 {
    let counter = u64::try_from(step).unwrap_or(0).to_be_bytes();
    let tag = hmac::sign(key, &counter);
    let h = tag.as_ref();
    let offset = usize::from(h[h.len() - 1] & 0x0f);
    let bin = (u32::from(h[offset] & 0x7f) << 24)
        | (u32::from(h[offset + 1]) << 16)
        | (u32::from(h[offset + 2]) << 8)
        | u32::from(h[offset + 3]);
    bin % 1_000_000
}

fn key_of(secret: &[u8]) -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret)
}

/// The six-digit code of a step.
pub fn code_at_step(secret: &[u8], step: i64) -> String {
    format!("{:06}", hotp(&key_of(secret), step))
}

/// Check a code against the steps around `unix_secs` (one either side, for clocks that drift
/// and codes typed as they turn over), never a step at or before `last_used` (a code is good
/// once). Returns the step it matched. Every candidate is computed and compared in constant
/// time, so the answer's timing says nothing about which step was near.
pub fn verify(secret: &[u8], code: &str, unix_secs: i64, last_used: Option<i64>) -> Option<i64> {
    let shaped = code.len() == DIGITS && code.bytes().all(|b| b.is_ascii_digit());
    // A code of another shape is compared as a number no code can be.
    let given: u32 = if shaped { code.parse().unwrap_or(u32::MAX) } else { u32::MAX };
    let key = key_of(secret);
    let now = step_at(unix_secs);
    let mut matched = None;
    for step in [now - 1, now, now + 1] {
        let equal = bool::from(hotp(&key, step).to_be_bytes().ct_eq(&given.to_be_bytes()));
        if equal && last_used.is_none_or(|l| step > l) && matched.is_none() {
            matched = Some(step);
        }
    }
    matched
}

const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// RFC 4648 base32 without padding: how `otpauth://` URIs carry the secret.
pub fn base32(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &b in bytes {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((buffer >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((buffer << (5 - bits)) & 31) as usize]));
    }
    out
}

/// The reverse of [`base32`] (upper or lower case, no padding); `None` for any other character.
pub fn from_base32(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 5 / 8);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let v = ALPHABET.iter().position(|a| *a == c.to_ascii_uppercase())?;
        buffer = (buffer << 5) | u32::try_from(v).ok()?;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push(((buffer >> bits) & 0xff) as u8);
        }
    }
    Some(out)
}

/// The `otpauth://totp/` URI an authenticator app enrols from (the Key Uri Format): the
/// issuer (the project) and the account (the user's address) as its label.
pub fn otpauth_uri(secret: &[u8], issuer: &str, account: &str) -> String {
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>().replace('+', "%20");
    format!(
        "otpauth://totp/{}:{}?secret={}&issuer={}&algorithm=SHA1&digits={DIGITS}&period={STEP_SECS}",
        enc(issuer),
        enc(account),
        base32(secret),
        enc(issuer)
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// RFC 6238 appendix B's SHA-1 seed; its eight-digit answers end in these six digits.
    const SEED: &[u8] = b"12345678901234567890";

    #[test]
    fn rfc_6238_appendix_b_vectors() {
        for (t, eight) in [
            (59, "94287082"),
            (1_111_111_109, "07081804"),
            (1_111_111_111, "14050471"),
            (1_234_567_890, "89005924"),
            (2_000_000_000, "69279037"),
            (20_000_000_000, "65353130"),
        ] {
            assert_eq!(code_at_step(SEED, step_at(t)), eight[2..], "T = {t}");
        }
    }

    #[test]
    fn a_code_is_good_one_step_either_side_and_once() {
        let t = 1_111_111_111;
        let code = code_at_step(SEED, step_at(t));
        assert_eq!(verify(SEED, &code, t, None), Some(step_at(t)));
        assert_eq!(verify(SEED, &code, t + STEP_SECS, None), Some(step_at(t)));
        assert_eq!(verify(SEED, &code, t - STEP_SECS, None), Some(step_at(t)));
        assert_eq!(verify(SEED, &code, t + 2 * STEP_SECS, None), None);
        // Used: the same step (or an earlier one) is refused.
        assert_eq!(verify(SEED, &code, t, Some(step_at(t))), None);
        assert_eq!(verify(SEED, "12345", t, None), None);
        assert_eq!(verify(SEED, "abcdef", t, None), None);
    }

    #[test]
    fn base32_round_trips_rfc_4648_vectors() {
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
        assert_eq!(base32(b"f"), "MY");
        assert_eq!(from_base32("mzxw6ytboi").unwrap(), b"foobar");
        assert_eq!(from_base32("MZ1"), None);
        let secret = [7u8; SECRET_LEN];
        assert_eq!(from_base32(&base32(&secret)).unwrap(), secret);
    }

    #[test]
    fn the_uri_names_issuer_account_and_parameters() {
        let uri = otpauth_uri(SEED, "Acme Co", "ann@example.com");
        assert!(uri.starts_with("otpauth://totp/Acme%20Co:ann%40example.com?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&"));
        assert!(uri.ends_with("&issuer=Acme%20Co&algorithm=SHA1&digits=6&period=30"));
    }
}
