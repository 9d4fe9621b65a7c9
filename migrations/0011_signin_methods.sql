-- Sign-in without passwords, upstream providers, hosted pages, custom domains and origins.
--
-- Pinned to the shared database for every tenant (the row-pinning matrix): one-time tokens
-- (email links, email codes, upstream OAuth state, sign-in codes handed to apps), the email
-- outbox (written in the transaction that makes the token it carries), redirect URIs, allowed
-- origins, custom domains, and project configuration (branding, methods, email templates,
-- upstream connections). At the tenant's home: the links between users and upstream
-- identities (`user_identities`), beside the users.

-- Project presentation and sign-in methods (control plane).
ALTER TABLE projects
    ADD COLUMN environment text NOT NULL DEFAULT 'production' CHECK (environment IN ('production', 'development')),
    ADD COLUMN display_name text CHECK (display_name IS NULL OR length(display_name) BETWEEN 1 AND 100),
    ADD COLUMN logo_url text CHECK (logo_url IS NULL OR (length(logo_url) <= 2048 AND logo_url LIKE 'https://%')),
    ADD COLUMN brand_color text NOT NULL DEFAULT '#3554d1' CHECK (brand_color ~ '^#[0-9a-f]{6}$'),
    ADD COLUMN email_sender_name text CHECK (email_sender_name IS NULL OR length(email_sender_name) BETWEEN 1 AND 100),
    ADD COLUMN signin_methods text[] NOT NULL DEFAULT '{password,magic_link,email_code,oauth}'
        CHECK (signin_methods <@ '{password,magic_link,email_code,oauth}'::text[]);

GRANT UPDATE (environment, display_name, logo_url, brand_color, email_sender_name, signin_methods)
    ON projects TO authio_app;

-- Per-project email templates; absent kinds use the built-in ones.
CREATE TABLE email_templates (
    tenant_id uuid NOT NULL,
    project_id uuid NOT NULL,
    kind text NOT NULL CHECK (kind IN ('magic_link', 'email_code', 'password_reset', 'email_verification')),
    subject text NOT NULL CHECK (length(subject) BETWEEN 1 AND 200),
    text_body text NOT NULL CHECK (length(text_body) BETWEEN 1 AND 20000),
    html_body text CHECK (html_body IS NULL OR length(html_body) BETWEEN 1 AND 100000),
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, project_id, kind),
    FOREIGN KEY (tenant_id, project_id) REFERENCES projects (tenant_id, id) ON DELETE CASCADE
);

CREATE TABLE redirect_uris (
    tenant_id uuid NOT NULL,
    project_id uuid NOT NULL,
    uri text NOT NULL CHECK (length(uri) BETWEEN 1 AND 2048),
    created_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, project_id, uri),
    FOREIGN KEY (tenant_id, project_id) REFERENCES projects (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX redirect_uris_project ON redirect_uris (project_id);

CREATE TABLE allowed_origins (
    tenant_id uuid NOT NULL,
    project_id uuid NOT NULL,
    origin text NOT NULL CHECK (length(origin) BETWEEN 1 AND 512),
    created_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, project_id, origin),
    FOREIGN KEY (tenant_id, project_id) REFERENCES projects (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX allowed_origins_origin ON allowed_origins (origin);

-- A host answers for one project once its TXT record is seen.
CREATE TABLE custom_domains (
    tenant_id uuid NOT NULL,
    project_id uuid NOT NULL,
    id uuid NOT NULL,
    host text NOT NULL UNIQUE CHECK (length(host) BETWEEN 3 AND 253 AND host = lower(host)),
    verification_token text NOT NULL CHECK (length(verification_token) BETWEEN 16 AND 128),
    created_at timestamptz NOT NULL,
    verified_at timestamptz,
    last_checked_at timestamptz,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, project_id) REFERENCES projects (tenant_id, id) ON DELETE CASCADE
);

-- Upstream OAuth 2.0 / OIDC providers a project's users may sign in with.
CREATE TABLE oauth_connections (
    tenant_id uuid NOT NULL,
    project_id uuid NOT NULL,
    id uuid NOT NULL,
    slug text NOT NULL CHECK (slug ~ '^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$'),
    kind text NOT NULL CHECK (kind IN ('oidc', 'google', 'microsoft', 'github')),
    display_name text NOT NULL CHECK (length(display_name) BETWEEN 1 AND 100),
    client_id text NOT NULL CHECK (length(client_id) BETWEEN 1 AND 512),
    -- sealed with the master key
    client_secret_enc text NOT NULL,
    issuer text CHECK (issuer IS NULL OR length(issuer) <= 2048),
    authorization_endpoint text NOT NULL,
    token_endpoint text NOT NULL,
    userinfo_endpoint text,
    jwks_uri text,
    scopes text[] NOT NULL,
    enabled boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (project_id, slug),
    FOREIGN KEY (tenant_id, project_id) REFERENCES projects (tenant_id, id) ON DELETE CASCADE
);

-- One-time email links: magic links, password resets, email verification. The token is
-- the only context, so the row says everything the link's use needs.
CREATE TABLE email_links (
    tenant_id uuid NOT NULL,
    project_id uuid NOT NULL,
    token_hash bytea NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    purpose text NOT NULL CHECK (purpose IN ('magic_link', 'password_reset', 'email_verification')),
    email text NOT NULL,
    -- where the hosted flow returns, with the app's state and PKCE challenge
    redirect_uri text,
    app_state text CHECK (app_state IS NULL OR length(app_state) <= 512),
    code_challenge text CHECK (code_challenge IS NULL OR length(code_challenge) = 43),
    -- SHA-256 of a verifier only the browser that asked holds (optional)
    browser_binding bytea CHECK (browser_binding IS NULL OR length(browser_binding) = 32),
    created_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    used_at timestamptz,
    PRIMARY KEY (tenant_id, token_hash),
    FOREIGN KEY (tenant_id, project_id) REFERENCES projects (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX email_links_expiry ON email_links (expires_at);

-- Email one-time codes: a MAC of the code (keyed by a key derived from the master key), the
-- attempts made, one live challenge per project and email.
CREATE TABLE email_codes (
    tenant_id uuid NOT NULL,
    project_id uuid NOT NULL,
    id uuid NOT NULL UNIQUE,
    email text NOT NULL,
    code_mac bytea NOT NULL CHECK (length(code_mac) = 32),
    attempts integer NOT NULL DEFAULT 0,
    redirect_uri text,
    app_state text CHECK (app_state IS NULL OR length(app_state) <= 512),
    code_challenge text CHECK (code_challenge IS NULL OR length(code_challenge) = 43),
    created_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    used_at timestamptz,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, project_id) REFERENCES projects (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX email_codes_email ON email_codes (tenant_id, project_id, email);
CREATE INDEX email_codes_expiry ON email_codes (expires_at);

-- Upstream authorization requests in flight: state, nonce and the PKCE verifier (sealed).
CREATE TABLE oauth_states (
    tenant_id uuid NOT NULL,
    project_id uuid NOT NULL,
    state_hash bytea NOT NULL UNIQUE CHECK (length(state_hash) = 32),
    connection_id uuid NOT NULL,
    nonce text NOT NULL,
    pkce_verifier_enc text NOT NULL,
    browser_binding bytea NOT NULL CHECK (length(browser_binding) = 32),
    redirect_uri text,
    app_state text CHECK (app_state IS NULL OR length(app_state) <= 512),
    code_challenge text CHECK (code_challenge IS NULL OR length(code_challenge) = 43),
    created_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    used_at timestamptz,
    PRIMARY KEY (tenant_id, state_hash),
    FOREIGN KEY (tenant_id, project_id) REFERENCES projects (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX oauth_states_expiry ON oauth_states (expires_at);

-- Sign-in codes: how a hosted sign-in hands the signed-in user to the app (exchanged once at
-- the token endpoint, bound to the redirect URI and, when given, a PKCE S256 challenge).
CREATE TABLE signin_codes (
    tenant_id uuid NOT NULL,
    project_id uuid NOT NULL,
    code_hash bytea NOT NULL UNIQUE CHECK (length(code_hash) = 32),
    user_id uuid NOT NULL,
    amr text[] NOT NULL,
    redirect_uri text NOT NULL,
    code_challenge text CHECK (code_challenge IS NULL OR length(code_challenge) = 43),
    created_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    used_at timestamptz,
    PRIMARY KEY (tenant_id, code_hash),
    FOREIGN KEY (tenant_id, project_id) REFERENCES projects (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX signin_codes_expiry ON signin_codes (expires_at);

-- Email outbox: sealed messages, written with what they announce, sent by any node, deleted
-- once sent (so the links they carry do not linger).
CREATE TABLE email_outbox (
    tenant_id uuid NOT NULL,
    project_id uuid NOT NULL,
    id uuid NOT NULL UNIQUE,
    to_hash bytea NOT NULL CHECK (length(to_hash) = 32),
    message_enc text NOT NULL,
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL,
    last_error text,
    created_at timestamptz NOT NULL,
    failed_at timestamptz,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, project_id) REFERENCES projects (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX email_outbox_due ON email_outbox (next_attempt_at) WHERE failed_at IS NULL;

-- At home: which upstream identity is which user.
CREATE TABLE user_identities (
    tenant_id uuid NOT NULL,
    project_id uuid NOT NULL,
    id uuid NOT NULL,
    user_id uuid NOT NULL,
    connection_id uuid NOT NULL,
    subject text NOT NULL CHECK (length(subject) BETWEEN 1 AND 512),
    email text,
    created_at timestamptz NOT NULL,
    last_used_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, project_id, connection_id, subject),
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id) ON DELETE CASCADE
);

ALTER TABLE email_templates ENABLE ROW LEVEL SECURITY;
ALTER TABLE email_templates FORCE ROW LEVEL SECURITY;
ALTER TABLE redirect_uris ENABLE ROW LEVEL SECURITY;
ALTER TABLE redirect_uris FORCE ROW LEVEL SECURITY;
ALTER TABLE allowed_origins ENABLE ROW LEVEL SECURITY;
ALTER TABLE allowed_origins FORCE ROW LEVEL SECURITY;
ALTER TABLE custom_domains ENABLE ROW LEVEL SECURITY;
ALTER TABLE custom_domains FORCE ROW LEVEL SECURITY;
ALTER TABLE oauth_connections ENABLE ROW LEVEL SECURITY;
ALTER TABLE oauth_connections FORCE ROW LEVEL SECURITY;
ALTER TABLE email_links ENABLE ROW LEVEL SECURITY;
ALTER TABLE email_links FORCE ROW LEVEL SECURITY;
ALTER TABLE email_codes ENABLE ROW LEVEL SECURITY;
ALTER TABLE email_codes FORCE ROW LEVEL SECURITY;
ALTER TABLE oauth_states ENABLE ROW LEVEL SECURITY;
ALTER TABLE oauth_states FORCE ROW LEVEL SECURITY;
ALTER TABLE signin_codes ENABLE ROW LEVEL SECURITY;
ALTER TABLE signin_codes FORCE ROW LEVEL SECURITY;
ALTER TABLE email_outbox ENABLE ROW LEVEL SECURITY;
ALTER TABLE email_outbox FORCE ROW LEVEL SECURITY;
ALTER TABLE user_identities ENABLE ROW LEVEL SECURITY;
ALTER TABLE user_identities FORCE ROW LEVEL SECURITY;

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['email_templates', 'redirect_uris', 'allowed_origins', 'custom_domains',
                             'oauth_connections', 'email_links', 'email_codes', 'oauth_states',
                             'signin_codes', 'email_outbox', 'user_identities'] LOOP
        EXECUTE format('CREATE POLICY owner_all ON %I TO authio_owner USING (true) WITH CHECK (true)', t);
    END LOOP;
    -- Pinned tables: the project scope, no home fence.
    FOREACH t IN ARRAY ARRAY['email_templates', 'redirect_uris', 'allowed_origins', 'custom_domains',
                             'oauth_connections', 'email_links', 'email_codes', 'oauth_states',
                             'signin_codes', 'email_outbox'] LOOP
        EXECUTE format($p$CREATE POLICY project_scope ON %I
            USING (tenant_id = (select nullif(current_setting('authio.tenant_id', true), '')::uuid)
               AND project_id = (select nullif(current_setting('authio.project_id', true), '')::uuid))
            WITH CHECK (tenant_id = (select nullif(current_setting('authio.tenant_id', true), '')::uuid)
               AND project_id = (select nullif(current_setting('authio.project_id', true), '')::uuid))$p$, t);
    END LOOP;
END
$$;

CREATE POLICY project_scope_at_home ON user_identities
    USING (tenant_id = (select nullif(current_setting('authio.tenant_id', true), '')::uuid)
       AND project_id = (select nullif(current_setting('authio.project_id', true), '')::uuid)
       AND (select authio_tenant_at_home(nullif(current_setting('authio.tenant_id', true), '')::uuid)))
    WITH CHECK (tenant_id = (select nullif(current_setting('authio.tenant_id', true), '')::uuid)
       AND project_id = (select nullif(current_setting('authio.project_id', true), '')::uuid)
       AND (select authio_tenant_at_home(nullif(current_setting('authio.tenant_id', true), '')::uuid)));

REVOKE ALL ON email_templates, redirect_uris, allowed_origins, custom_domains, oauth_connections, email_links,
    email_codes, oauth_states, signin_codes, email_outbox, user_identities FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON email_templates, redirect_uris, allowed_origins, oauth_connections
    TO authio_app;
GRANT SELECT, INSERT, DELETE ON custom_domains TO authio_app;
GRANT UPDATE (verified_at, last_checked_at) ON custom_domains TO authio_app;
-- One-time tokens are written scoped and consumed only through the functions below.
GRANT INSERT ON email_links, oauth_states, signin_codes, email_outbox TO authio_app;
GRANT INSERT, DELETE ON email_codes TO authio_app;
-- A new code replaces the live one: the DELETE finds it by email (never reads the MAC).
GRANT SELECT (tenant_id, project_id, id, email) ON email_codes TO authio_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON user_identities TO authio_app;

-- Pre-resolution lookups (see crates/authio-db/src/preresolve.rs for why each is on shared).

-- How a project presents itself on its hosted pages and in its emails.
CREATE FUNCTION authio_project_presentation(p_project uuid)
RETURNS TABLE (tenant_id uuid, name text, display_name text, logo_url text, brand_color text,
               email_sender_name text, signin_methods text[], environment text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
    SELECT p.tenant_id, p.name, p.display_name, p.logo_url, p.brand_color, p.email_sender_name,
           p.signin_methods, p.environment
    FROM public.projects p WHERE p.id = p_project
$$;

CREATE FUNCTION authio_project_redirect_uris(p_project uuid)
RETURNS SETOF text
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$ SELECT r.uri FROM public.redirect_uris r WHERE r.project_id = p_project $$;

CREATE FUNCTION authio_origin_allowed(p_project uuid, p_origin text)
RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$ SELECT EXISTS (SELECT 1 FROM public.allowed_origins o WHERE o.project_id = p_project AND o.origin = p_origin) $$;

-- A CORS preflight names no project: is the origin any project's?
CREATE FUNCTION authio_origin_known(p_origin text)
RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$ SELECT EXISTS (SELECT 1 FROM public.allowed_origins o WHERE o.origin = p_origin) $$;

CREATE FUNCTION authio_resolve_domain(p_host text)
RETURNS TABLE (tenant_id uuid, project_id uuid)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
    SELECT d.tenant_id, d.project_id FROM public.custom_domains d
    WHERE d.host = p_host AND d.verified_at IS NOT NULL
$$;

-- Use an email link once: only unexpired, unused, and (if bound) from the browser that asked.
CREATE FUNCTION authio_email_link_use(p_hash bytea, p_purpose text, p_binding bytea, p_now timestamptz)
RETURNS TABLE (tenant_id uuid, project_id uuid, email text, redirect_uri text, app_state text,
               code_challenge text)
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
    UPDATE public.email_links l SET used_at = p_now
    WHERE l.token_hash = p_hash AND l.purpose = p_purpose AND l.used_at IS NULL AND l.expires_at > p_now
      AND (l.browser_binding IS NULL OR l.browser_binding = p_binding)
    RETURNING l.tenant_id, l.project_id, l.email, l.redirect_uri, l.app_state, l.code_challenge
$$;

-- Whether a link is live (the hosted page shows a form before using it), without using it.
CREATE FUNCTION authio_email_link_live(p_hash bytea, p_purpose text, p_now timestamptz)
RETURNS TABLE (project_id uuid, email text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
    SELECT l.project_id, l.email FROM public.email_links l
    WHERE l.token_hash = p_hash AND l.purpose = p_purpose AND l.used_at IS NULL AND l.expires_at > p_now
$$;

-- One attempt at an email code: counted before the code is compared (by the caller, in
-- constant time). 'locked' once p_max attempts were made; nothing for unknown, used or
-- expired challenges.
CREATE FUNCTION authio_email_code_attempt(p_id uuid, p_max integer, p_now timestamptz)
RETURNS TABLE (status text, tenant_id uuid, project_id uuid, email text, code_mac bytea, redirect_uri text,
               app_state text, code_challenge text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
DECLARE
    c public.email_codes;
BEGIN
    SELECT * INTO c FROM public.email_codes e
    WHERE e.id = p_id AND e.used_at IS NULL AND e.expires_at > p_now FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF c.attempts >= p_max THEN
        RETURN QUERY SELECT 'locked'::text, c.tenant_id, c.project_id, c.email, c.code_mac, c.redirect_uri,
                            c.app_state, c.code_challenge;
        RETURN;
    END IF;
    UPDATE public.email_codes e SET attempts = e.attempts + 1 WHERE e.id = p_id;
    RETURN QUERY SELECT 'open'::text, c.tenant_id, c.project_id, c.email, c.code_mac, c.redirect_uri,
                        c.app_state, c.code_challenge;
END
$$;

CREATE FUNCTION authio_email_code_use(p_id uuid, p_now timestamptz)
RETURNS boolean
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
    WITH used AS (
        UPDATE public.email_codes e SET used_at = p_now
        WHERE e.id = p_id AND e.used_at IS NULL AND e.expires_at > p_now RETURNING 1
    ) SELECT EXISTS (SELECT 1 FROM used)
$$;

CREATE FUNCTION authio_oauth_state_use(p_hash bytea, p_now timestamptz)
RETURNS TABLE (tenant_id uuid, project_id uuid, connection_id uuid, nonce text, pkce_verifier_enc text,
               browser_binding bytea, redirect_uri text, app_state text, code_challenge text)
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
    UPDATE public.oauth_states s SET used_at = p_now
    WHERE s.state_hash = p_hash AND s.used_at IS NULL AND s.expires_at > p_now
    RETURNING s.tenant_id, s.project_id, s.connection_id, s.nonce, s.pkce_verifier_enc, s.browser_binding,
              s.redirect_uri, s.app_state, s.code_challenge
$$;

-- The mail sender: take due messages under a lease (a sender that dies leaves them due again
-- when the lease ends), then mark each sent (deleted) or failed (retried with backoff, or
-- given up after the last attempt: the sealed message is dropped, the row kept as a record).
CREATE FUNCTION authio_mail_take(p_limit integer, p_now timestamptz, p_lease_secs integer)
RETURNS TABLE (tenant_id uuid, project_id uuid, id uuid, message_enc text, attempts integer)
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
    WITH due AS (
        SELECT o.id FROM public.email_outbox o
        WHERE o.failed_at IS NULL AND o.next_attempt_at <= p_now
        ORDER BY o.next_attempt_at LIMIT p_limit FOR UPDATE SKIP LOCKED
    )
    UPDATE public.email_outbox o SET next_attempt_at = p_now + make_interval(secs => p_lease_secs)
    FROM due WHERE o.id = due.id
    RETURNING o.tenant_id, o.project_id, o.id, o.message_enc, o.attempts
$$;

CREATE FUNCTION authio_mail_sent(p_id uuid)
RETURNS void
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$ DELETE FROM public.email_outbox o WHERE o.id = p_id $$;

CREATE FUNCTION authio_mail_failed(p_id uuid, p_error text, p_next timestamptz, p_give_up boolean, p_now timestamptz)
RETURNS void
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
    UPDATE public.email_outbox o
       SET attempts = o.attempts + 1, last_error = left(p_error, 500), next_attempt_at = p_next,
           failed_at = CASE WHEN p_give_up THEN p_now END,
           message_enc = CASE WHEN p_give_up THEN '' ELSE o.message_enc END
     WHERE o.id = p_id
$$;

-- Spent and expired one-time tokens are dead weight: drop those a day past their end.
CREATE FUNCTION authio_one_time_gc(p_now timestamptz)
RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
DECLARE
    n integer := 0;
    m integer;
BEGIN
    DELETE FROM public.email_links WHERE expires_at < p_now - interval '1 day';
    GET DIAGNOSTICS m = ROW_COUNT; n := n + m;
    DELETE FROM public.email_codes WHERE expires_at < p_now - interval '1 day';
    GET DIAGNOSTICS m = ROW_COUNT; n := n + m;
    DELETE FROM public.oauth_states WHERE expires_at < p_now - interval '1 day';
    GET DIAGNOSTICS m = ROW_COUNT; n := n + m;
    DELETE FROM public.signin_codes WHERE expires_at < p_now - interval '1 day';
    GET DIAGNOSTICS m = ROW_COUNT; n := n + m;
    DELETE FROM public.email_outbox WHERE failed_at < p_now - interval '30 days';
    GET DIAGNOSTICS m = ROW_COUNT; n := n + m;
    RETURN n;
END
$$;

REVOKE EXECUTE ON FUNCTION authio_project_presentation(uuid), authio_project_redirect_uris(uuid),
    authio_origin_allowed(uuid, text), authio_origin_known(text), authio_resolve_domain(text),
    authio_email_link_use(bytea, text, bytea, timestamptz), authio_email_link_live(bytea, text, timestamptz),
    authio_email_code_attempt(uuid, integer, timestamptz), authio_email_code_use(uuid, timestamptz),
    authio_oauth_state_use(bytea, timestamptz),
    authio_mail_take(integer, timestamptz, integer), authio_mail_sent(uuid),
    authio_mail_failed(uuid, text, timestamptz, boolean, timestamptz), authio_one_time_gc(timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION authio_project_presentation(uuid), authio_project_redirect_uris(uuid),
    authio_origin_allowed(uuid, text), authio_origin_known(text), authio_resolve_domain(text),
    authio_email_link_use(bytea, text, bytea, timestamptz), authio_email_link_live(bytea, text, timestamptz),
    authio_email_code_attempt(uuid, integer, timestamptz), authio_email_code_use(uuid, timestamptz),
    authio_oauth_state_use(bytea, timestamptz),
    authio_mail_take(integer, timestamptz, integer), authio_mail_sent(uuid),
    authio_mail_failed(uuid, text, timestamptz, boolean, timestamptz), authio_one_time_gc(timestamptz) TO authio_app;
