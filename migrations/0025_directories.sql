-- Directory sync: a SCIM 2.0 directory per organization. The directory, its users, groups and
-- group members live at the tenant's home and move with it; the bearer token's hash is on the
-- shared database, where a SCIM request is resolved to its tenant before anything else.
CREATE TABLE directories (
    tenant_id uuid NOT NULL,
    project_id uuid NOT NULL,
    id uuid NOT NULL,
    organization_id uuid NOT NULL,
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    -- group display name -> role slug: a member's role is that of the first mapped group
    group_roles jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(group_roles) = 'object'),
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, organization_id) REFERENCES organizations (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX directories_organization ON directories (tenant_id, organization_id);

-- A SCIM User of a directory, linked to an Authio user by email (none while the SCIM user has
-- no address). `resource` is the SCIM representation as last written (without id and meta).
CREATE TABLE directory_users (
    tenant_id uuid NOT NULL,
    project_id uuid NOT NULL,
    directory_id uuid NOT NULL,
    id uuid NOT NULL,
    user_id uuid,
    user_name text NOT NULL CHECK (length(user_name) BETWEEN 1 AND 256),
    external_id text CHECK (external_id IS NULL OR length(external_id) BETWEEN 1 AND 256),
    active boolean NOT NULL,
    resource jsonb NOT NULL CHECK (jsonb_typeof(resource) = 'object'),
    version bigint NOT NULL DEFAULT 1,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, directory_id) REFERENCES directories (tenant_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id) ON DELETE CASCADE
);
-- userName is unique in a directory, compared without case (RFC 7643 4.1.1: caseExact false).
CREATE UNIQUE INDEX directory_users_user_name ON directory_users (tenant_id, directory_id, lower(user_name));
CREATE UNIQUE INDEX directory_users_external_id ON directory_users (tenant_id, directory_id, external_id);
-- One directory user per Authio user and directory.
CREATE UNIQUE INDEX directory_users_user ON directory_users (tenant_id, directory_id, user_id);

CREATE TABLE directory_groups (
    tenant_id uuid NOT NULL,
    project_id uuid NOT NULL,
    directory_id uuid NOT NULL,
    id uuid NOT NULL,
    display_name text NOT NULL CHECK (length(display_name) BETWEEN 1 AND 256),
    external_id text CHECK (external_id IS NULL OR length(external_id) BETWEEN 1 AND 256),
    resource jsonb NOT NULL CHECK (jsonb_typeof(resource) = 'object'),
    version bigint NOT NULL DEFAULT 1,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, directory_id) REFERENCES directories (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX directory_groups_directory ON directory_groups (tenant_id, directory_id, lower(display_name));
CREATE UNIQUE INDEX directory_groups_external_id ON directory_groups (tenant_id, directory_id, external_id);

CREATE TABLE directory_group_members (
    tenant_id uuid NOT NULL,
    project_id uuid NOT NULL,
    directory_id uuid NOT NULL,
    group_id uuid NOT NULL,
    member_id uuid NOT NULL,
    PRIMARY KEY (tenant_id, group_id, member_id),
    FOREIGN KEY (tenant_id, group_id) REFERENCES directory_groups (tenant_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, member_id) REFERENCES directory_users (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX directory_group_members_member ON directory_group_members (tenant_id, member_id);

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['directories', 'directory_users', 'directory_groups', 'directory_group_members'] LOOP
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

-- The bearer token of a directory (SHA-256 of a 256-bit random secret), on the shared
-- database: read by directory id before the tenant is known.
CREATE TABLE directory_tokens (
    tenant_id uuid NOT NULL,
    project_id uuid NOT NULL,
    directory_id uuid NOT NULL UNIQUE,
    -- the directory's organization (fixed for its life): a request needs no read at the home
    -- to know it
    organization_id uuid NOT NULL,
    token_hash bytea NOT NULL CHECK (length(token_hash) = 32),
    created_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, directory_id),
    FOREIGN KEY (tenant_id, project_id) REFERENCES projects (tenant_id, id) ON DELETE CASCADE
);
ALTER TABLE directory_tokens ENABLE ROW LEVEL SECURITY;
ALTER TABLE directory_tokens FORCE ROW LEVEL SECURITY;
CREATE POLICY owner_all ON directory_tokens TO authio_owner USING (true) WITH CHECK (true);
CREATE POLICY project_scope ON directory_tokens
    USING (tenant_id = (select nullif(current_setting('authio.tenant_id', true), '')::uuid)
       AND project_id = (select nullif(current_setting('authio.project_id', true), '')::uuid))
    WITH CHECK (tenant_id = (select nullif(current_setting('authio.tenant_id', true), '')::uuid)
       AND project_id = (select nullif(current_setting('authio.project_id', true), '')::uuid));
REVOKE ALL ON directory_tokens FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON directory_tokens TO authio_app;

-- Pre-resolution: a SCIM request names its directory; its tenant, project and token hash.
CREATE FUNCTION authio_directory_token(p_directory uuid)
RETURNS TABLE (tenant_id uuid, project_id uuid, token_hash bytea, tenant_kind text, organization_id uuid)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
    SELECT d.tenant_id, d.project_id, d.token_hash, t.kind, d.organization_id
    FROM public.directory_tokens d JOIN public.tenants t ON t.id = d.tenant_id
    WHERE d.directory_id = p_directory
$$;
REVOKE EXECUTE ON FUNCTION authio_directory_token(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION authio_directory_token(uuid) TO authio_app;

-- Directory sync in the customer event stream (and so to webhooks): a second trigger beside
-- `audit_events_emit`, for the dsync actions only (a row fires one or the other). The event's
-- `data` is what an app acts on: the Authio user, the directory, whether they are active.
CREATE FUNCTION authio_dsync_event_emit() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
DECLARE
    m jsonb := NEW.metadata;
    d jsonb;
BEGIN
    IF NEW.action LIKE 'dsync.user.%' THEN
        d := jsonb_build_object(
            'user_id', CASE WHEN NEW.target_type = 'user' THEN NEW.target_id END,
            'directory_id', m->'directory_id', 'organization_id', m->'organization_id',
            'scim_id', m->'scim_id', 'user_name', m->'user_name', 'active', m->'active',
            'sessions_ended', m->'sessions_ended');
    ELSE
        d := jsonb_build_object('group_id', NEW.target_id, 'directory_id', m->'directory_id',
                                'display_name', m->'display_name');
    END IF;
    INSERT INTO public.events (tenant_id, project_id, position, id, type, occurred_at, data)
    VALUES (NEW.tenant_id, NEW.project_id, NEW.seq * 4, NEW.id, NEW.action, NEW.occurred_at, jsonb_strip_nulls(d));
    RETURN NULL;
END
$$;
CREATE TRIGGER audit_events_dsync_emit AFTER INSERT ON audit_events
    FOR EACH ROW
    WHEN (NEW.action IN ('dsync.user.created', 'dsync.user.updated', 'dsync.user.deactivated',
                         'dsync.user.reactivated', 'dsync.user.deleted', 'dsync.group.created',
                         'dsync.group.updated', 'dsync.group.deleted'))
    EXECUTE FUNCTION authio_dsync_event_emit();
REVOKE EXECUTE ON FUNCTION authio_dsync_event_emit() FROM PUBLIC;
