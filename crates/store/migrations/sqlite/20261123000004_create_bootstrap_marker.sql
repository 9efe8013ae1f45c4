-- One row once the first workspace and admin exist, so that concurrent first starts
-- bootstrap exactly once.
CREATE TABLE bootstrap_marker (
    id INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    created_at TEXT NOT NULL
);
