//! The SAML assertion consumer service's validation (base64, parse, every signature verified
//! and placed, one assertion, issuer, destination, recipient, audience, times, attributes)
//! beside the bare signature check of the same Response (load the certificate, parse,
//! verify the one signature). In process, one thread, sides alternating round by round.
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use authio_core::federation::saml;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chrono::{SecondsFormat, Utc};

const IDP: &str = "https://idp.bench.example/metadata";
const SP: &str = "https://authio.bench.example/p/x/saml/y/metadata";
const ACS: &str = "https://authio.bench.example/p/x/saml/y/acs";

/// A Response as identity providers send it: the assertion signed (RSA-SHA256, exclusive
/// C14N), four attributes.
fn signed_response(key_pem: &str) -> Result<String> {
    let now = Utc::now();
    let t = |d: i64| (now + chrono::Duration::seconds(d)).to_rfc3339_opts(SecondsFormat::Secs, true);
    let (at, until) = (t(0), t(300));
    let attr = |name: &str, value: &str| {
        format!(
            r#"<saml:Attribute Name="{name}" NameFormat="urn:oasis:names:tc:SAML:2.0:attrname-format:basic"><saml:AttributeValue xmlns:xs="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="xs:string">{value}</saml:AttributeValue></saml:Attribute>"#
        )
    };
    let attrs = [
        attr("email", "alice@initech.test"),
        attr("firstName", "Alice"),
        attr("lastName", "Liddell"),
        attr("groups", "staff"),
    ]
    .concat();
    let template = format!(
        r##"<samlp:Response xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion" ID="r1" Version="2.0" IssueInstant="{at}" Destination="{ACS}"><saml:Issuer>{IDP}</saml:Issuer><samlp:Status><samlp:StatusCode Value="urn:oasis:names:tc:SAML:2.0:status:Success"/></samlp:Status><saml:Assertion ID="a1" Version="2.0" IssueInstant="{at}"><saml:Issuer>{IDP}</saml:Issuer><ds:Signature xmlns:ds="http://www.w3.org/2000/09/xmldsig#"><ds:SignedInfo><ds:CanonicalizationMethod Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#"/><ds:SignatureMethod Algorithm="http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"/><ds:Reference URI="#a1"><ds:Transforms><ds:Transform Algorithm="http://www.w3.org/2000/09/xmldsig#enveloped-signature"/><ds:Transform Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#"/></ds:Transforms><ds:DigestMethod Algorithm="http://www.w3.org/2001/04/xmlenc#sha256"/><ds:DigestValue></ds:DigestValue></ds:Reference></ds:SignedInfo><ds:SignatureValue></ds:SignatureValue></ds:Signature><saml:Subject><saml:NameID Format="urn:oasis:names:tc:SAML:2.0:nameid-format:persistent">alice-0001</saml:NameID><saml:SubjectConfirmation Method="urn:oasis:names:tc:SAML:2.0:cm:bearer"><saml:SubjectConfirmationData NotOnOrAfter="{until}" Recipient="{ACS}"/></saml:SubjectConfirmation></saml:Subject><saml:Conditions NotBefore="{at}" NotOnOrAfter="{until}"><saml:AudienceRestriction><saml:Audience>{SP}</saml:Audience></saml:AudienceRestriction></saml:Conditions><saml:AuthnStatement AuthnInstant="{at}"><saml:AuthnContext><saml:AuthnContextClassRef>urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport</saml:AuthnContextClassRef></saml:AuthnContext></saml:AuthnStatement><saml:AttributeStatement>{attrs}</saml:AttributeStatement></saml:Assertion></samlp:Response>"##
    );
    let mut keys = bergshamra::KeysManager::new();
    keys.add_key(bergshamra::keys::loader::load_pem_auto(key_pem.as_bytes(), None).map_err(|e| anyhow!("{e}"))?);
    bergshamra::sign(&bergshamra::DsigContext::new_permissive(keys), &template).map_err(|e| anyhow!("sign: {e}"))
}

fn bare_check(cert: &[u8], xml: &str) -> Result<()> {
    let mut keys = bergshamra::KeysManager::new();
    keys.add_key(bergshamra::keys::loader::load_x509_cert_der(cert).map_err(|e| anyhow!("{e}"))?);
    match bergshamra::verify(&bergshamra::DsigContext::new(keys), xml).map_err(|e| anyhow!("{e}"))? {
        bergshamra::VerifyResult::Valid { .. } => Ok(()),
        bergshamra::VerifyResult::Invalid { reason } => Err(anyhow!("invalid: {reason}")),
    }
}

fn per_second(secs: u64, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(secs) {
        f()?;
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

pub fn saml(secs: u64, rounds: usize) -> Result<()> {
    let (key_pem, cert) = saml::new_sp_keypair("bench idp", Utc::now()).map_err(|e| anyhow!(e))?;
    let xml = signed_response(&key_pem)?;
    let b64 = STANDARD.encode(&xml);
    let certs = vec![cert.clone()];
    let acs = |now| -> Result<()> {
        let expect = saml::Expect {
            idp_entity_id: IDP,
            sp_entity_id: SP,
            acs_url: ACS,
            idp_certificates: &certs,
            sp_key_pem: &key_pem,
            now,
        };
        saml::validate_response(&b64, &expect).map(|_| ()).map_err(|e| anyhow!("refused: {e}"))
    };
    // Both sides must accept before anything is timed.
    bare_check(&cert, &xml)?;
    acs(Utc::now())?;
    let now = Utc::now();
    let (mut bare, mut full) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let b = per_second(secs, || bare_check(&cert, &xml))?;
        let f = per_second(secs, || acs(now))?;
        println!("saml round {round}: bare signature check {b:.0}/s, ACS validation {f:.0}/s, ratio {:.3}", f / b);
        bare.push(b);
        full.push(f);
    }
    let ratios: Vec<f64> = bare.iter().zip(&full).map(|(b, f)| f / b).collect();
    println!(
        "saml: bare signature check median {:.0}/s; ACS validation median {:.0}/s; ratio (median of rounds) {:.3} (target >= 0.5)",
        crate::median(bare),
        crate::median(full),
        crate::median(ratios)
    );
    Ok(())
}
