-- Secrets a service client may still use while it changes to a new one (a rotation: auth
-- accepts both until every caller has the new secret, then the old one is dropped).
ALTER TABLE oauth_clients ADD COLUMN previous_secret_hashes text[] NOT NULL DEFAULT '{}';
