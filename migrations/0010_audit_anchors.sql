-- Sealed anchors of each project's audit chain, on the shared database (the control plane):
-- `authio audit anchor` (and `serve`, periodically) records each chain's head sealed with the
-- master key, which the databases never see. Someone able to rewrite a whole chain and its
-- head at the tenant's home is then caught back to the last anchor by `authio audit verify`.
CREATE TABLE audit_anchors (
    tenant_id uuid NOT NULL,
    project_id uuid NOT NULL,
    seq bigint NOT NULL,
    hash bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    seal text NOT NULL,
    PRIMARY KEY (tenant_id, project_id, seq)
);
ALTER TABLE audit_anchors ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_anchors FORCE ROW LEVEL SECURITY;
CREATE POLICY owner_all ON audit_anchors TO authio_owner USING (true) WITH CHECK (true);
REVOKE ALL ON audit_anchors FROM PUBLIC;
