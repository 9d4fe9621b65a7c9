-- An organization's email domains, proved by a DNS TXT record (the resolver custom domains
-- use). A domain belongs to one organization of a project once claimed; at the tenant's home,
-- moving with it.
CREATE TABLE organization_domains (
    tenant_id uuid NOT NULL,
    project_id uuid NOT NULL,
    organization_id uuid NOT NULL,
    id uuid NOT NULL,
    domain text NOT NULL CHECK (length(domain) BETWEEN 3 AND 253 AND domain = lower(domain)),
    verification_token text NOT NULL CHECK (length(verification_token) BETWEEN 16 AND 128),
    created_at timestamptz NOT NULL,
    verified_at timestamptz,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, project_id, domain),
    FOREIGN KEY (tenant_id, organization_id) REFERENCES organizations (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX organization_domains_org ON organization_domains (tenant_id, organization_id);

ALTER TABLE organization_domains ENABLE ROW LEVEL SECURITY;
ALTER TABLE organization_domains FORCE ROW LEVEL SECURITY;
CREATE POLICY owner_all ON organization_domains TO authio_owner USING (true) WITH CHECK (true);
CREATE POLICY project_scope_at_home ON organization_domains
    USING (tenant_id = (select nullif(current_setting('authio.tenant_id', true), '')::uuid)
       AND project_id = (select nullif(current_setting('authio.project_id', true), '')::uuid)
       AND (select authio_tenant_at_home(nullif(current_setting('authio.tenant_id', true), '')::uuid)))
    WITH CHECK (tenant_id = (select nullif(current_setting('authio.tenant_id', true), '')::uuid)
       AND project_id = (select nullif(current_setting('authio.project_id', true), '')::uuid)
       AND (select authio_tenant_at_home(nullif(current_setting('authio.tenant_id', true), '')::uuid)));
REVOKE ALL ON organization_domains FROM PUBLIC;
GRANT SELECT, INSERT, DELETE ON organization_domains TO authio_app;
GRANT UPDATE (verified_at) ON organization_domains TO authio_app;
