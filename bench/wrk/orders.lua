-- GET /api/user/orders for a random user of the tokens file.
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "common.lua")

local tokens
function init(args)
   tokens = load_tokens(args[1])
   seed()
end

function request()
   local token = tokens[math.random(#tokens)]
   return wrk.format("GET", "/api/user/orders", { ["Authorization"] = "Bearer " .. token })
end
