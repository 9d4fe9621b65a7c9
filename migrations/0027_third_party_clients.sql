-- The OpenID provider as the authorization server of MCP servers and agents: clients the
-- project's administrators did not register (RFC 7591 dynamic registration, Client ID Metadata
-- Documents), the project's protected resources with their scopes, and users' consents to
-- those clients. Clients and resources are pinned to the shared database with the project's
-- other clients; consents are the user's, at the tenant's home.
ALTER TABLE projects
    ADD COLUMN dynamic_registration boolean NOT NULL DEFAULT false,
    ADD COLUMN metadata_document_clients boolean NOT NULL DEFAULT false,
    ADD COLUMN confidential_registration boolean NOT NULL DEFAULT false;
GRANT UPDATE (dynamic_registration, metadata_document_clients, confidential_registration) ON projects TO authio_app;

-- How a client came to be: by the project's administrators (first party: their registration
-- is the consent), by dynamic registration, or from its metadata document (the client id is
-- the document's https URL, one row per project, re-read when `fetched_at` is too old).
ALTER TABLE oidc_clients
    ADD COLUMN registration text NOT NULL DEFAULT 'admin'
        CHECK (registration IN ('admin', 'dynamic', 'metadata_document')),
    ADD COLUMN logo_uri text CHECK (logo_uri IS NULL OR length(logo_uri) <= 2048),
    ADD COLUMN client_uri text CHECK (client_uri IS NULL OR length(client_uri) <= 2048),
    -- RFC 7592: SHA-256 of the registration access token (dynamic registrations only)
    ADD COLUMN registration_token_hash bytea
        CHECK (registration_token_hash IS NULL OR length(registration_token_hash) = 32),
    ADD COLUMN blocked_at timestamptz,
    -- the first authorization request that used it (an unused dynamic registration expires)
    ADD COLUMN used_at timestamptz,
    ADD COLUMN fetched_at timestamptz,
    ADD CONSTRAINT oidc_clients_client_id_length CHECK (length(client_id) BETWEEN 1 AND 2048),
    ADD CONSTRAINT oidc_clients_document_fetched CHECK ((registration = 'metadata_document') = (fetched_at IS NOT NULL));
ALTER TABLE oidc_clients DROP CONSTRAINT oidc_clients_client_id_key;
CREATE UNIQUE INDEX oidc_clients_client_id ON oidc_clients (client_id) WHERE registration <> 'metadata_document';
CREATE UNIQUE INDEX oidc_clients_document ON oidc_clients (project_id, client_id) WHERE registration = 'metadata_document';
CREATE INDEX oidc_clients_unused ON oidc_clients (created_at) WHERE registration = 'dynamic' AND used_at IS NULL;
GRANT UPDATE (used_at, blocked_at, fetched_at, name, logo_uri, client_uri, redirect_uris) ON oidc_clients TO authio_app;

DROP FUNCTION authio_resolve_oidc_client(text);
CREATE FUNCTION authio_resolve_oidc_client(p_project uuid, p_client_id text)
RETURNS TABLE (tenant_id uuid, project_id uuid, tenant_kind text, secret_hash bytea, client_type text,
               token_endpoint_auth_method text, redirect_uris text[], post_logout_redirect_uris text[],
               scopes text[], grant_types text[], name text, id_token_signed_response_alg text,
               resources text[], registration text, logo_uri text, client_uri text, blocked_at timestamptz,
               fetched_at timestamptz, used_at timestamptz, registration_token_hash bytea, id uuid)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
    SELECT c.tenant_id, c.project_id, t.kind, c.secret_hash, c.client_type, c.token_endpoint_auth_method,
           c.redirect_uris, c.post_logout_redirect_uris, c.scopes, c.grant_types, c.name,
           c.id_token_signed_response_alg, c.resources, c.registration, c.logo_uri, c.client_uri, c.blocked_at,
           c.fetched_at, c.used_at, c.registration_token_hash, c.id
    FROM public.oidc_clients c JOIN public.tenants t ON t.id = c.tenant_id
    WHERE c.client_id = p_client_id AND c.revoked_at IS NULL
      AND (c.registration <> 'metadata_document' OR c.project_id = p_project)
$$;
REVOKE EXECUTE ON FUNCTION authio_resolve_oidc_client(uuid, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION authio_resolve_oidc_client(uuid, text) TO authio_app;

-- A protected resource of the project (an API, an MCP server): the `resource` (RFC 8707) an
-- access token is for, and the scopes it understands.
CREATE TABLE protected_resources (
    tenant_id uuid NOT NULL,
    project_id uuid NOT NULL,
    id uuid NOT NULL,
    uri text NOT NULL CHECK (length(uri) BETWEEN 1 AND 512),
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    scopes text[] NOT NULL CHECK (cardinality(scopes) <= 50),
    created_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (project_id, uri),
    FOREIGN KEY (tenant_id, project_id) REFERENCES projects (tenant_id, id) ON DELETE CASCADE
);
ALTER TABLE protected_resources ENABLE ROW LEVEL SECURITY;
ALTER TABLE protected_resources FORCE ROW LEVEL SECURITY;
CREATE POLICY owner_all ON protected_resources TO authio_owner USING (true) WITH CHECK (true);
CREATE POLICY project_scope ON protected_resources
    USING (tenant_id = (select nullif(current_setting('authio.tenant_id', true), '')::uuid)
       AND project_id = (select nullif(current_setting('authio.project_id', true), '')::uuid))
    WITH CHECK (tenant_id = (select nullif(current_setting('authio.tenant_id', true), '')::uuid)
       AND project_id = (select nullif(current_setting('authio.project_id', true), '')::uuid));
REVOKE ALL ON protected_resources FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON protected_resources TO authio_app;

-- Pre-resolution: an authorization or token request names a resource before anything else.
CREATE FUNCTION authio_project_resources(p_project uuid)
RETURNS TABLE (uri text, scopes text[])
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
    SELECT r.uri, r.scopes FROM public.protected_resources r WHERE r.project_id = p_project ORDER BY r.uri
$$;
REVOKE EXECUTE ON FUNCTION authio_project_resources(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION authio_project_resources(uuid) TO authio_app;

DROP FUNCTION authio_project_presentation(uuid);
CREATE FUNCTION authio_project_presentation(p_project uuid)
RETURNS TABLE (tenant_id uuid, name text, display_name text, logo_url text, brand_color text,
               email_sender_name text, signin_methods text[], environment text, signup_policy text,
               signup_domains text[], mfa_policy text, dynamic_registration boolean,
               metadata_document_clients boolean, confidential_registration boolean)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
    SELECT p.tenant_id, p.name, p.display_name, p.logo_url, p.brand_color, p.email_sender_name,
           p.signin_methods, p.environment, p.signup_policy, p.signup_domains, p.mfa_policy,
           p.dynamic_registration, p.metadata_document_clients, p.confidential_registration
    FROM public.projects p WHERE p.id = p_project
$$;
REVOKE EXECUTE ON FUNCTION authio_project_presentation(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION authio_project_presentation(uuid) TO authio_app;

-- A user's consent to a third-party client for a resource ('' for the project itself) and
-- scopes. Revoking it ends the sessions (and so the refresh tokens) of that grant.
CREATE TABLE consents (
    tenant_id uuid NOT NULL,
    project_id uuid NOT NULL,
    id uuid NOT NULL,
    user_id uuid NOT NULL,
    client_id text NOT NULL CHECK (length(client_id) BETWEEN 1 AND 2048),
    client_name text NOT NULL CHECK (length(client_name) BETWEEN 1 AND 200),
    resource text NOT NULL CHECK (length(resource) <= 512),
    scopes text[] NOT NULL,
    granted_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, user_id, client_id, resource),
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id) ON DELETE CASCADE
);
ALTER TABLE consents ENABLE ROW LEVEL SECURITY;
ALTER TABLE consents FORCE ROW LEVEL SECURITY;
CREATE POLICY owner_all ON consents TO authio_owner USING (true) WITH CHECK (true);
CREATE POLICY project_scope_at_home ON consents
    USING (tenant_id = (select nullif(current_setting('authio.tenant_id', true), '')::uuid)
       AND project_id = (select nullif(current_setting('authio.project_id', true), '')::uuid)
       AND (select authio_tenant_at_home(nullif(current_setting('authio.tenant_id', true), '')::uuid)))
    WITH CHECK (tenant_id = (select nullif(current_setting('authio.tenant_id', true), '')::uuid)
       AND project_id = (select nullif(current_setting('authio.project_id', true), '')::uuid)
       AND (select authio_tenant_at_home(nullif(current_setting('authio.tenant_id', true), '')::uuid)));
REVOKE ALL ON consents FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON consents TO authio_app;

-- A session started by a client whose id is its metadata document's URL keeps that id.
ALTER TABLE sessions DROP CONSTRAINT sessions_client_id_check;
ALTER TABLE sessions ADD CONSTRAINT sessions_client_id_check CHECK (client_id IS NULL OR length(client_id) <= 2048);

-- Dynamic registrations no authorization request used by `p_before` are removed; returns how many.
CREATE FUNCTION authio_dynamic_client_gc(p_before timestamptz) RETURNS integer
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
    WITH gone AS (
        DELETE FROM public.oidc_clients
        WHERE registration = 'dynamic' AND used_at IS NULL AND created_at < p_before
        RETURNING 1
    )
    SELECT count(*)::integer FROM gone
$$;
REVOKE EXECUTE ON FUNCTION authio_dynamic_client_gc(timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION authio_dynamic_client_gc(timestamptz) TO authio_app;
