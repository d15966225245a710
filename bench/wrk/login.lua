-- POST /api/user/login with the right password for a random user args[2] .. (0 .. args[3]-1)
-- (args[1], the tokens file, is not used). Every sign-in costs one bcrypt verification.
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "common.lua")

local prefix, count
function init(args)
   prefix = args[2]
   count = tonumber(args[3])
   seed()
end

function request()
   local login = prefix .. tostring(math.random(count) - 1)
   return wrk.format("POST", "/api/user/login", { ["Content-Type"] = "application/json" },
      '{"login":"' .. login .. '","password":"bench-password"}')
end
