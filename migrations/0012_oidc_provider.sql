-- Every project as an OpenID Provider: registered clients (pinned to the shared database: the
-- token endpoint resolves the project from the client id), and authorization codes carrying
-- what the ID token needs.

CREATE TABLE oidc_clients (
    tenant_id uuid NOT NULL,
    project_id uuid NOT NULL,
    id uuid NOT NULL,
    client_id text NOT NULL UNIQUE,
    -- SHA-256 of the secret; none for public clients
    secret_hash bytea CHECK (secret_hash IS NULL OR length(secret_hash) = 32),
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    client_type text NOT NULL CHECK (client_type IN ('confidential', 'public')),
    token_endpoint_auth_method text NOT NULL
        CHECK (token_endpoint_auth_method IN ('client_secret_basic', 'client_secret_post', 'none')),
    redirect_uris text[] NOT NULL CHECK (cardinality(redirect_uris) BETWEEN 1 AND 20),
    post_logout_redirect_uris text[] NOT NULL DEFAULT '{}',
    scopes text[] NOT NULL,
    grant_types text[] NOT NULL,
    created_at timestamptz NOT NULL,
    revoked_at timestamptz,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, project_id) REFERENCES projects (tenant_id, id) ON DELETE CASCADE,
    CHECK ((client_type = 'public') = (secret_hash IS NULL)),
    CHECK ((client_type = 'public') = (token_endpoint_auth_method = 'none'))
);

ALTER TABLE oidc_clients ENABLE ROW LEVEL SECURITY;
ALTER TABLE oidc_clients FORCE ROW LEVEL SECURITY;
CREATE POLICY owner_all ON oidc_clients TO authio_owner USING (true) WITH CHECK (true);
CREATE POLICY project_scope ON oidc_clients
    USING (tenant_id = (select nullif(current_setting('authio.tenant_id', true), '')::uuid)
       AND project_id = (select nullif(current_setting('authio.project_id', true), '')::uuid))
    WITH CHECK (tenant_id = (select nullif(current_setting('authio.tenant_id', true), '')::uuid)
       AND project_id = (select nullif(current_setting('authio.project_id', true), '')::uuid));
REVOKE ALL ON oidc_clients FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE ON oidc_clients TO authio_app;


-- An authorization code of a client remembers the request (scope, nonce, when the user
-- authenticated) and, once exchanged, the session it started: a replayed code ends it.
ALTER TABLE signin_codes
    ADD COLUMN client_id text,
    ADD COLUMN scope text,
    ADD COLUMN nonce text CHECK (nonce IS NULL OR length(nonce) <= 512),
    ADD COLUMN auth_time timestamptz,
    ADD COLUMN session_id uuid;

CREATE FUNCTION authio_resolve_oidc_client(p_client_id text)
RETURNS TABLE (tenant_id uuid, project_id uuid, tenant_kind text, secret_hash bytea, client_type text,
               token_endpoint_auth_method text, redirect_uris text[], post_logout_redirect_uris text[],
               scopes text[], grant_types text[], name text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
    SELECT c.tenant_id, c.project_id, t.kind, c.secret_hash, c.client_type, c.token_endpoint_auth_method,
           c.redirect_uris, c.post_logout_redirect_uris, c.scopes, c.grant_types, c.name
    FROM public.oidc_clients c JOIN public.tenants t ON t.id = c.tenant_id
    WHERE c.client_id = p_client_id AND c.revoked_at IS NULL
$$;

-- Use a code: its row, whether it was unused (first use) or not (a replay: the caller ends the
-- session it started). Expired codes answer nothing.
CREATE FUNCTION authio_authorization_code_use(p_hash bytea, p_now timestamptz)
RETURNS TABLE (first_use boolean, tenant_id uuid, project_id uuid, user_id uuid, amr text[], redirect_uri text,
               code_challenge text, client_id text, scope text, nonce text, auth_time timestamptz, session_id uuid)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
DECLARE
    c public.signin_codes;
BEGIN
    SELECT * INTO c FROM public.signin_codes s WHERE s.code_hash = p_hash FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF c.used_at IS NOT NULL THEN
        RETURN QUERY SELECT false, c.tenant_id, c.project_id, c.user_id, c.amr, c.redirect_uri, c.code_challenge,
                            c.client_id, c.scope, c.nonce, c.auth_time, c.session_id;
        RETURN;
    END IF;
    IF c.expires_at <= p_now THEN
        RETURN;
    END IF;
    UPDATE public.signin_codes s SET used_at = p_now WHERE s.code_hash = p_hash;
    RETURN QUERY SELECT true, c.tenant_id, c.project_id, c.user_id, c.amr, c.redirect_uri, c.code_challenge,
                        c.client_id, c.scope, c.nonce, c.auth_time, c.session_id;
END
$$;

-- Remember the session a code started (for its replay).
CREATE FUNCTION authio_authorization_code_started(p_hash bytea, p_session uuid)
RETURNS void
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$ UPDATE public.signin_codes s SET session_id = p_session WHERE s.code_hash = p_hash $$;

REVOKE EXECUTE ON FUNCTION authio_resolve_oidc_client(text), authio_authorization_code_use(bytea, timestamptz),
    authio_authorization_code_started(bytea, uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION authio_resolve_oidc_client(text), authio_authorization_code_use(bytea, timestamptz),
    authio_authorization_code_started(bytea, uuid) TO authio_app;

-- A session an OpenID client started keeps the client and the granted scope: its refresh
-- tokens work only for that client, and refreshed access tokens carry the same scope.
ALTER TABLE sessions
    ADD COLUMN client_id text CHECK (client_id IS NULL OR length(client_id) <= 64),
    ADD COLUMN scope text CHECK (scope IS NULL OR length(scope) <= 512);

-- A refresh token's rotation in one call (plans cached per connection), inside the caller's
-- scoped transaction (RLS and the home fence apply: SECURITY INVOKER). Status: `ok`,
-- `invalid` (unknown), `wrong_client`, `ended` (revoked, idle, past its end, user disabled),
-- `reused` (used before, past the grace window: the session is revoked here).
CREATE FUNCTION authio_refresh_rotate(p_tenant uuid, p_project uuid, p_hash bytea, p_new_hash bytea,
                                      p_now timestamptz, p_idle_secs integer, p_grace_secs integer, p_client text)
RETURNS TABLE (status text, session_id uuid, user_id uuid, amr text[], role text, client_id text, scope text,
               within_grace boolean)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, public
AS $$
DECLARE
    tok record;
    r record;
BEGIN
    -- Token, then session, then user, each by its primary key: one join would let a stale
    -- row estimate drive the lookup from the wrong side (seen: a scan of every session).
    SELECT rt.session_id, rt.used_at INTO tok
      FROM public.refresh_tokens rt
     WHERE rt.tenant_id = p_tenant AND rt.token_hash = p_hash
       FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'invalid'::text, NULL::uuid, NULL::uuid, NULL::text[], NULL::text, NULL::text, NULL::text, false;
        RETURN;
    END IF;
    SELECT s.id AS sid, tok.used_at AS used_at, s.user_id AS uid, s.amr AS s_amr, s.revoked_at, s.idle_expires_at,
           s.absolute_expires_at, s.client_id AS s_client, s.scope AS s_scope, u.disabled, u.role AS u_role
      INTO r
      FROM public.sessions s, LATERAL (SELECT x.disabled, x.role FROM public.users x
                                       WHERE x.tenant_id = p_tenant AND x.id = s.user_id) u
     WHERE s.tenant_id = p_tenant AND s.id = tok.session_id
       FOR UPDATE OF s;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'invalid'::text, NULL::uuid, NULL::uuid, NULL::text[], NULL::text, NULL::text, NULL::text, false;
        RETURN;
    END IF;
    IF r.s_client IS DISTINCT FROM p_client THEN
        RETURN QUERY SELECT 'wrong_client'::text, NULL::uuid, NULL::uuid, NULL::text[], NULL::text, NULL::text, NULL::text, false;
        RETURN;
    END IF;
    IF r.revoked_at IS NOT NULL OR p_now >= r.idle_expires_at OR p_now >= r.absolute_expires_at OR r.disabled THEN
        RETURN QUERY SELECT 'ended'::text, r.sid, r.uid, NULL::text[], NULL::text, NULL::text, NULL::text, false;
        RETURN;
    END IF;
    IF r.used_at IS NOT NULL AND p_now - r.used_at > make_interval(secs => p_grace_secs) THEN
        UPDATE public.sessions s SET revoked_at = coalesce(s.revoked_at, p_now),
                                     revoked_reason = coalesce(s.revoked_reason, 'refresh_token_reused')
         WHERE s.tenant_id = p_tenant AND s.id = r.sid;
        RETURN QUERY SELECT 'reused'::text, r.sid, r.uid, NULL::text[], NULL::text, NULL::text, NULL::text, false;
        RETURN;
    END IF;
    IF r.used_at IS NULL THEN
        UPDATE public.refresh_tokens x SET used_at = p_now WHERE x.tenant_id = p_tenant AND x.token_hash = p_hash;
    END IF;
    UPDATE public.sessions s
       SET last_active_at = p_now,
           idle_expires_at = least(p_now + make_interval(secs => p_idle_secs), r.absolute_expires_at)
     WHERE s.tenant_id = p_tenant AND s.id = r.sid;
    INSERT INTO public.refresh_tokens (tenant_id, project_id, token_hash, session_id, created_at)
    VALUES (p_tenant, p_project, p_new_hash, r.sid, p_now);
    RETURN QUERY SELECT 'ok'::text, r.sid, r.uid, r.s_amr, r.u_role, r.s_client, r.s_scope, r.used_at IS NOT NULL;
END
$$;
REVOKE EXECUTE ON FUNCTION authio_refresh_rotate(uuid, uuid, bytea, bytea, timestamptz, integer, integer, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION authio_refresh_rotate(uuid, uuid, bytea, bytea, timestamptz, integer, integer, text) TO authio_app;
