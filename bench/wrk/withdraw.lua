-- POST /api/user/balance/withdraw: 1 point against a new order number each time (args[2] is
-- its prefix), for a random user of the tokens file (the benchmark funds every account).
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "common.lua")

local tokens, prefix
k = 0
function init(args)
   tokens = load_tokens(args[1])
   prefix = args[2]
   seed()
end

function request()
   local token = tokens[math.random(#tokens)]
   local number = order_number(prefix, k)
   k = k + 1
   return wrk.format("POST", "/api/user/balance/withdraw",
      { ["Authorization"] = "Bearer " .. token, ["Content-Type"] = "application/json" },
      '{"order":"' .. number .. '","sum":1}')
end
