"""WatchTasks: the change log read back as ordered, resumable, authorized streams.

- `changes`: what one recorded change is, and the queries over `task_changes`;
- `feed`: the one long-lived ChangeFeed per process, reading new changes once per wake-up and
  fanning them out to every open stream's bounded buffer, and compacting old history;
- `streams`: one stream's rules (start revision, history then live hand-over, filter and owner
  per change, bookmarks, re-authentication), with no gRPC in sight.

The change log itself is written by database triggers (migration 0009), never by this package.
"""
