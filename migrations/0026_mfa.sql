-- Multi-factor authentication: a user's second factors (TOTP authenticators, passkeys and
-- security keys), recovery codes, sign-ins waiting for their second factor, and WebAuthn
-- ceremonies under way. All at the tenant's home, moving with it. Policy: per project
-- (`projects.mfa_policy`, on the shared database with the project's other settings) and per
-- organization (`organizations.mfa_required`, at the home).
ALTER TABLE projects ADD COLUMN mfa_policy text NOT NULL DEFAULT 'optional'
    CHECK (mfa_policy IN ('optional', 'required'));
GRANT UPDATE (mfa_policy) ON projects TO authio_app;
-- Passkey sign-in (a discoverable WebAuthn credential with user verification) is a method.
ALTER TABLE projects DROP CONSTRAINT projects_signin_methods_check,
    ADD CONSTRAINT projects_signin_methods_check
        CHECK (signin_methods <@ '{password,magic_link,email_code,oauth,passkey}'::text[]);

DROP FUNCTION authio_project_presentation(uuid);
CREATE FUNCTION authio_project_presentation(p_project uuid)
RETURNS TABLE (tenant_id uuid, name text, display_name text, logo_url text, brand_color text,
               email_sender_name text, signin_methods text[], environment text, signup_policy text,
               signup_domains text[], mfa_policy text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
    SELECT p.tenant_id, p.name, p.display_name, p.logo_url, p.brand_color, p.email_sender_name,
           p.signin_methods, p.environment, p.signup_policy, p.signup_domains, p.mfa_policy
    FROM public.projects p WHERE p.id = p_project
$$;
REVOKE EXECUTE ON FUNCTION authio_project_presentation(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION authio_project_presentation(uuid) TO authio_app;

ALTER TABLE organizations ADD COLUMN mfa_required boolean NOT NULL DEFAULT false;

-- A second factor. TOTP: the secret sealed under the master key and the last time step used
-- (a code of that step or an earlier one is refused: no replay). WebAuthn: the credential id,
-- its public key as the relying-party library keeps it, and the authenticator's sign count.
-- A TOTP factor is unconfirmed until a code from it has been checked.
CREATE TABLE mfa_factors (
    tenant_id uuid NOT NULL,
    project_id uuid NOT NULL,
    id uuid NOT NULL,
    user_id uuid NOT NULL,
    kind text NOT NULL CHECK (kind IN ('totp', 'webauthn')),
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    totp_secret text,
    last_step bigint,
    credential_id bytea CHECK (credential_id IS NULL OR length(credential_id) BETWEEN 1 AND 1023),
    public_key bytea,
    sign_count bigint,
    backup_eligible boolean,
    confirmed_at timestamptz,
    created_at timestamptz NOT NULL,
    last_used_at timestamptz,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id) ON DELETE CASCADE,
    CHECK ((kind = 'totp') = (totp_secret IS NOT NULL)),
    CHECK ((kind = 'webauthn') = (credential_id IS NOT NULL AND public_key IS NOT NULL AND sign_count IS NOT NULL))
);
CREATE INDEX mfa_factors_user ON mfa_factors (tenant_id, user_id);
CREATE UNIQUE INDEX mfa_factors_credential ON mfa_factors (tenant_id, project_id, credential_id)
    WHERE credential_id IS NOT NULL;
-- One authenticator app per user.
CREATE UNIQUE INDEX mfa_factors_one_totp ON mfa_factors (tenant_id, user_id)
    WHERE kind = 'totp' AND confirmed_at IS NOT NULL;

-- Recovery codes: SHA-256 of each (random, high-entropy codes need no slow hash), used once.
CREATE TABLE recovery_codes (
    tenant_id uuid NOT NULL,
    project_id uuid NOT NULL,
    user_id uuid NOT NULL,
    code_hash bytea NOT NULL CHECK (length(code_hash) = 32),
    created_at timestamptz NOT NULL,
    used_at timestamptz,
    PRIMARY KEY (tenant_id, user_id, code_hash),
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id) ON DELETE CASCADE
);

-- A sign-in whose first factor checked out and that waits for the second (or for the user to
-- enrol one, when policy requires it): found by the hash of the token the browser or client
-- holds. Where it returns is kept as a sign-in code's is. Used once.
CREATE TABLE mfa_pending (
    tenant_id uuid NOT NULL,
    project_id uuid NOT NULL,
    token_hash bytea NOT NULL CHECK (length(token_hash) = 32),
    user_id uuid NOT NULL,
    amr text[] NOT NULL,
    stage text NOT NULL CHECK (stage IN ('challenge', 'enrol', 'enrolled')),
    -- the TOTP factor being enrolled
    factor_id uuid,
    redirect_uri text,
    app_state text,
    code_challenge text,
    created_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    used_at timestamptz,
    PRIMARY KEY (tenant_id, token_hash),
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX mfa_pending_user ON mfa_pending (tenant_id, user_id);

-- A WebAuthn ceremony under way: the relying-party library's state (challenge, expiry), used
-- once. `user_id` is NULL for a passkey sign-in, where the authenticator names the user.
CREATE TABLE webauthn_ceremonies (
    tenant_id uuid NOT NULL,
    project_id uuid NOT NULL,
    id uuid NOT NULL,
    user_id uuid,
    purpose text NOT NULL CHECK (purpose IN ('register', 'second_factor', 'passkey')),
    state bytea NOT NULL,
    created_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX webauthn_ceremonies_user ON webauthn_ceremonies (tenant_id, user_id);
CREATE INDEX webauthn_ceremonies_expiry ON webauthn_ceremonies (tenant_id, project_id, expires_at);

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['mfa_factors', 'recovery_codes', 'mfa_pending', 'webauthn_ceremonies'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY owner_all ON %I TO authio_owner USING (true) WITH CHECK (true)', t);
        EXECUTE format($p$CREATE POLICY project_scope_at_home ON %I
            USING (tenant_id = (select nullif(current_setting('authio.tenant_id', true), '')::uuid)
               AND project_id = (select nullif(current_setting('authio.project_id', true), '')::uuid)
               AND (select authio_tenant_at_home(nullif(current_setting('authio.tenant_id', true), '')::uuid)))
            WITH CHECK (tenant_id = (select nullif(current_setting('authio.tenant_id', true), '')::uuid)
               AND project_id = (select nullif(current_setting('authio.project_id', true), '')::uuid)
               AND (select authio_tenant_at_home(nullif(current_setting('authio.tenant_id', true), '')::uuid)))$p$, t);
        EXECUTE format('REVOKE ALL ON %I FROM PUBLIC', t);
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %I TO authio_app', t);
    END LOOP;
END
$$;
