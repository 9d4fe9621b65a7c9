-- Manual replays of single events, waiting for the delivery loop: their stream positions,
-- kept on the endpoint (at the tenant's home, moving with it) until they have been sent once,
-- so a replay asked for is not lost when a node stops before sending it.
ALTER TABLE webhook_endpoints
    ADD COLUMN pending_replays bigint[] NOT NULL DEFAULT '{}' CHECK (cardinality(pending_replays) <= 100);

-- The lease apart from the due time. A node holds an endpoint until `leased_until`; while it
-- does, `due_at` is 'infinity' unless something makes the endpoint due sooner (a replay,
-- enabling it: `authio_webhook_nudge`), and the node's give-back keeps the sooner of its own
-- time and that one. A give-back names the lease it ends, so a node whose lease lapsed (and
-- was taken by another) changes nothing. A lapsed lease makes the endpoint takeable again.
ALTER TABLE webhook_schedule ADD COLUMN leased_until timestamptz;
CREATE INDEX webhook_schedule_leased ON webhook_schedule (leased_until) WHERE leased_until IS NOT NULL;

-- (Its result gains the lease: dropped and made again.)
DROP FUNCTION authio_webhook_take(integer, timestamptz, integer);
CREATE FUNCTION authio_webhook_take(p_limit integer, p_now timestamptz, p_lease_secs integer)
RETURNS TABLE (tenant_id uuid, project_id uuid, endpoint_id uuid, leased_until timestamptz)
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
    WITH due AS (
        SELECT s.tenant_id, s.endpoint_id FROM public.webhook_schedule s
         WHERE (s.due_at <= p_now AND s.leased_until IS NULL) OR s.leased_until <= p_now
         ORDER BY s.due_at LIMIT p_limit FOR UPDATE SKIP LOCKED
    )
    UPDATE public.webhook_schedule s
       SET leased_until = p_now + make_interval(secs => p_lease_secs), due_at = 'infinity'
      FROM due WHERE s.tenant_id = due.tenant_id AND s.endpoint_id = due.endpoint_id
    RETURNING s.tenant_id, s.project_id, s.endpoint_id, s.leased_until
$$;

-- Given back by the node that holds lease `p_lease`: next due at `p_due`, or sooner if it was
-- nudged meanwhile.
CREATE FUNCTION authio_webhook_give_back(p_tenant uuid, p_endpoint uuid, p_lease timestamptz, p_due timestamptz)
RETURNS void
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
    UPDATE public.webhook_schedule s SET due_at = least(s.due_at, p_due), leased_until = NULL
     WHERE s.tenant_id = p_tenant AND s.endpoint_id = p_endpoint AND s.leased_until = p_lease
$$;

-- Due no later than `p_due` (whoever holds it keeps it until it gives it back).
CREATE FUNCTION authio_webhook_nudge(p_tenant uuid, p_endpoint uuid, p_due timestamptz)
RETURNS void
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
    UPDATE public.webhook_schedule s SET due_at = least(s.due_at, p_due)
     WHERE s.tenant_id = p_tenant AND s.endpoint_id = p_endpoint
$$;
-- (The give-back replaces authio_webhook_due.)
DROP FUNCTION authio_webhook_due(uuid, uuid, timestamptz);
REVOKE EXECUTE ON FUNCTION authio_webhook_take(integer, timestamptz, integer),
    authio_webhook_give_back(uuid, uuid, timestamptz, timestamptz),
    authio_webhook_nudge(uuid, uuid, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION authio_webhook_take(integer, timestamptz, integer),
    authio_webhook_give_back(uuid, uuid, timestamptz, timestamptz),
    authio_webhook_nudge(uuid, uuid, timestamptz) TO authio_app;
