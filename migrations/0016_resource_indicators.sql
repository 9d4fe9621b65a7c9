-- RFC 8707 resource indicators for OpenID clients: the resource servers (absolute URIs) a
-- client may ask access tokens for, and the one an authorization request named, kept with
-- its code until the exchange.
ALTER TABLE oidc_clients ADD COLUMN resources text[] NOT NULL DEFAULT '{}'
    CHECK (cardinality(resources) <= 10);
ALTER TABLE signin_codes ADD COLUMN resource text CHECK (resource IS NULL OR length(resource) <= 512);
-- An OpenID authorization request may also name an organization (scope `organization`, see
-- 0017): the code remembers it, and the session the exchange starts acts for it.
ALTER TABLE signin_codes ADD COLUMN organization_id uuid;

DROP FUNCTION authio_resolve_oidc_client(text);
CREATE FUNCTION authio_resolve_oidc_client(p_client_id text)
RETURNS TABLE (tenant_id uuid, project_id uuid, tenant_kind text, secret_hash bytea, client_type text,
               token_endpoint_auth_method text, redirect_uris text[], post_logout_redirect_uris text[],
               scopes text[], grant_types text[], name text, id_token_signed_response_alg text,
               resources text[])
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
    SELECT c.tenant_id, c.project_id, t.kind, c.secret_hash, c.client_type, c.token_endpoint_auth_method,
           c.redirect_uris, c.post_logout_redirect_uris, c.scopes, c.grant_types, c.name,
           c.id_token_signed_response_alg, c.resources
    FROM public.oidc_clients c JOIN public.tenants t ON t.id = c.tenant_id
    WHERE c.client_id = p_client_id AND c.revoked_at IS NULL
$$;

DROP FUNCTION authio_authorization_code_use(bytea, timestamptz);
CREATE FUNCTION authio_authorization_code_use(p_hash bytea, p_now timestamptz)
RETURNS TABLE (first_use boolean, tenant_id uuid, project_id uuid, user_id uuid, amr text[], redirect_uri text,
               code_challenge text, client_id text, scope text, nonce text, auth_time timestamptz, session_id uuid,
               resource text, organization_id uuid)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
DECLARE
    c public.signin_codes;
BEGIN
    SELECT * INTO c FROM public.signin_codes s WHERE s.code_hash = p_hash FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF c.used_at IS NOT NULL THEN
        RETURN QUERY SELECT false, c.tenant_id, c.project_id, c.user_id, c.amr, c.redirect_uri, c.code_challenge,
                            c.client_id, c.scope, c.nonce, c.auth_time, c.session_id, c.resource, c.organization_id;
        RETURN;
    END IF;
    IF c.expires_at <= p_now THEN
        RETURN;
    END IF;
    UPDATE public.signin_codes s SET used_at = p_now WHERE s.code_hash = p_hash;
    RETURN QUERY SELECT true, c.tenant_id, c.project_id, c.user_id, c.amr, c.redirect_uri, c.code_challenge,
                        c.client_id, c.scope, c.nonce, c.auth_time, c.session_id, c.resource, c.organization_id;
END
$$;

REVOKE EXECUTE ON FUNCTION authio_resolve_oidc_client(text), authio_authorization_code_use(bytea, timestamptz)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION authio_resolve_oidc_client(text), authio_authorization_code_use(bytea, timestamptz)
    TO authio_app;
