-- Realistic beacons for wrk: what tally.js sends (text/plain JSON via sendBeacon),
-- over a mix of paths, referrers, events and browsers, as seen behind a reverse proxy
-- (the collector trusts the 127.0.0.1 peer and reads the client from X-Forwarded-For).
-- Shared by the collector and the minimal baseline handler so both see identical requests.
--
-- env TALLY_BENCH_CLIENTS:
--   many (default)  every request comes from a fresh, random public address
--                   (3 in 4 IPv4, 1 in 4 IPv6), as real traffic mostly does;
--   one             every request comes from one address.
-- env TALLY_BENCH_RATE: requests/s over all connections, for the "p99 at 70% of peak" run.
-- wrk's delay() hook gives each request the next free slot of one schedule (one slot every
-- 1/rate s). Run with many connections (run.py's --paced-connections, one per visitor), the
-- rate holds whatever the latency while fewer requests than connections are outstanding:
-- open loop, as visitors do not wait for each other's answers. If every connection is busy,
-- a slot is taken as soon as one answers (no catch-up burst) and the rate falls short,
-- which run.py reports.
local sections = {"", "/blog", "/docs", "/pricing", "/changelog", "/help", "/careers", "/integrations"}
local words = {"kafka", "privacy", "getting-started", "api", "install", "teams", "billing", "faq", "roadmap",
               "clickhouse", "gdpr", "cookies", "self-hosting", "migration", "alerts", "dashboards"}
local queries = {"", "", "", "", "?utm_source=newsletter", "?utm_source=twitter&utm_medium=social", "?ref=hn",
                 "?page=2", "#install"}
local refs = {"null", "null", "null", "\"https://www.google.com/\"", "\"https://www.google.com/\"",
              "\"https://news.ycombinator.com/\"", "\"https://duckduckgo.com/\"", "\"https://www.bing.com/\"",
              "\"https://example.com/\"", "\"https://t.co/abc123\"", "\"https://www.reddit.com/r/analytics/\""}
local events = {"pageview", "pageview", "pageview", "pageview", "pageview", "pageview", "signup", "download"}
local uas = {
  "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
  "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/125.0.0.0 Safari/537.36",
  "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36 Edg/126.0.0.0",
  "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:127.0) Gecko/20100101 Firefox/127.0",
  "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
  "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15",
  "Mozilla/5.0 (Macintosh; Intel Mac OS X 14.5; rv:127.0) Gecko/20100101 Firefox/127.0",
  "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
  "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0",
  "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
  "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4.1 Mobile/15E148 Safari/604.1",
  "Mozilla/5.0 (iPad; CPU OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
  "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Mobile Safari/537.36",
  "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/125.0.6422.165 Mobile Safari/537.36",
  "Mozilla/5.0 (Linux; Android 13; Pixel 7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Mobile Safari/537.36",
  "Mozilla/5.0 (Linux; Android 14; SAMSUNG SM-A546B) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/25.0 Chrome/121.0.0.0 Mobile Safari/537.36",
  "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
  "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
  "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.2; +https://openai.com/gptbot)",
  "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/126.0.0.0 Safari/537.36",
}
local MARK = "\0ADDRESS\0"
local templates = {}  -- each request as {text before the address, text after it}
local n = 0
local many = (os.getenv("TALLY_BENCH_CLIENTS") or "many") ~= "one"
local rate = tonumber(os.getenv("TALLY_BENCH_RATE") or "0")
-- /8s left out of the IPv4 draw: private, loopback, CGNAT, link-local, benchmarking, documentation.
local reserved = {[0] = true, [10] = true, [100] = true, [127] = true, [169] = true, [172] = true, [192] = true,
                  [198] = true, [203] = true}

local function public_address()
  if math.random(4) == 4 then  -- global unicast IPv6, outside 2001::/16 and 2002::/16 (special ranges)
    return string.format("%x:%x:%x:%x:%x:%x:%x:%x", math.random(0x2400, 0x2c0f), math.random(0, 0xffff),
      math.random(0, 0xffff), math.random(0, 0xffff), math.random(0, 0xffff), math.random(0, 0xffff),
      math.random(0, 0xffff), math.random(1, 0xffff))
  end
  local a = math.random(1, 223)
  while reserved[a] do a = math.random(1, 223) end
  return string.format("%d.%d.%d.%d", a, math.random(0, 255), math.random(0, 255), math.random(1, 254))
end

function init(args)
  math.randomseed(os.time())
  for i = 1, 512 do
    local path = sections[math.random(#sections)]
    if math.random(3) > 1 then path = path .. "/" .. words[math.random(#words)] end
    if path == "" then path = "/" end
    local body = string.format('{"site":"example.com","path":"%s%s","referrer":%s,"event":"%s","props":{}}',
      path, queries[math.random(#queries)], refs[math.random(#refs)], events[math.random(#events)])
    local text = wrk.format("POST", nil, {
      ["Content-Type"] = "text/plain;charset=UTF-8",
      ["User-Agent"] = uas[math.random(#uas)],
      ["Origin"] = "https://example.com",
      ["X-Forwarded-For"] = many and MARK or "81.2.69.160",
    }, body)
    local at = string.find(text, MARK, 1, true)
    if at then
      templates[i] = {string.sub(text, 1, at - 1), string.sub(text, at + #MARK)}
    else
      templates[i] = {text, ""}
    end
  end
end

function request()
  n = n + 1
  local t = templates[(n % #templates) + 1]
  if many then
    return t[1] .. public_address() .. t[2]
  end
  return t[1]
end

-- Defined only when pacing: wrk schedules a timer per request whenever delay() exists.
if rate > 0 then
  local ffi = require("ffi")
  ffi.cdef[[
    typedef struct { long tv_sec; long tv_nsec; } tally_timespec;
    int clock_gettime(int clk_id, tally_timespec *tp);
  ]]
  local ts = ffi.new("tally_timespec")
  local function now_ms()
    ffi.C.clock_gettime(1, ts)  -- CLOCK_MONOTONIC
    return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
  end
  local interval = 1000 / rate
  local next_slot = 0
  function delay()
    local now = now_ms()
    local slot = math.max(now, next_slot)
    next_slot = slot + interval
    return slot - now  -- wrk truncates to whole ms: a request goes < 1 ms early, the schedule holds
  end
end
