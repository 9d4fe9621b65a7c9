-- Identity core: passwords, project token settings, signing keys, M2M clients, sessions and
-- refresh tokens, revoked access tokens, rate-limit counters.
-- Applied alike to the shared database and to every dedicated database, as authio_owner.

-- Passwords (Argon2id PHC strings) and an optional role, carried as the `role` claim. On the
-- platform tenant, role 'operator' is what the management API accepts from a platform token.
ALTER TABLE users
    ADD COLUMN password_hash text CHECK (password_hash IS NULL OR password_hash LIKE '$argon2id$%'),
    ADD COLUMN role text CHECK (role IS NULL OR length(role) BETWEEN 1 AND 64);

-- Per-project token settings (control plane, on shared).
ALTER TABLE projects
    ADD COLUMN signing_alg text NOT NULL DEFAULT 'EdDSA' CHECK (signing_alg IN ('EdDSA', 'ES256', 'RS256')),
    ADD COLUMN access_token_ttl_secs integer NOT NULL DEFAULT 900 CHECK (access_token_ttl_secs BETWEEN 60 AND 86400),
    ADD COLUMN session_idle_timeout_secs integer NOT NULL DEFAULT 604800
        CHECK (session_idle_timeout_secs BETWEEN 300 AND 31536000),
    ADD COLUMN session_absolute_timeout_secs integer NOT NULL DEFAULT 2592000
        CHECK (session_absolute_timeout_secs BETWEEN 300 AND 31536000),
    ADD COLUMN refresh_grace_secs integer NOT NULL DEFAULT 10 CHECK (refresh_grace_secs BETWEEN 0 AND 120);

-- Signing keys: pinned to the shared database for every tenant (a JWT minted before a move
-- verifies after it). One current and at most one next key per project; retired keys stay
-- published until `publish_until` (the longest lifetime of a token they may have signed).
CREATE TABLE signing_keys (
    tenant_id uuid NOT NULL,
    project_id uuid NOT NULL,
    kid text NOT NULL UNIQUE,
    alg text NOT NULL CHECK (alg IN ('EdDSA', 'ES256', 'RS256')),
    public_jwk jsonb NOT NULL,
    -- PKCS#8, encrypted with the master key
    private_key_enc text NOT NULL,
    state text NOT NULL CHECK (state IN ('next', 'current', 'retired')),
    created_at timestamptz NOT NULL DEFAULT now(),
    activated_at timestamptz,
    retired_at timestamptz,
    publish_until timestamptz,
    PRIMARY KEY (tenant_id, kid),
    FOREIGN KEY (tenant_id, project_id) REFERENCES projects (tenant_id, id)
);
CREATE UNIQUE INDEX signing_keys_one_current ON signing_keys (project_id) WHERE state = 'current';
CREATE UNIQUE INDEX signing_keys_one_next ON signing_keys (project_id) WHERE state = 'next';

-- M2M clients: pinned to the shared database (the token endpoint resolves the project from
-- the client id).
CREATE TABLE m2m_clients (
    tenant_id uuid NOT NULL,
    project_id uuid NOT NULL,
    id uuid NOT NULL,
    client_id text NOT NULL UNIQUE,
    secret_hash bytea NOT NULL CHECK (length(secret_hash) = 32),
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    scopes text[] NOT NULL DEFAULT '{}',
    audience text NOT NULL CHECK (length(audience) BETWEEN 1 AND 512),
    token_ttl_secs integer NOT NULL DEFAULT 3600 CHECK (token_ttl_secs BETWEEN 60 AND 86400),
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, project_id) REFERENCES projects (tenant_id, id)
);

-- Per-IP and per-account counters: pinned to the shared database (they run before the
-- project's home is known, and must hold across every node). Fixed windows.
CREATE TABLE rate_limit_counters (
    bucket text NOT NULL,
    key text NOT NULL,
    window_start timestamptz NOT NULL,
    hits integer NOT NULL,
    PRIMARY KEY (bucket, key)
);

-- Sessions, refresh tokens and revoked access tokens: at the tenant's home.
CREATE TABLE sessions (
    tenant_id uuid NOT NULL,
    project_id uuid NOT NULL,
    id uuid NOT NULL,
    user_id uuid NOT NULL,
    amr text[] NOT NULL,
    ip text,
    user_agent text CHECK (user_agent IS NULL OR length(user_agent) <= 512),
    created_at timestamptz NOT NULL,
    last_active_at timestamptz NOT NULL,
    idle_expires_at timestamptz NOT NULL,
    absolute_expires_at timestamptz NOT NULL,
    revoked_at timestamptz,
    revoked_reason text,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX sessions_user ON sessions (tenant_id, project_id, user_id, id);

CREATE TABLE refresh_tokens (
    tenant_id uuid NOT NULL,
    project_id uuid NOT NULL,
    token_hash bytea NOT NULL CHECK (length(token_hash) = 32),
    session_id uuid NOT NULL,
    created_at timestamptz NOT NULL,
    used_at timestamptz,
    PRIMARY KEY (tenant_id, token_hash),
    FOREIGN KEY (tenant_id, session_id) REFERENCES sessions (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX refresh_tokens_session ON refresh_tokens (tenant_id, session_id);

CREATE TABLE revoked_access_tokens (
    tenant_id uuid NOT NULL,
    project_id uuid NOT NULL,
    jti uuid NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, jti)
);

ALTER TABLE signing_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE signing_keys FORCE ROW LEVEL SECURITY;
ALTER TABLE m2m_clients ENABLE ROW LEVEL SECURITY;
ALTER TABLE m2m_clients FORCE ROW LEVEL SECURITY;
ALTER TABLE rate_limit_counters ENABLE ROW LEVEL SECURITY;
ALTER TABLE rate_limit_counters FORCE ROW LEVEL SECURITY;
ALTER TABLE sessions ENABLE ROW LEVEL SECURITY;
ALTER TABLE sessions FORCE ROW LEVEL SECURITY;
ALTER TABLE refresh_tokens ENABLE ROW LEVEL SECURITY;
ALTER TABLE refresh_tokens FORCE ROW LEVEL SECURITY;
ALTER TABLE revoked_access_tokens ENABLE ROW LEVEL SECURITY;
ALTER TABLE revoked_access_tokens FORCE ROW LEVEL SECURITY;

CREATE POLICY owner_all ON signing_keys TO authio_owner USING (true) WITH CHECK (true);
CREATE POLICY owner_all ON m2m_clients TO authio_owner USING (true) WITH CHECK (true);
CREATE POLICY owner_all ON rate_limit_counters TO authio_owner USING (true) WITH CHECK (true);
CREATE POLICY owner_all ON sessions TO authio_owner USING (true) WITH CHECK (true);
CREATE POLICY owner_all ON refresh_tokens TO authio_owner USING (true) WITH CHECK (true);
CREATE POLICY owner_all ON revoked_access_tokens TO authio_owner USING (true) WITH CHECK (true);

-- Pinned tables: the project scope, no home fence (their rows stay on shared).
CREATE POLICY project_scope ON signing_keys
    USING (tenant_id = (select nullif(current_setting('authio.tenant_id', true), '')::uuid)
       AND project_id = (select nullif(current_setting('authio.project_id', true), '')::uuid))
    WITH CHECK (tenant_id = (select nullif(current_setting('authio.tenant_id', true), '')::uuid)
       AND project_id = (select nullif(current_setting('authio.project_id', true), '')::uuid));
CREATE POLICY project_scope ON m2m_clients
    USING (tenant_id = (select nullif(current_setting('authio.tenant_id', true), '')::uuid)
       AND project_id = (select nullif(current_setting('authio.project_id', true), '')::uuid))
    WITH CHECK (tenant_id = (select nullif(current_setting('authio.tenant_id', true), '')::uuid)
       AND project_id = (select nullif(current_setting('authio.project_id', true), '')::uuid));

-- Home tables: the project scope and the home fence.
CREATE POLICY project_scope_at_home ON sessions
    USING (tenant_id = (select nullif(current_setting('authio.tenant_id', true), '')::uuid)
       AND project_id = (select nullif(current_setting('authio.project_id', true), '')::uuid)
       AND (select authio_tenant_at_home(nullif(current_setting('authio.tenant_id', true), '')::uuid)))
    WITH CHECK (tenant_id = (select nullif(current_setting('authio.tenant_id', true), '')::uuid)
       AND project_id = (select nullif(current_setting('authio.project_id', true), '')::uuid)
       AND (select authio_tenant_at_home(nullif(current_setting('authio.tenant_id', true), '')::uuid)));
CREATE POLICY project_scope_at_home ON refresh_tokens
    USING (tenant_id = (select nullif(current_setting('authio.tenant_id', true), '')::uuid)
       AND project_id = (select nullif(current_setting('authio.project_id', true), '')::uuid)
       AND (select authio_tenant_at_home(nullif(current_setting('authio.tenant_id', true), '')::uuid)))
    WITH CHECK (tenant_id = (select nullif(current_setting('authio.tenant_id', true), '')::uuid)
       AND project_id = (select nullif(current_setting('authio.project_id', true), '')::uuid)
       AND (select authio_tenant_at_home(nullif(current_setting('authio.tenant_id', true), '')::uuid)));
CREATE POLICY project_scope_at_home ON revoked_access_tokens
    USING (tenant_id = (select nullif(current_setting('authio.tenant_id', true), '')::uuid)
       AND project_id = (select nullif(current_setting('authio.project_id', true), '')::uuid)
       AND (select authio_tenant_at_home(nullif(current_setting('authio.tenant_id', true), '')::uuid)))
    WITH CHECK (tenant_id = (select nullif(current_setting('authio.tenant_id', true), '')::uuid)
       AND project_id = (select nullif(current_setting('authio.project_id', true), '')::uuid)
       AND (select authio_tenant_at_home(nullif(current_setting('authio.tenant_id', true), '')::uuid)));

-- Pre-resolution lookups.

-- A project's tenant and token settings: resolves every end-user request that names a project
-- (sign-up, sign-in, refresh, JWKS).
-- The lookups on every request's path are plpgsql (their plans are cached per connection; a
-- SQL function that is not inlined, and SECURITY DEFINER ones never are, is planned on every
-- call in PostgreSQL 15) and have no `SET search_path` clause (a GUC save and restore per
-- call): every name in them is schema-qualified instead, operators included.
CREATE FUNCTION authio_project_profile(p_project uuid)
RETURNS TABLE (tenant_id uuid, tenant_kind text, signing_alg text, access_token_ttl_secs integer,
               session_idle_timeout_secs integer, session_absolute_timeout_secs integer,
               refresh_grace_secs integer)
LANGUAGE plpgsql STABLE SECURITY DEFINER
AS $$
BEGIN
    RETURN QUERY
    SELECT p.tenant_id, t.kind, p.signing_alg, p.access_token_ttl_secs, p.session_idle_timeout_secs,
           p.session_absolute_timeout_secs, p.refresh_grace_secs
    FROM public.projects p JOIN public.tenants t ON t.id OPERATOR(pg_catalog.=) p.tenant_id
    WHERE p.id OPERATOR(pg_catalog.=) p_project;
END
$$;

-- A project's published keys (current, next, and retired ones still within publish_until).
CREATE FUNCTION authio_project_signing_keys(p_project uuid, p_now timestamptz)
RETURNS TABLE (kid text, alg text, public_jwk jsonb, private_key_enc text, state text,
               publish_until timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
    SELECT k.kid, k.alg, k.public_jwk, k.private_key_enc, k.state, k.publish_until
    FROM public.signing_keys k
    WHERE k.project_id = p_project
      AND (k.state <> 'retired' OR k.publish_until > p_now)
    ORDER BY k.created_at
$$;

CREATE FUNCTION authio_resolve_m2m_client(p_client_id text)
RETURNS TABLE (tenant_id uuid, project_id uuid, tenant_kind text, secret_hash bytea, scopes text[],
               audience text, token_ttl_secs integer)
LANGUAGE plpgsql STABLE SECURITY DEFINER
AS $$
BEGIN
    RETURN QUERY
    SELECT c.tenant_id, c.project_id, t.kind, c.secret_hash, c.scopes, c.audience, c.token_ttl_secs
    FROM public.m2m_clients c JOIN public.tenants t ON t.id OPERATOR(pg_catalog.=) c.tenant_id
    WHERE c.client_id OPERATOR(pg_catalog.=) p_client_id AND c.revoked_at IS NULL;
END
$$;

-- The API-key lookup of the foundation, in the same form (it runs on every management call).
CREATE OR REPLACE FUNCTION authio_resolve_api_key(p_key_id text)
RETURNS TABLE (tenant_id uuid, project_id uuid, key_uuid uuid, secret_hash bytea, tenant_kind text)
LANGUAGE plpgsql STABLE SECURITY DEFINER
AS $$
BEGIN
    RETURN QUERY
    SELECT k.tenant_id, k.project_id, k.id, k.secret_hash, t.kind
    FROM public.api_keys k JOIN public.tenants t ON t.id OPERATOR(pg_catalog.=) k.tenant_id
    WHERE k.key_id OPERATOR(pg_catalog.=) p_key_id AND k.revoked_at IS NULL;
END
$$;
ALTER FUNCTION authio_resolve_api_key(text) RESET ALL;

-- Count one hit in a fixed window and return the hits so far and when the window ends.
CREATE FUNCTION authio_rate_hit(p_bucket text, p_key text, p_window_secs integer, p_now timestamptz)
RETURNS TABLE (hits integer, window_ends timestamptz)
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
    INSERT INTO public.rate_limit_counters AS c (bucket, key, window_start, hits)
    VALUES (p_bucket, p_key, p_now, 1)
    ON CONFLICT (bucket, key) DO UPDATE
       SET window_start = CASE WHEN c.window_start + make_interval(secs => p_window_secs) <= p_now
                               THEN p_now ELSE c.window_start END,
           hits = CASE WHEN c.window_start + make_interval(secs => p_window_secs) <= p_now
                       THEN 1 ELSE c.hits + 1 END
    RETURNING c.hits, c.window_start + make_interval(secs => p_window_secs)
$$;

-- The hits in the current window, without counting one.
CREATE FUNCTION authio_rate_peek(p_bucket text, p_key text, p_window_secs integer, p_now timestamptz)
RETURNS TABLE (hits integer, window_ends timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
    SELECT c.hits, c.window_start + make_interval(secs => p_window_secs)
    FROM public.rate_limit_counters c
    WHERE c.bucket = p_bucket AND c.key = p_key
      AND c.window_start + make_interval(secs => p_window_secs) > p_now
$$;

CREATE FUNCTION authio_rate_reset(p_bucket text, p_key text)
RETURNS void
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$ DELETE FROM public.rate_limit_counters c WHERE c.bucket = p_bucket AND c.key = p_key $$;

-- Old windows are dead weight: drop those that ended a day ago (called by `serve` periodically).
CREATE FUNCTION authio_rate_gc(p_now timestamptz)
RETURNS integer
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
    WITH gone AS (
        DELETE FROM public.rate_limit_counters c WHERE c.window_start < p_now - interval '1 day' RETURNING 1
    ) SELECT count(*)::integer FROM gone
$$;

-- Nodes cache clients, API keys, signing keys and project settings; a change tells them at once (NOTIFY is a
-- hint: caches also expire).
CREATE FUNCTION authio_cache_notify() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, public
AS $$
DECLARE
    r record;
BEGIN
    IF TG_OP = 'DELETE' THEN r := OLD; ELSE r := NEW; END IF;
    IF TG_TABLE_NAME = 'm2m_clients' THEN
        PERFORM pg_notify('authio_cache', 'client:' || r.client_id);
    ELSIF TG_TABLE_NAME = 'api_keys' THEN
        PERFORM pg_notify('authio_cache', 'apikey:' || r.key_id);
    ELSIF TG_TABLE_NAME = 'signing_keys' THEN
        PERFORM pg_notify('authio_cache', 'keys:' || r.project_id::text);
    ELSIF TG_TABLE_NAME = 'projects' THEN
        PERFORM pg_notify('authio_cache', 'project:' || r.id::text);
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER m2m_clients_cache_notify AFTER UPDATE OR DELETE ON m2m_clients
    FOR EACH ROW EXECUTE FUNCTION authio_cache_notify();
CREATE TRIGGER api_keys_cache_notify AFTER UPDATE OR DELETE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION authio_cache_notify();
CREATE TRIGGER signing_keys_cache_notify AFTER INSERT OR UPDATE OR DELETE ON signing_keys
    FOR EACH ROW EXECUTE FUNCTION authio_cache_notify();
CREATE TRIGGER projects_cache_notify AFTER UPDATE ON projects
    FOR EACH ROW EXECUTE FUNCTION authio_cache_notify();

REVOKE ALL ON signing_keys, m2m_clients, rate_limit_counters, sessions, refresh_tokens, revoked_access_tokens FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION authio_project_profile(uuid), authio_project_signing_keys(uuid, timestamptz),
    authio_resolve_m2m_client(text), authio_rate_hit(text, text, integer, timestamptz),
    authio_rate_peek(text, text, integer, timestamptz), authio_rate_reset(text, text),
    authio_rate_gc(timestamptz) FROM PUBLIC;

-- Project settings the API may change (scoped by the projects policy, narrowed by column).
GRANT UPDATE (signing_alg, access_token_ttl_secs, session_idle_timeout_secs, session_absolute_timeout_secs,
              refresh_grace_secs) ON projects TO authio_app;
GRANT SELECT, INSERT ON signing_keys TO authio_app;
GRANT SELECT, INSERT, UPDATE ON m2m_clients TO authio_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON sessions, refresh_tokens, revoked_access_tokens TO authio_app;
GRANT EXECUTE ON FUNCTION authio_project_profile(uuid), authio_project_signing_keys(uuid, timestamptz),
    authio_resolve_m2m_client(text), authio_rate_hit(text, text, integer, timestamptz),
    authio_rate_peek(text, text, integer, timestamptz), authio_rate_reset(text, text),
    authio_rate_gc(timestamptz) TO authio_app;
