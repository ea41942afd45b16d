-- A user's unpaid orders, for the per-user caps checked when an order is placed
-- (MAX_OPEN_ORDERS_PER_USER, MAX_UNITS_PER_PRODUCT_PER_USER).
CREATE INDEX orders_user_open_idx ON orders (user_id) WHERE state = 'CONFIRMED';
