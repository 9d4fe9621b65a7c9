-- Audit hardening: no deletion without a recorded retention; a bounded, skippable outbox take.

-- Without a retention recorded at this home (written by the purge, under its lock), nothing
-- may be deleted: the plan may keep events far longer than any fixed default.
CREATE OR REPLACE FUNCTION authio_audit_append_only() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, public
AS $$
DECLARE
    keep integer;
BEGIN
    IF TG_OP = 'DELETE' AND current_user = 'authio_audit_retention' THEN
        SELECT r.days INTO keep FROM public.audit_retention r WHERE r.tenant_id = OLD.tenant_id;
        IF keep IS NOT NULL AND OLD.occurred_at < now() - make_interval(days => keep) THEN
            RETURN OLD;
        END IF;
        RAISE EXCEPTION 'audit event % is within its retention period', OLD.id USING ERRCODE = '42501';
    END IF;
    RAISE EXCEPTION 'audit events are append-only (% refused)', TG_OP USING ERRCODE = '42501';
END
$$;

-- At most 500 at a time, and the caller may skip events it failed to deliver recently, so
-- one unreachable home does not hold up everyone else's events.
CREATE FUNCTION authio_audit_outbox_take_skipping(p_limit integer, p_skip uuid[])
RETURNS SETOF audit_outbox
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
    SELECT * FROM public.audit_outbox
    WHERE NOT (id = ANY (coalesce(p_skip, '{}')))
    ORDER BY occurred_at, id LIMIT least(greatest(p_limit, 0), 500)
$$;
REVOKE EXECUTE ON FUNCTION authio_audit_outbox_take_skipping(integer, uuid[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION authio_audit_outbox_take_skipping(integer, uuid[]) TO authio_app;
REVOKE EXECUTE ON FUNCTION authio_audit_outbox_take(integer) FROM authio_app;
