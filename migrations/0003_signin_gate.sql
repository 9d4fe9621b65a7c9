-- One round trip for a sign-in's two throttles: count the attempt against the client's IP and
-- read the account's failures so far.
CREATE FUNCTION authio_rate_hit_and_peek(p_hit_bucket text, p_hit_key text, p_hit_window integer,
                                         p_peek_bucket text, p_peek_key text, p_peek_window integer,
                                         p_now timestamptz)
RETURNS TABLE (hits integer, window_ends timestamptz, peek_hits integer, peek_window_ends timestamptz)
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
    SELECT h.hits, h.window_ends, p.hits, p.window_ends
    FROM public.authio_rate_hit(p_hit_bucket, p_hit_key, p_hit_window, p_now) h
    LEFT JOIN public.authio_rate_peek(p_peek_bucket, p_peek_key, p_peek_window, p_now) p ON true
$$;
REVOKE EXECUTE ON FUNCTION authio_rate_hit_and_peek(text, text, integer, text, text, integer, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION authio_rate_hit_and_peek(text, text, integer, text, text, integer, timestamptz) TO authio_app;
