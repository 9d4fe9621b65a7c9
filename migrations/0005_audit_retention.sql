-- Audit retention: per-tenant setting (control plane) and signed checkpoints at the home, so
-- a chain whose oldest events were purged still verifies.
ALTER TABLE tenants ADD COLUMN audit_retention_days integer
    CHECK (audit_retention_days IS NULL OR audit_retention_days BETWEEN 1 AND 3650);

CREATE TABLE audit_checkpoints (
    tenant_id uuid NOT NULL,
    project_id uuid NOT NULL,
    -- The last purged event: the chain continues from its hash.
    seq bigint NOT NULL,
    hash bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    -- The checkpoint sealed with the master key (AES-256-GCM), so it cannot be forged or moved.
    seal text NOT NULL,
    PRIMARY KEY (tenant_id, project_id, seq)
);
ALTER TABLE audit_checkpoints ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_checkpoints FORCE ROW LEVEL SECURITY;
CREATE POLICY owner_all ON audit_checkpoints TO authio_owner USING (true) WITH CHECK (true);
CREATE POLICY retention_all ON audit_checkpoints TO authio_audit_retention USING (true) WITH CHECK (true);
REVOKE ALL ON audit_checkpoints FROM PUBLIC;
GRANT SELECT, INSERT ON audit_checkpoints TO authio_audit_retention;
