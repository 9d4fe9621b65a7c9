-- The audit relay reads and clears the shared outbox as a role of its own: authio_app may add
-- events to the outbox (in the transaction of the change) but can neither read other tenants'
-- pending events nor delete them before they reach their homes.
GRANT USAGE ON SCHEMA public TO authio_relay;
REVOKE EXECUTE ON FUNCTION authio_audit_outbox_take_skipping(integer, uuid[]) FROM authio_app;
REVOKE EXECUTE ON FUNCTION authio_audit_outbox_done(uuid) FROM authio_app;
GRANT EXECUTE ON FUNCTION authio_audit_outbox_take_skipping(integer, uuid[]) TO authio_relay;
GRANT EXECUTE ON FUNCTION authio_audit_outbox_done(uuid) TO authio_relay;
