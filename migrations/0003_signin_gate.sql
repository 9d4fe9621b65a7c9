-- Sign-in throttles in one round trip, and narrower grants on users.

-- Count a sign-in attempt against the client's IP and against the account (project and email
-- hash, whether the account exists or not) at once, before the password is checked: guesses
-- already in flight are counted too. A successful sign-in resets the account's count.
CREATE FUNCTION authio_rate_hit_both(p_bucket_a text, p_key_a text, p_window_a integer,
                                     p_bucket_b text, p_key_b text, p_window_b integer,
                                     p_now timestamptz)
RETURNS TABLE (hits_a integer, window_ends_a timestamptz, hits_b integer, window_ends_b timestamptz)
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
    SELECT a.hits, a.window_ends, b.hits, b.window_ends
    FROM public.authio_rate_hit(p_bucket_a, p_key_a, p_window_a, p_now) a,
         public.authio_rate_hit(p_bucket_b, p_key_b, p_window_b, p_now) b
$$;
REVOKE EXECUTE ON FUNCTION authio_rate_hit_both(text, text, integer, text, text, integer, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION authio_rate_hit_both(text, text, integer, text, text, integer, timestamptz) TO authio_app;

-- authio_app may change what the API changes about a user, not its role: a role is granted by
-- operators only (the platform's `operator` role opens the management API).
REVOKE UPDATE ON users FROM authio_app;
GRANT UPDATE (email, email_verified, disabled, password_hash, updated_at) ON users TO authio_app;
