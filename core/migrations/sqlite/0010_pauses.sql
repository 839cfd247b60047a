-- Paused dispatch: a row per paused job name of a space, or one with the
-- empty name for the whole space. Ready jobs it covers are never delivered;
-- everything else (creates, timers) goes on.
CREATE TABLE pauses (
    space_id TEXT NOT NULL,
    name TEXT NOT NULL,
    paused_at INTEGER NOT NULL,
    PRIMARY KEY (space_id, name)
);
