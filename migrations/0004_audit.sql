-- Audit log: at each tenant's home, append-only (enforced here), hash-chained per project.

CREATE TABLE audit_events (
    tenant_id uuid NOT NULL,
    project_id uuid NOT NULL,
    -- Set by the chain trigger, whatever the inserter sends.
    seq bigint NOT NULL DEFAULT 0,
    id uuid NOT NULL,
    occurred_at timestamptz NOT NULL,
    action text NOT NULL CHECK (length(action) <= 100 AND action ~ '^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$'),
    actor_type text NOT NULL CHECK (actor_type IN ('user', 'm2m_client', 'api_key', 'operator', 'system', 'anonymous')),
    actor_id text CHECK (length(actor_id) <= 200),
    actor_name text CHECK (length(actor_name) <= 320),
    target_type text CHECK (length(target_type) <= 64),
    target_id text CHECK (length(target_id) <= 320),
    ip text CHECK (length(ip) <= 64),
    user_agent text CHECK (length(user_agent) <= 512),
    request_id text CHECK (length(request_id) <= 128),
    metadata jsonb NOT NULL DEFAULT '{}' CHECK (octet_length(metadata::text) <= 4096),
    prev_hash bytea NOT NULL DEFAULT '\x',
    hash bytea NOT NULL DEFAULT '\x',
    PRIMARY KEY (tenant_id, project_id, seq),
    UNIQUE (tenant_id, id)
);
CREATE INDEX audit_events_time ON audit_events (tenant_id, project_id, occurred_at);

-- The end of each project's chain. Only the chain trigger (as authio_owner) touches it.
CREATE TABLE audit_chain_heads (
    tenant_id uuid NOT NULL,
    project_id uuid NOT NULL,
    seq bigint NOT NULL,
    hash bytea NOT NULL,
    PRIMARY KEY (tenant_id, project_id)
);

-- Days an event is kept, per tenant (written by `authio audit purge` from the tenant's setting
-- or plan; 30 when unset).
CREATE TABLE audit_retention (
    tenant_id uuid PRIMARY KEY,
    days integer NOT NULL CHECK (days BETWEEN 1 AND 3650)
);

-- What each event's hash covers: every field, length-prefixed so no two events encode alike.
-- `authio audit verify` recomputes the same bytes from the rows, outside the database.
CREATE FUNCTION authio_audit_canonical(e audit_events) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog
AS $$
    SELECT string_agg(CASE WHEN f IS NULL THEN '~' ELSE octet_length(f)::text || ':' || f END, '|' ORDER BY n)
    FROM unnest(ARRAY[
        e.seq::text, e.id::text,
        ((extract(epoch FROM e.occurred_at) * 1000000)::bigint)::text,
        e.action, e.actor_type, e.actor_id, e.actor_name, e.target_type, e.target_id,
        e.ip, e.user_agent, e.request_id, e.metadata::text
    ]) WITH ORDINALITY AS t(f, n)
$$;

CREATE FUNCTION authio_audit_chain() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
DECLARE
    head record;
BEGIN
    INSERT INTO public.audit_chain_heads (tenant_id, project_id, seq, hash)
    VALUES (NEW.tenant_id, NEW.project_id, 0, '\x'::bytea)
    ON CONFLICT DO NOTHING;
    -- The head's row lock orders a project's events; it is held until the inserting
    -- transaction ends, so the chain has no forks.
    SELECT h.seq, h.hash INTO head FROM public.audit_chain_heads h
     WHERE h.tenant_id = NEW.tenant_id AND h.project_id = NEW.project_id
     FOR UPDATE;
    NEW.seq := head.seq + 1;
    NEW.prev_hash := head.hash;
    NEW.hash := sha256(head.hash || convert_to(public.authio_audit_canonical(NEW), 'UTF8'));
    UPDATE public.audit_chain_heads SET seq = NEW.seq, hash = NEW.hash
     WHERE tenant_id = NEW.tenant_id AND project_id = NEW.project_id;
    RETURN NEW;
END
$$;
CREATE TRIGGER audit_events_chain BEFORE INSERT ON audit_events
    FOR EACH ROW EXECUTE FUNCTION authio_audit_chain();

-- Append-only for everyone (the owner included) but the retention role, which may delete an
-- event only once it is past its tenant's retention. SECURITY INVOKER: it judges the caller.
CREATE FUNCTION authio_audit_append_only() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, public
AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_user = 'authio_audit_retention' THEN
        IF OLD.occurred_at < now() - make_interval(days => coalesce(
               (SELECT r.days FROM public.audit_retention r WHERE r.tenant_id = OLD.tenant_id), 30)) THEN
            RETURN OLD;
        END IF;
        RAISE EXCEPTION 'audit event % is within its retention period', OLD.id USING ERRCODE = '42501';
    END IF;
    RAISE EXCEPTION 'audit events are append-only (% refused)', TG_OP USING ERRCODE = '42501';
END
$$;
CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION authio_audit_append_only();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION authio_audit_append_only();

ALTER TABLE audit_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_events FORCE ROW LEVEL SECURITY;
ALTER TABLE audit_chain_heads ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_chain_heads FORCE ROW LEVEL SECURITY;
ALTER TABLE audit_retention ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_retention FORCE ROW LEVEL SECURITY;

CREATE POLICY owner_all ON audit_events TO authio_owner USING (true) WITH CHECK (true);
CREATE POLICY owner_all ON audit_chain_heads TO authio_owner USING (true) WITH CHECK (true);
CREATE POLICY owner_all ON audit_retention TO authio_owner USING (true) WITH CHECK (true);
CREATE POLICY retention_sees_all ON audit_events FOR SELECT TO authio_audit_retention USING (true);
CREATE POLICY retention_deletes ON audit_events FOR DELETE TO authio_audit_retention USING (true);
CREATE POLICY retention_reads ON audit_retention FOR SELECT TO authio_audit_retention USING (true);
CREATE POLICY project_scope_at_home ON audit_events
    USING (tenant_id = (select nullif(current_setting('authio.tenant_id', true), '')::uuid)
       AND project_id = (select nullif(current_setting('authio.project_id', true), '')::uuid)
       AND (select authio_tenant_at_home(nullif(current_setting('authio.tenant_id', true), '')::uuid)))
    WITH CHECK (tenant_id = (select nullif(current_setting('authio.tenant_id', true), '')::uuid)
       AND project_id = (select nullif(current_setting('authio.project_id', true), '')::uuid)
       AND (select authio_tenant_at_home(nullif(current_setting('authio.tenant_id', true), '')::uuid)));

REVOKE ALL ON audit_events, audit_chain_heads, audit_retention FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION authio_audit_canonical(audit_events), authio_audit_chain(), authio_audit_append_only() FROM PUBLIC;
GRANT SELECT, INSERT ON audit_events TO authio_app;
GRANT SELECT, DELETE ON audit_events TO authio_audit_retention;
GRANT SELECT ON audit_retention TO authio_audit_retention;
GRANT EXECUTE ON FUNCTION authio_audit_append_only() TO authio_app, authio_audit_retention;
