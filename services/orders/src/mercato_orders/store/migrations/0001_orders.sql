-- Orders, their state history, and the idempotency keys of CreateOrder.

CREATE TABLE orders (
    id                  uuid PRIMARY KEY,
    -- The owner: the access token's subject (an auth user id).
    user_id             text NOT NULL,
    state               text NOT NULL CHECK (
        state IN ('PENDING', 'CONFIRMED', 'PAID', 'FULFILLED', 'CANCELLED', 'FAILED')
    ),
    -- Money: one ISO 4217 currency per order, integer minor units.
    currency_code       text NOT NULL CHECK (currency_code ~ '^[A-Z]{3}$'),
    total_minor         bigint NOT NULL CHECK (total_minor >= 0),
    -- The lines as placed (immutable): [{"sku", "quantity", "name", "unit_price_minor"}].
    lines               jsonb NOT NULL,
    payment_id          text NOT NULL DEFAULT '',
    state_reason        text NOT NULL DEFAULT '',
    shipment_reference  text NOT NULL DEFAULT '',
    idempotency_key     text NOT NULL,
    -- Owed to other systems after a committed change: give the stock back to the catalog,
    -- refund the payment. Cleared once done (right after the change, else by reconciliation).
    release_pending     boolean NOT NULL DEFAULT false,
    refund_pending      boolean NOT NULL DEFAULT false,
    version             integer NOT NULL DEFAULT 1,
    create_time         timestamptz NOT NULL,
    update_time         timestamptz NOT NULL
);

-- ListOrders, newest first: one user's, and everyone's.
CREATE INDEX orders_user_created_idx ON orders (user_id, create_time DESC, id DESC);
CREATE INDEX orders_created_idx ON orders (create_time DESC, id DESC);
-- Reconciliation: owed releases/refunds, and CONFIRMED orders whose reservation may lapse.
CREATE INDEX orders_owed_idx ON orders (update_time) WHERE release_pending OR refund_pending;
CREATE INDEX orders_confirmed_idx ON orders (create_time) WHERE state = 'CONFIRMED';

-- Every state transition of an order, oldest first (seq), with time and actor.
CREATE TABLE order_transitions (
    order_id    uuid NOT NULL REFERENCES orders (id),
    seq         integer NOT NULL,
    -- NULL for the first transition (to PENDING).
    from_state  text,
    to_state    text NOT NULL,
    time        timestamptz NOT NULL,
    -- A user id, or "system" (saga, expiry, reconciliation).
    actor       text NOT NULL,
    reason      text NOT NULL DEFAULT '',
    PRIMARY KEY (order_id, seq)
);

-- CreateOrder idempotency keys, per user. A row is claimed (INSERT ... ON CONFLICT DO NOTHING)
-- before anything is reserved: PENDING while one create owns it (owner, lease_until), DONE
-- once its order committed (kept until expire_time, at least 24 hours).
CREATE TABLE idempotency_keys (
    user_id      text NOT NULL,
    key          text NOT NULL,
    -- SHA-256 of the canonical request body: another body under the same key is refused.
    fingerprint  text NOT NULL,
    -- The order this key places; also the catalog reservation's id.
    order_id     uuid NOT NULL,
    state        text NOT NULL CHECK (state IN ('PENDING', 'DONE')),
    -- Claim token of the create (or reconciliation) working on the key, and until when.
    owner        uuid NOT NULL,
    lease_until  timestamptz NOT NULL,
    create_time  timestamptz NOT NULL DEFAULT clock_timestamp(),
    expire_time  timestamptz,
    PRIMARY KEY (user_id, key)
);

-- Reconciliation of abandoned creates, and the orphan check by order id.
CREATE INDEX idempotency_keys_pending_idx ON idempotency_keys (lease_until)
    WHERE state = 'PENDING';
CREATE INDEX idempotency_keys_order_idx ON idempotency_keys (order_id);
-- Housekeeping of expired keys.
CREATE INDEX idempotency_keys_expire_idx ON idempotency_keys (expire_time)
    WHERE state = 'DONE';
