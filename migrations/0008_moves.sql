-- Moving tenants online: the cutover gate, the move records, the replicated marker, and the
-- purge of an old copy.

-- Every scoped transaction that may write enters the tenant's home through this gate: a
-- shared advisory lock on the tenant (so a cutover, which takes it exclusively, waits for the
-- tenant's writers in flight and holds back new ones, and no other tenant's), then the home
-- fence read with a fresh snapshot (VOLATILE), so a writer that waited behind a cutover sees
-- the fence the cutover committed. Not at home: SQLSTATE AH001, which the router turns into
-- "re-read the route and go to the new home". Schema-qualified, no SET clause (hot path).
CREATE FUNCTION authio_enter_home(p_tenant uuid) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
AS $$
BEGIN
    PERFORM pg_catalog.pg_advisory_xact_lock_shared(1096111176, pg_catalog.hashtext(p_tenant::pg_catalog.text));
    IF NOT public.authio_tenant_at_home(p_tenant) THEN
        RAISE EXCEPTION 'tenant % is not at home in this database', p_tenant USING ERRCODE = 'AH001';
    END IF;
    RETURN true;
END
$$;
REVOKE EXECUTE ON FUNCTION authio_enter_home(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION authio_enter_home(uuid) TO authio_app;

-- One row per move (control plane, shared database). Phases: copying -> cutover -> cleanup
-- -> done, or aborted. At most one unfinished move per tenant.
CREATE TABLE tenant_moves (
    id uuid PRIMARY KEY,
    tenant_id uuid NOT NULL REFERENCES tenants (id),
    direction text NOT NULL CHECK (direction IN ('to_dedicated', 'to_shared')),
    phase text NOT NULL CHECK (phase IN ('copying', 'cutover', 'cleanup', 'done', 'aborted')),
    -- Set when the target became the home (the point of no return for --abort).
    switched_at timestamptz,
    pause_ms double precision,
    rows_copied bigint,
    verified boolean,
    verify_report jsonb,
    error text,
    started_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    source_purged_at timestamptz
);
CREATE UNIQUE INDEX tenant_moves_one_open ON tenant_moves (tenant_id) WHERE phase NOT IN ('done', 'aborted');
CREATE INDEX tenant_moves_tenant ON tenant_moves (tenant_id, started_at);
ALTER TABLE tenant_moves ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_moves FORCE ROW LEVEL SECURITY;
CREATE POLICY owner_all ON tenant_moves TO authio_owner USING (true) WITH CHECK (true);
REVOKE ALL ON tenant_moves FROM PUBLIC;

-- Written on the source in the cutover transaction and replicated with the tenant's rows:
-- once it is on the target, everything the tenant committed before the cutover is too.
CREATE TABLE tenant_move_markers (
    tenant_id uuid NOT NULL,
    move_id uuid NOT NULL,
    written_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, move_id)
);
ALTER TABLE tenant_move_markers ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_move_markers FORCE ROW LEVEL SECURITY;
CREATE POLICY owner_all ON tenant_move_markers TO authio_owner USING (true) WITH CHECK (true);
REVOKE ALL ON tenant_move_markers FROM PUBLIC;

-- A host's app role password (cluster-wide role), encrypted with the master key.
ALTER TABLE dedicated_hosts ADD COLUMN app_password_enc text;

-- The append-only guard also lets the owner delete a tenant's events where that tenant is not
-- at home: the purge of an old copy after a move (or of an aborted move's partial copy).
-- Where the tenant lives, its events stay append-only for the owner too.
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
    IF TG_OP = 'DELETE' AND current_user = 'authio_owner' THEN
        IF NOT public.authio_tenant_at_home(OLD.tenant_id) THEN
            RETURN OLD;
        END IF;
    END IF;
    RAISE EXCEPTION 'audit events are append-only (% refused)', TG_OP USING ERRCODE = '42501';
END
$$;
