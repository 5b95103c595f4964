-- Column mapping ("field mapper"): columns named after Amplitude's top-level
-- fields go to the top level (snake_case to camelCase where Amplitude wants
-- it), json columns fill the object fields, and every other column becomes an
-- event property. Mistakes in the query are errors before anything is sent.
SELECT mock_reset();

SELECT status, rows_read, sent, rejected FROM amplitude_sync.amplitude_send_events('amplitude_mock', $$
    SELECT 'Order Completed' AS event_type, 4200042 AS user_id, 'device-abc-123' AS device_id,
           '2024-05-01 10:00:00+00'::timestamptz AS time,
           '2024-05-01 09:55:00+00'::timestamptz AS session_id,
           17 AS event_id, 'order-17' AS insert_id,
           '2.1.0' AS app_version, 'iOS' AS platform, 'ios' AS os_name, '17.4' AS os_version,
           'Apple' AS device_brand, 'Apple' AS device_manufacturer, 'iPhone15,2' AS device_model,
           'Orange' AS carrier, 'France' AS country, 'IDF' AS region, 'Paris' AS city,
           'fr' AS language, 'Paris' AS dma,
           19.99 AS price, 2 AS quantity, 39.98::numeric AS revenue, 'sku-1' AS product_id,
           'purchase' AS revenue_type, 'EUR' AS currency, 48.8566 AS location_lat,
           2.3522::float8 AS location_lng, '$remote' AS ip, 'idfa-1' AS idfa, 'idfv-1' AS idfv,
           'partner-1' AS partner_id, 'Mozilla/5.0' AS user_agent,
           '{"$set": {"plan": "pro"}, "$add": {"orders": 1}}'::jsonb AS user_properties,
           '{"company": "acme-corp"}'::jsonb AS groups,
           '{"company": {"seats": 10}}'::jsonb AS group_properties,
           '{"coupon": "SPRING", "items": 2, "channel": "overridden"}'::jsonb AS event_properties,
           'web' AS channel, 'pro' AS plan, false AS skip_user_properties_sync
$$);
SELECT jsonb_pretty((body->>'body')::jsonb->'events'->0)
FROM mock_call('GET', '/_mock/bodies') body;

-- "plan" is Amplitude's tracking-plan object only when it is json.
SELECT status, sent FROM amplitude_sync.amplitude_send_events('amplitude_mock', $$
    SELECT 'Viewed' AS event_type, 'user-plan1' AS user_id,
           '{"branch": "main", "source": "web", "version": "3"}'::jsonb AS plan
$$);
SELECT e->'plan' AS plan, e->'event_properties' AS props FROM mock_events() e
WHERE e->>'user_id' = 'user-plan1';

-- The same row always gets the same insert_id; a different row another one.
SELECT mock_reset();
SELECT sent FROM amplitude_sync.amplitude_send_events('amplitude_mock', $$
    SELECT 'Page Viewed' AS event_type, 'user-dedup' AS user_id, p AS page
    FROM (VALUES ('/home'), ('/pricing')) t(p)
$$);
SELECT sent FROM amplitude_sync.amplitude_send_events('amplitude_mock', $$
    SELECT 'Page Viewed' AS event_type, 'user-dedup' AS user_id, p AS page
    FROM (VALUES ('/home'), ('/pricing')) t(p)
$$);
-- Four events were posted, two distinct insert_ids, so Amplitude keeps two.
SELECT count(*) AS posted, count(DISTINCT e->>'insert_id') AS distinct_insert_ids
FROM mock_requests() r, jsonb_array_elements(r->'events') e;
SELECT e->'event_properties'->>'page' AS page, e->>'insert_id' ~ '^as-[0-9a-f]{32}$' AS derived
FROM mock_events() e ORDER BY 1;
SELECT (SELECT stats FROM mock_call('GET', '/_mock/stats') stats)->>'duplicates_dropped' AS duplicates_dropped;

-- Mistakes in the query are errors, before anything is read or sent.
SELECT * FROM amplitude_sync.amplitude_send_events('amplitude_mock', $$SELECT 'user-1' AS user_id$$);
SELECT * FROM amplitude_sync.amplitude_send_events('amplitude_mock', $$SELECT 'Viewed' AS event_type$$);
SELECT * FROM amplitude_sync.amplitude_send_events('amplitude_mock', $$SELECT$$);
SELECT * FROM amplitude_sync.amplitude_send_events('amplitude_mock',
    $$SELECT 'e' AS event_type, 'user-1' AS user_id, 1 AS x, 2 AS x$$);
SELECT * FROM amplitude_sync.amplitude_send_events('amplitude_mock',
    $$SELECT 'e' AS event_type, 'user-1' AS user_id, 'p' AS product_id, 'q' AS "productId"$$);
SELECT * FROM amplitude_sync.amplitude_send_events('amplitude_mock',
    $$SELECT 'e' AS event_type, 'user-1' AS user_id, 'yesterday' AS time$$);
SELECT * FROM amplitude_sync.amplitude_send_events('amplitude_mock',
    $$SELECT 'e' AS event_type, 'user-1' AS user_id, 1.5 AS event_id$$);
SELECT * FROM amplitude_sync.amplitude_send_events('amplitude_mock',
    $$SELECT 'e' AS event_type, 'user-1' AS user_id, 'a=1' AS user_properties$$);
SELECT * FROM amplitude_sync.amplitude_send_events('amplitude_mock',
    $$SELECT 'e' AS event_type, ARRAY['user-1'] AS user_id$$);
SELECT * FROM amplitude_sync.amplitude_send_events('amplitude_mock', 'SELEC 1');
SELECT * FROM amplitude_sync.amplitude_send_events('amplitude_mock', 'SELECT 1; SELECT 2');
SELECT * FROM amplitude_sync.amplitude_send_events('amplitude_mock', 'CREATE TABLE nope (a int)');
SELECT * FROM amplitude_sync.amplitude_send_events('amplitude_mock', NULL);
SELECT * FROM amplitude_sync.amplitude_send_events('amplitude_mock', 'SELECT 1', api => 'v3');
SELECT * FROM amplitude_sync.amplitude_send_events('amplitude_mock', 'SELECT 1', batch_size => 5000);
-- A query that fails while rows are read: the error is the query's own.
SELECT * FROM amplitude_sync.amplitude_send_events('amplitude_mock',
    $$SELECT 'e' AS event_type, 'user-' || (10 / (3 - g)) AS user_id FROM generate_series(1, 5) g$$);
-- The query runs with the caller's rights.
CREATE TABLE secret_events AS SELECT 'Secret' AS event_type, 'user-secret' AS user_id;
REVOKE ALL ON secret_events FROM PUBLIC;
CALL create_test_mapping('regress_amp_sender', 'amplitude_mock');
GRANT USAGE ON FOREIGN SERVER amplitude_mock TO regress_amp_sender;
GRANT EXECUTE ON FUNCTION amplitude_sync.amplitude_send_events TO regress_amp_sender;
SET ROLE regress_amp_sender;
SELECT * FROM amplitude_sync.amplitude_send_events('amplitude_mock', 'SELECT * FROM secret_events');
RESET ROLE;
-- An empty result sends nothing and succeeds.
SELECT mock_reset();
SELECT status, rows_read, sent, rejected, requests FROM amplitude_sync.amplitude_send_events('amplitude_mock',
    $$SELECT 'e' AS event_type, 'user-1' AS user_id WHERE false$$);
SELECT count(*) AS requests FROM mock_requests();
