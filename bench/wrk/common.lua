-- Shared by the wrk scripts of Gophermart's benchmark (bench/run.py runs them).
--
-- Arguments after `--`: the tokens file (one bearer token a line), then a script-specific
-- value (an order-number prefix, a user count...). Each wrk thread gets a number `tid`
-- (1, 2, ...) so that generated order numbers never repeat across threads: PREFIX, tid, an
-- 8-digit counter and the Luhn check digit, the layout crates/loadgen builds too, so the
-- numbers can be registered in the accrual system in advance.
--
-- done() prints one line "WRKJSON {...}" with the figures bench/run.py reads.

local threads = {}
local next_tid = 1

function setup(thread)
   thread:set("tid", next_tid)
   next_tid = next_tid + 1
   table.insert(threads, thread)
end

function load_tokens(path)
   local list = {}
   for line in io.lines(path) do
      if #line > 0 then
         list[#list + 1] = line
      end
   end
   assert(#list > 0, "no tokens in " .. path)
   return list
end

-- payload followed by its Luhn check digit
function luhn(payload)
   local sum = 0
   local double = true
   for i = #payload, 1, -1 do
      local d = string.byte(payload, i) - 48
      if double then
         d = d * 2
         if d > 9 then d = d - 9 end
      end
      sum = sum + d
      double = not double
   end
   return payload .. tostring((10 - sum % 10) % 10)
end

function order_number(prefix, k)
   return luhn(prefix .. tostring(tid) .. string.format("%08d", k))
end

function seed()
   math.randomseed(tid * 7919 + os.time())
end

function done(summary, latency, requests)
   local counters = {}
   for _, t in ipairs(threads) do
      local k = t:get("k")
      counters[#counters + 1] = tostring(k or 0)
   end
   local e = summary.errors
   io.write(string.format(
      'WRKJSON {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
      '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
      '"latency_us": {"p50": %d, "p90": %d, "p99": %d, "p999": %d, "mean": %.1f, "max": %d}, ' ..
      '"generated_per_thread": [%s]}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency:percentile(99.9), latency.mean, latency.max,
      table.concat(counters, ", ")))
end
