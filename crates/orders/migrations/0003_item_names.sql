-- The product's name as it was when the order was placed, for the customer's receipt
-- (order.confirmed carries the lines). Lines placed before this column have none.
ALTER TABLE order_items ADD COLUMN name TEXT NOT NULL DEFAULT '';
