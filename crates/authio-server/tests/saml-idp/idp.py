"""A small SAML 2.0 identity provider for the SAML service provider's integration tests.

The Rust tests start it as a subprocess (env PORT, binds 127.0.0.1:PORT, prints `ready`) and
drive it over HTTP. The responses it sends are signed and encrypted by pysaml2 through the
xmlsec1 command line, so the service provider is judged by an implementation that is not its
own. Endpoints (see README.md):

  GET  /metadata?keys=a[,b]    IdP metadata listing the signing certificate(s)
  POST /sp                     load a service provider's metadata (body: XML)
  POST /next                   settings (JSON) for the next response only
  GET  /sso/redirect           HTTP-Redirect AuthnRequest -> auto-submitting POST form
  GET  /idp-initiated?sp=...   unsolicited response -> auto-submitting POST form
  GET  /last                   the last response XML, for building tampered variants
"""

import base64
import datetime
import html
import json
import logging
import os
import secrets
import shutil
import signal
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit
from xml.sax.saxutils import escape, quoteattr

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from saml2 import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT, SAMLError
from saml2.config import IdPConfig
from saml2.server import Server
from saml2.sigver import pre_encryption_part, pre_signature_part
from saml2.xmldsig import DIGEST_SHA256, SIG_RSA_SHA256

log = logging.getLogger("saml-idp")

PORT = int(os.environ["PORT"])
BASE = f"http://127.0.0.1:{PORT}"
ENTITY_ID = f"{BASE}/metadata"
SSO_URL = f"{BASE}/sso/redirect"

NS_MD = "urn:oasis:names:tc:SAML:2.0:metadata"
NS_SAML = "urn:oasis:names:tc:SAML:2.0:assertion"
NS_SAMLP = "urn:oasis:names:tc:SAML:2.0:protocol"
NS_DS = "http://www.w3.org/2000/09/xmldsig#"
NS_XENC = "http://www.w3.org/2001/04/xmlenc#"
ASSERTION_NODE = f"{NS_SAML}:Assertion"  # what xmlsec1's --id-attr:ID needs
RESPONSE_NODE = f"{NS_SAMLP}:Response"

NAME_ID_FORMATS = {
    "persistent": "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent",
    "email": "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress",
    "unspecified": "urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified",
}
# Block cipher -> (EncryptionMethod URI, xmlsec1 --session-key). The key is always sent with
# RSA-OAEP (pysaml2's default key transport, rsa-oaep-mgf1p).
ENCRYPTIONS = {
    "aes128-cbc": ("http://www.w3.org/2001/04/xmlenc#aes128-cbc", "aes-128"),
    "aes256-cbc": ("http://www.w3.org/2001/04/xmlenc#aes256-cbc", "aes-256"),
    "aes128-gcm": ("http://www.w3.org/2009/xmlenc11#aes128-gcm", "aes-128"),
    "aes256-gcm": ("http://www.w3.org/2009/xmlenc11#aes256-gcm", "aes-256"),
}

DEFAULTS = {
    "name_id": "alice-0001",
    "name_id_format": "persistent",
    "attributes": {
        "email": ["alice@example.com"],
        "firstName": ["Alice"],
        "lastName": ["Liddell"],
        "groups": ["staff"],
    },
    "sign_assertion": True,
    "sign_response": False,
    "encrypt": False,
    "encryption": "aes128-cbc",
    "key": "a",
    # Overrides: absent = the correct value; JSON null = leave the element/attribute out.
    "audience": ...,
    "recipient": ...,
    "destination": ...,
    "in_response_to": ...,
    "issuer": ENTITY_ID,
    "time_shift_secs": 0,
    "lifetime_secs": 300,
}
# The JSON types each /next field takes (null only where it means "leave it out").
STRING_OR_NULL = (str, type(None))
FIELD_TYPES = {
    **{f: (str,) for f in ("name_id", "name_id_format", "encryption", "key", "issuer")},
    **{f: (bool,) for f in ("sign_assertion", "sign_response", "encrypt")},
    **{f: STRING_OR_NULL for f in ("audience", "recipient", "destination", "in_response_to")},
    "attributes": (dict,),
    "time_shift_secs": (int,),
    "lifetime_secs": (int,),
}


class Key:
    """An RSA key with a self-signed certificate, written as PEM files for xmlsec1."""

    def __init__(self, name, directory):
        now = datetime.datetime.now(datetime.timezone.utc)
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"authio test IdP key {name}")])
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(private.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=365))
            .sign(private, hashes.SHA256())
        )
        self.key_file = os.path.join(directory, f"{name}.key")
        self.cert_file = os.path.join(directory, f"{name}.crt")
        with open(self.key_file, "wb") as f:
            f.write(
                private.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.TraditionalOpenSSL,
                    serialization.NoEncryption(),
                )
            )
        with open(self.cert_file, "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))
        # base64 DER, as it goes into metadata and ds:X509Certificate
        self.cert_b64 = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()


def make_server(key):
    """pysaml2's IdP: parses AuthnRequests, keeps SP metadata, and signs/encrypts via xmlsec1."""
    xmlsec = shutil.which("xmlsec1")
    if not xmlsec:
        sys.exit("xmlsec1 is not on PATH (Debian: apt-get install xmlsec1)")
    config = IdPConfig().load(
        {
            "entityid": ENTITY_ID,
            "xmlsec_binary": xmlsec,
            "key_file": key.key_file,
            "cert_file": key.cert_file,
            "metadata": {},
            "service": {
                "idp": {
                    "endpoints": {"single_sign_on_service": [(SSO_URL, BINDING_HTTP_REDIRECT)]},
                    # The SP under test sends unsigned requests; do not require a signature.
                    "want_authn_requests_signed": False,
                }
            },
        }
    )
    return Server(config=config)


def metadata_xml(keys):
    descriptors = "".join(
        f'<md:KeyDescriptor use="signing"><ds:KeyInfo><ds:X509Data>'
        f"<ds:X509Certificate>{k.cert_b64}</ds:X509Certificate>"
        f"</ds:X509Data></ds:KeyInfo></md:KeyDescriptor>"
        for k in keys
    )
    formats = "".join(
        f"<md:NameIDFormat>{NAME_ID_FORMATS[f]}</md:NameIDFormat>" for f in ("persistent", "email")
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<md:EntityDescriptor xmlns:md="{NS_MD}" xmlns:ds="{NS_DS}" entityID={quoteattr(ENTITY_ID)}>'
        f'<md:IDPSSODescriptor WantAuthnRequestsSigned="false" protocolSupportEnumeration="{NS_SAMLP}">'
        f"{descriptors}{formats}"
        f'<md:SingleSignOnService Binding="{BINDING_HTTP_REDIRECT}" Location={quoteattr(SSO_URL)}/>'
        "</md:IDPSSODescriptor></md:EntityDescriptor>"
    )


def instant(t):
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def opt_attr(name, value):
    """An XML attribute, or nothing when the override dropped it (None)."""
    return "" if value is None else f" {name}={quoteattr(value)}"


def attribute_xml(name, values):
    # Names that look like URIs (urn:..., http://...) use the uri NameFormat, as real IdPs do.
    fmt = "uri" if (":" in name or "/" in name) else "basic"
    vals = "".join(f'<saml:AttributeValue xsi:type="xs:string">{escape(v)}</saml:AttributeValue>' for v in values)
    return (
        f"<saml:Attribute Name={quoteattr(name)} "
        f'NameFormat="urn:oasis:names:tc:SAML:2.0:attrname-format:{fmt}">{vals}</saml:Attribute>'
    )


def signature_template(ident, key):
    # pysaml2's own template: RSA-SHA256, SHA-256 digest, exclusive C14N, the cert in KeyInfo.
    sig = pre_signature_part(ident, public_key=key.cert_b64, sign_alg=SIG_RSA_SHA256, digest_alg=DIGEST_SHA256)
    return sig.to_string(nspair={"ds": NS_DS}).decode()


class IdP:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="saml-idp-")
        self.keys = {name: Key(name, self.dir) for name in ("a", "b", "rogue")}
        self.server = make_server(self.keys["a"])
        self.lock = threading.Lock()  # pysaml2's metadata store and our state are not thread-safe
        self.next = {}
        self.last = None

    def load_sp(self, xml):
        with self.lock:
            store = self.server.metadata
            before = set(store.metadata)
            store.load("inline", xml)
            new = {e for k in set(store.metadata) - before for e in store.metadata[k].keys()}
            # A reloaded SP replaces its older copy, so a test may change its certificate.
            for k in before:
                if new & set(store.metadata[k].keys()):
                    del store.metadata[k]
            log.info("loaded SP metadata for %s", ", ".join(sorted(new)) or "(no entity)")
            return new

    def set_next(self, settings):
        # Reject what the IdP would not understand, so a test's typo fails loudly.
        choices = {"name_id_format": NAME_ID_FORMATS, "encryption": ENCRYPTIONS, "key": self.keys}
        for field, value in settings.items():
            if field not in FIELD_TYPES:
                raise ValueError(f"unknown /next field {field!r}")
            if type(value) not in FIELD_TYPES[field]:
                raise ValueError(f"{field}: wrong JSON type {type(value).__name__}")
            if field in choices and value not in choices[field]:
                raise ValueError(f"{field} must be one of {', '.join(choices[field])}")
        attributes = settings.get("attributes", {})
        if not all(type(v) is list and all(type(x) is str for x in v) for v in attributes.values()):
            raise ValueError("attributes must map names to lists of strings")
        with self.lock:
            self.next = settings

    def sso(self, saml_request, relay_state, sigalg, signature):
        """Answer an HTTP-Redirect AuthnRequest: (ACS URL, response XML)."""
        with self.lock:
            try:
                req = self.server.parse_authn_request(
                    saml_request, BINDING_HTTP_REDIRECT, relay_state=relay_state, sigalg=sigalg, signature=signature
                )
            except Exception as e:  # undecodable, not an AuthnRequest, wrong Destination, ...
                raise ValueError(f"cannot parse the AuthnRequest: {type(e).__name__}: {e}") from e
            sp = req.message.issuer.text.strip() if req.message.issuer is not None else ""
            if sp not in self.server.metadata.keys():
                raise LookupError(f"unknown SP {sp!r}: POST its metadata to /sp first")
            # pysaml2 picks the ACS: the request's URL, which must be in the SP's metadata.
            args = self.server.response_args(req.message, [BINDING_HTTP_POST])
            acs = args["destination"]
            return acs, self._respond(sp, acs, req.message.id)

    def idp_initiated(self, sp):
        with self.lock:
            if sp not in self.server.metadata.keys():
                raise LookupError(f"unknown SP {sp!r}: POST its metadata to /sp first")
            _, acs = self.server.pick_binding("assertion_consumer_service", [BINDING_HTTP_POST], entity_id=sp)
            return acs, self._respond(sp, acs, None)

    def _respond(self, sp, acs, request_id):
        s = {**DEFAULTS, **self.next}
        self.next = {}  # the settings are for one response only
        right = {"audience": sp, "recipient": acs, "destination": acs, "in_response_to": request_id}
        for field, value in right.items():
            if s[field] is ...:
                s[field] = value
        key = self.keys[s["key"]]
        now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
        now += datetime.timedelta(seconds=s["time_shift_secs"])
        until = now + datetime.timedelta(seconds=s["lifetime_secs"])
        resp_id, assertion_id = "_" + secrets.token_hex(16), "_" + secrets.token_hex(16)

        attrs = "".join(attribute_xml(n, v) for n, v in s["attributes"].items())
        audience = (
            ""
            if s["audience"] is None
            else f"<saml:AudienceRestriction><saml:Audience>{escape(s['audience'])}</saml:Audience>"
            "</saml:AudienceRestriction>"
        )
        # The assertion declares its own namespaces so that it stays well-formed once an SP
        # decrypts it out of its EncryptedAssertion.
        assertion = (
            f'<saml:Assertion xmlns:saml="{NS_SAML}" xmlns:xs="http://www.w3.org/2001/XMLSchema" '
            'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
            f'ID="{assertion_id}" Version="2.0" IssueInstant="{instant(now)}">'
            f"<saml:Issuer>{escape(s['issuer'])}</saml:Issuer>"
            + (signature_template(assertion_id, key) if s["sign_assertion"] else "")
            + "<saml:Subject>"
            f"<saml:NameID Format={quoteattr(NAME_ID_FORMATS[s['name_id_format']])}>{escape(s['name_id'])}</saml:NameID>"
            '<saml:SubjectConfirmation Method="urn:oasis:names:tc:SAML:2.0:cm:bearer">'
            f'<saml:SubjectConfirmationData NotOnOrAfter="{instant(until)}"'
            f"{opt_attr('InResponseTo', s['in_response_to'])}{opt_attr('Recipient', s['recipient'])}/>"
            "</saml:SubjectConfirmation></saml:Subject>"
            f'<saml:Conditions NotBefore="{instant(now)}" NotOnOrAfter="{instant(until)}">{audience}</saml:Conditions>'
            f'<saml:AuthnStatement AuthnInstant="{instant(now)}" SessionIndex="{assertion_id}">'
            "<saml:AuthnContext><saml:AuthnContextClassRef>"
            "urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport"
            "</saml:AuthnContextClassRef></saml:AuthnContext></saml:AuthnStatement>"
            + (f"<saml:AttributeStatement>{attrs}</saml:AttributeStatement>" if attrs else "")
            + "</saml:Assertion>"
        )
        if s["encrypt"]:
            # pysaml2 encrypts the Assertion found at Response/EncryptedAssertion/Assertion.
            assertion = f"<saml:EncryptedAssertion>{assertion}</saml:EncryptedAssertion>"
        xml = (
            f'<samlp:Response xmlns:samlp="{NS_SAMLP}" xmlns:saml="{NS_SAML}" ID="{resp_id}" Version="2.0" '
            f'IssueInstant="{instant(now)}"{opt_attr("Destination", s["destination"])}'
            f"{opt_attr('InResponseTo', s['in_response_to'])}>"
            f"<saml:Issuer>{escape(s['issuer'])}</saml:Issuer>"
            + (signature_template(resp_id, key) if s["sign_response"] else "")
            + '<samlp:Status><samlp:StatusCode Value="urn:oasis:names:tc:SAML:2.0:status:Success"/></samlp:Status>'
            f"{assertion}</samlp:Response>"
        )

        # The usual order: sign the assertion, encrypt it, then sign the response around it.
        sec = self.server.sec
        if s["sign_assertion"]:
            xml = sec.sign_statement(xml, ASSERTION_NODE, key_file=key.key_file, node_id=assertion_id)
        if s["encrypt"]:
            xml = self._encrypt(sp, xml, s["encryption"])
        if s["sign_response"]:
            xml = sec.sign_statement(xml, RESPONSE_NODE, key_file=key.key_file, node_id=resp_id)
        self.last = xml
        encrypted = s["encryption"] if s["encrypt"] else "no"
        log.info(
            "response %s to %s: key %s, assertion signed %s, response signed %s, encrypted %s",
            resp_id, sp, s["key"], s["sign_assertion"], s["sign_response"], encrypted,
        )
        return xml

    def _encrypt(self, sp, xml, encryption):
        certs = self.server.metadata.certs(sp, "spsso", "encryption")
        if not certs:
            raise LookupError(f"SP {sp!r} has no encryption certificate in its metadata")
        _, cert = certs[0]
        cert = "".join(cert.split())
        cert_file = os.path.join(self.dir, f"enc-{secrets.token_hex(8)}.crt")
        with open(cert_file, "w") as f:
            f.write("-----BEGIN CERTIFICATE-----\n")
            f.write("\n".join(cert[i : i + 64] for i in range(0, len(cert), 64)))
            f.write("\n-----END CERTIFICATE-----\n")
        algorithm, session_key = ENCRYPTIONS[encryption]
        template = pre_encryption_part(msg_enc=algorithm, encrypt_cert=cert)
        template = template.to_string(nspair={"ds": NS_DS, "xenc": NS_XENC}).decode()
        try:
            return self.server.sec.encrypt_assertion(xml, cert_file, template, key_type=session_key)
        finally:
            os.unlink(cert_file)


def post_form(acs, xml, relay_state):
    """The HTTP-POST binding: a page whose form a browser submits on load."""
    saml = base64.b64encode(xml.encode()).decode()
    relay = (
        ""
        if relay_state is None
        else f'<input type="hidden" name="RelayState" value="{html.escape(relay_state, quote=True)}"/>'
    )
    return (
        '<!DOCTYPE html><html><head><meta charset="utf-8"><title>Signing in</title></head><body>'
        f'<form method="post" action="{html.escape(acs, quote=True)}">'
        f'<input type="hidden" name="SAMLResponse" value="{saml}"/>{relay}'
        '<noscript><button type="submit">Continue</button></noscript></form>'
        "<script>document.forms[0].submit();</script></body></html>"
    )


class Handler(BaseHTTPRequestHandler):
    idp: IdP

    def send(self, status, body=b"", content_type="text/plain; charset=utf-8"):
        body = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        if status != 204:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        url = urlsplit(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        try:
            if url.path == "/metadata":
                names = [n.strip() for n in q.get("keys", "a").split(",") if n.strip()]
                if not names or any(n not in ("a", "b") for n in names):
                    return self.send(400, "keys must list a and/or b, e.g. keys=a,b\n")
                xml = metadata_xml([self.idp.keys[n] for n in names])
                return self.send(200, xml, "application/samlmetadata+xml")
            if url.path == "/sso/redirect":
                if "SAMLRequest" not in q:
                    return self.send(400, "missing SAMLRequest\n")
                relay = q.get("RelayState")
                acs, xml = self.idp.sso(q["SAMLRequest"], relay, q.get("SigAlg"), q.get("Signature"))
                return self.send(200, post_form(acs, xml, relay), "text/html; charset=utf-8")
            if url.path == "/idp-initiated":
                if "sp" not in q:
                    return self.send(400, "missing sp (the SP's entity id)\n")
                acs, xml = self.idp.idp_initiated(q["sp"])
                return self.send(200, post_form(acs, xml, q.get("RelayState")), "text/html; charset=utf-8")
            if url.path == "/last":
                if self.idp.last is None:
                    return self.send(404, "no response yet\n")
                return self.send(200, self.idp.last, "text/xml; charset=utf-8")
            return self.send(404, "not found\n")
        except (LookupError, SAMLError, ValueError) as e:  # the test asked for something wrong
            log.warning("%s: %s", url.path, e)
            return self.send(400, f"{type(e).__name__}: {e}\n")
        except Exception as e:  # a fault here (e.g. xmlsec1 failed): 500, with the trace on stderr
            log.exception("%s", url.path)
            return self.send(500, f"{type(e).__name__}: {e}\n")

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            if self.path == "/sp":
                if not self.idp.load_sp(body.decode()):
                    return self.send(400, "no EntityDescriptor in the body\n")
                return self.send(204)
            if self.path == "/next":
                settings = json.loads(body or b"{}")
                if not isinstance(settings, dict):
                    return self.send(400, "/next takes a JSON object\n")
                self.idp.set_next(settings)
                return self.send(204)
            return self.send(404, "not found\n")
        except Exception as e:  # bad input from a test: say why, keep serving
            log.warning("%s: %s", self.path, e)
            return self.send(400, f"{type(e).__name__}: {e}\n")

    def log_message(self, fmt, *args):
        log.info("%s %s", self.address_string(), fmt % args)


def main():
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="saml-idp %(levelname)s %(message)s")
    Handler.idp = IdP()
    httpd = ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # so the key directory is removed
    print("ready", flush=True)
    try:
        httpd.serve_forever()
    finally:
        shutil.rmtree(Handler.idp.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
