-- Loaded by every workload script: at the end of a run, wrk's own numbers as one JSON line
-- (prefixed "WRKJSON ") that benchmarks/wrk.py parses. Latencies are in microseconds.
-- "status" counts responses that are neither 2xx nor 3xx (wrk's "Non-2xx or 3xx responses").
function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'WRKJSON {"requests":%.0f,"duration_us":%.0f,"bytes":%.0f,'
      .. '"connect":%.0f,"read":%.0f,"write":%.0f,"status":%.0f,"timeout":%.0f,'
      .. '"p50_us":%.0f,"p90_us":%.0f,"p99_us":%.0f,"p999_us":%.0f,"mean_us":%.1f,"max_us":%.0f}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency:percentile(99.9), latency.mean, latency.max))
end
