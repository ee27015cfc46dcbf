-- The node's own settings that must survive a restart: the widget secret and the generated
-- publish key, so widget URLs pasted into OBS and the printed key keep working. A step of its
-- own, after the receivers' tables: a database of the first schema is upgraded in place, and
-- the upgrade test (tests/api/embedded.rs) starts from one.
CREATE TABLE node (
    name  TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);
