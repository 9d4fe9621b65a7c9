-- Enterprise SSO, second part: SAML 2.0 connections, kept beside the OpenID ones (one list, one
-- slug space, one organization check, one "last connection of an SSO-required organization"
-- rule). For kind 'saml' the shared columns mean:
--   client_id              our service-provider entity id (what the identity provider knows us by)
--   client_secret_enc      our private key (PKCS#8 PEM), sealed with the master key
--   issuer                 the identity provider's entity id
--   authorization_endpoint its single sign-on service (HTTP-Redirect binding)
--   token_endpoint         NULL: nothing is redeemed
ALTER TABLE oauth_connections DROP CONSTRAINT oauth_connections_kind_check;
ALTER TABLE oauth_connections ADD CONSTRAINT oauth_connections_kind_check
    CHECK (kind IN ('oidc', 'google', 'microsoft', 'github', 'saml'));
ALTER TABLE oauth_connections ALTER COLUMN token_endpoint DROP NOT NULL;
ALTER TABLE oauth_connections
    -- where the identity provider posts its Response (fixed when the connection is made: the
    -- identity provider was configured with it)
    ADD COLUMN acs_url text CHECK (acs_url IS NULL OR length(acs_url) <= 2048),
    -- our certificate (DER): identity providers encrypt assertions to it
    ADD COLUMN sp_certificate bytea,
    -- the identity provider's signing certificates (DER); two during a rollover
    ADD COLUMN idp_certificates bytea[]
        CHECK (idp_certificates IS NULL OR cardinality(idp_certificates) BETWEEN 1 AND 2),
    -- sign-ins started at the identity provider (unsolicited responses): off unless turned on
    ADD COLUMN idp_initiated boolean NOT NULL DEFAULT false,
    -- which SAML attributes carry email, names and groups
    ADD COLUMN attribute_map jsonb CHECK (attribute_map IS NULL OR jsonb_typeof(attribute_map) = 'object'),
    ADD CONSTRAINT oauth_connections_shape CHECK (
        CASE WHEN kind = 'saml'
             THEN acs_url IS NOT NULL AND sp_certificate IS NOT NULL AND idp_certificates IS NOT NULL
                  AND attribute_map IS NOT NULL AND organization_id IS NOT NULL AND issuer IS NOT NULL
                  AND token_endpoint IS NULL
             ELSE token_endpoint IS NOT NULL AND acs_url IS NULL AND sp_certificate IS NULL
                  AND idp_certificates IS NULL AND attribute_map IS NULL AND NOT idp_initiated
        END);

-- Assertion ids already accepted, per connection, until the assertion expires: a replayed
-- Response is refused by whichever node it reaches (shared database, like the requests).
-- Ids are kept as SHA-256 hashes (fixed length, whatever the identity provider chose).
CREATE TABLE saml_assertions_seen (
    tenant_id uuid NOT NULL,
    project_id uuid NOT NULL,
    connection_id uuid NOT NULL,
    assertion_hash bytea NOT NULL CHECK (length(assertion_hash) = 32),
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, connection_id, assertion_hash),
    FOREIGN KEY (tenant_id, project_id) REFERENCES projects (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX saml_assertions_seen_expiry ON saml_assertions_seen (tenant_id, project_id, expires_at);
ALTER TABLE saml_assertions_seen ENABLE ROW LEVEL SECURITY;
ALTER TABLE saml_assertions_seen FORCE ROW LEVEL SECURITY;
CREATE POLICY owner_all ON saml_assertions_seen TO authio_owner USING (true) WITH CHECK (true);
CREATE POLICY project_scope ON saml_assertions_seen
    USING (tenant_id = (select nullif(current_setting('authio.tenant_id', true), '')::uuid)
       AND project_id = (select nullif(current_setting('authio.project_id', true), '')::uuid))
    WITH CHECK (tenant_id = (select nullif(current_setting('authio.tenant_id', true), '')::uuid)
       AND project_id = (select nullif(current_setting('authio.project_id', true), '')::uuid));
REVOKE ALL ON saml_assertions_seen FROM PUBLIC;
-- Written once (a conflict is the replay), read back, and expired rows deleted.
GRANT SELECT, INSERT, DELETE ON saml_assertions_seen TO authio_app;

-- What single sign-on says of a person, kept up to date at each sign-in through it.
ALTER TABLE users
    ADD COLUMN given_name text CHECK (given_name IS NULL OR length(given_name) BETWEEN 1 AND 200),
    ADD COLUMN family_name text CHECK (family_name IS NULL OR length(family_name) BETWEEN 1 AND 200);
GRANT UPDATE (given_name, family_name) ON users TO authio_app;
