-- Accounts, service clients, refresh tokens, signing keys and login throttling.

CREATE TABLE users (
    id              uuid PRIMARY KEY,
    -- Normalised (trimmed, lower-cased) by the service.
    email           text NOT NULL,
    display_name    text NOT NULL,
    -- argon2id PHC string.
    password_hash   text NOT NULL,
    roles           text[] NOT NULL CHECK (cardinality(roles) > 0),
    state           text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'disabled')),
    create_time     timestamptz NOT NULL,
    update_time     timestamptz NOT NULL,
    disable_time    timestamptz,
    disable_reason  text,
    disabled_by     text
);
CREATE UNIQUE INDEX users_email_key ON users (email);
-- ListUsers: newest first, keyset pagination.
CREATE INDEX users_create_time_idx ON users (create_time DESC, id DESC);

-- Confidential service clients (client_credentials grant).
CREATE TABLE oauth_clients (
    client_id    text PRIMARY KEY,
    secret_hash  text NOT NULL,
    scopes       text[] NOT NULL,
    disabled     boolean NOT NULL DEFAULT false,
    create_time  timestamptz NOT NULL,
    update_time  timestamptz NOT NULL
);

-- A chain of refresh tokens from one login; revoked as a whole on logout, disable or reuse.
CREATE TABLE refresh_token_families (
    id             uuid PRIMARY KEY,
    user_id        uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    client_id      text NOT NULL,
    -- Space-separated scopes of the original request; NULL: all the user's scopes at each use.
    scope          text,
    create_time    timestamptz NOT NULL,
    revoke_time    timestamptz,
    revoke_reason  text
);
CREATE INDEX refresh_token_families_user_idx ON refresh_token_families (user_id)
    WHERE revoke_time IS NULL;

CREATE TABLE refresh_tokens (
    id           uuid PRIMARY KEY,
    family_id    uuid NOT NULL REFERENCES refresh_token_families (id) ON DELETE CASCADE,
    -- SHA-256 of the token; the token itself is never stored.
    token_hash   bytea NOT NULL,
    create_time  timestamptz NOT NULL,
    expire_time  timestamptz NOT NULL,
    -- Set when the token was exchanged for its successor; presenting it again is reuse.
    use_time     timestamptz,
    replaced_by  uuid
);
CREATE UNIQUE INDEX refresh_tokens_hash_key ON refresh_tokens (token_hash);
CREATE INDEX refresh_tokens_family_idx ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_expire_idx ON refresh_tokens (expire_time);

CREATE TABLE signing_keys (
    kid              text PRIMARY KEY,
    alg              text NOT NULL CHECK (alg IN ('EdDSA', 'ES256')),
    state            text NOT NULL CHECK (state IN ('next', 'active', 'retired')),
    public_jwk       jsonb NOT NULL,
    -- AES-256-GCM (nonce || ciphertext || tag) of the PKCS#8 private key, bound to kid.
    private_key_enc  bytea NOT NULL,
    -- Which key-encryption key sealed it (a fingerprint, not the key).
    kek_id           text NOT NULL,
    create_time      timestamptz NOT NULL,
    activate_time    timestamptz,
    retire_time      timestamptz,
    -- A retired key stays in the JWKS until then.
    publish_until    timestamptz,
    CHECK (state <> 'retired' OR (retire_time IS NOT NULL AND publish_until IS NOT NULL))
);
-- At most one active and one next key.
CREATE UNIQUE INDEX signing_keys_one_per_live_state ON signing_keys (state)
    WHERE state IN ('next', 'active');

-- Failed login / client authentication counters, shared by every replica.
CREATE TABLE login_throttle (
    key                text PRIMARY KEY,
    kind               text NOT NULL,
    failures           integer NOT NULL,
    last_failure_time  timestamptz NOT NULL,
    locked_until       timestamptz
);
CREATE INDEX login_throttle_last_failure_idx ON login_throttle (last_failure_time);
