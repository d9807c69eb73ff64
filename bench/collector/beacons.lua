-- Realistic beacons for wrk: what tally.js sends (text/plain JSON via sendBeacon),
-- rotating over paths, referrers and browsers. Shared by the collector and the
-- minimal baseline handler so both see identical requests.
-- Pacing: with env TALLY_BENCH_DELAY_MS set, each connection waits that long between
-- requests (wrk's delay() hook), which bounds the rate for the "p99 at 70% of peak" run.
local paths = {"/", "/pricing", "/blog/kafka-in-practice?utm_source=newsletter", "/docs/getting-started",
               "/about", "/blog/2024/privacy-first-analytics", "/signup", "/docs/api#collect"}
local refs = {"null", "\"https://www.google.com/\"", "\"https://news.ycombinator.com/\"",
              "\"https://duckduckgo.com/\"", "null", "\"https://example.com/\""}
local uas = {
  "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
  "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15",
  "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:127.0) Gecko/20100101 Firefox/127.0",
  "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
}
local requests = {}
local n = 0
local delay_ms = tonumber(os.getenv("TALLY_BENCH_DELAY_MS") or "0")

function init(args)
  for i = 1, 64 do
    local body = string.format('{"site":"example.com","path":"%s","referrer":%s,"event":"pageview","props":{}}',
      paths[(i % #paths) + 1], refs[(i % #refs) + 1])
    requests[i] = wrk.format("POST", nil, {
      ["Content-Type"] = "text/plain;charset=UTF-8",
      ["User-Agent"] = uas[(i % #uas) + 1],
      ["Origin"] = "https://example.com",
    }, body)
  end
end

function request()
  n = n + 1
  return requests[(n % #requests) + 1]
end

-- Defined only when pacing: wrk schedules a timer per request whenever delay() exists.
if delay_ms > 0 then
  function delay()
    return delay_ms
  end
end
