-- A registry at schema version 3 (PRAGMA user_version 3), written by nodeferry's
-- hand-written SQLite registry and fleet store as of commit 23e2bca, dumped with
-- sqlite3's iterdump: three tasks (completed, running, a queued retry) and a fleet.
BEGIN TRANSACTION;
CREATE TABLE fleet_members (
    fleet_id   TEXT NOT NULL REFERENCES fleets (fleet_id) ON DELETE CASCADE,
    position   INTEGER NOT NULL,
    target     TEXT NOT NULL,
    ui_home    TEXT NOT NULL,
    task_id    TEXT,
    error_code TEXT,
    error      TEXT,
    PRIMARY KEY (fleet_id, position)
);
INSERT INTO "fleet_members" VALUES('44444444-4444-4444-8444-444444444444',0,'root@10.0.0.1','/w/ComfyUI','11111111-1111-4111-8111-111111111111',NULL,NULL);
CREATE TABLE fleets (
    fleet_id     TEXT PRIMARY KEY,
    created_at   REAL NOT NULL,
    request_json TEXT NOT NULL
);
INSERT INTO "fleets" VALUES('44444444-4444-4444-8444-444444444444',1000.0,'{"targets": ["root@10.0.0.1"]}');
CREATE TABLE resolutions (
    task_id   TEXT PRIMARY KEY,
    plan_json TEXT NOT NULL
);
INSERT INTO "resolutions" VALUES('11111111-1111-4111-8111-111111111111','{"nodes": []}');
CREATE TABLE tasks (
    task_id     TEXT PRIMARY KEY,
    target_kind TEXT NOT NULL,
    target_user TEXT NOT NULL,
    target_host TEXT NOT NULL,
    target_port INTEGER NOT NULL,
    target_key  TEXT NOT NULL,
    ui_home     TEXT NOT NULL,
    spec_json   TEXT NOT NULL,
    created_at  REAL NOT NULL,
    finished_at REAL,
    state       TEXT NOT NULL,
    launched    INTEGER NOT NULL DEFAULT 0,
    progress_json TEXT
, not_before REAL, retry_of TEXT, retried_by TEXT, attempt INTEGER NOT NULL DEFAULT 1, auto_retry INTEGER NOT NULL DEFAULT 0, total_nodes INTEGER NOT NULL DEFAULT 0, processed INTEGER NOT NULL DEFAULT 0, successful INTEGER NOT NULL DEFAULT 0, failed INTEGER NOT NULL DEFAULT 0, skipped INTEGER NOT NULL DEFAULT 0, current_node TEXT, error TEXT, error_code TEXT, updated_at TEXT, node_summary TEXT, pruned INTEGER NOT NULL DEFAULT 0, target_route TEXT, notes_json TEXT);
INSERT INTO "tasks" VALUES('11111111-1111-4111-8111-111111111111','ssh','root','10.0.0.1',22,'root@10.0.0.1:22','/w/ComfyUI','{"task_id": "11111111-1111-4111-8111-111111111111"}',1000.0,1010.0,'completed',1,'{"task_id":"11111111-1111-4111-8111-111111111111","ui_home":"/w/ComfyUI","state":"completed","schema":1,"pid":null,"boot_id":null,"started_at":"2026-12-04T20:16:32.120Z","updated_at":"2026-12-04T20:16:32.120Z","finished_at":null,"total_nodes":1,"processed":1,"successful":1,"failed":0,"skipped":0,"current_node":null,"current_status":null,"has_requirements":false,"requirements_status":"none","nodes":[{"name":"ComfyUI-Plain","url":"https://example.invalid/ComfyUI-Plain","ref":null,"status":"installed","commit":null,"requirements_status":"none","error":null,"started_at":null,"finished_at":null,"import":null,"install_script_status":"none","warnings":[],"error_code":null}],"exit_code":null,"error":null,"error_code":null,"log_file":null,"installer":null,"warnings":[],"packages":{}}',NULL,NULL,'33333333-3333-4333-8333-333333333333',1,0,1,1,1,0,0,NULL,NULL,NULL,'2026-12-04T20:16:32.120Z','[["ComfyUI-Plain","https://example.invalid/ComfyUI-Plain",null,"installed",null,null]]',0,NULL,'["a note"]');
INSERT INTO "tasks" VALUES('22222222-2222-4222-8222-222222222222','ssh','root','10.0.0.1',22,'root@10.0.0.1:22','/w/ComfyUI','{"task_id": "22222222-2222-4222-8222-222222222222"}',1020.0,NULL,'cloning',1,'{"task_id":"22222222-2222-4222-8222-222222222222","ui_home":"/w/ComfyUI","state":"cloning","schema":1,"pid":null,"boot_id":null,"started_at":"2026-12-04T20:16:32.124Z","updated_at":"2026-12-04T20:16:32.124Z","finished_at":null,"total_nodes":0,"processed":0,"successful":0,"failed":0,"skipped":0,"current_node":null,"current_status":null,"has_requirements":false,"requirements_status":"none","nodes":[],"exit_code":null,"error":null,"error_code":null,"log_file":null,"installer":null,"warnings":[],"packages":{}}',NULL,NULL,NULL,1,0,0,0,0,0,0,NULL,NULL,NULL,'2026-12-04T20:16:32.124Z','[]',0,NULL,NULL);
INSERT INTO "tasks" VALUES('33333333-3333-4333-8333-333333333333','ssh','root','10.0.0.1',22,'root@10.0.0.1:22','/w/ComfyUI','{"task_id": "33333333-3333-4333-8333-333333333333"}',1030.0,NULL,'queued',0,'{"task_id":"33333333-3333-4333-8333-333333333333","ui_home":"/w/ComfyUI","state":"queued","schema":1,"pid":null,"boot_id":null,"started_at":"2026-12-04T20:16:32.125Z","updated_at":"2026-12-04T20:16:32.125Z","finished_at":null,"total_nodes":0,"processed":0,"successful":0,"failed":0,"skipped":0,"current_node":null,"current_status":null,"has_requirements":false,"requirements_status":"none","nodes":[],"exit_code":null,"error":null,"error_code":null,"log_file":null,"installer":null,"warnings":[],"packages":{}}',1040.0,'11111111-1111-4111-8111-111111111111',NULL,2,1,0,0,0,0,0,NULL,NULL,NULL,'2026-12-04T20:16:32.125Z','[]',0,NULL,NULL);
CREATE INDEX tasks_running ON tasks (target_key, ui_home, state);
CREATE INDEX tasks_created ON tasks (created_at);
CREATE INDEX tasks_page ON tasks (pruned, created_at, task_id);
CREATE INDEX tasks_home_history ON tasks (target_key, ui_home, created_at);
CREATE INDEX tasks_finished ON tasks (finished_at);
CREATE INDEX fleet_members_task ON fleet_members (task_id);
COMMIT;
