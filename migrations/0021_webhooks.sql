-- Webhooks: endpoints that receive a project's events, signed per Standard Webhooks. The
-- endpoint (with its sealed signing secrets and its place in the event stream) and its
-- delivery log live at the tenant's home and move with it; the delivery schedule, which any
-- node takes due work from, is on the shared database (pre-resolution: read before the tenant
-- is known).
CREATE TABLE webhook_endpoints (
    tenant_id uuid NOT NULL,
    project_id uuid NOT NULL,
    id uuid NOT NULL,
    url text NOT NULL CHECK (length(url) BETWEEN 8 AND 2048),
    event_types text[] NOT NULL DEFAULT '{}' CHECK (cardinality(event_types) <= 50),
    -- `whsec_...`, sealed with the master key: it signs, so it cannot be kept as a hash.
    secret_enc text NOT NULL,
    -- The secret before the last rotation, still signing (beside the new one) until it lapses.
    previous_secret_enc text,
    previous_until timestamptz,
    enabled boolean NOT NULL DEFAULT true,
    disabled_reason text CHECK (disabled_reason IS NULL OR length(disabled_reason) <= 200),
    -- The last event position delivered (or skipped at creation: an endpoint starts at the end
    -- of the stream).
    position bigint NOT NULL,
    attempts integer NOT NULL DEFAULT 0,
    failing_since timestamptz,
    last_error text CHECK (last_error IS NULL OR length(last_error) <= 500),
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX webhook_endpoints_project ON webhook_endpoints (tenant_id, project_id, id);

CREATE TABLE webhook_deliveries (
    tenant_id uuid NOT NULL,
    project_id uuid NOT NULL,
    id uuid NOT NULL,
    endpoint_id uuid NOT NULL,
    event_id uuid NOT NULL,
    event_type text NOT NULL CHECK (length(event_type) <= 100),
    position bigint NOT NULL,
    attempt integer NOT NULL,
    status integer,
    error text CHECK (error IS NULL OR length(error) <= 500),
    latency_ms integer NOT NULL,
    response_excerpt text CHECK (response_excerpt IS NULL OR length(response_excerpt) <= 1024),
    replay boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, endpoint_id) REFERENCES webhook_endpoints (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (tenant_id, endpoint_id, id);

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['webhook_endpoints', 'webhook_deliveries'] LOOP
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
    END LOOP;
END
$$;
REVOKE ALL ON webhook_endpoints, webhook_deliveries FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON webhook_endpoints TO authio_app;
GRANT SELECT, INSERT, DELETE ON webhook_deliveries TO authio_app;

-- When each endpoint is next due, and which node holds it (a lease): on the shared database.
-- Pinned to the project like the mail outbox; the delivery loop reaches it through the
-- functions below.
CREATE TABLE webhook_schedule (
    tenant_id uuid NOT NULL,
    project_id uuid NOT NULL,
    endpoint_id uuid NOT NULL,
    due_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, endpoint_id),
    FOREIGN KEY (tenant_id, project_id) REFERENCES projects (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX webhook_schedule_due ON webhook_schedule (due_at);
ALTER TABLE webhook_schedule ENABLE ROW LEVEL SECURITY;
ALTER TABLE webhook_schedule FORCE ROW LEVEL SECURITY;
CREATE POLICY owner_all ON webhook_schedule TO authio_owner USING (true) WITH CHECK (true);
CREATE POLICY project_scope ON webhook_schedule
    USING (tenant_id = (select nullif(current_setting('authio.tenant_id', true), '')::uuid)
       AND project_id = (select nullif(current_setting('authio.project_id', true), '')::uuid))
    WITH CHECK (tenant_id = (select nullif(current_setting('authio.tenant_id', true), '')::uuid)
       AND project_id = (select nullif(current_setting('authio.project_id', true), '')::uuid));
REVOKE ALL ON webhook_schedule FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON webhook_schedule TO authio_app;

-- Take up to `p_limit` due endpoints for `p_lease_secs` (FOR UPDATE SKIP LOCKED: two nodes
-- never take the same one; a node that dies lets its lease lapse).
CREATE FUNCTION authio_webhook_take(p_limit integer, p_now timestamptz, p_lease_secs integer)
RETURNS TABLE (tenant_id uuid, project_id uuid, endpoint_id uuid)
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
    WITH due AS (
        SELECT s.tenant_id, s.endpoint_id FROM public.webhook_schedule s
         WHERE s.due_at <= p_now
         ORDER BY s.due_at LIMIT p_limit FOR UPDATE SKIP LOCKED
    )
    UPDATE public.webhook_schedule s SET due_at = p_now + make_interval(secs => p_lease_secs)
      FROM due WHERE s.tenant_id = due.tenant_id AND s.endpoint_id = due.endpoint_id
    RETURNING s.tenant_id, s.project_id, s.endpoint_id
$$;

-- When a taken endpoint is next due (the lease given back).
CREATE FUNCTION authio_webhook_due(p_tenant uuid, p_endpoint uuid, p_due timestamptz)
RETURNS void
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
    UPDATE public.webhook_schedule s SET due_at = p_due WHERE s.tenant_id = p_tenant AND s.endpoint_id = p_endpoint
$$;
REVOKE EXECUTE ON FUNCTION authio_webhook_take(integer, timestamptz, integer),
    authio_webhook_due(uuid, uuid, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION authio_webhook_take(integer, timestamptz, integer),
    authio_webhook_due(uuid, uuid, timestamptz) TO authio_app;
