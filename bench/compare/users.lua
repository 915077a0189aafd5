-- wrk script for the many-users cells: each request carries the next bearer token of a
-- file (one a line), round-robin, so consecutive requests, on whatever connection, belong
-- to different users. The requests are formatted once in init, so the load generator's
-- cost per request is the same for a file of 1 token and a file of 10,000.
--   wrk ... -s users.lua URL -- TOKENS_FILE [START]
-- START (default 0) is the number of tokens to skip first, so a pass over the file can be
-- continued by another run.
-- Prints report.lua's WRKJSON line at the end.
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "report.lua")

local reqs, n, i = {}, 0, 0

function init(args)
  for line in io.lines(args[1]) do
    if #line > 0 then
      local headers = {}
      for k, v in pairs(wrk.headers) do headers[k] = v end
      headers["Authorization"] = "Bearer " .. line
      n = n + 1
      reqs[n] = wrk.format(nil, nil, headers)
    end
  end
  if n == 0 then error("no tokens in " .. args[1]) end
  i = (tonumber(args[2]) or 0) % n
end

function request()
  i = i % n + 1
  return reqs[i]
end
