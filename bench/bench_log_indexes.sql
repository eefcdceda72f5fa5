-- What each index on the event log costs PostgreSQL on insert (docs/benchmarks.md, session 4).
--
--     psql -h 127.0.0.1 -U postgres -d test -f bench/bench_log_indexes.sql
--
-- Three copies of the events table take the same 400,000 events in one INSERT … SELECT …
-- ON CONFLICT … RETURNING each (the shape of a group commit, in one statement): ev_a as the
-- table was before migration 0005 (primary key, idempotency index, (env, customer_id, ts)),
-- ev_b the same with the key columns in the "C" collation, ev_c is ev_b without the
-- (customer, ts) index. Then the same again with fresh ids, into the filled tables. Compare the "Time:"
-- lines of the INSERTs. Drops everything it made.
\timing on
DROP TABLE IF EXISTS ev_a, ev_b, ev_c, src;
CREATE TABLE src AS SELECT 'test'::text env, 'cust_' || lpad((i % 1000)::text, 6, '0') customer_id, 'b1f2e3d4-' || i || '-evt' event_id, 'llm.completion'::text type, (1764390000000000 + i*20)::bigint ts, '{"model":"gpt-4o","input_tokens":1234,"output_tokens":321}'::text properties FROM generate_series(1, 400000) i;
CREATE TABLE ev_a (seq bigserial primary key, env varchar(8) not null, shard int not null, customer_id varchar(255) not null, event_id varchar(255) not null, type varchar(255) not null, ts bigint not null, properties text not null, received_at bigint not null, unique (env, customer_id, event_id));
CREATE INDEX ON ev_a (env, customer_id, ts);
CREATE TABLE ev_b (seq bigserial primary key, env varchar(8) COLLATE "C" not null, shard int not null, customer_id varchar(255) COLLATE "C" not null, event_id varchar(255) COLLATE "C" not null, type varchar(255) not null, ts bigint not null, properties text not null, received_at bigint not null, unique (env, customer_id, event_id));
CREATE INDEX ON ev_b (env, customer_id, ts);
CREATE TABLE ev_c (seq bigserial primary key, env varchar(8) COLLATE "C" not null, shard int not null, customer_id varchar(255) COLLATE "C" not null, event_id varchar(255) COLLATE "C" not null, type varchar(255) not null, ts bigint not null, properties text not null, received_at bigint not null, unique (env, customer_id, event_id));
-- warm
SELECT count(*) FROM src;
INSERT INTO ev_a (env, shard, customer_id, event_id, type, ts, properties, received_at) SELECT env, 0, customer_id, event_id, type, ts, properties, 0 FROM src ON CONFLICT (env, customer_id, event_id) DO NOTHING RETURNING seq \g /dev/null
INSERT INTO ev_b (env, shard, customer_id, event_id, type, ts, properties, received_at) SELECT env, 0, customer_id, event_id, type, ts, properties, 0 FROM src ON CONFLICT (env, customer_id, event_id) DO NOTHING RETURNING seq \g /dev/null
INSERT INTO ev_c (env, shard, customer_id, event_id, type, ts, properties, received_at) SELECT env, 0, customer_id, event_id, type, ts, properties, 0 FROM src ON CONFLICT (env, customer_id, event_id) DO NOTHING RETURNING seq \g /dev/null
UPDATE src SET event_id = event_id || 'x';
INSERT INTO ev_a (env, shard, customer_id, event_id, type, ts, properties, received_at) SELECT env, 0, customer_id, event_id, type, ts, properties, 0 FROM src ON CONFLICT (env, customer_id, event_id) DO NOTHING RETURNING seq \g /dev/null
INSERT INTO ev_b (env, shard, customer_id, event_id, type, ts, properties, received_at) SELECT env, 0, customer_id, event_id, type, ts, properties, 0 FROM src ON CONFLICT (env, customer_id, event_id) DO NOTHING RETURNING seq \g /dev/null
INSERT INTO ev_c (env, shard, customer_id, event_id, type, ts, properties, received_at) SELECT env, 0, customer_id, event_id, type, ts, properties, 0 FROM src ON CONFLICT (env, customer_id, event_id) DO NOTHING RETURNING seq \g /dev/null
DROP TABLE ev_a, ev_b, ev_c, src;
