-- Events: a customer-facing stream per project (distinct from the audit log: its own types,
-- shapes and 30-day retention). Each event is written by a trigger on the audit log, in the
-- transaction of the audit event it comes from: nothing is emitted for a change that rolled
-- back, nothing lost for one that committed. Its position (the cursor) is that audit event's
-- `seq` times four plus its part (one audit event may stand for up to four events, such as a
-- sign-in's `session.created` and `authentication.succeeded`): the chain head hands `seq` out
-- one writer at a time per project, so the stream reads in commit order.
-- At the tenant's home, moving with it (a move's logical replication copies rows and fires no
-- triggers, so nothing is emitted twice).
CREATE TABLE events (
    tenant_id uuid NOT NULL,
    project_id uuid NOT NULL,
    position bigint NOT NULL,
    id uuid NOT NULL,
    type text NOT NULL CHECK (length(type) <= 100 AND type ~ '^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$'),
    occurred_at timestamptz NOT NULL,
    data jsonb NOT NULL CHECK (jsonb_typeof(data) = 'object' AND octet_length(data::text) <= 8192),
    -- One index only: this table is written on every sign-in. Ids are unique by making (the
    -- audit event's own, or a random one); the hourly retention purge scans a tenant's rows.
    PRIMARY KEY (tenant_id, project_id, position)
);

ALTER TABLE events ENABLE ROW LEVEL SECURITY;
ALTER TABLE events FORCE ROW LEVEL SECURITY;
CREATE POLICY owner_all ON events TO authio_owner USING (true) WITH CHECK (true);
-- The app reads a project's events; only the trigger (as authio_owner) writes them.
CREATE POLICY project_scope_at_home ON events FOR SELECT
    USING (tenant_id = (select nullif(current_setting('authio.tenant_id', true), '')::uuid)
       AND project_id = (select nullif(current_setting('authio.project_id', true), '')::uuid)
       AND (select authio_tenant_at_home(nullif(current_setting('authio.tenant_id', true), '')::uuid)));
REVOKE ALL ON events FROM PUBLIC;
GRANT SELECT ON events TO authio_app;

-- The customer events an audit event stands for: a fixed mapping, with only the fields meant
-- for the project's own apps (no addresses, agents or actors' names). Written by the database
-- so that no path that records an audit event (one statement, a pipeline, the relay) can skip
-- them. The trigger fires only for the mapped actions (its WHEN clause), and builds only the
-- matched event's data, in one INSERT: the sign-in path pays for two small rows and nothing
-- else.
CREATE FUNCTION authio_event_emit() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
DECLARE
    m jsonb := NEW.metadata;
    t1 text;
    d1 jsonb;
    t2 text;
    d2 jsonb;
BEGIN
    CASE NEW.action
        WHEN 'user.created' THEN
            t1 := 'user.created'; d1 := jsonb_build_object('user_id', NEW.target_id, 'email', m->'email');
        WHEN 'user.signed_up' THEN
            t1 := 'user.created'; d1 := jsonb_build_object('user_id', NEW.target_id, 'signed_up', true);
            t2 := 'session.created';
            d2 := jsonb_build_object('user_id', NEW.target_id, 'session_id', m->'session_id', 'amr', m->'amr');
        WHEN 'user.signed_in' THEN
            t1 := 'session.created';
            d1 := jsonb_build_object('user_id', NEW.target_id, 'session_id', m->'session_id', 'amr', m->'amr');
            t2 := 'authentication.succeeded'; d2 := d1;
        WHEN 'user.sign_in_failed' THEN
            t1 := 'authentication.failed'; d1 := jsonb_build_object('email', NEW.target_id, 'reason', m->'reason');
        WHEN 'user.disabled' THEN
            t1 := 'user.updated'; d1 := jsonb_build_object('user_id', NEW.target_id, 'disabled', true);
        WHEN 'user.enabled' THEN
            t1 := 'user.updated'; d1 := jsonb_build_object('user_id', NEW.target_id, 'disabled', false);
        WHEN 'user.password_reset' THEN
            t1 := 'user.updated'; d1 := jsonb_build_object('user_id', NEW.target_id, 'password_reset', true);
        WHEN 'user.deleted' THEN
            t1 := 'user.deleted'; d1 := jsonb_build_object('user_id', NEW.target_id, 'email', m->'email');
        WHEN 'user.email_verified' THEN
            t1 := 'email_verification.succeeded'; d1 := jsonb_build_object('user_id', NEW.target_id);
        WHEN 'session.revoked' THEN
            t1 := 'session.revoked';
            d1 := jsonb_build_object('session_id', NEW.target_id, 'reason', m->'reason', 'user_id', m->'user_id');
        WHEN 'tenant.moved' THEN
            t1 := 'tenant.moved'; d1 := jsonb_build_object('to', m->'to');
        WHEN 'organization.created', 'organization.updated' THEN
            t1 := NEW.action;
            d1 := jsonb_build_object('organization_id', NEW.target_id, 'slug', m->'slug', 'name', m->'name');
        WHEN 'organization.deleted' THEN
            t1 := NEW.action; d1 := jsonb_build_object('organization_id', NEW.target_id, 'slug', m->'slug');
        WHEN 'membership.added', 'membership.updated', 'membership.removed' THEN
            t1 := NEW.action;
            d1 := jsonb_build_object('user_id', NEW.target_id, 'organization_id', m->'organization_id',
                                     'role', m->'role', 'status', m->'status');
        ELSE
            RETURN NULL;
    END CASE;
    INSERT INTO public.events (tenant_id, project_id, position, id, type, occurred_at, data)
    SELECT NEW.tenant_id, NEW.project_id, NEW.seq * 4 + v.part,
           CASE WHEN v.part = 0 THEN NEW.id ELSE gen_random_uuid() END, v.t, NEW.occurred_at, jsonb_strip_nulls(v.d)
      FROM (VALUES (0, t1, d1), (1, t2, d2)) AS v(part, t, d)
     WHERE v.t IS NOT NULL;
    RETURN NULL;
END
$$;
CREATE TRIGGER audit_events_emit AFTER INSERT ON audit_events
    FOR EACH ROW
    WHEN (NEW.action IN ('user.created', 'user.signed_up', 'user.signed_in', 'user.sign_in_failed', 'user.disabled',
                         'user.enabled', 'user.password_reset', 'user.deleted', 'user.email_verified',
                         'session.revoked', 'tenant.moved', 'organization.created', 'organization.updated',
                         'organization.deleted', 'membership.added', 'membership.updated', 'membership.removed'))
    EXECUTE FUNCTION authio_event_emit();
REVOKE EXECUTE ON FUNCTION authio_event_emit() FROM PUBLIC;

-- Events older than 30 days, removed for one tenant at its home (the caller's scope): the
-- retention of the stream, whatever the audit log's is.
CREATE FUNCTION authio_events_purge(p_tenant uuid, p_now timestamptz)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
DECLARE
    n bigint;
BEGIN
    IF p_tenant IS DISTINCT FROM nullif(current_setting('authio.tenant_id', true), '')::uuid
       OR NOT public.authio_tenant_at_home(p_tenant) THEN
        RETURN 0;
    END IF;
    DELETE FROM public.events WHERE tenant_id = p_tenant AND occurred_at < p_now - interval '30 days';
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;
REVOKE EXECUTE ON FUNCTION authio_events_purge(uuid, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION authio_events_purge(uuid, timestamptz) TO authio_app;
