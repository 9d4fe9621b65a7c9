-- Addresses are compared in one spelling from now on (Unicode NFC, see `Email::parse`): stored
-- ones are brought to NFC, unless that would make two accounts of one project share an address
-- (those are left as they are, for an operator to merge). Domains stored in Unicode are not
-- rewritten to their ASCII form here (PostgreSQL has no IDNA); such an account signs in again
-- by link or code under the ASCII spelling.
UPDATE users u SET email = normalize(u.email, NFC)
 WHERE NOT (u.email IS NFC NORMALIZED)
   AND NOT EXISTS (SELECT 1 FROM users o
                    WHERE o.tenant_id = u.tenant_id AND o.project_id = u.project_id
                      AND o.email = normalize(u.email, NFC));
UPDATE user_identities i SET email = normalize(i.email, NFC)
 WHERE i.email IS NOT NULL AND NOT (i.email IS NFC NORMALIZED);
