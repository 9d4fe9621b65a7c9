-- Foundation: control plane, the home fence, project API keys, users.
-- Applied alike to the shared database and to every dedicated database, as authio_owner.

-- What this database is. The home fence reads it: on the shared database a tenant is at
-- home unless recorded otherwise; on a dedicated database only once recorded at home.
CREATE TABLE database_identity (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    kind text NOT NULL CHECK (kind IN ('shared', 'dedicated')),
    tenant_id uuid
);
INSERT INTO database_identity (kind) VALUES ('shared');

-- The home fence: which tenants are (not) at home in this database. Written only by
-- operators (authio_owner) during provisioning and moves.
CREATE TABLE tenant_homes (
    tenant_id uuid PRIMARY KEY,
    at_home boolean NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT now()
);

-- The database's default sits in tenant_homes under the nil tenant id (true on shared, false
-- on a dedicated database), so the fence is one index probe per statement: the tenant's own
-- row wins over the default.
INSERT INTO tenant_homes (tenant_id, at_home) VALUES ('00000000-0000-0000-0000-000000000000', true);

-- SECURITY DEFINER so authio_app can evaluate the fence without reading tenant_homes.
-- plpgsql: its plans are cached per connection, and it runs once per statement on every
-- scoped request. No `SET search_path` clause (that costs a GUC save and restore on every
-- call): every name in it is schema-qualified instead, operators included.
CREATE FUNCTION authio_tenant_at_home(p_tenant uuid) RETURNS boolean
LANGUAGE plpgsql STABLE SECURITY DEFINER
AS $$
DECLARE
    home boolean;
BEGIN
    IF p_tenant IS NULL OR p_tenant OPERATOR(pg_catalog.=) '00000000-0000-0000-0000-000000000000'::pg_catalog.uuid THEN
        RETURN false;
    END IF;
    SELECT h.at_home INTO home FROM public.tenant_homes h
     WHERE h.tenant_id OPERATOR(pg_catalog.=) ANY (ARRAY[p_tenant, '00000000-0000-0000-0000-000000000000'::pg_catalog.uuid])
     ORDER BY h.tenant_id OPERATOR(pg_catalog.=) p_tenant DESC
     LIMIT 1;
    RETURN coalesce(home, false);
END
$$;

CREATE TABLE tenants (
    id uuid PRIMARY KEY,
    slug text NOT NULL UNIQUE CHECK (slug ~ '^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$'),
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    kind text NOT NULL CHECK (kind IN ('platform', 'customer')),
    plan text NOT NULL DEFAULT 'free' CHECK (plan IN ('free', 'pro', 'enterprise')),
    db_strategy text NOT NULL DEFAULT 'shared' CHECK (db_strategy IN ('shared', 'dedicated')),
    route_epoch bigint NOT NULL DEFAULT 1,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
-- Exactly one platform tenant.
CREATE UNIQUE INDEX tenants_one_platform ON tenants ((kind)) WHERE kind = 'platform';

-- Any change of routing bumps the epoch and tells every node (NOTIFY is a hint; nodes also
-- re-read epochs periodically).
CREATE FUNCTION authio_tenants_route_change() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, public
AS $$
BEGIN
    IF NEW.db_strategy IS DISTINCT FROM OLD.db_strategy
       OR NEW.kind IS DISTINCT FROM OLD.kind THEN
        NEW.route_epoch := OLD.route_epoch + 1;
    END IF;
    NEW.updated_at := now();
    RETURN NEW;
END
$$;
CREATE TRIGGER tenants_route_change BEFORE UPDATE ON tenants
    FOR EACH ROW EXECUTE FUNCTION authio_tenants_route_change();

CREATE FUNCTION authio_tenants_route_notify() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, public
AS $$
BEGIN
    IF NEW.route_epoch IS DISTINCT FROM OLD.route_epoch THEN
        PERFORM pg_notify('authio_routes', NEW.id::text || ':' || NEW.route_epoch::text);
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER tenants_route_notify AFTER UPDATE ON tenants
    FOR EACH ROW EXECUTE FUNCTION authio_tenants_route_notify();

CREATE TABLE projects (
    tenant_id uuid NOT NULL REFERENCES tenants (id),
    id uuid NOT NULL UNIQUE,
    slug text NOT NULL CHECK (slug ~ '^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$'),
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, slug)
);

CREATE TABLE dedicated_hosts (
    id uuid PRIMARY KEY,
    name text NOT NULL UNIQUE,
    -- admin connection string, encrypted with the master key
    admin_dsn_enc text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE dedicated_databases (
    tenant_id uuid PRIMARY KEY REFERENCES tenants (id),
    host_id uuid REFERENCES dedicated_hosts (id),
    database_name text NOT NULL,
    -- connection strings (app role, admin), encrypted with the master key
    app_dsn_enc text NOT NULL,
    admin_dsn_enc text NOT NULL,
    status text NOT NULL DEFAULT 'ready' CHECK (status IN ('provisioning', 'ready', 'retired')),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Project secret API keys: pinned to the shared database (they resolve the scope).
CREATE TABLE api_keys (
    tenant_id uuid NOT NULL,
    project_id uuid NOT NULL,
    id uuid NOT NULL,
    key_id text NOT NULL UNIQUE,
    secret_hash bytea NOT NULL CHECK (length(secret_hash) = 32),
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, project_id) REFERENCES projects (tenant_id, id)
);

-- End users: live at the tenant's home.
CREATE TABLE users (
    tenant_id uuid NOT NULL,
    project_id uuid NOT NULL,
    id uuid NOT NULL,
    email text NOT NULL CHECK (length(email) BETWEEN 3 AND 254),
    email_verified boolean NOT NULL DEFAULT false,
    disabled boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, project_id, email)
);
CREATE INDEX users_project_id ON users (tenant_id, project_id, id);

-- Row-level security. Every table: ENABLE + FORCE. authio_owner (operators, migrations,
-- moves) has a policy of its own; everyone else sees only the bound scope.
ALTER TABLE database_identity ENABLE ROW LEVEL SECURITY;
ALTER TABLE database_identity FORCE ROW LEVEL SECURITY;
ALTER TABLE tenant_homes ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_homes FORCE ROW LEVEL SECURITY;
ALTER TABLE tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenants FORCE ROW LEVEL SECURITY;
ALTER TABLE projects ENABLE ROW LEVEL SECURITY;
ALTER TABLE projects FORCE ROW LEVEL SECURITY;
ALTER TABLE dedicated_hosts ENABLE ROW LEVEL SECURITY;
ALTER TABLE dedicated_hosts FORCE ROW LEVEL SECURITY;
ALTER TABLE dedicated_databases ENABLE ROW LEVEL SECURITY;
ALTER TABLE dedicated_databases FORCE ROW LEVEL SECURITY;
ALTER TABLE api_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_keys FORCE ROW LEVEL SECURITY;
ALTER TABLE users ENABLE ROW LEVEL SECURITY;
ALTER TABLE users FORCE ROW LEVEL SECURITY;

CREATE POLICY owner_all ON database_identity TO authio_owner USING (true) WITH CHECK (true);
CREATE POLICY owner_all ON tenant_homes TO authio_owner USING (true) WITH CHECK (true);
CREATE POLICY owner_all ON tenants TO authio_owner USING (true) WITH CHECK (true);
CREATE POLICY owner_all ON projects TO authio_owner USING (true) WITH CHECK (true);
CREATE POLICY owner_all ON dedicated_hosts TO authio_owner USING (true) WITH CHECK (true);
CREATE POLICY owner_all ON dedicated_databases TO authio_owner USING (true) WITH CHECK (true);
CREATE POLICY owner_all ON api_keys TO authio_owner USING (true) WITH CHECK (true);
CREATE POLICY owner_all ON users TO authio_owner USING (true) WITH CHECK (true);

-- Scoped access. The sub-selects make each GUC read one InitPlan per statement; nullif
-- because a pooled connection returns '' after a transaction that set the GUC.
CREATE POLICY tenant_scope ON tenants
    USING (id = (select nullif(current_setting('authio.tenant_id', true), '')::uuid))
    WITH CHECK (id = (select nullif(current_setting('authio.tenant_id', true), '')::uuid));
CREATE POLICY tenant_scope ON projects
    USING (tenant_id = (select nullif(current_setting('authio.tenant_id', true), '')::uuid))
    WITH CHECK (tenant_id = (select nullif(current_setting('authio.tenant_id', true), '')::uuid));
CREATE POLICY project_scope ON api_keys
    USING (tenant_id = (select nullif(current_setting('authio.tenant_id', true), '')::uuid)
       AND project_id = (select nullif(current_setting('authio.project_id', true), '')::uuid))
    WITH CHECK (tenant_id = (select nullif(current_setting('authio.tenant_id', true), '')::uuid)
       AND project_id = (select nullif(current_setting('authio.project_id', true), '')::uuid));
-- Home tables add the home fence.
CREATE POLICY project_scope_at_home ON users
    USING (tenant_id = (select nullif(current_setting('authio.tenant_id', true), '')::uuid)
       AND project_id = (select nullif(current_setting('authio.project_id', true), '')::uuid)
       AND (select authio_tenant_at_home(nullif(current_setting('authio.tenant_id', true), '')::uuid)))
    WITH CHECK (tenant_id = (select nullif(current_setting('authio.tenant_id', true), '')::uuid)
       AND project_id = (select nullif(current_setting('authio.project_id', true), '')::uuid)
       AND (select authio_tenant_at_home(nullif(current_setting('authio.tenant_id', true), '')::uuid)));

-- Pre-resolution lookups: narrow SECURITY DEFINER functions that take the one key they
-- resolve from and return only what resolution needs.
CREATE FUNCTION authio_resolve_api_key(p_key_id text)
RETURNS TABLE (tenant_id uuid, project_id uuid, key_uuid uuid, secret_hash bytea, tenant_kind text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
    SELECT k.tenant_id, k.project_id, k.id, k.secret_hash, t.kind
    FROM public.api_keys k JOIN public.tenants t ON t.id = k.tenant_id
    WHERE k.key_id = p_key_id AND k.revoked_at IS NULL
$$;

CREATE FUNCTION authio_tenant_route(p_tenant uuid)
RETURNS TABLE (kind text, db_strategy text, route_epoch bigint)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$ SELECT t.kind, t.db_strategy, t.route_epoch FROM public.tenants t WHERE t.id = p_tenant $$;

CREATE FUNCTION authio_route_epochs(p_tenants uuid[])
RETURNS TABLE (tenant_id uuid, route_epoch bigint)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$ SELECT t.id, t.route_epoch FROM public.tenants t WHERE t.id = ANY (p_tenants) $$;

CREATE FUNCTION authio_dedicated_app_dsn(p_tenant uuid)
RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
    SELECT d.app_dsn_enc FROM public.dedicated_databases d
    WHERE d.tenant_id = p_tenant AND d.status = 'ready'
$$;

-- Privileges: authio_app gets DML only where needed, and EXECUTE on the lookups.
REVOKE ALL ON ALL TABLES IN SCHEMA public FROM PUBLIC;
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO authio_app, authio_audit_retention;
GRANT SELECT ON tenants, projects TO authio_app;
GRANT SELECT, INSERT, UPDATE ON api_keys TO authio_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON users TO authio_app;
GRANT EXECUTE ON FUNCTION authio_tenant_at_home(uuid) TO authio_app, authio_audit_retention;
GRANT EXECUTE ON FUNCTION authio_resolve_api_key(text) TO authio_app;
GRANT EXECUTE ON FUNCTION authio_tenant_route(uuid) TO authio_app;
GRANT EXECUTE ON FUNCTION authio_route_epochs(uuid[]) TO authio_app;
GRANT EXECUTE ON FUNCTION authio_dedicated_app_dsn(uuid) TO authio_app;
