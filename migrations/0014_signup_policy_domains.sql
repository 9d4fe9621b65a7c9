-- Who may create an account in a project, and custom-domain claims that no other tenant can
-- squat.
--
-- Sign-up policy (control plane, beside the sign-in methods): `open` lets anyone with a
-- proven address create an account; `invite_only` lets nobody create one by themselves (an
-- administrator creates the user, who then signs in); `domains` admits addresses whose domain
-- is one of `signup_domains`. Every path that creates a user checks it.
ALTER TABLE projects
    ADD COLUMN signup_policy text NOT NULL DEFAULT 'open' CHECK (signup_policy IN ('open', 'invite_only', 'domains')),
    ADD COLUMN signup_domains text[] NOT NULL DEFAULT '{}' CHECK (cardinality(signup_domains) <= 50),
    ADD CONSTRAINT projects_signup_domains_listed CHECK (signup_policy <> 'domains' OR cardinality(signup_domains) > 0);

GRANT UPDATE (signup_policy, signup_domains) ON projects TO authio_app;

DROP FUNCTION authio_project_presentation(uuid);
CREATE FUNCTION authio_project_presentation(p_project uuid)
RETURNS TABLE (tenant_id uuid, name text, display_name text, logo_url text, brand_color text,
               email_sender_name text, signin_methods text[], environment text, signup_policy text,
               signup_domains text[])
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
    SELECT p.tenant_id, p.name, p.display_name, p.logo_url, p.brand_color, p.email_sender_name,
           p.signin_methods, p.environment, p.signup_policy, p.signup_domains
    FROM public.projects p WHERE p.id = p_project
$$;
REVOKE EXECUTE ON FUNCTION authio_project_presentation(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION authio_project_presentation(uuid) TO authio_app;

-- Custom domains: only a verified host is unique across tenants. A pending claim is private
-- to its tenant (one per tenant and host), expires unverified after seven days, and gives
-- way when another tenant proves the host.
ALTER TABLE custom_domains DROP CONSTRAINT custom_domains_host_key;
CREATE UNIQUE INDEX custom_domains_verified_host ON custom_domains (host) WHERE verified_at IS NOT NULL;
CREATE UNIQUE INDEX custom_domains_tenant_host ON custom_domains (tenant_id, host);
GRANT UPDATE (verification_token, created_at) ON custom_domains TO authio_app;

-- A proof of the host by `p_tenant`'s claim `p_id`: other tenants' pending claims on the host
-- are dropped (the caller's row policy cannot see them), and the claim is marked verified.
-- Returns 'verified', 'taken' (another claim on the host is verified) or 'missing'.
CREATE FUNCTION authio_domain_prove(p_tenant uuid, p_id uuid, p_now timestamptz, OUT status text, OUT dropped integer)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
DECLARE
    h text;
BEGIN
    dropped := 0;
    -- Only for the tenant the caller's transaction is pinned to.
    IF p_tenant IS DISTINCT FROM nullif(current_setting('authio.tenant_id', true), '')::uuid THEN
        status := 'missing';
        RETURN;
    END IF;
    -- The host first without a row lock, then the host's lock, then the row: provers of one host
    -- take their locks in the same order (row first, then host, could deadlock two of them).
    SELECT d.host INTO h FROM public.custom_domains d WHERE d.tenant_id = p_tenant AND d.id = p_id;
    IF h IS NULL THEN
        status := 'missing';
        RETURN;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtextextended('authio_domain:' || h, 0));
    PERFORM 1 FROM public.custom_domains d WHERE d.tenant_id = p_tenant AND d.id = p_id FOR UPDATE;
    IF NOT FOUND THEN
        status := 'missing';
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM public.custom_domains d
               WHERE d.host = h AND d.verified_at IS NOT NULL AND NOT (d.tenant_id = p_tenant AND d.id = p_id)) THEN
        status := 'taken';
        RETURN;
    END IF;
    DELETE FROM public.custom_domains d
    WHERE d.host = h AND d.verified_at IS NULL AND NOT (d.tenant_id = p_tenant AND d.id = p_id);
    GET DIAGNOSTICS dropped = ROW_COUNT;
    UPDATE public.custom_domains d SET verified_at = p_now, last_checked_at = p_now
    WHERE d.tenant_id = p_tenant AND d.id = p_id;
    status := 'verified';
END
$$;
REVOKE EXECUTE ON FUNCTION authio_domain_prove(uuid, uuid, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION authio_domain_prove(uuid, uuid, timestamptz) TO authio_app;
