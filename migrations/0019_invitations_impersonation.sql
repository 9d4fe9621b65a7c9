-- Invitations to organizations, organization-specific roles, and impersonation sessions. All at
-- the tenant's home, under the project scope and the home fence, moving with the tenant.

-- A role may belong to one organization (its own role set): assignable there only, never the
-- project's default. Deleting the organization deletes its roles (its memberships go with it).
ALTER TABLE roles ADD COLUMN organization_id uuid;
ALTER TABLE roles ADD CONSTRAINT roles_organization_fk
    FOREIGN KEY (tenant_id, organization_id) REFERENCES organizations (tenant_id, id) ON DELETE CASCADE;
ALTER TABLE roles ADD CONSTRAINT roles_org_not_default CHECK (NOT (is_default AND organization_id IS NOT NULL));
CREATE INDEX roles_organization ON roles (tenant_id, organization_id) WHERE organization_id IS NOT NULL;

-- An invitation: an email address asked to join an organization with a role. Its token is
-- kept only as a SHA-256 hash, works once and until `expires_at`; resending makes a new token
-- (the old one stops working). One pending invitation per address and organization.
CREATE TABLE invitations (
    tenant_id uuid NOT NULL,
    project_id uuid NOT NULL,
    organization_id uuid NOT NULL,
    id uuid NOT NULL,
    email text NOT NULL CHECK (length(email) BETWEEN 3 AND 254),
    role_id uuid NOT NULL,
    token_hash bytea NOT NULL CHECK (length(token_hash) = 32),
    inviter text CHECK (inviter IS NULL OR length(inviter) <= 300),
    created_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    sent_count integer NOT NULL DEFAULT 1 CHECK (sent_count >= 1),
    last_sent_at timestamptz NOT NULL,
    accepted_at timestamptz,
    accepted_by uuid,
    revoked_at timestamptz,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, token_hash),
    CHECK (accepted_at IS NULL OR revoked_at IS NULL),
    FOREIGN KEY (tenant_id, organization_id) REFERENCES organizations (tenant_id, id) ON DELETE CASCADE,
    -- A role named by a pending or past invitation cannot be deleted (409 role_in_use).
    FOREIGN KEY (tenant_id, role_id) REFERENCES roles (tenant_id, id)
);
CREATE UNIQUE INDEX invitations_pending ON invitations (tenant_id, organization_id, email)
    WHERE accepted_at IS NULL AND revoked_at IS NULL;
CREATE INDEX invitations_org ON invitations (tenant_id, organization_id, id);
CREATE INDEX invitations_email ON invitations (tenant_id, project_id, email)
    WHERE accepted_at IS NULL AND revoked_at IS NULL;

ALTER TABLE invitations ENABLE ROW LEVEL SECURITY;
ALTER TABLE invitations FORCE ROW LEVEL SECURITY;
CREATE POLICY owner_all ON invitations TO authio_owner USING (true) WITH CHECK (true);
CREATE POLICY project_scope_at_home ON invitations
    USING (tenant_id = (select nullif(current_setting('authio.tenant_id', true), '')::uuid)
       AND project_id = (select nullif(current_setting('authio.project_id', true), '')::uuid)
       AND (select authio_tenant_at_home(nullif(current_setting('authio.tenant_id', true), '')::uuid)))
    WITH CHECK (tenant_id = (select nullif(current_setting('authio.tenant_id', true), '')::uuid)
       AND project_id = (select nullif(current_setting('authio.project_id', true), '')::uuid)
       AND (select authio_tenant_at_home(nullif(current_setting('authio.tenant_id', true), '')::uuid)));
REVOKE ALL ON invitations FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE ON invitations TO authio_app;

-- Impersonation: a session started for a user by someone else (an operator or a tenant
-- member), never with the user's credentials. Its access tokens carry `act` (RFC 8693 4.1)
-- naming the impersonator; it lasts at most an hour.
ALTER TABLE sessions
    ADD COLUMN impersonator text CHECK (impersonator IS NULL OR length(impersonator) BETWEEN 1 AND 300),
    ADD COLUMN impersonation_reason text
        CHECK (impersonation_reason IS NULL OR length(impersonation_reason) BETWEEN 1 AND 500),
    -- When its end was audited (`impersonation.ended`, once): by the act that ended it, or by
    -- the sweeper for one that ran out or was ended by something else (a disabled user, a
    -- password reset, a reused refresh token).
    ADD COLUMN impersonation_ended_at timestamptz,
    ADD CONSTRAINT sessions_impersonation_short
        CHECK (impersonator IS NULL OR absolute_expires_at <= created_at + interval '60 minutes');

-- The refresh rotation returns the impersonator and the session's end, so a refreshed token
-- keeps `act` and never outlives an impersonation.
DROP FUNCTION authio_refresh_rotate(uuid, uuid, bytea, bytea, timestamptz, integer, integer, text, uuid);
CREATE FUNCTION authio_refresh_rotate(p_tenant uuid, p_project uuid, p_hash bytea, p_new_hash bytea,
                                      p_now timestamptz, p_idle_secs integer, p_grace_secs integer, p_client text,
                                      p_org uuid)
RETURNS TABLE (status text, session_id uuid, user_id uuid, amr text[], role text, client_id text, scope text,
               within_grace boolean, organization_id uuid, org_role text, org_permissions text[], resource text,
               joined boolean, impersonator text, ends_at timestamptz)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, public
AS $$
DECLARE
    tok record;
    r record;
    org uuid;
    -- Plain variables, not a record: a record never assigned cannot be read, even in a branch
    -- not taken.
    m_role text;
    m_permissions text[];
    did_join boolean := false;
BEGIN
    -- Token, then session, then user, each by its primary key: one join would let a stale
    -- row estimate drive the lookup from the wrong side (seen: a scan of every session).
    SELECT rt.session_id, rt.used_at INTO tok
      FROM public.refresh_tokens rt
     WHERE rt.tenant_id = p_tenant AND rt.token_hash = p_hash
       FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'invalid'::text, NULL::uuid, NULL::uuid, NULL::text[], NULL::text, NULL::text, NULL::text, false,
                            NULL::uuid, NULL::text, NULL::text[], NULL::text, false, NULL::text, NULL::timestamptz;
        RETURN;
    END IF;
    SELECT s.id AS sid, tok.used_at AS used_at, s.user_id AS uid, s.amr AS s_amr, s.revoked_at, s.idle_expires_at,
           s.absolute_expires_at, s.client_id AS s_client, s.scope AS s_scope, s.organization_id AS s_org,
           s.resource AS s_resource, s.impersonator AS s_impersonator,
           u.disabled, u.role AS u_role
      INTO r
      FROM public.sessions s, LATERAL (SELECT x.disabled, x.role FROM public.users x
                                       WHERE x.tenant_id = p_tenant AND x.id = s.user_id) u
     WHERE s.tenant_id = p_tenant AND s.id = tok.session_id
       FOR UPDATE OF s;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'invalid'::text, NULL::uuid, NULL::uuid, NULL::text[], NULL::text, NULL::text, NULL::text, false,
                            NULL::uuid, NULL::text, NULL::text[], NULL::text, false, NULL::text, NULL::timestamptz;
        RETURN;
    END IF;
    IF r.s_client IS DISTINCT FROM p_client THEN
        RETURN QUERY SELECT 'wrong_client'::text, NULL::uuid, NULL::uuid, NULL::text[], NULL::text, NULL::text, NULL::text, false,
                            NULL::uuid, NULL::text, NULL::text[], NULL::text, false, NULL::text, NULL::timestamptz;
        RETURN;
    END IF;
    IF r.revoked_at IS NOT NULL OR p_now >= r.idle_expires_at OR p_now >= r.absolute_expires_at OR r.disabled THEN
        RETURN QUERY SELECT 'ended'::text, r.sid, r.uid, NULL::text[], NULL::text, NULL::text, NULL::text, false,
                            NULL::uuid, NULL::text, NULL::text[], NULL::text, false, NULL::text, NULL::timestamptz;
        RETURN;
    END IF;
    IF r.used_at IS NOT NULL AND p_now - r.used_at > make_interval(secs => p_grace_secs) THEN
        UPDATE public.sessions s SET revoked_at = coalesce(s.revoked_at, p_now),
                                     revoked_reason = coalesce(s.revoked_reason, 'refresh_token_reused')
         WHERE s.tenant_id = p_tenant AND s.id = r.sid;
        RETURN QUERY SELECT 'reused'::text, r.sid, r.uid, NULL::text[], NULL::text, NULL::text, NULL::text, false,
                            NULL::uuid, NULL::text, NULL::text[], NULL::text, false, NULL::text, NULL::timestamptz;
        RETURN;
    END IF;
    -- The organization the new tokens are for, and the member's role in it now. A membership
    -- that ended (or was deactivated) takes the session out of the organization.
    org := coalesce(p_org, r.s_org);
    IF org IS NOT NULL THEN
        SELECT ro.slug, ro.permissions INTO m_role, m_permissions
          FROM public.memberships ms JOIN public.roles ro ON ro.tenant_id = ms.tenant_id AND ro.id = ms.role_id
         WHERE ms.tenant_id = p_tenant AND ms.organization_id = org AND ms.user_id = r.uid AND ms.status = 'active';
        -- An impersonator never makes the user join anything.
        IF NOT FOUND AND p_org IS NOT NULL AND r.s_org IS DISTINCT FROM p_org AND r.s_impersonator IS NULL
           AND authio_org_join_by_domain(p_tenant, p_project, p_org, r.uid, p_now) IS NOT NULL THEN
            did_join := true;
            SELECT ro.slug, ro.permissions INTO m_role, m_permissions
              FROM public.memberships ms JOIN public.roles ro ON ro.tenant_id = ms.tenant_id AND ro.id = ms.role_id
             WHERE ms.tenant_id = p_tenant AND ms.organization_id = org AND ms.user_id = r.uid AND ms.status = 'active';
        END IF;
        IF m_role IS NULL THEN
            IF p_org IS NOT NULL THEN
                RETURN QUERY SELECT 'not_member'::text, r.sid, r.uid, NULL::text[], NULL::text, NULL::text, NULL::text,
                                    false, NULL::uuid, NULL::text, NULL::text[], NULL::text, false, NULL::text, NULL::timestamptz;
                RETURN;
            END IF;
            org := NULL;
        END IF;
    END IF;
    IF r.used_at IS NULL THEN
        UPDATE public.refresh_tokens x SET used_at = p_now WHERE x.tenant_id = p_tenant AND x.token_hash = p_hash;
    END IF;
    UPDATE public.sessions s
       SET last_active_at = p_now,
           idle_expires_at = least(p_now + make_interval(secs => p_idle_secs), r.absolute_expires_at),
           organization_id = org
     WHERE s.tenant_id = p_tenant AND s.id = r.sid;
    INSERT INTO public.refresh_tokens (tenant_id, project_id, token_hash, session_id, created_at)
    VALUES (p_tenant, p_project, p_new_hash, r.sid, p_now);
    RETURN QUERY SELECT 'ok'::text, r.sid, r.uid, r.s_amr, r.u_role, r.s_client, r.s_scope, r.used_at IS NOT NULL,
                        org, m_role, m_permissions, r.s_resource, did_join, r.s_impersonator,
                        r.absolute_expires_at;
END
$$;
REVOKE EXECUTE ON FUNCTION authio_refresh_rotate(uuid, uuid, bytea, bytea, timestamptz, integer, integer, text, uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION authio_refresh_rotate(uuid, uuid, bytea, bytea, timestamptz, integer, integer, text, uuid) TO authio_app;

-- Projects may replace the invitation email's template too.
ALTER TABLE email_templates DROP CONSTRAINT email_templates_kind_check;
ALTER TABLE email_templates ADD CONSTRAINT email_templates_kind_check
    CHECK (kind IN ('magic_link', 'email_code', 'password_reset', 'email_verification', 'invitation'));

-- Impersonations that ended (ran out, or revoked by something that did not audit their end),
-- found for the sweeper that records their end: the projects of one tenant (the caller's, at
-- its home) with such sessions. SECURITY DEFINER to look across the tenant's projects; it
-- answers only for the tenant the transaction is scoped to, and only at its home.
CREATE INDEX sessions_impersonation_open ON sessions (tenant_id, absolute_expires_at)
    WHERE impersonator IS NOT NULL AND impersonation_ended_at IS NULL;
CREATE FUNCTION authio_expired_impersonations(p_tenant uuid, p_now timestamptz)
RETURNS SETOF uuid
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
    SELECT DISTINCT s.project_id FROM public.sessions s
     WHERE s.tenant_id = p_tenant AND s.impersonator IS NOT NULL AND s.impersonation_ended_at IS NULL
       AND (s.revoked_at IS NOT NULL OR s.absolute_expires_at <= p_now)
       AND p_tenant = nullif(current_setting('authio.tenant_id', true), '')::uuid
       AND public.authio_tenant_at_home(p_tenant)
$$;
REVOKE EXECUTE ON FUNCTION authio_expired_impersonations(uuid, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION authio_expired_impersonations(uuid, timestamptz) TO authio_app;
