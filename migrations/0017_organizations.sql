-- Organizations inside a project (the project's own customers), the roles and permissions a
-- project defines, and users' memberships. Every row lives at the tenant's home, beside the
-- users, under the project scope and the home fence, and moves with the tenant.

-- The permissions a project defines: the slugs its roles may list.
CREATE TABLE permissions (
    tenant_id uuid NOT NULL,
    project_id uuid NOT NULL,
    slug text NOT NULL CHECK (slug ~ '^[a-z0-9][a-z0-9:._-]{0,62}$'),
    description text CHECK (description IS NULL OR length(description) <= 500),
    created_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, project_id, slug)
);

-- Roles: a slug, a name and the permissions they grant. One may be the project's default for
-- new members.
CREATE TABLE roles (
    tenant_id uuid NOT NULL,
    project_id uuid NOT NULL,
    id uuid NOT NULL,
    slug text NOT NULL CHECK (slug ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    permissions text[] NOT NULL DEFAULT '{}' CHECK (cardinality(permissions) <= 200),
    is_default boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, project_id, slug)
);
CREATE UNIQUE INDEX roles_one_default ON roles (tenant_id, project_id) WHERE is_default;

CREATE TABLE organizations (
    tenant_id uuid NOT NULL,
    project_id uuid NOT NULL,
    id uuid NOT NULL,
    slug text NOT NULL CHECK (slug ~ '^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$'),
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    external_id text CHECK (external_id IS NULL OR length(external_id) BETWEEN 1 AND 200),
    metadata jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object' AND length(metadata::text) <= 16384),
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, project_id, slug),
    UNIQUE (tenant_id, project_id, external_id)
);
CREATE INDEX organizations_project ON organizations (tenant_id, project_id, id);

-- A user's membership of an organization, with its role. A role in use cannot be deleted
-- (the foreign key refuses it), and deleting an organization or a user ends its memberships.
CREATE TABLE memberships (
    tenant_id uuid NOT NULL,
    project_id uuid NOT NULL,
    organization_id uuid NOT NULL,
    user_id uuid NOT NULL,
    role_id uuid NOT NULL,
    status text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'invited', 'deactivated')),
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, organization_id, user_id),
    FOREIGN KEY (tenant_id, organization_id) REFERENCES organizations (tenant_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, role_id) REFERENCES roles (tenant_id, id)
);
CREATE INDEX memberships_user ON memberships (tenant_id, user_id);
CREATE INDEX memberships_role ON memberships (tenant_id, role_id);

-- A session may act for one organization of its user (its access tokens say which), and an
-- OpenID client's session keeps the resource (RFC 8707) its grant named: its refreshes are for
-- that resource unless they name it again.
ALTER TABLE sessions
    ADD COLUMN organization_id uuid,
    ADD COLUMN resource text CHECK (resource IS NULL OR length(resource) <= 512);

ALTER TABLE permissions ENABLE ROW LEVEL SECURITY;
ALTER TABLE permissions FORCE ROW LEVEL SECURITY;
ALTER TABLE roles ENABLE ROW LEVEL SECURITY;
ALTER TABLE roles FORCE ROW LEVEL SECURITY;
ALTER TABLE organizations ENABLE ROW LEVEL SECURITY;
ALTER TABLE organizations FORCE ROW LEVEL SECURITY;
ALTER TABLE memberships ENABLE ROW LEVEL SECURITY;
ALTER TABLE memberships FORCE ROW LEVEL SECURITY;

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['permissions', 'roles', 'organizations', 'memberships'] LOOP
        EXECUTE format('CREATE POLICY owner_all ON %I TO authio_owner USING (true) WITH CHECK (true)', t);
        EXECUTE format($p$CREATE POLICY project_scope_at_home ON %I
            USING (tenant_id = (select nullif(current_setting('authio.tenant_id', true), '')::uuid)
               AND project_id = (select nullif(current_setting('authio.project_id', true), '')::uuid)
               AND (select authio_tenant_at_home(nullif(current_setting('authio.tenant_id', true), '')::uuid)))
            WITH CHECK (tenant_id = (select nullif(current_setting('authio.tenant_id', true), '')::uuid)
               AND project_id = (select nullif(current_setting('authio.project_id', true), '')::uuid)
               AND (select authio_tenant_at_home(nullif(current_setting('authio.tenant_id', true), '')::uuid)))$p$, t);
    END LOOP;
END
$$;

REVOKE ALL ON permissions, roles, organizations, memberships FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON permissions, roles, organizations, memberships TO authio_app;

-- An organization's email domains, proved by a DNS TXT record (the resolver custom domains
-- use). A domain belongs to one organization of a project once claimed; at the tenant's home,
-- moving with it.
CREATE TABLE organization_domains (
    tenant_id uuid NOT NULL,
    project_id uuid NOT NULL,
    organization_id uuid NOT NULL,
    id uuid NOT NULL,
    domain text NOT NULL CHECK (length(domain) BETWEEN 3 AND 253 AND domain = lower(domain)),
    verification_token text NOT NULL CHECK (length(verification_token) BETWEEN 16 AND 128),
    created_at timestamptz NOT NULL,
    verified_at timestamptz,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, project_id, domain),
    FOREIGN KEY (tenant_id, organization_id) REFERENCES organizations (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX organization_domains_org ON organization_domains (tenant_id, organization_id);

ALTER TABLE organization_domains ENABLE ROW LEVEL SECURITY;
ALTER TABLE organization_domains FORCE ROW LEVEL SECURITY;
CREATE POLICY owner_all ON organization_domains TO authio_owner USING (true) WITH CHECK (true);
CREATE POLICY project_scope_at_home ON organization_domains
    USING (tenant_id = (select nullif(current_setting('authio.tenant_id', true), '')::uuid)
       AND project_id = (select nullif(current_setting('authio.project_id', true), '')::uuid)
       AND (select authio_tenant_at_home(nullif(current_setting('authio.tenant_id', true), '')::uuid)))
    WITH CHECK (tenant_id = (select nullif(current_setting('authio.tenant_id', true), '')::uuid)
       AND project_id = (select nullif(current_setting('authio.project_id', true), '')::uuid)
       AND (select authio_tenant_at_home(nullif(current_setting('authio.tenant_id', true), '')::uuid)));
REVOKE ALL ON organization_domains FROM PUBLIC;
GRANT SELECT, INSERT, DELETE ON organization_domains TO authio_app;
GRANT UPDATE (verified_at) ON organization_domains TO authio_app;

-- How people join an organization: only when added or invited (`invite_only`, the default), or
-- also by themselves with a verified email at one of its verified domains (`auto_join`), when
-- a session switches into it. They join with the project's default role.
ALTER TABLE organizations ADD COLUMN domain_policy text NOT NULL DEFAULT 'invite_only'
    CHECK (domain_policy IN ('invite_only', 'auto_join'));

-- Join `p_user` to `p_org` by its domain policy, inside the caller's scoped transaction (RLS and
-- the home fence apply: SECURITY INVOKER). Returns the role's id when the user joined now, NULL
-- otherwise (not allowed, or already a member in any status: a deactivated member stays so).
CREATE FUNCTION authio_org_join_by_domain(p_tenant uuid, p_project uuid, p_org uuid, p_user uuid, p_now timestamptz)
RETURNS uuid
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, public
AS $$
DECLARE
    v_role uuid;
BEGIN
    SELECT ro.id INTO v_role
      FROM public.organizations o
      JOIN public.users u ON u.tenant_id = p_tenant AND u.id = p_user
      JOIN public.organization_domains d ON d.tenant_id = p_tenant AND d.organization_id = o.id
           AND d.verified_at IS NOT NULL AND d.domain = split_part(u.email, '@', 2)
      JOIN public.roles ro ON ro.tenant_id = p_tenant AND ro.project_id = o.project_id AND ro.is_default
     WHERE o.tenant_id = p_tenant AND o.id = p_org AND o.domain_policy = 'auto_join'
       AND u.email_verified AND NOT u.disabled;
    IF v_role IS NULL THEN
        RETURN NULL;
    END IF;
    INSERT INTO public.memberships (tenant_id, project_id, organization_id, user_id, role_id, status, created_at,
                                    updated_at)
    VALUES (p_tenant, p_project, p_org, p_user, v_role, 'active', p_now, p_now)
    ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    RETURN v_role;
END
$$;
REVOKE EXECUTE ON FUNCTION authio_org_join_by_domain(uuid, uuid, uuid, uuid, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION authio_org_join_by_domain(uuid, uuid, uuid, uuid, timestamptz) TO authio_app;

-- The refresh rotation learns organizations: it may switch the session to another
-- organization of its user (`p_org`, an active membership only: status `not_member`
-- otherwise), and returns the session's organization with the member's role and permissions
-- as they are now, so a role change shows at the next refresh, in the same round trip.
-- A switch into an organization the user is not a member of joins by its domain policy
-- (`authio_org_join_by_domain`) and says so (`joined`).
DROP FUNCTION authio_refresh_rotate(uuid, uuid, bytea, bytea, timestamptz, integer, integer, text);
CREATE FUNCTION authio_refresh_rotate(p_tenant uuid, p_project uuid, p_hash bytea, p_new_hash bytea,
                                      p_now timestamptz, p_idle_secs integer, p_grace_secs integer, p_client text,
                                      p_org uuid)
RETURNS TABLE (status text, session_id uuid, user_id uuid, amr text[], role text, client_id text, scope text,
               within_grace boolean, organization_id uuid, org_role text, org_permissions text[], resource text,
               joined boolean)
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
                            NULL::uuid, NULL::text, NULL::text[], NULL::text, false;
        RETURN;
    END IF;
    SELECT s.id AS sid, tok.used_at AS used_at, s.user_id AS uid, s.amr AS s_amr, s.revoked_at, s.idle_expires_at,
           s.absolute_expires_at, s.client_id AS s_client, s.scope AS s_scope, s.organization_id AS s_org,
           s.resource AS s_resource,
           u.disabled, u.role AS u_role
      INTO r
      FROM public.sessions s, LATERAL (SELECT x.disabled, x.role FROM public.users x
                                       WHERE x.tenant_id = p_tenant AND x.id = s.user_id) u
     WHERE s.tenant_id = p_tenant AND s.id = tok.session_id
       FOR UPDATE OF s;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'invalid'::text, NULL::uuid, NULL::uuid, NULL::text[], NULL::text, NULL::text, NULL::text, false,
                            NULL::uuid, NULL::text, NULL::text[], NULL::text, false;
        RETURN;
    END IF;
    IF r.s_client IS DISTINCT FROM p_client THEN
        RETURN QUERY SELECT 'wrong_client'::text, NULL::uuid, NULL::uuid, NULL::text[], NULL::text, NULL::text, NULL::text, false,
                            NULL::uuid, NULL::text, NULL::text[], NULL::text, false;
        RETURN;
    END IF;
    IF r.revoked_at IS NOT NULL OR p_now >= r.idle_expires_at OR p_now >= r.absolute_expires_at OR r.disabled THEN
        RETURN QUERY SELECT 'ended'::text, r.sid, r.uid, NULL::text[], NULL::text, NULL::text, NULL::text, false,
                            NULL::uuid, NULL::text, NULL::text[], NULL::text, false;
        RETURN;
    END IF;
    IF r.used_at IS NOT NULL AND p_now - r.used_at > make_interval(secs => p_grace_secs) THEN
        UPDATE public.sessions s SET revoked_at = coalesce(s.revoked_at, p_now),
                                     revoked_reason = coalesce(s.revoked_reason, 'refresh_token_reused')
         WHERE s.tenant_id = p_tenant AND s.id = r.sid;
        RETURN QUERY SELECT 'reused'::text, r.sid, r.uid, NULL::text[], NULL::text, NULL::text, NULL::text, false,
                            NULL::uuid, NULL::text, NULL::text[], NULL::text, false;
        RETURN;
    END IF;
    -- The organization the new tokens are for, and the member's role in it now. A membership
    -- that ended (or was deactivated) takes the session out of the organization.
    org := coalesce(p_org, r.s_org);
    IF org IS NOT NULL THEN
        SELECT ro.slug, ro.permissions INTO m_role, m_permissions
          FROM public.memberships ms JOIN public.roles ro ON ro.tenant_id = ms.tenant_id AND ro.id = ms.role_id
         WHERE ms.tenant_id = p_tenant AND ms.organization_id = org AND ms.user_id = r.uid AND ms.status = 'active';
        IF NOT FOUND AND p_org IS NOT NULL AND r.s_org IS DISTINCT FROM p_org
           AND authio_org_join_by_domain(p_tenant, p_project, p_org, r.uid, p_now) IS NOT NULL THEN
            did_join := true;
            SELECT ro.slug, ro.permissions INTO m_role, m_permissions
              FROM public.memberships ms JOIN public.roles ro ON ro.tenant_id = ms.tenant_id AND ro.id = ms.role_id
             WHERE ms.tenant_id = p_tenant AND ms.organization_id = org AND ms.user_id = r.uid AND ms.status = 'active';
        END IF;
        IF m_role IS NULL THEN
            IF p_org IS NOT NULL THEN
                RETURN QUERY SELECT 'not_member'::text, r.sid, r.uid, NULL::text[], NULL::text, NULL::text, NULL::text,
                                    false, NULL::uuid, NULL::text, NULL::text[], NULL::text, false;
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
                        org, m_role, m_permissions, r.s_resource, did_join;
END
$$;
REVOKE EXECUTE ON FUNCTION authio_refresh_rotate(uuid, uuid, bytea, bytea, timestamptz, integer, integer, text, uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION authio_refresh_rotate(uuid, uuid, bytea, bytea, timestamptz, integer, integer, text, uuid) TO authio_app;
