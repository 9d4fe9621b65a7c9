-- ID tokens in RS256 for every client that asks (OpenID Connect Core 15.1: mandatory to
-- implement), whatever the project's main key: a project keeps an RS256 "companion" key beside
-- its current one, published in its JWKS and used only for those clients' ID tokens.
ALTER TABLE signing_keys DROP CONSTRAINT signing_keys_state_check;
ALTER TABLE signing_keys ADD CONSTRAINT signing_keys_state_check
    CHECK (state IN ('next', 'current', 'retired', 'companion'));
CREATE UNIQUE INDEX signing_keys_one_companion ON signing_keys (project_id) WHERE state = 'companion';

-- A client's ID token algorithm (OpenID Connect Dynamic Client Registration 1.0 section 2,
-- `id_token_signed_response_alg`): RS256, or none for the project's current key.
ALTER TABLE oidc_clients ADD COLUMN id_token_signed_response_alg text
    CHECK (id_token_signed_response_alg IS NULL OR id_token_signed_response_alg = 'RS256');

DROP FUNCTION authio_resolve_oidc_client(text);
CREATE FUNCTION authio_resolve_oidc_client(p_client_id text)
RETURNS TABLE (tenant_id uuid, project_id uuid, tenant_kind text, secret_hash bytea, client_type text,
               token_endpoint_auth_method text, redirect_uris text[], post_logout_redirect_uris text[],
               scopes text[], grant_types text[], name text, id_token_signed_response_alg text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
    SELECT c.tenant_id, c.project_id, t.kind, c.secret_hash, c.client_type, c.token_endpoint_auth_method,
           c.redirect_uris, c.post_logout_redirect_uris, c.scopes, c.grant_types, c.name,
           c.id_token_signed_response_alg
    FROM public.oidc_clients c JOIN public.tenants t ON t.id = c.tenant_id
    WHERE c.client_id = p_client_id AND c.revoked_at IS NULL
$$;
REVOKE EXECUTE ON FUNCTION authio_resolve_oidc_client(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION authio_resolve_oidc_client(text) TO authio_app;
