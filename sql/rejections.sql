-- Rows Amplitude would refuse are caught before sending, not sent, and
-- recorded with their reason; rows_read = sent + rejected.
SELECT mock_reset();

SELECT status, rows_read, sent, rejected, not_sent FROM amplitude_sync.amplitude_send_events('amplitude_mock', $$
    SELECT * FROM (VALUES
        (1, 'Good', 'user-00001', NULL, NULL::jsonb, NULL::jsonb),
        (2, NULL, 'user-00002', NULL, NULL, NULL),
        (3, '', 'user-00003', NULL, NULL, NULL),
        (4, 'No Ids', NULL, NULL, NULL, NULL),
        (5, 'Short', 'abc', NULL, NULL, NULL),
        (6, 'Refused', 'null', NULL, NULL, NULL),
        (7, 'Refused', 'Anonymous', NULL, NULL, NULL),
        (8, 'Refused', 'N/A', NULL, NULL, NULL),
        (9, 'Refused', NULL, '00000000-0000-0000-0000-000000000000', NULL, NULL),
        (10, 'Refused', 'user-00010', '-1', NULL, NULL),
        (11, 'Short Device', NULL, 'dev', NULL, NULL),
        (12, 'Deep', 'user-00012', NULL, NULL, (repeat('[', 39) || repeat(']', 39))::jsonb),
        (13, 'Too Deep', 'user-00013', NULL, NULL, (repeat('[', 40) || repeat(']', 40))::jsonb),
        (14, 'Not An Object', 'user-00014', NULL, '[1, 2]'::jsonb, NULL),
        (15, 'Good Device', NULL, 'device-00015', '{"plan": "pro"}'::jsonb, NULL)
    ) AS t(n, event_type, user_id, device_id, user_properties, nested)
    ORDER BY n
$$);
-- (A property sits inside event_properties, so 39 nested arrays make depth 40,
-- Amplitude's limit, and 40 make 41.)
SELECT row_number, outcome, field, reason, user_id, device_id, event_type
FROM amplitude_sync.rejected_records
WHERE run_id = (SELECT max(run_id) FROM amplitude_sync.sync_runs) ORDER BY row_number;
-- The payload is kept (the API key never is) when the row could be encoded.
SELECT row_number, payload IS NOT NULL AS has_payload, strpos(payload::text, test_api_key()) > 0 AS leaks_key
FROM amplitude_sync.rejected_records
WHERE run_id = (SELECT max(run_id) FROM amplitude_sync.sync_runs) ORDER BY row_number;
SELECT run_id = (SELECT max(run_id) FROM amplitude_sync.sync_runs) AS latest, status,
       rows_read = sent + rejected + not_sent AS balanced, rows_read, sent, rejected
FROM amplitude_sync.sync_runs ORDER BY run_id DESC LIMIT 1;
-- Only the good rows reached Amplitude, and they passed its own checks.
SELECT (e->'event_properties'->>'n')::int AS n, e->>'event_type' AS event_type
FROM mock_events() e ORDER BY 1;
SELECT r->>'status' AS status FROM mock_requests() r;

-- min_id_length relaxes the length rule for projects configured that way
-- (it is sent along, so Amplitude applies the same rule).
SELECT mock_reset();
SELECT rows_read, sent, rejected FROM amplitude_sync.amplitude_send_events('amplitude_mock',
    $$SELECT 'Short Ok' AS event_type, 'abc' AS user_id$$, min_id_length => 3);
SELECT r->'response'->>'code' AS code, (r->>'body_bytes')::int > 0 AS has_body FROM mock_requests() r;
SELECT position('"options":{"min_id_length":3}' IN body->>'body') > 0 AS sends_option
FROM mock_call('GET', '/_mock/bodies') body;

-- One row larger than a request may be: rejected with the sizes.
SELECT mock_reset();
SELECT rows_read, sent, rejected FROM amplitude_sync.amplitude_send_events('amplitude_mock',
    $$SELECT 'Huge' AS event_type, 'user-huge1' AS user_id, repeat('y', 1100000) AS blob$$);
SELECT field, reason, payload IS NULL AS payload_not_kept FROM amplitude_sync.rejected_records
WHERE run_id = (SELECT max(run_id) FROM amplitude_sync.sync_runs);
SELECT count(*) AS requests FROM mock_requests();
