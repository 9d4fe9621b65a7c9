//! Throttles on the credential-guessing surfaces: their limits, the key an address is counted
//! under, and the Retry-After of a refusal. The counters live on the shared database (in
//! `authio_db::preresolve`), so they hold across nodes.
use std::net::IpAddr;

use chrono::{DateTime, Utc};

/// Throttles on the credential-guessing surfaces. Counters live on the shared database, so
/// they hold across nodes.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Sign-in attempts per IP per window.
    pub signin_per_ip: i32,
    pub signin_ip_window_secs: i32,
    /// Failed sign-ins per account (project and email, known or not) before it is locked
    /// for the rest of the window.
    pub account_failures: i32,
    pub account_window_secs: i32,
    /// Sign-ups per IP per window.
    pub signup_per_ip: i32,
    pub signup_ip_window_secs: i32,
    /// Failed client authentications per IP per window at the token endpoint.
    pub client_failures_per_ip: i32,
    pub client_ip_window_secs: i32,
    /// Failed checks of one-time links, codes, sign-in codes, refresh tokens and upstream
    /// callbacks per IP per window; past it the address is refused until the window ends.
    pub verify_failures_per_ip: i32,
    pub verify_ip_window_secs: i32,
    /// Emails (links, codes, resets) asked for per IP per window ...
    pub sends_per_ip: i32,
    pub send_ip_window_secs: i32,
    /// ... and per recipient (project and address, known or not) per window.
    pub sends_per_email: i32,
    pub send_email_window_secs: i32,
    /// Failed attempts at one second factor of a user before it is locked for the rest of
    /// the window ...
    pub mfa_failures: i32,
    pub mfa_window_secs: i32,
    /// ... and attempts at second factors per IP per window.
    pub mfa_per_ip: i32,
    pub mfa_ip_window_secs: i32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            signin_per_ip: 60,
            signin_ip_window_secs: 60,
            account_failures: 10,
            account_window_secs: 900,
            signup_per_ip: 20,
            signup_ip_window_secs: 3600,
            client_failures_per_ip: 30,
            client_ip_window_secs: 300,
            verify_failures_per_ip: 30,
            verify_ip_window_secs: 300,
            sends_per_ip: 30,
            send_ip_window_secs: 600,
            sends_per_email: 5,
            send_email_window_secs: 900,
            mfa_failures: 5,
            mfa_window_secs: 900,
            mfa_per_ip: 60,
            mfa_ip_window_secs: 300,
        }
    }
}

/// The key an address is counted under: an IPv4 address, or an IPv6 address's /64 (one host
/// commonly holds a whole /64).
pub(crate) fn ip_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

pub(crate) fn retry_after(window_ends: DateTime<Utc>, now: DateTime<Utc>) -> u32 {
    u32::try_from((window_ends - now).num_seconds().max(1)).unwrap_or(u32::MAX)
}
