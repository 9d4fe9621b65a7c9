//! SAML 2.0 service provider, the protocol half: an identity provider's metadata read, the
//! AuthnRequest for the HTTP-Redirect binding, the SP metadata an identity provider imports,
//! and the validation of a Response posted to the assertion consumer service. No database
//! and no clock here: the caller passes `now`, and keeps the replay cache and the requests.
//!
//! What is read from a Response is read from the one Assertion a signature was verified on:
//! the document must hold exactly one Assertion (or EncryptedAssertion), as a child of the
//! Response; every Signature must sit where SAML puts it (a child of the Response or of the
//! Assertion) and cover exactly its parent; the Assertion itself must be signed. XML
//! signatures are checked by bergshamra (exclusive C14N, only the connection's IdP
//! certificates trusted, duplicate IDs refused); DOCTYPEs are refused before anything is
//! parsed (no entities, no external references).
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bergshamra::keys::loader;
use bergshamra::{DsigContext, EncContext, KeysManager, VerifyResult};
use chrono::{DateTime, Datelike, Duration, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use uppsala::{Document, NodeId, NodeKind};

pub const NS_ASSERTION: &str = "urn:oasis:names:tc:SAML:2.0:assertion";
pub const NS_PROTOCOL: &str = "urn:oasis:names:tc:SAML:2.0:protocol";
pub const NS_METADATA: &str = "urn:oasis:names:tc:SAML:2.0:metadata";
const NS_DSIG: &str = "http://www.w3.org/2000/09/xmldsig#";
const NS_XENC: &str = "http://www.w3.org/2001/04/xmlenc#";
/// The transforms SAML signatures use (Core 5.4.3-5.4.4): nothing else is run.
const ALLOWED_TRANSFORMS: [&str; 3] = [
    "http://www.w3.org/2000/09/xmldsig#enveloped-signature",
    "http://www.w3.org/2001/10/xml-exc-c14n#",
    "http://www.w3.org/2001/10/xml-exc-c14n#WithComments",
];
/// The longest an assertion may be valid for: its id stays in the replay cache that long.
pub const MAX_VALIDITY: Duration = Duration::days(1);
const BINDING_REDIRECT: &str = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect";
const BINDING_POST: &str = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST";
const STATUS_SUCCESS: &str = "urn:oasis:names:tc:SAML:2.0:status:Success";
const BEARER: &str = "urn:oasis:names:tc:SAML:2.0:cm:bearer";

/// How far the identity provider's clock may be from ours.
pub const CLOCK_SKEW: Duration = Duration::seconds(120);
/// The largest SAMLResponse form field accepted (base64).
pub const MAX_RESPONSE_LEN: usize = 512 * 1024;
/// The largest metadata document read.
pub const MAX_METADATA_LEN: usize = 1024 * 1024;
/// An identity provider has at most two signing certificates at once: the current one and
/// the next (or the previous) during a rollover.
pub const MAX_IDP_CERTIFICATES: usize = 2;

/// Why a Response was refused: a fixed code for the audit log and a sentence for people.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    Malformed,
    Doctype,
    NotSuccess,
    Unsigned,
    BadSignature,
    Wrapping,
    Issuer,
    Destination,
    Recipient,
    Audience,
    Expired,
    NotYetValid,
    InResponseTo,
    Unsolicited,
    Replayed,
    CommentInIdentity,
    Decryption,
    NoSubject,
    TooLong,
}

impl Refusal {
    pub fn code(self) -> &'static str {
        match self {
            Refusal::Malformed => "malformed",
            Refusal::Doctype => "doctype",
            Refusal::NotSuccess => "status_not_success",
            Refusal::Unsigned => "unsigned_assertion",
            Refusal::BadSignature => "bad_signature",
            Refusal::Wrapping => "signature_wrapping",
            Refusal::Issuer => "wrong_issuer",
            Refusal::Destination => "wrong_destination",
            Refusal::Recipient => "wrong_recipient",
            Refusal::Audience => "wrong_audience",
            Refusal::Expired => "expired",
            Refusal::NotYetValid => "not_yet_valid",
            Refusal::InResponseTo => "unknown_request",
            Refusal::Unsolicited => "unsolicited",
            Refusal::Replayed => "replayed",
            Refusal::CommentInIdentity => "comment_in_identity",
            Refusal::Decryption => "decryption_failed",
            Refusal::NoSubject => "no_subject",
            Refusal::TooLong => "validity_too_long",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Refusal::Malformed => "the SAML response is not a well-formed SAML 2.0 Response",
            Refusal::Doctype => "the SAML response carries a DOCTYPE (entities are never accepted)",
            Refusal::NotSuccess => "the identity provider did not sign the person in",
            Refusal::Unsigned => "the SAML assertion is not signed",
            Refusal::BadSignature => "the SAML signature does not verify with the identity provider's certificates",
            Refusal::Wrapping => "the SAML response's structure is not one signed assertion (signature wrapping)",
            Refusal::Issuer => "the SAML assertion was issued by another identity provider",
            Refusal::Destination => "the SAML response is addressed to another service",
            Refusal::Recipient => "the SAML assertion is meant for another recipient",
            Refusal::Audience => "the SAML assertion is meant for another audience",
            Refusal::Expired => "the SAML assertion has expired",
            Refusal::NotYetValid => "the SAML assertion is not valid yet",
            Refusal::InResponseTo => "the SAML response answers a request that is unknown, used or expired",
            Refusal::Unsolicited => "this connection does not accept sign-ins started at the identity provider",
            Refusal::Replayed => "the SAML assertion was used before",
            Refusal::CommentInIdentity => "the SAML assertion has a comment inside an identity value",
            Refusal::Decryption => "the SAML assertion could not be decrypted with this connection's key",
            Refusal::NoSubject => "the SAML assertion names nobody (no NameID)",
            Refusal::TooLong => "the SAML assertion is valid for longer than a day",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

/// Which attributes carry the email, names and groups. Each is a list of attribute names,
/// the first present wins.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttributeMap {
    pub email: Vec<String>,
    pub given_name: Vec<String>,
    pub family_name: Vec<String>,
    pub groups: Vec<String>,
}

/// The identity providers whose default attribute names are known.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttributePreset {
    Generic,
    Okta,
    Entra,
    Google,
}

const ENTRA_EMAIL: &str = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/emailaddress";
const ENTRA_GIVEN: &str = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/givenname";
const ENTRA_SURNAME: &str = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/surname";
const ENTRA_GROUPS: &str = "http://schemas.microsoft.com/ws/2008/06/identity/claims/groups";

impl AttributePreset {
    /// Okta: the attribute statements its SAML app wizard suggests (`email`, `firstName`,
    /// `lastName`) and a group attribute statement named `groups`. Entra ID: its claim URIs.
    /// Google Workspace: the app attributes named in its SAML app's mapping (`email`,
    /// `firstName`, `lastName`, `groups`); Google's NameID is the primary email anyway.
    /// Generic: all of these, and the LDAP/eduPerson OIDs.
    pub fn map(self) -> AttributeMap {
        let v = |names: &[&str]| names.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        match self {
            AttributePreset::Okta | AttributePreset::Google => AttributeMap {
                email: v(&["email"]),
                given_name: v(&["firstName"]),
                family_name: v(&["lastName"]),
                groups: v(&["groups"]),
            },
            AttributePreset::Entra => AttributeMap {
                email: v(&[ENTRA_EMAIL, "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/name"]),
                given_name: v(&[ENTRA_GIVEN]),
                family_name: v(&[ENTRA_SURNAME]),
                groups: v(&[ENTRA_GROUPS]),
            },
            AttributePreset::Generic => AttributeMap {
                email: v(&["email", "mail", "emailAddress", ENTRA_EMAIL, "urn:oid:0.9.2342.19200300.100.1.3"]),
                given_name: v(&["firstName", "givenName", "given_name", ENTRA_GIVEN, "urn:oid:2.5.4.42"]),
                family_name: v(&["lastName", "surname", "sn", "family_name", ENTRA_SURNAME, "urn:oid:2.5.4.4"]),
                groups: v(&["groups", "memberOf", "group", ENTRA_GROUPS]),
            },
        }
    }
}

impl AttributeMap {
    /// Every list 1-10 names of 1-256 characters, no control characters.
    pub fn check(&self) -> Result<(), &'static str> {
        for list in [&self.email, &self.given_name, &self.family_name, &self.groups] {
            if list.is_empty() || list.len() > 10 {
                return Err("attribute_map (each of email, given_name, family_name, groups: 1-10 attribute names)");
            }
            if list.iter().any(|n| n.is_empty() || n.len() > 256 || n.chars().any(char::is_control)) {
                return Err("attribute_map (attribute names of 1-256 characters)");
            }
        }
        Ok(())
    }
}

/// What an identity provider's metadata says about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdpMetadata {
    pub entity_id: String,
    /// Its single sign-on service for the HTTP-Redirect binding.
    pub sso_url: String,
    /// DER certificates it signs with (one or two).
    pub certificates: Vec<Vec<u8>>,
}

/// Parse the parts of a DOCTYPE-free document, or say why not.
fn parse_xml(text: &str) -> Result<Document<'_>, Refusal> {
    // A DOCTYPE is never part of SAML: refusing it first means no entity is ever expanded
    // and no external reference ever resolved (XXE, billion laughs).
    if text.contains("<!DOCTYPE") || text.contains("<!ENTITY") {
        return Err(Refusal::Doctype);
    }
    uppsala::Parser::new().with_forbid_dtd(true).parse(text).map_err(|_| Refusal::Malformed)
}

fn is(doc: &Document<'_>, node: NodeId, ns: &str, local: &str) -> bool {
    doc.element(node).is_some_and(|e| e.matches_name_ns(ns, local))
}

fn child(doc: &Document<'_>, parent: NodeId, ns: &str, local: &str) -> Option<NodeId> {
    doc.first_child_element_by_name_ns(parent, ns, local)
}

fn attr<'d>(doc: &'d Document<'_>, node: NodeId, name: &str) -> Option<&'d str> {
    doc.element(node)
        .and_then(|e| e.attributes.iter().find(|a| a.name.namespace_uri.is_none() && a.name.local_name == name))
        .map(|a| &*a.value)
}

/// An element's text, refusing comments and processing instructions inside it: what the
/// signature covered (C14N without comments joins the text around a comment) and what a
/// careless reader takes (the text before it) would differ.
fn identity_text(doc: &Document<'_>, node: NodeId) -> Result<String, Refusal> {
    let mut out = String::new();
    for c in doc.children_iter(node) {
        match doc.node_kind(c) {
            Some(NodeKind::Text(t)) | Some(NodeKind::CData(t)) => out.push_str(t),
            Some(NodeKind::Comment(_)) | Some(NodeKind::ProcessingInstruction(_)) => {
                return Err(Refusal::CommentInIdentity)
            }
            Some(NodeKind::Element(_)) => return Err(Refusal::Malformed),
            _ => {}
        }
    }
    Ok(out.trim().to_owned())
}

fn time(doc: &Document<'_>, node: NodeId, name: &str) -> Result<Option<DateTime<Utc>>, Refusal> {
    attr(doc, node, name)
        .map(|v| DateTime::parse_from_rfc3339(v).map(|t| t.with_timezone(&Utc)).map_err(|_| Refusal::Malformed))
        .transpose()
}

/// Read an identity provider's metadata (an EntityDescriptor, or the first IdP in an
/// EntitiesDescriptor).
pub fn parse_idp_metadata(xml: &str) -> Result<IdpMetadata, &'static str> {
    const BAD: &str = "metadata (an IdP EntityDescriptor with a signing certificate and an HTTP-Redirect SSO service)";
    if xml.len() > MAX_METADATA_LEN {
        return Err("metadata (at most 1 MiB)");
    }
    let doc = parse_xml(xml).map_err(|_| BAD)?;
    let root = doc.document_element().ok_or(BAD)?;
    let entity = if is(&doc, root, NS_METADATA, "EntityDescriptor") {
        root
    } else if is(&doc, root, NS_METADATA, "EntitiesDescriptor") {
        doc.child_elements_by_name_ns(root, NS_METADATA, "EntityDescriptor")
            .into_iter()
            .find(|e| child(&doc, *e, NS_METADATA, "IDPSSODescriptor").is_some())
            .ok_or(BAD)?
    } else {
        return Err(BAD);
    };
    let entity_id = attr(&doc, entity, "entityID").ok_or(BAD)?.to_owned();
    let idp = child(&doc, entity, NS_METADATA, "IDPSSODescriptor").ok_or(BAD)?;
    let sso_url = doc
        .child_elements_by_name_ns(idp, NS_METADATA, "SingleSignOnService")
        .into_iter()
        .find(|s| attr(&doc, *s, "Binding") == Some(BINDING_REDIRECT))
        .and_then(|s| attr(&doc, s, "Location"))
        .ok_or("metadata (no SingleSignOnService for the HTTP-Redirect binding)")?
        .to_owned();
    let mut certificates = Vec::new();
    for kd in doc.child_elements_by_name_ns(idp, NS_METADATA, "KeyDescriptor") {
        if attr(&doc, kd, "use").is_some_and(|u| u != "signing") {
            continue;
        }
        for x in doc.get_elements_by_tag_name_ns(NS_DSIG, "X509Certificate") {
            if doc.ancestors(x).contains(&kd) {
                let text: String = doc.text_content_deep(x).chars().filter(|c| !c.is_whitespace()).collect();
                let der = STANDARD.decode(text).map_err(|_| BAD)?;
                if !certificates.contains(&der) {
                    certificates.push(der);
                }
            }
        }
    }
    if certificates.is_empty() {
        return Err("metadata (no signing certificate)");
    }
    if certificates.len() > MAX_IDP_CERTIFICATES {
        return Err("metadata (more than two signing certificates)");
    }
    Ok(IdpMetadata { entity_id, sso_url, certificates })
}

/// A certificate the signature check can use (an X.509 certificate with a usable key).
pub fn check_certificate(der: &[u8]) -> Result<(), &'static str> {
    loader::load_x509_cert_der(der).map(|_| ()).map_err(|_| "idp_certificates (X.509 certificates, base64 DER or PEM)")
}

/// A certificate given as PEM or as bare base64 DER.
pub fn certificate_der(text: &str) -> Result<Vec<u8>, &'static str> {
    let body: String = text
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .flat_map(|l| l.chars())
        .filter(|c| !c.is_whitespace())
        .collect();
    let der = STANDARD.decode(body).map_err(|_| "idp_certificates (X.509 certificates, base64 DER or PEM)")?;
    check_certificate(&der)?;
    Ok(der)
}

/// A connection's own key pair and self-signed certificate: identity providers encrypt
/// assertions to it. Returns (PKCS#8 PEM private key, DER certificate).
pub fn new_sp_keypair(common_name: &str, now: DateTime<Utc>) -> Result<(String, Vec<u8>), String> {
    let key = rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
        .map_err(|e| format!("SAML key: {e}"))?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
    params.distinguished_name.push(rcgen::DnType::CommonName, common_name);
    let start = now - Duration::days(1);
    let end = now + Duration::days(3650);
    let ymd = |t: DateTime<Utc>| rcgen::date_time_ymd(t.year(), t.month() as u8, t.day() as u8);
    params.not_before = ymd(start);
    params.not_after = ymd(end);
    let cert = params.self_signed(&key).map_err(|e| format!("SAML certificate: {e}"))?;
    Ok((key.serialize_pem(), cert.der().to_vec()))
}

pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// The service provider's metadata for one connection: what its identity provider imports.
pub fn sp_metadata(sp_entity_id: &str, acs_url: &str, sp_certificate_der: &[u8]) -> String {
    let cert = STANDARD.encode(sp_certificate_der);
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<md:EntityDescriptor xmlns:md="{NS_METADATA}" xmlns:ds="{NS_DSIG}" entityID="{entity}">
  <md:SPSSODescriptor AuthnRequestsSigned="false" WantAssertionsSigned="true" protocolSupportEnumeration="{NS_PROTOCOL}">
    <md:KeyDescriptor use="encryption">
      <ds:KeyInfo><ds:X509Data><ds:X509Certificate>{cert}</ds:X509Certificate></ds:X509Data></ds:KeyInfo>
      <md:EncryptionMethod Algorithm="http://www.w3.org/2009/xmlenc11#aes256-gcm"/>
      <md:EncryptionMethod Algorithm="http://www.w3.org/2009/xmlenc11#aes128-gcm"/>
      <md:EncryptionMethod Algorithm="http://www.w3.org/2001/04/xmlenc#aes256-cbc"/>
      <md:EncryptionMethod Algorithm="http://www.w3.org/2001/04/xmlenc#aes128-cbc"/>
      <md:EncryptionMethod Algorithm="http://www.w3.org/2001/04/xmlenc#rsa-oaep-mgf1p"/>
      <md:EncryptionMethod Algorithm="http://www.w3.org/2009/xmlenc11#rsa-oaep"/>
    </md:KeyDescriptor>
    <md:NameIDFormat>urn:oasis:names:tc:SAML:2.0:nameid-format:persistent</md:NameIDFormat>
    <md:NameIDFormat>urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress</md:NameIDFormat>
    <md:AssertionConsumerService Binding="{BINDING_POST}" Location="{acs}" index="0" isDefault="true"/>
  </md:SPSSODescriptor>
</md:EntityDescriptor>
"#,
        entity = xml_escape(sp_entity_id),
        acs = xml_escape(acs_url),
    )
}

/// A new AuthnRequest id: an NCName, 128 random bits.
pub fn new_request_id() -> String {
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("id{hex}")
}

/// The identity provider's URL carrying an AuthnRequest by the HTTP-Redirect binding
/// (SAML Bindings 3.4.4.1: DEFLATE, base64, URL-encoded; unsigned).
pub fn authn_request_url(
    idp_sso_url: &str,
    sp_entity_id: &str,
    acs_url: &str,
    request_id: &str,
    now: DateTime<Utc>,
) -> String {
    let xml = format!(
        r#"<samlp:AuthnRequest xmlns:samlp="{NS_PROTOCOL}" xmlns:saml="{NS_ASSERTION}" ID="{id}" Version="2.0" IssueInstant="{at}" Destination="{dest}" AssertionConsumerServiceURL="{acs}" ProtocolBinding="{BINDING_POST}"><saml:Issuer>{issuer}</saml:Issuer><samlp:NameIDPolicy AllowCreate="true"/></samlp:AuthnRequest>"#,
        id = request_id,
        at = now.to_rfc3339_opts(SecondsFormat::Secs, true),
        dest = xml_escape(idp_sso_url),
        acs = xml_escape(acs_url),
        issuer = xml_escape(sp_entity_id),
    );
    let deflated = miniz_oxide::deflate::compress_to_vec(xml.as_bytes(), 6);
    let encoded: String = url::form_urlencoded::byte_serialize(STANDARD.encode(deflated).as_bytes()).collect();
    let sep = if idp_sso_url.contains('?') { '&' } else { '?' };
    format!("{idp_sso_url}{sep}SAMLRequest={encoded}")
}

/// What the service provider expects of a Response.
pub struct Expect<'a> {
    pub idp_entity_id: &'a str,
    pub sp_entity_id: &'a str,
    pub acs_url: &'a str,
    /// The identity provider's signing certificates (DER): any of them may sign.
    pub idp_certificates: &'a [Vec<u8>],
    /// The connection's private key (PKCS#8 PEM), for encrypted assertions.
    pub sp_key_pem: &'a str,
    pub now: DateTime<Utc>,
}

/// What a verified assertion says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Asserted {
    pub assertion_id: String,
    /// The request it answers (absent: started at the identity provider).
    pub in_response_to: Option<String>,
    pub name_id: String,
    pub name_id_format: Option<String>,
    pub attributes: Vec<(String, Vec<String>)>,
    /// Until when the assertion may be presented (kept that long in the replay cache).
    pub not_on_or_after: DateTime<Utc>,
    pub encrypted: bool,
}

impl Asserted {
    /// The first non-empty value of the first attribute in `names` that is present.
    pub fn first(&self, names: &[String]) -> Option<&str> {
        names.iter().find_map(|n| {
            self.attributes
                .iter()
                .find(|(k, _)| k == n)
                .and_then(|(_, v)| v.iter().find(|s| !s.is_empty()).map(String::as_str))
        })
    }

    pub fn all(&self, names: &[String]) -> Vec<String> {
        names
            .iter()
            .find_map(|n| self.attributes.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone()))
            .unwrap_or_default()
    }
}

fn keys_of(certs: &[Vec<u8>]) -> Result<KeysManager, Refusal> {
    let mut keys = KeysManager::new();
    for der in certs {
        keys.add_key(loader::load_x509_cert_der(der).map_err(|_| Refusal::BadSignature)?);
    }
    Ok(keys)
}

/// Before any cryptography: at most two signatures, each where SAML puts one (a child of the
/// Response or of the Assertion), with exactly one Reference to its parent's ID and only the
/// transforms SAML uses; at most one encrypted key. What is refused here costs nothing; what
/// passes costs at most two signature checks and one decryption.
fn precheck(doc: &Document<'_>, root: NodeId, assertion: Option<NodeId>) -> Result<(), Refusal> {
    let sigs = doc.get_elements_by_tag_name_ns(NS_DSIG, "Signature");
    if sigs.len() > 2 {
        return Err(Refusal::Wrapping);
    }
    for sig in sigs {
        let parent = doc.parent(sig).ok_or(Refusal::Wrapping)?;
        if parent != root && Some(parent) != assertion {
            return Err(Refusal::Wrapping);
        }
        placed(doc, sig, parent)?;
    }
    if doc.get_elements_by_tag_name_ns(NS_XENC, "EncryptedKey").len() > 1 {
        return Err(Refusal::Decryption);
    }
    Ok(())
}

/// One signature: one Reference, to its parent's ID, with SAML's transforms only.
fn placed(doc: &Document<'_>, sig: NodeId, parent: NodeId) -> Result<(), Refusal> {
    let info = child(doc, sig, NS_DSIG, "SignedInfo").ok_or(Refusal::Malformed)?;
    let refs = doc.child_elements_by_name_ns(info, NS_DSIG, "Reference");
    let [reference] = refs.as_slice() else { return Err(Refusal::Wrapping) };
    let id = attr(doc, parent, "ID").ok_or(Refusal::Wrapping)?;
    if attr(doc, *reference, "URI").and_then(|u| u.strip_prefix('#')) != Some(id) {
        return Err(Refusal::Wrapping);
    }
    if let Some(ts) = child(doc, *reference, NS_DSIG, "Transforms") {
        let all = doc.child_elements_by_name_ns(ts, NS_DSIG, "Transform");
        let unknown = |t: &NodeId| attr(doc, *t, "Algorithm").is_none_or(|a| !ALLOWED_TRANSFORMS.contains(&a));
        if all.len() > 2 || all.iter().any(unknown) {
            return Err(Refusal::BadSignature);
        }
    }
    Ok(())
}

/// Check each Signature of `doc` against the IdP's keys: one on the Response (a child of it,
/// covering it), one on `assertion` (a child of it, covering it). A signature anywhere else,
/// one that does not verify, or one covering anything but its parent refuses the whole.
/// `only_within`: check only signatures under this node (the other ones were checked in the
/// document as it was before decryption). Returns whether the assertion is signed.
fn check_signatures(
    doc: &Document<'_>,
    ctx: &DsigContext,
    root: NodeId,
    assertion: Option<NodeId>,
    only_within: Option<NodeId>,
) -> Result<bool, Refusal> {
    let sigs = doc.get_elements_by_tag_name_ns(NS_DSIG, "Signature");
    if sigs.is_empty() {
        return Ok(false);
    }
    let results = bergshamra::dsig::verify::verify_all_document(ctx, doc).map_err(|e| match e {
        bergshamra::Error::XmlStructure(_) => Refusal::Wrapping,
        _ => Refusal::BadSignature,
    })?;
    if results.len() != sigs.len() {
        return Err(Refusal::BadSignature);
    }
    let mut assertion_signed = false;
    for (sig, result) in sigs.into_iter().zip(results) {
        if let Some(scope) = only_within {
            if !doc.ancestors(sig).contains(&scope) {
                continue;
            }
        }
        let parent = doc.parent(sig).ok_or(Refusal::Wrapping)?;
        let at_response = parent == root && only_within.is_none();
        let at_assertion = Some(parent) == assertion;
        if !at_response && !at_assertion {
            return Err(Refusal::Wrapping);
        }
        match result {
            VerifyResult::Valid { references, .. } => {
                let covers_parent = references.len() == 1
                    && references[0].digest_verified
                    && references[0].resolved_node == Some(parent);
                if !covers_parent {
                    return Err(Refusal::Wrapping);
                }
                if at_assertion {
                    assertion_signed = true;
                }
            }
            VerifyResult::Invalid { reason } => {
                tracing::info!(%reason, "SAML signature refused");
                return Err(if reason.contains("strict mode") { Refusal::Wrapping } else { Refusal::BadSignature });
            }
        }
    }
    Ok(assertion_signed)
}

/// Validate a base64 SAMLResponse from the HTTP-POST binding, and read its assertion.
/// (SAML Core 2.0 and Profiles 4.1.4.2-4.1.4.3; Bindings 3.5.5.2 for Destination.)
pub fn validate_response(b64: &str, expect: &Expect<'_>) -> Result<Asserted, Refusal> {
    if b64.len() > MAX_RESPONSE_LEN {
        return Err(Refusal::Malformed);
    }
    let compact: String = b64.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let bytes = STANDARD.decode(compact).map_err(|_| Refusal::Malformed)?;
    let text = String::from_utf8(bytes).map_err(|_| Refusal::Malformed)?;
    validate_response_xml(&text, expect)
}

/// [`validate_response`] for the decoded XML.
pub fn validate_response_xml(text: &str, expect: &Expect<'_>) -> Result<Asserted, Refusal> {
    let doc = parse_xml(text)?;
    let root = doc.document_element().ok_or(Refusal::Malformed)?;
    if !is(&doc, root, NS_PROTOCOL, "Response") || attr(&doc, root, "Version") != Some("2.0") {
        return Err(Refusal::Malformed);
    }
    if let Some(issuer) = child(&doc, root, NS_ASSERTION, "Issuer") {
        if identity_text(&doc, issuer)? != expect.idp_entity_id {
            return Err(Refusal::Issuer);
        }
    }
    let status = child(&doc, root, NS_PROTOCOL, "Status")
        .and_then(|s| child(&doc, s, NS_PROTOCOL, "StatusCode"))
        .and_then(|c| attr(&doc, c, "Value"));
    if status != Some(STATUS_SUCCESS) {
        return Err(Refusal::NotSuccess);
    }
    if attr(&doc, root, "Destination").is_some_and(|d| d != expect.acs_url) {
        return Err(Refusal::Destination);
    }
    let response_in_response_to = attr(&doc, root, "InResponseTo").map(str::to_owned);

    // Exactly one assertion, plain or encrypted, and it is the Response's own child: a second
    // one anywhere (in an Extensions, an Object, another assertion) is a wrapping attempt.
    let plain = doc.get_elements_by_tag_name_ns(NS_ASSERTION, "Assertion");
    let encrypted = doc.get_elements_by_tag_name_ns(NS_ASSERTION, "EncryptedAssertion");
    let top_level = |n: &NodeId| doc.parent(*n) == Some(root);
    let (assertion, encrypted_assertion) = match (plain.as_slice(), encrypted.as_slice()) {
        ([a], []) if top_level(a) => (Some(*a), None),
        ([], [e]) if top_level(e) => (None, Some(*e)),
        _ => return Err(Refusal::Wrapping),
    };

    precheck(&doc, root, assertion)?;
    let ctx = DsigContext::new(keys_of(expect.idp_certificates)?);
    let mut signed = check_signatures(&doc, &ctx, root, assertion, None)?;

    let decrypted_text;
    let decrypted_doc;
    let (adoc, anode) = match (assertion, encrypted_assertion) {
        (Some(a), _) => (&doc, a),
        (None, Some(_)) => {
            let mut keys = KeysManager::new();
            keys.add_key(loader::load_pem_auto(expect.sp_key_pem.as_bytes(), None).map_err(|_| Refusal::Decryption)?);
            decrypted_text = bergshamra::decrypt(&EncContext::new(keys), text).map_err(|e| {
                tracing::info!(error = %e, "SAML assertion not decrypted");
                Refusal::Decryption
            })?;
            decrypted_doc = parse_xml(&decrypted_text)?;
            let d = &decrypted_doc;
            let droot = d.document_element().ok_or(Refusal::Malformed)?;
            let found = d.get_elements_by_tag_name_ns(NS_ASSERTION, "Assertion");
            let [a] = found.as_slice() else { return Err(Refusal::Wrapping) };
            let holder = d.parent(*a).ok_or(Refusal::Wrapping)?;
            if !is(d, holder, NS_ASSERTION, "EncryptedAssertion") || d.parent(holder) != Some(droot) {
                return Err(Refusal::Wrapping);
            }
            // The signatures inside the decrypted assertion, under the same rules (the
            // Response's own was checked, and may no longer verify, above).
            let inner: Vec<NodeId> = d
                .get_elements_by_tag_name_ns(NS_DSIG, "Signature")
                .into_iter()
                .filter(|sig| d.ancestors(*sig).contains(a))
                .collect();
            if inner.len() > 1 || inner.iter().any(|sig| d.parent(*sig) != Some(*a)) {
                return Err(Refusal::Wrapping);
            }
            for sig in &inner {
                placed(d, *sig, *a)?;
            }
            signed = check_signatures(d, &ctx, droot, Some(*a), Some(*a))?;
            (d, *a)
        }
        (None, None) => return Err(Refusal::Wrapping),
    };
    if !signed {
        return Err(Refusal::Unsigned);
    }
    read_assertion(adoc, anode, expect, response_in_response_to, encrypted_assertion.is_some())
}

fn read_assertion(
    doc: &Document<'_>,
    a: NodeId,
    expect: &Expect<'_>,
    response_in_response_to: Option<String>,
    encrypted: bool,
) -> Result<Asserted, Refusal> {
    let now = expect.now;
    if attr(doc, a, "Version") != Some("2.0") {
        return Err(Refusal::Malformed);
    }
    let assertion_id = attr(doc, a, "ID").filter(|i| !i.is_empty() && i.len() <= 256).ok_or(Refusal::Malformed)?;
    let issuer = child(doc, a, NS_ASSERTION, "Issuer").ok_or(Refusal::Issuer)?;
    if identity_text(doc, issuer)? != expect.idp_entity_id {
        return Err(Refusal::Issuer);
    }
    let subject = child(doc, a, NS_ASSERTION, "Subject").ok_or(Refusal::NoSubject)?;
    let name_id_node = child(doc, subject, NS_ASSERTION, "NameID").ok_or(Refusal::NoSubject)?;
    let name_id = identity_text(doc, name_id_node)?;
    if name_id.is_empty() || name_id.len() > 512 || name_id.contains('\0') {
        return Err(Refusal::NoSubject);
    }
    let name_id_format = attr(doc, name_id_node, "Format").map(str::to_owned);

    // Profiles 4.1.4.2: a bearer confirmation, for us, in time, answering our request.
    let mut confirmed: Option<(Option<String>, DateTime<Utc>)> = None;
    let mut refusal = Refusal::Recipient;
    for sc in doc.child_elements_by_name_ns(subject, NS_ASSERTION, "SubjectConfirmation") {
        if attr(doc, sc, "Method") != Some(BEARER) {
            continue;
        }
        let Some(data) = child(doc, sc, NS_ASSERTION, "SubjectConfirmationData") else { continue };
        if attr(doc, data, "Recipient") != Some(expect.acs_url) {
            refusal = Refusal::Recipient;
            continue;
        }
        let Some(until) = time(doc, data, "NotOnOrAfter")? else {
            refusal = Refusal::Expired;
            continue;
        };
        if now >= until + CLOCK_SKEW {
            refusal = Refusal::Expired;
            continue;
        }
        if time(doc, data, "NotBefore")?.is_some_and(|nb| now + CLOCK_SKEW < nb) {
            refusal = Refusal::NotYetValid;
            continue;
        }
        confirmed = Some((attr(doc, data, "InResponseTo").map(str::to_owned), until));
        break;
    }
    let (confirmation_in_response_to, confirmation_until) = confirmed.ok_or(refusal)?;
    if confirmation_in_response_to != response_in_response_to {
        return Err(Refusal::InResponseTo);
    }

    let conditions = child(doc, a, NS_ASSERTION, "Conditions").ok_or(Refusal::Audience)?;
    if time(doc, conditions, "NotBefore")?.is_some_and(|nb| now + CLOCK_SKEW < nb) {
        return Err(Refusal::NotYetValid);
    }
    let conditions_until = time(doc, conditions, "NotOnOrAfter")?;
    if conditions_until.is_some_and(|t| now >= t + CLOCK_SKEW) {
        return Err(Refusal::Expired);
    }
    // Core 2.5.1.4: every AudienceRestriction must name us.
    let restrictions = doc.child_elements_by_name_ns(conditions, NS_ASSERTION, "AudienceRestriction");
    if restrictions.is_empty() {
        return Err(Refusal::Audience);
    }
    for r in restrictions {
        let mut ours = false;
        for aud in doc.child_elements_by_name_ns(r, NS_ASSERTION, "Audience") {
            if identity_text(doc, aud)? == expect.sp_entity_id {
                ours = true;
            }
        }
        if !ours {
            return Err(Refusal::Audience);
        }
    }
    if child(doc, a, NS_ASSERTION, "AuthnStatement").is_none() {
        return Err(Refusal::Malformed);
    }

    let mut attributes: Vec<(String, Vec<String>)> = Vec::new();
    for st in doc.child_elements_by_name_ns(a, NS_ASSERTION, "AttributeStatement") {
        for at in doc.child_elements_by_name_ns(st, NS_ASSERTION, "Attribute") {
            let Some(name) = attr(doc, at, "Name") else { continue };
            let mut values = Vec::new();
            for v in doc.child_elements_by_name_ns(at, NS_ASSERTION, "AttributeValue") {
                // A structured value (eduPersonTargetedID holds a NameID) is not one of ours:
                // skipped; a comment in a text value still refuses the whole.
                let text = match identity_text(doc, v) {
                    Err(Refusal::Malformed) => continue,
                    other => other?,
                };
                if text.len() <= 1024 && !text.contains('\0') {
                    values.push(text);
                }
            }
            if attributes.len() < 100 {
                attributes.push((name.to_owned(), values.into_iter().take(200).collect()));
            }
        }
    }
    let not_on_or_after = match conditions_until {
        Some(c) => c.min(confirmation_until),
        None => confirmation_until,
    };
    if not_on_or_after > now + MAX_VALIDITY {
        return Err(Refusal::TooLong);
    }
    Ok(Asserted {
        assertion_id: assertion_id.to_owned(),
        in_response_to: response_in_response_to,
        name_id,
        name_id_format,
        attributes,
        not_on_or_after,
        encrypted,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn a_doctype_is_refused_before_parsing() {
        let xxe = r#"<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><r>&x;</r>"#;
        assert_eq!(parse_xml(xxe).err(), Some(Refusal::Doctype));
    }

    #[test]
    fn a_comment_inside_an_identity_value_is_refused() {
        let doc = parse_xml("<n>user@example.com<!---->.evil.test</n>").unwrap();
        let root = doc.document_element().unwrap();
        assert_eq!(identity_text(&doc, root), Err(Refusal::CommentInIdentity));
        let doc = parse_xml("<n> user@example.com </n>").unwrap();
        assert_eq!(identity_text(&doc, doc.document_element().unwrap()).unwrap(), "user@example.com");
    }

    #[test]
    fn the_authn_request_inflates_back_to_our_request() {
        let now = DateTime::parse_from_rfc3339("2026-12-03T10:00:00Z").unwrap().with_timezone(&Utc);
        let url = authn_request_url("https://idp.example/sso?x=1", "https://sp/e", "https://sp/acs", "id42", now);
        assert!(url.starts_with("https://idp.example/sso?x=1&SAMLRequest="));
        let q = url.split_once("SAMLRequest=").unwrap().1;
        let b64: String = url::form_urlencoded::parse(format!("a={q}").as_bytes()).next().unwrap().1.into_owned();
        let raw = miniz_oxide::inflate::decompress_to_vec(&STANDARD.decode(b64).unwrap()).unwrap();
        let xml = String::from_utf8(raw).unwrap();
        assert!(xml.contains(r#"ID="id42""#) && xml.contains("<saml:Issuer>https://sp/e</saml:Issuer>"));
        assert!(xml.contains(r#"AssertionConsumerServiceURL="https://sp/acs""#));
    }

    #[test]
    fn idp_metadata_gives_entity_sso_url_and_signing_certificates() {
        let (_, der) = new_sp_keypair("idp", Utc::now()).unwrap();
        let cert = STANDARD.encode(&der);
        let xml = format!(
            r#"<md:EntityDescriptor xmlns:md="{NS_METADATA}" xmlns:ds="{NS_DSIG}" entityID="https://idp.example/e">
  <md:IDPSSODescriptor protocolSupportEnumeration="{NS_PROTOCOL}">
    <md:KeyDescriptor use="signing"><ds:KeyInfo><ds:X509Data><ds:X509Certificate>
      {cert}
    </ds:X509Certificate></ds:X509Data></ds:KeyInfo></md:KeyDescriptor>
    <md:KeyDescriptor use="encryption"><ds:KeyInfo><ds:X509Data><ds:X509Certificate>AAAA</ds:X509Certificate></ds:X509Data></ds:KeyInfo></md:KeyDescriptor>
    <md:SingleSignOnService Binding="{BINDING_POST}" Location="https://idp.example/post"/>
    <md:SingleSignOnService Binding="{BINDING_REDIRECT}" Location="https://idp.example/redirect"/>
  </md:IDPSSODescriptor>
</md:EntityDescriptor>"#
        );
        let m = parse_idp_metadata(&xml).unwrap();
        assert_eq!(m.entity_id, "https://idp.example/e");
        assert_eq!(m.sso_url, "https://idp.example/redirect");
        assert_eq!(m.certificates, vec![der.clone()]);
        check_certificate(&der).unwrap();
        assert!(parse_idp_metadata("<md:EntityDescriptor/>").is_err());
    }

    #[test]
    fn presets_are_valid_maps() {
        for p in [AttributePreset::Generic, AttributePreset::Okta, AttributePreset::Entra, AttributePreset::Google] {
            p.map().check().unwrap();
        }
        let mut m = AttributePreset::Okta.map();
        m.email.clear();
        assert!(m.check().is_err());
    }
}
