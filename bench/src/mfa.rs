//! TOTP verification beside a bare HMAC check. In process, one thread, the sides alternating
//! round by round:
//!
//! - bare: the HMAC-SHA-1 key made from the secret, one HMAC of the counter, the six-digit
//!   truncation compared (RFC 4226's least possible work to check one code of one user);
//! - verify: what `POST /v1/auth/mfa/verify` runs on a code before the database: the three
//!   steps of the window (RFC 6238 5.2), each computed and compared in constant time, the
//!   last-used step checked;
//! - unseal + verify: the same after opening the stored secret (AES-256-GCM under the master
//!   key, base32), as the server does for every attempt.
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use authio_core::identity::mfa::totp;
use aws_lc_rs::hmac;

fn per_second(secs: u64, mut f: impl FnMut() -> bool) -> Result<f64> {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(secs) {
        if !std::hint::black_box(f()) {
            return Err(anyhow!("a side refused its right code"));
        }
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// The bare check: one HMAC, truncated, compared.
fn bare(secret: &[u8], step: i64, code: &str) -> bool {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    let tag = hmac::sign(&key, &u64::try_from(step).unwrap_or(0).to_be_bytes());
    let h = tag.as_ref();
    let o = usize::from(h[h.len() - 1] & 0x0f);
    let bin =
        (u32::from(h[o] & 0x7f) << 24) | (u32::from(h[o + 1]) << 16) | (u32::from(h[o + 2]) << 8) | u32::from(h[o + 3]);
    code.parse::<u32>().is_ok_and(|c| c == bin % 1_000_000)
}

pub fn mfa(secs: u64, rounds: usize) -> Result<()> {
    let secret = [0x5au8; totp::SECRET_LEN];
    let master = authio_db::MasterKey::from_base64(&authio_db::MasterKey::generate_base64())?;
    let sealed = master.encrypt(&totp::base32(&secret))?;
    let now = 1_900_000_000i64;
    let step = totp::step_at(now);
    let code = totp::code_at_step(&secret, step);
    let verify = || totp::verify(&secret, &code, now, Some(step - 5)) == Some(step);
    let unseal_verify = || {
        let opened = master.decrypt(&sealed).ok().and_then(|s| totp::from_base32(&s));
        opened.is_some_and(|s| totp::verify(&s, &code, now, Some(step - 5)) == Some(step))
    };
    let (mut b, mut v, mut u) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let rb = per_second(secs, || bare(&secret, step, &code))?;
        let rv = per_second(secs, verify)?;
        let ru = per_second(secs, unseal_verify)?;
        println!(
            "mfa round {round}: bare HMAC {rb:.0}/s, TOTP verify {rv:.0}/s (ratio {:.3}), unseal + verify {ru:.0}/s (ratio {:.3})",
            rv / rb,
            ru / rb
        );
        b.push(rb);
        v.push(rv);
        u.push(ru);
    }
    let rv: Vec<f64> = b.iter().zip(&v).map(|(b, v)| v / b).collect();
    let ru: Vec<f64> = b.iter().zip(&u).map(|(b, u)| u / b).collect();
    println!(
        "mfa: bare HMAC median {:.0}/s; TOTP verify median {:.0}/s, ratio (median of rounds) {:.3}; unseal + verify median {:.0}/s, ratio {:.3}",
        crate::median(b),
        crate::median(v),
        crate::median(rv),
        crate::median(u),
        crate::median(ru)
    );
    Ok(())
}
