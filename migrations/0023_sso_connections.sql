-- Enterprise SSO, first part: an upstream connection may belong to one organization of its
-- project (that organization's own identity provider), with a map from the provider's groups
-- to roles; an organization may require its people to sign in through it.
-- (Connections are on the shared database and organizations at the tenant's home: the
-- organization is checked when the connection is made, not by a foreign key.)
ALTER TABLE oauth_connections
    ADD COLUMN organization_id uuid,
    ADD COLUMN group_roles jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(group_roles) = 'object');
CREATE INDEX oauth_connections_organization ON oauth_connections (tenant_id, organization_id)
    WHERE organization_id IS NOT NULL;

ALTER TABLE organizations ADD COLUMN sso_required boolean NOT NULL DEFAULT false;
-- Every password sign-in asks whether the person's organization requires single sign-on:
-- the few organizations that do are found without reading the others.
CREATE INDEX organizations_sso_required ON organizations (tenant_id, project_id) WHERE sso_required;
