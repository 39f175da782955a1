-- Live notifications across replicas: every stored notification is
-- announced on the `stockmesh_notifications` channel when its transaction
-- commits (NOTIFY is transactional), so each replica's listener can push it
-- to the browsers connected to that replica, whichever replica consumed the
-- event. The payload is the notification as clients see it; the message is
-- cut to 2000 characters to stay far below NOTIFY's 8000-byte limit (the
-- service writes messages of about a hundred).
CREATE FUNCTION notifications_announce() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(
        'stockmesh_notifications',
        json_build_object(
            'id', NEW.id,
            'user_id', NEW.user_id,
            'order_id', NEW.order_id,
            'kind', NEW.kind,
            'message', left(NEW.message, 2000),
            'created_at', NEW.created_at,
            'read_at', NEW.read_at
        )::text
    );
    RETURN NULL;
END;
$$;

CREATE TRIGGER notifications_announce
    AFTER INSERT ON notifications
    FOR EACH ROW EXECUTE FUNCTION notifications_announce();
