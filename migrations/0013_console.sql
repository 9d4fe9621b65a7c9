-- The web console's control-plane rows: who may manage a customer tenant from the dashboard,
-- and the Enterprise plan's dedicated-database requests. Both are control plane (they say who
-- owns what and where a tenant should live), so they stay on the shared database and only the
-- owner role reaches them; the console reads them through its administrative connection.

-- A platform-tenant user's membership of a customer tenant. The user is a platform identity
-- (it signs in through the platform tenant's hosted pages); `tenant_id` is the customer tenant.
CREATE TABLE tenant_members (
    tenant_id uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    user_id uuid NOT NULL,
    role text NOT NULL CHECK (role IN ('owner', 'admin', 'viewer')),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, user_id)
);
CREATE INDEX tenant_members_user ON tenant_members (user_id);
ALTER TABLE tenant_members ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_members FORCE ROW LEVEL SECURITY;
CREATE POLICY owner_all ON tenant_members TO authio_owner USING (true) WITH CHECK (true);
REVOKE ALL ON tenant_members FROM PUBLIC;

-- A request to move a tenant to its own database (or back to shared), from the customer's
-- billing page, decided by an operator. At most one open request per tenant.
--   requested -> declined | withdrawn
--   requested -> provisioning -> provisioned -> moving -> done
--   (to_shared skips provisioning: requested -> moving -> done)
--   any open state -> failed (with the error; an operator can retry from there)
CREATE TABLE dedicated_db_requests (
    id uuid PRIMARY KEY,
    tenant_id uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    direction text NOT NULL CHECK (direction IN ('to_dedicated', 'to_shared')),
    state text NOT NULL CHECK (state IN ('requested', 'declined', 'withdrawn', 'provisioning', 'provisioned',
        'moving', 'done', 'failed')),
    requested_by text NOT NULL,
    decided_by text,
    move_id uuid,
    error text CHECK (error IS NULL OR length(error) <= 2000),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX dedicated_db_requests_one_open ON dedicated_db_requests (tenant_id)
    WHERE state NOT IN ('declined', 'withdrawn', 'done');
CREATE INDEX dedicated_db_requests_tenant ON dedicated_db_requests (tenant_id, created_at DESC);
ALTER TABLE dedicated_db_requests ENABLE ROW LEVEL SECURITY;
ALTER TABLE dedicated_db_requests FORCE ROW LEVEL SECURITY;
CREATE POLICY owner_all ON dedicated_db_requests TO authio_owner USING (true) WITH CHECK (true);
REVOKE ALL ON dedicated_db_requests FROM PUBLIC;
