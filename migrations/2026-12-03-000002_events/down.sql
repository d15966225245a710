DROP TRIGGER accounts_changed ON accounts;
DROP TRIGGER orders_changed ON orders;
DROP TRIGGER orders_uploaded ON orders;
DROP FUNCTION record_balance_event();
DROP FUNCTION record_order_event();
DROP TABLE events_pruned;
DROP TABLE events;
