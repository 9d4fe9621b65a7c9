-- Events about rows pinned to the shared database (API keys, M2M clients, project settings,
-- signing keys) are written to this outbox in the same transaction as the change, on shared,
-- and relayed to the tenant's home log by every node (at least once; the relay skips an event
-- already there), so a dedicated tenant's log holds them too.
CREATE TABLE audit_outbox (
    tenant_id uuid NOT NULL,
    project_id uuid NOT NULL,
    id uuid PRIMARY KEY,
    occurred_at timestamptz NOT NULL,
    action text NOT NULL CHECK (length(action) <= 100 AND action ~ '^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$'),
    actor_type text NOT NULL CHECK (actor_type IN ('user', 'm2m_client', 'api_key', 'operator', 'system', 'anonymous')),
    actor_id text,
    actor_name text,
    target_type text,
    target_id text,
    ip text,
    user_agent text,
    request_id text,
    metadata jsonb NOT NULL DEFAULT '{}' CHECK (octet_length(metadata::text) <= 4096)
);
CREATE INDEX audit_outbox_age ON audit_outbox (occurred_at);
ALTER TABLE audit_outbox ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_outbox FORCE ROW LEVEL SECURITY;
CREATE POLICY owner_all ON audit_outbox TO authio_owner USING (true) WITH CHECK (true);
CREATE POLICY project_scope ON audit_outbox
    USING (tenant_id = (select nullif(current_setting('authio.tenant_id', true), '')::uuid)
       AND project_id = (select nullif(current_setting('authio.project_id', true), '')::uuid))
    WITH CHECK (tenant_id = (select nullif(current_setting('authio.tenant_id', true), '')::uuid)
       AND project_id = (select nullif(current_setting('authio.project_id', true), '')::uuid));

-- The relay's two narrow lookups: the oldest pending events, and "this one is delivered".
CREATE FUNCTION authio_audit_outbox_take(p_limit integer)
RETURNS SETOF audit_outbox
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$ SELECT * FROM public.audit_outbox ORDER BY occurred_at, id LIMIT p_limit $$;

CREATE FUNCTION authio_audit_outbox_done(p_id uuid)
RETURNS void
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$ DELETE FROM public.audit_outbox WHERE id = p_id $$;

REVOKE ALL ON audit_outbox FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION authio_audit_outbox_take(integer), authio_audit_outbox_done(uuid) FROM PUBLIC;
GRANT INSERT ON audit_outbox TO authio_app;
GRANT EXECUTE ON FUNCTION authio_audit_outbox_take(integer), authio_audit_outbox_done(uuid) TO authio_app;
