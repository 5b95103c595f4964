// The comparison case: the official @amplitude/analytics-node SDK, fed from
// PostgreSQL with the pg package (a cursor, so memory stays flat), with its
// batch size at Amplitude's maximum. Prints one JSON line with what it saw.
import { init, track, flush } from '@amplitude/analytics-node';
import pg from 'pg';
import Cursor from 'pg-cursor';

const [sinkUrl, batchSize] = [process.argv[2], Number(process.argv[3] || 2000)];
const client = new pg.Client();  // PGHOST, PGPORT, PGUSER, PGDATABASE from the environment
await client.connect();
init('bench-key-0123456789', { serverUrl: `${sinkUrl}/2/httpapi`, flushQueueSize: batchSize,
                               flushIntervalMillis: 1000, logLevel: 0 });
let peakRss = 0, rows = 0;
const cursor = client.query(new Cursor(
  `SELECT event_type, user_id, (extract(epoch FROM created_at) * 1000)::bigint AS time, insert_id,
          p_text, p_int, p_numeric, p_bool, p_ts, p_json, p_tags, p_plan, p_float, p_ref FROM events`));
for (;;) {
  const batch = await cursor.read(10000);
  if (batch.length === 0) break;
  for (const r of batch) {
    track(r.event_type, {
      p_text: r.p_text, p_int: r.p_int, p_numeric: Number(r.p_numeric), p_bool: r.p_bool,
      p_ts: r.p_ts.toISOString(), p_json: r.p_json, p_tags: r.p_tags, p_plan: r.p_plan,
      p_float: r.p_float, p_ref: r.p_ref,
    }, { user_id: r.user_id, time: Number(r.time), insert_id: r.insert_id });
  }
  rows += batch.length;
  peakRss = Math.max(peakRss, process.memoryUsage().rss);
  await flush().promise;
}
await flush().promise;
peakRss = Math.max(peakRss, process.memoryUsage().rss);
await cursor.close();
await client.end();
console.log(JSON.stringify({ rows, peak_rss_kb: Math.round(peakRss / 1024) }));
