-- POST one fixed body over and over, then print the run's figures as one JSON line.
--   wrk -t1 -c64 -d10s -s bench/lua/post.lua URL -- BODY_FILE CONTENT_TYPE ["NAME: VALUE"]
-- The body is read from a file (a JSON document or a multipart form), so one script serves
-- every scenario. Non-2xx answers are counted by status, so an error run says what it got.

statuses = {}  -- global: done() reads it from each thread

function init(args)
  local file = assert(io.open(args[1], "rb"), "cannot open body file " .. tostring(args[1]))
  wrk.method = "POST"
  wrk.body = file:read("*a")
  file:close()
  wrk.headers["Content-Type"] = args[2] or "application/json"
  if args[3] then  -- one more header (the /v2 binary tensor data's Inference-Header-Content-Length)
    local name, value = args[3]:match("^([^:]+):%s*(.*)$")
    wrk.headers[name] = value
  end
end

function response(status, headers, body)
  if status >= 300 then
    statuses[status] = (statuses[status] or 0) + 1
  end
end

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function done(summary, latency, requests)
  local bad = {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do
      table.insert(bad, string.format('"%d": %d', status, n))
    end
  end
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "connect_errors": %d, "read_errors": %d, ' ..
    '"write_errors": %d, "status_errors": %d, "timeouts": %d, "mean_us": %.1f, "max_us": %d, ' ..
    '"p50_us": %d, "p90_us": %d, "p99_us": %d, "p999_us": %d, "statuses": {%s}}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.max, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), table.concat(bad, ", ")))
end
